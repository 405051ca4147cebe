"""run_qa_lora.py's training and validation splits: from their own files or Hub splits, or a validation split held
out of the training data by context (--validation_split_percentage)."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter

from squad_lora.data import LoadStats, as_dataset, load_split_rows, load_squad_split
from squad_lora.errors import SquadDataError

logger = logging.getLogger(__name__)


def split_by_context(rows: list[dict], percentage: float, seed: int, source: str) -> tuple[list, list, dict]:
    """(train rows, validation rows, what went each side) of one training set, no context on both sides.

    The distinct contexts, shuffled by seed, go to validation one by one until it holds at least percentage % of
    the questions (rounded up): the percentage counts questions, and validation holds fewer than one context's
    questions beyond it. Each side keeps the rows in the file's order. At least one context must stay for training.
    """
    questions_per_context = Counter(row["context"] for row in rows)
    contexts = list(questions_per_context)  # in the order the file first gives them
    random.Random(seed).shuffle(contexts)
    wanted, held_out, num_held_out = math.ceil(len(rows) * percentage / 100), set(), 0
    for context in contexts:
        if num_held_out >= wanted:
            break
        held_out.add(context)
        num_held_out += questions_per_context[context]
    if len(held_out) == len(contexts):
        raise SquadDataError(
            f"{source}: --validation_split_percentage {percentage:g} leaves nothing to train on: its {len(rows)} "
            f"questions have {len(contexts)} distinct context(s), and all of a context's questions go to one side"
        )
    train = [row for row in rows if row["context"] not in held_out]
    validation = [row for row in rows if row["context"] in held_out]
    counts = {
        "percentage": percentage,
        "seed": seed,
        "train": {"questions": len(train), "contexts": len(contexts) - len(held_out)},
        "validation": {"questions": len(validation), "contexts": len(held_out)},
    }
    logger.info(
        "%s: held out %d of %d questions (%d of %d contexts) for validation (--validation_split_percentage %g, "
        "seed %d)",
        source,
        len(validation),
        len(rows),
        len(held_out),
        len(contexts),
        percentage,
        seed,
    )
    return train, validation, counts


def load_training_splits(data_args, seed: int, evaluates: bool) -> tuple[dict[str, tuple], dict | None]:
    """run_qa_lora.py's data: ({"train": (dataset, LoadStats)}, plus "validation" where the run evaluates; what
    --validation_split_percentage held out, for run_summary.json, or None).

    The validation questions come from --validation_file or the Hub's --eval_split, or, with
    --validation_split_percentage, from the training data split by context (split_by_context); each side is then
    cut to its max_*_samples. The training side's LoadStats count what loading the whole file skipped.
    """
    percentage = data_args.validation_split_percentage
    if percentage is None:
        splits = {"train": load_squad_split(data_args, "train")}
        if evaluates:
            splits["validation"] = load_squad_split(data_args, "validation")
        return splits, None
    rows, stats = load_split_rows(data_args, "train")
    train, validation, held_out = split_by_context(
        rows, percentage, seed, data_args.train_file or data_args.dataset_name
    )
    splits = {"train": (as_dataset(train, data_args.max_train_samples), stats)}
    if evaluates:
        validation_stats = LoadStats(
            num_examples=len(validation), version=stats.version, version_inferred=stats.version_inferred
        )
        splits["validation"] = (as_dataset(validation, data_args.max_eval_samples), validation_stats)
    return splits, held_out
