"""benchmarks/lm_eval: the task file names lm_eval's squadv2 task class and the local file the runner writes, the
runner's conversion keeps every question in the Hub's flat layout, and its intervals and sample reading hold on
hand-built inputs. lm_eval itself is not run (nor needed) here."""

import ast
import json
import os
import sys

import yaml

from repo_paths import REPO_ROOT

TASK_DIR = os.path.join(REPO_ROOT, "benchmarks", "lm_eval")


def runner():
    sys.path.insert(0, TASK_DIR)
    import run_lm_eval

    return run_lm_eval


def read_task_yaml(path: str) -> dict:
    """The task YAML as lm_eval reads it, with `!function module.name` kept as its text."""

    class TaskLoader(yaml.SafeLoader):
        pass

    TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=TaskLoader)


def test_the_task_yaml_runs_lm_evals_squadv2_class_on_the_runners_file():
    task = read_task_yaml(os.path.join(TASK_DIR, "squadv2_local.yaml"))
    assert task == {
        "task": "squadv2_local",
        "class": "!function squadv2_local.LocalSQuAD2",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": runner().FLAT_FILE}},
    }
    with open(os.path.join(TASK_DIR, "squadv2_local.py"), encoding="utf-8") as f:
        module = ast.parse(f.read())
    classes = {node.name: node for node in module.body if isinstance(node, ast.ClassDef)}
    assert [base.id for base in classes["LocalSQuAD2"].bases] == ["SQuAD2"]  # lm_eval's squadv2 task, inherited
    imported = {
        (node.module, alias.name) for node in module.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert ("lm_eval.tasks.squadv2.task", "SQuAD2") in imported


def official_v2_file(path) -> str:
    """Two articles in the official v2.0 layout: an answerable question, one whose answer_start is wrong, and an
    unanswerable one (with plausible answers, as the official file has them)."""
    doc = {
        "version": "v2.0",
        "data": [
            {"title": "Lenmargan", "paragraphs": [{"context": "Lenmargan lies on the Ilvar. It was founded in 1399.", "qas": [
                {"id": "a1", "question": "Where is Lenmargan?", "is_impossible": False,
                 "answers": [{"text": "on the Ilvar", "answer_start": 14}]},
                {"id": "a2", "question": "When was it founded?", "is_impossible": False,
                 "answers": [{"text": "1399", "answer_start": 3}]},  # wrong offset: kept all the same
            ]}]},
            {"title": "Elwi", "paragraphs": [{"context": "Duke Elwi founded the town.", "qas": [
                {"id": "b1", "question": "Who was the harbour master?", "is_impossible": True, "answers": [],
                 "plausible_answers": [{"text": "Duke Elwi", "answer_start": 0}]},
            ]}]},
        ],
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    return str(path)


def test_the_conversion_keeps_every_question_in_the_flat_layout_and_order(tmp_path):
    run_lm_eval = runner()
    data_file = official_v2_file(tmp_path / "dev-v2.0.json")
    path, rows = run_lm_eval.write_flat_split(data_file, str(tmp_path), 10)
    assert os.path.basename(path) == run_lm_eval.FLAT_FILE
    with open(path, encoding="utf-8") as f:
        written = [json.loads(line) for line in f]
    assert written == rows
    assert [row["id"] for row in written] == ["a1", "a2", "b1"]
    assert all(list(row) == ["id", "title", "context", "question", "answers"] for row in written)
    assert written[0] == {
        "id": "a1", "title": "Lenmargan", "context": "Lenmargan lies on the Ilvar. It was founded in 1399.",
        "question": "Where is Lenmargan?", "answers": {"text": ["on the Ilvar"], "answer_start": [14]},
    }  # fmt: skip
    assert written[2]["answers"] == {"text": [], "answer_start": []}  # unanswerable: no plausible answer leaks in
    os.makedirs(tmp_path / "two")
    _, first_two = run_lm_eval.write_flat_split(data_file, str(tmp_path / "two"), 2)
    assert [row["id"] for row in first_two] == ["a1", "a2"]
    # training questions come only from articles holding none of the scored ones
    assert [row["id"] for row in run_lm_eval.held_out_training_questions(data_file, 1, 5, seed=0)] == ["b1"]


def test_the_intervals_are_paired_and_the_samples_read_as_the_metric_saw_them():
    run_lm_eval = runner()
    first = [100.0, 0.0, 100.0, 0.0]
    intervals = run_lm_eval.bootstrap(first, list(first), num_resamples=200, seed=0)
    assert intervals["difference"] == [0.0, 0.0]  # the same questions on both sides: no difference at all
    low, high = intervals["first"]
    assert 0.0 <= low < 50.0 < high <= 100.0
    assert run_lm_eval.bootstrap([50.0] * 5, [75.0] * 5, 100, 0) == {
        "first": [50.0, 50.0], "second": [75.0, 75.0], "difference": [25.0, 25.0]
    }  # fmt: skip
    sample = {"exact": [{"id": "q1", "prediction_text": " unanswerable", "no_answer_probability": 0.25},
                        {"id": "q1", "answers": {"text": [], "answer_start": []}}]}  # fmt: skip
    assert run_lm_eval.lm_eval_predictions([sample]) == {"q1": (" unanswerable", 0.25)}
    rows = [{"id": "q1", "answers": {"text": [], "answer_start": []}}, {"id": "q2", "answers": {"text": ["Paris"]}}]
    # lm_eval's squadv2 scores the text as generated: "unanswerable" is wrong on an unanswerable question
    assert run_lm_eval.per_question(rows, {"q1": " unanswerable", "q2": " Paris."}) == ([0.0, 100.0], [0.0, 100.0])
    assert run_lm_eval.per_question(rows, {"q1": ""}) == ([100.0, 0.0], [100.0, 0.0])
