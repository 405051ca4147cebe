"""The training arguments: QATrainingArguments (the Trainer's, with this project's defaults and flags), and what
run_qa_lora.py does with each transformers.TrainingArguments field.

Every field is on exactly one of the lists below, and tests/test_training_args.py fails when a
transformers release adds a field that none names: a new flag is classified before it can be
silently ignored. Our own additions (QATrainingArguments' packing, eval_generation_samples, ...) are
not listed: they exist only because this project implements them.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Union

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from squad_lora.args import (
    DataArguments,
    DecodingArguments,
    HubArguments,
    LoraArguments,
    PromptArguments,
    TrainModelArguments,
    check_positive,
)
from squad_lora.errors import raise_problems
from squad_lora.trackers import tracker_problems

# The Trainer (or accelerate, or the launcher) implements these, and no code of ours goes around it.
TRAINER_HONOURS = frozenset(
    {
        # optimization
        "per_device_train_batch_size",
        "num_train_epochs",
        "max_steps",
        "learning_rate",
        "lr_scheduler_type",
        "lr_scheduler_kwargs",
        "warmup_steps",
        "optim",
        "optim_args",
        "optim_target_modules",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "auto_find_batch_size",
        # precision and memory
        "bf16",
        "fp16",
        "bf16_full_eval",
        "fp16_full_eval",
        "tf32",
        "torch_compile_backend",
        "torch_compile_mode",
        "torch_empty_cache_steps",
        "use_cache",  # the Trainer sets model.config.use_cache; the labelled-positions loss calls the model's forward
        "neftune_noise_alpha",  # a hook on the input embeddings, which the labelled-positions loss runs through
        # logging, evaluation and checkpoints
        "logging_strategy",
        "logging_steps",
        "logging_first_step",
        "logging_nan_inf_filter",
        "log_on_each_node",
        "report_to",
        "project",
        "trackio_space_id",
        "trackio_bucket_id",
        "trackio_static_space_id",
        "eval_steps",
        "eval_delay",
        "eval_on_start",
        "per_device_eval_batch_size",
        "eval_accumulation_steps",
        "eval_do_concat_batches",
        "eval_use_gather_object",
        "save_strategy",
        "save_steps",
        "save_total_limit",
        "save_only_model",
        "enable_jit_checkpoint",
        "load_best_model_at_end",
        "metric_for_best_model",
        "greater_is_better",
        "ignore_data_skip",
        "restore_callback_states_from_checkpoint",
        "skip_memory_metrics",
        "debug",
        # data loading and reproducibility
        "full_determinism",
        "data_seed",
        "dataloader_drop_last",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        "dataloader_multiprocessing_context",
        "dataloader_in_order",
        "remove_unused_columns",
        # devices and distribution (FSDP and DeepSpeed need GPUs: QATrainingArguments refuses them on CPU)
        "use_cpu",
        "accelerator_config",
        "ddp_find_unused_parameters",
        "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers",
        "ddp_static_graph",
        "ddp_backend",
        "ddp_timeout",
        "fsdp",
        "fsdp_config",
        "deepspeed",
    }
)

# Implemented, or used in place of the Trainer's use, by this project's code: where.
SQUAD_LORA_HONOURS = {
    "output_dir": "squad_lora.run_dir.resolve_run: {run_name} filled in; a finished run is not overwritten",
    "run_name": "squad_lora.run_dir.resolve_run: default the config file's name; TensorBoard's run directory",
    "seed": "set before the model is built (LoRA init) and for the sampling strategies of eval EM/F1",
    "gradient_accumulation_steps": "QATrainer.compute_loss keeps the Trainer's num_items_in_batch contract",
    "average_tokens_across_devices": "QATrainer.compute_loss scales the loss as the Trainer does",
    "label_smoothing_factor": "labelled_positions_loss smooths as the Trainer's LabelSmoother does",
    "activation_checkpointing": "apply_lora: inputs require grad so checkpointed blocks reach the LoRA weights",
    "activation_checkpointing_kwargs": "non-reentrant checkpointing by default (QATrainingArguments)",
    "gradient_checkpointing": "the deprecated alias of activation_checkpointing, resolved by TrainingArguments",
    "gradient_checkpointing_kwargs": "the deprecated alias of activation_checkpointing_kwargs",
    "torch_compile": "QATrainer uses the model's own (compiled) forward: the labelled-positions loss would not run it",
    "include_num_input_tokens_seen": "QATrainer._track_num_input_tokens: packed batches counted without padding",
    "log_level": "our own log lines and progress bars too (run_qa_lora.setup_logging)",
    "log_level_replica": "our own log lines on the other processes too (run_qa_lora.setup_logging)",
    "disable_tqdm": "the answer-generation and tokenization bars of each evaluation too",
    "eval_strategy": "no: no validation data is loaded and no eval EM/F1 computed",
    "do_eval": "must agree with --eval_strategy, which decides when evaluation runs",
    "train_sampling_strategy": "auto: random with packing, group_by_length with padding (the plan decides)",
    "resume_from_checkpoint": "squad_lora.run_dir.resolve_run: `last`, and only complete checkpoints",
    "save_on_each_node": "the final adapter is saved on each node's main process too",
    "push_to_hub": "run_qa_lora.py pushes the final adapter, card and logs itself, at the end",
    "hub_strategy": "squad_lora.hub_pushes: every_save, checkpoint and all_checkpoints push at each save too, in "
    "the background; end (the default) pushes once, at the end",
    "hub_always_push": "squad_lora.hub_pushes: a save's push queues behind one still uploading instead of skipping",
    "hub_model_id": "the repo run_qa_lora.py pushes to (default: the run name)",
    "hub_private_repo": "squad_lora.hub.check_hub_repo creates the repo private",
    "hub_revision": "squad_lora.hub.push_to_hub pushes to this branch, created from main if new",
    "hub_token": "refused by squad_lora.run_dir.resolve_run: the token comes from HF_TOKEN or `hf auth login`",
}

# A non-default value raises ConfigError in QATrainingArguments.__post_init__, with this reason and fix.
REFUSED = {
    "do_train": "run_qa_lora.py always trains; to evaluate an adapter or a base without training, answer with "
    "generate.py and score with evaluate_squad.py",
    "do_predict": "run_qa_lora.py writes no test-set predictions: answer a test set with generate.py",
    "use_liger_kernel": "Liger's kernels are Triton GPU kernels (not installed here, untested), and its main saving, "
    "the LM head and loss fused over every position, is what the labelled-positions loss already avoids",
    "liger_kernel_config": "it configures --use_liger_kernel, which is refused",
    "include_for_metrics": "this Trainer has no compute_metrics: EM/F1 come from generated answers",
    "batch_eval_metrics": "this Trainer has no compute_metrics: EM/F1 come from generated answers",
    "label_names": "the features this script builds carry their labels as `labels`",
    "length_column_name": "the features have no length column: group_by_length measures input_ids",
    "parallelism_config": "tensor and context parallelism (accelerate's ParallelismConfig) are not supported by this "
    "script; shard a large base with configs/accelerate/fsdp.yaml",
}

# Nothing to do: why the flag has no job in this script.
NEEDS_NOTHING = {
    "prediction_loss_only": "evaluation computes no logits for metrics anyway: the loss, and EM/F1 from generated "
    "answers (--eval_generation_samples 0 turns those off)",
    "local_rank": "set by the launcher; accelerate reads LOCAL_RANK",
}

LISTS = {
    "honoured by the Trainer": TRAINER_HONOURS,
    "honoured by squad-lora": SQUAD_LORA_HONOURS,
    "refused": REFUSED,
    "needs nothing": NEEDS_NOTHING,
}


def _enum_value(value):
    return value.value if isinstance(value, enum.Enum) else value


def field_default(cls, name: str):
    """The default of a dataclass field (default_factory called)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def refused_flags(args) -> list[str]:
    """One problem per refused field set to a value other than its default; call before TrainingArguments'
    __post_init__ converts the values."""
    return [
        f"--{name} {_enum_value(getattr(args, name))}: not supported: {reason}"
        for name, reason in REFUSED.items()
        if hasattr(args, name) and _enum_value(getattr(args, name)) != _enum_value(field_default(type(args), name))
    ]


def fsdp_asked(args) -> bool:
    """FSDP, asked for by --fsdp or by an `accelerate launch` config (which sets ACCELERATE_USE_FSDP)."""
    return bool(args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def deepspeed_asked(args) -> bool:
    """DeepSpeed, asked for by --deepspeed or by an `accelerate launch` config (which sets ACCELERATE_USE_DEEPSPEED)."""
    return bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def distributed_engine_problems(args) -> list[str]:
    """FSDP and DeepSpeed asked for (by flag or by an `accelerate launch` config) on a machine without GPUs.

    accelerate (1.10 to 1.15) turns a run into FSDP only from a multi-GPU (or XPU, NPU, ...) setup
    (AcceleratorState.__init__); processes on CPUs stay MULTI_CPU and train with plain DDP, every process
    holding the whole model, while its FSDP plugin's sync_module_states fails with "no available
    devices". DeepSpeed is likewise enabled only off the CPU. torch's FSDP itself runs on CPU with gloo
    (tests/test_distributed.py shows our loss and saving under it), but the Trainer only
    reaches it through accelerate.
    """
    import torch

    engines = []
    if fsdp_asked(args):
        engines.append("FSDP")
    if deepspeed_asked(args):
        engines.append("DeepSpeed")
    if not engines or (torch.accelerator.is_available() and not args.use_cpu):
        return []
    return [
        f"{' and '.join(engines)} {'needs' if len(engines) == 1 else 'need'} GPUs: accelerate runs them only on accelerator devices, and on CPU processes "
        "would silently fall back to DDP (every process holding the whole model). On CPUs use "
        "configs/accelerate/cpu_multiprocess.yaml"
    ]


def cpu_precision_problems(args) -> list[str]:
    """--fp16 where there is no GPU: refused as TrainingArguments refuses --bf16 there, instead of a run that
    silently trains without it."""
    import torch

    if not args.fp16 or args.use_cpu or torch.accelerator.is_available():
        return []
    return [
        "--fp16: this machine has no GPU; mixed precision on CPU needs --use_cpu, and bfloat16 is the CPU's type: "
        "pass --bf16 --use_cpu, or drop --fp16"
    ]


def missing_extras_problems(args) -> list[str]:
    """The optional extras (pyproject.toml's deepspeed and wandb) a flag or launch config asks for but that are not installed:
    refused before any model loads, instead of when the Trainer is built."""
    import importlib.util

    report_to = [args.report_to] if isinstance(args.report_to, str) else list(args.report_to or [])
    wanted = {"wandb": "wandb" in report_to}
    wanted["deepspeed"] = deepspeed_asked(args)
    return [
        f"{package} is not installed (asked for by {'--report_to wandb' if package == 'wandb' else 'DeepSpeed'}): "
        f'pip install -e ".[{package}]"'
        for package, asked in wanted.items()
        if asked and importlib.util.find_spec(package) is None
    ]


def hub_strategy_problems(args) -> list[str]:
    """--hub_strategy other than end pushes at each checkpoint save: it needs a push and saves to push."""
    strategy = _enum_value(args.hub_strategy)
    if strategy == "end":
        return []
    if not args.push_to_hub:
        return [f"--hub_strategy {strategy} pushes to the Hub at each save: add --push_to_hub"]
    if _enum_value(args.save_strategy) == "no":
        return [
            f"--hub_strategy {strategy} pushes at each checkpoint save, but --save_strategy no saves none: "
            "set --save_strategy steps or epoch, or use --hub_strategy end"
        ]
    return []


@dataclass
class QATrainingArguments(TrainingArguments):
    """TrainingArguments with this project's defaults: the seed's best experiment (exp_r8_lr2e-4_attn)."""

    output_dir: Optional[str] = field(
        default="outputs/{run_name}",
        metadata={"help": "Where the adapter, logs and checkpoints go; {run_name} is replaced by the run name."},
    )
    run_name: Optional[str] = field(
        default=None,
        metadata={"help": "Name of the run; default the config file's name, else <model>-squad-r<lora_r>."},
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate (seed: 2e-4 for r=8)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the training set."})
    warmup_steps: float = field(
        default=0.03, metadata={"help": "Linear warmup: steps, or a fraction of all steps when below 1."}
    )
    logging_steps: float = field(
        default=50, metadata={"help": "Log train loss and learning rate every N steps (a fraction: of all steps)."}
    )
    eval_strategy: Union[IntervalStrategy, str] = field(
        default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."}
    )
    save_strategy: Union[SaveStrategy, str] = field(
        default="epoch", metadata={"help": "When to save a checkpoint: no, steps, epoch or best."}
    )
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    # a list: typed `str | list[str]` as in TrainingArguments, the parser read one word and left the rest
    report_to: Optional[list[str]] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "Loggers, one or more: tensorboard (default), wandb, ..., all or none."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that holds a finished run or checkpoints."}
    )
    train_sampling_strategy: str = field(
        default="auto",
        metadata={
            "help": "Batch order: auto (random with packing; group_by_length with padding, so batches pad little), "
            "random, sequential, group_by_length or batch_rebalance.",
            "choices": ["auto", "random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    packing: str = field(
        default="auto",
        metadata={
            "help": "Concatenate each batch into one unpadded row: true, false, or auto: on with "
            "--attn_implementation flash_attention_2 (which reads the boundaries from position ids), off otherwise: "
            "there it needs a block-diagonal mask, and length-grouped padding measured faster on CPU "
            "(benchmarks/bench_train_generate.py).",
            "choices": ["auto", "true", "false"],
        },
    )
    eval_generation_samples: int = field(
        default=500,
        metadata={
            "help": "Validation questions answered at each evaluation for eval/exact_match and eval/f1 (how many "
            "answers are logged: --eval_log_samples); 0: off."
        },
    )
    eval_log_samples: int = field(
        default=8,
        metadata={
            "help": "How many of the questions --eval_generation_samples answers at each evaluation (the first) go "
            "with their answers and EM/F1 to each --report_to logger as a table; every answer goes to "
            "eval_predictions_step<step>.jsonl in --output_dir. 0: off, files too."
        },
    )
    include_num_input_tokens_seen: str = field(
        default="non_padding",
        metadata={"help": "Count the tokens trained on, for tokens/s.", "choices": ["all", "non_padding", "no"]},
    )
    early_stopping_patience: Optional[int] = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improving --metric_for_best_model."},
    )
    # TrainingArguments fields whose default or type differs here; the lists above say what
    # this script does with every field
    ddp_find_unused_parameters: Optional[bool] = field(
        default=False,
        metadata={
            "help": "DDP searches the graph for weights without a gradient at every step. Off: every trainable "
            "weight (LoRA's, or all in full fine-tuning) gets one; the Trainer's default for a peft model is on, "
            "which costs a graph traversal per step and a warning on every run."
        },
    )
    do_train: bool = field(
        default=True,
        metadata={
            "help": "Always true: run_qa_lora.py trains. To evaluate without training, answer with generate.py and "
            "score with evaluate_squad.py."
        },
    )
    do_eval: Optional[bool] = field(
        default=None,
        # None tells an unset value from false; nargs/const: a bare --do_eval means true, as for a plain bool
        metadata={
            "help": "Follows --eval_strategy (no: no evaluation); when given, it must agree with it.",
            "nargs": "?",
            "const": True,
        },
    )
    hub_strategy: str = field(
        default="end",
        metadata={
            "help": "With --push_to_hub: end pushes the finished adapter, card and logs once, at the end; every_save "
            "also pushes the adapter and a card with the latest EM/F1 at each save, in the background; checkpoint also "
            "the latest checkpoint, as last-checkpoint/ to resume from; all_checkpoints each checkpoint by its name.",
            "choices": ["end", "every_save", "checkpoint", "all_checkpoints"],
        },
    )
    # str, not accelerate's ParallelismConfig (which no flag can spell): a user sees the refusal, not a type error
    parallelism_config: Optional[str] = field(
        default=None, metadata={"help": "Not supported (tensor/context parallelism); shard with FSDP instead."}
    )
    # str, not a dict (which argparse cannot parse), for the same reason
    liger_kernel_config: Optional[str] = field(
        default=None, metadata={"help": "Not supported (see --use_liger_kernel)."}
    )

    def __post_init__(self):
        # numbers first: TrainingArguments' own checks would trip over some of them with a less clear message
        problems = refused_flags(self)
        evaluates = str(getattr(self.eval_strategy, "value", self.eval_strategy)) != "no"
        if self.do_eval is not None and self.do_eval != evaluates:
            problems.append(
                f"--do_eval {self.do_eval} contradicts --eval_strategy {self.eval_strategy}: evaluation runs when "
                "--eval_strategy says (no: never); set that instead"
            )
        if not 0 <= self.label_smoothing_factor < 1:
            problems.append(f"--label_smoothing_factor must be in [0, 1), got {self.label_smoothing_factor}")
        problems += distributed_engine_problems(self) + missing_extras_problems(self) + cpu_precision_problems(self)
        check_positive(
            self, ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"), problems
        )
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            problems.append(f"--learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"--max_steps must be > 0 (or -1: use --num_train_epochs), got {self.max_steps}")
        if self.max_steps == -1 and not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            problems.append(f"--num_train_epochs must be a finite number > 0, got {self.num_train_epochs}")
        if not (math.isfinite(self.warmup_steps) and self.warmup_steps >= 0):
            problems.append(f"--warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.eval_generation_samples < 0:
            problems.append(f"--eval_generation_samples must be >= 0 (0: off), got {self.eval_generation_samples}")
        if self.eval_log_samples < 0:
            problems.append(f"--eval_log_samples must be >= 0 (0: off), got {self.eval_log_samples}")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            problems.append(f"--early_stopping_patience must be >= 1, got {self.early_stopping_patience}")
        problems += hub_strategy_problems(self)
        raise_problems(problems)
        super().__post_init__()
        self.do_eval = evaluates  # the one answer to "does this run evaluate?": everything downstream reads it
        problems += tracker_problems(self.report_to)  # the names resolved (`all`), and the loggers' stores
        if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None:
            # non-reentrant checkpointing lets gradients reach LoRA weights behind frozen layers
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        # the Trainer would only find these out mid-run, with an assert or a KeyError
        if self.early_stopping_patience and (self.metric_for_best_model is None or not evaluates):
            problems.append("--early_stopping_patience needs --metric_for_best_model (e.g. f1) and an --eval_strategy")
        metric = (self.metric_for_best_model or "").removeprefix("eval_")
        if metric in ("exact_match", "f1") and self.eval_generation_samples < 1:
            problems.append(f"--metric_for_best_model {self.metric_for_best_model} needs --eval_generation_samples > 0")
        raise_problems(problems)


# run_qa_lora.py's arguments, in the order its parser returns them; sweep.py checks its trials' flags with them
ARGUMENT_TYPES = (
    TrainModelArguments,
    DataArguments,
    LoraArguments,
    PromptArguments,
    DecodingArguments,
    HubArguments,
    QATrainingArguments,
)
