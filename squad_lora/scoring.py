"""SQuAD scoring: the EM/F1 metric, prediction files (written and read here), the strategy comparison.

EM and F1 come from the `evaluate` module in squad_lora/squad_metric (the official v1.1 / v2.0 rules).
Predictions are the official `{id: answer}` JSON, or the JSON Lines generate.py writes, one line
per sample: {"id": str, "strategy": str, "sample": int, "prediction": str} ("" = no answer, v2), and the
"confidence" generate.py adds (not needed to score).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import logging
import math
import os
import statistics
from collections.abc import Iterable

from squad_lora import outputs
from squad_lora.args import EvalDataArguments
from squad_lora.data import infer_version, load_squad_file, load_squad_split, read_text_file
from squad_lora.errors import PredictionsError, SquadDataError, first_line, raise_problems
from squad_lora.readers import parse_json
from squad_lora.squad_metric.squad_metric import normalize_answer

logger = logging.getLogger(__name__)

METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "squad_metric")
PREDICTION_PREFIX = "predictions_"
NA_PROB_PREFIX = "na_prob_"
MAX_IDS_SHOWN = 5


# ---------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------


@functools.cache
def load_metric(version_2: bool = False):
    """The SQuAD metric, v1.1 or v2.0 rules: the `evaluate` module in squad_lora/squad_metric, loaded by path.

    METRIC_PATH is that folder beside this file, so an installed package loads its own copy, wherever it lies.

    Cached: training calls it at every evaluation. Arrow buffers stay in memory, not in ~/.cache.
    """
    import evaluate

    return evaluate.load(METRIC_PATH, "squad_v2" if version_2 else "squad", keep_in_memory=True)


def is_version_2(examples: Iterable[dict], declared_version: str | None = None) -> bool:
    """Whether to score by the v2.0 rules: a declared version of 2 or more (LoadStats.version: a file's version
    field, or the squad_v2 dataset), or any unanswerable question (no gold answer)."""
    if declared_version:
        try:
            if float(str(declared_version).lstrip("vV")) >= 2:
                return True
        except ValueError:
            logger.warning("unreadable SQuAD version %r: judging the version from the questions", declared_version)
    return infer_version(examples) == "v2.0"


def prediction_coverage(example_ids: list[str], predicted_ids: Iterable[str]) -> tuple[list[str], list[str]]:
    """(ids without a prediction, predicted ids not in the examples), each in order."""
    known = set(example_ids)
    predicted = set(predicted_ids)
    missing = [qid for qid in example_ids if qid not in predicted]
    unknown = [qid for qid in dict.fromkeys(predicted_ids) if qid not in known]
    return missing, unknown


def _shown_ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_IDS_SHOWN])
    return shown + (", ..." if len(ids) > MAX_IDS_SHOWN else "")


def warn_coverage(missing: list[str], unknown: list[str], num_questions: int, source: str = "predictions") -> None:
    """Log how many questions have no prediction (they score 0) and which ids are not in the data."""
    if missing:
        logger.warning(
            "%s: %d of %d questions have no prediction and score 0 (ids %s)",
            source,
            len(missing),
            num_questions,
            _shown_ids(missing),
        )
    if unknown:
        logger.warning(
            "%s: %d predicted ids are not in the dataset and are ignored (ids %s)",
            source,
            len(unknown),
            _shown_ids(unknown),
        )


def _metric_inputs(
    examples: list[dict], predictions: dict[str, str], no_answer_probabilities: dict | None = None
) -> dict:
    rows = [{"id": ex["id"], "prediction_text": predictions.get(ex["id"])} for ex in examples]
    if no_answer_probabilities is not None:
        for row in rows:
            row["no_answer_probability"] = no_answer_probabilities.get(row["id"])
    return {"predictions": rows, "references": [{"id": ex["id"], "answers": ex["answers"]} for ex in examples]}


def score_predictions(
    examples: Iterable[dict],
    predictions: dict[str, str],
    version_2: bool | None = None,
    source: str = "predictions",
    no_answer_probabilities: dict[str, float] | None = None,
    no_answer_threshold: float = 1.0,
) -> dict:
    """EM and F1 of `{id: answer}` predictions, through the metric.

    Args:
        examples: SQuAD rows (squad_lora.data.s flat layout: id, answers{text, answer_start}, ...).
        version_2: v2.0 rules (keys exact, f1, total, HasAns_*, NoAns_*) or v1.1 (exact_match, f1);
            None: v2.0 when any question is unanswerable.
        source: names the predictions in the warnings.
        no_answer_probabilities: v2.0 only, the official na_prob per id: adds best_exact, best_f1 and their
            thresholds; no_answer_threshold: above it a question counts as answered empty (the official -t).

    Returns:
        The metric's result. Questions without a prediction score 0, with a warning giving their
        count; predicted ids that are not in the examples are reported and ignored.
    """
    examples = list(examples)
    if version_2 is None:
        version_2 = is_version_2(examples)
    warn_coverage(*prediction_coverage([ex["id"] for ex in examples], predictions), len(examples), source)
    if no_answer_probabilities is not None and not version_2:
        raise PredictionsError("no-answer probabilities are for the SQuAD v2.0 rules: these questions are v1.1")
    inputs = _metric_inputs(examples, predictions, no_answer_probabilities)
    if not version_2:
        return load_metric(False).compute(**inputs)
    return load_metric(True).compute(**inputs, no_answer_threshold=no_answer_threshold)


def scored_answers(examples: list[dict], predictions: dict[str, str], version_2: bool | None = None) -> list[dict]:
    """Each question with its answer and its own score, in the examples' order: {"id", "question", "answers" (the
    gold texts), "prediction" (None: the question had none), "exact_match" (0 or 1), "f1" (0 to 1)}. The metric's
    per-question rule (question_scores), so that score_predictions' exact_match and f1 (without no-answer
    probabilities) are these means x 100."""
    from squad_lora.squad_metric.squad_metric import question_scores

    if version_2 is None:
        version_2 = is_version_2(examples)
    rows = []
    for ex in examples:
        golds, prediction = list(ex["answers"]["text"]), predictions.get(ex["id"])
        exact, f1 = (0, 0.0) if prediction is None else question_scores(prediction, golds, version_2)
        rows.append(
            {
                "id": ex["id"],
                "question": ex["question"],
                "answers": golds,
                "prediction": prediction,
                "exact_match": exact,
                "f1": f1,
            }
        )
    return rows


# ---------------------------------------------------------------------------
# Prediction files
# ---------------------------------------------------------------------------


def prediction_paths(output_dir: str, strategy: str) -> tuple[str, str]:
    """predictions_<strategy>.json (the official {id: answer}) and .jsonl (every sample) in output_dir."""
    stem = os.path.join(output_dir, f"{PREDICTION_PREFIX}{strategy}")
    return f"{stem}.json", f"{stem}.jsonl"


def na_prob_path(output_dir: str, strategy: str) -> str:
    """na_prob_<strategy>.json: the official SQuAD v2 {id: no-answer probability} beside the predictions."""
    return os.path.join(output_dir, f"{NA_PROB_PREFIX}{strategy}.json")


def write_predictions(results: dict[str, list[dict]], output_dir: str, version_2: bool = False) -> list[str]:
    """Write both prediction files per strategy from answer_questions' rows (on SQuAD v2 also the na_prob file
    of the first samples, for evaluate_squad.py --na_prob_file); returns the paths written."""
    paths = []
    for strategy, rows in results.items():
        json_path, jsonl_path = prediction_paths(output_dir, strategy)
        first = [row for row in rows if row["sample"] == 0]
        outputs.write_json(json_path, {row["id"]: row["prediction"] for row in first})
        outputs.write_jsonl(jsonl_path, rows)
        paths += [json_path, jsonl_path]
        if version_2:
            paths.append(na_prob_path(output_dir, strategy))
            outputs.write_json(paths[-1], {row["id"]: row["no_answer_probability"] for row in first})
    return paths


def existing_prediction_files(output_dir: str) -> list[str]:
    """The prediction (and na_prob) files already in output_dir (any strategy)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(
        path
        for prefix in (PREDICTION_PREFIX, NA_PROB_PREFIX)
        for path in glob.glob(os.path.join(output_dir, f"{prefix}*.json*"))
    )


def read_na_probs(path: str, predictions: dict[str, str]) -> dict[str, float]:
    """The official na_prob file ({id: probability that the question has no answer}) for these predictions;
    every predicted id needs a number (the official script stops with a KeyError where one is missing)."""
    try:
        probabilities = parse_json(read_text_file(path, PredictionsError), path, PredictionsError)
    except json.JSONDecodeError as e:
        raise PredictionsError(f"{path}: not JSON ({e}); expected the official {{id: no-answer probability}}") from None
    if not isinstance(probabilities, dict):
        raise PredictionsError(
            f"{path}: expected a JSON object {{id: no-answer probability}}, found a {type(probabilities).__name__}"
        )
    # json reads NaN and Infinity, which would order the official threshold search arbitrarily
    bad = [qid for qid, value in probabilities.items() if not _finite_number(value)]
    if bad:
        raise PredictionsError(
            f"{path}: {len(bad)} no-answer probabilities are not finite numbers (ids {_shown_ids(bad)}; "
            f"id {bad[0]}: {probabilities[bad[0]]!r})"
        )
    missing = [qid for qid in predictions if qid not in probabilities]
    if missing:
        raise PredictionsError(
            f"{path}: {len(missing)} predicted questions have no no-answer probability (ids {_shown_ids(missing)}): "
            "give the na_prob file written with these predictions"
        )
    extra = [qid for qid in probabilities if qid not in predictions]
    if extra:
        logger.warning(
            "%s: %d ids have a no-answer probability but no prediction (ids %s): ignored, as the official script "
            "ignores them",
            path,
            len(extra),
            _shown_ids(extra),
        )
    return {qid: float(value) for qid, value in probabilities.items()}


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def strategy_from_path(path: str) -> str:
    """predictions_<strategy>.jsonl -> <strategy>; any other file name -> its stem."""
    stem = os.path.basename(path).split(".", 1)[0]
    return stem[len(PREDICTION_PREFIX) :] if stem.startswith(PREDICTION_PREFIX) and stem != PREDICTION_PREFIX else stem


def _official_prediction_rows(doc, path: str, strategy: str) -> list[dict]:
    if isinstance(doc, dict) and "data" in doc and isinstance(doc["data"], list):
        raise PredictionsError(
            f"{path}: this is a SQuAD data file, not predictions; the data file comes first: "
            "python evaluate_squad.py DATA_FILE PREDICTION_FILE"
        )
    if not isinstance(doc, dict):
        raise PredictionsError(
            f"{path}: expected the official {{question id: answer}} JSON object or JSON Lines, "
            f"got a JSON {type(doc).__name__}"
        )
    bad = [qid for qid, answer in doc.items() if not isinstance(answer, str)]
    if bad:
        raise PredictionsError(
            f"{path}: every answer must be a string ({len(bad)} are not, e.g. id {bad[0]!r}: {doc[bad[0]]!r})"
        )
    return [{"id": qid, "strategy": strategy, "sample": 0, "prediction": answer} for qid, answer in doc.items()]


def _jsonl_prediction_row(line: str, path: str, number: int, strategy: str) -> dict:
    where = f"{path}: line {number}"
    try:
        row = parse_json(line, where, PredictionsError)
    except json.JSONDecodeError as e:
        raise PredictionsError(
            f"{where}: not JSON ({e.msg}); expected the official {{id: answer}} JSON or JSON Lines "
            '{"id": ..., "prediction": ...}'
        ) from e
    if not isinstance(row, dict):
        raise PredictionsError(f"{where}: expected an object with id and prediction, got a JSON {type(row).__name__}")
    problems = []
    if not isinstance(row.get("id"), str):
        problems.append("'id' must be a string")
    if not isinstance(row.get("prediction"), str):
        problems.append("'prediction' must be a string")
    sample = row.get("sample", 0)
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        problems.append("'sample' must be an integer >= 0")
    if not isinstance(row.get("strategy", strategy), str):
        problems.append("'strategy' must be a string")
    raise_problems(problems, PredictionsError, f"{where}: ")
    return {
        "id": row["id"],
        "strategy": row.get("strategy", strategy),
        "sample": sample,
        "prediction": row["prediction"],
    }


def read_prediction_rows(path: str) -> list[dict]:
    """Every prediction in a file as {"id", "strategy", "sample", "prediction"} rows.

    The official JSON gives sample 0 of the strategy named by the file (predictions_<strategy>.json);
    JSON Lines rows without "strategy" or "sample" get the same defaults.
    """
    text = read_text_file(path, PredictionsError)
    strategy = strategy_from_path(path)
    try:
        doc = parse_json(text, path, PredictionsError)
    except json.JSONDecodeError:
        doc = None
    if doc is not None and not (isinstance(doc, dict) and {"id", "prediction"} <= doc.keys()):  # a 1-line JSONL
        return _official_prediction_rows(doc, path, strategy)
    # split at "\n" only: outputs.write_jsonl leaves U+2028 and NEL (\x85) unescaped, and splitlines() splits there
    lines = [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    return [_jsonl_prediction_row(line, path, number, strategy) for number, line in lines]


def group_predictions(rows: Iterable[dict], source: str = "predictions") -> dict[str, list[dict[str, str]]]:
    """{strategy: [{id: answer} for each sample, by sample number]}, strategies in order of appearance.

    A repeated (strategy, sample, id) keeps the last answer, with a warning.
    """
    grouped: dict[str, dict[int, dict[str, str]]] = {}
    num_repeated = 0
    for row in rows:
        answers = grouped.setdefault(row["strategy"], {}).setdefault(row["sample"], {})
        num_repeated += row["id"] in answers
        answers[row["id"]] = row["prediction"]
    if num_repeated:
        logger.warning(
            "%s: %d predictions repeat a (strategy, sample, id) already seen; the last one is kept",
            source,
            num_repeated,
        )
    return {strategy: [samples[k] for k in sorted(samples)] for strategy, samples in grouped.items()}


def read_predictions(path: str) -> dict[str, str]:
    """The {id: answer} predictions of a file to score: the first sample of its one strategy."""
    sets = group_predictions(read_prediction_rows(path), path)
    if not sets:
        raise PredictionsError(f"{path}: holds no predictions ({{}}): nothing to score")
    if len(sets) > 1:
        raise PredictionsError(
            f"{path}: holds the strategies {', '.join(sets)}; score one per file, or compare them with --compare {path}"
        )
    (samples,) = sets.values()
    if len(samples) > 1:
        logger.info("%s: %d samples per question; scoring the first (compare them with --compare)", path, len(samples))
    return samples[0]


def find_prediction_files(paths: list[str]) -> list[str]:
    """Expand directories to the predictions_*.jsonl files in them (else predictions_*.json)."""
    files = []
    for path in paths:
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = sorted(glob.glob(os.path.join(path, f"{PREDICTION_PREFIX}*.jsonl"))) or sorted(
            glob.glob(os.path.join(path, f"{PREDICTION_PREFIX}*.json"))
        )
        if not found:
            raise PredictionsError(f"{path}: no {PREDICTION_PREFIX}<strategy>.jsonl or .json files in this directory")
        files.extend(found)
    return files


def read_prediction_sets(paths: list[str]) -> dict[str, list[dict[str, str]]]:
    """The prediction sets of several files (or directories) for compare_strategies."""
    rows = []
    for path in find_prediction_files(paths):
        file_rows = read_prediction_rows(path)
        if not file_rows:
            raise PredictionsError(f"{path}: holds no predictions ({{}}): remove it or generate it again")
        rows += file_rows
    return group_predictions(rows, ", ".join(paths))


# ---------------------------------------------------------------------------
# The decoding-strategy comparison: precision (EM/F1) versus diversity
# ---------------------------------------------------------------------------


def distinct_n(token_lists: list[list[str]], n: int) -> float:
    """Distinct n-grams / all n-grams over the answers (n-grams do not cross answers); 0 without any."""
    ngrams = [tuple(tokens[i : i + n]) for tokens in token_lists for i in range(len(tokens) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def answer_diversity(example_ids: list[str], samples: list[dict[str, str]]) -> dict:
    """distinct_1 / distinct_2 over the normalized tokens of all answers, answers_per_question (different
    normalized answers per answered question, averaged) and answer_length (words per raw answer)."""
    answers = {qid: [sample[qid] for sample in samples if qid in sample] for qid in example_ids}
    all_answers = [answer for per_question in answers.values() for answer in per_question]
    tokens = [normalize_answer(answer).split() for answer in all_answers]
    different = [len({normalize_answer(a) for a in per_question}) for per_question in answers.values() if per_question]
    return {
        "distinct_1": distinct_n(tokens, 1),
        "distinct_2": distinct_n(tokens, 2),
        "answers_per_question": statistics.fmean(different) if different else 0.0,
        "answer_length": statistics.fmean(len(a.split()) for a in all_answers) if all_answers else 0.0,
    }


def _warn_sample_coverage(strategy: str, example_ids: list[str], samples: list[dict[str, str]]) -> int:
    """Log the question-sample pairs without a prediction and the unknown ids; returns the first count."""
    num_missing, unknown = 0, set()
    for sample in samples:
        missing, unknown_ids = prediction_coverage(example_ids, sample)
        num_missing += len(missing)
        unknown.update(unknown_ids)
    if num_missing:
        logger.warning(
            "%s: %d of %d question-sample pairs have no prediction and score 0",
            strategy,
            num_missing,
            len(example_ids) * len(samples),
        )
    if unknown:
        logger.warning(
            "%s: %d predicted ids are not in the dataset and are ignored (ids %s)",
            strategy,
            len(unknown),
            _shown_ids(sorted(unknown)),
        )
    return num_missing


def compare_strategies(
    examples: Iterable[dict], prediction_sets: dict[str, list[dict[str, str]]], version_2: bool | None = None
) -> list[dict]:
    """One row per strategy: precision versus diversity of its answers.

    Args:
        examples: the SQuAD rows the predictions answer.
        prediction_sets: {strategy: [{id: answer} per sample]}; greedy and beam have one sample.
        version_2: as in score_predictions.

    Returns:
        Rows with strategy, num_samples, exact_match and f1 (the mean over samples, percent) and
        their exact_match_std / f1_std (sample standard deviation; None for one sample), the
        answer_diversity keys, and num_missing (question-sample pairs without a prediction, scored 0).
    """
    examples = list(examples)
    if version_2 is None:
        version_2 = is_version_2(examples)
    example_ids = [ex["id"] for ex in examples]
    metric = load_metric(version_2)
    rows = []
    for strategy, samples in prediction_sets.items():
        num_missing = _warn_sample_coverage(strategy, example_ids, samples)
        scores = [metric.compute(**_metric_inputs(examples, sample)) for sample in samples]
        exact_match, exact_match_std = _mean_std([s["exact" if version_2 else "exact_match"] for s in scores])
        f1, f1_std = _mean_std([s["f1"] for s in scores])
        rows.append(
            {
                "strategy": strategy,
                "num_samples": len(samples),
                "exact_match": exact_match,
                "exact_match_std": exact_match_std,
                "f1": f1,
                "f1_std": f1_std,
                **answer_diversity(example_ids, samples),
                "num_missing": num_missing,
            }
        )
    return rows


def _with_std(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def render_comparison_markdown(rows: list[dict]) -> str:
    """The comparison as a markdown table (EM/F1 of sampled strategies: mean ± std over samples)."""
    lines = [
        "| strategy | samples | EM | F1 | distinct-1 | distinct-2 | answers/question | words/answer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['strategy']} | {row['num_samples']} | {_with_std(row['exact_match'], row['exact_match_std'])} "
            f"| {_with_std(row['f1'], row['f1_std'])} | {row['distinct_1']:.3f} | {row['distinct_2']:.3f} "
            f"| {row['answers_per_question']:.2f} | {row['answer_length']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def load_scored_examples(data_args: EvalDataArguments, version_2_with_negative: bool) -> tuple[list[dict], bool, str]:
    """The questions to score against, whether to use the v2.0 rules, and the data's name."""
    if data_args.validation_file:
        # every question counts, whatever its answer_start: the official scripts never read it
        examples, stats = load_squad_file(
            data_args.validation_file, data_args.strict, check_answers=False, columns=data_args.column_names()
        )
        version, source = stats.version, data_args.validation_file
    else:
        try:
            # every question: max_eval_samples cuts below, once the SQuAD version is known from all of them
            dataset, stats = load_squad_split(
                dataclasses.replace(data_args, max_eval_samples=None), check_answers=False
            )
        except SquadDataError as e:
            if e.__cause__ is None:  # the dataset loaded but is unusable: the message says why
                raise
            raise SquadDataError(
                f"{first_line(e)}\nOffline? Give a local SQuAD file first: "
                "python evaluate_squad.py dev-v1.1.json PREDICTION_FILE"
            ) from e
        examples, version = list(dataset), stats.version
        source = f"{data_args.dataset_name}[{data_args.eval_split}]"
    version_2 = version_2_with_negative or is_version_2(examples, version)
    if data_args.max_eval_samples is not None:
        examples = examples[: data_args.max_eval_samples]
    logger.info(
        "%s: %d questions, scored by the SQuAD %s rules", source, len(examples), "v2.0" if version_2 else "v1.1"
    )
    return examples, version_2, source


def check_ids(predictions: dict[str, str], examples: list[dict], what: str, source: str) -> None:
    """None of a prediction set's ids in the data means the wrong data file (or a stale predictions file)."""
    if predictions and {ex["id"] for ex in examples}.isdisjoint(predictions):
        raise PredictionsError(
            f"{what}: none of its {len(predictions)} question ids are in the data ({source}): is it the right data "
            "file, or a predictions file left by a run on another dataset?"
        )
