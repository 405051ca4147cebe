"""Long contexts at inference: answered in overlapping windows, as Hugging Face's run_qa.py reads them.

A context longer than plan.max_context_tokens tokens is split into windows of that many tokens, each starting
plan.doc_stride tokens before the one before it ended: the tokenizer's return_overflowing_tokens with
stride=doc_stride, which is how run_qa.py passes its --doc_stride (the last window may be shorter). Every question
of the context is asked of every window, and each window is a context of its own for sharing (its keys and values
computed once for all of its questions). Per question and sample, the answer kept is the one of the most confident
window (decoding.answer_confidences, from the raw logits); the answer is '' (no answer) only where every window's
is. Contexts no longer than a window are answered as they are. Training cuts a context around its answer instead
(prompt.encode_prompt).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

WINDOW_KEYS = ("window", "windows")  # what a split context's examples and prediction rows say of their window


def window_spans(num_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Token ranges [lo, hi) of the windows of a context of num_tokens tokens: one where it fits a window, else
    1 + ceil((num_tokens - window) / (window - stride)) of `window` tokens, each overlapping the one before by
    `stride` tokens, the last ending with the context."""
    spans = [(0, min(window, num_tokens))]
    while spans[-1][1] < num_tokens:
        lo = spans[-1][1] - stride
        spans.append((lo, min(lo + window, num_tokens)))
    return spans


def split_long_contexts(examples: list[dict], tokenizer, plan) -> list[dict]:
    """The examples as they are asked: one whose context is longer than the plan's window once per window, its
    context that window's text, with "window" (the window's index) and "windows" (how many the context has); the
    others as they are. Each context is tokenized once, whatever its number of questions."""
    windows_of: dict[str, list[str]] = {}
    asked = []
    for example in examples:
        context = example["context"]
        if context not in windows_of:
            text = context.strip()  # as the prompt template writes it
            offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            spans = window_spans(len(offsets), plan.max_context_tokens, plan.doc_stride)
            # none for a context that fits one window; each stripped as the template writes a context
            windows_of[context] = (
                [] if len(spans) == 1 else [text[offsets[lo][0] : offsets[hi - 1][1]].strip() for lo, hi in spans]
            )
        windows = windows_of[context]
        asked += [
            {**example, "context": window, "window": k, "windows": len(windows)} for k, window in enumerate(windows)
        ]
        if not windows:
            asked.append(example)
    split = [windows for windows in windows_of.values() if windows]
    if split:
        logger.info(
            "%d context(s) longer than %d tokens answered in %d windows overlapping by %d tokens (--doc_stride)",
            len(split),
            plan.max_context_tokens,
            sum(map(len, split)),
            plan.doc_stride,
        )
    return asked


def best_window_rows(rows: list[dict]) -> list[dict]:
    """One prediction row per question and sample from the rows of its windows (decoding.prediction_rows' of the
    examples split_long_contexts made), in their order. The row kept is the most confident window's among those
    that answer (prediction not ''); where every window abstains, the most confident one's, with window None. Its
    no-answer probability is the least of its windows' (run_qa.py keeps a context's least null score too). Rows of
    contexts answered whole pass as they are."""
    by_question: dict[tuple, list[dict]] = {}
    for row in rows:
        by_question.setdefault((row["id"], row["sample"]) if "window" in row else (id(row),), []).append(row)
    kept = []
    for group in by_question.values():
        if "window" not in group[0]:  # a context answered whole
            kept += group
            continue
        answering = [row for row in group if row["prediction"] != ""]
        best = max(answering or group, key=lambda row: row["confidence"])
        kept.append(
            {
                **best,
                "no_answer_probability": min(row["no_answer_probability"] for row in group),
                "window": best["window"] if answering else None,
            }
        )
    return kept
