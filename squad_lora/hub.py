"""The adapter's model card and the upload to the Hugging Face Hub.

The token comes only from the environment (HF_TOKEN) or `hf auth login`; huggingface_hub reads
it itself, so it never passes through our code, logs or files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from squad_lora.args import LoraArguments, describe_lora
from squad_lora.errors import HubError, first_line
from squad_lora.prompt import NO_ANSWER, PromptTemplate, template_from_dict
from squad_lora.serving import card_markdown

logger = logging.getLogger(__name__)

# Checkpoints hold optimizer state (large, and only useful for resuming); temporary files are partial; .hub-push-*
# are the snapshots hub_pushes.py uploads during training.
UPLOAD_IGNORE = ["checkpoint-*", "checkpoint-*/**", "*.tmp", ".*.tmp", ".saving-*", ".squad-lora.lock", ".hub-push-*"]


HF_CACHE_DIR = re.compile(r"models--(?P<org>[\w.-]+?)--(?P<name>[\w.-]+)(/|$)")
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# the official SQuAD files name their version; the Hub datasets they came from
SQUAD_DATASETS = {"1.1": "rajpurkar/squad", "2.0": "rajpurkar/squad_v2"}


def run_repo_id(hub_model_id: str | None, run_name: str) -> str:
    """The Hub repo a run goes to, from run_qa_lora.py or push_to_hub.py: --hub_model_id, else the run's name (in
    the token's namespace)."""
    return hub_model_id or run_name


def hub_id_of(model_name_or_path: str) -> str | None:
    """The Hub id a base model goes by: the name itself, or for a local directory the id in its Hub-cache
    path (models--org--name/snapshots/...) or in its config.json's `_name_or_path`; None when unknown."""
    if not os.path.isdir(model_name_or_path):
        return model_name_or_path if HUB_ID.match(model_name_or_path) else None
    match = HF_CACHE_DIR.search(os.path.abspath(model_name_or_path).replace(os.sep, "/"))
    if match:
        return f"{match['org']}/{match['name']}"
    try:
        with open(os.path.join(model_name_or_path, "config.json"), encoding="utf-8") as f:
            recorded = json.load(f).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(recorded, str) and HUB_ID.match(recorded) and not os.path.exists(recorded):
        return recorded
    return None


def base_model_reference(model_name_or_path: str, base_model_id: str | None) -> tuple[str, str | None]:
    """(what the adapter records as its base, the base's Hub id or None).

    The adapter records the Hub id when one is known, so that it loads anywhere; otherwise the absolute
    local path, which loads from any directory on this machine (and is never pushed: see push_to_hub).
    """
    hub_id = base_model_id or hub_id_of(model_name_or_path)
    if hub_id is None:
        logger.warning(
            "%s: no Hub id known for this local base model; the adapter records its absolute path. To share "
            "the adapter, pass --base_model_id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)",
            model_name_or_path,
        )
    return hub_id or os.path.abspath(model_name_or_path), hub_id


def dataset_hub_id(dataset_name: str | None, data_file: str | None, version: str | None) -> str | None:
    """The Hub dataset the training data is: the dataset given, or for an official SQuAD file its origin."""
    if not data_file:
        return dataset_name
    return SQUAD_DATASETS.get(str(version or "").lstrip("vV"))


def _eval_results(summary: dict) -> list[EvalResult]:
    """The card's model-index: EM/F1 of the final evaluation, on the dataset the run names."""
    metrics = summary.get("eval_metrics") or {}
    dataset = summary.get("dataset_id") or summary["dataset"]
    results = []
    for key, name in (("eval_exact_match", "Exact Match"), ("eval_f1", "F1")):
        if isinstance(metrics.get(key), (int, float)):
            results.append(
                EvalResult(
                    task_type="question-answering",
                    task_name="Generative question answering",
                    dataset_type=dataset,
                    dataset_name=os.path.basename(dataset),
                    dataset_split="validation",
                    metric_type=key.removeprefix("eval_"),
                    metric_name=name,
                    metric_value=round(float(metrics[key]), 2),
                )
            )
    return results


def _table(rows: list[tuple[str, object]]) -> str:
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows)


def _load_snippet(repo: str, lora: bool, template: PromptTemplate, revision: str | None = None) -> str:
    """Python that loads the model from the Hub and answers one question (tests run it on a local dir)."""
    loader = "AutoPeftModelForCausalLM" if lora else "AutoModelForCausalLM"
    package = "peft" if lora else "transformers"
    at = "" if not revision else f', revision="{revision}"'  # a branch pushed with --hub_revision
    stop = "" if template.end is None else f", eos_token_id=tokenizer.convert_tokens_to_ids({template.end!r})"
    return f"""```python
from {package} import {loader}
from transformers import AutoTokenizer

model = {loader}.from_pretrained("{repo}"{at})
tokenizer = AutoTokenizer.from_pretrained("{repo}"{at})
prompt = {template.build("The Eiffel Tower was finished in 1889 in Paris.", "When was the Eiffel Tower finished?")!r}
inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)  # the prompt holds all it needs
output = model.generate(**inputs, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.eos_token_id{stop})
answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
print(answer.split("\\n")[0].strip())
```"""


# Long by design: the card's sections in the order a reader meets them, each a few lines of text.
def build_model_card(
    summary: dict, config: dict, comparison: dict | None = None, in_progress: str | None = None
) -> ModelCard:
    """The model card of a finished run: Hub metadata with a model-index of EM/F1, how it was trained
    (LoRA settings, parameters, hyperparameters, framework versions), the prompt, how to load it, and the
    decoding-strategy comparison when the run has one. in_progress: a note under the title, for the card of a
    checkpoint pushed during training (its summary's eval_metrics are the latest evaluation's)."""
    lora = summary["lora"]
    repo = summary.get("hub_model_id") or "<this repo>"
    base_id = summary.get("base_model_id")
    dataset_id = summary.get("dataset_id")
    template = template_from_dict(summary.get("prompt_template"))
    end = "EOS" if template.end is None else f"`{template.end}`"
    data = ModelCardData(
        model_name=summary["run_name"],
        base_model=base_id,  # the Hub's field takes repo ids, never local paths
        datasets=[dataset_id] if dataset_id else None,
        license=summary.get("license"),
        library_name="peft" if lora["lora_r"] else "transformers",
        pipeline_tag="text-generation",
        tags=["squad-lora", "question-answering", "lora" if lora["lora_r"] else "full-fine-tuning"],
        metrics=["exact_match", "f1"],
        eval_results=_eval_results(summary) or None,
    )
    method = describe_lora(lora)
    hyperparameters = _table([(key, value) for key, value in config.items() if key not in LORA_KEYS])
    versions = "\n".join(f"- {name} {version}" for name, version in summary.get("framework_versions", {}).items())
    strategies = ""
    if comparison:
        from squad_lora.scoring import render_comparison_markdown

        strategies = "\n## Decoding strategies\n\n" + render_comparison_markdown(comparison["strategies"])
    evaluation = "\n".join(
        f"| {key} | {value:.4g} |"
        for key, value in (summary.get("eval_metrics") or {}).items()
        if isinstance(value, (int, float)) and not key.endswith(("runtime", "per_second", "epoch"))
    )
    note = f"\n> {in_progress}\n" if in_progress else ""
    text = f"""---
{data.to_yaml()}
---

# {summary["run_name"]}
{note}
Generative question answering on SQuAD: `{base_id or summary["base_model"]}` fine-tuned with {method},
trained with squad-lora's `run_qa_lora.py` on `{dataset_id or summary["dataset"]}`.

{summary["parameters"]}

## Prompt

The model answers this prompt ({template.format} format) with the answer and {end} (unanswerable SQuAD v2 questions:
`{NO_ANSWER}`):

```
{template.build("{context}", "{question}")} {{answer}}
```

## How to load

{_load_snippet(repo, bool(lora["lora_r"]), template, summary.get("hub_revision"))}

Or with squad-lora: `python generate.py --adapter {repo} --context "..." --question "..."`.

## Serving

{card_markdown(summary, config)}

## Evaluation

| metric | value |
|---|---|
{evaluation}
{strategies}
## Training

{hyperparameters}

### Framework versions

{versions}
"""
    return ModelCard(text)


LORA_KEYS = frozenset(f.name for f in dataclasses.fields(LoraArguments))  # in the method line, not the table


TRAINING_PUSH = "--push_to_hub"  # who asks, in check_hub_repo's messages: training, or push_to_hub.py


def check_hub_repo(
    repo_id: str,
    private: bool | None = None,
    api: HfApi | None = None,
    revision: str | None = None,
    asked_by: str = TRAINING_PUSH,
) -> str:
    """Check the token and the endpoint, and create repo_id (if new) and its branch `revision` (if given and new,
    from main), before any training or any file of a run is rewritten; returns the repo's URL. asked_by: the flag
    or script the messages name."""
    api = api or HfApi()
    later = "; or train without --push_to_hub and push later: python push_to_hub.py RUN_DIR"
    try:
        user = api.whoami()
    except Exception as e:  # huggingface_hub raises many types: HTTP, connection, missing token
        raise HubError(
            f"{asked_by}: cannot log in to the Hub at {api.endpoint} ({first_line(e, with_type=True)}). Set HF_TOKEN "
            f"or run `hf auth login`{later if asked_by == TRAINING_PUSH else ''}"
        ) from e
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
    except Exception as e:
        raise HubError(
            f"{asked_by}: cannot create or open the repo {repo_id!r} as {user.get('name', '?')} ({first_line(e, with_type=True)}). "
            "Check --hub_model_id and the token's write access"
        ) from e
    if revision:
        try:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        except Exception as e:
            raise HubError(
                f"--hub_revision {revision}: cannot create or open the branch in {repo_id!r} ({first_line(e, with_type=True)})"
            ) from e
    return str(url)


def check_shareable(output_dir: str, base_model_id: str | None = None) -> None:
    """Refuse to push an adapter whose base is a path on this machine (and no base_model_id will replace it):
    nobody else could load it."""
    if base_model_id:
        return
    config_path = os.path.join(output_dir, "adapter_config.json")
    if not os.path.isfile(config_path):
        return  # a full fine-tune: the model itself is uploaded
    with open(config_path, encoding="utf-8") as f:
        base = json.load(f).get("base_model_name_or_path") or ""
    if os.path.isabs(base) or os.path.exists(base):
        raise HubError(
            f"{config_path}: the adapter's base model is the local path {base!r}, which nobody else can load: "
            f"pass its Hub id: python push_to_hub.py {output_dir} --base_model_id ORG/NAME"
        )


def set_adapter_base(output_dir: str, base_model_id: str) -> None:
    """Point a saved adapter at its base's Hub id (adapter_config.json's base_model_name_or_path)."""
    from squad_lora.outputs import write_json

    config_path = os.path.join(output_dir, "adapter_config.json")
    with open(config_path, encoding="utf-8") as f:
        adapter_config = json.load(f)
    adapter_config["base_model_name_or_path"] = base_model_id
    write_json(config_path, adapter_config)


def push_to_hub(
    output_dir: str, repo_id: str, private: bool | None = None, api: HfApi | None = None, revision: str | None = None
) -> str:
    """Upload output_dir (adapter, tokenizer, card, summary, TensorBoard logs) to repo_id, on the branch
    `revision` if given (main otherwise); returns the repo's URL."""
    check_shareable(output_dir)
    api = api or HfApi()
    url = check_hub_repo(repo_id, private, api, revision)
    return upload_run(output_dir, repo_id, api, revision, url)


def upload_run(output_dir: str, repo_id: str, api: HfApi | None = None, revision: str | None = None, url=None) -> str:
    """Upload output_dir to repo_id (checked by check_hub_repo first), checkpoints and partial files left out."""
    api = api or HfApi()
    url = url or f"{api.endpoint}/{repo_id}"
    try:
        api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            revision=revision,
            commit_message="Upload squad-lora adapter",
            ignore_patterns=list(UPLOAD_IGNORE),  # a copy: upload_folder appends its own patterns to the list given
        )
    except Exception as e:
        raise HubError(
            f"uploading {output_dir} to {repo_id!r} failed ({first_line(e, with_type=True)}); the run is saved: retry with "
            f"python push_to_hub.py {output_dir} --hub_model_id {repo_id}"
            + (f" --hub_revision {revision}" if revision else "")
        ) from e
    logger.info("pushed %s to %s", output_dir, url)
    return str(url)


def needs_hub(*names: str | None) -> bool:
    """Whether any of these model, tokenizer or adapter names is a Hub id rather than a local directory."""
    return any(name and not os.path.isdir(name) for name in names)


def go_offline_if_unreachable(timeout: float = 3.0) -> bool:
    """One short connection to the Hub's endpoint; where nothing answers, switch huggingface_hub, transformers and
    datasets to their offline mode (local files and the cache only), said in one line, and return True.

    Without it, every file a library looks up on an unreachable Hub costs retries with back-off (about 30 s of
    warnings before the first error). Skipped where offline mode is already on, or a proxy is configured (the
    endpoint itself is then not what a connection must reach).
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if constants.HF_HUB_OFFLINE or any(os.environ.get(name) for name in proxies):
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return False
    except OSError as e:
        logger.warning(
            "the Hugging Face Hub at %s does not answer (%s): working offline, from local files and the cache only",
            constants.ENDPOINT,
            first_line(e, with_type=True),
        )
    os.environ["HF_HUB_OFFLINE"] = "1"  # for processes started from here
    constants.HF_HUB_OFFLINE = True  # read at each call by huggingface_hub and transformers
    import datasets.config

    datasets.config.HF_HUB_OFFLINE = True
    return True
