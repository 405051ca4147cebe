"""The adapter's model card and the upload to the Hugging Face Hub.

The token comes only from the environment (HF_TOKEN) or `hf auth login`; huggingface_hub reads
it itself, so it never passes through our code, logs or files.
"""

from __future__ import annotations

import logging
import os

from huggingface_hub import HfApi, ModelCard, ModelCardData

from squad_lora.errors import SquadLoraError

logger = logging.getLogger(__name__)

# Checkpoints hold optimizer state (large, and only useful for resuming); temporary files are partial.
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.tmp", ".*.tmp"]


def build_model_card(summary: dict) -> ModelCard:
    """A model card for a trained adapter from its run_summary.json contents."""
    lora = summary["lora"]
    base = summary["base_model"]
    dataset = summary["dataset"]
    eval_metrics = summary.get("eval_metrics") or {}
    metric_lines = "\n".join(
        f"| {k} | {v:.4g} |"
        for k, v in eval_metrics.items()
        if isinstance(v, (int, float)) and not k.endswith(("runtime", "per_second", "epoch"))
    )
    data = ModelCardData(
        base_model=None if os.path.exists(base) else base,  # the Hub's field takes repo ids, not local paths
        datasets=None if os.path.exists(dataset) else [dataset],
        library_name="peft" if lora["lora_r"] else "transformers",
        pipeline_tag="text-generation",
        tags=["squad-lora", "question-answering", "lora" if lora["lora_r"] else "full-fine-tuning"],
        license=None,
    )
    if lora["lora_r"]:
        method = (
            f"LoRA r={lora['lora_r']}, alpha={lora['lora_alpha']}, dropout={lora['lora_dropout']}, "
            f"target modules {', '.join(lora['target_modules'] or [])}, bias {lora['lora_bias']}"
        )
        load = (
            "```python\n"
            "from peft import AutoPeftModelForCausalLM\n"
            "from transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{summary.get("hub_model_id") or "<this repo>"}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{summary.get("hub_model_id") or "<this repo>"}")\n'
            "```\n\nOr answer questions with squad-lora: `python generate.py --adapter <this repo> "
            '--context "..." --question "..."`.'
        )
    else:
        method = "full fine-tuning (every weight trained)"
        load = "Load it with `AutoModelForCausalLM.from_pretrained(<this repo>)`."
    text = f"""---
{data.to_yaml()}
---

# {summary.get("run_name", "squad-lora adapter")}

Generative question answering on SQuAD: `{base}` fine-tuned with {method}, trained with
squad-lora's `run_qa_lora.py` on `{dataset}`.

{summary["parameters"]}

## Prompt

The model answers a prompt of the form `Context: ...\\nQuestion: ...\\nAnswer:` with the answer and EOS;
unanswerable SQuAD v2 questions are answered with `unanswerable`.

## Evaluation

| metric | value |
|---|---|
{metric_lines}

## How to load

{load}
"""
    return ModelCard(text)


class HubError(SquadLoraError, RuntimeError):
    """The Hub refused or could not be reached; the message says which and what to do."""


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def check_hub_repo(repo_id: str, private: bool | None = None, api: HfApi | None = None) -> str:
    """Check the token and the endpoint, and create repo_id (if new), before any training; returns its URL."""
    api = api or HfApi()
    try:
        user = api.whoami()
    except Exception as e:  # huggingface_hub raises many types: HTTP, connection, missing token
        raise HubError(
            f"--push_to_hub: cannot log in to the Hub at {api.endpoint} ({_first_line(e)}). Set HF_TOKEN or run "
            "`hf auth login`; or train without --push_to_hub and push later: python push_to_hub.py RUN_DIR"
        ) from e
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
    except Exception as e:
        raise HubError(
            f"--push_to_hub: cannot create or open the repo {repo_id!r} as {user.get('name', '?')} ({_first_line(e)}). "
            "Check --hub_model_id and the token's write access"
        ) from e
    return str(url)


def push_to_hub(output_dir: str, repo_id: str, private: bool | None = None, api: HfApi | None = None) -> str:
    """Upload output_dir (adapter, tokenizer, card, summary, TensorBoard logs) to repo_id; returns its URL."""
    api = api or HfApi()
    url = check_hub_repo(repo_id, private, api)
    try:
        api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            commit_message="Upload squad-lora adapter",
            ignore_patterns=UPLOAD_IGNORE,
        )
    except Exception as e:
        raise HubError(
            f"uploading {output_dir} to {repo_id!r} failed ({_first_line(e)}); the run is saved: retry with "
            f"python push_to_hub.py {output_dir} --hub_model_id {repo_id}"
        ) from e
    logger.info("pushed %s to %s", output_dir, url)
    return str(url)
