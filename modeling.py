"""Loading the tokenizer and base model, wrapping it with LoRA, and counting parameters."""

from __future__ import annotations

import logging
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from errors import SquadLoraError

logger = logging.getLogger(__name__)

# Where peft has no default, or where we deliberately differ from it (the seed adapted c_attn).
DEFAULT_TARGET_MODULES = {"gpt2": ["c_attn"]}

BASE_MODEL_SUBDIR = "base_model"  # where a --from_scratch base is saved beside its adapter


class ModelLoadError(SquadLoraError, RuntimeError):
    """A model, tokenizer or adapter that cannot be loaded; the message says what to do instead."""


def _hub_error(what: str, name: str, error: Exception) -> ModelLoadError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    local_hint = (
        "If you are offline, pass a local directory instead: --model_name_or_path ./my-gpt2 "
        "(a directory written by save_pretrained, holding config.json, safetensors weights and the tokenizer)."
    )
    if os.path.isdir(name):
        local_hint = f"{name} is a directory but does not hold a loadable {what}."
    return ModelLoadError(f"could not load the {what} {name!r}: {first_line}\n{local_hint}")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Load a tokenizer; causal LMs without a pad token pad with EOS (labels keep the real EOS)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error("tokenizer", name, e) from e
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"the tokenizer {name!r} has no EOS token: the model could never learn to stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    name: str, dtype: str = "float32", from_scratch: bool = False, trust_remote_code: bool = False, **kwargs
):
    """A causal LM from the Hub or a directory; random weights from its config with from_scratch."""
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    try:
        if from_scratch:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
            return AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        return AutoModelForCausalLM.from_pretrained(
            name, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs
        )
    except (OSError, ValueError) as e:
        raise _hub_error("model", name, e) from e


def model_max_length(model, tokenizer) -> int:
    """The longest sequence the model accepts (n_positions for GPT-2)."""
    config = model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return min(tokenizer.model_max_length, 4096)


def default_target_modules(model) -> list[str] | None:
    """c_attn for GPT-2 (the seed's choice); None lets peft pick its per-architecture default."""
    return DEFAULT_TARGET_MODULES.get(model.config.model_type)


def check_target_modules(model, target_modules: list[str]) -> None:
    """Raise when a requested target module matches no layer, listing the names the model has."""
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaf_names = sorted({_per_layer_name(n) for n in names} - {""})
        raise ModelLoadError(
            f"--lora_target_modules {', '.join(missing)}: no such module in {model.config.model_type}. "
            f"Module names it has (per layer): {', '.join(leaf_names[:60])}"
        )


def _per_layer_name(module_name: str) -> str:
    """'transformer.h.0.attn.c_attn' -> 'attn.c_attn' (the part after the layer index); 'lm_head' stays."""
    parts = module_name.split(".")
    numbered = [i for i, part in enumerate(parts) if part.isdigit()]
    if not numbered:
        return module_name if len(parts) == 1 else ""
    return ".".join(parts[numbered[-1] + 1 :])


def apply_lora(model, lora_args, gradient_checkpointing: bool = False):
    """Wrap the model with a peft LoRA adapter; lora_r 0 keeps every weight trainable instead.

    A quantized (4/8-bit) base is prepared for training first: norms and head in fp32, and inputs that
    require grad so gradient checkpointing reaches the LoRA weights.
    """
    if getattr(model, "is_quantized", False):
        if lora_args.lora_r == 0:
            raise ModelLoadError("a 4/8-bit base cannot be fully fine-tuned: use --lora_r > 0 (QLoRA)")
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing and lora_args.lora_r:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph at checkpoints
    if lora_args.lora_r == 0:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    target_modules = lora_args.lora_target_modules or default_target_modules(model)
    if target_modules:
        check_target_modules(model, target_modules)
    targeted = [
        m for n, m in model.named_modules() if target_modules and any(n == t or n.endswith("." + t) for t in target_modules)
    ]
    config = LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=target_modules,
        bias=lora_args.lora_bias,
        # GPT-2's Conv1D stores weights transposed (in, out); peft must know to match the shapes.
        fan_in_fan_out=bool(targeted) and all(isinstance(m, Conv1D) for m in targeted),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def count_parameters(model) -> dict:
    """Trainable and total parameter counts (tied weights counted once), as peft reports them."""
    seen, trainable, total = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        num = param.numel()
        # 4-bit weights are packed two per byte: count the parameters they stand for
        if param.__class__.__name__ == "Params4bit":
            num *= 2
        total += num
        if param.requires_grad:
            trainable += num
    return {"trainable_params": trainable, "all_params": total, "trainable_percent": 100 * trainable / total}


def format_parameter_line(counts: dict) -> str:
    """The seed's line, e.g. `trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364`."""
    return (
        f"trainable params: {counts['trainable_params']:,} || all params: {counts['all_params']:,} "
        f"|| trainable%: {counts['trainable_percent']:.4f}"
    )


def _is_local_dir(path: str | None) -> bool:
    return bool(path) and os.path.isdir(path)


def load_for_inference(
    adapter: str | None,
    model_name_or_path: str | None = None,
    merge: bool = False,
    dtype: str = "float32",
    trust_remote_code: bool = False,
):
    """Model and tokenizer for generation: a LoRA adapter on its base, a full fine-tune, or a bare base.

    The base of an adapter is read from its adapter_config.json (or the base_model/ a --from_scratch
    run saved beside it); model_name_or_path overrides it. Returns (model, tokenizer) in eval mode.
    """
    import json

    if adapter is None:
        if not model_name_or_path:
            raise ModelLoadError("pass --adapter (a trained output dir or Hub id) or --model_name_or_path")
        model = load_base_model(model_name_or_path, dtype, trust_remote_code=trust_remote_code)
        return model.eval(), load_tokenizer(model_name_or_path, trust_remote_code)
    if not _is_local_dir(adapter) and (adapter.startswith((".", "/", "~")) or adapter.count("/") > 1):  # not a Hub id
        raise ModelLoadError(f"--adapter {adapter}: no such directory")
    adapter_config = None
    if _is_local_dir(adapter):
        config_path = os.path.join(adapter, "adapter_config.json")
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                adapter_config = json.load(f)
        elif not os.path.isfile(os.path.join(adapter, "config.json")):
            raise ModelLoadError(
                f"--adapter {adapter}: holds neither adapter_config.json (a LoRA run) nor config.json (a full fine-tune)"
            )
    else:
        try:
            from peft import PeftConfig

            adapter_config = PeftConfig.from_pretrained(adapter).to_dict()
        except Exception as e:  # not an adapter repo: try it as a full model below
            logger.info("%s is not a peft adapter (%s); loading it as a full model", adapter, type(e).__name__)
    tokenizer_source = adapter if _has_tokenizer(adapter) else None
    if adapter_config is None:  # a full fine-tuning output (--lora_r 0)
        try:
            model = load_base_model(adapter, dtype, trust_remote_code=trust_remote_code)
        except ModelLoadError as e:
            if _is_local_dir(adapter):
                raise
            # a relative path that does not exist looks like a Hub id: say both
            raise ModelLoadError(f"--adapter {adapter}: no such directory, and not loadable from the Hub: {e}") from e
        return model.eval(), load_tokenizer(tokenizer_source or adapter, trust_remote_code)

    saved_base = os.path.join(adapter, BASE_MODEL_SUBDIR) if _is_local_dir(adapter) else None
    base = model_name_or_path or (saved_base if _is_local_dir(saved_base) else adapter_config["base_model_name_or_path"])
    model = load_base_model(base, dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(tokenizer_source or base, trust_remote_code)
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, adapter)
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise ModelLoadError(
            f"--adapter {adapter} does not fit the base model {base!r} (made for another base? it was trained on "
            f"{adapter_config.get('base_model_name_or_path')!r}): {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}"
        ) from e
    if merge:
        model = model.merge_and_unload()  # plain Linear/Conv1D layers: no LoRA branch at decode time
    return model.eval(), tokenizer


def _has_tokenizer(path: str) -> bool:
    return _is_local_dir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    )
