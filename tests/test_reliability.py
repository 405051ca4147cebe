"""Reliability (issue 8): runs killed mid-training, random and malformed data files, secrets and unsafe
loading, and output files that are complete or absent."""

import ast
import csv
import dataclasses
import inspect
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import REPO_ROOT, SAMPLE_DIR, TINY_GPT2_DIR
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from test_run_qa_lora import FakeHfApi, tiny_run_args

import generate
import run_qa_lora
from squad_lora import hub, modeling
from squad_lora import outputs as atomic
from squad_lora.args import EvalDataArguments, ModelArguments, TrainModelArguments
from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.errors import ConfigError, ModelLoadError, SquadDataError
from squad_lora.modeling import load_base_model, load_for_inference
from squad_lora.scoring import read_prediction_rows

TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")
DATACLASSES = run_qa_lora.ARGUMENT_TYPES


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


# ---------------------------------------------------------------------------
# kill -9 mid-training, then --resume_from_checkpoint last
# ---------------------------------------------------------------------------

# run_qa_lora.py as __main__, each training step slowed down so the test can kill it between checkpoints
# (the tiny model trains its 8 steps in well under a second)
SLOW_STEPS_LAUNCHER = """
import os, runpy, sys, time
sys.path.insert(0, {repo!r})
import transformers

training_step = transformers.Trainer.training_step
def slow_training_step(self, *args, **kwargs):
    time.sleep(1.0)
    return training_step(self, *args, **kwargs)
transformers.Trainer.training_step = slow_training_step

sys.argv[0] = os.path.join({repo!r}, "run_qa_lora.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""
CHECKPOINT_FILES = ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                    "trainer_state.json")


def interruptible_run_args(output_dir) -> list[str]:
    # from_scratch with a fixed seed rebuilds the same random base on resume; no dropout anywhere in LoRA
    return [
        "--model_name_or_path", TINY_GPT2_DIR, "--from_scratch", "--seed", "7",
        "--train_file", TRAIN_FILE, "--output_dir", str(output_dir),
        "--max_steps", "8", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--lora_dropout", "0",
        "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
        "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
    ]


def checkpoint_steps(output_dir) -> list[int]:
    return sorted(int(name.split("-")[1]) for name in os.listdir(output_dir) if name.startswith("checkpoint-"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    launcher = tmp_path / "slow_run_qa_lora.py"
    launcher.write_text(SLOW_STEPS_LAUNCHER.format(repo=REPO_ROOT), encoding="utf-8")
    args = interruptible_run_args(killed)
    with open(tmp_path / "killed.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, str(launcher), *args], cwd=REPO_ROOT, env=subprocess_env(),
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not (killed / "checkpoint-2" / "trainer_state.json").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint-2 after 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL

    # nothing final was written; every checkpoint that has its trainer_state.json (written last) is whole.
    # The kill comes within ~0.1 s of checkpoint-2 and the next save is 2 s of steps away, so normally
    # checkpoint-2 is all there is; one cut short mid-save would lack trainer_state.json.
    assert not [name for name in ("run_summary.json", "run_config.yaml", "README.md", "adapter_model.safetensors")
                if (killed / name).exists()]
    assert not [name for name in os.listdir(killed) if name.startswith(".")]
    complete = [step for step in checkpoint_steps(killed) if (killed / f"checkpoint-{step}" / "trainer_state.json").exists()]
    assert complete
    for step in complete:
        for name in CHECKPOINT_FILES:
            assert (killed / f"checkpoint-{step}" / name).is_file(), f"checkpoint-{step}/{name}"
        load_file(str(killed / f"checkpoint-{step}" / "adapter_model.safetensors"))
    resumed_from = complete[-1]
    # as if the kill had come while the next checkpoint was being written: its adapter half there, no state
    partial = killed / f"checkpoint-{resumed_from + 2}"
    partial.mkdir(exist_ok=True)
    adapter_bytes = (killed / f"checkpoint-{resumed_from}" / "adapter_model.safetensors").read_bytes()
    (partial / "adapter_model.safetensors").write_bytes(adapter_bytes[: len(adapter_bytes) // 2])

    # rerunning the same command is refused, pointing at --resume_from_checkpoint last
    with pytest.raises(ConfigError, match="--resume_from_checkpoint last"):
        run_qa_lora.main(args)
    rerun = subprocess.run([sys.executable, "run_qa_lora.py", *args, "--resume_from_checkpoint", "last"], cwd=REPO_ROOT,
                           env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"checkpoint-{resumed_from + 2} is incomplete" in rerun.stderr
    # the rerun trained only the steps after the checkpoint (its printed logs), and the history has each step once
    assert sum(line.startswith("{'loss':") for line in rerun.stdout.splitlines()) == 8 - resumed_from
    with open(killed / "run_summary.json", encoding="utf-8") as f:
        resumed = json.load(f)
    assert [entry["step"] for entry in resumed["log_history"] if "loss" in entry] == list(range(1, 9))

    # ... to the same adapter as a run that was never interrupted
    uninterrupted = run_qa_lora.main(interruptible_run_args(straight))
    resumed_losses = [entry["loss"] for entry in resumed["log_history"] if "loss" in entry]
    uninterrupted_losses = [entry["loss"] for entry in uninterrupted["log_history"] if "loss" in entry]
    assert resumed_losses == pytest.approx(uninterrupted_losses, rel=1e-5)
    resumed_adapter = load_file(str(killed / "adapter_model.safetensors"))
    straight_adapter = load_file(str(straight / "adapter_model.safetensors"))
    assert resumed_adapter.keys() == straight_adapter.keys()
    for name, tensor in straight_adapter.items():
        torch.testing.assert_close(resumed_adapter[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


def resolve(output_dir, *flags):
    (model_args, _, lora_args, *_, training_args), _, _ = parse_args(DATACLASSES, ["--output_dir", str(output_dir), *flags])
    return run_qa_lora.resolve_run(training_args, model_args, lora_args, None)


def make_checkpoint(output_dir, step: int, complete: bool):
    path = output_dir / f"checkpoint-{step}"
    path.mkdir()
    (path / "adapter_model.safetensors").write_bytes(b"partial")
    if complete:  # the Trainer writes trainer_state.json last
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    return str(path)


def test_resume_last_skips_a_checkpoint_interrupted_while_saving(tmp_path, caplog):
    make_checkpoint(tmp_path, 2, complete=True)
    complete = make_checkpoint(tmp_path, 4, complete=True)
    make_checkpoint(tmp_path, 6, complete=False)
    assert resolve(tmp_path, "--resume_from_checkpoint", "last") == complete
    assert "checkpoint-6 is incomplete" in caplog.text


def test_resume_with_only_incomplete_checkpoints_is_an_error(tmp_path):
    make_checkpoint(tmp_path, 2, complete=False)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve(tmp_path, "--resume_from_checkpoint", "last")


def test_resume_from_an_incomplete_checkpoint_path_is_an_error(tmp_path):
    partial = make_checkpoint(tmp_path, 2, complete=False)
    with pytest.raises(ConfigError, match="incomplete checkpoint"):
        resolve(tmp_path, "--resume_from_checkpoint", partial)


def test_incomplete_checkpoints_still_block_a_fresh_run(tmp_path):
    make_checkpoint(tmp_path, 2, complete=False)
    with pytest.raises(ConfigError, match="--resume_from_checkpoint last"):
        resolve(tmp_path)


# ---------------------------------------------------------------------------
# Random SQuAD-shaped files: loaded with every answer pointing at its text, or refused with SquadDataError
# ---------------------------------------------------------------------------

# Line and paragraph separators, NEL, quotes and backslashes next to arbitrary characters
CHARS = st.one_of(st.sampled_from(list("ab \n\r\t\"\\,\u2028\u2029\x85é")), st.characters(codec="utf-8"))
TEXT = st.text(CHARS, max_size=12)
IDS = st.one_of(st.sampled_from(["q1", "q2", "q3"]), TEXT)  # few ids: duplicates are common
ANY_JSON = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=False, allow_infinity=False), TEXT,
    st.lists(st.integers(-1, 3), max_size=2), st.dictionaries(st.sampled_from(["text", "answer_start"]), st.integers(0, 3)),
)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


DAMAGE = st.sampled_from([0, 2, 10, 30])  # per file: the percentage of fields missing or of a wrong type
QUESTIONS = st.one_of(st.just("Who?"), TEXT)  # random text is sometimes empty or blank: not a question


@st.composite
def corrupted(draw, fields: dict, damage: int) -> dict:
    """The fields, each with probability damage% missing or replaced by a value of a random (usually wrong) type."""
    result = {}
    for key, value in fields.items():
        if draw(st.integers(0, 99)) >= damage:
            result[key] = value
        elif draw(st.booleans()):
            result[key] = draw(ANY_JSON)
    return result


@st.composite
def question_id(draw, number: int, damage: int) -> str:
    """A unique id, or with probability damage% one from a small pool (duplicates) or random text."""
    return draw(IDS) if draw(st.integers(0, 99)) < damage else f"q{number}"


@st.composite
def answers_for(draw, context: str) -> list[dict]:
    """0-2 answers: spans of the context (answer_start usually right), or random text at a random start."""
    answers = []
    for _ in range(draw(st.integers(0, 2))):
        if context and draw(st.booleans()):
            start = draw(st.integers(0, len(context) - 1))
            text = context[start : draw(st.integers(start, len(context)))]
            start += draw(st.sampled_from([0, 0, 0, 1, -1, 50]))
        else:
            text, start = draw(TEXT), draw(st.integers(-3, 40))
        answers.append({"text": text, "answer_start": start})
    return answers


@st.composite
def official_documents(draw):
    damage = draw(DAMAGE)
    articles, num_questions = [], 0
    for _ in range(draw(st.integers(0, 2))):
        paragraphs = []
        for _ in range(draw(st.integers(0, 2))):
            context = draw(TEXT)
            qas = []
            for _ in range(draw(st.integers(0, 3))):
                answers = [draw(corrupted(answer, damage)) for answer in draw(answers_for(context))]
                qa = {"id": draw(question_id(num_questions, damage)), "question": draw(QUESTIONS), "answers": answers}
                num_questions += 1
                if draw(st.booleans()):
                    qa["is_impossible"] = draw(st.booleans())
                qas.append(draw(corrupted(qa, damage)))
            paragraphs.append(draw(corrupted({"context": context, "qas": qas}, damage)))
        articles.append(draw(corrupted({"title": draw(TEXT), "paragraphs": paragraphs}, damage)))
    return draw(corrupted({"version": draw(st.sampled_from(["1.1", "v2.0"])), "data": articles}, damage))


@st.composite
def json_lines_rows(draw):
    """Hub-layout rows (JSON Lines), randomly damaged; now and then a row that is not an object at all."""
    damage, rows = draw(DAMAGE), []
    for number in range(draw(st.integers(0, 4))):
        context = draw(TEXT)
        answers = draw(answers_for(context))
        texts, starts = [a["text"] for a in answers], [a["answer_start"] for a in answers]
        if starts and draw(st.integers(0, 99)) < damage:
            starts.pop()  # lists of different lengths
        row = {"id": draw(question_id(number, damage)), "title": draw(TEXT), "context": context,
               "question": draw(QUESTIONS), "answers": draw(corrupted({"text": texts, "answer_start": starts}, damage))}
        rows.append(draw(ANY_JSON) if draw(st.integers(0, 99)) < damage // 2 else draw(corrupted(row, damage)))
    return rows


def assert_loads_cleanly_or_refuses(path, strict):
    try:
        rows, stats = load_squad_file(str(path), strict=strict)
    except SquadDataError:
        event("refused")  # pytest --hypothesis-show-statistics shows how often each outcome came up
        return
    event("loaded")
    assert rows and stats.num_examples == len(rows)
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert all(isinstance(row[key], str) for key in ("id", "title", "context", "question"))
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        assert len(texts) == len(starts)
        for text, start in zip(texts, starts):
            assert isinstance(text, str) and isinstance(start, int) and start >= 0
            assert row["context"][start : start + len(text)] == text


@SETTINGS
@given(doc=official_documents(), ensure_ascii=st.booleans(), strict=st.booleans())
def test_random_official_json_loads_cleanly_or_raises_squad_data_error(tmp_path_factory, doc, ensure_ascii, strict):
    path = tmp_path_factory.getbasetemp() / "random-official.json"
    path.write_text(json.dumps(doc, ensure_ascii=ensure_ascii), encoding="utf-8")
    assert_loads_cleanly_or_refuses(path, strict)


@SETTINGS
@given(rows=json_lines_rows(), ensure_ascii=st.booleans(), strict=st.booleans(), blank_lines=st.booleans())
def test_random_json_lines_load_cleanly_or_raise_squad_data_error(tmp_path_factory, rows, ensure_ascii, strict, blank_lines):
    path = tmp_path_factory.getbasetemp() / "random.jsonl"
    separator = "\n\n" if blank_lines else "\n"
    path.write_text(separator.join(json.dumps(row, ensure_ascii=ensure_ascii) for row in rows), encoding="utf-8")
    assert_loads_cleanly_or_refuses(path, strict)


@settings(max_examples=50, deadline=None)
@given(content=st.binary(max_size=64))
def test_random_bytes_load_cleanly_or_raise_squad_data_error(tmp_path_factory, content):
    path = tmp_path_factory.getbasetemp() / "random-bytes.json"
    path.write_bytes(content)
    assert_loads_cleanly_or_refuses(path, strict=False)


@st.composite
def valid_examples(draw, chars=CHARS):
    """Well-formed rows with unique ids, each answer a non-blank span of its context (texts may hold any character)."""
    text = st.text(chars, max_size=12)
    examples = []
    for i in range(draw(st.integers(1, 3))):
        context = draw(st.text(chars, min_size=1, max_size=20))
        start = draw(st.integers(0, len(context) - 1))
        answer = context[start : draw(st.integers(start + 1, len(context)))]
        assume(answer.strip())  # a blank answer is skipped (an error under strict): not a valid example
        examples.append({"id": f"q{i}", "title": draw(text), "context": context, "question": "Q" + draw(text),
                         "answers": {"text": [answer], "answer_start": [start]}})
    return examples


def write_official(path, examples):
    paragraphs = [{"context": ex["context"], "qas": [{"id": ex["id"], "question": ex["question"],
                  "answers": [{"text": t, "answer_start": s} for t, s in zip(ex["answers"]["text"], ex["answers"]["answer_start"])]}]}
                  for ex in examples]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": examples[0]["title"], "paragraphs": paragraphs}]},
                               ensure_ascii=False), encoding="utf-8")


def write_csv(path, examples):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "title", "context", "question", "answers"])
        writer.writeheader()
        for ex in examples:
            writer.writerow({**ex, "answers": json.dumps(ex["answers"], ensure_ascii=False)})


@SETTINGS
@given(examples=valid_examples(), layout=st.sampled_from(["official", "jsonl", "jsonl-ascii"]))
def test_valid_json_files_load_every_character_intact(tmp_path_factory, examples, layout):
    path = tmp_path_factory.getbasetemp() / ("valid.json" if layout == "official" else "valid.jsonl")
    if layout == "official":
        examples = [{**ex, "title": examples[0]["title"]} for ex in examples]  # one article
        write_official(path, examples)
    else:
        path.write_text("".join(json.dumps(ex, ensure_ascii=layout == "jsonl-ascii") + "\n" for ex in examples), encoding="utf-8")
    rows, stats = load_squad_file(str(path), strict=True)
    assert rows == examples and stats.num_bad_answer_start == 0


# a raw "\r" in a CSV field comes back as "\n": files are read with universal newlines, like any text file
@SETTINGS
@given(examples=valid_examples(CHARS.filter(lambda c: c != "\r")))
def test_valid_csv_files_load_every_character_intact(tmp_path_factory, examples):
    path = tmp_path_factory.getbasetemp() / "valid.csv"
    write_csv(path, examples)
    rows, stats = load_squad_file(str(path), strict=True)
    assert rows == examples and stats.num_bad_answer_start == 0


def test_predictions_jsonl_with_unicode_line_separators_reads_back(tmp_path):
    # generate.py writes predictions with atomic.write_jsonl (ensure_ascii=False): U+2028 and NEL stay raw
    rows = [{"id": "a", "strategy": "greedy", "sample": 0, "prediction": "x\u2028y"},
            {"id": "b", "strategy": "greedy", "sample": 0, "prediction": "z\x85w"}]
    path = tmp_path / "predictions_greedy.jsonl"
    atomic.write_jsonl(str(path), rows)
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert read_prediction_rows(str(path)) == rows


# ---------------------------------------------------------------------------
# Security: no pickles, no remote code by default, no tokens in outputs
# ---------------------------------------------------------------------------


def test_model_dir_with_only_a_pickle_is_refused(tmp_path, monkeypatch):
    model = load_base_model(ModelArguments(model_name_or_path=TINY_GPT2_DIR), from_scratch=True)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")

    def forbidden_load(*args, **kwargs):
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", forbidden_load)
    with pytest.raises(ModelLoadError) as info:
        load_base_model(ModelArguments(model_name_or_path=str(tmp_path)))
    assert str(tmp_path) in str(info.value) and "holds only pickled weights (pytorch_model.bin)" in str(info.value)
    with pytest.raises(ModelLoadError):
        load_for_inference(None, ModelArguments(model_name_or_path=str(tmp_path)))


def test_remote_code_is_off_by_default(tiny_model_dir, monkeypatch):
    assert ModelArguments().trust_remote_code is False and TrainModelArguments().trust_remote_code is False
    (model_args, *_), _, _ = parse_args(DATACLASSES, [])
    assert model_args.trust_remote_code is False
    generate_types = (generate.GenerateArguments, ModelArguments, EvalDataArguments)
    (_, generate_model_args, _), _, _ = parse_args(generate_types, ["--question", "q", "--context", "c"])
    assert generate_model_args.trust_remote_code is False
    assert inspect.signature(modeling.load_tokenizer).parameters["trust_remote_code"].default is False
    # what the loaders hand to transformers
    seen = []
    for auto_class in (modeling.AutoModelForCausalLM, modeling.AutoTokenizer):
        from_pretrained = auto_class.from_pretrained

        def recording(*args, _from_pretrained=from_pretrained, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _from_pretrained(*args, **kwargs)

        monkeypatch.setattr(auto_class, "from_pretrained", recording)
    load_for_inference(None, ModelArguments(model_name_or_path=tiny_model_dir))
    assert seen == [False, False]


@pytest.mark.slow
def test_hf_token_from_the_environment_never_reaches_the_outputs(tiny_model_dir, tmp_path, monkeypatch, capsys, caplog):
    token = "hf_FakeTokenForTheLeakTest0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", token)
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    out = tmp_path / "out"
    run_qa_lora.main(tiny_run_args(
        tiny_model_dir, out, "--report_to", "tensorboard", "--save_strategy", "steps", "--save_steps", "1",
        "--eval_strategy", "steps", "--eval_steps", "2", "--max_eval_samples", "2", "--eval_generation_samples", "2",
        "--push_to_hub", "--hub_model_id", "someone/leak-test", "--base_model_id", "someone/tiny-base",
    ))
    assert [call[0] for call in FakeHfApi.calls] == ["whoami", "create_repo", "whoami", "create_repo", "upload_folder"]
    files = [os.path.join(root, name) for root, _, names in os.walk(out) for name in names]
    for name in ("run_config.yaml", "run_summary.json", "README.md", "training_args.bin"):
        assert str(out / name) in files
    for path in files:
        with open(path, "rb") as f:
            assert token.encode() not in f.read(), path
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err + caplog.text


def project_python_files() -> list[str]:
    skip = {".git", "outputs", "__pycache__", ".pytest_cache", ".hypothesis"}
    found = []
    for root, dirs, names in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        found += [os.path.join(root, name) for name in names if name.endswith(".py")]
    return sorted(found)


PICKLE_MODULES = ("pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle")


def unsafe_loads(source: str) -> list[str]:
    """Calls that unpickle: torch.load without weights_only=True, and pickle/dill/joblib/cloudpickle loads."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (
            node.module in PICKLE_MODULES or node.module == "torch" and any(alias.name == "load" for alias in node.names)
        ):
            found.append((node.lineno, ast.unparse(node)))  # a bare load() would escape the checks below
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        weights_only = next((kw.value for kw in node.keywords if kw.arg == "weights_only"), None)
        if name == "torch.load" and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
            found.append((node.lineno, ast.unparse(node)))
        elif name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in PICKLE_MODULES:
            found.append((node.lineno, ast.unparse(node)))
    return [f"line {lineno}: {code}" for lineno, code in sorted(found)]


def test_unsafe_load_scan_finds_what_it_should():
    source = (
        "import torch, pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
        "pickle.loads(b)\nfrom pickle import load\nsafetensors.torch.load_file(p)\njson.load(f)\n"
    )
    assert [line.split(":")[0] for line in unsafe_loads(source)] == ["line 2", "line 3", "line 5", "line 6"]


def test_project_code_never_unpickles():
    files = project_python_files()
    assert os.path.join(REPO_ROOT, "run_qa_lora.py") in files and os.path.join(REPO_ROOT, "tests", "conftest.py") in files
    problems = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            if found := unsafe_loads(f.read()):
                problems[os.path.relpath(path, REPO_ROOT)] = found
    assert problems == {}


# ---------------------------------------------------------------------------
# Atomic outputs: a writer that fails leaves the previous file, or none
# ---------------------------------------------------------------------------


class Unserializable:
    pass


def listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.mark.parametrize(
    "write, bad_value",
    [
        # json.dump has written the first 100 kB when it meets the object it cannot encode
        (atomic.write_json, lambda: {"first": "x" * 100_000, "second": Unserializable()}),
        (atomic.write_yaml, lambda: {"first": "x", "second": Unserializable()}),
        (atomic.write_jsonl, lambda: ({"row": i} if i < 3 else Unserializable() for i in range(5))),
    ],
    ids=["json", "yaml", "jsonl"],
)
def test_failed_write_leaves_the_old_file_or_none(tmp_path, write, bad_value):
    new_path = tmp_path / "new.out"
    with pytest.raises((TypeError, yaml.YAMLError)):
        write(str(new_path), bad_value())
    assert listing(tmp_path) == []

    old_path = tmp_path / "old.out"
    old_path.write_text("previous content\n", encoding="utf-8")
    with pytest.raises((TypeError, yaml.YAMLError)):
        write(str(old_path), bad_value())
    assert listing(tmp_path) == ["old.out"]
    assert old_path.read_text(encoding="utf-8") == "previous content\n"


def test_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic.write_json(str(path), {"version": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_open(str(path)) as f:
            f.write('{"version": 2, "half')
            f.flush()
            raise KeyboardInterrupt
    assert listing(tmp_path) == ["summary.json"]
    assert json.loads(path.read_text(encoding="utf-8")) == {"version": 1}


def test_completed_write_replaces_the_file_with_normal_permissions(tmp_path):
    path = tmp_path / "run_config.yaml"
    path.write_text("old: 1\n", encoding="utf-8")
    old_umask = os.umask(0o022)
    try:
        atomic.write_yaml(str(path), {"new": 2})
    finally:
        os.umask(old_umask)
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == {"new": 2}
    assert (path.stat().st_mode & 0o777) == 0o644
    assert listing(tmp_path) == ["run_config.yaml"]
