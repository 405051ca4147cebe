"""Loading the tokenizer and base model, wrapping it with LoRA, and counting parameters."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from squad_lora.args import ALL_LINEAR, converted_for_original_base
from squad_lora.errors import ModelLoadError, first_line
from squad_lora.readers import parse_json

logger = logging.getLogger(__name__)

# peft's PeftModel.__init__ (get_peft_model, PeftModel.from_pretrained) reads transformers' deprecated
# is_gradient_checkpointing: a FutureWarning on every run that only peft can fix
warnings.filterwarnings(
    "ignore",
    message=r"`is_gradient_checkpointing` is deprecated",
    category=FutureWarning,
    module=r"transformers\.modeling_utils",
)

# Where peft has no default, or where we deliberately differ from it (the seed adapted c_attn).
DEFAULT_TARGET_MODULES = {"gpt2": ["c_attn"]}

BASE_MODEL_SUBDIR = "base_model"  # where a --from_scratch base is saved beside its adapter


def _hub_error(what: str, name: str, error: Exception) -> ModelLoadError:
    local_hint = (
        "If you are offline, pass a local directory instead: --model_name_or_path ./my-gpt2 "
        "(a directory written by save_pretrained, holding config.json, safetensors weights and the tokenizer)."
    )
    if "trust_remote_code" in str(error):
        local_hint = (
            f"{name} ships its own modelling code (auto_map in its config): pass --trust_remote_code to run it, "
            "and only for a source you trust."
        )
    elif os.path.isdir(name):
        local_hint = f"{name} is a directory but does not hold a loadable {what}."
    return ModelLoadError(f"could not load the {what} {name!r}: {first_line(error)}\n{local_hint}")


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


def load_base_model(model_args, name: str | None = None, from_scratch: bool = False, attn_implementation=None):
    """A causal LM from the Hub or a directory, as model_args ask (dtype, 4/8-bit, remote code).

    name overrides model_args.model_name_or_path; from_scratch gives random weights from its config;
    attn_implementation: the plan's (None: transformers' default). Weights load from safetensors only.
    """
    name = name or model_args.model_name_or_path
    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    kwargs = {"dtype": dtype, "trust_remote_code": model_args.trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        if from_scratch:
            config = AutoConfig.from_pretrained(name, trust_remote_code=model_args.trust_remote_code)
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        else:
            check_safetensors_dir(name, "model")
            model = AutoModelForCausalLM.from_pretrained(
                name, use_safetensors=True, quantization_config=model_args.quantization_config(), **kwargs
            )
    except (OSError, ValueError) as e:
        raise _hub_error("model", name, e) from e
    return with_fused_gelu(model)


def with_fused_gelu(model):
    """GPT-2's gelu_new written out in Python (seven elementwise passes forward, more backward) replaced by
    torch's fused tanh GELU: the same formula (outputs within 3e-7), its MLP activation 5x faster on a CPU.
    The config keeps its activation_function, so saved models are unchanged."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in model.modules():
        for child_name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, child_name, GELUTanh())
    return model


def use_tokenizer_padding(model, tokenizer) -> None:
    """Record the tokenizer's pad token (EOS, where load_tokenizer chose it) in the model's configs, as the
    Trainer would otherwise do itself, with a warning on every run."""
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def check_safetensors_dir(path: str, what: str) -> None:
    """For a local directory: every *.safetensors file must open, and pickled weights alone are refused.

    transformers and peft would fall back to torch.load for a directory with only *.bin weights, or fail
    deep inside safetensors on a truncated file with no path in the message.
    """
    if not os.path.isdir(path):
        return
    from safetensors import safe_open

    names = os.listdir(path)
    weights = [name for name in names if name.endswith(".safetensors")]
    pickled = [
        name
        for name in names
        if name.startswith(("adapter_model", "pytorch_model", "model")) and name.endswith((".bin", ".pt", ".pth"))
    ]
    if not weights and pickled:
        raise ModelLoadError(
            f"{path}: holds only pickled weights ({', '.join(sorted(pickled))}); squad-lora loads safetensors "
            "only (pickle can run code). Convert them once with safetensors.torch.save_file, or re-save the "
            "model with save_pretrained."
        )
    for name in weights:
        file = os.path.join(path, name)
        try:
            with safe_open(file, framework="pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises SafetensorError (a plain Exception) for a damaged header
            raise ModelLoadError(
                f"{file}: not a readable safetensors file ({first_line(e)}): "
                f"the {what} weights are damaged or incomplete; save or download them again"
            ) from e


def default_target_modules(model) -> list[str] | None:
    """c_attn for GPT-2 (the seed's choice); None lets peft pick its per-architecture default."""
    return DEFAULT_TARGET_MODULES.get(model.config.model_type)


def check_target_modules(model, target_modules: list[str], flag: str = "--lora_target_modules") -> None:
    """Raise when a requested module name matches no layer, listing the names the model has."""
    names = [n for n, _ in model.named_modules() if n]
    missing = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaf_names = sorted({_per_layer_name(n) for n in names} - {""})
        raise ModelLoadError(
            f"{flag} {', '.join(missing)}: no such module in {model.config.model_type}. "
            f"Module names it has (per layer): {', '.join(leaf_names[:60])}"
        )


def _per_layer_name(module_name: str) -> str:
    """'transformer.h.0.attn.c_attn' -> 'attn.c_attn' (the part after the layer index); 'lm_head' stays."""
    parts = module_name.split(".")
    numbered = [i for i, part in enumerate(parts) if part.isdigit()]
    if not numbered:
        return module_name if len(parts) == 1 else ""
    return ".".join(parts[numbered[-1] + 1 :])


class LoraTargets(NamedTuple):
    """What LoRA wraps: the names LoraConfig gets, and whether the layers they name store their weights transposed."""

    modules: list[str] | str | None  # None: peft's per-architecture default
    layers: list  # the layers the names match
    transposed: bool  # all of them GPT-2-style Conv1D (in, out): peft's fan_in_fan_out


def lora_targets(model, lora_args) -> LoraTargets:
    """The layers --lora_target_modules names in this model (its default where unset); raises naming the modules
    the model has where a name matches none."""
    from transformers.pytorch_utils import Conv1D

    modules = lora_args.lora_target_modules or default_target_modules(model)
    if modules == [ALL_LINEAR]:  # peft's rule: every Linear and Conv1D layer but the LM head
        head = model.get_output_embeddings()
        layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head]
        modules = ALL_LINEAR
    else:
        if modules:
            check_target_modules(model, modules)
        names = modules or []
        layers = [m for n, m in model.named_modules() if any(n == t or n.endswith("." + t) for t in names)]
    if lora_args.lora_modules_to_save:
        check_target_modules(model, lora_args.lora_modules_to_save, "--lora_modules_to_save")
    return LoraTargets(modules, layers, bool(layers) and all(isinstance(m, Conv1D) for m in layers))


def lora_layer_problems(config, lora_args) -> list[str]:
    """What LoRA cannot do with a model of this config (OLoRA on transposed Conv1D layers), found on an empty
    (meta-device) model before any weights load; a module name the model lacks raises ModelLoadError (lora_targets).
    Nothing is checked for a class transformers does not know (remote code): apply_lora checks the names there."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if not lora_args.lora_r or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        return []
    # the class itself, not from_config, which would partition the empty model under DeepSpeed ZeRO-3
    with torch.device("meta"):
        model = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)
    targets = lora_targets(model, lora_args)
    if lora_args.peft_init_lora_weights() == "olora" and targets.transposed:
        return [
            f"--init_lora_weights olora: peft's OLoRA does not handle the transposed Conv1D layers of "
            f"{config.model_type} (its shapes fail); use pissa, which starts from the same kind of decomposition "
            "and handles them"
        ]
    return []


# Long by design: the LoraConfig's arguments one per line, each after the check that makes it safe.
def apply_lora(model, lora_args, checkpointing_kwargs: dict | None = None):
    """Wrap the model with a peft LoRA adapter; lora_r 0 keeps every weight trainable instead.

    checkpointing_kwargs: the training arguments' gradient_checkpointing_kwargs where gradient checkpointing is
    on (QATrainingArguments makes it non-reentrant), None where it is off. A quantized (4/8-bit) base is prepared
    for training first: norms and head in fp32, and inputs that require grad so checkpointing reaches the LoRA
    weights.
    """
    if getattr(model, "is_quantized", False):
        if lora_args.lora_r == 0:
            raise ModelLoadError("a 4/8-bit base cannot be fully fine-tuned: use --lora_r > 0 (QLoRA)")
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing_kwargs is not None,
            gradient_checkpointing_kwargs=checkpointing_kwargs,
        )
    elif checkpointing_kwargs is not None and lora_args.lora_r:
        model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph at checkpoints
    if lora_args.lora_r == 0:
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, lora_args)
    init = lora_args.peft_init_lora_weights()
    config = LoraConfig(
        r=lora_args.lora_r,
        lora_alpha=lora_args.lora_alpha,
        lora_dropout=lora_args.lora_dropout,
        target_modules=targets.modules,
        bias=lora_args.lora_bias,
        use_dora=lora_args.use_dora,
        use_rslora=lora_args.use_rslora,
        init_lora_weights=init,
        modules_to_save=lora_args.lora_modules_to_save,
        fan_in_fan_out=targets.transposed,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if converted_for_original_base(init):
        keep_initial_adapter(model)
    return model


INITIAL_ADAPTER_ATTR = "squad_lora_initial_adapter"


def keep_initial_adapter(model) -> None:
    """Save a PiSSA/OLoRA adapter's initial weights (to a temporary directory), for save_for_original_base.

    As trained, such an adapter only fits the base its initialization changed; peft converts it into one
    that fits the original base from the initial adapter, saved with init_lora_weights=True so that
    loading it does not decompose the base once more.
    """
    import atexit
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="squad-lora-initial-adapter-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = os.path.join(directory, "initial")  # peft loads it as the adapter named after its folder
    config = model.peft_config["default"]
    init, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(path)
    finally:
        config.init_lora_weights = init
    setattr(model, INITIAL_ADAPTER_ATTR, path)


def save_for_original_base(model, output_dir: str) -> bool:
    """Re-save a PiSSA/OLoRA adapter in output_dir converted to fit the original base (rank 2r: the trained
    product less the initial one); False for any other model, which fits its base as saved."""
    path = getattr(model, INITIAL_ADAPTER_ATTR, None)
    if path is None:
        return False
    model.save_pretrained(output_dir, path_initial_model_for_weight_conversion=path)
    return True


def lora_summary(lora_args, model) -> dict:
    """The run summary's "lora" entry: the LoRA flags and the layers actually adapted."""
    return {**vars(lora_args), "target_modules": effective_target_modules(model)}


def effective_target_modules(model) -> list[str] | None:
    """The layers the adapter adapts, per transformer layer (attn.c_attn, mlp.c_fc, ...): what peft resolved
    all-linear or its per-architecture default to. None without an adapter."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    targets = config.target_modules
    if isinstance(targets, str):  # a regular expression, kept as given
        return [targets]
    return sorted({_per_layer_name(name) or name for name in targets})


def count_parameters(model) -> dict:
    """Trainable and total parameter counts (tied weights counted once), as peft reports them."""
    if hasattr(model, "get_nb_trainable_parameters"):  # peft, which counts packed 4-bit weights right
        trainable, total = model.get_nb_trainable_parameters()
    else:  # full fine-tuning: transformers' own count
        trainable, total = model.num_parameters(only_trainable=True), model.num_parameters()
    return {"trainable_params": trainable, "all_params": total, "trainable_percent": 100 * trainable / total}


def format_parameter_line(counts: dict) -> str:
    """The seed's line, e.g. `trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364`."""
    return (
        f"trainable params: {counts['trainable_params']:,} || all params: {counts['all_params']:,} "
        f"|| trainable%: {counts['trainable_percent']:.4f}"
    )


def _is_local_dir(path: str | None) -> bool:
    return bool(path) and os.path.isdir(path)


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def read_adapter_config(adapter: str) -> dict | None:
    """A local adapter directory's adapter_config.json (None for a full fine-tune), its weights checked."""
    config_path = os.path.join(adapter, ADAPTER_CONFIG)
    if not os.path.isfile(config_path):
        if not os.path.isfile(os.path.join(adapter, "config.json")):
            raise ModelLoadError(
                f"--adapter {adapter}: holds neither {ADAPTER_CONFIG} (a LoRA run) nor config.json (a full fine-tune)"
            )
        return None
    try:
        with open(config_path, encoding="utf-8") as f:
            config = parse_json(f.read(), config_path, ModelLoadError)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{config_path}: not valid JSON ({e}): the adapter's config is damaged") from e
    if not isinstance(config, dict) or not isinstance(config.get("base_model_name_or_path", ""), (str, type(None))):
        raise ModelLoadError(f"{config_path}: not a peft adapter config (expected an object with peft_type, r, ...)")
    check_safetensors_dir(adapter, "adapter")
    if not os.path.isfile(os.path.join(adapter, ADAPTER_WEIGHTS)):
        raise ModelLoadError(
            f"--adapter {adapter}: has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}: the run did not finish saving, "
            "or the weights were not copied"
        )
    return config


@dataclass(frozen=True)
class InferenceSource:
    """What to load for generation: the weights (a base, or a full fine-tune), the adapter on them, the tokenizer."""

    weights: str
    tokenizer: str
    adapter: str | None = None  # a LoRA adapter to attach to the weights
    adapter_config: dict | None = None
    hub_full_model: bool = False  # a Hub id that is not a peft adapter: tried as a full model


def inference_source(adapter: str | None, model_args) -> InferenceSource:
    """Where generation's model comes from, without loading any weights: a LoRA adapter on its base, a full
    fine-tune, or a bare base. The base of an adapter is read from its adapter_config.json (or the base_model/ a
    --from_scratch run saved beside it); --model_name_or_path overrides it."""
    tokenizer_name = model_args.tokenizer_name
    if adapter is None:
        if not model_args.model_name_or_path:
            raise ModelLoadError("pass --adapter (a trained output dir or Hub id) or --model_name_or_path")
        return InferenceSource(model_args.model_name_or_path, tokenizer_name or model_args.model_name_or_path)
    if not _is_local_dir(adapter) and (adapter.startswith((".", "/", "~")) or adapter.count("/") > 1):  # not a Hub id
        raise ModelLoadError(f"--adapter {adapter}: no such directory")
    adapter_config = None
    if _is_local_dir(adapter):
        adapter_config = read_adapter_config(adapter)
    else:
        try:
            from peft import PeftConfig

            adapter_config = PeftConfig.from_pretrained(adapter).to_dict()
        except Exception as e:  # not an adapter repo (or the Hub is unreachable): try it as a full model
            logger.info("%s is not a peft adapter (%s); loading it as a full model", adapter, type(e).__name__)
    tokenizer_name = tokenizer_name or (adapter if _has_tokenizer(adapter) else None)
    if adapter_config is None:  # a full fine-tuning output (--lora_r 0)
        return InferenceSource(adapter, tokenizer_name or adapter, hub_full_model=not _is_local_dir(adapter))
    saved_base = os.path.join(adapter, BASE_MODEL_SUBDIR) if _is_local_dir(adapter) else None
    base = model_args.model_name_or_path or (
        saved_base if _is_local_dir(saved_base) else adapter_config.get("base_model_name_or_path")
    )
    if not base:
        raise ModelLoadError(f"--adapter {adapter}: records no base model: pass --model_name_or_path")
    return InferenceSource(base, tokenizer_name or base, adapter, adapter_config)


def load_tokenizer_and_config(source: InferenceSource, trust_remote_code: bool = False) -> tuple:
    """(tokenizer, config) of an InferenceSource: what the plan reads, before any weights load."""
    with _said_of_the_adapter(source):
        return load_tokenizer(source.tokenizer, trust_remote_code), load_model_config(source.weights, trust_remote_code)


@contextlib.contextmanager
def _said_of_the_adapter(source: InferenceSource):
    """A load error of an --adapter that is neither a directory nor an adapter on the Hub says both."""
    try:
        yield
    except ModelLoadError as e:
        if not source.hub_full_model:
            raise
        # a relative path that does not exist looks like a Hub id
        raise ModelLoadError(
            f"--adapter {source.weights}: no such directory, and not loadable from the Hub: {e}"
        ) from e


def load_model_config(name: str, trust_remote_code: bool = False):
    """A model's config alone (no weights): what the plan reads before anything heavy loads."""
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error("model", name, e) from e


def load_inference_model(source: InferenceSource, model_args, merge: bool = False, attn_implementation=None):
    """The model of an InferenceSource in eval mode; merge: the LoRA weights merged into the base."""
    with _said_of_the_adapter(source):
        if merge and model_args.quantization_config() is not None:
            model = dequantized_base(model_args, source.weights, attn_implementation)
        else:
            model = load_base_model(model_args, name=source.weights, attn_implementation=attn_implementation)
    if source.adapter is not None:
        model = attach_adapter(model, source.adapter, source.weights, source.adapter_config)
        if merge:
            model = model.merge_and_unload()  # plain Linear/Conv1D layers: no LoRA branch at decode time
    return model.eval()


def dequantized_base(model_args, name: str, attn_implementation=None):
    """The float base (in model_args.dtype) whose layers bitsandbytes quantizes hold their quantized weights
    dequantized: what a QLoRA or 8-bit adapter was trained against, so that it merges into those and keeps its
    answers. transformers' dequantize() turns GPT-2's Conv1D layers into nn.Linear, so the weights are copied
    into the float model's own layers instead."""
    import bitsandbytes as bnb

    quantized = load_base_model(model_args, name=name)
    quantized_layers = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    names = [n for n, module in quantized.named_modules() if isinstance(module, quantized_layers)]
    quantized = quantized.dequantize()
    float_args = replace(model_args, load_in_4bit=False, load_in_8bit=False)
    model = load_base_model(float_args, name=name, attn_implementation=attn_implementation)
    with torch.no_grad():
        for layer_name in names:
            layer, weight = model.get_submodule(layer_name), quantized.get_submodule(layer_name).weight
            layer.weight.copy_(weight.T if type(layer).__name__ == "Conv1D" else weight)  # Conv1D stores (in, out)
    return model


def load_for_inference(adapter: str | None, model_args, merge: bool = False):
    """(model in eval mode, tokenizer) of inference_source(adapter, model_args)."""
    source = inference_source(adapter, model_args)
    with _said_of_the_adapter(source):
        tokenizer = load_tokenizer(source.tokenizer, model_args.trust_remote_code)
    return load_inference_model(source, model_args, merge, model_args.attn_implementation), tokenizer


def attach_adapter(model, adapter: str, base: str, adapter_config: dict):
    """PeftModel.from_pretrained, with an adapter made for another base reported as such."""
    from peft import PeftModel

    made_for = adapter_config.get("base_model_name_or_path")
    try:
        return PeftModel.from_pretrained(model, adapter)
    except (RuntimeError, ValueError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        mismatch = "size mismatch" in str(e) or "not found in the base model" in str(e) or "Target modules" in str(e)
        if not mismatch:
            raise
        detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(e).__name__)
        raise ModelLoadError(
            f"--adapter {adapter} does not fit the base model {base!r} (it was trained on {made_for!r}; pass that "
            f"base with --model_name_or_path): {detail}"
        ) from e


def _has_tokenizer(path: str) -> bool:
    return _is_local_dir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    )
