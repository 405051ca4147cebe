"""The Trainer for prompt -> answer features: its loss, its collators, EM/F1 at evaluation, HParams.

A SQuAD feature is a ~183-token prompt and a ~4-token answer, so the 50,257-wide LM head over every
position is almost all waste: for the model types where a test shows the two losses equal, this
Trainer runs the head only where a label is trained; other models use their own forward.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, Trainer, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_callback import ProgressCallback, TrainerCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, has_length

from squad_lora.args import check_positive, raise_problems
from squad_lora.errors import ConfigError
from squad_lora.modeling import INITIAL_ADAPTER_ATTR, effective_target_modules, save_for_original_base
from squad_lora.shared_context import SHARED_COLUMNS, ContextBatchSampler, SharedContextCollator
from squad_lora.training_flags import distributed_engine_problems, missing_extras_problems, refused_flags

logger = logging.getLogger(__name__)

# the Trainer pins its batches' memory by default (--dataloader_pin_memory), which does nothing and says so on
# every evaluation where there is no GPU; on a GPU it is the right default
warnings.filterwarnings(
    "ignore",
    message=r"'pin_memory' argument is set as true but no accelerator is found",
    category=UserWarning,
    module=r"torch\.utils\.data\.dataloader",
)

# Model types whose own forward is backbone -> LM head with nothing in between (no logit soft-capping or
# scaling), so that the labelled-positions loss equals theirs: tests/test_trainer.py shows it for each.
LABELLED_LOSS_MODEL_TYPES = frozenset({"gpt2", "llama"})

HPARAM_KEYS = (
    "model_name_or_path",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_bias",
    "use_dora",
    "use_rslora",
    "init_lora_weights",
    "lora_modules_to_save",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "max_train_samples",
)


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
        metadata={"help": "Validation questions answered at each evaluation for eval/exact_match and eval/f1; 0: off."},
    )
    include_num_input_tokens_seen: str = field(
        default="non_padding",
        metadata={"help": "Count the tokens trained on, for tokens/s.", "choices": ["all", "non_padding", "no"]},
    )
    early_stopping_patience: Optional[int] = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improving --metric_for_best_model."},
    )
    # TrainingArguments fields whose default or type differs here; squad_lora/training_flags.py says what
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
            "help": "Only end: with --push_to_hub the finished adapter, card and logs are pushed once, at the end."
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
        problems += distributed_engine_problems(self) + missing_extras_problems(self)
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
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            problems.append(f"--early_stopping_patience must be >= 1, got {self.early_stopping_patience}")
        raise_problems(problems)
        super().__post_init__()
        self.do_eval = evaluates
        if self.gradient_checkpointing and self.gradient_checkpointing_kwargs is None:
            # non-reentrant checkpointing lets gradients reach LoRA weights behind frozen layers
            self.gradient_checkpointing_kwargs = {"use_reentrant": False}
        # the Trainer would only find these out mid-run, with an assert or a KeyError
        if self.early_stopping_patience and (
            self.metric_for_best_model is None or self.eval_strategy == IntervalStrategy.NO
        ):
            problems.append("--early_stopping_patience needs --metric_for_best_model (e.g. f1) and an --eval_strategy")
        metric = (self.metric_for_best_model or "").removeprefix("eval_")
        if metric in ("exact_match", "f1") and self.eval_generation_samples < 1:
            problems.append(f"--metric_for_best_model {self.metric_for_best_model} needs --eval_generation_samples > 0")
        raise_problems(problems)


def _causal_lm(model):
    """The transformers *ForCausalLM module inside peft / DDP / compile wrappers."""
    # Unwrap by type: peft forwards unknown attributes, so a PeftModel passes for the causal LM itself, and
    # its `.model` (Llama's backbone prefix) is LlamaForCausalLM, not LlamaModel.
    while not isinstance(model, PreTrainedModel):
        if hasattr(model, "module"):  # DDP, FSDP
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        else:
            raise TypeError(f"{type(model).__name__} is not a transformers model")
    if model.get_output_embeddings() is None:
        raise TypeError(f"{type(model).__name__} has no LM head")
    return model


def uses_labelled_positions_loss(model) -> bool:
    """Whether the labelled-positions loss is known to equal this model's own loss."""
    return _causal_lm(model).config.model_type in LABELLED_LOSS_MODEL_TYPES


def labelled_positions_loss(model, inputs: dict, num_items_in_batch=None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Causal-LM loss that applies the LM head only at positions whose next token is labelled.

    Equal to the model's own loss (mean over labelled tokens, or their sum / num_items_in_batch when
    gradient accumulation gives it), and with label_smoothing to the Trainer's LabelSmoother on it, at a
    fraction of the head's FLOPs and memory.

    The model is called as given, through DDP, FSDP or DeepSpeed: their forward is what synchronizes the
    gradients and gathers sharded weights (calling the backbone inside them left DDP ranks training apart).
    A pre-hook hands the LM head only the hidden states of the labelled positions.
    """
    labels = inputs["labels"]  # (B, T)
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != -100  # (B, T-1)

    def labelled_hidden_states(module, args):
        return (args[0][:, :-1][keep], *args[1:])  # (B, T, C) -> (N, C)

    handle = _causal_lm(model).get_output_embeddings().register_forward_pre_hook(labelled_hidden_states)
    try:
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits  # (N, vocab)
    finally:
        handle.remove()
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum", label_smoothing=label_smoothing)
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return loss / denominator


class PackingCollator:
    """Concatenate a batch's features into one row with no padding at all.

    Each feature restarts its position ids at 0. Flash attention reads the boundaries from the
    position ids; other attention implementations get an explicit block-diagonal causal mask.
    The first token of each feature is never a target of the one before it.
    """

    def __init__(self, use_block_mask: bool = True):
        self.use_block_mask = use_block_mask

    def __call__(self, features: list[dict]) -> dict:
        input_ids, labels, position_ids = [], [], []
        for feature in features:
            ids = list(feature["input_ids"])
            input_ids += ids
            labels += [-100] + list(feature["labels"][1:])
            position_ids += range(len(ids))
        batch = {
            "input_ids": torch.tensor([input_ids]),  # (1, T)
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([position_ids]),
        }
        if self.use_block_mask:
            segment = torch.cumsum(batch["position_ids"][0] == 0, 0)  # (T,) which feature each token is in
            causal = torch.ones(len(input_ids), len(input_ids), dtype=torch.bool).tril()
            batch["attention_mask"] = ((segment[:, None] == segment[None, :]) & causal)[None, None]  # (1, 1, T, T)
        return batch


def build_collator(training_args, tokenizer, attn_implementation: str | None, share_context: bool = False):
    """Packing (one unpadded row per batch) or dynamic padding to the batch's longest feature.

    Also settles train_sampling_strategy auto: length grouping only pays where there is padding. With
    share_context, QATrainer builds the training batches (one row per context) and this padding collator
    serves evaluation, so that eval_loss is the same number as without sharing.
    """
    if share_context:
        if training_args.train_sampling_strategy == "auto":
            training_args.train_sampling_strategy = "random"
        logger.info(
            "batches: one row per context, its questions as branches; whole contexts, at most %d questions a batch "
            "(a context with more is a batch of its own), contexts in %s order; evaluation batches padded",
            training_args.per_device_train_batch_size,
            training_args.train_sampling_strategy,
        )
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    flash = (attn_implementation or "").startswith("flash")
    packing = training_args.packing == "true" or (training_args.packing == "auto" and flash)
    if training_args.train_sampling_strategy == "auto":
        training_args.train_sampling_strategy = "random" if packing else "group_by_length"
    logger.info(
        "batches: %s, %s order",
        "packed" if packing else "padded to their longest",
        training_args.train_sampling_strategy,
    )
    if packing:
        return PackingCollator(use_block_mask=not flash)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)


class ContextEpochCallback(TrainerCallback):
    """Hands the epoch to the ContextBatchSampler as each epoch begins. The Trainer's own set_epoch does not
    reach it where accelerate wraps it twice (resuming mid-epoch on several processes: a skipping sampler
    around a sharding one), and that epoch would replay epoch 0's order."""

    sampler = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.sampler is not None:
            self.sampler.set_epoch(int(state.epoch))  # resumed mid-epoch, state.epoch is e.g. 1.5: epoch 1


def _without_sharing_columns(dataset):
    if dataset is None or not hasattr(dataset, "column_names"):
        return dataset
    return dataset.remove_columns([c for c in SHARED_COLUMNS if c in dataset.column_names])


@contextlib.contextmanager
def answering_state(model_wrapped, sharded: bool):
    """The process state to answer evaluation questions with, the weights made usable for generate().

    Where each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3), every forward gathers the
    rest from all processes: a collective, so every process must run the same forwards, and each answers every
    question (the same seed, the same samples) instead of its share. FSDP keeps its root unit's weights
    (embeddings, final norm, LM head) sharded between forwards of the root, and generate() runs the modules
    inside it: those are gathered for the while (FSDP version 1, configs/accelerate/fsdp.yaml's).
    """
    from accelerate import PartialState
    from torch.distributed.fsdp import FullyShardedDataParallel

    state = PartialState()
    if sharded:
        state = SimpleNamespace(num_processes=1, process_index=0, is_main_process=state.is_main_process)
    if isinstance(model_wrapped, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model_wrapped, recurse=False, writeback=False):
            yield state
    else:
        yield state


FSDP_WRAPPED = "_fsdp_wrapped_module"  # the name under which FSDP (1) holds each module it wraps


class _WithoutFsdpNames:
    """A peft model whose module names read as without FSDP's wrappers, as the keys of a gathered state dict do."""

    def __init__(self, model):
        self._model = model

    def named_modules(self, *args, **kwargs):
        for name, module in self._model.named_modules(*args, **kwargs):
            yield name.replace(FSDP_WRAPPED + ".", ""), module

    def __getattr__(self, name):
        return getattr(self._model, name)


def rewrite_fsdp_adapter(model, output_dir: str, state_dict: dict) -> bool:
    """After model.save_pretrained(output_dir, state_dict=...) with a state dict gathered under FSDP (version 1):
    write the adapter's weights again, and return True; False where there was nothing to correct.

    peft (0.21) finds an adapter's weights by module name and removes FSDP's `_fsdp_wrapped_module.` only at the
    start of a name; FSDP puts it inside the names of the blocks it wraps (`...h.0._fsdp_wrapped_module.attn...`),
    so save_pretrained writes an empty adapter_model.safetensors.
    """
    if not hasattr(model, "peft_config") or not any(FSDP_WRAPPED in name for name, _ in model.named_modules()):
        return False
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    weights = get_peft_model_state_dict(_WithoutFsdpNames(model), state_dict=state_dict)
    path = os.path.join(output_dir, "adapter_model.safetensors")
    save_file({key: value.contiguous() for key, value in weights.items()}, path, metadata={"format": "pt"})
    return True


class NamedProgressCallback(ProgressCallback):
    """The Trainer's progress bars, each named for what it counts (the answering bars of eval EM/F1 name theirs).

    Each bar is created here with its name, since a bar draws itself when created; the Trainer's callback then
    updates and closes it as before.
    """

    def on_train_begin(self, args, state, control, **kwargs):  # the Trainer's, with a name
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc="training (steps)")
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.prediction_bar is None and state.is_world_process_zero and has_length(eval_dataloader):
            self.prediction_bar = tqdm(
                total=len(eval_dataloader),
                leave=self.training_bar is None,
                dynamic_ncols=True,
                desc="evaluating (loss)",
            )
        super().on_prediction_step(args, state, control, eval_dataloader, **kwargs)


class QATrainer(Trainer):
    """Trainer with the labelled-positions loss, and EM/F1 of generated answers at every evaluation."""

    def __init__(
        self, *args, eval_examples: list[dict] | None = None, decoding=None, share_context: bool = False, **kwargs
    ):
        """eval_examples: raw validation rows answered at each evaluation (with `decoding`) for EM/F1.
        share_context: train on one row per context (shared_context.py; resolve_share_context decides)."""
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples or []
        self.decoding = decoding
        self.share_context = share_context
        # the sharing columns only serve the shared training batches: no other collator or forward may see them
        self.eval_dataset = _without_sharing_columns(self.eval_dataset)
        if not share_context:
            self.train_dataset = _without_sharing_columns(self.train_dataset)
        self.context_epochs = ContextEpochCallback()
        if share_context:
            self.add_callback(self.context_epochs)
        # --torch_compile compiles the model's forward; the labelled-positions loss would break its graph at the
        # LM head on every step, so a compiled run uses the model's own forward
        self.labelled_loss = uses_labelled_positions_loss(self.model) and not self.args.torch_compile
        if self.labelled_loss:
            reason = "LM head on the labelled positions only"
        elif self.args.torch_compile:
            reason = "the model's own forward, compiled (--torch_compile)"
        else:
            reason = (
                f"the model's own forward ({_causal_lm(self.model).config.model_type} is not among the types "
                f"where the labelled-positions loss is shown equal: {', '.join(sorted(LABELLED_LOSS_MODEL_TYPES))})"
            )
        logger.info("loss: %s", reason)
        if (self.is_fsdp_enabled or is_deepspeed_zero3_enabled()) and getattr(self.model, INITIAL_ADAPTER_ATTR, None):
            # converting the adapter for the original base (save_for_original_base) needs the whole weights
            raise ConfigError(
                "--init_lora_weights pissa/olora cannot be used with FSDP or DeepSpeed ZeRO-3: the adapter is converted "
                "for the original base from the whole weights, which they shard"
            )
        if self.pop_callback(ProgressCallback) is not None:  # present unless --disable_tqdm
            self.add_callback(NamedProgressCallback)
        # TensorBoard: our own writer on a known directory, so the HParams of the finished run land beside it
        self.tensorboard_dir = None
        if self.pop_callback(TensorBoardCallback) is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(
                self.args.output_dir, "runs", self.args.run_name or "run"
            )
            writer = SummaryWriter(self.tensorboard_dir) if self.is_world_process_zero() else None
            callback = TensorBoardCallback(tb_writer=writer)
            # the callback closes its writer when training ends and opens a new one at its logging_dir for a
            # later log (the final evaluation): that must be this run's directory, not runs/<date>_<host>
            callback.logging_dir = self.tensorboard_dir
            self.add_callback(callback)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self.labelled_loss:  # prediction_step wants logits: use the plain forward
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Mirror Trainer's contract for model losses: with num_items_in_batch (the labelled tokens of the
        # whole accumulated, all-rank batch) the loss is a sum over it, and DDP's gradient mean is undone.
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None  # Trainer then divides by the accumulation steps itself
        loss = labelled_positions_loss(model, inputs, num_items_in_batch, self.args.label_smoothing_factor)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return loss

    def get_train_dataloader(self):
        """With share_context: batches of whole contexts (ContextBatchSampler), one row per context."""
        if not self.share_context:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        dataset = self.train_dataset
        sampler = ContextBatchSampler(
            dataset["shared_length"],
            dataset["context_key"],
            self._train_batch_size,
            shuffle=self.args.train_sampling_strategy != "sequential",
            seed=self.args.seed,
        )
        logger.info(
            "%d training questions over %d contexts (or context windows): %d batches an epoch",
            len(dataset),
            len(sampler.groups),
            len(sampler),
        )
        loader = DataLoader(
            dataset.select_columns(["input_ids", "labels", "shared_length"]),
            batch_sampler=sampler,
            collate_fn=SharedContextCollator(self.processing_class.pad_token_id),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        self.context_epochs.sampler = sampler
        return self.accelerator.prepare(loader)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if state_dict is not None and self.args.should_save:  # under FSDP, the gathered weights: see there
            rewrite_fsdp_adapter(self.model, output_dir or self.args.output_dir, state_dict)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        # A PiSSA/OLoRA adapter as trained fits only the base its initialization changed: the final adapter is
        # converted to fit the original base. Checkpoints (internal calls) keep the trained form to resume from.
        if not _internal_call and self.args.should_save:
            save_for_original_base(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def _track_num_input_tokens(self, inputs):
        # Private Trainer hook, overridden here only (tests/test_trainer.py fails loudly when it changes): Trainer
        # would count a 4-D mask's T*T entries as tokens. A real token sees itself; padding does not (packed
        # batches have none; SharedContextCollator's does not), so the mask's diagonal marks the real tokens.
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            inputs = {**inputs, "attention_mask": mask[:, 0].diagonal(dim1=-2, dim2=-1).long()}
        return super()._track_num_input_tokens(inputs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not prediction_loss_only or not self.labelled_loss:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = labelled_positions_loss(model, inputs, label_smoothing=self.args.label_smoothing_factor)
        return loss.detach(), None, None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_examples:
            output.metrics.update(self.generation_metrics(metric_key_prefix))
        return output

    def generation_metrics(self, prefix: str = "eval") -> dict:
        """EM/F1 of the answers to eval_examples (first strategy, first sample), each question answered once
        across all processes (by every process where the weights are sharded: answering_state)."""
        from squad_lora.decoding import answer_questions
        from squad_lora.scoring import score_predictions

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        strategy = self.decoding.strategies[0]
        sharded = self.is_fsdp_enabled or is_deepspeed_zero3_enabled()
        with answering_state(self.model_wrapped, sharded) as state:
            results = answer_questions(
                model,
                self.processing_class,
                self.eval_examples,
                self.decoding,
                state,
                seed=self.args.seed,
                strategies=[strategy],
                progress=not self.args.disable_tqdm,
            )
        model.train(was_training)
        predictions = {row["id"]: row["prediction"] for row in results[strategy] if row["sample"] == 0}
        scores = score_predictions(self.eval_examples, predictions, source="evaluation")
        return {f"{prefix}_exact_match": scores.get("exact_match", scores.get("exact")), f"{prefix}_f1": scores["f1"]}

    def log_hparams(self, config: dict, metrics: dict) -> None:
        """Write the run's settings with its final metrics to TensorBoard's HParams dashboard."""
        if self.tensorboard_dir is None or not self.is_world_process_zero():
            return
        from torch.utils.tensorboard import SummaryWriter

        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items() if k in HPARAM_KEYS
        }
        # run_config keeps only the Trainer settings that differ from their defaults: every run shows them all here
        hparams.update({k: getattr(self.args, k) for k in HPARAM_KEYS if k not in hparams and hasattr(self.args, k)})
        # what the run did, not what was asked: the layers peft adapted (all-linear or its default resolved), and
        # the steps taken (max_steps is -1 when --num_train_epochs sets the length)
        targets = effective_target_modules(self.accelerator.unwrap_model(self.model))
        if targets is not None:
            hparams["lora_target_modules"] = ", ".join(targets)
        hparams["max_steps"] = self.state.max_steps
        final = {f"hparams/{k}": v for k, v in metrics.items() if k in ("eval_loss", "eval_exact_match", "eval_f1")}
        with SummaryWriter(self.tensorboard_dir) as writer:  # the callback closed its writer at the end of training
            writer.add_hparams(hparams, final, run_name=".")
