"""The argument dataclasses the scripts share; each flag is declared once, here (the Trainer's are in training_args.py).

ModelArguments and DecodingArguments serve generate.py and the trainer's EM/F1 evaluation alike;
EvalDataArguments serves generate.py and evaluate_squad.py, and DataArguments extends it for training.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

from squad_lora.columns import COLUMN_FLAGS
from squad_lora.errors import ConfigError, raise_problems
from squad_lora.features import ANSWER_CHOICES
from squad_lora.prompt import PROMPT_FORMATS

DEFAULT_MODEL = "gpt2"
SAMPLING_STRATEGIES = ("top_k", "top_p", "temperature")
STRATEGIES = ("greedy", "beam") + SAMPLING_STRATEGIES


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "Base model: a Hub id (gpt2, HuggingFaceTB/SmolLM2-135M, ...) or a local directory. Default: "
            f"{DEFAULT_MODEL} for training; for generate.py the base recorded with the adapter."
        },
    )
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer id or directory, when it differs from the model's."}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the base weights are loaded in. Mixed-precision training is --bf16/--fp16.",
            "choices": ["float32", "bfloat16", "float16", "auto"],
        },
    )
    attn_implementation: Optional[str] = field(
        default=None,
        metadata={
            "help": "Attention kernel: sdpa, eager, flash_attention_2, ...; default: transformers' choice (sdpa "
            "where the model supports it)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modelling code shipped with a Hub model. Off: only enable it for repos you trust."},
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the frozen base in 4 bits (bitsandbytes)."}
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
class TrainModelArguments(ModelArguments):
    from_scratch: bool = field(
        default=False,
        metadata={
            "help": "Build the base model with random weights from model_name_or_path's config instead of "
            "loading its weights (configs/smoke.yaml: an offline install check whose answers are noise). "
            "The random base is saved next to the adapter so generate.py can reload it."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.model_name_or_path = self.model_name_or_path or DEFAULT_MODEL
        if (self.load_in_4bit or self.load_in_8bit) and self.from_scratch:
            raise ConfigError("--from_scratch builds a float model: it cannot be combined with --load_in_4bit/8bit")


@dataclass
class HubArguments:
    base_model_id: Optional[str] = field(
        default=None,
        metadata={
            "help": "The base model's Hub id, recorded in the adapter and model card when --model_name_or_path is a "
            "local directory whose id cannot be read from it (e.g. HuggingFaceTB/SmolLM2-135M-Instruct)."
        },
    )
    license: Optional[str] = field(
        default="apache-2.0",
        metadata={
            "help": "License in the model card: this project's (apache-2.0) by default; give the base model's where "
            "its terms ask for it (mit for GPT-2)."
        },
    )


LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}  # logging's numbers


@dataclass
class LoggingArguments:
    """How much generate.py and evaluate_squad.py say: the two flags run_qa_lora.py has from TrainingArguments."""

    log_level: str = field(
        default="passive",
        metadata={
            "help": "Level of the log lines, ours and the libraries': debug, info, warning, error or critical; "
            "passive: ours at info, the libraries' at warning. Results and answers are printed whatever the level.",
            "choices": ["passive", *LOG_LEVELS],
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars, ours or the libraries'."})

    def levels(self, is_main_process: bool = True) -> tuple[int, int]:
        """(our level, the libraries' level); processes other than the main one say warnings at least."""
        ours, libraries = (20, 30) if self.log_level == "passive" else (LOG_LEVELS[self.log_level],) * 2
        if not is_main_process:
            ours, libraries = max(ours, 30), max(libraries, 30)
        return ours, libraries


def check_positive(obj, names: tuple[str, ...], problems: list[str]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 1:
            problems.append(f"--{name} must be a positive integer, got {value}")


@dataclass
class ColumnArguments:
    """The names a JSON Lines, CSV or Hub dataset gives SQuAD's columns, renamed to SQuAD's as the data loads (the
    official SQuAD JSON names its own fields: these do not apply to it)."""

    question_column: str = field(
        default="question", metadata={"help": "The data's question column (JSON Lines, CSV or Hub; not official JSON)."}
    )
    context_column: str = field(default="context", metadata={"help": "The data's context column (as above)."})
    answer_column: str = field(
        default="answers",
        metadata={"help": "The data's answers column, each {text: [...], answer_start: [...]} (as above)."},
    )
    id_column: str = field(default="id", metadata={"help": "The data's question id column (as above)."})

    def __post_init__(self):
        raise_problems(column_problems(self))

    def column_names(self) -> dict[str, str]:
        """{standard column: the data's name for it}, as squad_lora.data's loaders take it."""
        return {column: getattr(self, flag) for column, flag in COLUMN_FLAGS.items()}


def column_problems(columns: ColumnArguments) -> list[str]:
    """An empty column name, or one the data cannot give for two columns."""
    problems = [f"--{flag} must name a column" for flag in COLUMN_FLAGS.values() if not getattr(columns, flag).strip()]
    flags_of: dict[str, list[str]] = {}
    for flag in COLUMN_FLAGS.values():
        flags_of.setdefault(getattr(columns, flag), []).append(f"--{flag}")
    problems += [
        f"{' and '.join(flags)} name the same column {name!r}" for name, flags in flags_of.items() if len(flags) > 1
    ]
    return problems


@dataclass
class EvalDataArguments(ColumnArguments):
    dataset_name: Optional[str] = field(
        default="squad",
        metadata={"help": "Hub dataset with SQuAD's columns (squad, squad_v2, ...), used where no file is given."},
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name."})
    validation_file: Optional[str] = field(
        default=None,
        metadata={"help": "Validation data: official SQuAD JSON (v1.1/v2.0), JSON Lines or CSV in the Hub layout."},
    )
    eval_split: str = field(default="validation", metadata={"help": "The Hub dataset's split to evaluate on."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N validation questions."}
    )
    strict: bool = field(
        default=False,
        metadata={"help": "Fail on an answer_start that does not point at its answer, instead of skipping it."},
    )

    def __post_init__(self):
        problems = column_problems(self)
        check_positive(self, ("max_eval_samples",), problems)
        raise_problems(problems)


@dataclass
class DataArguments(EvalDataArguments):
    train_file: Optional[str] = field(
        default=None, metadata={"help": "Training data, in any layout validation_file accepts."}
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Use only the first N training questions (quick runs, debugging)."}
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
    train_answer: str = field(
        default="first",
        metadata={
            "help": "Which gold answer a training question with several is trained on: the file's first, the most "
            "common text among them, or the shortest.",
            "choices": list(ANSWER_CHOICES),
        },
    )
    train_answerable_only: bool = field(
        default=False, metadata={"help": "Drop SQuAD v2's unanswerable questions from training (not from scoring)."}
    )
    validation_split_percentage: Optional[float] = field(
        default=None,
        metadata={
            "help": "Hold out about this percentage (0 < N < 100) of the training questions as validation data, whole "
            "contexts at a time, chosen by --seed; instead of --validation_file "
            "(docs/data.md#a-validation-split-from-the-training-file)."
        },
    )

    def __post_init__(self):
        problems = column_problems(self)
        check_positive(
            self, ("max_eval_samples", "max_train_samples", "max_seq_length", "preprocessing_num_workers"), problems
        )
        percentage = self.validation_split_percentage
        if percentage is not None and not 0 < percentage < 100:
            problems.append(
                f"--validation_split_percentage must be between 0 and 100 (both excluded), got {percentage}"
            )
        if percentage is not None and self.validation_file:
            problems.append(
                "--validation_split_percentage holds validation data out of the training data: give it or "
                "--validation_file, not both"
            )
        raise_problems(problems)


@dataclass
class LoraArguments:
    lora_r: int = field(
        default=8, metadata={"help": "LoRA rank. 0 means full fine-tuning of every weight (the baseline)."}
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scaling numerator: updates are scaled by alpha / r."}
    )
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
    use_dora: bool = field(
        default=False,
        metadata={
            "help": "DoRA: learn each adapted weight's magnitude apart from its direction (one more vector per "
            "adapted layer; slower steps)."
        },
    )
    use_rslora: bool = field(
        default=False,
        metadata={
            "help": "rsLoRA: scale updates by alpha / sqrt(r) instead of alpha / r, so that large ranks still learn."
        },
    )
    init_lora_weights: str = field(
        default="true",
        metadata={
            "help": "How the LoRA weights start: true (B = 0: the adapter starts as a no-op), false (random, for "
            "debugging), gaussian, pissa or pissa_niter_N (the base's principal singular vectors; N: fast SVD "
            "iterations), olora (QR of the base weight; not on GPT-2's Conv1D layers), orthogonal, or mica (B frozen "
            "to the smallest singular vectors, only A trained). pissa and olora move part of the base into the "
            "adapter; the saved adapter is converted back so that it applies to the original base."
        },
    )
    lora_modules_to_save: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Modules trained in full and saved with the adapter besides the LoRA layers, e.g. lm_head "
            "(comma or space separated)."
        },
    )

    def __post_init__(self):
        problems = []
        if self.lora_r < 0:
            problems.append(f"--lora_r must be >= 0 (0 = full fine-tuning), got {self.lora_r}")
        if self.lora_r > 0 and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            problems.append(f"--lora_alpha must be a finite number > 0, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        self.init_lora_weights = str(self.init_lora_weights).lower()  # a config's `true` arrives as a bool
        self.lora_target_modules = split_names(self.lora_target_modules)
        self.lora_modules_to_save = split_names(self.lora_modules_to_save)
        problems += lora_init_problems(self.init_lora_weights, self.use_dora, bool(self.lora_modules_to_save))
        if self.lora_target_modules and ALL_LINEAR in self.lora_target_modules and len(self.lora_target_modules) > 1:
            problems.append(f"--lora_target_modules {ALL_LINEAR} stands alone: it already adapts every linear layer")
        if self.lora_r == 0:
            options = [name for name in LORA_ONLY_FLAGS if getattr(self, name) != LORA_ONLY_FLAGS[name]]
            if options:
                problems.append(
                    f"{', '.join('--' + n for n in options)}: LoRA options, but --lora_r 0 trains every weight"
                )
        raise_problems(problems)

    def peft_init_lora_weights(self):
        """init_lora_weights as LoraConfig takes it: a bool or the method's name."""
        return {"true": True, "false": False}.get(self.init_lora_weights, self.init_lora_weights)


ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the output layer
# the values LoraConfig takes that need nothing else; those that need more than a flag can say are refused below
LORA_INITS = ("true", "false", "gaussian", "pissa", "olora", "orthogonal", "mica")
UNSUPPORTED_LORA_INITS = {
    "eva": "EVA initializes from activations on training batches (peft's initialize_lora_eva_weights), which this "
    "script does not run",
    "corda": "CorDA needs a preprocessing pass over data with a corda_config, which this script does not take",
    "loftq": "LoftQ needs a loftq_config and quantizes the base itself; for a 4-bit base use --load_in_4bit",
}
# PiSSA and OLoRA subtract the adapter's initial product from the base weights they start from
MUTATING_INITS = ("pissa", "olora")


def converted_for_original_base(init) -> bool:
    """Whether an adapter of this init_lora_weights is saved converted to fit its original base
    (modeling.save_for_original_base): PiSSA's and OLoRA's, whose training base is not the original."""
    return str(init).startswith(MUTATING_INITS)


# LoraArguments flags that only mean something with a LoRA adapter, with their defaults
LORA_ONLY_FLAGS = {"use_dora": False, "use_rslora": False, "init_lora_weights": "true", "lora_modules_to_save": None}


def split_names(items: list[str] | None) -> list[str] | None:
    """Module names given as `a b` or `a,b` (or both); None when none."""
    names = [name for item in items or [] for name in item.split(",") if name]
    return names or None


def lora_init_problems(init: str, use_dora: bool, modules_to_save: bool) -> list[str]:
    if init in UNSUPPORTED_LORA_INITS:
        return [f"--init_lora_weights {init}: not supported: {UNSUPPORTED_LORA_INITS[init]}"]
    if init not in LORA_INITS and not re.fullmatch(r"pissa_niter_\d+", init):
        return [f"--init_lora_weights {init}: choose from {', '.join(LORA_INITS)} or pissa_niter_N (N: an integer)"]
    if init == "mica" and use_dora:
        return ["--init_lora_weights mica cannot be combined with --use_dora (peft has no such variant)"]
    # PiSSA/OLoRA adapters are saved converted to fit the original base (modeling.save_for_original_base); peft's
    # conversion subtracts the initial product, which DoRA's normalized magnitudes do not allow (the converted adapter
    # gave other logits), and drops the modules saved in full (the converted adapter did not load)
    if converted_for_original_base(init) and (use_dora or modules_to_save):
        flag = "--use_dora" if use_dora else "--lora_modules_to_save"
        return [
            f"--init_lora_weights {init} cannot be combined with {flag}: peft cannot convert such an adapter back to "
            "the original base it must be saved for"
        ]
    return []


def describe_lora(lora: dict) -> str:
    """One line for the log and the model card, in peft's LoraConfig names, from a run summary's "lora" entry
    (LoraArguments' values plus the effective target_modules); options at their defaults are left out."""
    if not lora["lora_r"]:
        return "full fine-tuning (every weight trained)"
    targets = lora.get("target_modules") or lora.get("lora_target_modules")
    parts = [f"LoRA r={lora['lora_r']}", f"alpha={lora['lora_alpha']:g}", f"dropout={lora['lora_dropout']}"]
    parts.append(f"target_modules={targets}" if targets else "target_modules=peft's default")
    if lora.get("lora_target_modules") == [ALL_LINEAR]:
        parts[-1] += f" ({ALL_LINEAR})"
    extras = {
        "bias": lora.get("lora_bias", "none") != "none" and lora.get("lora_bias"),
        "use_dora": lora.get("use_dora"),
        "use_rslora": lora.get("use_rslora"),
        "init_lora_weights": str(lora.get("init_lora_weights", "true")) != "true" and lora.get("init_lora_weights"),
        "modules_to_save": lora.get("lora_modules_to_save"),
    }
    parts += [f"{key}={value}" for key, value in extras.items() if value]
    return ", ".join(parts)


@dataclass
class DecodingArguments:
    strategy: str = field(default="greedy", metadata={"help": "Decoding strategy.", "choices": list(STRATEGIES)})
    strategies: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Several strategies in one run of generate.py (comma or space separated), loading the model once."
        },
    )
    top_k: int = field(default=50, metadata={"help": "top_k: sample among the k most likely tokens."})
    top_p: float = field(
        default=0.9, metadata={"help": "top_p: sample from the smallest set with this probability mass."}
    )
    temperature: float = field(default=0.7, metadata={"help": "temperature: sample from softmax(logits / T)."})
    num_beams: int = field(default=4, metadata={"help": "beam: number of beams."})
    num_samples: int = field(default=1, metadata={"help": "Answers per question for the sampling strategies."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest answer in tokens (SQuAD answers average ~4)."})
    max_context_tokens: Optional[int] = field(
        default=None,
        metadata={
            "help": "Window length in context tokens: a longer context is answered in overlapping windows, keeping "
            "the most confident answer; default: what the model's positions leave (docs/data.md#long-contexts)."
        },
    )
    doc_stride: Optional[int] = field(
        default=None,
        metadata={
            "help": "Tokens each window shares with the one before (run_qa.py's --doc_stride, the tokenizer's stride); "
            "default 128, or a quarter of the window where that is less."
        },
    )
    generation_batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Questions per generate() call; default 16, or 64 with shared contexts (docs/shared-context.md)."
        },
    )
    constrain_to_context: bool = field(
        default=False,
        metadata={
            "help": "Only allow answers that are spans of the context, with any strategy "
            "(docs/quality.md#what-each-setting-is-worth-answer-quality)."
        },
    )
    no_answer_threshold: Optional[float] = field(
        default=None,
        metadata={
            "help": "SQuAD v2: answer 'unanswerable' only where its first token has at least this probability at "
            "the first step; default off (docs/quality.md#squad-v2)."
        },
    )
    min_answer_confidence: Optional[float] = field(
        default=None,
        metadata={
            "help": "SQuAD v2: abstain (answer '') where the answer's confidence (written with every prediction) is "
            "below this; default off (docs/quality.md#abstaining-by-confidence)."
        },
    )

    def __post_init__(self):
        names = [s for item in (self.strategies or [self.strategy]) for s in item.split(",") if s]
        problems = [
            f"unknown strategy {s!r} (choose from {', '.join(STRATEGIES)})" for s in names if s not in STRATEGIES
        ]
        if not names:
            problems.append("--strategies names no strategy")
        check_positive(
            self,
            ("num_samples", "generation_batch_size", "max_new_tokens", "num_beams", "top_k", "max_context_tokens"),
            problems,
        )
        if self.doc_stride is not None and self.doc_stride < 0:
            problems.append(f"--doc_stride must be >= 0, got {self.doc_stride}")
        if not 0 < self.top_p <= 1:
            problems.append(f"--top_p must be in (0, 1], got {self.top_p}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"--temperature must be a finite number > 0, got {self.temperature}")
        if self.no_answer_threshold is not None and not 0 < self.no_answer_threshold <= 1:
            problems.append(f"--no_answer_threshold must be in (0, 1], got {self.no_answer_threshold}")
        if self.min_answer_confidence is not None and not 0 <= self.min_answer_confidence <= 1:
            problems.append(f"--min_answer_confidence must be in [0, 1], got {self.min_answer_confidence}")
        raise_problems(problems)
        self.strategies = list(dict.fromkeys(names))


@dataclass
class AdapterArguments:
    """What generate.py and demo.py answer with: a trained run (LoRA adapter, full fine-tune or merged model)."""

    adapter: Optional[str] = field(
        default=None,
        metadata={
            "help": "A run_qa_lora.py output dir or Hub id (LoRA adapter, full fine-tune or merged model). Omit for "
            "a zero-shot --model_name_or_path."
        },
    )
    merge: bool = field(default=False, metadata={"help": "Merge the LoRA weights into the base for faster decoding."})


@dataclass
class PromptArguments:
    """How questions are put to the model: training and generation must agree, so a run records both."""

    prompt_format: str = field(
        default="plain",
        metadata={
            "help": "How a question is put to the model, in training and generation alike: plain ('Context: ...\\n"
            "Question: ...\\nAnswer:') or chat (the same words in the tokenizer's chat template). A run records it "
            "(docs/usage.md#prompt-formats).",
            "choices": list(PROMPT_FORMATS),
        },
    )
    share_context: str = field(
        default="auto",
        metadata={
            "help": "Read each context once for all of its questions, in training and generation, with the same "
            "losses and greedy answers: auto (on where tested exact: GPT-2 and Llama with sdpa attention; in "
            "generation a context's lone question goes unshared), true (every question) or false "
            "(docs/shared-context.md).",
            "choices": ["auto", "true", "false"],
        },
    )
