"""Serving a run with vLLM or TGI: whether vLLM takes the LoRA adapter as it is, the commands for the adapter and
for the merged model, and the merged model's generation config, which makes a server stop and decode as
generate.py does.

None of this has run against a vLLM or TGI server: this project's machines have no GPU. The rules below are
read from vLLM's source and documentation (cited where they are written down), and the commands are built from
their documented flags; docs/serving.md says the same.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shlex

from squad_lora.args import converted_for_original_base
from squad_lora.prompt import NO_ANSWER, PromptTemplate, prompt_template, template_from_dict

# The architectures whose vLLM implementation supports LoRA: vLLM 0.34.0's code (its wheel's
# vllm/model_executor/models/registry.py, each class inspected for SupportsLoRA as vLLM inspects it), which differs
# from its docs' "LoRA" column; DotsOCRForCausalLM declares SupportsLoRA in its source (its class needs a vision
# stack to import). GPT2LMHeadModel implements SupportsPP only (vllm/model_executor/models/gpt2.py): no LoRA.
# tests/test_serving.py's test_the_lora_architectures_are_vllms compares this list with vLLM's where vllm is installed.
VLLM_LORA_ARCHITECTURES = frozenset(
    [
        "AXK1ForCausalLM",
        "AfmoeForCausalLM",
        "ApertusForCausalLM",
        "ArceeForCausalLM",
        "BailingMoeForCausalLM",
        "BailingMoeV2ForCausalLM",
        "ChatGLMForConditionalGeneration",
        "ChatGLMModel",
        "Cohere2ForCausalLM",
        "CohereForCausalLM",
        "CwmForCausalLM",
        "DeciLMForCausalLM",
        "DeepseekForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV32ForCausalLM",
        "DeepseekV3ForCausalLM",
        "DeepseekV4ForCausalLM",
        "DotsOCRForCausalLM",
        "Ernie4_5ForCausalLM",
        "Ernie4_5_MoeForCausalLM",
        "Exaone4ForCausalLM",
        "ExaoneForCausalLM",
        "ExaoneMoeForCausalLM",
        "FalconH1ForCausalLM",
        "FlexOlmoForCausalLM",
        "GPTBigCodeForCausalLM",
        "GPTNeoXForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Gemma4ForCausalLM",
        "Gemma4ForConditionalGeneration",
        "Gemma4UnifiedForConditionalGeneration",
        "GemmaForCausalLM",
        "Glm4ForCausalLM",
        "Glm4MoeForCausalLM",
        "Glm4MoeLiteForCausalLM",
        "GlmForCausalLM",
        "GlmMoeDsaForCausalLM",
        "GptOssForCausalLM",
        "GraniteForCausalLM",
        "GraniteMoeForCausalLM",
        "GraniteMoeHybridForCausalLM",
        "GraniteMoeSWAForCausalLM",
        "GraniteMoeSharedForCausalLM",
        "GraniteSWAForCausalLM",
        "HYV3ForCausalLM",
        "HYV4ForCausalLM",
        "HunYuanDenseV1ForCausalLM",
        "HunYuanMoEV1ForCausalLM",
        "HyperCLOVAXForCausalLM",
        "InklingForCausalLM",
        "InternLM2ForCausalLM",
        "InternLM3ForCausalLM",
        "Jais2ForCausalLM",
        "JambaForCausalLM",
        "Kolibri1ForCausalLM",
        "LagunaForCausalLM",
        "Lfm2ForCausalLM",
        "Lfm2MoeForCausalLM",
        "Lfm3ForCausalLM",
        "Llama4ForCausalLM",
        "LlamaForCausalLM",
        "LongcatFlashForCausalLM",
        "MellumForCausalLM",
        "MiMoForCausalLM",
        "MiniCPM3ForCausalLM",
        "MiniCPMForCausalLM",
        "MiniMaxM2ForCausalLM",
        "Ministral3ForCausalLM",
        "MistralForCausalLM",
        "MistralLarge3ForCausalLM",
        "MixtralForCausalLM",
        "NemotronForCausalLM",
        "NemotronHForCausalLM",
        "OPTForCausalLM",
        "Olmo2ForCausalLM",
        "Olmo3ForCausalLM",
        "OlmoForCausalLM",
        "OlmoHybridForCausalLM",
        "OlmoeForCausalLM",
        "PanguEmbeddedForCausalLM",
        "PanguProMoEV2ForCausalLM",
        "PanguUltraMoEForCausalLM",
        "Param2MoEForCausalLM",
        "Phi3ForCausalLM",
        "PhiForCausalLM",
        "PhiMoEForCausalLM",
        "Plamo3ForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "Qwen3NextForCausalLM",
        "SarvamMoEForCausalLM",
        "SeedOssForCausalLM",
        "SmolLM3ForCausalLM",
        "SolarForCausalLM",
        "StableLmForCausalLM",
        "Starcoder2ForCausalLM",
        "TeleChat2ForCausalLM",
        "TeleChat3ForCausalLM",
        "TeleFLMForCausalLM",
        "VaultGemmaForCausalLM",
    ]
)
# --max-lora-rank: its default and the values it takes (vllm/config/lora.py: max_lora_rank: MaxLoRARanks = 16,
# MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]; the same in v0.26.0 and v0.34.0).
VLLM_DEFAULT_MAX_LORA_RANK = 16
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# init_lora_weights values whose saved adapter is a plain LoRA (vllm/lora/peft_helper.py, PEFTHelper._init_is_supported;
# the same in v0.34.0);
# peft saves a PiSSA/OLoRA run converted for the original base with init_lora_weights true, which passes.
VLLM_LORA_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
# modules_to_save vLLM takes, for classification heads only (peft_helper.py, PEFTHelper._validate_features, v0.34.0).
# vllm_lora_support's refusals of DoRA, lora_bias and bias are that method's and PEFTHelper.validate_legal's
# (v0.34.0); vLLM's refusals of aLoRA, layer_replication, BD-LoRA and QALoRA adapters are not copied here.
VLLM_MODULES_TO_SAVE = ("classifier", "score")

SERVED_NAME = "squad-lora"  # the adapter's name on the server, which requests pass as their model


def base_architectures(base_config) -> list[str]:
    """The model classes a base config names (config.json's "architectures"); a config without them (built in
    code): the causal-LM class transformers maps its model_type to. base_config: a transformers config or a dict."""
    get = base_config.get if isinstance(base_config, dict) else lambda key: getattr(base_config, key, None)
    if get("architectures"):
        return list(get("architectures"))
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(get("model_type") or "")
    return [name] if name else []


def adapter_max_rank(adapter_config: dict) -> int:
    """The largest rank of any adapted layer: r, or a larger one in rank_pattern."""
    return max(
        [int(adapter_config.get("r") or 0), *(int(r) for r in (adapter_config.get("rank_pattern") or {}).values())]
    )


def vllm_lora_support(adapter_config: dict, base_config) -> tuple[bool, list[str], int]:
    """Whether `vllm serve BASE --enable-lora` takes this peft adapter as it is.

    Args:
        adapter_config: the adapter's adapter_config.json, as a dict.
        base_config: its base's config (transformers config or config.json as a dict).

    Returns:
        (ok, reasons it is refused (empty when ok), the --max-lora-rank the adapter needs: 16, vLLM's default, or
        the smallest allowed value at least its rank).
    """
    reasons = []
    architectures = base_architectures(base_config) if base_config is not None else []
    if not architectures:
        reasons.append("the base's architecture is unknown here (no config to read): check it in vLLM's list")
    elif not any(name in VLLM_LORA_ARCHITECTURES for name in architectures):
        reasons.append(
            f"{'/'.join(architectures)}: vLLM serves no LoRA on this architecture (not SupportsLoRA in vLLM's model "
            "class)"
        )
    if str(adapter_config.get("peft_type", "LORA")).upper() != "LORA":
        reasons.append(f"peft_type {adapter_config.get('peft_type')}: vLLM serves LoRA adapters only")
    if adapter_config.get("use_dora"):
        reasons.append("use_dora: vLLM refuses DoRA adapters ('vLLM does not yet support DoRA.')")
    saved = [m for m in adapter_config.get("modules_to_save") or [] if m not in VLLM_MODULES_TO_SAVE]
    if saved:
        reasons.append(
            f"modules_to_save {saved}: vLLM refuses adapters that carry whole modules "
            "('vLLM only supports modules_to_save being None')"
        )
    if adapter_config.get("lora_bias"):
        reasons.append("lora_bias: vLLM refuses a LoRA bias")
    if (adapter_config.get("bias") or "none") != "none":
        reasons.append(f"bias {adapter_config['bias']!r}: vLLM refuses adapters with bias weights")
    init = adapter_config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in VLLM_LORA_INITS:
        reasons.append(f"init_lora_weights {init!r}: the adapter changes its base's weights, which vLLM refuses")
    rank = adapter_max_rank(adapter_config)
    allowed = [value for value in VLLM_MAX_LORA_RANKS if value >= max(rank, VLLM_DEFAULT_MAX_LORA_RANK)]
    if not allowed:
        reasons.append(f"rank {rank}: above vLLM's largest --max-lora-rank, {VLLM_MAX_LORA_RANKS[-1]}")
    return not reasons, reasons, allowed[0] if allowed else VLLM_MAX_LORA_RANKS[-1]


def adapter_config_of_run(lora: dict) -> dict | None:
    """The adapter_config.json fields vllm_lora_support reads, from a run summary's "lora" entry (LoraArguments'
    values); None for a full fine-tune. A PiSSA or OLoRA run is saved converted for its original base: rank 2r,
    init_lora_weights true (peft's save_pretrained with path_initial_model_for_weight_conversion)."""
    if not lora.get("lora_r"):
        return None
    init = str(lora.get("init_lora_weights", "true"))
    converted = converted_for_original_base(init)
    return {
        "peft_type": "LORA",
        "r": lora["lora_r"] * (2 if converted else 1),
        "use_dora": bool(lora.get("use_dora")),
        "modules_to_save": lora.get("lora_modules_to_save"),
        "bias": lora.get("lora_bias") or "none",
        "init_lora_weights": True if converted or init.lower() in ("true", "false") else init,
    }


@dataclasses.dataclass(frozen=True)
class ServeCommands:
    """How to serve a run, as serve_commands builds it."""

    vllm_lora: str | None  # None where vLLM refuses the adapter (vllm_reasons say why)
    vllm_merged: str
    tgi_lora: str
    tgi_merged: str
    vllm_reasons: tuple[str, ...]
    prompt: str  # the prompt format, {context} and {question} to fill in
    stop: tuple[str, ...]  # stop strings a request passes
    request: dict  # a /v1/completions request body for vLLM
    notes: tuple[str, ...] = ()  # where a server decodes otherwise than generate.py


def serve_commands(
    base_model: str,
    adapter: str,
    merged: str,
    template: PromptTemplate,
    verdict: tuple[bool, list[str], int],
    max_new_tokens: int = 32,
    strategy: str = "greedy",
    end_token_id: int | None = None,
) -> ServeCommands:
    """The vLLM and TGI commands for the adapter (on its base) and for the merged model, and a request.

    Args:
        base_model: the base's Hub id or path; adapter: the adapter's dir or Hub id; merged: merge_adapter.py's
            output dir.
        template: the run's recorded PromptTemplate (its format, and the end token of a chat answer).
        verdict: vllm_lora_support's result for this adapter.
        max_new_tokens, strategy: the run's recorded decoding.
        end_token_id: the template's end-of-answer token when it is not the tokenizer's EOS (chat templates).
    """
    ok, reasons, max_rank = verdict
    greedy = strategy in ("greedy", "beam")  # vLLM's server decodes greedily or by sampling, not by beams
    notes = []
    if strategy == "beam":
        notes.append("the run decodes with beam search; these servers answer greedily instead")
    elif not greedy:
        notes.append(f"the run samples ({strategy}); a server samples with the generation config's settings")
    # vLLM reads temperature (and max_new_tokens) from a generation config, never do_sample: greedy has to be asked
    override = {"temperature": 0} if greedy else {}
    lora_defaults = {**override, "max_new_tokens": max_new_tokens}
    lora = None
    if ok:
        parts = ["vllm", "serve", base_model, "--enable-lora", "--lora-modules", f"{SERVED_NAME}={adapter}"]
        if max_rank != VLLM_DEFAULT_MAX_LORA_RANK:
            parts += ["--max-lora-rank", str(max_rank)]
        lora = shlex.join(parts + ["--override-generation-config", json.dumps(lora_defaults)])
    merged_parts = ["vllm", "serve", merged]
    if override:
        merged_parts += ["--override-generation-config", json.dumps(override)]
    stop = ("\n",)
    request = {
        "model": SERVED_NAME if ok else merged,
        "prompt": template.build("The Eiffel Tower was finished in 1889 in Paris.", "When was it finished?"),
        "max_tokens": max_new_tokens,
        "stop": list(stop),
        "add_special_tokens": False,  # the prompt holds all it needs, as in training (no BOS)
        **({"temperature": 0} if greedy else {}),
        **({"stop_token_ids": [end_token_id]} if end_token_id is not None else {}),
    }
    return ServeCommands(
        vllm_lora=lora,
        vllm_merged=shlex.join(merged_parts),
        tgi_lora=shlex.join(
            ["text-generation-launcher", "--model-id", base_model, "--lora-adapters", f"{SERVED_NAME}={adapter}"]
        ),
        tgi_merged=shlex.join(["text-generation-launcher", "--model-id", merged]),
        vllm_reasons=tuple(reasons),
        prompt=template.build("{context}", "{question}"),
        stop=stop,
        request=request,
        notes=tuple(notes),
    )


def answer_rule(template: PromptTemplate) -> str:
    """How a served completion becomes an answer, as generate.py makes one."""
    end = "EOS" if template.end is None else f"{template.end} (or EOS)"
    return (
        f"the answer ends at {end} or the first newline: keep the text before the first newline, stripped; "
        f"'{NO_ANSWER}' means no answer (SQuAD v2)"
    )


def serving_report(commands: ServeCommands, template: PromptTemplate, notes: list[str] = ()) -> str:
    """The serving verdict and commands as log lines (merge_adapter.py logs them after merging)."""
    lines = ["serving (commands built from vLLM's and TGI's documented flags; not run here):"]
    if commands.vllm_lora:
        lines.append(f"  vLLM takes the LoRA adapter: {commands.vllm_lora}")
    else:
        lines += ["  vLLM refuses the LoRA adapter (serve the merged model):"]
        lines += [f"    - {reason}" for reason in commands.vllm_reasons]
    lines += [
        f"  vLLM, merged model: {commands.vllm_merged}",
        f"  TGI, LoRA adapter: {commands.tgi_lora}",
        f"  TGI, merged model: {commands.tgi_merged}",
        f"  prompt ({template.format}): {commands.prompt!r}",
        f"  stop: {answer_rule(template)}",
        f"  a request: POST /v1/completions {json.dumps(commands.request)}",
    ]
    lines += [f"  note: {note}" for note in (*commands.notes, *notes)]
    return "\n".join(lines)


def serving_markdown(commands: ServeCommands, template: PromptTemplate) -> str:
    """The model card's Serving section body (no heading)."""
    if commands.vllm_lora:
        verdict = f"vLLM serves this LoRA adapter on its base:\n\n```bash\n{commands.vllm_lora}\n```"
    else:
        reasons = "\n".join(f"- {reason}" for reason in commands.vllm_reasons)
        verdict = f"vLLM does not serve this adapter as a LoRA; serve the merged model:\n\n{reasons}"
    return f"""{verdict}

The merged model (`python merge_adapter.py RUN --output_dir MERGED`; its `generation_config.json` holds the stop
tokens and the run's decoding) needs no LoRA support from the server:

```bash
{commands.vllm_merged}
{commands.tgi_merged}
```

Send the prompt as text, in its {template.format} format (`{commands.prompt!r}`), without special tokens added;
{answer_rule(template)}. A vLLM request: `{json.dumps(commands.request)}`. These commands are built from vLLM's and
TGI's documented flags; they have not been run against a server."""


def served_generation_config(tokenizer, model_config, recorded: dict):
    """The GenerationConfig a merged model is saved with: generate.py's for the run's recorded decoding (its first
    strategy), stopping at EOS, the template's end token and every token holding a newline.

    Args:
        recorded: outputs.recorded_decoding of the run (its prompt format and decoding flags).

    Returns:
        (config, notes): notes name what the run decodes with that a generation config cannot carry.
    """
    from squad_lora.args import DecodingArguments, PromptArguments
    from squad_lora.plan import resolve_answer_plan

    def fields_of(cls):
        return {f.name for f in dataclasses.fields(cls)}

    decoding = DecodingArguments(**{k: v for k, v in recorded.items() if k in fields_of(DecodingArguments)})
    prompt_args = PromptArguments(**{k: v for k, v in recorded.items() if k in fields_of(PromptArguments)})
    plan = resolve_answer_plan(decoding, prompt_args, tokenizer, model_config)
    config = plan.generation_configs[decoding.strategies[0]]
    config = copy.deepcopy(config)  # the plan's stays as generate.py uses it
    config.eos_token_id = list(dict.fromkeys(plan.stop_ids))  # EOS first, then the newline tokens and the end token
    config.return_dict_in_generate = False  # what the confidences need, not a server
    config.output_logits = False
    config.num_return_sequences = 1
    notes = [
        f"--{flag} is applied by generate.py only; a server answers without it"
        for flag in ("constrain_to_context", "no_answer_threshold", "min_answer_confidence")
        if getattr(decoding, flag) not in (None, False)
    ]
    return config, notes


def merged_model_serving(model, tokenizer, adapter_config: dict, recorded: dict, adapter: str, merged: str) -> tuple:
    """merge_adapter.py's serving step: (the merged model's GenerationConfig, the serving report to log).

    Args:
        model, tokenizer: the merged model (its config is the base's) and the run's tokenizer.
        adapter_config: the adapter's adapter_config.json; recorded: outputs.recorded_decoding of the run.
        adapter, merged: the adapter's dir and the merged model's, as the commands name them.
    """
    config, notes = served_generation_config(tokenizer, model.config, recorded)
    template = prompt_template(tokenizer, recorded.get("prompt_format", "plain"))
    commands = serve_commands(
        adapter_config.get("base_model_name_or_path") or "BASE",
        os.path.abspath(adapter),
        os.path.abspath(merged),
        template,
        vllm_lora_support(adapter_config, model.config),
        max_new_tokens=config.max_new_tokens,
        strategy=recorded.get("strategy", "greedy"),
        end_token_id=None if template.end is None else template.end_token_id(tokenizer),
    )
    return config, serving_report(commands, template, notes)


def base_config_of(name: str):
    """The config of a base model (a local dir's config.json, or a Hub id through transformers, its cache
    included), or None where it cannot be read."""
    if os.path.isdir(name):
        try:
            with open(os.path.join(name, "config.json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        return None


def card_markdown(summary: dict, config: dict) -> str:
    """The model card's Serving section body, from a run summary and its resolved config."""
    template = template_from_dict(summary.get("prompt_template"))
    repo = summary.get("hub_model_id") or "<this repo>"
    strategy = (config.get("strategies") or [config.get("strategy") or "greedy"])[0]
    max_new_tokens = config.get("max_new_tokens") or 32
    adapter_config = adapter_config_of_run(summary["lora"])
    if adapter_config is None:  # a full fine-tune is a standalone model already
        commands = serve_commands(
            repo, repo, repo, template, (False, [], VLLM_DEFAULT_MAX_LORA_RANK), max_new_tokens, strategy
        )
        return (
            f"A full fine-tune, served as it is:\n\n```bash\n{commands.vllm_merged}\n{commands.tgi_merged}\n```\n\n"
            f"Send the prompt as text ({template.format} format, `{commands.prompt!r}`), without special tokens added; "
            f"{answer_rule(template)}."
        )
    base = summary.get("base_model_id") or summary["base_model"]
    verdict = vllm_lora_support(adapter_config, base_config_of(summary["base_model"]))
    return serving_markdown(serve_commands(base, repo, "MERGED", template, verdict, max_new_tokens, strategy), template)
