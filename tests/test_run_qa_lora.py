"""run_qa_lora.py end to end on a tiny GPT-2: outputs, resume, refusals, Hub failures and the Hub upload."""

import glob
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import transformers
import yaml
from conftest import REPO_ROOT, SAMPLE_DIR, TINY_GPT2_DIR
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run_qa_lora
from squad_lora import hub
from squad_lora.cli import parse_args, resolved_config
from squad_lora.errors import ConfigError, ModelLoadError, SquadDataError
from squad_lora.modeling import BASE_MODEL_SUBDIR

TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")
VALIDATION_FILE = os.path.join(SAMPLE_DIR, "dev-v1.1.json")
SMOKE_CONFIG = os.path.join(REPO_ROOT, "configs", "smoke.yaml")
DATACLASSES = run_qa_lora.ARGUMENT_TYPES

# configs/tiny-gpt2: 2 layers, n_embd 64; c_attn maps 64 -> 3 * 64, so LoRA r adds r * (64 + 192) per layer
TINY_NUM_PARAMS = 184_896
TINY_LORA_R8_PARAMS = 2 * 8 * (64 + 3 * 64)


def tiny_run_args(model_dir, output_dir, *extra):
    """A 2-step run of the saved tiny model on the sample data, no evaluation, checkpoints or loggers."""
    return [
        "--model_name_or_path", str(model_dir),
        "--train_file", TRAIN_FILE,
        "--validation_file", VALIDATION_FILE,
        "--output_dir", str(output_dir),
        "--max_steps", "2",
        "--per_device_train_batch_size", "4",
        "--logging_steps", "1",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--report_to", "none",
        "--disable_tqdm", "true",
        *extra,
    ]


def install_trainer_spy(monkeypatch):
    """Record every Trainer that trains, and the global step at each training step (whatever subclass runs)."""
    spy = SimpleNamespace(trainers=[], steps=[])
    train, training_step = transformers.Trainer.train, transformers.Trainer.training_step

    def recording_train(self, *args, **kwargs):
        spy.trainers.append(self)
        return train(self, *args, **kwargs)

    def counting_training_step(self, *args, **kwargs):
        spy.steps.append(self.state.global_step)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", recording_train)
    monkeypatch.setattr(transformers.Trainer, "training_step", counting_training_step)
    return spy


@pytest.fixture
def trainer_spy(monkeypatch):
    return install_trainer_spy(monkeypatch)


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
    trained = {name.replace(".default.", "."): param.detach() for name, param in peft_model.named_parameters() if "lora_" in name}
    assert set(saved) == set(trained)
    for name, tensor in saved.items():
        assert torch.equal(tensor, trained[name]), name
    lora_b = [tensor for name, tensor in saved.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)


def scalar_events(output_dir):
    """{tag: [(step, value), ...]} from every TensorBoard event file under output_dir."""
    events = {}
    files = glob.glob(os.path.join(output_dir, "**", "events.out.tfevents.*"), recursive=True)
    for path in sorted(files):
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return files, events


# ---------------------------------------------------------------------------
# The smoke run: configs/smoke.yaml (from_scratch tiny GPT-2) with flags on top
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("smoke") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(REPO_ROOT)  # smoke.yaml's paths are relative to the repository
        spy = install_trainer_spy(monkeypatch)
        summary = run_qa_lora.main([
            "configs/smoke.yaml",
            "--output_dir", str(output_dir),
            "--max_steps", "3",
            "--logging_steps", "1",
            "--eval_generation_samples", "4",
            "--disable_tqdm", "true",
        ])
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
        "examples": 220, "features": 220, "context_cut": 0, "dropped_too_long": 0, "skipped_bad_answer_start": 0,
        "skipped_blank_answers": 0, "squad_version": "1.1",
    }
    assert summary["data"]["validation"]["examples"] == summary["data"]["validation"]["features"] == 44
    assert summary["hub_model_id"] is None


@pytest.mark.slow
def test_smoke_run_tensorboard_holds_train_and_eval_loss(smoke_run):
    files, events = scalar_events(smoke_run.output_dir)
    assert files
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
    text = card.text
    assert "`configs/tiny-gpt2`" in text  # the base model
    assert "LoRA r=8, alpha=16.0, dropout=0.1" in text and "target_modules=['c_attn']" in text
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
    parsed, config_file, _ = parse_args(DATACLASSES, [path])
    assert config_file == path
    assert resolved_config(*parsed) == saved


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
# Resuming, full fine-tuning, target modules, long contexts
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_from_checkpoint_last_continues(tiny_model_dir, tmp_path, trainer_spy):
    # constant learning rate: the 2-step and 4-step runs then share a schedule, so the losses are comparable
    common = ["--lr_scheduler_type", "constant", "--warmup_steps", "0", "--learning_rate", "1e-3",
              "--save_strategy", "steps", "--save_steps", "2"]
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    run_qa_lora.main(tiny_run_args(tiny_model_dir, resumed, *common))
    assert os.path.isdir(resumed / "checkpoint-2")

    trainer_spy.steps.clear()
    run_qa_lora.main(tiny_run_args(tiny_model_dir, resumed, *common, "--max_steps", "4", "--resume_from_checkpoint", "last"))
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
    summary = run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path, "--lora_r", "0", "--max_steps", "1", "--warmup_steps", "0"))
    assert summary["trainable_params"] == summary["all_params"] == TINY_NUM_PARAMS
    assert summary["parameters"] == f"trainable params: {TINY_NUM_PARAMS:,} || all params: {TINY_NUM_PARAMS:,} || trainable%: 100.0000"
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
# The Hub: offline failures and the upload
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
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error: could not load the tokenizer 'gpt2'")


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what an upload would send."""

    endpoint = "https://huggingface.co"
    calls = []

    def __init__(self, *args, **kwargs):
        assert "token" not in kwargs  # the token is huggingface_hub's business, never ours

    def whoami(self):
        self.calls.append(("whoami", None, {}))
        return {"name": "someone"}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        all_files = sorted(
            os.path.relpath(os.path.join(root, name), folder_path)
            for root, _, names in os.walk(folder_path)
            for name in names
        )
        uploaded = list(filter_repo_objects(all_files, ignore_patterns=ignore_patterns))  # as upload_folder filters
        self.calls.append(("upload_folder", repo_id, {"folder_path": folder_path, "all": all_files, "uploaded": uploaded, **kwargs}))


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    return FakeHfApi


@pytest.mark.slow
def test_push_to_hub_uploads_the_run_without_checkpoints(tiny_model_dir, tmp_path, fake_hub):
    repo_id = "someone/tiny-squad-lora"
    summary = run_qa_lora.main(tiny_run_args(
        tiny_model_dir, tmp_path, "--push_to_hub", "--hub_model_id", repo_id, "--save_strategy", "steps", "--save_steps", "1",
        "--base_model_id", "someone/tiny-base",  # a local base is pushed only with the Hub id it goes by
    ))
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


def test_push_to_hub_helper(tmp_path, fake_hub):
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / "optimizer.pt").write_bytes(b"state")
    (tmp_path / ".README.md.abc.tmp").write_text("partial")
    (tmp_path / "README.md").write_text("card")
    url = hub.push_to_hub(str(tmp_path), "someone/repo", private=True)
    assert url == "https://huggingface.co/someone/repo"
    _, (_, _, create_kwargs), (_, _, upload_kwargs) = fake_hub.calls
    assert create_kwargs["private"] is True
    assert upload_kwargs["uploaded"] == ["README.md"]


def test_model_card_metadata_for_hub_ids():
    summary = {
        "run_name": "exp_r8_lr2e-4_attn",
        "base_model": "gpt2",
        "dataset": "squad",
        "parameters": "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364",
        "lora": {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "lora_bias": "none", "target_modules": ["c_attn"]},
        "eval_metrics": {"eval_loss": 1.2345, "eval_f1": 71.5, "eval_runtime": 3.0, "epoch": 3.0},
        "hub_model_id": "someone/exp_r8",
        "base_model_id": "gpt2",
        "dataset_id": "squad",
    }
    card = hub.build_model_card(summary, {})
    assert card.data.base_model == "gpt2" and card.data.datasets == ["squad"]
    assert card.data.library_name == "peft"
    assert "# exp_r8_lr2e-4_attn" in card.text and "`gpt2` fine-tuned with LoRA r=8, alpha=16" in card.text
    assert "| eval_loss | 1.234 |" in card.text and "| eval_f1 | 71.5 |" in card.text
    assert "eval_runtime" not in card.text and "| epoch |" not in card.text
    assert 'from_pretrained("someone/exp_r8")' in card.text
