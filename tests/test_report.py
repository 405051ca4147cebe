"""report.py: the results table and plots of finished runs, with a strategy comparison where a run has one, and
--question's answers across a run's evaluations; and run_seed_experiments.sh, which trains the seed's five configs and
reports them."""

import csv
import json
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from builders import ALPHA_LORA, ATTN, BETA_LORA, MLP_PROJ, TINY_NUM_PARAMS, lora_params
from repo_paths import DEV_FILE, REPO_ROOT, TRAIN_FILE
from squad_lora import outputs
from squad_lora.commands import evaluate as evaluate_squad
from squad_lora.commands import report
from squad_lora.data import load_squad_file
from squad_lora.errors import SquadLoraError


def write_strategy_comparison(run_dir):
    """generate.py-style predictions for two strategies, compared by evaluate_squad.py into run_dir/preds."""
    examples, _ = load_squad_file(DEV_FILE)
    preds_dir = os.path.join(run_dir, "preds")
    os.makedirs(preds_dir)
    greedy = [
        {"id": ex["id"], "strategy": "greedy", "sample": 0, "prediction": ex["answers"]["text"][0]} for ex in examples
    ]
    top_k = [{**row, "strategy": "top_k"} for row in greedy]  # sample 0: every answer right
    top_k += [{"id": ex["id"], "strategy": "top_k", "sample": 1, "prediction": "zebra quartz"} for ex in examples]
    for strategy, rows in (("greedy", greedy), ("top_k", top_k)):
        with open(os.path.join(preds_dir, f"predictions_{strategy}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    evaluate_squad.main([DEV_FILE, "--compare", preds_dir])
    assert os.path.isfile(os.path.join(preds_dir, "strategy_comparison.json"))


@pytest.fixture(scope="module")
def report_run(two_runs, tmp_path_factory):
    write_strategy_comparison(two_runs.alpha_dir)
    output_dir = str(tmp_path_factory.mktemp("report"))
    plots = []
    plot_bars = report.plot_bars

    def recording_plot_bars(groups, series, title, path, errors=None):
        plots.append({"groups": groups, "series": series, "errors": errors, "path": path})
        return plot_bars(groups, series, title, path, errors)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(report, "plot_bars", recording_plot_bars)
        result = report.main([two_runs.alpha_dir, two_runs.beta_dir, "--output_dir", output_dir])
    return SimpleNamespace(result=result, output_dir=output_dir, plots={os.path.basename(p["path"]): p for p in plots})


@pytest.mark.slow
def test_report_rows_hold_each_runs_settings_and_parameter_counts(two_runs, report_run):
    alpha, beta = report_run.result["rows"]
    assert (alpha["name"], alpha["r"], alpha["alpha"], alpha["dropout"], alpha["lr"], alpha["target_modules"]) == (
        "alpha",
        8,
        16,
        0.1,
        1e-2,
        "c_attn",
    )
    assert (beta["name"], beta["r"], beta["alpha"], beta["lr"], beta["target_modules"]) == (
        "beta",
        4,
        16,
        2e-4,
        "c_attn, mlp.c_proj",
    )
    assert (alpha["trainable_params"], alpha["all_params"]) == (ALPHA_LORA, TINY_NUM_PARAMS + ALPHA_LORA)
    assert (beta["trainable_params"], beta["all_params"]) == (BETA_LORA, TINY_NUM_PARAMS + BETA_LORA)
    assert alpha["trainable_percent"] == pytest.approx(100 * ALPHA_LORA / (TINY_NUM_PARAMS + ALPHA_LORA))
    assert alpha["exact_match"] == two_runs.alpha["eval_metrics"]["eval_exact_match"]
    assert alpha["f1"] == two_runs.alpha["eval_metrics"]["eval_f1"]
    assert beta["exact_match"] is None and beta["f1"] is None  # generation was off
    assert alpha["train_runtime"] == two_runs.alpha["train_metrics"]["train_runtime"]
    assert beta["tokens_per_second"] == pytest.approx(two_runs.beta["train_tokens_per_second"])


@pytest.mark.slow
def test_results_md_and_csv(two_runs, report_run):
    with open(os.path.join(report_run.output_dir, "results.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == (
        "| name | r | alpha | dropout | lr | target modules | trainable params | all params | trainable % "
        "| EM | F1 | train time (s) | tokens/s |"
    )
    assert len(lines) == 4
    alpha_cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    beta_cells = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert float(alpha_cells[2]) == float(beta_cells[2]) == 16  # lora_alpha: 16 or 16.0
    assert alpha_cells[:10] == [
        "alpha",
        "8",
        alpha_cells[2],
        "0.1",
        "0.01",
        "c_attn",
        "4,096",
        "188,992",
        f"{100 * ALPHA_LORA / (TINY_NUM_PARAMS + ALPHA_LORA):.4f}",
        f"{two_runs.alpha['eval_metrics']['eval_exact_match']:.2f}",
    ]
    assert beta_cells[:10] == [
        "beta",
        "4",
        beta_cells[2],
        "0.1",
        "0.0002",
        "c_attn, mlp.c_proj",
        "4,608",
        "189,504",
        f"{100 * BETA_LORA / (TINY_NUM_PARAMS + BETA_LORA):.4f}",
        "–",
    ]

    with open(os.path.join(report_run.output_dir, "results.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [key for _, key in report.COLUMNS]
    assert [(row["name"], int(row["trainable_params"]), int(row["all_params"])) for row in rows] == [
        ("alpha", ALPHA_LORA, TINY_NUM_PARAMS + ALPHA_LORA),
        ("beta", BETA_LORA, TINY_NUM_PARAMS + BETA_LORA),
    ]
    assert float(rows[0]["f1"]) == two_runs.alpha["eval_metrics"]["eval_f1"]
    assert rows[1]["exact_match"] == rows[1]["f1"] == ""


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["loss_curves.png", "em_f1.png", "decoding_strategies.png"])
def test_report_pngs_are_valid_images(report_run, name):
    path = os.path.join(report_run.output_dir, name)
    assert path in report_run.result["files"]
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert image.format == "PNG"
        assert 300 < width < 4000 and 200 < height < 3000
        # something was drawn: not a blank canvas
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10


@pytest.mark.slow
def test_report_plots_get_the_runs_and_the_strategy_comparison(two_runs, report_run):
    em_f1 = report_run.plots["em_f1.png"]
    assert em_f1["groups"] == ["alpha", "beta"]
    assert em_f1["series"] == {
        "EM": [two_runs.alpha["eval_metrics"]["eval_exact_match"], None],
        "F1": [two_runs.alpha["eval_metrics"]["eval_f1"], None],
    }
    strategies = report_run.plots["decoding_strategies.png"]
    assert strategies["groups"] == ["alpha\ngreedy", "alpha\ntop_k"]  # beta has no comparison
    assert strategies["series"]["EM"] == pytest.approx([100.0, 50.0])
    assert strategies["series"]["F1"] == pytest.approx([100.0, 50.0])
    assert strategies["errors"]["EM"] == pytest.approx([0, 50 * math.sqrt(2)])  # stdev of (100, 0)
    assert set(report_run.plots) == {"em_f1.png", "decoding_strategies.png"}

    curves = report.loss_curves(two_runs.alpha)
    assert curves["train"][0] == [1, 2, 3, 4]
    assert curves["validation"][0][:2] == [2, 4]
    assert all(math.isfinite(loss) for loss in curves["train"][1] + curves["validation"][1])


def test_report_without_a_strategy_comparison_draws_no_decoding_plot(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = {
        "run_name": "hand",
        "lora": {"lora_r": 0, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": None},
        "trainable_params": 10,
        "all_params": 10,
        "trainable_percent": 100.0,
        "train_metrics": {},
        "eval_metrics": {"eval_exact_match": 12.5, "eval_f1": 20.0},
        "log_history": [{"loss": 2.0, "step": 1}, {"eval_loss": 1.5, "step": 1}],
    }
    (run_dir / "run_summary.json").write_text(json.dumps(summary))
    result = report.main([str(run_dir), "--output_dir", str(tmp_path / "report")])
    assert [os.path.basename(path) for path in result["files"]] == [
        "results.md",
        "results.csv",
        "loss_curves.png",
        "em_f1.png",
    ]
    assert not os.path.exists(tmp_path / "report" / "decoding_strategies.png")
    (row,) = result["rows"]
    assert row["target_modules"] == "all (full fine-tuning)" and row["alpha"] is None
    assert (row["exact_match"], row["f1"]) == (12.5, 20.0)


def test_run_dir_without_a_summary_is_named(tmp_path):
    good, empty = tmp_path / "good", tmp_path / "not-a-run"
    good.mkdir()
    empty.mkdir()
    (good / "run_summary.json").write_text("{}")
    output_dir = tmp_path / "report"
    with pytest.raises(SquadLoraError) as info:
        report.main([str(empty), "--output_dir", str(output_dir)])
    assert str(info.value).startswith(f"{empty}: no run_summary.json")
    assert not output_dir.exists()  # nothing written for a half-valid list of runs

    (good / "run_summary.json").write_text("{not json")
    with pytest.raises(SquadLoraError, match="run_summary.json: not valid JSON"):
        report.main([str(good), "--output_dir", str(output_dir)])


# ---------------------------------------------------------------------------
# run_seed_experiments.sh: five tiny runs and their report
# ---------------------------------------------------------------------------

SEED_CONFIGS = {
    # name: (r, lr, target modules, trainable params of the tiny model)
    "exp_r4_lr1e-4_attn": (4, 1e-4, "c_attn", lora_params(4, ATTN)),
    "exp_r8_lr2e-4_attn": (8, 2e-4, "c_attn", lora_params(8, ATTN)),
    "exp_r16_lr5e-4_attn": (16, 5e-4, "c_attn", lora_params(16, ATTN)),
    "exp_r8_lr2e-4_attn_mlp": (8, 2e-4, "c_attn, mlp.c_proj", lora_params(8, ATTN, MLP_PROJ)),
    "exp_r32_lr2e-4_attn_mlp": (32, 2e-4, "c_attn, mlp.c_proj", lora_params(32, ATTN, MLP_PROJ)),
}


@pytest.mark.slow
def test_run_seed_experiments_trains_five_runs_and_reports_them(tiny_model_dir, tmp_path):
    overrides = [
        "--model_name_or_path",
        tiny_model_dir,
        "--train_file",
        TRAIN_FILE,
        "--validation_file",
        DEV_FILE,
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--max_eval_samples",
        "2",
        "--eval_generation_samples",
        "2",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    env = {**os.environ, "OUTPUT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "run_seed_experiments.sh"), *overrides],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in SEED_CONFIGS:
        assert os.path.isfile(tmp_path / name / "run_summary.json"), name
    with open(tmp_path / "report" / "results.csv", encoding="utf-8", newline="") as f:
        rows = {row["name"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(SEED_CONFIGS)
    for name, (r, lr, target_modules, trainable) in SEED_CONFIGS.items():
        row = rows[name]
        assert (int(row["r"]), float(row["lr"]), row["target_modules"]) == (r, lr, target_modules), name
        assert (int(row["trainable_params"]), int(row["all_params"])) == (trainable, TINY_NUM_PARAMS + trainable), name
        assert 0 <= float(row["f1"]) <= 100  # the overrides reached every run: 2 questions answered
    for name in ("results.md", "loss_curves.png", "em_f1.png"):
        assert os.path.isfile(tmp_path / "report" / name)
    assert re.search(r"\| exp_r32_lr2e-4_attn_mlp \| 32 \| 32(\.0)? \|", result.stdout)  # report.py printed the table


# ---------------------------------------------------------------------------
# --question: one question's answers across a run's evaluations (eval_predictions_*.jsonl)
# ---------------------------------------------------------------------------


def answer_row(step, qid, prediction, exact_match, f1):
    return {
        "step": step, "id": qid, "question": f"What is {qid}?", "answers": ["gold", "gold", "other | one"],
        "prediction": prediction, "exact_match": exact_match, "f1": f1,
    }  # fmt: skip


@pytest.fixture
def answered_run(tmp_path):
    """A run dir (still training: no run_summary.json) with the answer files of three evaluations, out of order by
    name, and a file that is none of them."""
    run_dir = tmp_path / "run"
    for name, step, prediction in (("step10", 10, "gold"), ("step9", 9, "go|d"), ("final", 10, None)):
        rows = [answer_row(step, "q1", prediction, int(prediction == "gold"), 1.0 if prediction == "gold" else 0.25)]
        outputs.write_jsonl(outputs.answers_path(str(run_dir), name), rows + [answer_row(step, "q2", "x", 0, 0.0)])
    (run_dir / "eval_predictions_notes.jsonl").write_text("not an evaluation's\n")
    return run_dir


def test_question_shows_its_answer_at_each_evaluation_in_order(answered_run, tmp_path, capsys):
    result = report.main([str(answered_run), "--question", "q1", "--output_dir", str(tmp_path / "report")])
    assert result["markdown"].splitlines() == [
        f"## {answered_run}: q1",
        "",
        "What is q1? (gold: gold | other | one)",
        "",
        "| evaluation | step | prediction | EM | F1 |",
        "|---|---|---|---|---|",
        "| step9 | 9 | go\\|d | 0 | 0.25 |",
        "| step10 | 10 | gold | 1 | 1.00 |",
        "| final | 10 | – | 0 | 0.25 |",
    ]
    assert result["files"] == [str(tmp_path / "report" / "question_answers.md")]
    with open(result["files"][0], encoding="utf-8") as f:
        assert f.read() == result["markdown"]
    assert capsys.readouterr().out == result["markdown"]
    assert not os.path.exists(tmp_path / "report" / "results.md")  # the question instead of the results table


def test_question_faults_are_named(answered_run, tmp_path):
    output_dir = str(tmp_path / "report")
    with pytest.raises(SquadLoraError) as info:
        report.main([str(answered_run), "--question", "q1", "q9", "--output_dir", output_dir])
    assert str(info.value) == f"--question q9: not among the 2 questions {answered_run} answered (e.g. q1, q2)"
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    with pytest.raises(SquadLoraError, match=r"empty: no eval_predictions_\*\.jsonl: the run logged no answers"):
        report.main([str(empty), "--question", "q1", "--output_dir", output_dir])
    with pytest.raises(SquadLoraError, match=r"missing: no such directory"):
        report.main([str(missing), "--question", "q1", "--output_dir", output_dir])
    path = answered_run / "eval_predictions_step9.jsonl"
    path.write_text(path.read_text() + '{"id": "q3"}\n')
    with pytest.raises(SquadLoraError) as info:
        report.main([str(answered_run), "--question", "q1", "--output_dir", output_dir])
    assert str(info.value).startswith(f"{path}: line 3: expected an object with step, id, question, answers")
    assert not os.path.exists(output_dir)


def test_question_report_does_not_import_torch(answered_run, tmp_path):
    code = (
        "import sys, report; "
        f"report.main([{str(answered_run)!r}, '--question', 'q2', '--output_dir', {str(tmp_path / 'report')!r}]); "
        "assert 'torch' not in sys.modules, 'report.py imported torch'"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| step9 | 9 | x | 0 | 0.00 |" in completed.stdout


@pytest.mark.slow
def test_question_follows_a_real_runs_evaluations(two_runs, tmp_path):
    """alpha evaluated at steps 2 and 4, then its best checkpoint after training."""
    evaluations = outputs.read_answers(two_runs.alpha_dir)
    qid = evaluations[0][1][-1]["id"]
    result = report.main([two_runs.alpha_dir, "--question", qid, "--output_dir", str(tmp_path / "report")])
    lines = result["markdown"].splitlines()
    assert lines[0] == f"## {two_runs.alpha_dir}: {qid}"
    cells = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines[6:]]
    expected = [(name, row) for name, rows in evaluations for row in rows if row["id"] == qid]
    assert [name for name, _ in expected] == ["step2", "step4", "final"]
    assert [(c[0], int(c[1]), int(c[3]), float(c[4])) for c in cells] == [
        (name, row["step"], row["exact_match"], pytest.approx(row["f1"], abs=0.005)) for name, row in expected
    ]
    assert [c[2].replace("\\|", "|") for c in cells] == [" ".join(row["prediction"].split()) for _, row in expected]
