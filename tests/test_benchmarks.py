"""The benchmarks run: benchmarks/bench_quality.py (each quality lever a recipe can set, measured end to end through
run_qa_lora.py and generate.py) picks its SQuAD v2 confidence floor and ranking by hand-checked rules, and runs end to
end on a tiny model, on SQuAD v1.1 and on SQuAD v2 with its calibration questions."""

import json
import os

import pytest

from helpers import DEV_FILE, DEV_V2_FILE, REPO_ROOT, TINY_GPT2_DIR


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
