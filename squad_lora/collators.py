"""The training collators that the plan picks: packed rows, or rows padded to the batch's longest.

With shared contexts, the trainer builds the training batches itself (shared_context.SharedContextCollator) and
the padding collator serves evaluation, so that eval_loss is the same number as without sharing.
"""

from __future__ import annotations

import torch
from transformers import DataCollatorForSeq2Seq


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


def make_collator(plan, tokenizer):
    """The collator of a plan.TrainPlan: PackingCollator where it packs, else dynamic padding."""
    if plan.packing:
        return PackingCollator(use_block_mask=plan.block_mask)
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
