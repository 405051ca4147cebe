"""Argument dataclasses shared by the scripts, and the config-file + command-line parse.

A YAML or JSON config file may come first on the command line; flags after it override its values:

    python run_qa_lora.py configs/exp_r8_lr2e-4_attn.yaml --num_train_epochs 1
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml
from transformers import HfArgumentParser, TrainingArguments

from errors import ConfigError

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default="gpt2",
        metadata={"help": "Base model: a Hugging Face Hub id (gpt2, gpt2-medium, ...) or a local directory."},
    )
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer id or directory, when it differs from the model's."}
    )
    from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Build the base model with random weights from model_name_or_path's config instead of "
            "loading its weights (configs/smoke.yaml: an offline install check whose answers are noise). "
            "The random base is saved next to the adapter so generate.py can reload it."
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the base weights are loaded in. Mixed-precision training is --bf16/--fp16.",
            "choices": ["float32", "bfloat16", "float16", "auto"],
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modelling code shipped with a Hub model. Off: only enable it for repos you trust."},
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the frozen base in 4 bits (bitsandbytes) and train LoRA on top."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the frozen base in 8 bits (bitsandbytes)."})
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit data type: nf4 (QLoRA's) or fp4.", "choices": ["nf4", "fp4"]}
    )
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata={"help": "Quantize the 4-bit scales too (saves ~0.4 bits per weight)."}
    )
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16",
        metadata={"help": "dtype the 4-bit layers compute in.", "choices": ["bfloat16", "float16", "float32"]},
    )

    def __post_init__(self):
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("--load_in_4bit and --load_in_8bit exclude each other: pick one")
        if (self.load_in_4bit or self.load_in_8bit) and self.from_scratch:
            raise ConfigError("--from_scratch builds a float model: it cannot be combined with --load_in_4bit/8bit")

    def quantization_config(self):
        """The BitsAndBytesConfig these flags ask for, or None."""
        if not (self.load_in_4bit or self.load_in_8bit):
            return None
        import torch
        from transformers import BitsAndBytesConfig

        if self.load_in_8bit:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=self.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.bnb_4bit_compute_dtype),
        )


@dataclass
class DataArguments:
    dataset_name: Optional[str] = field(
        default="squad",
        metadata={"help": "Hub dataset with SQuAD's columns (squad, squad_v2, ...). Ignored for a split given as a file."},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_file: Optional[str] = field(
        default=None,
        metadata={"help": "Training data: official SQuAD JSON (v1.1/v2.0), JSON Lines or CSV in the Hub layout."},
    )
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "Validation data, in any layout train_file accepts."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N training examples (quick runs, debugging)."}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N validation examples."}
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "Longest prompt + answer in tokens; default the model's maximum (1024 for GPT-2). Longer "
            "training examples have their context cut around the answer."
        },
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using the datasets cache."})
    strict: bool = field(
        default=False,
        metadata={"help": "Fail on an answer_start that does not point at its answer, instead of skipping it."},
    )

    def __post_init__(self):
        for name in ("max_train_samples", "max_eval_samples", "max_seq_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be a positive integer, got {value}")


@dataclass
class LoraArguments:
    lora_r: int = field(
        default=8, metadata={"help": "LoRA rank. 0 means full fine-tuning of every weight (the baseline)."}
    )
    lora_alpha: float = field(default=16, metadata={"help": "LoRA scaling numerator: updates are scaled by alpha / r."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch input, in [0, 1)."})
    lora_target_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Module names (suffixes) to adapt, e.g. c_attn mlp.c_proj. Default: c_attn for GPT-2, "
            "peft's per-architecture default otherwise."
        },
    )
    lora_bias: str = field(
        default="none",
        metadata={"help": "Which biases to train with LoRA.", "choices": ["none", "all", "lora_only"]},
    )

    def __post_init__(self):
        problems = []
        if self.lora_r < 0:
            problems.append(f"--lora_r must be >= 0 (0 = full fine-tuning), got {self.lora_r}")
        if self.lora_r > 0 and self.lora_alpha <= 0:
            problems.append(f"--lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if problems:
            raise ConfigError("; ".join(problems))
        if self.lora_target_modules:
            # accept both "c_attn mlp.c_proj" and "c_attn,mlp.c_proj"
            self.lora_target_modules = [m for item in self.lora_target_modules for m in item.split(",") if m]


# ---------------------------------------------------------------------------
# Config file + command line
# ---------------------------------------------------------------------------


def load_config_file(path: str) -> dict:
    """Read a YAML or JSON config into a dict of flag values."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}") from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of flag names to values")
    return values


def _check_value(action: argparse.Action, value: Any) -> str | None:
    """Why a config-file value does not fit the flag's type, or None when it does."""
    if value is None:
        return None
    if action.nargs in ("+", "*"):
        if isinstance(value, str):
            return None
        if not isinstance(value, list):
            return f"must be a list, got {value!r}"
        items = value
    else:
        items = [value]
    for item in items:
        if action.choices is not None and item not in action.choices and str(item) not in action.choices:
            return f"must be one of {', '.join(map(str, action.choices))}, got {item!r}"
        kind = action.type
        if getattr(kind, "__name__", "") == "string_to_bool" and not isinstance(item, bool):
            return f"must be true or false, got {item!r}"
        if kind is int and (isinstance(item, bool) or not isinstance(item, int)):
            return f"must be an integer, got {item!r}"
        if kind is float and (isinstance(item, bool) or not isinstance(item, (int, float))):
            return f"must be a number, got {item!r}"
        if kind is str and not (isinstance(item, str) or isinstance(item, list) and all(isinstance(x, str) for x in item)):
            return f"must be a string, got {item!r}"
    return None


def parse_args(dataclass_types: tuple, argv: list[str] | None = None) -> tuple[tuple, str | None]:
    """Parse an optional config file (first argument) and flags into the given dataclasses.

    Returns (dataclass instances, config file path or None). Unknown config keys, values of the
    wrong type and invalid combinations raise ConfigError naming the file and key.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    config_file = None
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        config_file = argv.pop(0)
        values = load_config_file(config_file)
        actions = {a.dest: a for a in parser._actions if a.dest != "help"}
        unknown = sorted(set(values) - set(actions))
        if unknown:
            hints = [f"{k} (did you mean {' or '.join(m)}?)" if (m := difflib.get_close_matches(k, actions, 3, cutoff=0.75)) else k for k in unknown]
            raise ConfigError(
                f"{config_file}: unknown key(s): {', '.join(hints)}. Valid keys: {', '.join(sorted(actions))}"
            )
        for key, value in values.items():
            problem = _check_value(actions[key], value)
            if problem:
                raise ConfigError(f"{config_file}: {key} {problem}")
            if isinstance(value, str) and actions[key].nargs in ("+", "*"):
                values[key] = [value]  # argparse passes a string default through as-is, not as a list
        parser.set_defaults(**values)
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"{config_file + ': ' if config_file else ''}{e}") from e
    return tuple(parsed), config_file


def _plain(value):
    """A YAML-safe form of an argument value (enums by value, config objects as dicts)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value
    return value


def resolved_config(*arg_objects) -> dict:
    """Every setting of our dataclasses, plus the TrainingArguments that differ from their defaults.

    The result is a valid config file for the same script. Tokens are never included.
    """
    resolved = {}
    for obj in arg_objects:
        # TrainingArguments has ~150 fields: keep those that differ from a default instance's
        defaults = type(obj)() if isinstance(obj, TrainingArguments) else None
        for f in dataclasses.fields(obj):
            if not f.init or f.name.endswith("_token"):
                continue
            value = _plain(getattr(obj, f.name))
            if defaults is not None and value == _plain(getattr(defaults, f.name)):
                continue
            resolved[f.name] = value
    return json.loads(json.dumps(resolved, default=str))
