"""The quality levers a recipe can set: which gold answer is trained, SQuAD v2's unanswerable questions,
and the decoding a run records for generate.py; and the quality benchmark that measures them."""

import json
import os

import pytest

from conftest import DEV_V2_FILE, REPO_ROOT, SAMPLE_DIR, TINY_GPT2_DIR
from squad_lora.data import order_answers, prepare_training_examples

DEV_FILE = os.path.join(SAMPLE_DIR, "dev-v1.1.json")
TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")


def answers(*texts: str) -> dict:
    return {"text": list(texts), "answer_start": list(range(len(texts)))}


@pytest.mark.parametrize(
    "gold, choice, first",
    [
        (answers("Denver Broncos", "the Denver Broncos", "Denver Broncos"), "most_common", ("Denver Broncos", 0)),
        (answers("the Broncos", "Denver  Broncos", "Denver Broncos"), "most_common", ("Denver  Broncos", 1)),  # spaces
        (answers("a", "b", "c"), "most_common", ("a", 0)),  # a tie: the earliest
        (answers("Santa Clara, California", "Santa Clara", "Levi's Stadium"), "shortest", ("Santa Clara", 1)),
        (answers("Santa Clara, California", "Santa Clara"), "first", ("Santa Clara, California", 0)),
    ],
)
def test_the_chosen_answer_comes_first_and_every_answer_is_kept(gold, choice, first):
    ordered = order_answers(gold, choice)
    assert (ordered["text"][0], ordered["answer_start"][0]) == first
    assert sorted(zip(ordered["text"], ordered["answer_start"])) == sorted(zip(gold["text"], gold["answer_start"]))


def test_unanswerable_questions_are_dropped_from_training_only_when_asked():
    import datasets

    rows = [
        {"id": "a", "answers": answers("x", "y", "y")},
        {"id": "b", "answers": {"text": [], "answer_start": []}},
    ]
    dataset = datasets.Dataset.from_list(rows)
    assert len(prepare_training_examples(dataset)) == 2
    kept = prepare_training_examples(dataset, "most_common", answerable_only=True)
    assert [row["id"] for row in kept] == ["a"] and kept[0]["answers"]["text"] == ["y", "x", "y"]


def test_training_trains_the_chosen_answer(tmp_path, monkeypatch):
    import run_qa_lora
    from squad_lora import data

    trained = []
    original = data.build_train_features

    def spy(examples, *args, **kwargs):
        trained.extend(texts[0] for texts in (a["text"] for a in examples["answers"]) if texts)
        return original(examples, *args, **kwargs)

    monkeypatch.setattr(run_qa_lora, "build_train_features", spy)
    run_qa_lora.main(
        [os.path.join(REPO_ROOT, "configs", "smoke.yaml"), "--output_dir", str(tmp_path / "run"), "--max_steps", "1",
         "--eval_strategy", "no", "--report_to", "none", "--train_file", DEV_FILE, "--train_answer", "shortest",
         "--max_train_samples", "12"]
    )  # fmt: skip
    with open(DEV_FILE, encoding="utf-8") as f:
        questions = [qa for article in json.load(f)["data"] for p in article["paragraphs"] for qa in p["qas"]][:12]
    assert trained == [min((a["text"] for a in qa["answers"]), key=len) for qa in questions]


def test_generate_answers_with_the_decoding_the_run_recorded(tmp_path):
    import generate
    import run_qa_lora

    run_dir = tmp_path / "run"
    run_qa_lora.main(
        [os.path.join(REPO_ROOT, "configs", "smoke.yaml"), "--output_dir", str(run_dir), "--max_steps", "1",
         "--eval_strategy", "no", "--report_to", "none", "--strategy", "beam", "--num_beams", "2",
         "--constrain_to_context"]
    )  # fmt: skip
    common = ["--adapter", str(run_dir), "--validation_file", DEV_FILE, "--max_eval_samples", "4"]
    recorded = generate.main([*common, "--output_dir", str(tmp_path / "recorded")])
    assert list(recorded) == ["beam"]
    explicit = generate.main(
        [*common, "--output_dir", str(tmp_path / "explicit"), "--strategy", "beam", "--num_beams", "2",
         "--constrain_to_context"]
    )  # fmt: skip
    assert recorded == explicit
    overridden = generate.main([*common, "--output_dir", str(tmp_path / "greedy"), "--strategy", "greedy"])
    assert list(overridden) == ["greedy"]


def bench_quality_module():
    import sys

    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_quality

    return bench_quality


def five_copies(source: str, path) -> str:
    """The sample file's articles five times over, ids and titles made unique: the benchmark's split holds out every
    fifth article, so the sample's articles need company."""
    with open(source, encoding="utf-8") as f:
        doc = json.load(f)
    copies = []
    for i in range(5):
        for article in json.loads(json.dumps(doc["data"])):
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    qa["id"] = f"{qa['id']}-{i}"
            copies.append(dict(article, title=f"{article['title']}-{i}"))
    doc["data"] = copies
    path.write_text(json.dumps(doc))
    return str(path)


def test_the_confidence_floor_is_the_most_abstention_within_the_has_ans_budget():
    bench_quality = bench_quality_module()
    examples = [
        {"id": str(i), "answers": {"text": [gold] if gold else [], "answer_start": [0] if gold else []}}
        for i, gold in enumerate(["a", "b", "c", "d", None, None])
    ]

    def rows(*pairs):
        return [{"id": str(i), "prediction": p, "confidence": c} for i, (p, c) in enumerate(pairs)]

    # HasAns EM 75 answering all; leaving out the wrong answer (0.3) costs nothing, leaving out 0.5 costs 25 points
    found = rows(("a", 0.9), ("x", 0.3), ("c", 0.5), ("d", 0.8), ("y", 0.2), ("z", 0.6))
    assert bench_quality.pick_min_confidence(found, examples) == 0.5
    assert bench_quality.abstaining(found, 0.5) == {"0": "a", "1": "", "2": "c", "3": "d", "4": "", "5": "z"}
    # when every answerable question is right, any abstention costs 25 points: only the unanswerable ones below
    # the least confident right answer go
    right = rows(("a", 0.7), ("b", 0.4), ("c", 0.5), ("d", 0.8), ("y", 0.1), ("z", 0.3))
    assert bench_quality.pick_min_confidence(right, examples) == 0.4
    assert bench_quality.pick_min_confidence(right, examples, max_drop=25.0) == 0.5  # b may go, c may not
    # answerable 0.7 0.4 0.5 0.8 against unanswerable 0.1 0.3: always more confident
    assert bench_quality.confidence_ranking(right, examples) == 1.0
    # answerable 0.9 and 0.8 beat both unanswerable (0.2, 0.6); 0.3 and 0.5 beat 0.2 only: 6 of 8 pairs
    assert bench_quality.confidence_ranking(found, examples) == (2 + 1 + 1 + 2) / 8


@pytest.mark.slow
def test_the_quality_benchmark_runs_end_to_end_on_a_tiny_model(tmp_path):
    bench_quality = bench_quality_module()
    data = five_copies(DEV_FILE, tmp_path / "dev.json")
    result = bench_quality.main(
        ["--model_name_or_path", TINY_GPT2_DIR, "--data_file", str(data), "--output_dir", str(tmp_path / "bench"),
         "--num_train", "16", "--num_eval", "6", "--settings", "plain,constrain_to_context,recipe",
         "--extra_train_flags", "--max_steps 1 --from_scratch"]
    )  # fmt: skip
    assert list(result["settings"]) == ["plain", "constrain_to_context", "recipe"]
    assert "| recipe |" in result["table"] and "| (plain) |" in result["table"]
    with open(tmp_path / "bench" / "results.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["num_train"] == 16 and saved["num_eval"] == 6
    assert all(0 <= row["f1"] <= 100 for row in saved["settings"].values())


@pytest.mark.slow
def test_the_quality_benchmark_calibrates_the_confidence_floor_on_squad_v2(tmp_path):
    bench_quality = bench_quality_module()
    data = five_copies(DEV_V2_FILE, tmp_path / "dev-v2.json")
    result = bench_quality.main(
        ["--model_name_or_path", TINY_GPT2_DIR, "--data_file", data, "--output_dir", str(tmp_path / "bench"),
         "--num_train", "16", "--num_eval", "12", "--num_calibration", "12",
         "--settings", "recipe,recipe_never_abstain,recipe_min_confidence",
         "--extra_train_flags", "--max_steps 1 --from_scratch"]
    )  # fmt: skip
    settings = result["settings"]
    floor = settings["recipe_min_confidence"]["min_answer_confidence"]
    assert 0 <= floor <= 1
    assert all("HasAns_exact" in row and "NoAns_exact" in row for row in settings.values())
    assert all(0 <= row["confidence_ranking"] <= 1 for row in settings.values())
    # generate.py with the picked floor gives what the never-abstaining answers give with it left out
    curve = settings["recipe_never_abstain"]["min_confidence_curve"]
    assert set(curve) == {str(value) for value in bench_quality.CONFIDENCE_CURVE}
    budgets = settings["recipe_min_confidence"]["has_ans_budgets"]
    assert set(budgets) == {str(budget) for budget in bench_quality.HAS_ANS_BUDGETS}
    assert budgets[str(bench_quality.MAX_HAS_ANS_DROP)]["exact"] == settings["recipe_min_confidence"]["exact"]
    with open(tmp_path / "bench" / "predictions" / "recipe_min_confidence" / "predictions_greedy.jsonl") as f:
        calibrated = [json.loads(line) for line in f]
    with open(tmp_path / "bench" / "predictions" / "recipe_never_abstain" / "predictions_greedy.jsonl") as f:
        never = {row["id"]: row for row in map(json.loads, f)}
    assert [row["prediction"] for row in calibrated] == [
        never[row["id"]]["prediction"] if never[row["id"]]["confidence"] >= floor else "" for row in calibrated
    ]
    ids = {part: {json.loads(line)["id"] for line in (tmp_path / "bench" / f"{part}.jsonl").read_text().splitlines()}
           for part in ("train", "eval", "calibration")}  # fmt: skip
    assert len(ids["calibration"]) == 12 and not ids["calibration"] & (ids["eval"] | ids["train"])
