"""A user's fault gets one clear line naming the flag, file, field or id, and a non-zero exit; never a
traceback, never a wrong result with exit status 0, and nothing written half or lost.

One section per class of fault: silent wrong results, numbers checked before any load, broken input files,
output locations, the Hub, what is loaded from disk, and a full disk.
"""

import collections
import csv
import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import tiny_run_args
from repo_paths import DEV_FILE, REPO_ROOT, TINY_GPT2_DIR
from run_outputs import copy_run
from squad_lora.args import DataArguments, DecodingArguments, LoraArguments, PromptArguments, TrainModelArguments
from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.errors import (
    ConfigError,
    ModelLoadError,
    PredictionsError,
    RunFileError,
    SquadDataError,
    SquadLoraError,
)
from squad_lora.training_args import QATrainingArguments
from squad_reference import assert_loads_as_written, rows_of_json_file

TRAINING_TYPES = (
    TrainModelArguments,
    DataArguments,
    LoraArguments,
    PromptArguments,
    DecodingArguments,
    QATrainingArguments,
)
QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_script(script: str, *args: str, cwd: str = REPO_ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, script), *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def error_lines(completed: subprocess.CompletedProcess) -> list[str]:
    """The error lines a script printed (progress lines aside); there is never a traceback."""
    assert "Traceback" not in completed.stderr, completed.stderr
    return [line for line in completed.stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------
# 1. No silent wrong result
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, -100])
@pytest.mark.parametrize("script", ["generate.py", "evaluate_squad.py"])
def test_a_sample_limit_below_one_is_refused_with_one_line(script, value, tmp_path):
    args = {
        "generate.py": ["--validation_file", DEV_FILE, "--output_dir", str(tmp_path / "preds")],
        "evaluate_squad.py": [DEV_FILE, str(tmp_path / "predictions.json")],
    }[script]
    completed = run_script(script, *args, "--max_eval_samples", str(value))
    assert completed.returncode == 2
    assert error_lines(completed) == [f"error: --max_eval_samples must be a positive integer, got {value}"]
    assert not (tmp_path / "preds").exists()


@given(blank=st.text(alphabet=" \t\n\u00a0\u2003", max_size=4))
@QUICK
def test_blank_answers_are_never_training_targets(blank, tmp_path):
    rows = [
        {"id": "blank", "context": "  x", "question": "q?", "answers": {"text": [blank], "answer_start": [0]}},
        {
            "id": "mixed",
            "context": "the mat",
            "question": "q?",
            "answers": {"text": [blank, "mat"], "answer_start": [0, 4]},
        },
    ]
    path = tmp_path / "blank.json"
    path.write_text(json.dumps(rows))
    examples, stats = load_squad_file(str(path))
    assert [ex["id"] for ex in examples] == ["mixed"]  # dropped, not turned into an unanswerable question
    assert examples[0]["answers"]["text"] == ["mat"]
    assert stats.num_blank_answers == 2
    with pytest.raises(SquadDataError, match=r"id 'blank'.*blank"):
        load_squad_file(str(path), strict=True)


def test_generate_refuses_to_replace_earlier_predictions_then_removes_them_all(tiny_adapter, tmp_path):
    from squad_lora.commands import generate

    output_dir = tmp_path / "preds"
    output_dir.mkdir()
    stale = output_dir / "predictions_beam.jsonl"
    stale.write_text('{"id": "other-dataset", "prediction": "x"}\n')
    args = [
        "--adapter",
        tiny_adapter,
        "--validation_file",
        DEV_FILE,
        "--max_eval_samples",
        "3",
        "--output_dir",
        str(output_dir),
    ]
    with pytest.raises(
        ConfigError, match=r"already holds predictions \(predictions_beam.jsonl\).*--overwrite_output_dir"
    ):
        generate.main(args)
    assert stale.exists()  # nothing lost by the refusal
    generate.main([*args, "--overwrite_output_dir"])
    assert sorted(os.listdir(output_dir)) == ["predictions_greedy.json", "predictions_greedy.jsonl"]


def test_compare_refuses_a_predictions_file_from_another_dataset(tmp_path):
    from squad_lora.commands import evaluate as evaluate_squad

    with open(DEV_FILE, encoding="utf-8") as f:
        first_id = json.load(f)["data"][0]["paragraphs"][0]["qas"][0]["id"]
    (tmp_path / "predictions_greedy.json").write_text(json.dumps({first_id: "Denver Broncos"}))
    (tmp_path / "predictions_beam.json").write_text(json.dumps({"id-of-another-dataset": "x"}))
    with pytest.raises(PredictionsError, match="strategy beam: none of its 1 question ids are in the data"):
        evaluate_squad.main([DEV_FILE, "--compare", str(tmp_path)])
    assert not (tmp_path / "strategy_comparison.json").exists()


# ---------------------------------------------------------------------------
# 2. Every number and choice is checked before any model or data loads
# ---------------------------------------------------------------------------

POSITIVE_INTEGER_FLAGS = [
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "max_train_samples",
    "max_eval_samples",
    "max_seq_length",
    "num_samples",
    "generation_batch_size",
    "max_new_tokens",
    "num_beams",
    "top_k",
]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model, tokenizer or dataset starts to load."""
    from squad_lora import data, modeling

    def refuse(*args, **kwargs):
        raise AssertionError("loaded before the flags were checked")

    monkeypatch.setattr(modeling, "load_base_model", refuse)
    monkeypatch.setattr(modeling, "load_tokenizer", refuse)
    monkeypatch.setattr(data, "load_squad_split", refuse)


@given(flag=st.sampled_from(POSITIVE_INTEGER_FLAGS), value=st.integers(max_value=0))
@QUICK
def test_positive_integer_flags_refuse_zero_and_below(flag, value, no_loading):
    with pytest.raises(ConfigError, match=f"--{flag} must be a positive integer, got {value}"):
        parse_args(TRAINING_TYPES, [f"--{flag}={value}"])


@given(
    flag=st.sampled_from(["learning_rate", "num_train_epochs", "temperature", "lora_alpha"]),
    value=st.one_of(st.floats(max_value=0), st.sampled_from([math.nan, math.inf])),
)
@QUICK
def test_real_valued_flags_refuse_non_positive_and_non_finite_values(flag, value, no_loading):
    with pytest.raises(ConfigError, match=f"--{flag} must be a finite number > 0"):
        parse_args(TRAINING_TYPES, [f"--{flag}={value!r}"])


@given(
    value=st.one_of(
        st.floats(max_value=0, exclude_max=False), st.floats(min_value=1, exclude_min=True), st.just(math.nan)
    )
)
@QUICK
def test_top_p_must_be_a_probability(value, no_loading):
    with pytest.raises(ConfigError, match="--top_p must be in"):
        parse_args((DecodingArguments,), [f"--top_p={value!r}"])


@given(word=st.text(min_size=1, max_size=8).filter(lambda w: not w.strip().lstrip("+-").isdigit()))
@QUICK
def test_a_non_integer_for_an_integer_flag_names_the_flag(word, no_loading):
    with pytest.raises(ConfigError, match="--lora_r"):
        parse_args(TRAINING_TYPES, [f"--lora_r={word}"])


@pytest.mark.parametrize("value", ["0", "-2"])
def test_max_steps_zero_or_below_minus_one_is_refused(value, no_loading):
    with pytest.raises(ConfigError, match=f"--max_steps must be > 0 \\(or -1: use --num_train_epochs\\), got {value}"):
        parse_args(TRAINING_TYPES, ["--max_steps", value])


@pytest.mark.parametrize("flag", ["--eval_generation_samples", "--eval_log_samples"])
def test_eval_samples_below_zero_are_refused(flag, no_loading):
    with pytest.raises(ConfigError, match=f"{flag} must be >= 0 \\(0: off\\), got -1"):
        parse_args(TRAINING_TYPES, [flag, "-1"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max_seq_length", "5"], r"--max_seq_length 5: must be between \d+ .* and 512"),
        (["--max_seq_length", "4096"], r"--max_seq_length 4096: must be between \d+ .* and 512"),
        (
            ["--max_new_tokens", "600"],
            r"--max_new_tokens 600: leaves no room for a prompt in the model's 512 positions",
        ),
    ],
)
def test_lengths_the_model_cannot_hold_are_refused_before_any_data_is_tokenized(flags, message, tmp_path, monkeypatch):
    from squad_lora.commands import train as run_qa_lora

    def refuse(*args, **kwargs):
        raise AssertionError("data loaded before the lengths were checked")

    monkeypatch.setattr(run_qa_lora, "load_training_splits", refuse)
    with pytest.raises(ConfigError, match=message):
        run_qa_lora.main(
            [os.path.join(REPO_ROOT, "configs", "smoke.yaml"), "--output_dir", str(tmp_path / "run"), *flags]
        )


def test_a_config_value_of_the_wrong_type_names_the_file_and_key_and_the_command_line_wins(tmp_path, no_loading):
    config = tmp_path / "bad.yaml"
    config.write_text("lora_r: eight\nlearning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: lora_r: .*invalid int value: 'eight'"):
        parse_args(TRAINING_TYPES, [str(config)])
    (_, _, lora_args, _, _, training_args), _, _ = parse_args(
        TRAINING_TYPES, ["--config", str(config), "--lora_r", "4"]
    )
    assert lora_args.lora_r == 4
    assert training_args.learning_rate == 1e-4  # PyYAML reads 1e-4 as a string; it is a number here


# ---------------------------------------------------------------------------
# 3. Every file the programs read is named when it is broken
# ---------------------------------------------------------------------------


def load_adapter(adapter: str, **model_flags):
    from squad_lora.args import ModelArguments
    from squad_lora.modeling import load_for_inference

    return load_for_inference(adapter, ModelArguments(**model_flags))


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("where", ["adapter_model.safetensors", "base_model/model.safetensors"])
def test_damaged_safetensors_are_named(tiny_adapter, tmp_path, where, damage):
    run_dir = copy_run(tiny_adapter, tmp_path / "run")
    path = os.path.join(run_dir, where)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2 if damage == "truncated" else 0)
    with pytest.raises(ModelLoadError, match=f"{path}: not a readable safetensors file"):
        load_adapter(run_dir)


def test_an_adapter_dir_without_weights_is_named(tiny_adapter, tmp_path):
    run_dir = copy_run(tiny_adapter, tmp_path / "run")
    os.remove(os.path.join(run_dir, "adapter_model.safetensors"))
    with pytest.raises(ModelLoadError, match="has adapter_config.json but no adapter_model.safetensors"):
        load_adapter(run_dir)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_a_corrupt_adapter_config_is_named(tiny_adapter, tmp_path, content):
    run_dir = copy_run(tiny_adapter, tmp_path / "run")
    config = os.path.join(run_dir, "adapter_config.json")
    with open(config, "w") as f:
        f.write(content)
    with pytest.raises(ModelLoadError, match=f"{config}: not"):
        load_adapter(run_dir)


def test_an_adapter_made_for_another_architecture_is_named(tiny_adapter, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_dir = tmp_path / "tiny-llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(llama_dir)
    with pytest.raises(ModelLoadError, match=f"--adapter {tiny_adapter} does not fit the base model '{llama_dir}'"):
        load_adapter(tiny_adapter, model_name_or_path=str(llama_dir), tokenizer_name=TINY_GPT2_DIR)


def test_an_adapter_of_another_size_is_named(tiny_adapter, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    wider_dir = tmp_path / "wider-gpt2"
    config = GPT2Config.from_pretrained(TINY_GPT2_DIR)
    config.n_embd *= 2
    GPT2LMHeadModel(config).save_pretrained(wider_dir)
    with pytest.raises(ModelLoadError, match="does not fit the base model .*size mismatch"):
        load_adapter(tiny_adapter, model_name_or_path=str(wider_dir), tokenizer_name=TINY_GPT2_DIR)


@pytest.mark.parametrize("problem", ["missing", "latin-1", "directory"])
def test_a_broken_context_file_is_named(tiny_adapter, tmp_path, problem):
    from squad_lora.commands import generate

    path = tmp_path / "context.txt"
    if problem == "latin-1":
        path.write_bytes("Caf\xe9 au lait".encode("latin-1"))
    elif problem == "directory":
        path.mkdir()
    with pytest.raises(SquadDataError, match=f"{path}: (no such file|not valid UTF-8|is a directory)"):
        generate.main(["--adapter", tiny_adapter, "--context_file", str(path), "--question", "What?"])


@pytest.mark.parametrize(
    "summary, problem",
    [
        ([1, 2], "expected a JSON object"),
        ({"run_name": "x"}, "'lora' missing"),
        (
            {
                "run_name": "x",
                "lora": {"lora_r": "8"},
                "trainable_params": 1,
                "all_params": 2,
                "trainable_percent": 50,
                "train_metrics": {},
                "eval_metrics": {},
                "log_history": [{"loss": 1}],
            },
            "'lora.lora_r' is not an integer",
        ),
    ],
)
def test_a_run_summary_of_the_wrong_shape_is_named(tmp_path, summary, problem):
    from squad_lora.commands import report

    (tmp_path / "run_summary.json").write_text(json.dumps(summary))
    with pytest.raises(RunFileError, match=f"run_summary.json: .*{problem}"):
        report.main([str(tmp_path), "--output_dir", str(tmp_path / "report")])
    assert not (tmp_path / "report" / "results.md").exists()


def test_a_corrupt_strategy_comparison_is_named(tiny_adapter, tmp_path):
    from squad_lora.commands import report

    run_dir = copy_run(tiny_adapter, tmp_path / "run")
    os.makedirs(os.path.join(run_dir, "preds"))
    comparison = os.path.join(run_dir, "preds", "strategy_comparison.json")
    with open(comparison, "w") as f:
        json.dump({"strategies": [{"strategy": "greedy", "exact_match": "high"}]}, f)
    with pytest.raises(RunFileError, match=f"{comparison}: not a strategy comparison"):
        report.main([run_dir, "--output_dir", str(tmp_path / "report")])


@pytest.mark.parametrize("content", ["", "  \n", "{}"])
def test_an_empty_predictions_file_is_named(tmp_path, content):
    path = tmp_path / "predictions.json"
    path.write_text(content)
    completed = run_script("evaluate_squad.py", DEV_FILE, str(path))
    assert completed.returncode == 2
    (line,) = error_lines(completed)
    assert line.startswith(f"error: {path}: ") and ("empty" in line or "no predictions" in line)


def test_csv_as_spreadsheet_tools_save_it_loads(tmp_path):
    header = "id;title;context;question;answers"
    row = 'q1;T;The cat sat on the mat.;Where?;"{""text"": [""the mat""], ""answer_start"": [15]}"'
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{header}\r\n{row}\r\n".encode())  # BOM, CRLF, semicolons
    (example,), _ = load_squad_file(str(path))
    assert example["id"] == "q1" and example["answers"] == {"text": ["the mat"], "answer_start": [15]}
    path.write_bytes(f"{header}\r\n{row}\r\n".replace("cat", "caf\xe9").encode("cp1252"))
    with pytest.raises(SquadDataError, match=r"excel.csv: not valid UTF-8 .*CSV UTF-8"):
        load_squad_file(str(path))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["id", "context", "question", "answers", "text", "answer_start", "data", "paragraphs", "qas"]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@st.composite
def squad_rows(draw) -> list[dict]:
    """1-3 Hub-layout rows, each answer a span of its context (answer_start right, off by one, or far off, and the
    span sometimes blank); in one row of four, one field replaced by any JSON value."""
    rows = []
    for number in range(draw(st.integers(1, 3))):
        context = draw(st.text("ab .", min_size=1, max_size=12))
        start = draw(st.integers(0, len(context) - 1))
        text = context[start : draw(st.integers(start + 1, len(context)))]
        start += draw(st.sampled_from([0, 0, 1, 9]))
        row = {"id": f"q{number}", "title": "T", "context": context, "question": "Who?",
               "answers": {"text": [text], "answer_start": [start]}}  # fmt: skip
        if draw(st.integers(0, 3)) == 0:
            row[draw(st.sampled_from(sorted(row)))] = draw(json_values)
        rows.append(row)
    return rows


def loads_as_written_or_names_itself(strategy, write_and_load) -> None:
    """write_and_load(drawn) writes a file and returns assert_loads_as_written's outcome: each file drawn loads as
    written or is refused naming itself, and at least one in twenty loaded and one in twenty was refused."""
    outcomes = collections.Counter()

    @settings(max_examples=100, deadline=None)
    @given(drawn=strategy)
    def check(drawn):
        outcomes[write_and_load(drawn)] += 1

    check()
    assert min(outcomes["loaded"], outcomes["refused"]) >= sum(outcomes.values()) / 20, outcomes


def test_any_json_data_file_loads_as_written_or_names_itself(tmp_path):
    def write_and_load(doc):
        path = tmp_path / "data.json"
        path.write_text(json.dumps(doc))
        rows, version = rows_of_json_file([doc])
        return assert_loads_as_written(path, rows, version=version)

    documents = json_values | squad_rows() | squad_rows().map(lambda rows: rows[0])  # a list, or one object
    loads_as_written_or_names_itself(documents, write_and_load)


def test_any_json_lines_data_file_loads_as_written_or_names_itself(tmp_path):
    def write_and_load(lines):
        path = tmp_path / "data.jsonl"
        path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        rows, version = rows_of_json_file(lines)  # one line alone is read as a JSON document
        return assert_loads_as_written(path, rows, version=version)

    loads_as_written_or_names_itself(st.lists(json_values, min_size=1, max_size=4) | squad_rows(), write_and_load)


def test_any_csv_data_file_loads_as_written_or_names_itself(tmp_path):
    def write_and_load(drawn):
        path = tmp_path / "data.csv"
        if isinstance(drawn, str):  # random text: no header can spell 'context' or 'question', refused whole
            path.write_text(drawn)
            return assert_loads_as_written(path, None)
        # each cell as written: a string (a raw CR aside: universal newlines read it as LF), or any other value as
        # JSON; 'answers' always as JSON, which is read back first
        rows = [{key: value.replace("\r", "") if isinstance(value, str) and key != "answers" else json.dumps(value)
                 for key, value in row.items()} for row in drawn]  # fmt: skip
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "title", "context", "question", "answers"])
            writer.writeheader()
            writer.writerows(rows)
        return assert_loads_as_written(path, [{**row, "answers": json.loads(row["answers"])} for row in rows])

    random_text = st.text(alphabet=st.sampled_from(list("id,;\t\"'{}[]:\n answersxt0123")), max_size=60)
    loads_as_written_or_names_itself(random_text | squad_rows(), write_and_load)


@given(doc=json_values)
@QUICK
def test_any_predictions_file_reads_or_names_itself(doc, tmp_path):
    from squad_lora.scoring import read_predictions

    path = tmp_path / "predictions_greedy.json"
    path.write_text(json.dumps(doc))
    try:
        predictions = read_predictions(str(path))
    except PredictionsError as e:
        assert str(path) in str(e)
    else:
        assert predictions and all(isinstance(k, str) and isinstance(v, str) for k, v in predictions.items())


# ---------------------------------------------------------------------------
# 4. Output locations are checked before the work starts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["run_qa_lora.py", "generate.py", "report.py", "evaluate_squad.py"])
def test_an_output_location_blocked_by_a_file_is_refused_before_any_work(script, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    args = {
        "run_qa_lora.py": ["configs/smoke.yaml", "--output_dir", str(blocker / "run")],
        "generate.py": [
            "--model_name_or_path",
            TINY_GPT2_DIR,
            "--validation_file",
            DEV_FILE,
            "--output_dir",
            str(blocker),
        ],
        "report.py": [str(tmp_path), "--output_dir", str(blocker / "report")],
        "evaluate_squad.py": [DEV_FILE, "--compare", str(tmp_path), "--output_dir", str(blocker)],
    }[script]
    completed = run_script(script, *args)
    assert completed.returncode == 2
    (line,) = error_lines(completed)
    assert line.startswith("error: --output_dir ") and "is a file, not a directory" in line
    assert blocker.read_text() == "keep me"


def test_evaluate_output_that_is_a_directory_is_refused_before_scoring(tmp_path):
    (tmp_path / "predictions.json").write_text("{}")
    completed = run_script("evaluate_squad.py", DEV_FILE, str(tmp_path / "predictions.json"), "--output", str(tmp_path))
    assert completed.returncode == 2
    assert error_lines(completed) == [f"error: --output {tmp_path}: is a directory, not a file"]


# The real script, held just after it took its output directory's lock: the first of two commands on one directory
HOLDING_LAUNCHER = """
import runpy, sys, time
from squad_lora import outputs

lock_dir = outputs.lock_dir
def lock_and_hold(*args, **kwargs):
    lock_dir(*args, **kwargs)
    print("held", flush=True)
    time.sleep(300)
outputs.lock_dir = lock_and_hold
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(
    "first, second",
    [("run_qa_lora.py", "run_qa_lora.py"), ("run_qa_lora.py", "generate.py"), ("generate.py", "generate.py")],
)
def test_a_second_command_on_a_directory_in_use_is_refused_naming_it_and_the_first(
    first, second, tiny_adapter, tmp_path
):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "predictions_greedy.json"
    stale.write_text('{"q": "an earlier run\'s answer"}', encoding="utf-8")
    commands = {
        "run_qa_lora.py": tiny_run_args(TINY_GPT2_DIR, out, "--overwrite_output_dir", "true"),
        "generate.py": ["--adapter", tiny_adapter, "--validation_file", DEV_FILE, "--max_eval_samples", "2",
                        "--max_new_tokens", "2", "--output_dir", str(out), "--overwrite_output_dir"],
    }  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": REPO_ROOT}
    with open(tmp_path / "first.log", "w", encoding="utf-8") as log:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDING_LAUNCHER, os.path.join(REPO_ROOT, first), *commands[first]],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO_ROOT, env=env,
        )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held", (tmp_path / "first.log").read_text()
        completed = run_script(second, *commands[second])
    finally:
        holder.kill()
        holder.wait()
    assert completed.returncode == 2
    assert error_lines(completed) == [
        f"error: --output_dir {out}: another run is writing into it now (process {holder.pid}): wait for it to end, "
        "or choose another --output_dir"
    ]
    assert stale.read_text(encoding="utf-8") == '{"q": "an earlier run\'s answer"}'  # nothing removed by the refusal
    if second == "generate.py":  # the first gone, the directory is free, and released again at the end
        assert run_script(second, *commands[second]).returncode == 0
        answered = json.loads(stale.read_text(encoding="utf-8"))
        assert list(answered) == [ex["id"] for ex in load_squad_file(DEV_FILE)[0][:2]]
        assert not (out / ".squad-lora.lock").exists()


# ---------------------------------------------------------------------------
# 5. The Hub is checked before training; a failed upload says how to retry (push_to_hub.py: test_push_to_hub.py)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("refuse", ["whoami", "create_repo"])
def test_an_unreachable_hub_stops_the_run_before_training(recording_hub, refuse, tmp_path, monkeypatch):
    from squad_lora.commands import train as run_qa_lora

    recording_hub.refuse = refuse
    monkeypatch.setattr(run_qa_lora, "load_base_model", lambda *a, **k: pytest.fail("trained before checking the Hub"))
    with pytest.raises(SquadLoraError, match=f"--push_to_hub: cannot .*ConnectionError: {refuse}: connection refused"):
        run_qa_lora.main(
            ["configs/smoke.yaml", "--output_dir", str(tmp_path / "run"), "--push_to_hub", "--hub_model_id", "me/tiny"]
        )


def test_an_unreachable_hub_is_one_line_not_a_traceback(tmp_path):
    env_token = os.environ.pop("HF_TOKEN", None)
    try:
        completed = run_script(
            "run_qa_lora.py", "configs/smoke.yaml", "--output_dir", str(tmp_path / "run"), "--push_to_hub"
        )
    finally:
        if env_token is not None:
            os.environ["HF_TOKEN"] = env_token
    assert completed.returncode == 2
    (line,) = error_lines(completed)
    assert line.startswith("error: --push_to_hub: cannot log in to the Hub") and "push_to_hub.py RUN_DIR" in line
    assert not os.path.exists(tmp_path / "run" / "run_summary.json")


def test_a_failed_upload_says_how_to_retry(recording_hub, tiny_adapter, tmp_path):
    from squad_lora.hub import push_to_hub, set_adapter_base

    run_dir = copy_run(tiny_adapter, tmp_path / "run")
    set_adapter_base(run_dir, "me/tiny-base")
    recording_hub.refuse = "upload_folder"
    with pytest.raises(SquadLoraError, match=f"the run is saved: retry with python push_to_hub.py {run_dir}"):
        push_to_hub(run_dir, "me/tiny")


# ---------------------------------------------------------------------------
# 6. Weights load from safetensors only
# ---------------------------------------------------------------------------


def test_pickled_adapter_weights_are_refused(tiny_adapter, tmp_path):
    import torch
    from safetensors.torch import load_file

    run_dir = copy_run(tiny_adapter, tmp_path / "run")
    weights = os.path.join(run_dir, "adapter_model.safetensors")
    torch.save(load_file(weights), os.path.join(run_dir, "adapter_model.bin"))
    os.remove(weights)
    with pytest.raises(
        ModelLoadError, match=r"holds only pickled weights \(adapter_model.bin\); squad-lora loads safetensors only"
    ):
        load_adapter(run_dir)


def test_pickled_base_weights_are_refused(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    base_dir = tmp_path / "base"
    GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR)).save_pretrained(base_dir)
    state = torch.nn.Module.state_dict(GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR)))
    torch.save(state, base_dir / "pytorch_model.bin")
    os.remove(base_dir / "model.safetensors")
    with pytest.raises(ModelLoadError, match="holds only pickled weights"):
        load_adapter(None, model_name_or_path=str(base_dir))


# ---------------------------------------------------------------------------
# 7. A full disk: one line saying what was kept and where, whichever library's writer raised it
# ---------------------------------------------------------------------------

# What the Rust writers raise on a full disk (a plain Exception, a SafetensorError), as a really full file system
# makes them raise it: test_every_writer_on_a_really_full_disk_is_told_as_one checks these texts
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
TOKENIZERS_FULL = "No space left on device (os error 28)"


def run_to_exit(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """main(argv) as its script runs it (cli.run): the exit status and the error lines; never a traceback."""
    from squad_lora import cli

    with pytest.raises(SystemExit) as info:
        cli.run(lambda: main(argv))
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    return info.value.code, [line for line in stderr.splitlines() if line.startswith("error:")]


def fill_up(directory) -> None:
    """Write into directory until its file system has no room left."""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test, which writes really fill; skipped, saying why, where this machine does not
    let the tests mount one (not root, a container without the privilege): the injected errors stand in there."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to make a small file system: the injected full-disk errors stand in")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        reason = mounted.stderr.strip()
        pytest.skip(f"cannot mount a small tmpfs here ({reason}): the injected full-disk errors stand in")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)  # lazy: a failed run's writers hold files open


@pytest.mark.parametrize(
    "error, full",
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (Exception(TOKENIZERS_FULL), True),  # tokenizers' Rust writer
        (Exception("Disk quota exceeded (os error 122)"), True),
        (RuntimeError("[Errno 28] No space left on device: 'x.arrow'"), True),  # an OSError's text re-raised
        (OSError(errno.EACCES, "Permission denied"), False),
        (Exception("No such file or directory (os error 2)"), False),
        (Exception("Too many links (os error 280)"), False),
        (ValueError("No space left for the answer"), False),
    ],
)
def test_a_full_disk_is_told_by_its_os_error_not_by_the_class_of_the_exception(error, full):
    from squad_lora.errors import is_disk_full

    assert is_disk_full(error) is full
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = error
    assert is_disk_full(wrapped) is full


def test_an_error_that_is_no_full_disk_keeps_its_traceback():
    from squad_lora import cli

    def bug():
        raise RuntimeError("a bug (os error 2)")

    with pytest.raises(RuntimeError, match="a bug"):
        cli.run(bug)


def test_a_full_disk_at_a_checkpoint_names_the_newest_complete_one(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import peft.peft_model
    from safetensors import SafetensorError

    from squad_lora.commands import train as run_qa_lora

    save_file = peft.peft_model.safe_save_file

    def full_at_the_second_checkpoint(tensors, filename, *args, **kwargs):
        if f"{os.sep}checkpoint-2{os.sep}" in filename:
            raise SafetensorError(SAFETENSORS_FULL)
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_at_the_second_checkpoint)
    output_dir = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, output_dir, "--save_strategy", "steps", "--save_steps", 1)
    assert run_to_exit(run_qa_lora.main, args, capsys) == (
        2,
        [
            f"error: writing into {output_dir} failed (SafetensorError: {SAFETENSORS_FULL}); the newest checkpoint is "
            f"{output_dir / 'checkpoint-1'}: free space and rerun with --resume_from_checkpoint last"
        ],
    )
    assert os.path.isfile(output_dir / "checkpoint-1" / "trainer_state.json")


def test_a_full_disk_while_the_tokenizer_is_saved_keeps_the_adapter_under_its_temporary_name(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    from squad_lora.commands import train as run_qa_lora

    def full_disk(self, *args, **kwargs):
        raise Exception(TOKENIZERS_FULL)

    monkeypatch.setattr(TokenizersBackend, "_save_pretrained", full_disk)
    output_dir = tmp_path / "run"
    status, (line,) = run_to_exit(run_qa_lora.main, tiny_run_args(tiny_model_dir, output_dir), capsys)
    kept = re.fullmatch(
        rf"error: writing into {re.escape(str(output_dir))} failed \(Exception: {re.escape(TOKENIZERS_FULL)}\); what "
        rf"was written is kept in (\S+); move its files into {re.escape(str(output_dir))} once there is room",
        line,
    )
    assert status == 2 and kept, line
    assert os.path.dirname(kept[1]) == str(output_dir) and os.path.basename(kept[1]).startswith(".saving-")
    assert os.path.isfile(os.path.join(kept[1], "adapter_model.safetensors"))


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded")],
    ids=["ENOSPC", "EDQUOT"],
)
def test_generate_on_a_full_disk_names_the_prediction_files_kept(error, tiny_adapter, tmp_path, monkeypatch, capsys):
    from squad_lora import outputs
    from squad_lora.commands import generate

    write_jsonl = outputs.write_jsonl

    def full_at_the_second_strategy(path, rows):
        if path.endswith("_top_k.jsonl"):
            raise error
        return write_jsonl(path, rows)

    monkeypatch.setattr(outputs, "write_jsonl", full_at_the_second_strategy)
    output_dir = tmp_path / "preds"
    args = ["--adapter", tiny_adapter, "--validation_file", DEV_FILE, "--max_eval_samples", "2"]
    args += ["--strategies", "greedy,top_k", "--output_dir", str(output_dir)]
    assert run_to_exit(generate.main, args, capsys) == (
        2,
        [
            f"error: writing the predictions into {output_dir} failed (OSError: {error}); kept in {output_dir}: "
            "predictions_greedy.json, predictions_greedy.jsonl, predictions_top_k.json; free space and rerun with "
            "--overwrite_output_dir"
        ],
    )


def test_every_writer_on_a_really_full_disk_is_told_as_one(small_disk, tiny_tokenizer):
    import torch
    from safetensors.torch import save_file

    from squad_lora.errors import is_disk_full

    fill_up(small_disk)
    writers = {
        "safetensors": lambda: save_file({"w": torch.zeros(4096)}, str(small_disk / "w.safetensors")),
        "tokenizers": lambda: tiny_tokenizer.backend_tokenizer.save(str(small_disk / "tokenizer.json")),
        "torch": lambda: torch.save({"w": torch.zeros(4096)}, small_disk / "optimizer.pt"),  # names no OS error
        "python": lambda: (small_disk / "run_summary.json").write_text("x" * 65536),
    }
    raised = {}
    for name, write in writers.items():
        with pytest.raises(Exception) as info:  # noqa: B017  each library raises its own type
            write()
        raised[name] = info.value
        assert is_disk_full(info.value, str(small_disk)), (name, info.value)
    assert str(raised["safetensors"]) == SAFETENSORS_FULL and str(raised["tokenizers"]) == TOKENIZERS_FULL
    assert type(raised["tokenizers"]) is Exception


def test_a_run_whose_disk_really_fills_after_its_first_checkpoint(small_disk, tiny_model_dir, monkeypatch, capsys):
    from transformers import Trainer

    from squad_lora.commands import train as run_qa_lora
    from squad_lora.trainer import QATrainer

    def fill_after_the_first(self, model, trial):
        Trainer._save_checkpoint(self, model, trial)
        if self.state.global_step == 1:
            fill_up(small_disk)

    monkeypatch.setattr(QATrainer, "_save_checkpoint", fill_after_the_first)
    output_dir = small_disk / "run"
    args = tiny_run_args(tiny_model_dir, output_dir, "--save_strategy", "steps", "--save_steps", 1)
    status, (line,) = run_to_exit(run_qa_lora.main, args, capsys)
    assert (
        status == 2
        and line.startswith(f"error: writing into {output_dir} failed (")
        and "No space left on device" in line
    )
    assert line.endswith(
        f"the newest checkpoint is {output_dir / 'checkpoint-1'}: free space and rerun with --resume_from_checkpoint last"
    )


def test_generate_on_a_really_full_disk_says_no_prediction_was_kept(small_disk, tiny_adapter, capsys):
    from squad_lora.commands import generate

    output_dir = small_disk / "preds"
    output_dir.mkdir()
    fill_up(small_disk)
    args = ["--adapter", tiny_adapter, "--validation_file", DEV_FILE, "--max_eval_samples", "2"]
    assert run_to_exit(generate.main, [*args, "--output_dir", str(output_dir)], capsys) == (
        2,
        [
            f"error: writing the predictions into {output_dir} failed (OSError: [Errno 28] No space left on device); "
            "none was kept; free space and rerun with --overwrite_output_dir"
        ],
    )
    assert os.listdir(output_dir) == []
