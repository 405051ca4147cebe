"""squad_lora.hub: the model card of a run (it parses on the Hub, and its loading snippet answers as generate.py does),
the base model's Hub id (read, recorded, required before anything is pushed), and the upload (login and repo checked
first, checkpoints left out); squad_lora.hub_pushes: the pushes at each save of --hub_strategy every_save, checkpoint
and all_checkpoints (in the background, a failed one a warning, the final push last, a run resumed from
last-checkpoint)."""

import json
import logging
import os
import re
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
from huggingface_hub import ModelCard

from builders import tiny_run_args, train_for_sharing
from fakes import FakeHfApi, RecordingHfApi, RepoHfApi
from run_outputs import read_json
from squad_lora import hub, hub_pushes
from squad_lora.commands import train as run_qa_lora
from squad_lora.errors import ConfigError, SquadLoraError
from squad_lora.hub import HubError, check_shareable, hub_id_of


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


def test_push_uploads_the_run_without_checkpoints_or_partial_files(tmp_path, fake_hub):
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-7" / "optimizer.pt").write_bytes(b"state")
    (tmp_path / ".README.md.abc.tmp").write_text("partial")
    (tmp_path / "README.md").write_text("card")
    url = hub.push_to_hub(str(tmp_path), "someone/repo", private=True)
    assert url == "https://huggingface.co/someone/repo"
    # the login first, then the repo, then the files
    (login, _, _), (create, create_id, create_kwargs), (upload, upload_id, upload_kwargs) = fake_hub.calls
    assert (login, create, upload) == ("whoami", "create_repo", "upload_folder")
    assert create_id == upload_id == "someone/repo"
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert upload_kwargs["uploaded"] == ["README.md"]


@pytest.mark.parametrize(
    "refused, message",
    [
        ("whoami", "--push_to_hub: cannot log in to the Hub at https://huggingface.co (ConnectionError: no route)"),
        ("create_repo", "--push_to_hub: cannot create or open the repo 'someone/repo' as someone (ConnectionError"),
        ("upload_folder", "failed (ConnectionError: no route); the run is saved: retry with python push_to_hub.py"),
    ],
)
def test_a_refusing_hub_is_a_user_error_naming_the_step(tmp_path, fake_hub, monkeypatch, refused, message):
    def refuse(self, *args, **kwargs):
        raise ConnectionError("no route")

    monkeypatch.setattr(fake_hub, refused, refuse)
    with pytest.raises(hub.HubError) as info:
        hub.push_to_hub(str(tmp_path), "someone/repo")
    assert isinstance(info.value, SquadLoraError) and message in str(info.value)
    assert "upload_folder" not in [call[0] for call in fake_hub.calls]


@pytest.mark.parametrize("fake", [FakeHfApi, RecordingHfApi])
def test_the_hub_fakes_take_only_what_hfapi_takes(fake, monkeypatch):
    """The fakes answer only calls the real HfApi would take: a renamed argument fails the tests that use them."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'endpoint_url'"):
        fake(endpoint_url="https://hub.example")
    with pytest.raises(TypeError, match="unexpected keyword argument 'folder'"):
        fake().upload_folder(repo_id="me/x", folder_path=".", folder=".")
    with pytest.raises(TypeError, match="missing a required argument: 'repo_id'"):
        fake().create_repo(repo="me/x", exist_ok=True)
    monkeypatch.setattr(fake, "create_branch", lambda self, *args, **kwargs: None, raising=False)  # one patched in
    with pytest.raises(TypeError, match="missing a required argument: 'branch'"):
        fake().create_branch("me/x", exist_ok=True)


# ---------------------------------------------------------------------------
# The base model link: the Hub id a run records, and needs before anything is pushed
# ---------------------------------------------------------------------------


def test_an_adapter_on_a_local_base_loads_from_any_directory(local_base_run, tiny_model_dir, tmp_path):
    run_dir, summary = local_base_run
    assert read_json(os.path.join(run_dir, "adapter_config.json"))["base_model_name_or_path"] == tiny_model_dir
    assert summary["base_model_id"] is None
    code = f"from peft import AutoPeftModelForCausalLM; AutoPeftModelForCausalLM.from_pretrained({run_dir!r})"
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_an_adapter_on_a_local_base_is_never_pushed_with_its_path(local_base_run):
    run_dir, _ = local_base_run
    with pytest.raises(HubError, match=r"local path .* --base_model_id"):
        check_shareable(run_dir)


def test_the_hub_id_is_recorded_when_given(tiny_model_dir, tmp_path):
    summary = train_for_sharing(tiny_model_dir, tmp_path / "run", "--base_model_id", "openai-community/gpt2")
    config = read_json(tmp_path / "run" / "adapter_config.json")
    assert config["base_model_name_or_path"] == "openai-community/gpt2"
    assert summary["base_model_id"] == "openai-community/gpt2"
    assert ModelCard.load(tmp_path / "run" / "README.md").data.base_model == "openai-community/gpt2"
    check_shareable(str(tmp_path / "run"))  # shareable: no error


def test_the_hub_id_is_read_from_a_local_model_where_it_has_one(tmp_path):
    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_id_of(str(snapshot)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    saved = tmp_path / "saved-by-transformers-4"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps({"_name_or_path": "gpt2-medium", "model_type": "gpt2"}))
    assert hub_id_of(str(saved)) == "gpt2-medium"
    (saved / "config.json").write_text(json.dumps({"_name_or_path": str(tmp_path), "model_type": "gpt2"}))
    assert hub_id_of(str(saved)) is None  # a path, not an id
    assert hub_id_of("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_push_to_hub_refuses_before_training_when_no_hub_id_is_known(tiny_model_dir, tmp_path, monkeypatch):
    from squad_lora import hub

    monkeypatch.setattr(hub, "HfApi", lambda: pytest.fail("the Hub was contacted before the base was checked"))
    with pytest.raises(
        ConfigError, match="no known Hub id, so nobody could load the pushed adapter: pass --base_model_id"
    ):
        train_for_sharing(tiny_model_dir, tmp_path / "run", "--push_to_hub", "--hub_model_id", "me/x")
    assert not (tmp_path / "run" / "run_summary.json").exists()


# ---------------------------------------------------------------------------
# The model card of a finished run
# ---------------------------------------------------------------------------


def test_the_card_parses_with_the_results_and_metadata(local_base_run):
    run_dir, summary = local_base_run
    card = ModelCard.load(os.path.join(run_dir, "README.md"))
    results = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert results == {
        "exact_match": round(summary["eval_metrics"]["eval_exact_match"], 2),
        "f1": round(summary["eval_metrics"]["eval_f1"], 2),
    }
    assert {result.dataset_type for result in card.data.eval_results} == {"rajpurkar/squad"}  # official v1.1 file
    assert card.data.datasets == ["rajpurkar/squad"]
    assert card.data.license == "mit"
    assert card.data.library_name == "peft" and card.data.base_model is None  # no Hub id known: no local path
    assert summary["parameters"] in card.text
    assert "| learning_rate | 0.001 |" in card.text and "| max_steps | 3 |" in card.text
    assert re.search(r"- transformers \d+\.\d+", card.text) and re.search(r"- peft \d+\.\d+", card.text)
    assert "LoRA r=8, alpha=16, dropout=0.1" in card.text
    assert "Context: {context}\nQuestion: {question}\nAnswer: {answer}" in card.text


def test_the_cards_loading_snippet_runs_and_answers_as_generate_does(local_base_run, tmp_path):
    from squad_lora.commands import generate

    run_dir, _ = local_base_run
    text = ModelCard.load(os.path.join(run_dir, "README.md")).text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("<this repo>", run_dir)
    completed = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = generate.main(
        [
            "--adapter",
            run_dir,
            "--context",
            "The Eiffel Tower was finished in 1889 in Paris.",
            "--question",
            "When was the Eiffel Tower finished?",
        ]
    )
    assert completed.stdout.rstrip("\n").split("\n")[-1] == results["greedy"][0]["prediction"]


def test_the_chat_cards_snippet_answers_as_generate_does(chat_run, tmp_path):
    from squad_lora.commands import generate

    run_dir, _ = chat_run
    text = ModelCard.load(os.path.join(run_dir, "README.md")).text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("<this repo>", run_dir)
    assert 'eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")' in snippet.replace("'", '"')
    completed = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    context, question = "The Eiffel Tower was finished in 1889 in Paris.", "When was the Eiffel Tower finished?"
    results = generate.main(["--adapter", run_dir, "--context", context, "--question", question])
    assert completed.stdout.rstrip("\n").split("\n")[-1] == results["greedy"][0]["prediction"]


# ---------------------------------------------------------------------------
# Pushes during training: --hub_strategy every_save, checkpoint, all_checkpoints
# ---------------------------------------------------------------------------

REPO = "someone/tiny-squad"
FINAL_COMMIT = "Upload squad-lora adapter"


@pytest.fixture
def hub_repo(monkeypatch, tmp_path):
    """squad_lora.hub's HfApi replaced by RepoHfApi, its repo in tmp_path/hub-repo."""
    RepoHfApi.calls, RepoHfApi.commits, RepoHfApi.failures = [], [], 0
    RepoHfApi.repo_dir = str(tmp_path / "hub-repo")
    os.makedirs(RepoHfApi.repo_dir)
    monkeypatch.setattr(hub, "HfApi", RepoHfApi)
    return RepoHfApi


def pushing_run_args(model_dir, output_dir, strategy, *extra):
    """A 2-step run that saves at each step and pushes with --hub_strategy strategy; --hub_always_push, so that a
    save never skips its push because the one before is still uploading (which depends on timing)."""
    return tiny_run_args(
        model_dir, output_dir, "--push_to_hub", "--hub_model_id", REPO, "--base_model_id", "someone/tiny-base",
        "--hub_strategy", strategy, "--hub_always_push", "--save_strategy", "steps", "--save_steps", "1", *extra,
    )  # fmt: skip


@pytest.mark.slow
def test_every_save_pushes_the_adapter_and_a_card_with_the_latest_scores(tiny_model_dir, tmp_path, hub_repo):
    out = tmp_path / "run"
    (out / ".hub-push-checkpoint-9").mkdir(parents=True)  # the snapshot of a run killed mid-push
    evaluating = ("--eval_strategy", "steps", "--eval_steps", "1", "--max_eval_samples", "2")
    summary = run_qa_lora.main(
        pushing_run_args(tiny_model_dir, out, "every_save", *evaluating, "--eval_generation_samples", "2")
    )
    # each save is one commit, in order, and the final push comes last, after the login and repo checked again
    assert [commit["message"] for commit in hub_repo.commits] == [
        "Training in progress, step 1",
        "Training in progress, step 2",
        FINAL_COMMIT,
    ]
    assert [call[0] for call in hub_repo.calls][-3:] == ["whoami", "create_repo", "upload_folder"]
    evaluations = {entry["step"]: entry for entry in summary["log_history"] if "eval_f1" in entry}
    for step, commit in enumerate(hub_repo.commits[:2], start=1):
        files = commit["files"]
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= set(files)
        assert not any("/" in path or path.endswith((".pt", ".pth", ".bin")) for path in files)  # no training state
        assert "trainer_state.json" not in files
        with open(out / f"checkpoint-{step}" / "adapter_model.safetensors", "rb") as f:
            assert files["adapter_model.safetensors"] == f.read()  # the adapter of that save
        card = ModelCard(files["README.md"].decode())
        scores = {result.metric_type: result.metric_value for result in card.data.eval_results}
        assert scores == {
            "exact_match": round(evaluations[step]["eval_exact_match"], 2),
            "f1": round(evaluations[step]["eval_f1"], 2),
        }
        assert f"Training in progress: the checkpoint of step {step} of 2" in card.text
        assert card.data.base_model == "someone/tiny-base" and f'from_pretrained("{REPO}")' in card.text
    final_card = ModelCard.load(os.path.join(hub_repo.repo_dir, "README.md"))
    assert "Training in progress" not in final_card.text  # the finished run's card replaced the last one
    assert not [name for name in os.listdir(out) if name.startswith(hub_pushes.STAGING_PREFIX)]


@pytest.mark.slow
def test_checkpoint_pushes_last_checkpoint_and_a_run_resumes_from_it(tiny_model_dir, tmp_path, hub_repo, trainer_spy):
    stale = os.path.join(hub_repo.repo_dir, "last-checkpoint", "rng_state_7.pth")  # left by an older run
    os.makedirs(os.path.dirname(stale))
    open(stale, "wb").close()
    run_qa_lora.main(pushing_run_args(tiny_model_dir, tmp_path / "run", "checkpoint"))
    assert [commit["message"] for commit in hub_repo.commits][-1] == FINAL_COMMIT
    for commit in hub_repo.commits[:2]:
        for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", "adapter_model.safetensors"):
            assert f"last-checkpoint/{name}" in commit["files"]
    last = os.path.join(hub_repo.repo_dir, "last-checkpoint")
    assert read_json(os.path.join(last, "trainer_state.json"))["global_step"] == 2
    assert not os.path.exists(stale)  # last-checkpoint/ is exactly the newest checkpoint
    # a fresh machine: the pushed last-checkpoint/ (as `hf download ... --include "last-checkpoint/*"` fetches it)
    trainer_spy.steps.clear()
    resumed = run_qa_lora.main(
        tiny_run_args(tiny_model_dir, tmp_path / "resumed", "--max_steps", "3", "--resume_from_checkpoint", last)
    )
    assert trainer_spy.steps == [2]  # steps 1-2 came from the Hub; only step 3 was trained
    assert [entry["step"] for entry in resumed["log_history"] if "loss" in entry] == [1, 2, 3]


@pytest.mark.slow
def test_a_failed_push_warns_once_and_the_next_save_pushes(tiny_model_dir, tmp_path, hub_repo, caplog):
    hub_repo.failures = 1
    summary = run_qa_lora.main(pushing_run_args(tiny_model_dir, tmp_path / "run", "every_save"))
    assert summary["train_metrics"]["train_runtime"] > 0  # training finished
    (warning,) = [record for record in caplog.records if record.levelno >= logging.WARNING and "push" in record.name]
    assert warning.getMessage() == (
        f"pushing checkpoint-1 to {REPO} failed (ConnectionError: upload_folder: connection reset by peer); "
        "training goes on, and the next save pushes the newest checkpoint"
    )
    assert [commit["message"] for commit in hub_repo.commits] == ["Training in progress, step 2", FINAL_COMMIT]
    assert os.path.isfile(os.path.join(hub_repo.repo_dir, "adapter_model.safetensors"))


class BlockingHfApi(FakeHfApi):
    """Each upload waits until .release is set: a push still uploading when the next save comes."""

    release = None

    def upload_folder(self, **kwargs):
        assert type(self).release.wait(timeout=30)
        super().upload_folder(**kwargs)


def save_checkpoint(output_dir, step):
    checkpoint = output_dir / f"checkpoint-{step}"
    checkpoint.mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "trainer_state.json"):
        (checkpoint / name).write_text(f"{name} of step {step}")
    return SimpleNamespace(global_step=step, max_steps=10, log_history=[], is_world_process_zero=True)


@pytest.mark.parametrize("queue", [False, True], ids=["skipped", "queued"])
def test_a_save_while_a_push_uploads_is_skipped_unless_queued(tmp_path, monkeypatch, local_base_run, queue):
    _, facts = local_base_run
    BlockingHfApi.calls, BlockingHfApi.release = [], threading.Event()
    monkeypatch.setattr(hub, "HfApi", BlockingHfApi)
    pushes = hub_pushes.CheckpointPushes(REPO, None, "all_checkpoints", queue=queue)
    callback = hub_pushes.HubPushCallback(pushes, facts, {})
    args = SimpleNamespace(output_dir=str(tmp_path))
    callback.on_save(args, save_checkpoint(tmp_path, 1), None)
    callback.on_save(args, save_checkpoint(tmp_path, 2), None)  # checkpoint-1's push is still uploading
    (tmp_path / "checkpoint-1" / "optimizer.pt").unlink()  # the Trainer's rotation: the push sent a snapshot
    BlockingHfApi.release.set()
    callback.on_train_end(args, None, None)  # waits for every push
    uploads = [kwargs for name, _, kwargs in BlockingHfApi.calls if name == "upload_folder"]
    assert [upload["commit_message"] for upload in uploads] == [
        f"Training in progress, step {step}" for step in ([1, 2] if queue else [1])
    ]
    assert set(uploads[0]["uploaded"]) == {
        "adapter_model.safetensors", "adapter_config.json", "README.md", "checkpoint-1/adapter_model.safetensors",
        "checkpoint-1/adapter_config.json", "checkpoint-1/optimizer.pt", "checkpoint-1/trainer_state.json",
    }  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-2"]  # the snapshots are gone


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--hub_strategy", "checkpoint"],
            "--hub_strategy checkpoint pushes to the Hub at each save: add --push_to_hub",
        ),
        (
            ["--hub_strategy", "every_save", "--push_to_hub", "--save_strategy", "no"],
            "--hub_strategy every_save pushes at each checkpoint save, but --save_strategy no saves none",
        ),
        (["--hub_strategy", "sometimes"], "invalid choice: 'sometimes'"),
    ],
)
def test_hub_strategy_without_pushes_or_saves_is_refused(flags, message):
    from builders import parse_training_args

    with pytest.raises(SquadLoraError, match=re.escape(message)):
        parse_training_args(flags)


def test_hub_strategy_refuses_an_adapter_only_the_final_save_converts(tiny_model_dir, tmp_path, fake_hub):
    args = pushing_run_args(tiny_model_dir, tmp_path, "every_save", "--init_lora_weights", "pissa")
    with pytest.raises(ConfigError, match="--hub_strategy every_save cannot be used with --init_lora_weights pissa"):
        run_qa_lora.main(args)
    assert not os.path.exists(tmp_path / "run_summary.json")
