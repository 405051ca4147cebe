"""squad_lora.training_args: every TrainingArguments flag does what it says. Each field is classified once in
squad_lora/training_args.py, the refused ones fail up front, QATrainingArguments' own defaults hold, and the flags this
project implements (label smoothing in our loss, the Hub branch, ...) are checked against the Trainer's own
behaviour."""

import dataclasses

import pytest
import torch
from transformers import TrainingArguments
from transformers.trainer_pt_utils import LabelSmoother

from builders import padded_batch, parse_training_args, tiny_model, tiny_run_args, train_plan
from fakes import FakeHfApi
from squad_lora import hub, training_args
from squad_lora.args import LoraArguments, ModelArguments
from squad_lora.cli import parse_args
from squad_lora.commands import train as run_qa_lora
from squad_lora.errors import ConfigError
from squad_lora.loss import labelled_positions_loss
from squad_lora.modeling import apply_lora, load_base_model
from squad_lora.trainer import QATrainer
from squad_lora.training_args import QATrainingArguments

# a value other than the default for each refused flag, as a user would give it
REFUSED_VALUES = {
    "do_train": ["--do_train", "false"],
    "do_predict": ["--do_predict"],
    "use_liger_kernel": ["--use_liger_kernel"],
    "liger_kernel_config": ["--liger_kernel_config", '{"rope": true}'],
    "include_for_metrics": ["--include_for_metrics", "inputs"],
    "batch_eval_metrics": ["--batch_eval_metrics"],
    "label_names": ["--label_names", "answer_labels"],
    "length_column_name": ["--length_column_name", "num_tokens"],
    "parallelism_config": ["--parallelism_config", '{"tp_size": 2}'],
}


def parse_training(argv):
    return parse_args(run_qa_lora.ARGUMENT_TYPES, argv)[0][-1]


def test_every_training_argument_is_classified_exactly_once():
    names = [f.name for f in dataclasses.fields(TrainingArguments)]
    placed = {name: [label for label, listed in training_args.LISTS.items() if name in listed] for name in names}
    unclassified = sorted(name for name, labels in placed.items() if not labels)
    assert not unclassified, f"classify these TrainingArguments fields in squad_lora/training_args.py: {unclassified}"
    twice = {name: labels for name, labels in placed.items() if len(labels) > 1}
    assert not twice, f"on more than one list: {twice}"
    stale = sorted(set().union(*training_args.LISTS.values()) - set(names))
    assert not stale, f"no longer TrainingArguments fields: {stale}"
    for listed in (training_args.SQUAD_LORA_HONOURS, training_args.REFUSED, training_args.NEEDS_NOTHING):
        assert all(reason.strip() for reason in listed.values())


def test_defaults_refuse_nothing():
    args = QATrainingArguments(output_dir="out")
    assert args.do_train is True and args.hub_strategy.value == "end" and args.do_eval is True
    assert training_args.refused_flags(QATrainingArguments(output_dir="out", eval_strategy="no")) == []
    # what HF example scripts and TRL configs write is accepted where it agrees with what the script does
    parse_training(["--do_train", "--do_eval", "--hub_strategy", "end"])


def test_gradient_checkpointing_is_non_reentrant():
    # non-reentrant checkpointing lets gradients reach LoRA weights behind frozen layers
    args = parse_training_args(["--gradient_checkpointing"]).training
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize("name", sorted(training_args.REFUSED))
def test_refused_flag_fails_before_anything_loads(name):
    with pytest.raises(ConfigError, match=f"--{name} .*not supported: " + training_args.REFUSED[name][:30]):
        parse_training(REFUSED_VALUES[name])


def test_every_refused_flag_has_a_test_value():
    assert set(REFUSED_VALUES) == set(training_args.REFUSED)


def test_do_train_false_names_the_scripts_that_evaluate():
    with pytest.raises(ConfigError) as error:
        run_qa_lora.main(["--do_train", "false"])
    assert "generate.py" in str(error.value) and "evaluate_squad.py" in str(error.value)


@pytest.mark.parametrize(
    "argv", [["--do_eval", "false"], ["--do_eval", "true", "--eval_strategy", "no"]], ids=["off", "on"]
)
def test_do_eval_must_agree_with_eval_strategy(argv):
    with pytest.raises(ConfigError, match="--do_eval .* contradicts --eval_strategy"):
        parse_training(argv)


def test_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ConfigError, match=r"--label_smoothing_factor must be in \[0, 1\)"):
        parse_training(["--label_smoothing_factor", "1"])


def test_fsdp_flag_is_refused_without_gpus(monkeypatch):
    # the launch configs' route (configs/accelerate/fsdp.yaml, deepspeed_zero*.yaml): tests/test_distributed.py
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="FSDP needs GPUs.*cpu_multiprocess.yaml"):
        parse_training(["--fsdp", "full_shard auto_wrap"])


def test_report_to_wandb_needs_it_installed(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r'wandb is not installed .*pip install -e "\.\[wandb\]"'):
        parse_training(["--report_to", "tensorboard", "wandb"])  # both words read, not the first alone


def test_a_word_no_flag_takes_is_an_error():
    with pytest.raises(
        ConfigError, match="unexpected argument.*stray: besides the config file, every input is a --flag"
    ):
        run_qa_lora.main(["--lora_r", "8", "stray"])


# ---------------------------------------------------------------------------
# --label_smoothing_factor: the labelled-positions loss smooths as the Trainer's LabelSmoother
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_label_smoothing_equals_the_trainers_label_smoother(architecture, tiny_tokenizer):
    model = tiny_model(architecture, tiny_tokenizer)
    with torch.no_grad():  # a random model predicts almost uniformly, where smoothing changes nothing: sharpen it
        model.get_output_embeddings().weight.mul_(20)
    batch = padded_batch(tiny_tokenizer)
    num_labelled = int((batch["labels"][:, 1:] != -100).sum())
    smoother = LabelSmoother(epsilon=0.1)
    with torch.no_grad():
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for num_items in (None, torch.tensor(3 * num_labelled)):  # 3: gradient accumulation over three batches
            expected = smoother(outputs, batch["labels"], shift_labels=True, num_items_in_batch=num_items)
            actual = labelled_positions_loss(model, batch, num_items, label_smoothing=0.1)
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=0)
        unsmoothed = labelled_positions_loss(model, batch)
    torch.testing.assert_close(unsmoothed, model(**batch).loss, rtol=1e-5, atol=0)
    assert abs(float(unsmoothed - actual * 3)) > 0.01  # smoothing changed the loss


def lora_trainer(model_dir, tokenizer, output_dir, **training) -> QATrainer:
    model = apply_lora(load_base_model(ModelArguments(model_name_or_path=model_dir)), LoraArguments(lora_dropout=0.0))
    args = QATrainingArguments(output_dir=str(output_dir), report_to="none", eval_strategy="no", **training)
    plan = train_plan(tokenizer, model, args, share_context="false")  # the tests train on plain padded batches
    return QATrainer(model, args, plan, processing_class=tokenizer)


def test_trainer_smooths_its_training_and_evaluation_loss(tiny_model_dir, tiny_tokenizer, tmp_path):
    trainer = lora_trainer(tiny_model_dir, tiny_tokenizer, tmp_path, label_smoothing_factor=0.2)
    assert trainer.plan.labelled_loss
    model, batch = trainer.model.eval(), padded_batch(tiny_tokenizer)
    with torch.no_grad():
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        expected = LabelSmoother(epsilon=0.2)(outputs, batch["labels"], shift_labels=True)
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), expected, rtol=1e-5, atol=0)
        loss, _, _ = trainer.prediction_step(model, dict(batch), prediction_loss_only=True)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------
# Trainer features the labelled-positions loss must not go around
# ---------------------------------------------------------------------------


def first_step_loss(model_dir, tokenizer, output_dir, **training) -> float:
    trainer = lora_trainer(
        model_dir,
        tokenizer,
        output_dir,
        max_steps=1,
        logging_steps=1,
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        **training,
    )
    trainer.train_dataset = [{k: v[i] for k, v in padded_batch(tokenizer).items()} for i in range(4)]
    trainer.train()
    return trainer.state.log_history[0]["loss"]


def test_neftune_noise_reaches_the_labelled_positions_loss(tiny_model_dir, tiny_tokenizer, tmp_path):
    plain = first_step_loss(tiny_model_dir, tiny_tokenizer, tmp_path / "plain")
    assert first_step_loss(tiny_model_dir, tiny_tokenizer, tmp_path / "again") == plain  # the comparison is exact
    assert first_step_loss(tiny_model_dir, tiny_tokenizer, tmp_path / "noisy", neftune_noise_alpha=5.0) != plain


@pytest.mark.slow
def test_torch_compile_trains_through_the_models_own_forward(tiny_model_dir, tiny_tokenizer, tmp_path):
    # the compiled module is the model's forward: the labelled-positions loss would break its graph every step
    plain = first_step_loss(tiny_model_dir, tiny_tokenizer, tmp_path / "plain")
    compiled = first_step_loss(  # through dynamo and AOTAutograd; inductor's C++ build would take minutes
        tiny_model_dir, tiny_tokenizer, tmp_path / "compiled", torch_compile=True, torch_compile_backend="aot_eager"
    )
    assert compiled == pytest.approx(plain, rel=1e-4)  # the same loss, through the compiled forward
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # ... which dynamo did compile


# ---------------------------------------------------------------------------
# --hub_revision: the branch is created before training and the upload goes to it
# ---------------------------------------------------------------------------


class FakeHfApiWithBranches(FakeHfApi):
    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApiWithBranches.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApiWithBranches)
    return FakeHfApiWithBranches


def test_push_goes_to_the_revision_branch(tmp_path, fake_hub):
    (tmp_path / "README.md").write_text("card")
    hub.push_to_hub(str(tmp_path), "someone/repo", revision="r8-lr2e-4")
    names = [name for name, *_ in fake_hub.calls]
    assert names == ["whoami", "create_repo", "create_branch", "upload_folder"]
    assert fake_hub.calls[2][2] == {"branch": "r8-lr2e-4", "exist_ok": True}
    assert fake_hub.calls[3][2]["revision"] == "r8-lr2e-4"

    fake_hub.calls.clear()
    hub.push_to_hub(str(tmp_path), "someone/repo")  # no revision: main, and no branch created
    assert [name for name, *_ in fake_hub.calls] == ["whoami", "create_repo", "upload_folder"]
    assert fake_hub.calls[-1][2]["revision"] is None


@pytest.mark.slow
def test_run_pushes_to_the_hub_revision(tiny_model_dir, tmp_path, fake_hub):
    run_qa_lora.main(tiny_run_args(
        tiny_model_dir, tmp_path, "--push_to_hub", "--hub_model_id", "someone/tiny", "--hub_revision", "try-1",
        "--base_model_id", "someone/tiny-base",
    ))  # fmt: skip
    branches = [kwargs["branch"] for name, _, kwargs in fake_hub.calls if name == "create_branch"]
    assert branches == ["try-1", "try-1"]  # checked before training, and again right before the upload
    (upload,) = [(repo, kwargs) for name, repo, kwargs in fake_hub.calls if name == "upload_folder"]
    assert upload[0] == "someone/tiny" and upload[1]["revision"] == "try-1"
