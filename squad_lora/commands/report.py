"""The experiment report: a results table and plots from one or more run_qa_lora.py output dirs.

    python report.py outputs/exp_* --output_dir outputs/report
    python report.py outputs/sweeps/lora_small --output_dir outputs/sweeps/lora_small/report   # a sweep's trials
    python report.py outputs/exp_r8_lr2e-4_attn --question QUESTION_ID     # one answer across evaluations

Writes results.md and results.csv (the seed's table: name, r, alpha, dropout, lr, target modules,
parameter counts, plus EM, F1, training time and tokens/s), loss_curves.png (training and
validation loss of every run), em_f1.png (EM/F1 across runs) and, where a run dir holds
generate.py + evaluate_squad.py's strategy_comparison.json, decoding_strategies.png. A sweep's output dir
(sweep.py) stands for its complete trials, in trial order.

With --question ID (one or more), it writes question_answers.md instead: how each question's answer and EM/F1
changed across each run's evaluations, from the eval_predictions_*.jsonl files the run writes as it trains
(--eval_log_samples), so a run still training can be asked too.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from squad_lora import cli, outputs, sweeps
from squad_lora.errors import ConfigError, RunFileError, raise_problems

logger = logging.getLogger(__name__)

COLUMNS = [
    ("name", "name"),
    ("r", "r"),
    ("alpha", "alpha"),
    ("dropout", "dropout"),
    ("lr", "lr"),
    ("target modules", "target_modules"),
    ("trainable params", "trainable_params"),
    ("all params", "all_params"),
    ("trainable %", "trainable_percent"),
    ("EM", "exact_match"),
    ("F1", "f1"),
    ("train time (s)", "train_runtime"),
    ("tokens/s", "tokens_per_second"),
]


@dataclass
class ReportArguments:
    run_dirs: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "run_qa_lora.py output directories (each holds run_summary.json), or sweep.py output directories "
            "(their complete trials); also positional."
        },
    )
    output_dir: str = field(default="outputs/report", metadata={"help": "Where the tables and plots go."})
    question: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Question ids: instead of the results table, how each one's answer and EM/F1 changed across each "
            "run's evaluations (its eval_predictions_*.jsonl: run_qa_lora.py --eval_log_samples above 0)."
        },
    )


def expand_sweeps(paths: list[str]) -> list[str]:
    """The run directories to report on: a sweep's output dir (sweep_summary.json) stands for its complete trials."""
    run_dirs = []
    for path in paths:
        if not sweeps.is_sweep_dir(path):
            run_dirs.append(path)
            continue
        trials = sweeps.complete_trial_dirs(path)
        if not trials:
            raise RunFileError(f"{path}: a sweep with no complete trial yet: nothing to report")
        logger.info("%s: a sweep; reporting its %d complete trials", path, len(trials))
        run_dirs += trials
    return run_dirs


def load_run(run_dir: str) -> dict:
    """One run's summary, plus the strategy comparison found under it (if any)."""
    summary = outputs.read_run_summary(run_dir)
    comparison = outputs.find_comparison(run_dir)
    if comparison:
        summary["strategy_comparison"] = comparison
    return summary


def table_row(summary: dict) -> dict:
    """The seed's columns for one run, extended with EM, F1, training time and tokens/s."""
    lora, train, evaluation = summary["lora"], summary.get("train_metrics", {}), summary.get("eval_metrics", {})
    return {
        "name": summary["run_name"],
        "r": lora["lora_r"],
        "alpha": lora["lora_alpha"] if lora["lora_r"] else None,
        "dropout": lora["lora_dropout"] if lora["lora_r"] else None,
        "lr": summary.get("learning_rate"),
        "target_modules": ", ".join(lora["target_modules"]) if lora.get("target_modules") else "all (full fine-tuning)",
        "trainable_params": summary["trainable_params"],
        "all_params": summary["all_params"],
        "trainable_percent": summary["trainable_percent"],
        "exact_match": evaluation.get("eval_exact_match"),
        "f1": evaluation.get("eval_f1"),
        "train_runtime": train.get("train_runtime"),
        "tokens_per_second": summary.get("train_tokens_per_second"),
    }


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key in ("trainable_params", "all_params"):
        return f"{value:,}"
    if key == "trainable_percent":
        return f"{value:.4f}"
    if key in ("exact_match", "f1", "train_runtime"):
        return f"{value:.2f}"
    if key == "tokens_per_second":
        return f"{value:,.0f}"
    if key == "alpha":
        return f"{value:g}"  # 16, as the seed's table writes it, not 16.0
    return str(value)


def render_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(key, row[key]) for _, key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[key for _, key in COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def loss_curves(summary: dict) -> dict[str, tuple[list, list]]:
    """{'train': (steps, losses), 'validation': (steps, losses)} from the run's log history."""
    curves = {"train": ([], []), "validation": ([], [])}
    for entry in summary.get("log_history", []):
        for key, name in (("loss", "train"), ("eval_loss", "validation")):
            if key in entry:
                curves[name][0].append(entry["step"])
                curves[name][1].append(entry[key])
    return curves


def _save_figure(figure, path: str) -> None:
    with outputs.atomic_open(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110, bbox_inches="tight")


def plot_loss_curves(summaries: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for index, summary in enumerate(summaries):
        colour = f"C{index % 10}"
        for name, style in (("train", "-"), ("validation", "--")):
            steps, losses = loss_curves(summary)[name]
            if steps:
                axes.plot(
                    steps,
                    losses,
                    style,
                    color=colour,
                    marker="o" if name == "validation" else None,
                    label=f"{summary['run_name']} ({name})",
                )
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("Training and validation loss")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    _save_figure(figure, path)
    plt.close(figure)


def plot_bars(groups: list[str], series: dict[str, list], title: str, path: str, errors: dict | None = None) -> None:
    """Grouped bar chart: one group per run (or strategy), one bar per metric."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(6, 1.4 * len(groups) + 2), 4.5))
    width = 0.8 / max(len(series), 1)
    for offset, (metric, values) in enumerate(series.items()):
        positions = [i + offset * width for i in range(len(groups))]
        heights = [v if v is not None else 0 for v in values]
        axes.bar(positions, heights, width, label=metric, yerr=(errors or {}).get(metric), capsize=3)
    axes.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))], groups, rotation=20, ha="right")
    axes.set_ylabel("score (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title)
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    _save_figure(figure, path)
    plt.close(figure)


ANSWER_COLUMNS = ("evaluation", "step", "prediction", "EM", "F1")


def answers_across_evaluations(run_dir: str, question_ids: list[str]) -> str:
    """Markdown: for each question, its text and gold answers, then its answer and EM/F1 at each evaluation of the
    run, in order."""
    if not os.path.isdir(run_dir):
        raise RunFileError(f"{run_dir}: no such directory")
    evaluations = outputs.read_answers(run_dir)
    if not evaluations:
        raise RunFileError(
            f"{run_dir}: no eval_predictions_*.jsonl: the run logged no answers (they need an --eval_strategy, and "
            "--eval_generation_samples and --eval_log_samples above 0)"
        )
    answered = {row["id"]: row for _, rows in evaluations for row in rows}
    known = f"the {len(answered)} questions {run_dir} answered (e.g. {', '.join(list(answered)[:3])})"
    raise_problems([f"--question {qid}: not among {known}" for qid in question_ids if qid not in answered])
    sections = []
    for qid in question_ids:
        history = [
            [evaluation, row["step"], row["prediction"], row["exact_match"], row["f1"]]
            for evaluation, rows in evaluations
            for row in rows
            if row["id"] == qid
        ]
        gold = " | ".join(dict.fromkeys(answered[qid]["answers"]))
        sections.append(
            f"## {run_dir}: {qid}\n\n{answered[qid]['question']} (gold: {gold})\n\n"
            + outputs.markdown_table(ANSWER_COLUMNS, history)
        )
    return "\n\n".join(sections) + "\n"


def report_questions(run_dirs: list[str], question_ids: list[str], output_dir: str) -> dict:
    """question_answers.md: each question's answers across each run's evaluations."""
    markdown = "\n".join(answers_across_evaluations(run_dir, question_ids) for run_dir in run_dirs)
    path = os.path.join(output_dir, "question_answers.md")
    outputs.write_text(path, markdown)
    print(markdown, end="")
    logger.info("wrote %s", path)
    return {"markdown": markdown, "files": [path]}


def main(argv: list[str] | None = None) -> dict:
    (args,), _, _ = cli.parse_args((ReportArguments,), argv, positional=("run_dirs",), bare_words="run directories")
    cli.setup_logging(__name__)
    if not args.run_dirs:
        raise ConfigError("give the run directories to report on: python report.py outputs/exp_* --output_dir DIR")
    outputs.check_writable_dir(args.output_dir)
    if args.question:
        return report_questions(expand_sweeps(args.run_dirs), args.question, args.output_dir)
    summaries = [load_run(run_dir) for run_dir in expand_sweeps(args.run_dirs)]
    rows = [table_row(summary) for summary in summaries]

    markdown = render_markdown(rows)
    outputs.write_text(os.path.join(args.output_dir, "results.md"), markdown)
    outputs.write_text(os.path.join(args.output_dir, "results.csv"), render_csv(rows))
    print(markdown, end="")

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    plot_loss_curves(summaries, os.path.join(args.output_dir, "loss_curves.png"))
    names = [row["name"] for row in rows]
    plot_bars(
        names,
        {"EM": [r["exact_match"] for r in rows], "F1": [r["f1"] for r in rows]},
        "Exact match and F1 by run",
        os.path.join(args.output_dir, "em_f1.png"),
    )
    files = ["results.md", "results.csv", "loss_curves.png", "em_f1.png"]
    groups, em, f1, em_std, f1_std = [], [], [], [], []
    for summary in summaries:
        for row in summary.get("strategy_comparison", {}).get("strategies", []):
            groups.append(f"{summary['run_name']}\n{row['strategy']}" if len(summaries) > 1 else row["strategy"])
            em.append(row["exact_match"])
            f1.append(row["f1"])
            em_std.append(row.get("exact_match_std") or 0)
            f1_std.append(row.get("f1_std") or 0)
    if groups:
        plot_bars(
            groups,
            {"EM": em, "F1": f1},
            "Decoding strategies (mean ± std over samples)",
            os.path.join(args.output_dir, "decoding_strategies.png"),
            errors={"EM": em_std, "F1": f1_std},
        )
        files.append("decoding_strategies.png")
    logger.info("wrote %s to %s", ", ".join(files), args.output_dir)
    return {"rows": rows, "files": [os.path.join(args.output_dir, name) for name in files]}


if __name__ == "__main__":
    cli.run(main)
