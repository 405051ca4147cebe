"""evaluate_squad.py: the official scripts' command line, prediction formats, errors and --compare."""

import json
import logging
import math
import os
import random
import re
import subprocess
import sys

import datasets
import pytest

from builders import write_jsonl
from repo_paths import DEV_V2_FILE, REPO_ROOT
from squad_lora import scoring
from squad_lora.cli import run as run_cli
from squad_lora.commands import evaluate as evaluate_squad
from squad_lora.data import load_squad_file
from squad_lora.errors import SquadDataError, SquadLoraError
from squad_reference import official_v2_evaluate

CONTEXT = "Denver Broncos won. The sky is blue."  # 'Broncos' at 7, 'The sky' at 20, 'blue' at 31


def qa(qid, *answers):
    return {
        "id": qid,
        "question": f"question {qid}?",
        "answers": [{"text": a, "answer_start": CONTEXT.index(a)} for a in answers],
    }


def official_file(path, qas, version="1.1"):
    doc = {"version": version, "data": [{"title": "T", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return str(path)


@pytest.fixture
def v1_file(tmp_path):
    return official_file(
        tmp_path / "dev-v1.1.json", [qa("q1", "Denver Broncos", "Broncos"), qa("q2", "blue"), qa("q3", "The sky")]
    )


@pytest.fixture
def v2_file(tmp_path):
    unanswerable = [{"id": i, "question": "?", "answers": [], "is_impossible": True} for i in ("q4", "q5")]
    return official_file(tmp_path / "dev-v2.0.json", [qa("q1", "Broncos"), qa("q2", "blue")] + unanswerable, "v2.0")


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


# q1 'broncos!' matches the gold 'Broncos' (1, 1); q2 'light blue' vs 'blue': P 1/2, R 1 -> F1 2/3;
# q3 has no prediction (0, 0). EM 1/3, F1 (1 + 2/3) / 3 = 5/9.
V1_PREDICTIONS = {"q1": "broncos!", "q2": "light blue"}
V1_SCORES = {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(500 / 9)}


def test_official_command_line(v1_file, tmp_path, capsys, caplog):
    predictions = write_json(tmp_path / "predictions.json", V1_PREDICTIONS)
    with caplog.at_level(logging.WARNING):
        result = evaluate_squad.main([v1_file, predictions])
    assert result == V1_SCORES
    printed = capsys.readouterr().out
    assert json.loads(printed) == V1_SCORES and printed.count("\n") == 1  # one line, as the official v1.1 script
    assert "1 of 3 questions have no prediction and score 0 (ids q3)" in caplog.text


def test_output_file_and_flags(v1_file, tmp_path):
    predictions = write_json(tmp_path / "predictions.json", V1_PREDICTIONS)
    output = tmp_path / "out" / "scores.json"
    result = evaluate_squad.main(
        ["--validation_file", v1_file, "--prediction_file", predictions, "--output", str(output)]
    )
    assert json.loads(output.read_text()) == result == V1_SCORES
    assert [p.name for p in output.parent.iterdir()] == ["scores.json"]  # no temporary file left


def test_max_eval_samples_scores_only_the_first_questions(v1_file, tmp_path, caplog):
    # q1 (1, 1) and q2 (0, 2/3) only: q3, which has no prediction, is outside the first two
    predictions = write_json(tmp_path / "predictions.json", V1_PREDICTIONS)
    with caplog.at_level(logging.WARNING):
        result = evaluate_squad.main([v1_file, predictions, "--max_eval_samples", "2"])
    assert result == {"exact_match": pytest.approx(50), "f1": pytest.approx(250 / 3)}
    assert "no prediction" not in caplog.text


def test_jsonl_predictions_score_the_first_sample(v1_file, tmp_path):
    rows = [{"id": qid, "strategy": "top_p", "sample": 1, "prediction": "wrong"} for qid in V1_PREDICTIONS]
    rows += [
        {"id": qid, "strategy": "top_p", "sample": 0, "prediction": answer} for qid, answer in V1_PREDICTIONS.items()
    ]
    assert evaluate_squad.main([v1_file, write_jsonl(tmp_path / "predictions_top_p.jsonl", rows)]) == V1_SCORES


def test_unknown_ids_are_reported(v1_file, tmp_path, caplog):
    predictions = write_json(tmp_path / "p.json", {**V1_PREDICTIONS, "zz1": "x", "zz2": "y"})
    with caplog.at_level(logging.WARNING):
        assert evaluate_squad.main([v1_file, predictions]) == V1_SCORES
    assert "2 predicted ids are not in the dataset and are ignored (ids zz1, zz2)" in caplog.text


def test_predictions_for_another_dataset_are_an_error(v1_file, tmp_path):
    with pytest.raises(SquadLoraError, match="none of its 2 question ids are in the data"):
        evaluate_squad.main([v1_file, write_json(tmp_path / "p.json", {"zz1": "x", "zz2": "y"})])


def test_v2_file(v2_file, tmp_path, capsys):
    # q1 right (1, 1); q2 'the sky' vs 'blue' (0, 0); q4 '' right (1, 1); q5 answered 'blue' (0, 0)
    predictions = write_json(tmp_path / "p.json", {"q1": "Broncos", "q2": "the sky", "q4": "", "q5": "blue"})
    expected = {
        "exact": 50.0, "f1": 50.0, "total": 4,
        "HasAns_exact": 50.0, "HasAns_f1": 50.0, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
    }  # fmt: skip
    assert evaluate_squad.main([v2_file, predictions]) == expected
    printed = capsys.readouterr().out
    assert json.loads(printed) == expected and printed.startswith('{\n  "exact": 50.0,')  # as the v2.0 script


def test_v2_detected_from_the_version_field(tmp_path):
    # no unanswerable question, but "version": "v2.0": the v2 rules and keys
    data = official_file(tmp_path / "d.json", [qa("q1", "Broncos")], version="v2.0")
    result = evaluate_squad.main([data, write_json(tmp_path / "p.json", {"q1": "Broncos"})])
    assert result == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        "HasAns_exact": 100.0,
        "HasAns_f1": 100.0,
        "HasAns_total": 1,
    }


def test_version_2_flag_forces_the_v2_rules(v1_file, tmp_path):
    predictions = write_json(tmp_path / "p.json", V1_PREDICTIONS)
    result = evaluate_squad.main([v1_file, predictions, "--version_2_with_negative"])
    assert (result["exact"], result["f1"], result["total"]) == (pytest.approx(100 / 3), pytest.approx(500 / 9), 3)


def test_sample_files_answered_with_their_gold(tmp_path):
    from squad_lora.data import load_squad_file

    for name, key in (("dev-v1.1.json", "exact_match"), ("dev-v2.0.json", "exact"), ("dev-v1.1.jsonl", "exact_match")):
        path = os.path.join(REPO_ROOT, "data", "sample", name)
        examples, _ = load_squad_file(path)
        gold = {ex["id"]: (ex["answers"]["text"] or [""])[-1] for ex in examples}
        result = evaluate_squad.main([path, write_json(tmp_path / "p.json", gold)])
        assert (result[key], result["f1"]) == (100.0, 100.0)


def test_hub_dataset_squad_v2_uses_the_v2_rules(monkeypatch, tmp_path):
    rows = [
        {
            "id": "q1",
            "title": "T",
            "context": CONTEXT,
            "question": "?",
            "answers": {"text": ["blue"], "answer_start": [31]},
        }
    ]
    calls = []

    def fake_load_dataset(name, config_name=None, split=None):  # the Hub's squad_v2, whose rows carry no version
        calls.append((name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = evaluate_squad.main(["--dataset_name", "squad_v2", write_json(tmp_path / "p.json", {"q1": "Blue."})])
    assert calls == [("squad_v2", "validation")]
    assert (result["exact"], result["total"]) == (100.0, 1)


def test_offline_hub_error_names_the_fix(monkeypatch, tmp_path):
    def offline(data_args, split="validation", check_answers=True):
        try:
            raise ConnectionError("no network")
        except ConnectionError as e:
            raise SquadDataError("could not load the dataset 'squad' (split 'validation') from the Hub: ...") from e

    monkeypatch.setattr(scoring, "load_squad_split", offline)
    with pytest.raises(SquadDataError, match="Give a local SQuAD file first: python evaluate_squad.py dev-v1.1.json"):
        evaluate_squad.main([write_json(tmp_path / "p.json", {"q1": "x"})])


@pytest.mark.parametrize(
    "contents, message",
    [
        ('["broncos"]', "expected the official {question id: answer} JSON object or JSON Lines, got a JSON list"),
        ('{"q1": 3}', "every answer must be a string"),
        ("q1,broncos\n", "line 1: not JSON"),
    ],
)
def test_wrong_prediction_files_are_one_clear_error(v1_file, tmp_path, monkeypatch, capsys, contents, message):
    path = tmp_path / "p.json"
    path.write_text(contents, encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["evaluate_squad.py", v1_file, str(path)])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate_squad.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err and "Traceback" not in err


def test_a_data_file_alone_is_taken_for_predictions_and_explained(v1_file):
    # one file argument is the prediction file: read first, so no dataset download is attempted
    with pytest.raises(SquadLoraError, match="this is a SQuAD data file, not predictions"):
        evaluate_squad.main([v1_file])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval_split", "validation"], "nothing to score"),
        (["d.json", "--prediction_file", "p.json", "--compare", "x.jsonl"], "not both"),
        (["d.json", "p.json", "--compare", "x.jsonl"], "unexpected argument(s) p.json"),
        (["d.json", "p.json", "extra.json"], "unexpected argument(s) extra.json"),
        (["d.json", "p.json", "--bogus"], "unknown flag(s) --bogus"),
        (["d.json", "p.json", "--output_dir", "o"], "--output_dir is for --compare"),
    ],
)
def test_argument_errors(argv, message):
    with pytest.raises(SquadLoraError) as error:
        evaluate_squad.main(argv)
    assert message in str(error.value)


# ---------------------------------------------------------------------------
# --compare
# ---------------------------------------------------------------------------


def strategy_rows(strategy, samples):
    return [
        {"id": qid, "strategy": strategy, "sample": k, "prediction": answer}
        for k, answers in enumerate(samples)
        for qid, answer in answers.items()
    ]


def test_compare_a_directory(v1_file, tmp_path, capsys):
    preds = tmp_path / "preds"
    preds.mkdir()
    # greedy: q1 right, q2 and q3 wrong: EM 33.33; tokens [broncos] [red] [sea]: all distinct
    write_jsonl(
        preds / "predictions_greedy.jsonl", strategy_rows("greedy", [{"q1": "Broncos", "q2": "red", "q3": "sea"}])
    )
    # top_p: sample 0 all right (100), sample 1 all wrong (0): EM and F1 50 +- stdev(100, 0) = 70.71;
    # 2 answers per question; tokens [denver broncos] [blue] [sky] [green] [green] [grass]: 6 distinct
    # of 7 unigrams, 1 of 1 bigram; words 2 1 2 1 1 1
    samples = [{"q1": "Denver Broncos", "q2": "blue", "q3": "the sky"}, {"q1": "green", "q2": "green", "q3": "grass"}]
    write_jsonl(preds / "predictions_top_p.jsonl", strategy_rows("top_p", samples))
    result = evaluate_squad.main([v1_file, "--compare", str(preds)])

    greedy, top_p = result["strategies"]
    assert (greedy["strategy"], greedy["exact_match"], greedy["exact_match_std"], greedy["distinct_1"]) == (
        "greedy", pytest.approx(100 / 3), None, 1.0,
    )  # fmt: skip
    assert (top_p["strategy"], top_p["num_samples"], top_p["exact_match"]) == ("top_p", 2, 50.0)
    assert top_p["exact_match_std"] == pytest.approx(5000**0.5)
    assert (top_p["distinct_1"], top_p["distinct_2"], top_p["answers_per_question"]) == (pytest.approx(6 / 7), 1.0, 2.0)
    assert top_p["answer_length"] == pytest.approx(8 / 6)
    assert (result["num_questions"], result["version_2"]) == (3, False)

    markdown = (preds / "strategy_comparison.md").read_text()
    assert "| top_p | 2 | 50.00 ± 70.71 | 50.00 ± 70.71 | 0.857 | 1.000 | 2.00 | 1.33 |" in markdown
    assert capsys.readouterr().out == markdown
    assert json.loads((preds / "strategy_comparison.json").read_text()) == json.loads(json.dumps(result))


def test_compare_files_to_an_output_dir(v1_file, tmp_path):
    greedy = write_json(tmp_path / "predictions_greedy.json", V1_PREDICTIONS)
    beam = write_jsonl(
        tmp_path / "predictions_beam.jsonl", strategy_rows("beam", [{"q1": "Broncos", "q2": "blue", "q3": "The sky"}])
    )
    out = tmp_path / "report"
    result = evaluate_squad.main(
        [v1_file, "--compare", greedy, beam, "--output_dir", str(out), "--output", str(tmp_path / "r.json")]
    )
    assert [row["strategy"] for row in result["strategies"]] == ["greedy", "beam"]
    assert result["strategies"][0]["exact_match"] == pytest.approx(100 / 3)
    assert result["strategies"][0]["num_missing"] == 1
    assert result["strategies"][1]["f1"] == 100.0
    assert sorted(p.name for p in out.iterdir()) == ["strategy_comparison.json", "strategy_comparison.md"]
    assert json.loads((tmp_path / "r.json").read_text())["strategies"][1]["exact_match"] == 100.0


# ---------------------------------------------------------------------------
# The real command line
# ---------------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter imports evaluate, transformers and torch: seconds
def test_script_runs_as_the_official_command(v1_file, tmp_path):
    predictions = write_json(tmp_path / "predictions.json", V1_PREDICTIONS)
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "evaluate_squad.py"), v1_file, predictions],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == V1_SCORES
    assert "1 of 3 questions have no prediction" in completed.stderr


# ---------------------------------------------------------------------------
# --na_prob_file: the official v2.0 script's no-answer threshold search
# ---------------------------------------------------------------------------


def test_na_prob_file_gives_the_official_best_thresholds_on_the_v2_sample(tmp_path):
    examples, _ = load_squad_file(DEV_V2_FILE)
    rng = random.Random(5)
    # right, wrong, partly right and empty answers, with probabilities that tie in places (float32-exact values)
    choices = lambda ex: ex["answers"]["text"][:1] + ["", "wrong words", f"the {ex['question'].split()[0]}"]  # noqa: E731
    predictions = {ex["id"]: rng.choice(choices(ex)) for ex in examples}
    probabilities = {ex["id"]: rng.choice([0.0, 0.125, 0.25, 0.5, 0.625, 0.875, 1.0]) for ex in examples}
    prediction_file = write_json(tmp_path / "predictions.json", predictions)
    na_prob_file = write_json(tmp_path / "na_prob.json", {**probabilities, "not-a-question": 0.5})
    for threshold in (1.0, 0.5, 0.125):
        flags = ["--na_prob_file", na_prob_file, "--na_prob_thresh", str(threshold)]
        scores = evaluate_squad.main([DEV_V2_FILE, prediction_file, *flags])
        expected = official_v2_evaluate(examples, predictions, probabilities, threshold)
        assert scores.keys() == expected.keys() and scores == pytest.approx(expected)
    assert {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} <= scores.keys()


@pytest.mark.parametrize(
    "na_probs, message",
    [
        ({"q1": 0.5, "q2": 0.5, "q4": 0.5}, "1 predicted questions have no no-answer probability (ids q5)"),
        (
            {"q1": 0.5, "q2": "high", "q4": 0.5, "q5": 0.1},
            "1 no-answer probabilities are not finite numbers (ids q2; id q2: 'high')",
        ),
        ([0.5, 0.5], "expected a JSON object {id: no-answer probability}, found a list"),
    ],
)
def test_a_wrong_na_prob_file_is_one_clear_error(v2_file, tmp_path, na_probs, message):
    predictions = write_json(tmp_path / "p.json", {"q1": "Broncos", "q2": "the sky", "q4": "", "q5": "blue"})
    with pytest.raises(SquadLoraError, match=re.escape(message)):
        evaluate_squad.main([v2_file, predictions, "--na_prob_file", write_json(tmp_path / "na.json", na_probs)])


@pytest.mark.parametrize(
    "na_probs, message",
    [
        # json writes and reads NaN and Infinity (numpy's float('nan') through json.dump); null, true, a string
        ({"q1": math.nan, "q2": 0.5, "q4": math.inf, "q5": -math.inf},
         "3 no-answer probabilities are not finite numbers (ids q1, q4, q5; id q1: nan)"),
        ({"q1": None, "q2": True, "q4": "0.5", "q5": 0.1},
         "3 no-answer probabilities are not finite numbers (ids q1, q2, q4; id q1: None)"),
        ({"q4": 0.5}, "3 predicted questions have no no-answer probability (ids q1, q2, q5)"),
        ({}, "4 predicted questions have no no-answer probability (ids q1, q2, q4, q5)"),
    ],
    ids=["nan-and-infinities", "null-bool-string", "missing-ids", "empty"],
)  # fmt: skip
def test_a_bad_na_prob_file_ends_the_script_with_one_line_naming_file_and_ids(
    v2_file, tmp_path, na_probs, message, capsys
):
    predictions = write_json(tmp_path / "p.json", {"q1": "Broncos", "q2": "the sky", "q4": "", "q5": "blue"})
    na_prob_file = write_json(tmp_path / "na.json", na_probs)
    with pytest.raises(SystemExit) as exited:
        run_cli(lambda: evaluate_squad.main([v2_file, predictions, "--na_prob_file", na_prob_file]))
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == f"error: {na_prob_file}: {message}" + (
        ": give the na_prob file written with these predictions" if "predicted" in message else ""
    )
    assert "Traceback" not in captured.err and captured.out == ""  # no scores printed


def test_na_probs_of_questions_without_a_prediction_are_named_and_ignored(v2_file, tmp_path, caplog):
    predictions = write_json(tmp_path / "p.json", {"q1": "Broncos", "q4": ""})
    probabilities = {"q1": 0.2, "q4": 0.9}
    without_extra = evaluate_squad.main(
        [v2_file, predictions, "--na_prob_file", write_json(tmp_path / "na.json", probabilities)]
    )
    extra = write_json(tmp_path / "na-extra.json", {**probabilities, "q2": 0.5, "not-a-question": 0.1})
    with caplog.at_level(logging.WARNING):
        scores = evaluate_squad.main([v2_file, predictions, "--na_prob_file", extra])
    assert scores == without_extra  # as the official script: only the predicted questions' probabilities count
    assert (
        f"{extra}: 2 ids have a no-answer probability but no prediction (ids q2, not-a-question): ignored, as the "
        "official script ignores them"
    ) in caplog.text


def test_na_probs_on_v1_data_or_with_compare_are_refused(v1_file, tmp_path):
    predictions = write_json(tmp_path / "p.json", V1_PREDICTIONS)
    na_probs = write_json(tmp_path / "na.json", {"q1": 0.5, "q2": 0.5})
    with pytest.raises(SquadLoraError, match="no-answer probabilities are for SQuAD v2.0 data"):
        evaluate_squad.main([v1_file, predictions, "--na_prob_file", na_probs])
    with pytest.raises(SquadLoraError, match="--na_prob_thresh applies the no-answer probabilities"):
        evaluate_squad.main([v1_file, predictions, "--na_prob_thresh", "0.5"])
    with pytest.raises(SquadLoraError, match="without --compare"):
        evaluate_squad.main([v1_file, "--compare", predictions, "--na_prob_file", na_probs])
