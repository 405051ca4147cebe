"""95% intervals for EM/F1: a percentile bootstrap over questions, stratified (by article fold), paired across
settings by taking the per-question difference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NUM_RESAMPLES = 2000


def bootstrap_mean(
    strata: Sequence[np.ndarray | Sequence], num_resamples: int = NUM_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean per-question score over every stratum's questions and its 95% interval.

    Each stratum is an array of per-question scores, one row per training seed (seeds x questions; a flat list is
    one seed). For a paired difference pass one setting's scores minus the other's, on the same questions and
    seeds. Every resample draws, within each stratum, its questions and its seeds with replacement, so the
    interval holds both the luck of the questions and of the training run, and no stratum's share moves.
    Strata weigh by their number of questions.
    """
    arrays = [np.atleast_2d(np.asarray(scores, dtype=float)) for scores in strata]
    if not arrays or any(scores.size == 0 for scores in arrays):
        raise ValueError("bootstrap_mean needs at least one question in every stratum")
    rng = np.random.default_rng(seed)
    total = sum(scores.shape[1] for scores in arrays)
    draws = np.zeros(num_resamples)
    for scores in arrays:
        num_seeds, num_questions = scores.shape
        questions = rng.integers(num_questions, size=(num_resamples, num_questions))
        seeds = rng.integers(num_seeds, size=(num_resamples, num_seeds))
        per_seed = scores[:, questions].mean(axis=2).T  # (resamples, seeds)
        draws += np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1) * (num_questions / total)
    point = sum(scores.mean(axis=0).sum() for scores in arrays) / total
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(point), float(low), float(high)


def format_interval(point: float, low: float, high: float, signed: bool = False) -> str:
    """'58.4 [55.1, 61.6]' (or '+2.0 [-0.5, +4.5]' for a difference)."""
    number = "{:+.1f}" if signed else "{:.1f}"
    return f"{number.format(point)} [{number.format(low)}, {number.format(high)}]"
