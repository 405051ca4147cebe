"""squad_lora.hub: the model card of a run (it parses on the Hub, and its loading snippet answers as generate.py does),
the base model's Hub id (read, recorded, required before anything is pushed), and the upload (login and repo checked
first, checkpoints left out)."""

import json
import os
import re
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from builders import train_for_sharing
from fakes import FakeHfApi, RecordingHfApi
from run_outputs import read_json
from squad_lora import hub
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
    import generate

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
    import generate

    run_dir, _ = chat_run
    text = ModelCard.load(os.path.join(run_dir, "README.md")).text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("<this repo>", run_dir)
    assert 'eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")' in snippet.replace("'", '"')
    completed = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    context, question = "The Eiffel Tower was finished in 1889 in Paris.", "When was the Eiffel Tower finished?"
    results = generate.main(["--adapter", run_dir, "--context", context, "--question", question])
    assert completed.stdout.rstrip("\n").split("\n")[-1] == results["greedy"][0]["prediction"]
