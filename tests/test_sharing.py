"""What a run leaves for others: an adapter that names its base's Hub id, a model card the Hub parses,
the Hugging Face examples' result files, a training_args.bin that unpickles, and a merged model."""

import json
import os
import re
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from conftest import SAMPLE_DIR, answer_plan
from squad_lora.errors import ConfigError
from squad_lora.hub import HubError, check_shareable, hub_id_of

TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")
DEV_FILE = os.path.join(SAMPLE_DIR, "dev-v1.1.json")


def train(model_dir: str, output_dir, *extra: str) -> dict:
    import run_qa_lora

    return run_qa_lora.main(
        [
            "--model_name_or_path",
            model_dir,
            "--train_file",
            TRAIN_FILE,
            "--validation_file",
            DEV_FILE,
            "--output_dir",
            str(output_dir),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "3",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--max_eval_samples",
            "8",
            "--eval_generation_samples",
            "8",
            "--learning_rate",
            "1e-3",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def local_base_run(tiny_model_dir, tmp_path_factory):
    """A finished run on a local base directory that has no Hub id."""
    output_dir = tmp_path_factory.mktemp("sharing") / "run"
    summary = train(tiny_model_dir, output_dir, "--license", "mit")
    return str(output_dir), summary


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------
# The base model link
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
    summary = train(tiny_model_dir, tmp_path / "run", "--base_model_id", "openai-community/gpt2")
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
        train(tiny_model_dir, tmp_path / "run", "--push_to_hub", "--hub_model_id", "me/x")
    assert not (tmp_path / "run" / "run_summary.json").exists()


# ---------------------------------------------------------------------------
# The model card
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


def test_push_to_hub_rebuilds_the_card_with_the_repo_base_and_strategy_table(local_base_run, tmp_path, monkeypatch):
    import shutil

    import push_to_hub
    from squad_lora import hub, outputs

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
    uploads = []

    class Api:
        endpoint = "https://hub.example"

        def whoami(self):
            return {"name": "me"}

        def create_repo(self, repo_id, **kwargs):
            return f"{self.endpoint}/{repo_id}"

        def upload_folder(self, **kwargs):
            uploads.append(kwargs)

        def create_branch(self, repo_id, branch, **kwargs):
            pass

    monkeypatch.setattr(hub, "HfApi", Api)
    push_to_hub.main([run_dir, "--hub_model_id", "me/tiny", "--base_model_id", "openai-community/gpt2"])
    assert read_json(os.path.join(run_dir, "adapter_config.json"))["base_model_name_or_path"] == "openai-community/gpt2"
    card = ModelCard.load(os.path.join(run_dir, "README.md"))
    assert card.data.base_model == "openai-community/gpt2"
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/tiny")' in card.text
    assert "## Decoding strategies" in card.text and "| greedy | 1 | 12.50 | 20.00 |" in card.text
    assert uploads[0]["repo_id"] == "me/tiny" and "checkpoint-*" in uploads[0]["ignore_patterns"]
    # a branch: the card's snippet loads from it
    push_to_hub.main([run_dir, "--hub_model_id", "me/tiny", "--hub_revision", "r8-trial"])
    card = ModelCard.load(os.path.join(run_dir, "README.md"))
    assert 'from_pretrained("me/tiny", revision="r8-trial")' in card.text
    assert uploads[1]["revision"] == "r8-trial"
    # the license the run recorded (--license mit) stays unless the push names another
    assert card.data.license == "mit"
    push_to_hub.main([run_dir, "--hub_model_id", "me/tiny", "--license", "cc-by-4.0"])
    assert ModelCard.load(os.path.join(run_dir, "README.md")).data.license == "cc-by-4.0"


# ---------------------------------------------------------------------------
# Result files and training_args.bin
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
# The merged export
# ---------------------------------------------------------------------------


def test_the_merged_model_loads_without_peft_and_answers_as_the_adapter(local_base_run, tmp_path):
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import merge_adapter
    from squad_lora.args import ModelArguments
    from squad_lora.data import load_squad_file
    from squad_lora.decoding import answer_questions
    from squad_lora.modeling import load_for_inference

    run_dir, _ = local_base_run
    merged_dir = merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged")])
    assert sorted(name for name in os.listdir(merged_dir) if name.endswith((".safetensors", ".bin"))) == [
        "model.safetensors"
    ]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    examples, _ = load_squad_file(DEV_FILE)
    adapter, tokenizer = load_for_inference(run_dir, ModelArguments())
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    with torch.no_grad():
        plan = answer_plan(tokenizer, adapter, max_new_tokens=8)
        expected = answer_questions(adapter, tokenizer, examples[:12], plan, PartialState())["greedy"]
        plan = answer_plan(merged_tokenizer, merged, max_new_tokens=8)
        got = answer_questions(merged, merged_tokenizer, examples[:12], plan, PartialState())
    assert [row["prediction"] for row in got["greedy"]] == [row["prediction"] for row in expected]
    with pytest.raises(ConfigError, match="exists: pass --overwrite_output_dir"):
        merge_adapter.main([run_dir, "--output_dir", merged_dir])
