"""The Trainer for prompt -> answer features: its loss, its collators, EM/F1 at evaluation, HParams.

A SQuAD feature is a ~183-token prompt and a ~4-token answer, so the 50,257-wide LM head over every
position is almost all waste: for the model types where a test shows the two losses equal, this
Trainer runs the head only where a label is trained; other models use their own forward.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, Trainer, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from squad_lora.args import check_positive, raise_problems

logger = logging.getLogger(__name__)

# Model types whose own forward is backbone -> LM head with nothing in between (no logit soft-capping or
# scaling), so that the labelled-positions loss equals theirs: tests/test_trainer.py shows it for each.
LABELLED_LOSS_MODEL_TYPES = frozenset({"gpt2", "llama"})

HPARAM_KEYS = (
    "model_name_or_path",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
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
    report_to: Union[None, str, list[str]] = field(
        default="tensorboard", metadata={"help": "Loggers: tensorboard (default), wandb, ..., all or none."}
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

    def __post_init__(self):
        # numbers first: TrainingArguments' own checks would trip over some of them with a less clear message
        problems = []
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


def labelled_positions_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """Causal-LM loss that applies the LM head only at positions whose next token is labelled.

    Equal to the model's own loss (mean over labelled tokens, or their sum / num_items_in_batch when
    gradient accumulation gives it) at a fraction of the head's FLOPs and memory.
    """
    lm = _causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix)
    labels = inputs["labels"]  # (B, T)
    forward_inputs = {k: v for k, v in inputs.items() if k not in ("labels",)}
    hidden = backbone(**forward_inputs, use_cache=False).last_hidden_state  # (B, T, C)
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != -100  # (B, T-1)
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])  # (N, vocab)
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
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


def build_collator(training_args, tokenizer, attn_implementation: str | None):
    """Packing (one unpadded row per batch) or dynamic padding to the batch's longest feature.

    Also settles train_sampling_strategy auto: length grouping only pays where there is padding.
    """
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


class QATrainer(Trainer):
    """Trainer with the labelled-positions loss, and EM/F1 of generated answers at every evaluation."""

    def __init__(self, *args, eval_examples: list[dict] | None = None, decoding=None, **kwargs):
        """eval_examples: raw validation rows answered at each evaluation (with `decoding`) for EM/F1."""
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples or []
        self.decoding = decoding
        self.labelled_loss = uses_labelled_positions_loss(self.model)
        logger.info(
            "loss: %s",
            "LM head on the labelled positions only"
            if self.labelled_loss
            else f"the model's own forward ({_causal_lm(self.model).config.model_type} is not among the types "
            f"where the labelled-positions loss is shown equal: {', '.join(sorted(LABELLED_LOSS_MODEL_TYPES))})",
        )
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
        loss = labelled_positions_loss(model, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return loss

    def _track_num_input_tokens(self, inputs):
        # Private Trainer hook, overridden here only (tests/test_trainer.py fails loudly when it changes):
        # a packed batch has no padding, and Trainer would count its 4-D block mask's T*T entries as tokens.
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            inputs = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}
        return super()._track_num_input_tokens(inputs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not prediction_loss_only or not self.labelled_loss:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = labelled_positions_loss(model, inputs)
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
        across all processes."""
        from accelerate import PartialState

        from squad_lora.decoding import answer_questions
        from squad_lora.scoring import score_predictions

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        strategy = self.decoding.strategies[0]
        results = answer_questions(
            model,
            self.processing_class,
            self.eval_examples,
            self.decoding,
            PartialState(),
            seed=self.args.seed,
            strategies=[strategy],
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
        final = {f"hparams/{k}": v for k, v in metrics.items() if k in ("eval_loss", "eval_exact_match", "eval_f1")}
        with SummaryWriter(self.tensorboard_dir) as writer:  # the callback closed its writer at the end of training
            writer.add_hparams(hparams, final, run_name=".")
