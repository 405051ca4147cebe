"""push_to_hub.py: a finished run pushed later, without training: the model card rebuilt first (the repo, the base's
Hub id, the decoding-strategy comparison, a branch, the license), the adapter pointed at the base's Hub id, and the
upload (squad_lora.hub's HfApi faked: nothing leaves this machine)."""

import os

from huggingface_hub import ModelCard

from run_outputs import copy_run, read_json


def test_a_finished_run_is_pushed_later_without_training(recording_hub, tiny_adapter, tmp_path):
    from squad_lora.commands import push as push_to_hub

    run_dir = copy_run(tiny_adapter, tmp_path / "run")
    url = push_to_hub.main([run_dir, "--hub_model_id", "me/tiny-squad", "--base_model_id", "me/tiny-base"])
    assert url == "https://hub.example/me/tiny-squad"
    assert [name for name, *_ in recording_hub.calls] == ["whoami", "create_repo", "upload_folder"]
    upload = recording_hub.calls[-1][2]
    assert upload["repo_id"] == "me/tiny-squad" and upload["folder_path"] == run_dir
    with open(os.path.join(run_dir, "README.md"), encoding="utf-8") as f:
        assert 'from_pretrained("me/tiny-squad")' in f.read()


def test_push_to_hub_rebuilds_the_card_with_the_repo_base_and_strategy_table(local_base_run, recording_hub, tmp_path):
    import shutil

    from squad_lora import outputs
    from squad_lora.commands import push as push_to_hub

    run_dir = str(tmp_path / "run")
    shutil.copytree(local_base_run[0], run_dir)
    comparison = {
        "strategies": [
            {
                "strategy": "greedy",
                "num_samples": 1,
                "exact_match": 12.5,
                "exact_match_std": None,
                "f1": 20.0,
                "f1_std": None,
                "distinct_1": 0.5,
                "distinct_2": 0.5,
                "answers_per_question": 1.0,
                "answer_length": 2.0,
                "num_missing": 0,
            }
        ]
    }
    os.makedirs(os.path.join(run_dir, "preds"))
    outputs.write_comparison(os.path.join(run_dir, "preds"), comparison, "")
    push_to_hub.main([run_dir, "--hub_model_id", "me/tiny", "--base_model_id", "openai-community/gpt2"])
    assert read_json(os.path.join(run_dir, "adapter_config.json"))["base_model_name_or_path"] == "openai-community/gpt2"
    card = ModelCard.load(os.path.join(run_dir, "README.md"))
    assert card.data.base_model == "openai-community/gpt2"
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/tiny")' in card.text
    assert "## Decoding strategies" in card.text and "| greedy | 1 | 12.50 | 20.00 |" in card.text
    name, _, upload = recording_hub.calls[-1]
    assert name == "upload_folder" and upload["repo_id"] == "me/tiny" and "checkpoint-*" in upload["ignore_patterns"]
    # a branch: the card's snippet loads from it
    push_to_hub.main([run_dir, "--hub_model_id", "me/tiny", "--hub_revision", "r8-trial"])
    card = ModelCard.load(os.path.join(run_dir, "README.md"))
    assert 'from_pretrained("me/tiny", revision="r8-trial")' in card.text
    name, _, upload = recording_hub.calls[-1]
    assert name == "upload_folder" and upload["revision"] == "r8-trial"
    # the license the run recorded (--license mit) stays unless the push names another
    assert card.data.license == "mit"
    push_to_hub.main([run_dir, "--hub_model_id", "me/tiny", "--license", "cc-by-4.0"])
    assert ModelCard.load(os.path.join(run_dir, "README.md")).data.license == "cc-by-4.0"
