"""The Trainer for prompt -> answer features: loss on labelled positions only, packing, EM/F1 at evaluation.

A SQuAD feature is a ~183-token prompt and a ~4-token answer, so the 50,257-wide LM head over every
position is almost all waste: this Trainer runs the head only where a label is trained.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Trainer

logger = logging.getLogger(__name__)


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


class QATrainer(Trainer):
    """Trainer with the labelled-positions loss, and EM/F1 of generated answers at every evaluation."""

    def __init__(self, *args, eval_examples: list[dict] | None = None, decoding=None, **kwargs):
        """eval_examples: raw validation rows answered (greedy) at each evaluation for EM/F1."""
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples or []
        self.decoding = decoding

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:  # prediction_step wants logits: use the plain forward
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
        # A packed batch has no padding, and Trainer would count its 4-D block mask's T*T entries as tokens.
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            inputs = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}
        return super()._track_num_input_tokens(inputs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = labelled_positions_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_examples:
            output.metrics.update(self.generation_metrics(metric_key_prefix))
        return output

    def generation_metrics(self, prefix: str = "eval") -> dict:
        """EM/F1 of greedy answers to eval_examples, each question answered once across all processes."""
        from accelerate import PartialState

        from decoding import answer_questions
        from squad_eval import score_predictions

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        rows = answer_questions(model, self.processing_class, self.eval_examples, self.decoding, PartialState())["greedy"]
        model.train(was_training)
        scores = score_predictions(self.eval_examples, {row["id"]: row["prediction"] for row in rows}, source="evaluation")
        return {f"{prefix}_exact_match": scores.get("exact_match", scores.get("exact")), f"{prefix}_f1": scores["f1"]}
