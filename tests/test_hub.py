"""squad_lora.hub: the model card of a run, and the upload (login and repo checked first, checkpoints left out)."""

import pytest

from squad_lora import hub
from squad_lora.errors import SquadLoraError


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
