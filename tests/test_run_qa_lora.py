"""run_qa_lora.py end to end on tiny models: its outputs (the Hugging Face examples' result files and a
training_args.bin that unpickles among them), resuming (also after kill -9), refusals, full fine-tuning, quantized
and Llama bases, gradient checkpointing, best model and early stopping, the Hub, the answer it trains, the prompt
format it records, and its LoRA options shown everywhere a run shows them."""

import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from builders import (
    ALL_LINEAR,
    ATTN,
    HIDDEN,
    LORA_R,
    QUANTIZATION_FLAGS,
    SHAPES,
    TINY_NUM_PARAMS,
    VOCAB,
    dora_magnitudes,
    lora_option_params,
    lora_params,
    parse_training_args,
    quantized_layer_class,
    tiny_run_args,
)
from fakes import FakeHfApi, install_trainer_spy, subprocess_env
from repo_paths import DEV_FILE, REPO_ROOT, SAMPLE_DIR, SMOKE_CONFIG, TINY_GPT2_DIR, TRAIN_FILE
from run_outputs import eval_entries, logged_losses, read_events, read_json, session_hparams
from squad_lora import hub
from squad_lora.args import ModelArguments
from squad_lora.cli import resolved_config
from squad_lora.commands import generate
from squad_lora.commands import train as run_qa_lora
from squad_lora.data import load_squad_file
from squad_lora.errors import ConfigError, ModelLoadError, SquadDataError
from squad_lora.modeling import BASE_MODEL_SUBDIR, load_for_inference
from squad_lora.outputs import LOCK_FILE
from squad_lora.prompt import PLAIN, prompt_template
from squad_lora.run_dir import resolve_run

TINY_LORA_R8_PARAMS = lora_params(8, ATTN)


def assert_base_weights_unchanged(peft_model, base_weights_file):
    """The trained model's base weights equal the ones saved before training (LoRA keeps them frozen)."""
    saved = load_file(base_weights_file)
    trained = {
        name.replace(".base_layer.", "."): param.detach()
        for name, param in peft_model.get_base_model().named_parameters()
        if "lora_" not in name
    }
    assert saved and set(saved) <= set(trained)
    for name, tensor in saved.items():
        assert torch.equal(trained[name], tensor), f"{name} changed during LoRA training"


def assert_lora_weights_trained(peft_model, adapter_file):
    """The adapter file holds only LoRA weights, equal to the trained ones, and B moved off its zero init."""
    saved = load_file(adapter_file)
    assert saved and all("lora_" in name for name in saved)
    trained = {
        name.replace(".default.", "."): param.detach()
        for name, param in peft_model.named_parameters()
        if "lora_" in name
    }
    assert set(saved) == set(trained)
    for name, tensor in saved.items():
        assert torch.equal(tensor, trained[name]), name
    lora_b = [tensor for name, tensor in saved.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)


# ---------------------------------------------------------------------------
# The smoke run: configs/smoke.yaml (from_scratch tiny GPT-2) with flags on top
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("smoke") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(REPO_ROOT)  # smoke.yaml's paths are relative to the repository
        spy = install_trainer_spy(monkeypatch)
        summary = run_qa_lora.main(
            [
                "configs/smoke.yaml",
                "--output_dir",
                str(output_dir),
                "--max_steps",
                "3",
                "--logging_steps",
                "1",
                "--eval_generation_samples",
                "4",
                "--disable_tqdm",
                "true",
            ]
        )
    assert len(spy.trainers) == 1
    return SimpleNamespace(summary=summary, output_dir=str(output_dir), model=spy.trainers[0].model, steps=spy.steps)


@pytest.mark.slow
def test_smoke_run_writes_every_output(smoke_run):
    out = smoke_run.output_dir
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "run_config.yaml",
        "run_summary.json",
        "README.md",
        os.path.join(BASE_MODEL_SUBDIR, "config.json"),
        os.path.join(BASE_MODEL_SUBDIR, "model.safetensors"),
        os.path.join(BASE_MODEL_SUBDIR, "tokenizer.json"),
    ):
        assert os.path.isfile(os.path.join(out, name)), name
    leftovers = [p for p in glob.glob(os.path.join(out, "**", ".*"), recursive=True)]
    assert leftovers == [], "staging directories and temporary files are renamed or removed"
    assert smoke_run.steps == [0, 1, 2]


@pytest.mark.slow
def test_smoke_run_summary(smoke_run):
    with open(os.path.join(smoke_run.output_dir, "run_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary == json.loads(json.dumps(smoke_run.summary))
    assert summary["parameters"] == (
        f"trainable params: {TINY_LORA_R8_PARAMS:,} || all params: {TINY_NUM_PARAMS + TINY_LORA_R8_PARAMS:,} "
        f"|| trainable%: {100 * TINY_LORA_R8_PARAMS / (TINY_NUM_PARAMS + TINY_LORA_R8_PARAMS):.4f}"
    )
    assert summary["trainable_params"] == TINY_LORA_R8_PARAMS
    assert summary["lora"]["target_modules"] == ["c_attn"]  # the GPT-2 default
    assert summary["run_name"] == "smoke"  # from the config file's name
    assert math.isfinite(summary["train_metrics"]["train_loss"])
    assert math.isfinite(summary["eval_metrics"]["eval_loss"])
    for key in ("eval_exact_match", "eval_f1"):  # greedy answers to 4 validation questions
        assert 0 <= summary["eval_metrics"][key] <= 100
    assert summary["data"]["max_seq_length"] == 512  # the tiny config's n_positions
    assert summary["data"]["train"] == {
        "examples": 220,
        "features": 220,
        "context_cut": 0,
        "dropped_too_long": 0,
        "skipped_bad_answer_start": 0,
        "repaired_answer_start": 0,
        "skipped_blank_answers": 0,
        "squad_version": "1.1",
        "squad_version_inferred": False,
    }
    assert summary["data"]["validation"]["examples"] == summary["data"]["validation"]["features"] == 44
    assert summary["hub_model_id"] is None


@pytest.mark.slow
def test_smoke_run_tensorboard_holds_train_and_eval_loss(smoke_run):
    events, _ = read_events(smoke_run.output_dir)
    assert [step for step, _ in events["train/loss"]] == [1, 2, 3]  # --logging_steps 1 overrides the file's 5
    assert all(math.isfinite(value) for _, value in events["train/loss"])
    assert events["eval/loss"]
    assert events["eval/loss"][-1][1] == pytest.approx(smoke_run.summary["eval_metrics"]["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_smoke_run_keeps_base_weights_and_trains_lora(smoke_run):
    out = smoke_run.output_dir
    assert_base_weights_unchanged(smoke_run.model, os.path.join(out, BASE_MODEL_SUBDIR, "model.safetensors"))
    assert_lora_weights_trained(smoke_run.model, os.path.join(out, "adapter_model.safetensors"))
    with open(os.path.join(out, "adapter_config.json"), encoding="utf-8") as f:
        adapter_config = json.load(f)
    assert adapter_config["base_model_name_or_path"] == os.path.abspath(os.path.join(out, BASE_MODEL_SUBDIR))
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["target_modules"]) == (8, 16, ["c_attn"])


@pytest.mark.slow
def test_smoke_run_model_card(smoke_run):
    card = ModelCard.load(os.path.join(smoke_run.output_dir, "README.md"))
    assert card.data.library_name == "peft"
    assert {"squad-lora", "question-answering", "lora"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.base_model is None  # a local path is not a Hub id
    assert card.data.license == "apache-2.0"  # the project's own (LICENSE), unless --license says otherwise
    text = card.text
    assert "`configs/tiny-gpt2`" in text  # the base model
    assert "LoRA r=8, alpha=16, dropout=0.1" in text and "target_modules=['c_attn']" in text
    assert smoke_run.summary["parameters"] in text
    assert "| eval_loss |" in text and "| eval_f1 |" in text
    assert "runtime" not in text
    assert "## How to load" in text and "AutoPeftModelForCausalLM.from_pretrained(" in text


@pytest.mark.slow
def test_run_config_round_trips_through_the_parser(smoke_run):
    path = os.path.join(smoke_run.output_dir, "run_config.yaml")
    with open(path, encoding="utf-8") as f:
        saved = yaml.safe_load(f)
    # flags won over the config file, and the file's other values were kept
    assert saved["output_dir"] == smoke_run.output_dir and saved["logging_steps"] == 1 and saved["max_steps"] == 3
    assert saved["from_scratch"] is True and saved["learning_rate"] == 1e-3
    parsed = parse_training_args([path])
    assert parsed.config_file == path
    assert resolved_config(*parsed.all) == saved


@pytest.mark.slow
def test_finished_run_is_refused_without_overwrite(smoke_run):
    summary_file = os.path.join(smoke_run.output_dir, "run_summary.json")
    mtime = os.path.getmtime(summary_file)
    with pytest.raises(ConfigError) as info:
        run_qa_lora.main([SMOKE_CONFIG, "--output_dir", smoke_run.output_dir, "--overwrite_output_dir", "false"])
    message = str(info.value)
    assert "holds a finished run" in message and "--overwrite_output_dir" in message
    assert os.path.getmtime(summary_file) == mtime


# ---------------------------------------------------------------------------
# What a run leaves for others: the Hugging Face examples' result files, training_args.bin
# ---------------------------------------------------------------------------


def test_the_hugging_face_examples_result_files_are_written(local_base_run):
    run_dir, summary = local_base_run
    train_results = read_json(os.path.join(run_dir, "train_results.json"))
    eval_results = read_json(os.path.join(run_dir, "eval_results.json"))
    all_results = read_json(os.path.join(run_dir, "all_results.json"))
    assert train_results["train_runtime"] == summary["train_metrics"]["train_runtime"]
    assert eval_results["eval_f1"] == summary["eval_metrics"]["eval_f1"]
    assert all_results == {**train_results, **eval_results}


def test_training_args_bin_unpickles_outside_the_script(local_base_run, tmp_path):
    run_dir, _ = local_base_run
    code = (
        "import sys, torch; "  # the installed package, from another directory
        "args = torch.load(sys.argv[1], weights_only=False); print(type(args).__module__, args.learning_rate)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, os.path.join(run_dir, "training_args.bin")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split() == ["squad_lora.training_args", "0.001"]


# ---------------------------------------------------------------------------
# Resuming, full fine-tuning, target modules, long contexts
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_from_checkpoint_last_continues(tiny_model_dir, tmp_path, trainer_spy):
    # constant learning rate: the 2-step and 4-step runs then share a schedule, so the losses are comparable
    common = [
        "--lr_scheduler_type",
        "constant",
        "--warmup_steps",
        "0",
        "--learning_rate",
        "1e-3",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    ]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    run_qa_lora.main(tiny_run_args(tiny_model_dir, resumed, *common))
    assert os.path.isdir(resumed / "checkpoint-2")

    trainer_spy.steps.clear()
    run_qa_lora.main(
        tiny_run_args(tiny_model_dir, resumed, *common, "--max_steps", "4", "--resume_from_checkpoint", "last")
    )
    assert trainer_spy.steps == [2, 3]  # continued at step 2, not from scratch
    with open(resumed / "checkpoint-4" / "trainer_state.json", encoding="utf-8") as f:
        resumed_state = json.load(f)
    assert resumed_state["global_step"] == 4
    peft_model = trainer_spy.trainers[-1].model
    assert_base_weights_unchanged(peft_model, os.path.join(tiny_model_dir, "model.safetensors"))
    assert_lora_weights_trained(peft_model, str(resumed / "adapter_model.safetensors"))
    with open(resumed / "adapter_config.json", encoding="utf-8") as f:
        assert json.load(f)["base_model_name_or_path"] == tiny_model_dir
    assert not os.path.exists(resumed / BASE_MODEL_SUBDIR)  # only a from_scratch base is saved

    run_qa_lora.main(tiny_run_args(tiny_model_dir, straight, *common, "--max_steps", "4"))
    with open(straight / "checkpoint-4" / "trainer_state.json", encoding="utf-8") as f:
        straight_state = json.load(f)
    resumed_losses = [(h["step"], h["loss"]) for h in resumed_state["log_history"] if "loss" in h]
    straight_losses = [(h["step"], h["loss"]) for h in straight_state["log_history"] if "loss" in h]
    assert [step for step, _ in resumed_losses] == [step for step, _ in straight_losses] == [1, 2, 3, 4]
    assert [loss for _, loss in resumed_losses] == pytest.approx([loss for _, loss in straight_losses], rel=1e-5)


def test_resume_last_without_a_checkpoint_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="--resume_from_checkpoint last: no checkpoint-\\* directory"):
        run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path, "--resume_from_checkpoint", "last"))


def test_checkpoints_without_a_summary_are_refused_without_resume(tiny_model_dir, tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(ConfigError) as info:
        run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path))
    assert "checkpoint-3" in str(info.value) and "--resume_from_checkpoint last" in str(info.value)


@pytest.mark.slow
def test_lora_r_0_trains_every_weight(tiny_model_dir, tmp_path):
    # no warmup: its first step has learning rate 0, and this run has one step
    summary = run_qa_lora.main(
        tiny_run_args(tiny_model_dir, tmp_path, "--lora_r", "0", "--max_steps", "1", "--warmup_steps", "0")
    )
    assert summary["trainable_params"] == summary["all_params"] == TINY_NUM_PARAMS
    assert (
        summary["parameters"]
        == f"trainable params: {TINY_NUM_PARAMS:,} || all params: {TINY_NUM_PARAMS:,} || trainable%: 100.0000"
    )
    assert summary["lora"]["target_modules"] is None
    assert not os.path.exists(tmp_path / "adapter_config.json")
    before = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    after = load_file(str(tmp_path / "model.safetensors"))
    assert set(after) == set(before)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert unchanged == []
    card = ModelCard.load(str(tmp_path / "README.md"))
    assert card.data.library_name == "transformers" and "full-fine-tuning" in card.data.tags


def test_bad_target_module_lists_the_module_names(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError) as info:
        run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path, "--lora_target_modules", "c_attn,q_proj"))
    message = str(info.value)
    assert message.startswith("--lora_target_modules q_proj: no such module in gpt2")
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        assert name in message


@pytest.mark.slow
def test_long_contexts_are_cut_and_counted(tiny_model_dir, tmp_path):
    summary = run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path, "--max_seq_length", "64", "--max_steps", "1"))
    counts = summary["data"]["train"]
    assert summary["data"]["max_seq_length"] == 64
    assert counts["examples"] == 220
    assert counts["context_cut"] > 0
    assert counts["features"] + counts["dropped_too_long"] == counts["examples"]


# ---------------------------------------------------------------------------
# The Hub: offline failures, tokens, and the upload
# ---------------------------------------------------------------------------


def test_hub_model_offline_says_to_use_local_files(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        run_qa_lora.main(["--model_name_or_path", "gpt2", "--output_dir", str(tmp_path)])
    message = str(info.value)
    assert "could not load the tokenizer 'gpt2'" in message
    assert "pass a local directory instead" in message and "--model_name_or_path" in message


def test_hub_dataset_offline_says_to_use_local_files(tiny_model_dir, tmp_path):
    with pytest.raises(SquadDataError) as info:
        run_qa_lora.main(["--model_name_or_path", tiny_model_dir, "--output_dir", str(tmp_path), "--report_to", "none"])
    message = str(info.value)
    assert "could not load the dataset 'squad'" in message
    assert "If you are offline, pass local SQuAD files instead" in message and "--train_file" in message


def test_hub_token_on_the_command_line_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError) as info:
        run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path, "--hub_token", "hf_not_a_real_token"))
    message = str(info.value)
    assert "--hub_token" in message and "HF_TOKEN" in message
    assert "hf_not_a_real_token" not in message
    assert os.listdir(tmp_path) == []  # refused before anything was written


@pytest.mark.slow
def test_cli_error_is_one_line_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "run_qa_lora.py", "--model_name_or_path", "gpt2", "--output_dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error: could not load the tokenizer 'gpt2'")


@pytest.mark.slow
def test_push_to_hub_uploads_the_run_without_checkpoints(tiny_model_dir, tmp_path, fake_hub):
    repo_id = "someone/tiny-squad-lora"
    summary = run_qa_lora.main(
        tiny_run_args(
            tiny_model_dir,
            tmp_path,
            "--push_to_hub",
            "--hub_model_id",
            repo_id,
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            "--base_model_id",
            "someone/tiny-base",  # a local base is pushed only with the Hub id it goes by
        )
    )
    assert summary["hub_model_id"] == repo_id
    # the login and the repo are checked before training, and again right before the upload
    assert [name for name, *_ in fake_hub.calls] == ["whoami", "create_repo", "whoami", "create_repo", "upload_folder"]
    for _, create_id, create_kwargs in fake_hub.calls[1::2]:
        assert create_id == repo_id and create_kwargs.get("exist_ok") is True
    _, upload_id, upload_kwargs = fake_hub.calls[-1]
    assert upload_id == repo_id
    assert upload_kwargs["folder_path"] == str(tmp_path)
    assert any(path.startswith("checkpoint-") for path in upload_kwargs["all"])  # there were checkpoints to leave out
    uploaded = upload_kwargs["uploaded"]
    assert not any("checkpoint-" in path for path in uploaded)
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "run_summary.json", "tokenizer.json"):
        assert name in uploaded
    card = ModelCard.load(str(tmp_path / "README.md"))
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    assert f'AutoPeftModelForCausalLM.from_pretrained("{repo_id}")' in card.text
    with open(tmp_path / "run_config.yaml", encoding="utf-8") as f:
        assert yaml.safe_load(f)["hub_model_id"] == repo_id


# ---------------------------------------------------------------------------
# kill -9 mid-training, then --resume_from_checkpoint last; which checkpoints count
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
CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "trainer_state.json",
)


def interruptible_run_args(output_dir) -> list[str]:
    # from_scratch with a fixed seed rebuilds the same random base on resume; no dropout anywhere in LoRA
    return [
        "--model_name_or_path",
        TINY_GPT2_DIR,
        "--from_scratch",
        "--seed",
        "7",
        "--train_file",
        TRAIN_FILE,
        "--output_dir",
        str(output_dir),
        "--max_steps",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--lora_dropout",
        "0",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--eval_strategy",
        "no",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
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
        proc = subprocess.Popen(
            [sys.executable, str(launcher), *args],
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
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
    assert not [
        name
        for name in ("run_summary.json", "run_config.yaml", "README.md", "adapter_model.safetensors")
        if (killed / name).exists()
    ]
    # a killed run cannot remove its lock file, but the lock itself went with the process (the resume below takes it)
    assert not [name for name in os.listdir(killed) if name.startswith(".") and name != LOCK_FILE]
    complete = [
        step for step in checkpoint_steps(killed) if (killed / f"checkpoint-{step}" / "trainer_state.json").exists()
    ]
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
    rerun = subprocess.run(
        [sys.executable, "run_qa_lora.py", *args, "--resume_from_checkpoint", "last"],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
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
    args = parse_training_args(["--output_dir", str(output_dir), *flags])
    return resolve_run(args.training, args.model, args.data, args.lora, None)


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
# Other bases: QLoRA (4-bit) and 8-bit through bitsandbytes on CPU, a tiny Llama
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", QUANTIZATION_FLAGS)
def test_quantized_base_trains_saves_and_reloads(kind, tiny_model_dir, tmp_path, monkeypatch):
    spy = install_trainer_spy(monkeypatch)
    # two examples, one batch seen six times at a large learning rate: the loss must fall
    summary = run_qa_lora.main(
        tiny_run_args(
            tiny_model_dir,
            tmp_path,
            *QUANTIZATION_FLAGS[kind],
            "--max_train_samples",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--max_steps",
            "6",
            "--learning_rate",
            "1e-2",
            "--warmup_steps",
            "0",
            "--lora_dropout",
            "0",
        )
    )
    losses = logged_losses(summary)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1
    trained = spy.trainers[0].model
    assert isinstance(trained.base_model.model.transformer.h[0].attn.c_attn.base_layer, quantized_layer_class(kind))
    assert summary["lora"]["target_modules"] == ["c_attn"]
    with open(tmp_path / "adapter_config.json", encoding="utf-8") as f:
        adapter_config = json.load(f)
    assert adapter_config["fan_in_fan_out"] is False and adapter_config["base_model_name_or_path"] == tiny_model_dir
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    assert all(tensor.abs().sum() > 0 for name, tensor in saved.items() if "lora_B" in name)  # moved off zero

    # reload on the float base (peft switches fan_in_fan_out on for its Conv1D layers) and answer
    model, _ = load_for_inference(str(tmp_path), ModelArguments())
    reloaded = {name.replace(".default.", "."): param for name, param in model.named_parameters() if "lora_" in name}
    assert set(reloaded) == set(saved)
    for name, tensor in saved.items():
        torch.testing.assert_close(reloaded[name], tensor, rtol=0, atol=0)
    results = generate.main(
        [
            "--adapter",
            str(tmp_path),
            "--validation_file",
            DEV_FILE,
            "--max_eval_samples",
            "3",
            "--max_new_tokens",
            "4",
            "--output_dir",
            str(tmp_path / "predictions"),
        ]
    )
    ids = [row["id"] for row in load_squad_file(DEV_FILE)[0][:3]]
    assert [row["id"] for row in results["greedy"]] == ids
    assert all(isinstance(row["prediction"], str) for row in results["greedy"])


# q_proj maps 64 -> 64; v_proj 64 -> 32 (2 key/value heads of 16): LoRA r adds r * (128 + 96) per layer
TINY_LLAMA_LORA_R8_PARAMS = 2 * 8 * ((64 + 64) + (64 + 32))


@pytest.mark.slow
def test_llama_trains_with_peft_default_targets_and_answers(tiny_llama_dir, tmp_path):
    summary = run_qa_lora.main(
        tiny_run_args(
            tiny_llama_dir,
            tmp_path / "run",
            "--max_train_samples",
            "8",
            "--max_steps",
            "4",
            "--learning_rate",
            "1e-2",
            "--warmup_steps",
            "0",
            "--lora_dropout",
            "0",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "4",
            "--max_eval_samples",
            "3",
            "--eval_generation_samples",
            "3",
        )
    )
    assert summary["lora"]["target_modules"] == ["q_proj", "v_proj"]  # peft's default for llama
    assert summary["trainable_params"] == TINY_LLAMA_LORA_R8_PARAMS
    losses = logged_losses(summary)
    # two epochs over the same 8 questions (batches of 4): the second epoch's loss is below the first's
    assert len(losses) == 4 and sum(losses[2:]) < sum(losses[:2])
    assert {"eval_loss", "eval_exact_match", "eval_f1"} <= set(summary["eval_metrics"])
    with open(tmp_path / "run" / "adapter_config.json", encoding="utf-8") as f:
        adapter_config = json.load(f)
    assert (
        sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"] and adapter_config["fan_in_fan_out"] is False
    )

    results = generate.main(
        [
            "--adapter",
            str(tmp_path / "run"),
            "--validation_file",
            DEV_FILE,
            "--max_eval_samples",
            "3",
            "--max_new_tokens",
            "4",
            "--output_dir",
            str(tmp_path / "predictions"),
        ]
    )
    ids = [row["id"] for row in load_squad_file(DEV_FILE)[0][:3]]
    assert [row["id"] for row in results["greedy"]] == ids
    with open(tmp_path / "predictions" / "predictions_greedy.json", encoding="utf-8") as f:
        assert list(json.load(f)) == ids


# ---------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_gradient_checkpointing_run_trains_lora(tiny_model_dir, tmp_path, monkeypatch):
    spy = install_trainer_spy(monkeypatch)
    initial = {}
    train = run_qa_lora.QATrainer.train

    def train_recording_initial_lora(self, *args, **kwargs):
        initial.update(
            {name: param.detach().clone() for name, param in self.model.named_parameters() if "lora_" in name}
        )
        return train(self, *args, **kwargs)

    monkeypatch.setattr(run_qa_lora.QATrainer, "train", train_recording_initial_lora)
    summary = run_qa_lora.main(
        tiny_run_args(
            tiny_model_dir,
            tmp_path,
            "--gradient_checkpointing",
            "--max_train_samples",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--max_steps",
            "6",
            "--learning_rate",
            "1e-2",
            "--warmup_steps",
            "0",
            "--lora_dropout",
            "0",
        )
    )
    model = spy.trainers[0].model
    assert model.get_base_model().is_gradient_checkpointing
    losses = logged_losses(summary)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1
    assert initial and all(torch.equal(t, torch.zeros_like(t)) for name, t in initial.items() if "lora_B" in name)
    trained = {name: param.detach() for name, param in model.named_parameters() if "lora_" in name}
    for name, tensor in initial.items():
        assert not torch.equal(trained[name], tensor), f"{name} did not change"


# ---------------------------------------------------------------------------
# Evaluation: the best model by F1, early stopping, and the flags they need
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_load_best_model_at_end_by_f1(two_runs):
    entries = eval_entries(two_runs.alpha)
    during_training = entries[:2]
    assert len(entries) == 3  # steps 2 and 4, then the best model evaluated again at the end
    # F1 of a random tiny model stays 0 and a tie is no improvement: the step-2 checkpoint is the best
    assert [entry["eval_f1"] for entry in during_training] == [0.0, 0.0]
    best_loss, last_loss = (entry["eval_loss"] for entry in during_training)
    assert abs(best_loss - last_loss) > 1e-3  # learning rate 1e-2: the two checkpoints differ
    assert two_runs.alpha["eval_metrics"]["eval_loss"] == pytest.approx(best_loss, rel=1e-6)
    assert os.path.isdir(os.path.join(two_runs.alpha_dir, "checkpoint-2"))


@pytest.mark.slow
def test_early_stopping_stops_after_patience_evaluations(tiny_model_dir, tmp_path):
    # a learning rate too small to change an answer (0 is refused): F1 never improves on the first
    # evaluation's, so patience 1 stops at the second
    summary = run_qa_lora.main(
        tiny_run_args(
            tiny_model_dir,
            tmp_path,
            "--run_name",
            "stopped",
            "--max_steps",
            "10",
            "--learning_rate",
            "1e-12",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "1",
            "--save_strategy",
            "no",
            "--metric_for_best_model",
            "f1",
            "--early_stopping_patience",
            "1",
            "--eval_generation_samples",
            "2",
            "--max_eval_samples",
            "4",
        )
    )
    assert [entry["step"] for entry in eval_entries(summary)] == [1, 2]
    assert summary["log_history"][-1]["step"] == 2
    assert [entry["step"] for entry in summary["log_history"] if "loss" in entry] == [1, 2]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--early_stopping_patience", "1"], "--early_stopping_patience needs --metric_for_best_model"),
        (
            ["--early_stopping_patience", "1", "--metric_for_best_model", "f1", "--eval_strategy", "no"],
            "--early_stopping_patience needs --metric_for_best_model (e.g. f1) and an --eval_strategy",
        ),
        (
            ["--metric_for_best_model", "f1", "--eval_generation_samples", "0"],
            "--metric_for_best_model f1 needs --eval_generation_samples > 0",
        ),
        (
            ["--metric_for_best_model", "eval_exact_match", "--eval_generation_samples", "0"],
            "--metric_for_best_model eval_exact_match needs --eval_generation_samples > 0",
        ),
        (["--load_best_model_at_end", "--eval_strategy", "steps", "--save_strategy", "no"], "save"),
    ],
    ids=[
        "patience-without-metric",
        "patience-without-eval",
        "f1-without-generation",
        "em-without-generation",
        "best-model-without-saves",
    ],
)
def test_best_model_and_early_stopping_flags_are_checked_up_front(tiny_model_dir, tmp_path, flags, message):
    with pytest.raises(ConfigError) as info:
        run_qa_lora.main(
            tiny_run_args(
                tiny_model_dir,
                tmp_path,
                "--run_name",
                "refused",
                "--eval_strategy",
                "epoch",
                "--save_strategy",
                "epoch",
                *flags,
            )
        )
    assert message in str(info.value)
    assert os.listdir(tmp_path) == []  # refused before loading anything


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_hf_token_from_the_environment_never_reaches_the_outputs(tiny_model_dir, tmp_path, monkeypatch, capsys, caplog):
    token = "hf_FakeTokenForTheLeakTest0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", token)
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)  # the fake_hub fixture, after the token is set
    out = tmp_path / "out"
    run_qa_lora.main(
        tiny_run_args(
            tiny_model_dir,
            out,
            "--report_to",
            "tensorboard",
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "2",
            "--max_eval_samples",
            "2",
            "--eval_generation_samples",
            "2",
            "--push_to_hub",
            "--hub_model_id",
            "someone/leak-test",
            "--base_model_id",
            "someone/tiny-base",
        )
    )
    assert [call[0] for call in FakeHfApi.calls] == ["whoami", "create_repo", "whoami", "create_repo", "upload_folder"]
    files = [os.path.join(root, name) for root, _, names in os.walk(out) for name in names]
    for name in ("run_config.yaml", "run_summary.json", "README.md", "training_args.bin"):
        assert str(out / name) in files
    for path in files:
        with open(path, "rb") as f:
            assert token.encode() not in f.read(), path
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err + caplog.text


# ---------------------------------------------------------------------------
# The answer trained and the prompt format recorded
# ---------------------------------------------------------------------------


def test_training_trains_the_chosen_answer(tmp_path, monkeypatch):
    from squad_lora import features
    from squad_lora.commands import train as run_qa_lora

    trained = []
    original = features.build_train_features

    def spy(examples, *args, **kwargs):
        trained.extend(texts[0] for texts in (a["text"] for a in examples["answers"]) if texts)
        return original(examples, *args, **kwargs)

    monkeypatch.setattr(run_qa_lora, "build_train_features", spy)
    run_qa_lora.main(
        [os.path.join(REPO_ROOT, "configs", "smoke.yaml"), "--output_dir", str(tmp_path / "run"), "--max_steps", "1",
         "--eval_strategy", "no", "--report_to", "none", "--train_file", DEV_FILE, "--train_answer", "shortest",
         "--max_train_samples", "12"]
    )  # fmt: skip
    with open(DEV_FILE, encoding="utf-8") as f:
        questions = [qa for article in json.load(f)["data"] for p in article["paragraphs"] for qa in p["qas"]][:12]
    assert trained == [min((a["text"] for a in qa["answers"]), key=len) for qa in questions]


def test_a_chat_run_records_its_format_for_generate_and_the_card(chat_run, chat_tokenizer, monkeypatch):
    from squad_lora import decoding
    from squad_lora.commands import generate

    run_dir, summary = chat_run
    template = prompt_template(chat_tokenizer, "chat")
    assert summary["prompt_template"] == template.as_dict()
    with open(os.path.join(run_dir, "run_config.yaml"), encoding="utf-8") as f:
        assert yaml.safe_load(f)["prompt_format"] == "chat"
    card = ModelCard.load(os.path.join(run_dir, "README.md")).text
    assert template.build("{context}", "{question}") + " {answer}" in card and "(chat format)" in card

    used = []
    encode = decoding.encode_questions
    monkeypatch.setattr(
        decoding, "encode_questions", lambda ex, tok, plan: used.append(plan.template) or encode(ex, tok, plan)
    )
    question = ["--context", "The Eiffel Tower was finished in 1889 in Paris.", "--question", "When was it finished?"]
    generate.main(["--adapter", run_dir, *question])
    generate.main(["--adapter", run_dir, "--prompt_format", "plain", *question])  # a flag given here wins
    assert used == [template, PLAIN]


def test_chat_on_a_tokenizer_without_a_template_is_refused_before_the_model_loads(
    tiny_model_dir, tmp_path, monkeypatch
):
    from squad_lora.commands import train as run_qa_lora

    monkeypatch.setattr(run_qa_lora, "load_base_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match="has no chat template"):
        run_qa_lora.main(
            ["--model_name_or_path", tiny_model_dir, "--train_file", TRAIN_FILE, "--output_dir", str(tmp_path / "r"),
             "--max_steps", "1", "--prompt_format", "chat"]
        )  # fmt: skip
    assert not os.path.exists(tmp_path / "r" / "adapter_model.safetensors")


# ---------------------------------------------------------------------------
# peft's LoRA options: where a run shows them (log line, run summary, model card, TensorBoard HParams)
# ---------------------------------------------------------------------------


# two runs, as PiSSA cannot go with DoRA or modules saved in full: (flags, what the log and card show)
RUNS = {
    "dora-all-linear": (
        ["--lora_target_modules", "all-linear", "--use_dora", "--init_lora_weights", "gaussian",
         "--lora_modules_to_save", "lm_head"],
        f"target_modules={ALL_LINEAR['gpt2']} (all-linear), use_dora=True, init_lora_weights=gaussian, "
        "modules_to_save=['lm_head']",
    ),
    "pissa-rslora": (
        ["--init_lora_weights", "pissa", "--use_rslora"],
        "target_modules=['c_attn'], use_rslora=True, init_lora_weights=pissa",
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_run_shows_its_lora_options_everywhere(run, tiny_model_dir, tmp_path, caplog):
    options, shown_line = RUNS[run]
    out = tmp_path / "run"
    argv = [
        "--model_name_or_path", tiny_model_dir, "--train_file", TRAIN_FILE, "--validation_file", DEV_FILE,
        "--max_train_samples", "16",
        "--max_eval_samples", "4", "--eval_generation_samples", "2", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--eval_strategy", "epoch", "--save_strategy", "no",
        "--report_to", "tensorboard", "--disable_tqdm", "true", "--output_dir", str(out), *options,
    ]  # fmt: skip
    caplog.set_level("INFO", logger="run_qa_lora")
    summary = run_qa_lora.main(argv)
    lora = summary["lora"]
    if run == "dora-all-linear":
        targets = ALL_LINEAR["gpt2"]
        lora_and_dora = lora_option_params("gpt2", SHAPES["gpt2"]) + dora_magnitudes("gpt2", SHAPES["gpt2"])
        assert summary["trainable_params"] == lora_and_dora + VOCAB * HIDDEN
        assert (lora["use_dora"], lora["init_lora_weights"], lora["lora_modules_to_save"]) == (
            True,
            "gaussian",
            ["lm_head"],
        )
    else:
        targets = ["c_attn"]
        assert summary["trainable_params"] == lora_option_params("gpt2")
        assert (lora["use_rslora"], lora["init_lora_weights"]) == (True, "pissa")
        with open(out / "adapter_config.json", encoding="utf-8") as f:
            assert json.load(f)["r"] == 2 * LORA_R  # saved converted to fit the original base
    assert lora["target_modules"] == targets

    assert any(summary["parameters"] in line and shown_line in line for line in caplog.messages)  # the parameter line
    assert shown_line in ModelCard.load(str(out / "README.md")).text
    shown = session_hparams(read_events(str(out))[1])
    assert shown["lora_target_modules"] == ", ".join(targets)
    assert (shown["use_dora"], shown["use_rslora"]) == (lora["use_dora"], lora["use_rslora"])
    assert shown["init_lora_weights"] == lora["init_lora_weights"]
    assert shown["max_steps"] == max(entry["step"] for entry in summary["log_history"]) > 0  # what ran, not -1


# ---------------------------------------------------------------------------
# The data users have: other column names, and a validation split held out of one file
# ---------------------------------------------------------------------------


def without_validation_file(argv: list[str]) -> list[str]:
    at = argv.index("--validation_file")
    return argv[:at] + argv[at + 2 :]


def test_a_file_with_other_column_names_trains_as_the_standard_one(tiny_model_dir, tmp_path):
    rows, _ = load_squad_file(TRAIN_FILE)
    names = {"id": "qid", "context": "passage", "question": "query", "answers": "gold"}
    files = {"standard": rows, "renamed": [{names.get(key, key): value for key, value in row.items()} for row in rows]}
    for name, file_rows in files.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in file_rows), encoding="utf-8")
    column_flags = ["--question_column", "query", "--context_column", "passage", "--answer_column", "gold",
                    "--id_column", "qid"]  # fmt: skip
    summaries = {}
    for name in files:
        flags = ["--train_file", tmp_path / f"{name}.jsonl", *(column_flags if name == "renamed" else [])]
        summaries[name] = run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / name, *flags))
    assert logged_losses(summaries["renamed"]) == logged_losses(summaries["standard"])
    assert summaries["renamed"]["data"]["train"] == summaries["standard"]["data"]["train"]
    with open(tmp_path / "renamed" / "run_config.yaml", encoding="utf-8") as f:
        recorded = yaml.safe_load(f)
    assert {key: recorded[key] for key in ("question_column", "context_column", "answer_column", "id_column")} == {
        "question_column": "query",
        "context_column": "passage",
        "answer_column": "gold",
        "id_column": "qid",
    }


def test_a_wrong_column_name_stops_the_run_naming_the_flag_and_the_columns(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(run_qa_lora, "load_base_model", lambda *a, **k: pytest.fail("the model was loaded"))
    train_file = os.path.join(SAMPLE_DIR, "dev-v1.1.jsonl")
    with pytest.raises(SquadDataError) as info:
        run_qa_lora.main(
            tiny_run_args(tiny_model_dir, tmp_path, "--train_file", train_file, "--question_column", "query")
        )
    assert str(info.value) == (
        f"{train_file}: no column 'query' (--question_column); columns are: id, title, context, question, answers"
    )


@pytest.mark.slow
def test_a_validation_split_of_the_training_file_is_evaluated_and_recorded(tiny_model_dir, tmp_path):
    argv = without_validation_file(tiny_run_args(tiny_model_dir, tmp_path, "--validation_split_percentage", 10,
                                                 "--eval_strategy", "steps", "--eval_steps", 2,
                                                 "--eval_generation_samples", 0, "--seed", 5))  # fmt: skip
    summary = run_qa_lora.main(argv)
    held_out = summary["data"]["validation_split"]
    assert (held_out["percentage"], held_out["seed"]) == (10, 5)
    assert held_out["validation"]["questions"] + held_out["train"]["questions"] == 220  # the whole training file
    assert held_out["validation"]["contexts"] + held_out["train"]["contexts"] == 40
    assert 22 <= held_out["validation"]["questions"] < 28  # 10% of the questions, whole contexts of 5 or 6
    assert summary["data"]["validation"]["examples"] == held_out["validation"]["questions"]
    assert summary["data"]["train"]["examples"] == held_out["train"]["questions"]
    assert summary["data"]["validation"]["ids_also_in_train"] == 0
    assert [entry["step"] for entry in eval_entries(summary)] == [2]  # evaluated on the held-out questions
    with open(tmp_path / "run_config.yaml", encoding="utf-8") as f:
        assert yaml.safe_load(f)["validation_split_percentage"] == 10


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--eval_strategy", "no"], "--validation_split_percentage holds questions out of training to evaluate on, "
         "but --eval_strategy no never evaluates"),
        (["--validation_file", DEV_FILE], "--validation_split_percentage holds validation data out of the training "
         "data: give it or --validation_file, not both"),
    ],
    ids=["no-evaluation", "with-a-validation-file"],
)  # fmt: skip
def test_a_validation_split_that_cannot_be_used_is_refused_before_the_data_loads(
    flags, message, tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(run_qa_lora, "load_training_splits", lambda *a, **k: pytest.fail("the data was loaded"))
    argv = without_validation_file(tiny_run_args(tiny_model_dir, tmp_path, "--eval_strategy", "epoch"))
    with pytest.raises(ConfigError) as info:
        run_qa_lora.main([*argv, "--validation_split_percentage", "10", *flags])
    assert message in str(info.value)
