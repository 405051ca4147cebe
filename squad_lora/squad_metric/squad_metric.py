"""SQuAD exact match and F1 as an `evaluate` metric, scored by the official v1.1 and v2.0 rules.

    import evaluate
    squad = evaluate.load("squad_lora/squad_metric")                 # SQuAD v1.1 rules (from the checkout;
    squad_v2 = evaluate.load("squad_lora/squad_metric", "squad_v2")  # installed: squad_lora.scoring.load_metric)
    squad.compute(
        predictions=[{"id": "q1", "prediction_text": "the Broncos"}],
        references=[{"id": "q1", "answers": {"text": ["Denver Broncos", "Broncos"], "answer_start": [177, 184]}}],
    )  # {'exact_match': 100.0, 'f1': 100.0}

Inputs and outputs are those of the Hub's `squad` and `squad_v2` metrics, which cannot be fetched
offline; this file re-implements the rules of the official evaluation scripts
(https://rajpurkar.github.io/SQuAD-explorer/), so the numbers are the same.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import datasets
import evaluate

# What a prediction_text of None (no prediction) travels as through evaluate, which only takes strings;
# a NUL byte never occurs in generated text.
NO_PREDICTION = "\x00<no prediction>"

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of EMNLP",
    year = "2016",
}
@inproceedings{rajpurkar-etal-2018-know,
    title = "Know What You Don{'}t Know: Unanswerable Questions for {SQ}u{AD}",
    author = "Rajpurkar, Pranav and Jia, Robin and Liang, Percy",
    booktitle = "Proceedings of ACL",
    year = "2018",
}
"""

_DESCRIPTION = """\
Exact match and bag-of-tokens F1 between a predicted answer and the gold answers of a SQuAD question,
after normalization (lowercase; ASCII punctuation, the articles a/an/the and extra whitespace removed),
each the maximum over the gold answers and averaged over the questions as a percentage. Config
"squad" (the default) follows the official v1.1 script; "squad_v2" the official v2.0 script, where an
unanswerable question's gold is the empty answer.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str}; squad_v2 also takes an optional
        "no_answer_probability" (float). A prediction_text of None counts as no prediction.
    references: list of {"id": str, "answers": {"text": [str, ...], "answer_start": [int, ...]}}
        (squad_v2: empty lists for an unanswerable question).
    no_answer_threshold: squad_v2 only: a question whose no_answer_probability is above this is
        scored as answered with the empty answer (the official script's --na-prob-thresh, default 1.0).
Returns:
    squad: exact_match and f1, in percent.
    squad_v2: exact, f1, total, then HasAns_exact/_f1/_total and NoAns_exact/_f1/_total for the
        questions with and without an answer (each where there are any), and, when any
        no_answer_probability is given, best_exact, best_exact_thresh, best_f1 and best_f1_thresh.
    Predictions and references are matched by id. A reference without a prediction scores 0 and
    counts in the total; predictions for ids not in the references are ignored.
"""

CONFIG_NAMES = ("squad", "squad_v2")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_DROP_PUNCTUATION = str.maketrans("", "", string.punctuation)  # ASCII only: the official rule


def normalize_answer(text: str) -> str:
    """The official normalization: lowercase, drop ASCII punctuation and a/an/the, collapse whitespace."""
    text = text.lower().translate(_DROP_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction_tokens: list[str], gold_tokens: list[str], version_2: bool = False) -> float:
    """Bag-of-tokens F1 of two normalized answers.

    Under v2.0 an empty answer scores 1 against an empty answer and 0 against any other; under v1.1
    empty answers share no token and score 0.
    """
    if version_2 and (not prediction_tokens or not gold_tokens):
        return float(prediction_tokens == gold_tokens)
    num_same = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def question_scores(prediction: str, gold_answers: list[str], version_2: bool = False) -> tuple[int, float]:
    """(exact match, F1) of one prediction: each the maximum over the gold answers.

    Under v2.0, gold answers that normalize to nothing are dropped and a question left without one
    has the empty answer as its gold.
    """
    normalized_prediction = normalize_answer(prediction)
    prediction_tokens = normalized_prediction.split()
    golds = [normalize_answer(gold) for gold in gold_answers]
    if version_2:
        golds = [gold for gold in golds if gold] or [""]
    if not golds:
        raise ValueError("a question without a gold answer can only be scored by the SQuAD v2.0 rules (squad_v2)")
    exact = max(int(normalized_prediction == gold) for gold in golds)
    f1 = max(token_f1(prediction_tokens, gold.split(), version_2) for gold in golds)
    return exact, f1


def squad_v1_scores(references: list[tuple[str, list[str]]], predictions: dict[str, str | None]) -> dict:
    """exact_match and f1 (percent) of the official v1.1 script.

    Args:
        references: (id, gold answer texts) per question, in dataset order.
        predictions: answer per id; a missing id or None scores 0.
    """
    if not references:
        raise ValueError("no references to score")
    # A running sum like the official script's loop: sum() rounds differently from Python 3.12 on.
    exact_match, f1 = 0, 0.0
    for qid, gold_answers in references:
        prediction = predictions.get(qid)
        if prediction is None:
            continue
        exact, question_f1 = question_scores(prediction, gold_answers)
        exact_match += exact
        f1 += question_f1
    total = len(references)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def _percentages(exact: dict, f1: dict, qids: list[str]) -> tuple[float, float, int]:
    # sum() over a generator, as the official v2.0 script's make_eval_dict
    total = len(qids)
    return 100.0 * sum(exact[k] for k in qids) / total, 100.0 * sum(f1[k] for k in qids) / total, total


def _best_threshold(
    predictions: dict, scores: dict, no_answer_probabilities: dict, has_answer: dict
) -> tuple[float, float]:
    """The official find_best_thresh: the score when every question whose no-answer probability is
    above the threshold is answered empty, at the best threshold; returns (score in percent, threshold)."""
    # At a threshold below every probability each answered question is left empty: right exactly for
    # the unanswerable ones (that have a prediction: a missing one scores 0 whatever the threshold).
    score = sum(1 for qid, has in has_answer.items() if not has and predictions.get(qid) is not None)
    best_score, best_threshold = score, 0.0
    for qid in sorted(no_answer_probabilities, key=lambda k: no_answer_probabilities[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            score += scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best_score:
            best_score, best_threshold = score, no_answer_probabilities[qid]
    return 100.0 * best_score / len(scores), best_threshold


def squad_v2_scores(
    references: list[tuple[str, list[str]]],
    predictions: dict[str, str | None],
    no_answer_probabilities: dict[str, float] | None = None,
    no_answer_threshold: float = 1.0,
) -> dict:
    """The official v2.0 script's result (see _KWARGS_DESCRIPTION), a missing prediction scoring 0.

    Args:
        references: (id, gold answer texts) per question in dataset order; no texts: unanswerable.
        predictions: answer per id ("" for no answer); a missing id or None scores 0.
        no_answer_probabilities: per predicted id; given, the best_* thresholds are added.
    """
    if not references:
        raise ValueError("no references to score")
    has_answer = {qid: bool(gold_answers) for qid, gold_answers in references}
    exact_raw, f1_raw = {}, {}
    for qid, gold_answers in references:
        prediction = predictions.get(qid)
        exact_raw[qid], f1_raw[qid] = (
            (0, 0.0) if prediction is None else question_scores(prediction, gold_answers, True)
        )
    exact, f1 = dict(exact_raw), dict(f1_raw)
    for qid, probability in (no_answer_probabilities or {}).items():
        if qid in exact and predictions.get(qid) is not None and probability > no_answer_threshold:
            exact[qid] = f1[qid] = float(not has_answer[qid])

    result = dict(zip(("exact", "f1", "total"), _percentages(exact, f1, list(exact))))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid, has in has_answer.items() if has is wanted]
        if qids:
            values = _percentages(exact, f1, qids)
            result.update({f"{prefix}_{key}": value for key, value in zip(("exact", "f1", "total"), values)})
    if no_answer_probabilities:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(
            predictions, exact_raw, no_answer_probabilities, has_answer
        )
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(
            predictions, f1_raw, no_answer_probabilities, has_answer
        )
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SquadLora(evaluate.Metric):
    """SQuAD v1.1 (config "squad", the default) or v2.0 ("squad_v2") exact match and F1."""

    def _info(self):
        if self.config_name not in CONFIG_NAMES + ("default",):
            raise ValueError(f"unknown config {self.config_name!r}: use one of {', '.join(CONFIG_NAMES)}")
        prediction = {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")}
        if self.config_name == "squad_v2":
            prediction["no_answer_probability"] = datasets.Value("float32")
        answers = datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")})
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": prediction, "references": {"id": datasets.Value("string"), "answers": answers}}
            ),
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _with_optional_fields(self, predictions):
        """Make every prediction carry every feature, as evaluate requires: a prediction_text of None (no
        prediction for that question) becomes NO_PREDICTION, a missing no_answer_probability None."""
        if predictions is None:
            return None
        filled = []
        for p in predictions:
            if isinstance(p, dict):
                if p.get("prediction_text", "") is None:
                    p = {**p, "prediction_text": NO_PREDICTION}
                if self.config_name == "squad_v2" and "no_answer_probability" not in p:
                    p = {**p, "no_answer_probability": None}
            filled.append(p)
        return filled

    # evaluate appends the inputs description to these two docstrings: they must exist
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of predictions and references."""
        super().add_batch(predictions=self._with_optional_fields(predictions), references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one prediction and its reference."""
        if prediction is not None:
            prediction = self._with_optional_fields([prediction])[0]
        super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(self, predictions, references, no_answer_threshold: float = 1.0):
        answers = {
            p["id"]: None if p["prediction_text"] == NO_PREDICTION else p["prediction_text"] for p in predictions
        }
        gold = [(ref["id"], ref["answers"]["text"]) for ref in references]
        if self.config_name != "squad_v2":
            return squad_v1_scores(gold, answers)
        probabilities = {p["id"]: p.get("no_answer_probability") for p in predictions}
        if all(value is None for value in probabilities.values()):
            probabilities = None
        else:
            probabilities = {qid: value or 0.0 for qid, value in probabilities.items()}
        return squad_v2_scores(gold, answers, probabilities, no_answer_threshold)
