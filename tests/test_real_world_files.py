"""Real-world files and the faults they bring, across the scripts: files shaped like SQuAD-format sets other
projects publish (a translated dev set with offsets off by a character, a COVID-19 QA set with integer ids and
long contexts and no version, a SQuAD-2.0-like set in Persian), scored exactly as the official script scores
them; no input or finished run overwritten; no traceback for a malformed file, a full disk, Ctrl-C or an
unreachable Hub; and the promises of --constrain_to_context and the abstention flags kept."""

import errno
import json
import logging
import math
import os
import subprocess
import sys

import pytest
import torch

from builders import tiny_run_args
from fakes import SignatureCheckedHfApi, free_port, subprocess_env
from repo_paths import DEV_FILE, REPO_ROOT, TINY_GPT2_DIR
from squad_lora import cli, hub, outputs
from squad_lora.commands import evaluate as evaluate_squad
from squad_lora.commands import generate
from squad_lora.commands import merge as merge_adapter
from squad_lora.commands import push as push_to_hub
from squad_lora.commands import train as run_qa_lora
from squad_lora.data import load_squad_file
from squad_lora.decoding import ContextSpanLogitsProcessor
from squad_lora.errors import (
    ConfigError,
    HubError,
    Interrupted,
    ModelLoadError,
    PredictionsError,
    RunFileError,
    SquadDataError,
)
from squad_reference import official_v1_evaluate, official_v2_evaluate

# ---------------------------------------------------------------------------
# Files shaped like those other projects publish (written for this project; the texts are invented)
# ---------------------------------------------------------------------------

ZH_CONTEXT = "长江是亚洲最长的河流，全长约六千三百公里。它发源于青藏高原，最终流入东海。上海位于长江的入海口。"


def official(articles, version=None) -> dict:
    doc = {"data": articles}
    if version is not None:
        doc["version"] = version
    return doc


def translated_dev() -> dict:
    """A machine-translated dev set: answer_start counted before the translation tidied the text, so that some
    offsets miss their answer by a character or two, and one by far."""

    def qa(qid, question, answer, shift):
        return {
            "id": qid,
            "question": question,
            "answers": [{"text": answer, "answer_start": ZH_CONTEXT.index(answer) + shift}],
        }

    qas = [
        qa("zh-1", "亚洲最长的河流是哪条？", "长江", 0),
        qa("zh-2", "长江全长多少公里？", "六千三百公里", 1),
        qa("zh-3", "长江发源于哪里？", "青藏高原", -2),
        qa("zh-4", "长江流入哪里？", "东海", 30),  # no nearby occurrence: skipped in training, scored anyway
        qa("zh-5", "哪座城市位于入海口？", "上海", 0),
    ]
    return official([{"title": "长江", "paragraphs": [{"context": ZH_CONTEXT, "qas": qas}]}], version="1.1")


def covid_qa() -> dict:
    """COVID-QA's shape: integer ids, no version field, no titles, extra fields, and contexts far longer than the
    tiny model's 512 positions."""
    filler = " ".join(f"Section {i} reports the findings of cohort {i} in detail." for i in range(120))
    context = "The incubation period of the virus is about five days. " + filler + " Masks reduce transmission."
    qas = [
        {
            "id": 101,
            "question": "What is the incubation period?",
            "is_impossible": False,
            "answers": [{"text": "about five days", "answer_start": context.index("about five days")}],
        },
        {
            "id": 102,
            "question": "What reduces transmission?",
            "is_impossible": False,
            "answers": [{"text": "Masks", "answer_start": context.index("Masks")}],
        },
    ]
    return official([{"paragraphs": [{"document_id": 3321, "context": context, "qas": qas}]}])


def persian_v2() -> dict:
    """A SQuAD-2.0-like set: no version field, is_impossible questions with plausible_answers, integer ids."""
    context = "تهران پایتخت ایران است. این شهر در دامنه کوه البرز قرار دارد."
    qas = [
        {
            "id": 1,
            "question": "پایتخت ایران کجاست؟",
            "is_impossible": False,
            "answers": [{"text": "تهران", "answer_start": 0}],
        },
        {
            "id": 2,
            "question": "تهران در دامنه کدام کوه است؟",
            "is_impossible": False,
            "answers": [{"text": "البرز", "answer_start": context.index("البرز")}],
        },
        {
            "id": 3,
            "question": "جمعیت تهران چقدر است؟",
            "is_impossible": True,
            "answers": [],
            "plausible_answers": [{"text": "تهران", "answer_start": 0}],
        },
    ]
    return official([{"title": "تهران", "paragraphs": [{"context": context, "qas": qas}]}])


def write(path, doc) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc if isinstance(doc, str) else json.dumps(doc, ensure_ascii=False))
    return str(path)


def read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def gold(doc) -> dict:
    return {str(qa["id"]): (qa["answers"][0]["text"] if qa["answers"] else "") for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]}  # fmt: skip


# ---------------------------------------------------------------------------
# Scoring counts every question, whatever its offsets
# ---------------------------------------------------------------------------


def test_scoring_a_file_with_bad_offsets_equals_the_official_script(tmp_path):
    doc = translated_dev()
    data = write(tmp_path / "dev-zh.json", doc)
    predictions = {
        **gold(doc),
        "zh-3": "高原",
        "zh-4": "东海",
    }  # one partly right, one exact where the offset is far off
    result = evaluate_squad.main([data, write(tmp_path / "p.json", predictions)])
    examples, _ = load_squad_file(data, check_answers=False)
    assert len(examples) == 5  # training's loader would keep 4: zh-4's offset finds no answer
    expected = official_v1_evaluate(examples, predictions)
    assert result["exact_match"] == pytest.approx(expected["exact_match"]) and result["f1"] == pytest.approx(
        expected["f1"]
    )
    assert result["exact_match"] == pytest.approx(80.0)


def test_training_repairs_offsets_a_few_characters_off_and_skips_the_rest(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="squad_lora")
    examples, stats = load_squad_file(write(tmp_path / "dev-zh.json", translated_dev()))
    assert [ex["id"] for ex in examples] == ["zh-1", "zh-2", "zh-3", "zh-5"]
    assert (stats.num_repaired_answer_start, stats.num_bad_answer_start) == (2, 1)
    for ex in examples:
        (start,), (text,) = ex["answers"]["answer_start"], ex["answers"]["text"]
        assert ZH_CONTEXT[start : start + len(text)] == text
    assert "moved 2 answer_start(s)" in caplog.text and "skipped 1 answer(s)" in caplog.text
    with pytest.raises(SquadDataError, match="zh-2.*answer_start .* does not point at the answer"):
        load_squad_file(str(tmp_path / "dev-zh.json"), strict=True)


def test_integer_ids_become_text_and_a_missing_version_is_inferred(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="squad_lora")
    examples, stats = load_squad_file(write(tmp_path / "covid.json", covid_qa()))
    assert [ex["id"] for ex in examples] == ["101", "102"] and all(ex["title"] == "" for ex in examples)
    assert (stats.version, stats.version_inferred, stats.num_numeric_ids) == ("v1.1", True, 2)
    assert "no version field: v1.1 inferred" in caplog.text
    _, stats = load_squad_file(write(tmp_path / "fa.json", persian_v2()))
    assert (stats.version, stats.version_inferred) == ("v2.0", True)


def test_a_null_title_is_no_title(tmp_path):
    doc = official([{"title": None, "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}])  # fmt: skip
    (example,), _ = load_squad_file(write(tmp_path / "null-title.json", doc))
    assert example["title"] == ""


def test_ids_that_collide_as_text_are_an_error_naming_both(tmp_path):
    doc = official([{"paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": 7, "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "7", "question": "What is in France?", "answers": [{"text": "Paris", "answer_start": 0}]},
    ]}]}])  # fmt: skip
    with pytest.raises(SquadDataError, match=r"ids 7 and '7' are the same as text"):
        load_squad_file(write(tmp_path / "ids.json", doc))
    with pytest.raises(SquadDataError, match=r"field 'id' is a bool \(True\)"):
        load_squad_file(write(tmp_path / "bool.json", [{"id": True, "context": "c", "question": "q?", "answers": {"text": [], "answer_start": []}}]))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("shape", [translated_dev, covid_qa, persian_v2])
def test_foreign_files_train_answer_and_score_end_to_end(shape, tiny_model_dir, tmp_path):
    doc = shape()
    data = write(tmp_path / f"{shape.__name__}.json", doc)
    summary = run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / "run", "--train_file", data, "--max_steps", 1))
    train = summary["data"]["train"]
    assert train["examples"] == len(gold(doc)) - (shape is translated_dev)  # zh-4's offset finds no answer
    assert train["squad_version_inferred"] == (shape is not translated_dev)
    assert train["repaired_answer_start"] == (2 if shape is translated_dev else 0)
    assert train["context_cut"] == (2 if shape is covid_qa else 0)  # longer than the tiny model's 512 positions
    generate.main(["--adapter", str(tmp_path / "run"), "--validation_file", data, "--output_dir", str(tmp_path / "p"),
                   "--max_new_tokens", "4", "--disable_tqdm", "true"])  # fmt: skip
    with open(tmp_path / "p" / "predictions_greedy.json", encoding="utf-8") as f:
        predicted = json.load(f)
    assert set(predicted) == set(gold(doc))  # every question answered, ids as text
    predicted[str(doc["data"][0]["paragraphs"][0]["qas"][0]["id"])] = next(iter(gold(doc).values()))  # one right
    result = evaluate_squad.main([data, write(tmp_path / "p.json", predicted)])
    examples, stats = load_squad_file(data, check_answers=False)  # scoring keeps every question
    if stats.version == "v2.0":
        expected = official_v2_evaluate(examples, predicted)
        assert result["total"] == len(gold(doc)) and result["exact"] == pytest.approx(expected["exact"])
    else:
        expected = official_v1_evaluate(examples, predicted)
        assert result["exact_match"] == pytest.approx(expected["exact_match"])
    assert result["f1"] == pytest.approx(expected["f1"])


def test_covid_qa_sized_contexts_are_answered_in_overlapping_windows(tiny_model_dir, tiny_tokenizer, tmp_path, caplog):
    doc = covid_qa()
    data = write(tmp_path / "covid.json", doc)
    with caplog.at_level(logging.INFO, logger="squad_lora.windows"):
        rows = generate.main(["--model_name_or_path", tiny_model_dir, "--validation_file", data, "--output_dir",
                              str(tmp_path / "p"), "--max_new_tokens", "4", "--disable_tqdm", "true"])["greedy"]  # fmt: skip
    # windows of what the tiny model's 512 positions leave: 512 - 4 new tokens - 26 of prompt template - 64 of
    # question = 418 tokens, each sharing a quarter of that (104) with the one before
    context = doc["data"][0]["paragraphs"][0]["context"]
    num_tokens = len(tiny_tokenizer(context, add_special_tokens=False)["input_ids"])
    windows = 1 + math.ceil((num_tokens - 418) / (418 - 104))
    assert num_tokens > 1000 and windows >= 4
    assert f"1 context(s) longer than 418 tokens answered in {windows} windows overlapping by 104 tokens" in caplog.text
    assert [row["id"] for row in rows] == ["101", "102"] and all(row["windows"] == windows for row in rows)
    assert all(row["window"] in range(windows) or row["prediction"] == "" for row in rows)


# ---------------------------------------------------------------------------
# No input and no finished run overwritten
# ---------------------------------------------------------------------------


def test_an_output_that_is_an_input_is_refused_before_any_work(trained_adapter_run, tmp_path):
    run_dir = trained_adapter_run
    adapter = os.path.join(run_dir, "adapter_model.safetensors")
    before = os.path.getmtime(adapter)
    for output in (run_dir, os.path.dirname(run_dir)):  # the run itself, or a directory holding it
        with pytest.raises(ConfigError, match=r"--output_dir .* (is|holds) the input --adapter"):
            merge_adapter.main([run_dir, "--output_dir", output, "--overwrite_output_dir"])
    assert os.path.getmtime(adapter) == before
    predictions = write(tmp_path / "p.json", {"q": "x"})
    for target in (DEV_FILE, predictions):
        with pytest.raises(ConfigError, match=r"--output .* is the input"):
            evaluate_squad.main([DEV_FILE, predictions, "--output", target])
    data_as_predictions = write(tmp_path / "predictions_greedy.json", read(DEV_FILE))
    with pytest.raises(ConfigError, match="is the input --validation_file"):
        generate.main(["--adapter", run_dir, "--validation_file", data_as_predictions, "--output_dir", str(tmp_path),
                       "--overwrite_output_dir"])  # fmt: skip
    with pytest.raises(ConfigError, match="is the input --model_name_or_path"):
        run_qa_lora.main(tiny_run_args(TINY_GPT2_DIR, TINY_GPT2_DIR))


@pytest.fixture(scope="module")
def trained_adapter_run(tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "run"
    run_qa_lora.main(tiny_run_args(tiny_model_dir, output_dir))
    return str(output_dir)


def test_a_second_run_on_a_directory_in_use_is_refused(tiny_model_dir, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from squad_lora.outputs import lock_dir; lock_dir(sys.argv[1]); "
         "print('held', flush=True); time.sleep(60)", str(tmp_path / "busy")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunFileError, match=rf"another run is writing into it now \(process {holder.pid}\)"):
            run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / "busy"))
    finally:
        holder.kill()
        holder.wait()
    run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / "busy"))  # free again once the holder is gone


def test_a_full_disk_at_the_final_save_keeps_the_adapter_and_says_where(tiny_model_dir, tmp_path, monkeypatch):
    write_json = outputs.write_json

    def full_disk(path, obj):
        if path.endswith(outputs.SUMMARY_FILE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_json(path, obj)

    monkeypatch.setattr(outputs, "write_json", full_disk)
    with pytest.raises(RunFileError, match=r"No space left on device.*the trained adapter itself is saved there"):
        run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / "full"))
    assert os.path.isfile(tmp_path / "full" / "adapter_model.safetensors")

    # failing while the adapter itself is written: what was written stays under its temporary name
    from squad_lora.trainer import QATrainer

    save_model = QATrainer.save_model

    def failing_save(self, output_dir=None, _internal_call=False):
        save_model(self, output_dir, _internal_call)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(QATrainer, "save_model", failing_save)
    with pytest.raises(RunFileError, match=r"what was written is kept in (\S+\.saving-\S+)") as info:
        run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / "full2"))
    kept = str(info.value).split("kept in ")[1].split(";")[0]
    assert os.path.isfile(os.path.join(kept, "adapter_model.safetensors"))


def test_a_refused_push_changes_nothing_on_disk(trained_adapter_run, tmp_path, monkeypatch):
    import shutil

    run_dir = str(tmp_path / "run")
    shutil.copytree(trained_adapter_run, run_dir)
    names = ("README.md", outputs.SUMMARY_FILE, "adapter_config.json")
    before = {name: read(os.path.join(run_dir, name)) for name in names}

    class Unreachable(SignatureCheckedHfApi):
        endpoint = "https://hub.example"

        def whoami(self):
            raise ConnectionError("no route to host")

    monkeypatch.setattr(hub, "HfApi", Unreachable)
    with pytest.raises(HubError) as info:
        push_to_hub.main([run_dir, "--hub_model_id", "me/tiny", "--base_model_id", "openai-community/gpt2"])
    assert str(info.value).startswith("push_to_hub.py: cannot log in") and "train without" not in str(info.value)
    with pytest.raises(HubError, match="local path"):  # a local base and no --base_model_id: refused first
        push_to_hub.main([run_dir, "--hub_model_id", "me/tiny"])
    assert {name: read(os.path.join(run_dir, name)) for name in names} == before


# ---------------------------------------------------------------------------
# One line, never a traceback
# ---------------------------------------------------------------------------


def test_output_paths_that_cannot_be_directories_are_one_line(trained_adapter_run, tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(RunFileError, match="symbolic link that leads nowhere"):
        run_qa_lora.main(tiny_run_args(TINY_GPT2_DIR, loop))
    a_file = write(tmp_path / "a-file", "x")
    with pytest.raises(RunFileError, match="is a file, not a directory"):
        merge_adapter.main([trained_adapter_run, "--output_dir", a_file, "--overwrite_output_dir"])


@pytest.mark.parametrize("fault", ["surrogate", "deep"])
def test_malformed_json_is_one_line_in_data_predictions_and_configs(fault, tmp_path):
    text = '{"q1": "\\ud800"}' if fault == "surrogate" else "[" * 100_000 + "]" * 100_000
    message = "lone UTF-16 surrogate" if fault == "surrogate" else "nested too deeply"
    with pytest.raises(SquadDataError, match=message):
        load_squad_file(write(tmp_path / "data.json", text if fault == "deep" else '[{"id": "\\ud800"}]'))
    with pytest.raises(PredictionsError, match=message):
        evaluate_squad.main([DEV_FILE, write(tmp_path / "p.json", text)])
    with pytest.raises(ConfigError, match=message):
        run_qa_lora.main([write(tmp_path / "c.json", text if fault == "deep" else '{"run_name": "\\ud800"}')])


def test_yaml_aliases_and_duplicate_keys_are_refused_in_one_short_line(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(9)
    ) + "lora_target_modules: *j\n"  # fmt: skip
    with pytest.raises(ConfigError, match="YAML aliases") as info:
        run_qa_lora.main([write(tmp_path / "bomb.yaml", bomb)])
    assert len(str(info.value)) < 300
    with pytest.raises(ConfigError, match="the key 'lora_r' is given twice"):
        run_qa_lora.main([write(tmp_path / "dup.yaml", "lora_r: 8\nlearning_rate: 1e-4\nlora_r: 16\n")])


def test_resuming_with_other_lora_flags_is_refused_before_loading(tiny_model_dir, tmp_path):
    output_dir = tmp_path / "run"
    run_qa_lora.main(tiny_run_args(tiny_model_dir, output_dir, "--save_strategy", "steps", "--save_steps", 1))
    os.remove(output_dir / outputs.SUMMARY_FILE)  # as if interrupted after its checkpoints
    with pytest.raises(ConfigError, match=r"its adapter has r 8 \(asked: 16\)"):
        run_qa_lora.main(tiny_run_args(tiny_model_dir, output_dir, "--resume_from_checkpoint", "last", "--lora_r", 16))


def test_ctrl_c_ends_in_one_line_naming_the_checkpoint_to_resume(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import transformers

    training_step = transformers.Trainer.training_step

    def interrupted_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", interrupted_at_step_3)
    argv = tiny_run_args(
        tiny_model_dir, tmp_path / "run", "--max_steps", 4, "--save_strategy", "steps", "--save_steps", 2
    )
    with pytest.raises(Interrupted, match=r"at step 2; the newest checkpoint is \S+checkpoint-2: continue with"):
        run_qa_lora.main(argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(lambda: run_qa_lora.main(argv + ["--overwrite_output_dir"]))
    assert exit_info.value.code == 130
    (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
    assert line.startswith("error: training interrupted (Ctrl-C)")


# ---------------------------------------------------------------------------
# Promises kept
# ---------------------------------------------------------------------------


def test_constrained_answers_never_end_on_a_stub_of_the_no_answer_string():
    span = torch.tensor([5, 7, 5, 8, -1, 6, 7, 3])  # context 5 7 5 8, then the no-answer string 6 7 3
    stop = [0]
    processor = ContextSpanLogitsProcessor([span], 1, 2, stop)

    def allowed(generated):
        scores = processor(torch.tensor([[1, 2, *generated]]), torch.zeros(1, 10))
        return set((scores[0] == 0).nonzero().flatten().tolist())

    assert allowed([6]) == {7} and allowed([6, 7]) == {3}  # "un", "unanswer": no stop yet
    assert allowed([6, 7, 3]) == {0}  # the whole no-answer string may end
    assert allowed([5]) == {7, 8, 0} and allowed([5, 8]) == {0}  # spans of the context may end anywhere


def test_abstaining_on_v11_data_is_counted_and_warned(trained_adapter_run, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="generate")
    generate.main(["--adapter", trained_adapter_run, "--validation_file", DEV_FILE, "--max_eval_samples", "6",
                   "--min_answer_confidence", "1.0", "--output_dir", str(tmp_path / "p"), "--disable_tqdm", "true"])  # fmt: skip
    assert "greedy: 6 of 6 answers abstained ('') on SQuAD v1.1 data" in caplog.text


def test_remote_code_is_refused_naming_the_flag(tmp_path):
    model_dir = tmp_path / "remote"
    os.makedirs(model_dir)
    with open(os.path.join(TINY_GPT2_DIR, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    config.update(model_type="squadloratestcustom", auto_map={"AutoConfig": "configuration_x.XConfig"})
    write(model_dir / "config.json", config)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        write(model_dir / name, read(os.path.join(TINY_GPT2_DIR, name)))
    with pytest.raises(ModelLoadError, match="ships its own modelling code .*pass --trust_remote_code"):
        generate.main(["--model_name_or_path", str(model_dir), "--question", "q?", "--context", "c."])


def test_fp16_without_a_gpu_is_refused_like_bf16(monkeypatch):
    from fakes import hide_gpus

    hide_gpus(monkeypatch)  # on a machine with a GPU too
    with pytest.raises(ConfigError, match="--fp16: this machine has no GPU"):
        cli.parse_args(run_qa_lora.ARGUMENT_TYPES, ["--fp16"])


def test_generate_checks_the_chat_template_before_any_weights_load(tiny_tokenizer, tmp_path):
    model_dir = tmp_path / "config-only"  # no weights: a refusal after loading them would fail otherwise
    tiny_tokenizer.save_pretrained(model_dir)
    write(model_dir / "config.json", read(os.path.join(TINY_GPT2_DIR, "config.json")))
    with pytest.raises(ConfigError, match="--prompt_format chat: .* has no chat template"):
        generate.main(["--model_name_or_path", str(model_dir), "--prompt_format", "chat", "--question", "q?",
                       "--context", "c."])  # fmt: skip


def test_an_over_long_question_is_skipped_and_counted_not_fatal(trained_adapter_run, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="squad_lora")
    rows = load_squad_file(DEV_FILE)[0][:4]
    rows[1] = {**rows[1], "id": "too-long", "question": "Why " * 600 + "?"}
    data = str(tmp_path / "long.jsonl")
    with open(data, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    results = generate.main(["--adapter", trained_adapter_run, "--validation_file", data, "--output_dir",
                             str(tmp_path / "p"), "--max_new_tokens", "4", "--disable_tqdm", "true"])  # fmt: skip
    assert [row["id"] for row in results["greedy"]] == [rows[0]["id"], rows[2]["id"], rows[3]["id"]]
    assert "skipped 1 question(s) longer alone than" in caplog.text and "too-long" in caplog.text


def test_validation_questions_that_are_training_ones_are_warned(tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="run_qa_lora")
    summary = run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / "run", "--validation_file",
                                             tiny_run_args(tiny_model_dir, tmp_path)[3], "--eval_strategy", "steps",
                                             "--eval_steps", 2, "--eval_generation_samples", 0))  # fmt: skip
    assert summary["data"]["validation"]["ids_also_in_train"] == 220
    assert "220 of the 220 validation question ids are training ones too" in caplog.text


# ---------------------------------------------------------------------------
# An unreachable Hub: found in one attempt, said in one line
# ---------------------------------------------------------------------------


def unreachable_hub_env() -> dict:
    env = subprocess_env()
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    return env


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["-m", "accelerate.commands.launch", "--quiet"]])
def test_the_first_command_offline_ends_in_the_projects_message(launcher, tmp_path):
    command = [sys.executable, *launcher, os.path.join(REPO_ROOT, "run_qa_lora.py"), "--lora_r", "8",
               "--output_dir", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=unreachable_hub_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == (1 if launcher else 2)
    lines = proc.stderr.strip().splitlines()
    assert any("does not answer" in line and "working offline" in line for line in lines)
    assert not any("Retrying" in line or "Traceback" in line for line in lines), proc.stderr[-2000:]
    error_at = max(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert "could not load the tokenizer 'gpt2'" in lines[error_at]
    assert lines[error_at + 1 :] == [lines[-1]] and lines[-1].startswith("If you are offline")
