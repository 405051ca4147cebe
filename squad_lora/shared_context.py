"""Shared-context batching: each context is read once for all of its questions, in training and in generation.

SQuAD has ~5 questions per context, and the prompt puts the context first (prompt.PromptTemplate.context_part), so under
causal attention the context's hidden states, keys and values do not depend on the question. A training
row holds a context's tokens once, then each question's own tokens (question, answer cue, answer, EOS) as
a *branch*: a 4-D attention mask lets a branch token see the context and the earlier tokens of its own
branch only, and each branch's position ids continue from the end of the context, so every token sees
exactly the keys and positions it would see in its own example: the loss and gradients are the same. In
generation (kv_cache.py) the context's KV cache is computed once and copied to the rows of its questions.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from typing import NamedTuple

import torch

logger = logging.getLogger(__name__)

# Model types whose forward takes position ids and a 4-D mask as given (no positions recomputed from a 2-D
# mask, no ALiBi): tests/test_shared_context.py shows shared and separate examples equal for each.
SHARED_CONTEXT_MODEL_TYPES = frozenset({"gpt2", "llama"})
# Attention implementations that take the collator's boolean 4-D mask as it is. Flash attention's varlen
# kernels take sequence boundaries only: a branch that sees the context but not the branch before it is no
# sequence. Eager attention (transformers 5) adds a boolean mask to the scores instead of masking with it, so a
# branch leaks into the next (benchmarks/gpu_check.py measured the loss 3e-4 off on a tiny GPT-2).
MASK_ATTENTION = frozenset({"sdpa"})


class SharingDecision(NamedTuple):
    """--share_context settled: whether contexts are shared, why (for the plan's log), and the user's faults."""

    on: bool
    why: str
    problems: list[str]


def decide_share_context(setting: str, model_type: str, attention: str | None, training_args=None) -> SharingDecision:
    """--share_context for this model type, attention and (in training) these batches.

    auto: on where tested exact, off with the reason otherwise; true: on, with a problem where sharing cannot
    work (and a warning on an untested model type); false: off.
    """
    if setting not in ("auto", "true", "false"):
        return SharingDecision(False, "", [f"--share_context must be auto, true or false, got {setting!r}"])
    if setting == "false":
        return SharingDecision(False, "off (--share_context false)", [])
    reasons = []
    if attention == "eager":
        reasons.append(
            "eager attention adds a boolean 4-D mask to its scores instead of masking with it, so a question's "
            "branch would see the one before: use --attn_implementation sdpa"
        )
    elif attention is not None and attention not in MASK_ATTENTION:
        reasons.append(
            f"attention {attention} cannot express a context's question branches (it takes sequence boundaries, "
            "not a 4-D mask): use --attn_implementation sdpa"
        )
    if training_args is not None and training_args.packing == "true":
        reasons.append("--packing true concatenates whole examples instead")
    if training_args is not None and training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        reasons.append(
            f"--train_sampling_strategy {training_args.train_sampling_strategy} orders single examples; shared "
            "batches order whole contexts (random or sequential)"
        )
    if reasons and setting == "true":
        return SharingDecision(
            False, "", [f"--share_context true: {'; '.join(reasons)}; or pass --share_context auto or false"]
        )
    if reasons:
        return SharingDecision(False, f"off: {'; '.join(reasons)}", [])
    tested = ", ".join(sorted(SHARED_CONTEXT_MODEL_TYPES))
    if model_type not in SHARED_CONTEXT_MODEL_TYPES:
        if setting == "auto":
            return SharingDecision(False, f"off: {model_type} is not among the model types tested exact ({tested})", [])
        logger.warning("--share_context true on %s: shared batches are tested exact for %s only", model_type, tested)
        return SharingDecision(True, f"on (--share_context true; tested exact for {tested} only)", [])
    return SharingDecision(True, f"on ({model_type} with {attention or 'its default'} attention, tested exact)", [])


def context_groups(shared_lengths: list[int], keys: list) -> list[list[int]]:
    """Indices of the questions that share their leading tokens, in first-appearance order; a question with
    shared_length 0 is a group of its own."""
    groups: dict = {}
    for index, (length, key) in enumerate(zip(shared_lengths, keys)):
        groups.setdefault(key if length else ("alone", index), []).append(index)
    return list(groups.values())


class ContextBatchSampler:
    """Training batches of whole contexts: contexts are added while the batch holds at most `max_questions`
    questions (per_device_train_batch_size). A context with more questions than that is cut into pieces of at
    most `max_questions` (each reads the context once), so no step ever trains more questions than the batch
    size and an epoch has about as many steps as without sharing.

    With shuffle, the batches are planned once by best-fit decreasing on the contexts' question counts (nearly
    full batches, and the same number of batches every epoch, which the Trainer's schedule needs); each epoch
    then draws which contexts fill the places of each size, and the batches' order, from seed + epoch: the same
    on every process, of which each takes its own share of the batches (accelerate's BatchSamplerShard).
    Without shuffle (--train_sampling_strategy sequential) contexts keep the dataset's order.
    There is deliberately no `batch_size` attribute: accelerate then shards batches of varying size.
    """

    def __init__(self, shared_lengths: list[int], keys: list, max_questions: int, shuffle: bool = True, seed: int = 0):
        self.groups = [
            group[first : first + max_questions]
            for group in context_groups(shared_lengths, keys)
            for first in range(0, len(group), max_questions)
        ]
        self.max_questions, self.shuffle, self.seed, self.epoch = max_questions, shuffle, seed, 0
        self.plan = self._best_fit_decreasing() if shuffle else self._in_order()

    def _in_order(self) -> list[list[int]]:
        plan, room = [], 0
        for g, group in enumerate(self.groups):
            if plan and len(group) <= room:
                plan[-1].append(g)
                room -= len(group)
            else:
                plan.append([g])
                room = self.max_questions - len(group)
        return plan

    def _best_fit_decreasing(self) -> list[list[int]]:
        plan: list[list[int]] = []
        open_by_room = defaultdict(list)  # room left -> planned batches with that much room
        for g in sorted(range(len(self.groups)), key=lambda g: -len(self.groups[g])):
            size = len(self.groups[g])
            room = next((r for r in range(size, self.max_questions) if open_by_room[r]), None)
            if room is None:
                plan.append([g])
                batch, room = len(plan) - 1, self.max_questions
            else:
                batch = open_by_room[room].pop()
                plan[batch].append(g)
            if room - size > 0:
                open_by_room[room - size].append(batch)
        return plan

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        order, place = range(len(self.plan)), list(range(len(self.groups)))
        if self.shuffle:
            rng = random.Random(self.seed + self.epoch)
            same_size = defaultdict(list)
            for g, group in enumerate(self.groups):
                same_size[len(group)].append(g)
            for planned in same_size.values():  # each planned context's place goes to a random one of its size
                drawn = planned[:]
                rng.shuffle(drawn)
                for g, d in zip(planned, drawn):
                    place[g] = d
            order = rng.sample(order, len(order))
        for b in order:
            yield [index for g in self.plan[b] for index in self.groups[place[g]]]


class SharedContextCollator:
    """One row per group of features with the same shared tokens (input_ids[:shared_length]): those tokens once,
    then each feature's remaining tokens as a branch; rows right-padded into a batch.

    Returns input_ids, labels, position_ids (B, T) and a boolean attention mask (B, 1, T, T): a token sees the
    shared tokens before it and the earlier tokens of its own branch. A padding token sees the row's first token
    only (a query row that sees nothing makes sdpa's softmax NaN, and NaN gradients); it is the one kind of token
    that does not see itself, which is how QATrainer counts the real tokens of a batch.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        rows: dict = {}  # shared tokens (or the index of a feature that shares none) -> (shared tokens, branches)
        for i, feature in enumerate(features):
            ids, n = list(feature["input_ids"]), feature["shared_length"]
            _, branches = rows.setdefault(tuple(ids[:n]) if n else i, (ids[:n], []))
            branches.append((ids[n:], list(feature["labels"])[n:]))
        built = [branch_row(shared, branches) for shared, branches in rows.values()]
        length = max(len(row[0]) for row in built)
        batch = {
            name: torch.zeros(len(built), length, dtype=torch.long) for name in ("input_ids", "labels", "position_ids")
        }
        batch["input_ids"].fill_(self.pad_token_id)
        batch["labels"].fill_(-100)
        mask = torch.zeros(len(built), 1, length, length, dtype=torch.bool)
        mask[:, 0, :, 0] = True
        for r, (ids, labels, positions, row_mask) in enumerate(built):
            n = len(ids)
            batch["input_ids"][r, :n] = torch.tensor(ids)
            batch["labels"][r, :n] = torch.tensor(labels)
            batch["position_ids"][r, :n] = torch.tensor(positions)
            mask[r, 0, :n, :n] = row_mask
        batch["attention_mask"] = mask
        return batch


def branch_row(shared: list[int], branches: list[tuple[list[int], list[int]]]) -> tuple:
    """(ids, labels, position ids, (T, T) mask) of one row: the shared tokens, then each branch after them."""
    ids, labels, positions, segment = list(shared), [-100] * len(shared), list(range(len(shared))), [0] * len(shared)
    for k, (branch_ids, branch_labels) in enumerate(branches, start=1):
        ids += branch_ids
        # a branch's first token follows another branch here, never its own context: it is no target (it is a
        # prompt token anyway, as shared_length leaves the question part to the branch)
        labels += [-100] + branch_labels[1:]
        positions += range(len(shared), len(shared) + len(branch_ids))
        segment += [k] * len(branch_ids)
    segment = torch.tensor(segment)
    causal = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    sees = (segment[None, :] == 0) | (segment[:, None] == segment[None, :])  # the shared tokens, or its own branch
    return ids, labels, positions, causal & sees
