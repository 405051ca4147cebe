"""squad_lora.scoring: the SQuAD metric (squad_lora/squad_metric through `evaluate`), prediction files
written and read, and the decoding-strategy comparison. The tests of the evaluate module itself
(squad_lora/squad_metric/squad_metric.py: normalize_answer, question_scores, the v1.1 and v2.0 rules) live here too.

Every expected number is worked out by hand in the comment beside it; a straightforward
re-implementation of the official v1.1 / v2.0 scripts' logic (squad_reference.py) cross-checks the rest.
"""

import json
import logging
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from repo_paths import DEV_FILE, DEV_V2_FILE
from squad_lora import outputs
from squad_lora.data import load_squad_file
from squad_lora.errors import PredictionsError
from squad_lora.scoring import (
    compare_strategies,
    distinct_n,
    existing_prediction_files,
    find_prediction_files,
    group_predictions,
    is_version_2,
    load_metric,
    prediction_paths,
    read_prediction_rows,
    read_prediction_sets,
    read_predictions,
    render_comparison_markdown,
    score_predictions,
    strategy_from_path,
    write_predictions,
)
from squad_lora.squad_metric.squad_metric import normalize_answer, question_scores
from squad_reference import (
    official_normalize,
    official_v1_evaluate,
    official_v1_f1,
    official_v2_evaluate,
    official_v2_f1,
)


def example(qid, *answers):
    """A flat SQuAD row with the given gold answers (none: unanswerable)."""
    return {
        "id": qid,
        "title": "t",
        "context": "c",
        "question": "q?",
        "answers": {"text": list(answers), "answer_start": [0] * len(answers)},
    }


def metric_v1(predictions: dict, golds: dict) -> dict:
    """Score through the evaluate module: {id: answer} against {id: [gold answers]}."""
    return load_metric(False).compute(
        predictions=[{"id": k, "prediction_text": v} for k, v in predictions.items()],
        references=[{"id": k, "answers": {"text": v, "answer_start": [0] * len(v)}} for k, v in golds.items()],
    )


# ---------------------------------------------------------------------------
# Normalization: one rule at a time
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Denver BRONCOS", "denver broncos"),  # case
        ("U.S.A.!", "usa"),  # ASCII punctuation is deleted, not replaced by a space
        ("rock-n-roll", "rocknroll"),
        ("$5,000 (approx.)", "5000 approx"),
        ("The Eiffel Tower", "eiffel tower"),  # articles
        ("a cat and an owl", "cat and owl"),
        ("A", ""),
        ("theatre, Anna, banana, another", "theatre anna banana another"),  # only whole words
        ("the.end", "theend"),  # punctuation goes first, so 'the' is no longer a word
        ("  Denver \t\n Broncos  ", "denver broncos"),  # whitespace
        ("Denver\u00a0Broncos", "denver broncos"),  # a no-break space is whitespace to str.split
        ("«Broncos»", "«broncos»"),  # non-ASCII punctuation stays
        ("Denver’s", "denver’s"),  # a curly apostrophe stays; the ASCII one goes:
        ("Denver's", "denvers"),
        ("1990–1995", "1990–1995"),  # en dash
        ("¿Qué?", "¿qué"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def pieces(*words):
    """Strings glued from characters and words that exercise every normalization rule."""
    return st.lists(st.sampled_from(list("aAnNtThHeE .,!-'’«»é\u00a0\t") + list(words)), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(pieces("the", "An", " a ", "The."))
def test_normalize_answer_equals_official(text):
    assert normalize_answer(text) == official_normalize(text)


@settings(max_examples=300, deadline=None)
@given(pieces("the ", " cat ", "Cat. ", " b"), st.lists(pieces("the ", " cat ", "Cat. ", " b"), min_size=1, max_size=3))
def test_question_scores_equal_official(prediction, golds):
    exact, f1 = question_scores(prediction, golds)
    assert exact == max(official_normalize(prediction) == official_normalize(g) for g in golds)
    assert f1 == max(official_v1_f1(prediction, g) for g in golds)
    exact, f1 = question_scores(prediction, golds, version_2=True)
    kept = [g for g in golds if official_normalize(g)] or [""]
    assert exact == max(int(official_normalize(g) == official_normalize(prediction)) for g in kept)
    assert f1 == max(official_v2_f1(g, prediction) for g in kept)


# ---------------------------------------------------------------------------
# SQuAD v1.1 EM/F1 through evaluate
# ---------------------------------------------------------------------------


def test_partial_match_f1():
    # tokens denver broncos vs broncos: 1 shared; precision 1/2, recall 1 -> F1 2*(1/2)/(3/2) = 2/3
    result = metric_v1({"q1": "Denver Broncos"}, {"q1": ["Broncos"]})
    assert result == {"exact_match": 0.0, "f1": pytest.approx(200 / 3)}


def test_several_gold_answers_take_the_maximum():
    # 'the Broncos' -> 'broncos' equals the second gold exactly
    assert metric_v1({"q1": "the Broncos"}, {"q1": ["Denver Broncos", "Broncos"]}) == {
        "exact_match": 100.0,
        "f1": 100.0,
    }
    # vs 'red': P 1/3, R 1 -> 1/2; vs 'big red cat': 2 shared, P = R = 2/3 -> 2/3: the max is 2/3
    result = metric_v1({"q1": "big red dog"}, {"q1": ["red", "big red cat"]})
    assert result == {"exact_match": 0.0, "f1": pytest.approx(200 / 3)}


def test_f1_counts_repeated_tokens_once_each():
    # 'the the cat cat cat' -> cat cat cat vs cat: shared min(3, 1) = 1; P 1/3, R 1 -> F1 1/2
    assert metric_v1({"q1": "the the cat cat cat"}, {"q1": ["cat"]}) == {"exact_match": 0.0, "f1": 50.0}


def test_scores_are_averaged_over_questions():
    # q1: EM 1, F1 1; q2: EM 0, F1 2/3 -> EM 50, F1 (1 + 2/3) / 2 = 83.33
    result = metric_v1({"q1": "Broncos", "q2": "Denver Broncos"}, {"q1": ["Broncos"], "q2": ["Broncos"]})
    assert result == {"exact_match": 50.0, "f1": pytest.approx(250 / 3)}


def test_v1_gold_that_normalizes_to_nothing():
    # v1.1 keeps the gold 'the': '' == '' is an exact match, but two empty answers share no token (F1 0)
    assert metric_v1({"q1": "a"}, {"q1": ["the"]}) == {"exact_match": 100.0, "f1": 0.0}


def test_v1_rules_refuse_a_question_without_gold():
    with pytest.raises(ValueError, match="squad_v2"):
        metric_v1({"q1": "x"}, {"q1": []})


def test_metric_matches_by_id_and_missing_scores_zero():
    metric = load_metric(False)
    references = [{"id": i, "answers": {"text": ["x"], "answer_start": [0]}} for i in ("q1", "q2")]
    # q2 has no prediction (q9 is not a question): EM (1 + 0) / 2
    result = metric.compute(
        predictions=[{"id": "q9", "prediction_text": "x"}, {"id": "q1", "prediction_text": "x"}], references=references
    )
    assert result == {"exact_match": 50.0, "f1": 50.0}
    # a prediction_text of None is no prediction, even first in the list
    result = metric.compute(
        predictions=[{"id": "q1", "prediction_text": None}, {"id": "q2", "prediction_text": "x"}], references=references
    )
    assert result == {"exact_match": 50.0, "f1": 50.0}


def test_score_predictions_warns_about_missing_and_unknown_ids(caplog):
    examples = [example("q1", "Broncos"), example("q2", "blue"), example("q3", "red")]
    with caplog.at_level(logging.WARNING):
        result = score_predictions(examples, {"q1": "Broncos", "zz": "blue"}, source="preds.json")
    # q2 and q3 score 0: EM 1/3
    assert result == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(100 / 3)}
    assert "preds.json: 2 of 3 questions have no prediction and score 0 (ids q2, q3)" in caplog.text
    assert "1 predicted ids are not in the dataset" in caplog.text and "zz" in caplog.text


def test_score_predictions_equals_official_v1_on_the_sample():
    examples, _ = load_squad_file(DEV_FILE)
    predictions = {}
    for i, ex in enumerate(examples):  # exact, re-cased, with articles and punctuation, partial, wrong
        gold = ex["answers"]["text"][0]
        predictions[ex["id"]] = [gold, f"The {gold.upper()}.", gold.split()[0] + " river", "nothing", gold + "'s"][
            i % 5
        ]
    del predictions[examples[3]["id"]]
    assert score_predictions(examples, predictions, version_2=False) == official_v1_evaluate(examples, predictions)


# ---------------------------------------------------------------------------
# SQuAD v2.0
# ---------------------------------------------------------------------------

V2_EXAMPLES = [
    example("q1", "Broncos"),
    example("q2", "Broncos"),
    example("q3"),  # unanswerable
    example("q4"),
]
V2_PREDICTIONS = {"q1": "Broncos", "q2": "Denver Broncos", "q3": "", "q4": "x"}


def test_v2_unanswerable_and_breakdowns():
    # q1 (1, 1); q2 (0, 2/3); q3 empty vs empty (1, 1); q4 'x' vs empty (0, 0)
    result = score_predictions(V2_EXAMPLES, V2_PREDICTIONS)
    assert result == {
        "exact": 50.0,
        "f1": pytest.approx(100 * (1 + 2 / 3 + 1) / 4),
        "total": 4,
        "HasAns_exact": 50.0,
        "HasAns_f1": pytest.approx(100 * (1 + 2 / 3) / 2),
        "HasAns_total": 2,
        "NoAns_exact": 50.0,
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    }


def test_v2_empty_answer_scores():
    examples = [example("q1", "Broncos"), example("q2")]
    # answerable answered empty: 0; unanswerable answered: 0
    assert score_predictions(examples, {"q1": "", "q2": "Broncos"})["f1"] == 0.0
    # gold 'the' normalizes to nothing and is dropped: the gold becomes '', which 'a' (-> '') matches
    result = score_predictions([example("q1", "the")], {"q1": "a"}, version_2=True)
    assert (result["exact"], result["f1"], result["HasAns_total"]) == (100.0, 100.0, 1)
    # ...while a real gold beside it stays: 'broncos' vs gold 'broncos'
    assert score_predictions([example("q1", "the", "Broncos")], {"q1": "Broncos"}, version_2=True)["exact"] == 100.0
    assert score_predictions([example("q1", "the", "Broncos")], {"q1": ""}, version_2=True)["exact"] == 0.0


def test_v2_missing_prediction_scores_zero_and_counts():
    # q3 (unanswerable) has no prediction: 0, not the empty answer's 1; total stays 4
    predictions = {k: v for k, v in V2_PREDICTIONS.items() if k != "q3"}
    result = score_predictions(V2_EXAMPLES, predictions)
    assert (result["total"], result["exact"], result["NoAns_exact"], result["NoAns_total"]) == (4, 25.0, 0.0, 2)


def test_v2_no_answer_probabilities_and_threshold():
    metric = load_metric(True)
    probabilities = {"q1": 0.125, "q2": 0.875, "q3": 0.75, "q4": 0.25}  # exact in float32
    predictions = [
        {"id": k, "prediction_text": v, "no_answer_probability": probabilities[k]} for k, v in V2_PREDICTIONS.items()
    ]
    references = [{"id": ex["id"], "answers": ex["answers"]} for ex in V2_EXAMPLES]
    result = metric.compute(predictions=predictions, references=references)
    # best threshold: start from 2 (both unanswerable right when all are left empty), then by probability:
    # q1 +1 -> 3 (best, at 0.125); q4 answered 'x' -1 -> 2; q3 answered '' 0; q2 +0 -> 2 (F1: +2/3)
    assert (result["best_exact"], result["best_exact_thresh"]) == (75.0, 0.125)
    assert (result["best_f1"], result["best_f1_thresh"]) == (75.0, 0.125)
    assert result["exact"] == 50.0  # the default threshold 1.0 changes nothing
    # threshold 0.5: q2 (0.875) counts as left empty (answerable: 0), q3 (0.75) as empty (right: 1)
    result = metric.compute(predictions=predictions, references=references, no_answer_threshold=0.5)
    assert (result["exact"], result["f1"]) == (50.0, 50.0)
    # 0.25: q4 (0.25) is not above it and keeps its wrong 'x'; 0.2: q4 left empty is right: 3 of 4
    result = metric.compute(predictions=predictions, references=references, no_answer_threshold=0.25)
    assert (result["exact"], result["f1"]) == (50.0, 50.0)
    result = metric.compute(predictions=predictions, references=references, no_answer_threshold=0.2)
    assert (result["exact"], result["f1"]) == (75.0, 75.0)
    # a question without a prediction stays 0 whatever its probability or threshold:
    # best from 1 (q3 only), q1 +1 -> 2 of 4
    predictions[3]["prediction_text"] = None
    result = metric.compute(predictions=predictions, references=references, no_answer_threshold=0.2)
    assert (result["NoAns_exact"], result["best_exact"]) == (50.0, 50.0)


def test_v2_best_threshold_keeps_the_first_best():
    metric = load_metric(True)
    references = [
        {"id": ex["id"], "answers": ex["answers"]} for ex in (example("q1", "x"), example("q2"), example("q3", "y"))
    ]
    predictions = [
        {"id": "q1", "prediction_text": "x", "no_answer_probability": 0.25},
        {"id": "q2", "prediction_text": "x", "no_answer_probability": 0.5},
        {"id": "q3", "prediction_text": "y", "no_answer_probability": 0.75},
    ]
    # start 1 (q2 right when left empty); q1 +1 -> 2 (best, at 0.25); q2 answered -1 -> 1; q3 +1 -> 2: a tie
    result = metric.compute(predictions=predictions, references=references)
    assert (result["best_exact"], result["best_exact_thresh"]) == (pytest.approx(200 / 3), 0.25)


def test_v2_without_probabilities_has_no_best_keys():
    result = score_predictions(V2_EXAMPLES, V2_PREDICTIONS)
    assert not any(key.startswith("best") for key in result)


def test_score_predictions_equals_official_v2_on_the_sample():
    examples, _ = load_squad_file(DEV_V2_FILE)
    predictions = {}
    for i, ex in enumerate(examples):
        gold = ex["answers"]["text"][0] if ex["answers"]["text"] else ""
        predictions[ex["id"]] = [gold, f"the {gold}!", "", "Lenmargan wool", gold[:3]][i % 5]
    assert score_predictions(examples, predictions) == official_v2_evaluate(examples, predictions)


def test_version_detection():
    answered = [example("q1", "x")]
    assert not is_version_2(answered)
    assert is_version_2(answered + [example("q2")])  # an unanswerable question
    assert is_version_2(answered, declared_version="v2.0")
    assert not is_version_2(answered, declared_version="1.1")
    # the version an official file declares, as load_squad_file records it
    assert is_version_2(answered, declared_version=load_squad_file(DEV_V2_FILE)[1].version)
    assert not is_version_2(answered, declared_version=load_squad_file(DEV_FILE)[1].version)


# ---------------------------------------------------------------------------
# Prediction files
# ---------------------------------------------------------------------------


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


def test_read_official_and_jsonl_predictions(tmp_path):
    official = write(tmp_path / "predictions_greedy.json", json.dumps({"q1": "a", "q2": ""}))
    assert read_predictions(official) == {"q1": "a", "q2": ""}
    assert read_prediction_rows(official)[0] == {"id": "q1", "strategy": "greedy", "sample": 0, "prediction": "a"}
    rows = [
        {"id": "q1", "strategy": "top_p", "sample": 1, "prediction": "b"},
        {"id": "q1", "strategy": "top_p", "sample": 0, "prediction": "a"},
    ]
    path = write(tmp_path / "x.jsonl", jsonl(rows))
    assert read_predictions(path) == {"q1": "a"}  # the first sample
    # one line is valid JSON as a whole: still JSON Lines; strategy and sample default from the file
    one = write(tmp_path / "predictions_beam.jsonl", jsonl([{"id": "q1", "prediction": "c"}]))
    assert read_prediction_rows(one) == [{"id": "q1", "strategy": "beam", "sample": 0, "prediction": "c"}]


@pytest.mark.parametrize(
    "text, message",
    [
        ('["a", "b"]', "got a JSON list"),
        ('{"q1": ["a"]}', "every answer must be a string"),
        ('{"version": "1.1", "data": []}', "this is a SQuAD data file"),
        ('{"id": "q1", "prediction": "a"}\nnot json\n', "line 2: not JSON"),
        ('{"id": "q1", "answer": "a"}\n{"id": "q2", "answer": "b"}\n', "line 1: 'prediction' must be a string"),
        ('{"id": 1, "prediction": "a", "sample": -1}\n{"id": "q2"}\n', "'id' must be a string; 'sample' must be an"),
        ("  \n", "the file is empty"),
    ],
)
def test_bad_prediction_files(tmp_path, text, message):
    with pytest.raises(PredictionsError, match=re.escape(message)):
        read_predictions(write(tmp_path / "p.json", text))


def test_missing_prediction_file(tmp_path):
    with pytest.raises(PredictionsError, match="no such file"):
        read_predictions(str(tmp_path / "nope.json"))


def test_one_file_with_several_strategies_is_refused(tmp_path):
    rows = [{"id": "q1", "strategy": s, "sample": 0, "prediction": "a"} for s in ("greedy", "beam")]
    with pytest.raises(PredictionsError, match="greedy, beam.*--compare"):
        read_predictions(write(tmp_path / "p.jsonl", jsonl(rows)))


def test_group_predictions_and_repeats(caplog):
    rows = [
        {"id": "q1", "strategy": "t", "sample": 2, "prediction": "c"},
        {"id": "q1", "strategy": "t", "sample": 0, "prediction": "a"},
        {"id": "q1", "strategy": "g", "sample": 0, "prediction": "g"},
        {"id": "q1", "strategy": "t", "sample": 0, "prediction": "b"},
    ]
    with caplog.at_level(logging.WARNING):
        grouped = group_predictions(rows)
    assert grouped == {"t": [{"q1": "b"}, {"q1": "c"}], "g": [{"q1": "g"}]}
    assert "1 predictions repeat" in caplog.text


def test_strategy_from_path():
    assert strategy_from_path("out/predictions_top_p.jsonl") == "top_p"
    assert strategy_from_path("predictions_beam.json") == "beam"
    assert strategy_from_path("mine.json") == "mine"


def test_prediction_directories(tmp_path):
    write(tmp_path / "predictions_b.jsonl", jsonl([{"id": "q1", "strategy": "b", "sample": 0, "prediction": "x"}]))
    write(tmp_path / "predictions_a.jsonl", jsonl([{"id": "q1", "strategy": "a", "sample": 0, "prediction": "x"}]))
    write(tmp_path / "predictions_a.json", json.dumps({"q1": "x"}))  # the first sample again: not read
    assert find_prediction_files([str(tmp_path)]) == [
        str(tmp_path / "predictions_a.jsonl"),
        str(tmp_path / "predictions_b.jsonl"),
    ]
    assert read_prediction_sets([str(tmp_path)]) == {"a": [{"q1": "x"}], "b": [{"q1": "x"}]}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PredictionsError, match="no predictions_<strategy>"):
        find_prediction_files([str(empty)])


def test_written_predictions_read_back_per_strategy_and_sample(tmp_path):
    rows = [
        {"id": "q1", "strategy": "top_p", "sample": 0, "prediction": "a"},
        {"id": "q1", "strategy": "top_p", "sample": 1, "prediction": "b"},
        {"id": "q2", "strategy": "top_p", "sample": 0, "prediction": ""},
        {"id": "q2", "strategy": "top_p", "sample": 1, "prediction": "c"},
    ]
    greedy = [{"id": "q1", "strategy": "greedy", "sample": 0, "prediction": "a"}]
    paths = write_predictions({"top_p": rows, "greedy": greedy}, str(tmp_path))
    assert paths == [*prediction_paths(str(tmp_path), "top_p"), *prediction_paths(str(tmp_path), "greedy")]
    assert existing_prediction_files(str(tmp_path)) == sorted(paths)
    official, every_sample = prediction_paths(str(tmp_path), "top_p")
    with open(official, encoding="utf-8") as f:
        assert json.load(f) == {"q1": "a", "q2": ""}  # the official {id: answer}: the first sample
    assert read_prediction_rows(every_sample) == rows
    assert read_prediction_sets([str(tmp_path)]) == {
        "greedy": [{"q1": "a"}],
        "top_p": [{"q1": "a", "q2": ""}, {"q1": "b", "q2": "c"}],
    }
    assert existing_prediction_files(str(tmp_path / "none-yet")) == []


def test_predictions_jsonl_with_unicode_line_separators_reads_back(tmp_path):
    # generate.py writes predictions with outputs.write_jsonl (ensure_ascii=False): U+2028 and NEL stay raw
    rows = [
        {"id": "a", "strategy": "greedy", "sample": 0, "prediction": "x\u2028y"},
        {"id": "b", "strategy": "greedy", "sample": 0, "prediction": "z\x85w"},
    ]
    path = tmp_path / "predictions_greedy.jsonl"
    outputs.write_jsonl(str(path), rows)
    assert "\u2028" in path.read_text(encoding="utf-8")
    assert read_prediction_rows(str(path)) == rows


# ---------------------------------------------------------------------------
# The decoding-strategy comparison
# ---------------------------------------------------------------------------

COMPARE_EXAMPLES = [example("q1", "Denver Broncos"), example("q2", "blue")]
PREDICTION_SETS = {
    "greedy": [{"q1": "Denver Broncos", "q2": "red"}],
    "top_p": [{"q1": "Denver Broncos", "q2": "blue"}, {"q1": "the Denver Broncos team", "q2": "red"}],
    "top_k": [{"q1": "Denver Broncos", "q2": "blue"}, {"q1": "the denver broncos.", "q2": "BLUE"}],
}


def test_compare_strategies_by_hand():
    rows = {row["strategy"]: row for row in compare_strategies(COMPARE_EXAMPLES, PREDICTION_SETS)}
    # greedy: q1 right, q2 wrong. tokens [denver broncos] [red]: 3 of 3 unigrams and 1 of 1 bigram
    # distinct; 1 answer per question; (2 + 1) / 2 words
    assert rows["greedy"] == {
        "strategy": "greedy", "num_samples": 1, "exact_match": 50.0, "exact_match_std": None, "f1": 50.0,
        "f1_std": None, "distinct_1": 1.0, "distinct_2": 1.0, "answers_per_question": 1.0,
        "answer_length": 1.5, "num_missing": 0,
    }  # fmt: skip
    # top_p: sample 0 all right (100, 100); sample 1: q1 'denver broncos team' vs gold: P 2/3, R 1 -> F1 0.8,
    # q2 wrong -> EM 0, F1 40. EM 50 +- stdev(100, 0) = 70.71; F1 70 +- stdev(100, 40) = 42.43.
    # tokens [denver broncos] [blue] [denver broncos team] [red]: 5 distinct of 7 unigrams, 2 of 3 bigrams;
    # 2 different answers to each question; words 2, 1, 4, 1 -> 2.0
    top_p = rows["top_p"]
    assert (top_p["num_samples"], top_p["exact_match"], top_p["f1"]) == (2, 50.0, pytest.approx(70.0))
    assert top_p["exact_match_std"] == pytest.approx(math.sqrt(5000))
    assert top_p["f1_std"] == pytest.approx(math.sqrt(1800))
    assert (top_p["distinct_1"], top_p["distinct_2"]) == (pytest.approx(5 / 7), pytest.approx(2 / 3))
    assert (top_p["answers_per_question"], top_p["answer_length"]) == (2.0, 2.0)
    # top_k: the samples differ only in case, articles and punctuation: one answer per question after
    # normalization, both samples right (std 0); 3 distinct of 6 unigrams, 1 of 2 bigrams; words 2, 1, 3, 1
    top_k = rows["top_k"]
    assert (top_k["exact_match"], top_k["exact_match_std"], top_k["f1_std"]) == (100.0, 0.0, 0.0)
    assert (top_k["distinct_1"], top_k["distinct_2"], top_k["answers_per_question"], top_k["answer_length"]) == (
        0.5, 0.5, 1.0, 1.75,
    )  # fmt: skip


def test_compare_counts_missing_predictions(caplog):
    with caplog.at_level(logging.WARNING):
        (row,) = compare_strategies(COMPARE_EXAMPLES, {"beam": [{"q1": "Denver Broncos", "zz": "x"}]})
    # q2 missing scores 0; the unknown zz is not an answer to any question
    assert (row["num_missing"], row["exact_match"], row["answer_length"], row["answers_per_question"]) == (
        1,
        50.0,
        2.0,
        1.0,
    )
    assert "beam: 1 of 2 question-sample pairs have no prediction" in caplog.text
    assert "beam: 1 predicted ids are not in the dataset" in caplog.text


def test_compare_v2_uses_the_v2_rules():
    # the unanswerable q2 answered '' is right under v2.0: EM 100
    (row,) = compare_strategies([example("q1", "x"), example("q2")], {"greedy": [{"q1": "x", "q2": ""}]})
    assert row["exact_match"] == 100.0
    # the empty answer has no tokens: distinct-n over the one token of 'x'
    assert (row["distinct_1"], row["distinct_2"], row["answer_length"]) == (1.0, 0.0, 0.5)


def test_distinct_n():
    # unigrams a b a c: 3 distinct of 4; bigrams (a b) twice: 1 distinct of 2 (none crosses answers)
    assert distinct_n([["a", "b", "a"], ["c"]], 1) == 3 / 4
    assert distinct_n([["a", "b"], ["a", "b"], ["b"]], 2) == 1 / 2
    assert distinct_n([["a"], []], 2) == 0.0


def test_render_comparison_markdown():
    markdown = render_comparison_markdown(compare_strategies(COMPARE_EXAMPLES, PREDICTION_SETS))
    lines = markdown.splitlines()
    assert lines[0] == "| strategy | samples | EM | F1 | distinct-1 | distinct-2 | answers/question | words/answer |"
    assert lines[2] == "| greedy | 1 | 50.00 | 50.00 | 1.000 | 1.000 | 1.00 | 1.50 |"
    assert lines[3] == "| top_p | 2 | 50.00 ± 70.71 | 70.00 ± 42.43 | 0.714 | 0.667 | 2.00 | 2.00 |"
    assert lines[4] == "| top_k | 2 | 100.00 ± 0.00 | 100.00 ± 0.00 | 0.500 | 0.500 | 1.00 | 1.75 |"
    assert markdown.endswith("\n") and len(lines) == 5


def test_load_metric_is_the_evaluate_module_and_cached():
    import evaluate

    assert isinstance(load_metric(False), evaluate.EvaluationModule)
    assert load_metric(False) is load_metric(False)
    assert load_metric(True).config_name == "squad_v2"
