"""The benchmarks run: benchmarks/bench_quality.py (each quality lever a recipe can set, measured end to end through
run_qa_lora.py and generate.py) picks its SQuAD v2 confidence floor and ranking by hand-checked rules, and runs end to
end on a tiny model, on SQuAD v1.1 and on SQuAD v2 with its calibration questions."""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from builders import save_random_gpt2, save_tiny_model
from repo_paths import DEV_FILE, DEV_V2_FILE, REPO_ROOT, TINY_GPT2_DIR
from squad_lora.stats import bootstrap_mean, prediction_interval
from squad_reference import official_v2_evaluate


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
    argv = ["--model_name_or_path", TINY_GPT2_DIR, "--data_file", str(data), "--output_dir", str(tmp_path / "bench"),
            "--num_train", "16", "--num_eval", "6", "--folds", "1", "--seeds", "0,1",
            "--settings", "plain,constrain_to_context,recipe", "--extra_train_flags", "--max_steps 1 --from_scratch"]  # fmt: skip
    result = bench_quality.main(argv)
    assert list(result["settings"]) == ["plain", "constrain_to_context", "recipe"]
    assert "| recipe | 2 | 6 |" in result["table"] and "| (plain) |" in result["table"]
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert set(saved["runs"]) == {"fold1_seed0", "fold1_seed1"}
    (summary,) = saved["summaries"].values()
    assert (
        summary["command"].startswith("python benchmarks/bench_quality.py") and str(tmp_path) not in summary["command"]
    )
    for key, run in saved["runs"].items():
        data_dir = tmp_path / "bench" / "data" / key
        train, scored = ([json.loads(line) for line in (data_dir / f"{part}.jsonl").read_text().splitlines()]
                         for part in ("train", "eval"))  # fmt: skip
        fold = int(key[len("fold")])
        # scored: fold k's articles only (positions k, k+5, ...), the same questions for every seed; trained: others
        assert {ex["title"] for ex in scored} <= {f"{t}-{c}" for t, c in fold_titles(DEV_FILE, fold)}
        assert not {ex["title"] for ex in train} & {ex["title"] for ex in scored} and len(train) == 16
        assert list(run["plain"]["questions"]) == [ex["id"] for ex in scored]
        other_seed = key.replace("seed0", "seed1") if "seed0" in key else key.replace("seed1", "seed0")
        assert list(saved["runs"][other_seed]["recipe"]["questions"]) == [ex["id"] for ex in scored]
        for row in run.values():  # the per-question scores are what the metric averaged
            exact = [scores[0] for scores in row["questions"].values()]
            assert sum(exact) / len(exact) == pytest.approx(row["exact_match"])
    # resuming does nothing again
    before = (tmp_path / "bench" / "results.json").read_text()
    bench_quality.main([*argv, "--reuse_runs", "true"])
    assert json.loads((tmp_path / "bench" / "results.json").read_text())["runs"] == json.loads(before)["runs"]
    # other question counts in the same output dir would mix two protocols: refused
    with pytest.raises(SystemExit, match=r"fold1_seed0 runs were made with \{'num_train': 16"):
        bench_quality.main([*argv, "--num_train", "32"])


def fold_titles(source: str, fold: int) -> list[tuple[str, int]]:
    """(title, copy) of the articles five_copies puts at positions fold, fold+5, ..."""
    titles = [article["title"] for article in json.loads(Path(source).read_text(encoding="utf-8"))["data"]]
    positions = [(title, copy) for copy in range(5) for title in titles]
    return [pair for i, pair in enumerate(positions) if i % 5 == fold]


@pytest.mark.slow
def test_the_quality_benchmark_calibrates_the_confidence_floor_on_squad_v2(tmp_path):
    bench_quality = bench_quality_module()
    data = five_copies(DEV_V2_FILE, tmp_path / "dev-v2.json")
    result = bench_quality.main(
        ["--model_name_or_path", TINY_GPT2_DIR, "--data_file", data, "--output_dir", str(tmp_path / "bench"),
         "--num_train", "16", "--num_eval", "12", "--num_calibration", "12", "--folds", "1",
         "--settings", "recipe,recipe_never_abstain,recipe_min_confidence",
         "--extra_train_flags", "--max_steps 1 --from_scratch"]
    )  # fmt: skip
    settings = result["runs"]["fold1_seed0"]
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
    predictions = tmp_path / "bench" / "predictions" / "fold1_seed0"
    with open(predictions / "recipe_min_confidence" / "predictions_greedy.jsonl") as f:
        calibrated = [json.loads(line) for line in f]
    with open(predictions / "recipe_never_abstain" / "predictions_greedy.jsonl") as f:
        never = {row["id"]: row for row in map(json.loads, f)}
    assert [row["prediction"] for row in calibrated] == [
        never[row["id"]]["prediction"] if never[row["id"]]["confidence"] >= floor else "" for row in calibrated
    ]
    # the no-answer threshold picked on the calibration fold and applied to the scored questions, as the official
    # script applies a --na-prob-thresh
    scored_examples = [
        json.loads(line)
        for line in (tmp_path / "bench" / "data" / "fold1_seed0" / "eval.jsonl").read_text().splitlines()
    ]
    picked = settings["recipe_never_abstain"]["na_prob_threshold"]
    official = official_v2_evaluate(scored_examples, {row["id"]: row["prediction"] for row in never.values()},
                                    {row["id"]: row["no_answer_probability"] for row in never.values()}, picked["threshold"])  # fmt: skip
    assert 0 <= picked["threshold"] <= 1 and picked["exact"] == pytest.approx(official["exact"])
    assert picked["best_exact_on_scored"] == pytest.approx(official["best_exact"])
    data_dir = tmp_path / "bench" / "data" / "fold1_seed0"
    rows = {part: [json.loads(line) for line in (data_dir / f"{part}.jsonl").read_text().splitlines()]
            for part in ("train", "eval", "calibration")}  # fmt: skip
    titles = {part: {ex["title"] for ex in part_rows} for part, part_rows in rows.items()}
    # the calibration questions come from the next fold's articles, which nobody trains on
    assert len(rows["calibration"]) == 12 and not titles["calibration"] & (titles["eval"] | titles["train"])


def test_the_interval_of_a_certain_score_has_no_width_and_strata_keep_their_share():
    # 100 questions always right in one fold, 300 always wrong in another: resampling within folds moves nothing
    assert bootstrap_mean([[1.0] * 100, [0.0] * 300]) == (0.25, 0.25, 0.25)


def test_the_interval_of_a_coin_is_the_binomial_one():
    # 400 questions, half right: the standard error is 0.025, so the 95% interval is about +-0.049
    point, low, high = bootstrap_mean([[1.0, 0.0] * 200], seed=3)
    assert point == 0.5
    assert 0.04 < point - low < 0.06 and 0.04 < high - point < 0.06


def test_training_seeds_are_resampled_too():
    # two seeds of one fold, one always right and one always wrong: a resample holds both, one or the other twice
    point, low, high = bootstrap_mean([[[1.0] * 50, [0.0] * 50]])
    assert (point, low, high) == (0.5, 0.0, 1.0)


def test_a_paired_difference_is_the_per_question_difference():
    plain = np.array([1.0, 0.0] * 200)
    better = plain.copy()
    better[1:20:2] = 1.0  # ten more questions right, nothing else changed
    point, low, high = bootstrap_mean([better - plain])
    assert point == pytest.approx(10 / 400)
    assert 0 <= low < point < high  # never below zero: no question got worse
    # unpaired, the same two settings' intervals overlap almost entirely
    assert bootstrap_mean([plain])[2] > bootstrap_mean([better])[1]


def test_the_prediction_interval_by_hand():
    # fold A gains 0.5 (question variance 1/3), fold B 0: spread 0.125, of which 1/24 is question noise, so
    # tau^2 = 1/12; a new run of 4 questions adds (1/6) / 4, the mean's own uncertainty 0.125 / 2: 3/16 in all
    mean, low, high = prediction_interval([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], num_questions=4)
    assert mean == 0.25
    assert high - mean == pytest.approx(12.706 * math.sqrt(3 / 16)) and mean - low == pytest.approx(high - mean)
    # folds that agree beyond their question noise: no spread left (tau^2 floored at 0), only the question noise
    # of the new run and of the estimate remain; seeds of a fold are runs too, but not more degrees of freedom
    agree = [[[1.0, 0.0] * 100, [0.0, 1.0] * 100]] * 3
    mean, low, high = prediction_interval(agree, num_questions=200)
    question_variance = 0.25 * 200 / 199
    assert mean == 0.5 and high - mean == pytest.approx(4.303 * math.sqrt(question_variance / 200))
    with pytest.raises(ValueError, match="at least 2 folds"):
        prediction_interval([[[1.0, 0.0], [0.0, 1.0]]], num_questions=200)


def test_the_prediction_interval_holds_a_fresh_draw_95_times_in_100():
    # runs whose true gain varies from fold to fold (sd 4 points around +5) and questions that flip either way:
    # the fresh 200-question draw lands inside the interval from 4 folds of 400 at least 95% of the time (the t at
    # folds - 1 degrees of freedom on the whole variance errs wide: about 98%), while an interval for the mean gain
    # alone (the folds' standard error) misses it one time in three
    rng = np.random.default_rng(0)

    def run(num_questions):
        gain = rng.normal(0.05, 0.04)
        return rng.choice([1.0, -1.0, 0.0], size=num_questions, p=[0.15 + gain / 2, 0.15 - gain / 2, 0.7])

    inside = inside_mean_only = 0
    for _ in range(400):
        folds = [run(400) for _ in range(4)]
        fresh = run(200).mean()
        mean, low, high = prediction_interval(folds, num_questions=200)
        inside += low <= fresh <= high
        standard_error = np.std([fold.mean() for fold in folds], ddof=1) / 2
        inside_mean_only += abs(fresh - mean) <= 3.182 * standard_error
    assert inside / 400 >= 0.95
    assert inside_mean_only / 400 < 0.85


def test_the_benchmark_summary_pairs_each_setting_with_plain_on_the_same_questions():
    bench_quality = bench_quality_module()

    def run(scores, seconds):
        return {"questions": {str(i): [100.0 * s, 100.0 * s] for i, s in enumerate(scores)},
                "exact_match": 100.0 * sum(scores) / len(scores), "train_seconds": seconds}  # fmt: skip

    runs = {
        "fold1_seed0": {"plain": run([1, 0, 0, 1], 10), "recipe": run([1, 1, 0, 1], 15)},
        "fold2_seed0": {"plain": run([0, 0, 1, 1], 10), "recipe": run([0, 1, 1, 1], 10)},
    }
    summary = bench_quality.summarize(
        runs, [("fold1", "fold1_seed0"), ("fold2", "fold2_seed0")], ["plain", "recipe"], False
    )
    assert summary["plain"]["exact"][0] == 50.0 and summary["recipe"]["exact"][0] == 75.0
    assert summary["recipe"]["delta_exact"][0] == 25.0 and summary["recipe"]["delta_exact"][1] >= 0
    assert summary["recipe"]["train_time_vs_plain"] == 1.25 and summary["recipe"]["questions"] == 8
    assert "| recipe | 2 | 8 | 75.0 [" in bench_quality.render(summary)
    # two folds: where a fresh draw's gain should land, from their spread
    assert summary["recipe"]["predicted_delta_exact"][0] == 25.0
    one_fold = bench_quality.summarize(runs, [("fold1", "fold1_seed0")], ["plain", "recipe"], False)
    assert "predicted_delta_exact" not in one_fold["recipe"]


def test_a_protocol_run_another_way_is_paired_on_the_same_runs_and_questions():
    bench_quality = bench_quality_module()

    def setting(scores):
        return {"questions": {str(i): [100.0 * s, 50.0 * s] for i, s in enumerate(scores)}}

    here = {"fold1_seed0": {"plain": setting([1, 1, 0, 1])}, "fold2_seed0": {"plain": setting([1, 0, 0, 1])}}
    # the other way: fold 1 one question worse; fold 2 not run there, so not paired
    there = {"fold1_seed0": {"plain": setting([1, 0, 0, 1]), "recipe": setting([1, 1, 1, 1])}}
    rows = bench_quality.paired_with(here, there, ["plain", "recipe"])
    assert list(rows) == ["plain"] and rows["plain"]["runs"] == ["fold1_seed0"]
    assert rows["plain"]["delta_exact"][0] == 25.0 and rows["plain"]["delta_f1"][0] == 12.5
    assert rows["plain"]["delta_exact"][1] >= 0  # no question got worse


@pytest.mark.slow
def test_the_gpu_check_runs_its_cpu_checks(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import gpu_check

    from fakes import hide_gpus

    output = tmp_path / "gpu_check.json"
    results = gpu_check.main(["--device", "cpu", "--model_name_or_path", TINY_GPT2_DIR, "--from_scratch",
                              "--num_questions", "16", "--output", str(output)])  # fmt: skip
    checks = results["checks"]
    assert {name: row["status"] for name, row in checks.items()} == {
        "bf16 shared vs unshared": "pass",
        "4-D mask through sdpa": "pass",
        "flash-attention packing": "not run",
        "QLoRA 4-bit": "not run",
        "generate.py shared KV cache": "pass",
        "speed": "measured",
    }
    assert checks["bf16 shared vs unshared"]["fp32"] <= gpu_check.FP32_TOLERANCE
    assert checks["QLoRA 4-bit"]["detail"] == "bitsandbytes 4-bit training needs CUDA"
    assert 0 < checks["speed"]["mfu"] < 1 and checks["speed"]["questions_per_second"] > 0
    assert json.loads(output.read_text())["checks"] == json.loads(json.dumps(checks))
    hide_gpus(monkeypatch)  # --device cuda (the default) on a machine without one, even where the suite has a GPU
    with pytest.raises(SystemExit, match="no CUDA GPU is visible"):
        gpu_check.main(["--model_name_or_path", TINY_GPT2_DIR])


def test_eager_attention_is_not_exact_with_the_boolean_branch_mask():
    """Why shared contexts refuse eager attention: given the collator's boolean mask, eager's loss is not the
    separate examples' (sdpa's is); given the same mask as additive scores, it is."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import gpu_check

    from squad_lora.cli import parse_args

    (args,), _, _ = parse_args((gpu_check.CheckArguments,), ["--device", "cpu", "--model_name_or_path",
                                                              TINY_GPT2_DIR, "--from_scratch"])  # fmt: skip
    setup = gpu_check.Setup(args)
    separate = setup.losses(setup.model("sdpa"), shared=False)
    assert setup.losses(setup.model("sdpa"), shared=True) == pytest.approx(separate, rel=1e-6)
    assert setup.losses(setup.model("eager"), shared=True, additive_mask=True) == pytest.approx(separate, rel=1e-6)
    assert setup.losses(setup.model("eager"), shared=True) != pytest.approx(separate, rel=1e-5)


@pytest.mark.slow
def test_the_peer_benchmark_trains_the_same_tokens_as_trl(tmp_path, tiny_tokenizer):
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_peers

    model = save_random_gpt2(tmp_path / "model", tiny_tokenizer)
    output = tmp_path / "peers.json"
    results = bench_peers.main(["--model_name_or_path", model, "--data_file", DEV_FILE, "--num_questions", "12",
                                "--repeats", "1", "--output", str(output)])  # fmt: skip
    assert list(results["settings"]) == list(bench_peers.SETTINGS)
    # TRL got our prompts and answers as text and tokenized them itself: the same token ids, the same labels
    for name, same in results["same_training"].items():
        assert same["same_labelled_tokens"] and same.get("same_questions", True), name
        assert same["labelled_tokens"] == results["same_training"]["ours_default"]["labelled_tokens"]
    assert "same_questions" not in results["same_training"]["trl_packing"]  # packed rows mix questions
    for name, row in results["settings"].items():
        assert row["questions_per_second"] > 0 and 0 < row["mfu"] < 1
        if name != "trl_packing":  # a packed step holds rows, not questions
            assert row["max_questions_per_step"] <= 4 and row["steps"] == 3  # 12 questions, batches of 4
    # bf16 autocast trains the same run but for its arithmetic: a loss near the fp32 default's, not equal to it
    bf16 = results["settings"]["ours_bf16"]
    assert 0 < abs(bf16["loss_minus_ours_default"]) < 0.1 * results["settings"]["ours_default"]["train_loss"]
    assert results["bf16_matmul_peak_gflops"] > 0
    saved = json.loads(output.read_text())
    assert saved["command"].startswith("python benchmarks/bench_peers.py") and str(tmp_path) not in saved["command"]
    assert "| ours_default |" in saved["table"]


def test_the_peer_benchmark_arithmetic_on_known_runs():
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_peers

    def record(seconds, loss):
        return {"train_seconds": seconds, "peak_rss_bytes": 2**30, "train_loss": loss, "steps": 3,
                "batch_questions": [4, 4, 2]}  # fmt: skip

    runs = {"ours_default": [record(2.0, 5.0), record(1.0, 5.5)], "ours_bf16": [record(0.5, 5.25)],
            "trl_default": [record(8.0, 5.125)]}  # fmt: skip
    rows = bench_peers.summarize(runs, flops=1e9, peaks={"fp32": 1e10, "bf16": 4e10}, num_questions=10)
    ours, bf16, trl = rows["ours_default"], rows["ours_bf16"], rows["trl_default"]
    assert ours["questions_per_second"] == 10.0 and ours["vs_trl_default"] == 8.0 and ours["mfu"] == 0.1  # fastest
    assert bf16["vs_trl_default"] == 16.0 and bf16["mfu"] == 0.05  # against the bf16 peak
    assert bf16["loss_minus_ours_default"] == 0.25 and trl["loss_minus_ours_default"] == 0.125  # first runs' losses
    assert ours["max_questions_per_step"] == 4 and ours["all_train_seconds"] == [2.0, 1.0]
    # the same questions as the reference in another order are the same training; one changed label is not
    reference = {"examples": [[[1, 2, 3], [-100, 2, 3]], [[4, 5], [-100, 5]]]}
    assert bench_peers.same_training({"examples": reference["examples"][::-1]}, reference, packed=False) == {
        "labelled_tokens": 3, "same_labelled_tokens": True, "same_questions": True}  # fmt: skip
    changed = {"examples": [[[1, 2, 3], [-100, -100, 3]], [[4, 5], [-100, 5]]]}
    assert bench_peers.same_training(changed, reference, packed=True) == {"labelled_tokens": 2,
                                                                           "same_labelled_tokens": False}  # fmt: skip


def test_the_generation_benchmark_arithmetic_on_known_runs():
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_generate

    seconds = {"plain_generate": [4.0, 5.0], "ours_default": [1.0, 2.0]}
    answers = {"plain_generate": ["a", "b", "c", "d"], "ours_default": ["a", "x", "c", "d"]}
    rows = bench_generate.summarize(seconds, answers, num_questions=4)
    assert rows["ours_default"]["vs_plain_generate"] == 4.0 and rows["ours_default"]["questions_per_second"] == 4.0
    assert rows["ours_default"]["same_answers_as_plain_generate"] == 3 and rows["ours_default"]["seconds"] == 1.0


def test_the_generation_benchmark_answers_as_plain_generate(tmp_path, tiny_tokenizer):
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_generate

    model = save_tiny_model("llama", tiny_tokenizer, tmp_path / "model")
    output = tmp_path / "generate.json"
    results = bench_generate.main(["--model_name_or_path", model, "--data_file", DEV_FILE, "--num_questions", "12",
                                   "--max_new_tokens", "6", "--plain_batch_size", "5", "--repeats", "1",
                                   "--output", str(output)])  # fmt: skip
    assert list(results["sets"]) == list(bench_generate.QUESTION_SETS)
    for held in results["sets"].values():
        assert list(held["settings"]) == list(bench_generate.SETTINGS)
        for name, row in held["settings"].items():
            assert row["questions_per_second"] > 0
            exact = name != "ours_bf16"  # 16-bit answers may differ: the count is what is measured
            assert row["same_answers_as_plain_generate"] == held["questions"] or not exact, name
    # the sample's first 12 questions: contexts of 6 and 5 questions, then a third context
    assert results["sets"]["dense"]["questions"] == 12 and results["sets"]["dense"]["contexts"] == 3
    assert results["sets"]["at_most_5"]["questions_per_context"] <= 5
    one = results["sets"]["one_per_context"]
    assert one["questions"] == one["contexts"] and one["questions_per_context"] == 1
    saved = json.loads(output.read_text())
    assert saved["command"].startswith("python benchmarks/bench_generate.py") and str(tmp_path) not in saved["command"]
    with pytest.raises(SystemExit, match="the baseline"):
        bench_generate.main(["--model_name_or_path", model, "--data_file", DEV_FILE, "--settings", "ours_default"])


FAKE_LLAMA_SERVER = """#!{python}
# llama-server's command line, /health and /completion as the benchmarks use them; each request's body is recorded
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

argv = sys.argv[1:]
port = int(argv[argv.index("--port") + 1])

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        sys.stderr.write("log line " * 10000)  # the real server logs each request: more than a pipe holds
        sys.stderr.flush()
        with open(os.environ["LLAMA_RECORD"], "a") as f:
            f.write(json.dumps({{"argv": argv, "body": body}}) + "\\n")
        reply = json.dumps({{"content": " Denver Broncos"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def test_the_llama_cpp_rows_send_the_same_prompt_tokens_to_a_server_started_per_slot_count(
    tmp_path, tiny_tokenizer, monkeypatch
):
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_generate
    from transformers import AutoConfig

    from squad_lora.args import DecodingArguments, PromptArguments
    from squad_lora.plan import resolve_answer_plan
    from squad_lora.prompt import build_prompts

    model = save_tiny_model("llama", tiny_tokenizer, tmp_path / "model")
    binary, record = tmp_path / "llama-server", tmp_path / "requests.jsonl"
    binary.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable), encoding="utf-8")
    binary.chmod(0o755)
    monkeypatch.setenv("LLAMA_RECORD", str(record))
    results = bench_generate.main(["--model_name_or_path", model, "--data_file", DEV_FILE, "--num_questions", "6",
                                   "--max_new_tokens", "6", "--repeats", "1", "--question_sets", "one_per_context",
                                   "--settings", "plain_generate", "--llama_server", str(binary),
                                   "--gguf", "/models/smollm2-f16.gguf", "--llama_slots", "1,2"])  # fmt: skip
    rows = results["sets"]["one_per_context"]["settings"]
    assert list(rows) == ["plain_generate", "llama_cpp_smollm2_f16_1slots", "llama_cpp_smollm2_f16_2slots"]
    requests = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(requests) == 2 * 6
    examples = bench_generate.question_set(bench_generate.load_squad_file(DEV_FILE)[0], 6, "one_per_context")
    config = AutoConfig.from_pretrained(model)
    plan = resolve_answer_plan(DecodingArguments(max_new_tokens=6), PromptArguments(), tiny_tokenizer, config)
    prompts, _ = build_prompts(examples, tiny_tokenizer, plan.max_prompt_tokens, plan.template)
    for slots in (1, 2):
        sent = [r for r in requests if r["argv"][r["argv"].index("--parallel") + 1] == str(slots)]
        assert sorted(r["body"]["prompt"] for r in sent) == sorted(prompts)  # token ids, not text
        assert all(r["argv"][r["argv"].index("-m") + 1] == "/models/smollm2-f16.gguf" for r in sent)
        assert {(r["body"]["n_predict"], r["body"]["temperature"], tuple(r["body"]["stop"])) for r in sent} == {
            (6, 0, ("\n",))
        }
    with pytest.raises(SystemExit, match="needs --gguf"):
        bench_generate.main(["--model_name_or_path", model, "--data_file", DEV_FILE, "--llama_server", str(binary)])


def bench_long_context_module():
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    import bench_long_context

    return bench_long_context


def joined_sample_articles(path) -> str:
    """The sample dev file's eight one-paragraph articles as two articles of four paragraphs each; every other
    paragraph padded with whitespace (answer_start moved with it), which joining strips and re-basing must undo."""
    doc = json.loads(Path(DEV_FILE).read_text(encoding="utf-8"))
    articles = []
    for k in range(2):
        paragraphs = []
        for j, article in enumerate(doc["data"][4 * k : 4 * k + 4]):
            (paragraph,) = json.loads(json.dumps(article["paragraphs"]))
            if j % 2:
                paragraph["context"] = f"  {paragraph['context']} "
                for qa in paragraph["qas"]:
                    for gold in qa["answers"]:
                        gold["answer_start"] += 2
            paragraphs.append(paragraph)
        articles.append({"title": f"Joined {k}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return str(path)


@pytest.mark.slow
def test_the_long_context_benchmark_answers_past_the_first_window_end_to_end(tmp_path, tiny_model_dir, tiny_tokenizer):
    bench = bench_long_context_module()
    data = joined_sample_articles(tmp_path / "articles.json")
    argv = ["--model_name_or_path", tiny_model_dir, "--data_file", data, "--output_dir", str(tmp_path / "bench"),
            "--max_context_tokens", "64", "--doc_stride", "16", "--max_article_tokens", "400",
            "--questions_per_article", "3"]  # fmt: skip
    results = bench.main(argv)
    window = 64

    def rows(name):
        return {row["id"]: row for row in map(json.loads, (tmp_path / "bench" / name).read_text().splitlines())}

    long, first, paragraph = (rows(f"data/{name}.jsonl") for name in ("long", "first_window", "paragraph"))
    assert list(long) == list(first) == list(paragraph) == [q["id"] for q in results["questions"]]
    assert len(long) == 6 and {q["title"] for q in results["questions"]} == {"Joined 0", "Joined 1"}
    for qid, question in long.items():
        context = question["context"]
        offsets = tiny_tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        assert len(offsets) > 2 * window and context == context.strip()  # the four paragraphs joined, stripped
        for text, start in zip(question["answers"]["text"], question["answers"]["answer_start"]):
            assert context[start : start + len(text)] == text  # re-based onto the joined context
            assert start >= offsets[window - 1][1]  # past the first window's last token
        cut = first[qid]["context"]
        assert context.startswith(cut) and len(tiny_tokenizer(cut)["input_ids"]) <= window
        own = paragraph[qid]  # the question's own paragraph, its answers where the paragraph has them
        for text, start in zip(own["answers"]["text"], own["answers"]["answer_start"]):
            assert own["context"][start : start + len(text)] == text
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved["command"].startswith("python benchmarks/bench_long_context.py") and str(tmp_path) not in json.dumps(
        {key: saved[key] for key in ("command", "model", "data_file")}
    )
    assert saved["file"]["questions"] == 6 and [a["questions"] for a in saved["file"]["articles"]] == [3, 3]
    windows = {a["title"]: a["windows"] for a in saved["file"]["articles"]}
    assert all(a["context_tokens"] <= 400 and a["questions_past_first_window"] >= 3 for a in saved["file"]["articles"])
    # generate.py split each long context into the windows the benchmark counted, and no other setting's contexts
    kept = rows("predictions/windows/predictions_greedy.jsonl")
    for q in saved["questions"]:
        assert q["answer_token"] >= window and q["answer_windows"] and min(q["answer_windows"]) > 0
        assert kept[q["id"]]["windows"] == windows[q["title"]]
        assert q["settings"]["windows"]["window"] == kept[q["id"]]["window"]
    for name in ("first_window", "whole", "paragraph"):
        assert not any("window" in row for row in rows(f"predictions/{name}/predictions_greedy.jsonl").values())
    # the summary is the per-question scores' arithmetic
    summary = saved["summary"]
    assert list(summary["settings"]) == list(bench.SETTINGS)
    for name, row in summary["settings"].items():
        exact = [q["settings"][name]["exact"] for q in saved["questions"]]
        assert row["exact"][0] == pytest.approx(sum(exact) / 6) and row["found"] == exact.count(100.0)
    assert set(summary["differences"]) == {f"{a} - {b}" for a, b in bench.PAIRS}
    assert "| windows - first_window |" in saved["table"] and "| first_window |" in results["table"]


def test_the_long_context_benchmark_arithmetic_on_known_scores():
    bench = bench_long_context_module()

    def question(title, first, windows, window, answer_windows):
        return {"title": title, "answer_windows": answer_windows,
                "settings": {"first_window": {"exact": first, "f1": first},
                             "windows": {"exact": windows, "f1": windows / 2, "window": window}}}  # fmt: skip

    questions = [question("A", 0.0, 100.0, 2, [2]), question("A", 100.0, 100.0, 1, [2, 3]),
                 question("B", 0.0, 0.0, None, [1]), question("B", 0.0, 100.0, 4, [3])]  # fmt: skip
    seconds = {"first_window": 14.0, "windows": 50.0}
    summary = bench.summarize(questions, ["first_window", "windows"], seconds, startup=10.0)
    first, windows = summary["settings"]["first_window"], summary["settings"]["windows"]
    assert first["exact"][0] == 25.0 and windows["exact"][0] == 75.0 and windows["f1"][0] == 37.5
    assert windows["found"] == 3 and first["found"] == 1
    assert windows["kept_an_answer_window"] == 1  # the first question's; the others kept a window not holding it
    # per question, less generate.py's start: (50 - 10) / 4 against (14 - 10) / 4
    assert windows["seconds_per_question"] == 10.0 and windows["time_vs_first_window"] == 10.0
    (pair,) = summary["differences"]
    assert pair == "windows - first_window"
    assert summary["differences"][pair]["exact"][0] == 50.0  # +100, 0, 0, +100 over four questions
    assert summary["differences"][pair]["f1"][0] == pytest.approx((50 - 50 + 0 + 50) / 4)


def test_the_long_context_benchmark_leaves_out_the_articles_its_adapter_trained_on(tmp_path):
    from squad_lora.errors import ConfigError
    from squad_lora.outputs import write_yaml

    bench = bench_long_context_module()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_yaml(str(run_dir / "run_config.yaml"), {"train_file": DEV_FILE})
    titles = {article["title"] for article in json.loads(Path(DEV_FILE).read_text(encoding="utf-8"))["data"]}
    assert bench.trained_titles(str(run_dir)) == titles
    assert bench.trained_titles(None) == set()  # a base model, zero-shot, trained on none
    write_yaml(str(run_dir / "run_config.yaml"), {"train_file": str(tmp_path / "gone.jsonl")})
    with pytest.raises(ConfigError, match=r"train_file .*gone.jsonl is not here"):
        bench.trained_titles(str(run_dir))
    with pytest.raises(ConfigError, match="one of them"):
        bench.main(["--adapter", str(run_dir), "--model_name_or_path", "x", "--data_file", DEV_FILE])
    with pytest.raises(ConfigError, match="unknown nope"):
        bench.main(["--model_name_or_path", "x", "--data_file", DEV_FILE, "--settings", "windows,nope"])
