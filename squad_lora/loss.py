"""The loss of prompt -> answer features: the LM head only where a label is trained.

A SQuAD feature is a ~183-token prompt and a ~4-token answer, so the 50,257-wide LM head over every
position is almost all waste: for the model types where a test shows the two losses equal, the trainer
runs the head only at the labelled positions (the plan decides: plan.TrainPlan.labelled_loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

# Model types whose own forward is backbone -> LM head with nothing in between (no logit soft-capping or
# scaling), so that the labelled-positions loss equals theirs: tests/test_loss.py shows it for each.
LABELLED_LOSS_MODEL_TYPES = frozenset({"gpt2", "llama"})


def causal_lm(model):
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
    return causal_lm(model).config.model_type in LABELLED_LOSS_MODEL_TYPES


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

    handle = causal_lm(model).get_output_embeddings().register_forward_pre_hook(labelled_hidden_states)
    try:
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits  # (N, vocab)
    finally:
        handle.remove()
    loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum", label_smoothing=label_smoothing)
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return loss / denominator
