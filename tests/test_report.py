"""Issue 5: EM/F1 while training, TensorBoard HParams, early stopping, report.py and run_seed_experiments.sh.

Two tiny runs are shared by the module: `alpha` (r=8 on c_attn, EM/F1 at every evaluation, best model
by F1, TensorBoard) and `beta` (r=4 on c_attn + mlp.c_proj, generation off, TensorBoard).
"""

import csv
import glob
import json
import math
import os
import re
import subprocess
from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import REPO_ROOT, SAMPLE_DIR, TINY_GPT2_DIR
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, TrainingArguments

import evaluate_squad
import report
import run_qa_lora
from squad_lora import decoding
from squad_lora.args import DecodingArguments
from squad_lora.data import build_train_features, load_squad_file
from squad_lora.errors import ConfigError, SquadLoraError
from squad_lora.trainer import QATrainer

TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")
VALIDATION_FILE = os.path.join(SAMPLE_DIR, "dev-v1.1.json")

# configs/tiny-gpt2: 2 layers, n_embd 64. LoRA r on c_attn (64 -> 192) adds r * (64 + 192) per layer,
# on mlp.c_proj (256 -> 64) r * (256 + 64).
TINY_NUM_PARAMS = 184_896
ATTN, MLP_PROJ = 64 + 3 * 64, 4 * 64 + 64


def lora_params(r, *module_sizes):
    return 2 * r * sum(module_sizes)


ALPHA_LORA = lora_params(8, ATTN)  # 4,096
BETA_LORA = lora_params(4, ATTN, MLP_PROJ)  # 4,608


def tiny_args(model_dir, output_dir, run_name, *extra):
    """A short run of the saved tiny model on the sample data, evaluating 8 validation questions."""
    return [
        "--model_name_or_path", str(model_dir),
        "--train_file", TRAIN_FILE,
        "--validation_file", VALIDATION_FILE,
        "--output_dir", str(output_dir),
        "--run_name", run_name,
        "--per_device_train_batch_size", "4",
        "--max_eval_samples", "8",
        "--logging_steps", "1",
        "--disable_tqdm", "true",
        *extra,
    ]


def eval_entries(summary):
    """The log_history entries of the evaluations, in order."""
    return [entry for entry in summary["log_history"] if "eval_loss" in entry]


def event_files(output_dir):
    return sorted(glob.glob(os.path.join(output_dir, "**", "events.out.tfevents.*"), recursive=True))


def read_events(output_dir):
    """({tag: [(step, value), ...]}, {hparams tag: HParamsPluginData}) from every event file under output_dir."""
    scalars, hparams = {}, {}
    for path in event_files(output_dir):
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
        try:
            contents = accumulator.PluginTagToContent("hparams")
        except KeyError:  # no hparams summary in this file
            contents = {}
        for tag, content in contents.items():
            hparams[tag] = plugin_data_pb2.HParamsPluginData.FromString(content)
    return scalars, hparams


def session_hparams(hparams):
    """{name: value} that the HParams dashboard shows for the run."""
    values = hparams["_hparams_/session_start_info"].session_start_info.hparams
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in values.items()}


# ---------------------------------------------------------------------------
# Two tiny runs, shared by the module
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    alpha = run_qa_lora.main(tiny_args(
        tiny_model_dir, root / "alpha", "alpha",
        "--max_steps", "4", "--learning_rate", "1e-2", "--warmup_steps", "0",
        "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
        "--metric_for_best_model", "f1", "--load_best_model_at_end",
        "--eval_generation_samples", "4",
        "--report_to", "tensorboard",
    ))
    # generation off, and the last evaluation (at the last step) is reused as the final one
    beta = run_qa_lora.main(tiny_args(
        tiny_model_dir, root / "beta", "beta",
        "--max_steps", "2", "--lora_r", "4", "--lora_target_modules", "c_attn", "mlp.c_proj",
        "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "no",
        "--eval_generation_samples", "0",
        "--report_to", "tensorboard",
    ))
    return SimpleNamespace(alpha=alpha, beta=beta, alpha_dir=str(root / "alpha"), beta_dir=str(root / "beta"))


@pytest.mark.slow
def test_em_f1_are_in_every_evaluation_when_generation_is_on(two_runs):
    alpha = two_runs.alpha
    with open(os.path.join(two_runs.alpha_dir, "run_summary.json"), encoding="utf-8") as f:
        assert json.load(f)["eval_metrics"] == json.loads(json.dumps(alpha["eval_metrics"]))
    for key in ("eval_exact_match", "eval_f1"):
        assert 0 <= alpha["eval_metrics"][key] <= 100
    entries = eval_entries(alpha)
    assert [entry["step"] for entry in entries][:2] == [2, 4]
    for entry in entries:
        assert {"eval_exact_match", "eval_f1"} <= entry.keys()


@pytest.mark.slow
def test_eval_generation_samples_0_turns_generation_off(two_runs):
    beta = two_runs.beta
    assert math.isfinite(beta["eval_metrics"]["eval_loss"])
    assert [entry["step"] for entry in eval_entries(beta)] == [2]
    for entry in [beta["eval_metrics"], *beta["log_history"]]:
        assert not {"eval_exact_match", "eval_f1"} & entry.keys()


@pytest.mark.slow
def test_event_files_hold_em_f1_and_the_hparams(two_runs):
    scalars, hparams = read_events(two_runs.alpha_dir)
    for tag in ("eval/exact_match", "eval/f1"):
        assert [step for step, _ in scalars[tag]][:2] == [2, 4]
        assert all(0 <= value <= 100 for _, value in scalars[tag])
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= hparams.keys()
    shown = session_hparams(hparams)
    assert shown["lora_r"] == 8 and shown["lora_alpha"] == 16 and shown["learning_rate"] == pytest.approx(1e-2)
    # Trainer settings left at their defaults are still shown, so every run has every column
    assert shown["seed"] == 42 and shown["gradient_accumulation_steps"] == 1 and shown["num_train_epochs"] == 3
    assert shown["per_device_train_batch_size"] == 4
    metric_tags = {info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert metric_tags == {"hparams/eval_loss", "hparams/eval_exact_match", "hparams/eval_f1"}
    for key in ("eval_loss", "eval_exact_match", "eval_f1"):
        assert scalars[f"hparams/{key}"][-1][1] == pytest.approx(two_runs.alpha["eval_metrics"][key], rel=1e-5)


@pytest.mark.slow
def test_hparams_are_written_when_the_last_evaluation_is_reused(two_runs):
    # beta's final metrics come from the evaluation at its last step, after TensorBoard's writer closed
    scalars, hparams = read_events(two_runs.beta_dir)
    assert "eval/loss" in scalars and "eval/f1" not in scalars
    assert session_hparams(hparams)["lora_r"] == 4
    metric_tags = {info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert metric_tags == {"hparams/eval_loss"}
    assert scalars["hparams/eval_loss"][-1][1] == pytest.approx(two_runs.beta["eval_metrics"]["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_load_best_model_at_end_by_f1(two_runs):
    entries = eval_entries(two_runs.alpha)
    during_training = entries[:2]
    assert len(entries) == 3  # steps 2 and 4, then the best model evaluated again at the end
    # F1 of a random tiny model stays 0 and a tie is no improvement: the step-2 checkpoint is the best
    assert [entry["eval_f1"] for entry in during_training] == [0.0, 0.0]
    best_loss, last_loss = (entry["eval_loss"] for entry in during_training)
    assert abs(best_loss - last_loss) > 1e-3  # learning rate 1e-2: the two checkpoints differ
    assert two_runs.alpha["eval_metrics"]["eval_loss"] == pytest.approx(best_loss, rel=1e-6)
    assert os.path.isdir(os.path.join(two_runs.alpha_dir, "checkpoint-2"))


# ---------------------------------------------------------------------------
# Early stopping and the flags it needs
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_early_stopping_stops_after_patience_evaluations(tiny_model_dir, tmp_path):
    # a learning rate too small to change an answer (0 is refused): F1 never improves on the first
    # evaluation's, so patience 1 stops at the second
    summary = run_qa_lora.main(tiny_args(
        tiny_model_dir, tmp_path, "stopped",
        "--max_steps", "10", "--learning_rate", "1e-12",
        "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "no",
        "--metric_for_best_model", "f1", "--early_stopping_patience", "1",
        "--eval_generation_samples", "2", "--max_eval_samples", "4", "--report_to", "none",
    ))
    assert [entry["step"] for entry in eval_entries(summary)] == [1, 2]
    assert summary["log_history"][-1]["step"] == 2
    assert [entry["step"] for entry in summary["log_history"] if "loss" in entry] == [1, 2]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--early_stopping_patience", "1"], "--early_stopping_patience needs --metric_for_best_model"),
        (["--early_stopping_patience", "1", "--metric_for_best_model", "f1", "--eval_strategy", "no"],
         "--early_stopping_patience needs --metric_for_best_model (e.g. f1) and an --eval_strategy"),
        (["--metric_for_best_model", "f1", "--eval_generation_samples", "0"],
         "--metric_for_best_model f1 needs --eval_generation_samples > 0"),
        (["--metric_for_best_model", "eval_exact_match", "--eval_generation_samples", "0"],
         "--metric_for_best_model eval_exact_match needs --eval_generation_samples > 0"),
        (["--load_best_model_at_end", "--eval_strategy", "steps", "--save_strategy", "no"], "save"),
    ],
    ids=["patience-without-metric", "patience-without-eval", "f1-without-generation", "em-without-generation",
         "best-model-without-saves"],
)
def test_best_model_and_early_stopping_flags_are_checked_up_front(tiny_model_dir, tmp_path, flags, message):
    with pytest.raises(ConfigError) as info:
        run_qa_lora.main(tiny_args(tiny_model_dir, tmp_path, "refused", "--report_to", "none", *flags))
    assert message in str(info.value)
    assert os.listdir(tmp_path) == []  # refused before loading anything


# ---------------------------------------------------------------------------
# QATrainer's EM/F1: real scores of real generations
# ---------------------------------------------------------------------------


@pytest.fixture
def random_tiny_model():
    """configs/tiny-gpt2 with random weights, in training mode (dropout on), as a Trainer holds it."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR)).train()


def steer_to_token(model, token_id):
    """Make greedy decoding answer token_id at every step, whatever the prompt.

    The final layer norm then outputs a constant: the token's (tied) embedding, scaled up.
    """
    with torch.no_grad():
        embedding = model.get_output_embeddings().weight[token_id]
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(50 * embedding / embedding.norm())
    return model


def qa_trainer(model, tokenizer, output_dir, eval_examples, eval_dataset=None):
    args = TrainingArguments(output_dir=str(output_dir), report_to="none", per_device_eval_batch_size=4)
    return QATrainer(
        model=model,
        args=args,
        eval_dataset=eval_dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer,
        eval_examples=eval_examples,
        decoding=DecodingArguments(max_new_tokens=3, generation_batch_size=4),
    )


def with_gold(example, answer):
    return {**example, "answers": {"text": [answer], "answer_start": [0]}}


def test_generation_metrics_score_the_greedy_answers(random_tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    answer_questions, modes = decoding.answer_questions, []

    def recording_answer_questions(model, *args, **kwargs):
        modes.append(model.training)
        return answer_questions(model, *args, **kwargs)

    monkeypatch.setattr(decoding, "answer_questions", recording_answer_questions)
    (river,) = tiny_tokenizer(" river", add_special_tokens=False)["input_ids"]
    model = steer_to_token(random_tiny_model, river)  # answers "river river river" (3 new tokens)
    examples, _ = load_squad_file(VALIDATION_FILE)
    examples = examples[:4]

    trainer = qa_trainer(model, tiny_tokenizer, tmp_path, [with_gold(ex, "River river RIVER.") for ex in examples])
    assert trainer.generation_metrics() == {"eval_exact_match": 100.0, "eval_f1": 100.0}
    assert modes == [False] and model.training  # generated in eval mode (no dropout), then back to training

    trainer.eval_examples = [with_gold(ex, ex["answers"]["text"][0]) for ex in examples]  # the real gold answers
    assert trainer.generation_metrics("test") == {"test_exact_match": 0.0, "test_f1": 0.0}

    # one exact, one "river" (precision 1/3, recall 1: F1 1/2), one unrelated, one exact
    golds = ["river river river", "river", "lake", "the river river river"]
    trainer.eval_examples = [with_gold(ex, gold) for ex, gold in zip(examples, golds)]
    scores = trainer.generation_metrics()
    assert scores["eval_exact_match"] == pytest.approx(50.0)
    assert scores["eval_f1"] == pytest.approx((100 + 50 + 0 + 100) / 4)


HAND_EXAMPLES = [
    {"id": "q1", "title": "t", "context": "The Denver Broncos won the game.", "question": "Who won?",
     "answers": {"text": ["Denver Broncos"], "answer_start": [4]}},
    {"id": "q2", "title": "t", "context": "The tower is in Paris.", "question": "Where is the tower?",
     "answers": {"text": ["Paris"], "answer_start": [16]}},
]


def test_evaluate_adds_em_f1_of_the_generated_answers(random_tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    calls = []

    def fake_answer_questions(model, tokenizer, examples, decoding_args, state, seed=42, strategies=None):
        calls.append({"training": model.training, "ids": [ex["id"] for ex in examples], "decoding": decoding_args})
        # listed in the other order: scores must follow the ids, not the positions
        predictions = {"q2": "Paris.", "q1": "the Broncos"}
        return {"greedy": [{"id": qid, "strategy": "greedy", "sample": 0, "prediction": text} for qid, text in predictions.items()]}

    monkeypatch.setattr(decoding, "answer_questions", fake_answer_questions)
    features = build_train_features(
        {key: [ex[key] for ex in HAND_EXAMPLES] for key in ("context", "question", "answers")}, tiny_tokenizer, 128
    )
    eval_dataset = datasets.Dataset.from_dict(features).remove_columns("was_cut")
    trainer = qa_trainer(random_tiny_model, tiny_tokenizer, tmp_path, HAND_EXAMPLES, eval_dataset)

    metrics = trainer.evaluate(metric_key_prefix="dev")
    # q1: "broncos" against "denver broncos": EM 0, precision 1, recall 1/2, F1 2/3; q2 exact after normalization
    assert metrics["dev_exact_match"] == pytest.approx(50.0)
    assert metrics["dev_f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert math.isfinite(metrics["dev_loss"])
    assert len(calls) == 1
    assert calls[0]["ids"] == ["q1", "q2"] and calls[0]["training"] is False
    assert calls[0]["decoding"].strategies == ["greedy"] and calls[0]["decoding"].max_new_tokens == 3

    trainer.eval_examples = []  # --eval_generation_samples 0
    assert "dev_exact_match" not in trainer.evaluate(metric_key_prefix="dev")
    assert len(calls) == 1


# ---------------------------------------------------------------------------
# report.py on the two runs
# ---------------------------------------------------------------------------


def write_strategy_comparison(run_dir):
    """generate.py-style predictions for two strategies, compared by evaluate_squad.py into run_dir/preds."""
    examples, _ = load_squad_file(VALIDATION_FILE)
    preds_dir = os.path.join(run_dir, "preds")
    os.makedirs(preds_dir)
    greedy = [{"id": ex["id"], "strategy": "greedy", "sample": 0, "prediction": ex["answers"]["text"][0]} for ex in examples]
    top_k = [{**row, "strategy": "top_k"} for row in greedy]  # sample 0: every answer right
    top_k += [{"id": ex["id"], "strategy": "top_k", "sample": 1, "prediction": "zebra quartz"} for ex in examples]
    for strategy, rows in (("greedy", greedy), ("top_k", top_k)):
        with open(os.path.join(preds_dir, f"predictions_{strategy}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    evaluate_squad.main([VALIDATION_FILE, "--compare", preds_dir])
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
        "alpha", 8, 16, 0.1, 1e-2, "c_attn"
    )
    assert (beta["name"], beta["r"], beta["alpha"], beta["lr"], beta["target_modules"]) == (
        "beta", 4, 16, 2e-4, "c_attn, mlp.c_proj"
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
        "alpha", "8", alpha_cells[2], "0.1", "0.01", "c_attn", "4,096", "188,992",
        f"{100 * ALPHA_LORA / (TINY_NUM_PARAMS + ALPHA_LORA):.4f}",
        f"{two_runs.alpha['eval_metrics']['eval_exact_match']:.2f}",
    ]
    assert beta_cells[:10] == [
        "beta", "4", beta_cells[2], "0.1", "0.0002", "c_attn, mlp.c_proj", "4,608", "189,504",
        f"{100 * BETA_LORA / (TINY_NUM_PARAMS + BETA_LORA):.4f}", "–",
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
        "run_name": "hand", "lora": {"lora_r": 0, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": None},
        "trainable_params": 10, "all_params": 10, "trainable_percent": 100.0, "train_metrics": {},
        "eval_metrics": {"eval_exact_match": 12.5, "eval_f1": 20.0},
        "log_history": [{"loss": 2.0, "step": 1}, {"eval_loss": 1.5, "step": 1}],
    }
    (run_dir / "run_summary.json").write_text(json.dumps(summary))
    result = report.main([str(run_dir), "--output_dir", str(tmp_path / "report")])
    assert [os.path.basename(path) for path in result["files"]] == ["results.md", "results.csv", "loss_curves.png", "em_f1.png"]
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
        "--model_name_or_path", tiny_model_dir, "--train_file", TRAIN_FILE, "--validation_file", VALIDATION_FILE,
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_eval_samples", "2",
        "--eval_generation_samples", "2", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ]
    env = {**os.environ, "OUTPUT_ROOT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "run_seed_experiments.sh"), *overrides],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600,
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
