"""What each setting is worth: EM/F1 on held-out SQuAD articles after the same small training budget.

    python benchmarks/bench_quality.py --model_name_or_path ~/.cache/squad-lora-models/smollm2-135m \\
        --data_file ../shared/data/squad/dev-v1.1.json --output_dir outputs/bench_quality
    python benchmarks/bench_quality.py ... --settings plain,recipe          # a subset
    python benchmarks/bench_quality.py ... --data_file dev-v2.0.json --settings plain_v1_only,plain  # SQuAD v2

The split (by article, so no context is both trained and scored): the articles at positions 0, 5, 10, ...
of the data file are held out; --num_eval questions are drawn from them and --num_train from the others,
both with --seed. Each setting is a training run (run_qa_lora.py on top of the plain run's flags,
one epoch) followed by generate.py with the setting's decoding flags, each as its own process, as a
user runs them; decoding-only settings reuse the run they name. Prints a markdown table of EM/F1 and
training time against the plain run, and writes results.json (updated after every setting, so a long
run can be resumed with --settings and --reuse_runs). On SQuAD v2 a further --num_calibration held-out
questions, never scored, are where the calibrated settings pick their --min_answer_confidence
(pick_min_confidence), and every setting reports how well the answer's confidence ranks answerable over
unanswerable questions (confidence_ranking). Not a test: it needs a real model and tens of CPU minutes; the
tests run it once on the tiny random model to keep it working.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.outputs import read_run_summary, write_json, write_jsonl
from squad_lora.scoring import is_version_2, read_predictions, score_predictions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "configs", "recipe_small.yaml")
HELD_OUT_EVERY = 5  # articles 0, 5, 10, ... are scored, never trained on
CALIBRATED = "calibrated"  # --min_answer_confidence: the value pick_min_confidence finds on the calibration questions
MAX_HAS_ANS_DROP = 3.0  # what abstaining may cost HasAns EM on the calibration questions, in points
HAS_ANS_BUDGETS = (1.0, 2.0, 3.0, 5.0)  # each picked on the calibration questions and scored; holds MAX_HAS_ANS_DROP
CONFIDENCE_CURVE = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # --min_answer_confidence values the trade-off is shown at
V2_SUMMARY = ("exact", "f1", "HasAns_exact", "NoAns_exact")  # the scores kept per budget and per curve point

# The plain run: LoRA r=8 / alpha 16 on peft's default targets, lr 1e-3, batch 8, one epoch, greedy.
PLAIN = ["--lora_r", "8", "--lora_alpha", "16", "--learning_rate", "1e-3", "--per_device_train_batch_size", "8"]

# name: (flags added to PLAIN for training (a config file's settings instead of PLAIN's), or None to reuse the run named next (None: no adapter, zero-shot),
# generate.py flags)
SETTINGS = {
    "zero_shot": (None, None, []),
    "zero_shot_chat": (None, None, ["--prompt_format", "chat"]),
    "plain": ([], None, []),
    "constrain_to_context": (None, "plain", ["--constrain_to_context"]),
    "beam4": (None, "plain", ["--strategy", "beam", "--num_beams", "4"]),
    "beam4_constrained": (None, "plain", ["--strategy", "beam", "--num_beams", "4", "--constrain_to_context"]),
    "r16_alpha32": (["--lora_r", "16", "--lora_alpha", "32"], None, []),
    "lr_2e-3": (["--learning_rate", "2e-3"], None, []),
    "lr_5e-4": (["--learning_rate", "5e-4"], None, []),
    "all_linear": (["--lora_target_modules", "all-linear"], None, []),
    # LoRA dropout copies every adapted layer's input: with all-linear targets that is most of the step on a CPU
    "all_linear_dropout_0": (["--lora_target_modules", "all-linear", "--lora_dropout", "0"], None, []),
    "rslora": (["--use_rslora"], None, []),
    "dora": (["--use_dora"], None, []),
    "pissa": (["--init_lora_weights", "pissa"], None, []),
    "olora": (["--init_lora_weights", "olora"], None, []),
    "most_common_answer": (["--train_answer", "most_common"], None, []),
    "chat_prompt": (["--prompt_format", "chat"], None, []),  # generate.py reads the format the run recorded
    # the recipe: one config file, and generate.py with no decoding flags (it reads the run's decoding)
    "recipe": (["--config", RECIPE], None, []),
    "recipe_unconstrained": (None, "recipe", ["--constrain_to_context", "false"]),
    "recipe_r16_alpha32": (["--config", RECIPE, "--lora_r", "16", "--lora_alpha", "32"], None, []),
    "recipe_pissa": (["--config", RECIPE, "--init_lora_weights", "pissa"], None, []),
    # SQuAD v2: trained without the unanswerable questions, for the HasAns comparison
    "plain_v1_only": (["--train_answerable_only"], None, []),
    # SQuAD v2, abstaining by answer confidence: the no-answer string ruled out (threshold 1), an answer less
    # confident than the value picked on the calibration questions (pick_min_confidence) left out
    "recipe_v1_only": (["--config", RECIPE, "--train_answerable_only"], None, []),
    "recipe_never_abstain": (None, "recipe", ["--no_answer_threshold", "1"]),
    "recipe_min_confidence": (None, "recipe", ["--no_answer_threshold", "1", "--min_answer_confidence", CALIBRATED]),
    "recipe_v1_only_min_confidence": (None, "recipe_v1_only", ["--min_answer_confidence", CALIBRATED]),
    # SQuAD v2: abstain only where the model is this sure of it
    **{
        f"{run}_no_answer_{threshold}": (None, run, ["--no_answer_threshold", threshold])
        for run in ("plain", "recipe")
        for threshold in ("0.5", "0.7", "0.9")
    },
}


@dataclass
class BenchArguments:
    model_name_or_path: str = field(metadata={"help": "The base model (a real pretrained causal LM)."})
    data_file: str = field(metadata={"help": "SQuAD dev JSON (v1.1 or v2.0) to split by article."})
    output_dir: str = field(default="outputs/bench_quality", metadata={"help": "Runs, predictions, results."})
    settings: Optional[str] = field(default=None, metadata={"help": "Comma-separated subset; default all."})
    num_train: int = field(default=400, metadata={"help": "Training questions (one epoch)."})
    num_eval: int = field(default=200, metadata={"help": "Held-out questions scored."})
    num_calibration: int = field(
        default=200,
        metadata={
            "help": "SQuAD v2: further held-out questions, never scored, on which the calibrated settings pick "
            "--min_answer_confidence (the most abstention that costs HasAns EM at most 3 points)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the split and of training."})
    extra_train_flags: Optional[str] = field(
        default=None, metadata={"help": "Flags added to every training run (e.g. '--max_steps 2' for a smoke run)."}
    )
    reuse_runs: bool = field(
        default=False, metadata={"help": "Keep a setting's finished run (run_summary.json) instead of training again."}
    )


def split_by_article(
    data_file: str, num_train: int, num_eval: int, num_calibration: int, seed: int
) -> tuple[list[dict], list[dict], list[dict], bool]:
    """(training questions, scored questions, calibration questions, v2 rules): articles 0, 5, 10, ... held out,
    the calibration questions drawn from them after the scored ones (so they do not change the others)."""
    with open(data_file, encoding="utf-8") as f:
        titles = [article.get("title", "") for article in json.load(f)["data"]]
    held_out = {title for i, title in enumerate(titles) if i % HELD_OUT_EVERY == 0}
    examples, stats = load_squad_file(data_file)
    rng = random.Random(seed)
    train = [ex for ex in examples if ex["title"] not in held_out]
    evaluation = [ex for ex in examples if ex["title"] in held_out]
    train = rng.sample(train, min(num_train, len(train)))
    scored = rng.sample(evaluation, min(num_eval, len(evaluation)))
    taken = {ex["id"] for ex in scored}
    rest = [ex for ex in evaluation if ex["id"] not in taken]
    return train, scored, rng.sample(rest, min(num_calibration, len(rest))), is_version_2(examples, stats.version)


def run(script: str, *args: str) -> float:
    """Run one of the project's scripts as its own process; returns its wall time in seconds."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{completed.stderr[-4000:]}")
    return time.perf_counter() - start


def train(name: str, flags: list[str], args: BenchArguments, train_file: str, eval_file: str) -> str:
    run_dir = os.path.join(args.output_dir, "runs", name)
    base = [] if flags[:1] == ["--config"] else PLAIN  # a config file's values, not the plain run's flags over them
    run(
        "run_qa_lora.py", *base, "--model_name_or_path", args.model_name_or_path, "--train_file", train_file,
        "--validation_file", eval_file, "--output_dir", run_dir, "--overwrite_output_dir", "--num_train_epochs", "1",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--seed", str(args.seed),
        "--disable_tqdm", "true", *flags, *(args.extra_train_flags or "").split(),
    )  # fmt: skip
    return run_dir


def answer(name: str, run_dir: str | None, flags: list[str], eval_file: str, args) -> tuple[list[dict], float]:
    """generate.py's prediction rows (with confidences) for eval_file, and its wall time."""
    preds_dir = os.path.join(args.output_dir, "predictions", name)
    model = ["--adapter", run_dir] if run_dir else ["--model_name_or_path", args.model_name_or_path]
    seconds = run(
        "generate.py", *model, "--validation_file", eval_file, "--output_dir", preds_dir, "--overwrite_output_dir",
        *flags,
    )  # fmt: skip
    (path,) = [os.path.join(preds_dir, f) for f in os.listdir(preds_dir) if f.endswith(".jsonl")]
    with open(path, encoding="utf-8") as f:
        return [row for row in map(json.loads, f) if row["sample"] == 0], seconds


def abstaining(rows: list[dict], floor: float) -> dict[str, str]:
    """The {id: answer} predictions with every answer less confident than floor left out (no answer)."""
    return {row["id"]: row["prediction"] if row["confidence"] >= floor else "" for row in rows}


def confidence_ranking(rows: list[dict], examples: list[dict]) -> float:
    """How often an answerable question's answer is more confident than an unanswerable one's (ties half): 0.5
    is a coin, 1 a confidence floor that separates them perfectly (the ROC AUC of abstaining by confidence)."""
    confidence = {row["id"]: row["confidence"] for row in rows}
    answerable = [confidence[ex["id"]] for ex in examples if ex["answers"]["text"]]
    unanswerable = [confidence[ex["id"]] for ex in examples if not ex["answers"]["text"]]
    wins = sum((a > u) + 0.5 * (a == u) for a in answerable for u in unanswerable)
    return wins / (len(answerable) * len(unanswerable))


def pick_min_confidence(rows: list[dict], examples: list[dict], max_drop: float = MAX_HAS_ANS_DROP) -> float:
    """The largest --min_answer_confidence (the most abstention) that keeps HasAns EM within max_drop points of
    answering every question, on these (calibration) questions; rounded down to 3 decimals."""
    answerable = [ex for ex in examples if ex["answers"]["text"]]
    ids = {ex["id"] for ex in answerable}
    rows = [row for row in rows if row["id"] in ids]

    def has_ans_exact(floor: float) -> float:
        return score_predictions(answerable, abstaining(rows, floor), version_2=True)["exact"]

    allowed = has_ans_exact(0.0) - max_drop
    # HasAns EM only changes at an answerable question's confidence
    best = max(floor for floor in {0.0, *(row["confidence"] for row in rows)} if has_ans_exact(floor) >= allowed)
    return math.floor(best * 1000) / 1000


def v2_summary(scores: dict) -> dict:
    return {key: scores[key] for key in V2_SUMMARY}


def evaluate(name: str, run_dir: str | None, flags: list[str], files: dict, examples: dict, version_2: bool, args):
    """The setting's scores on the scored questions; a calibrated setting first picks its confidence floor."""
    row = {}
    if CALIBRATED in flags:
        position = flags.index(CALIBRATED)
        uncalibrated = flags[: position - 1] + flags[position + 1 :]
        calibration, _ = answer(f"{name}_calibration", run_dir, uncalibrated, files["calibration"], args)
        floors = {
            budget: pick_min_confidence(calibration, examples["calibration"], budget) for budget in HAS_ANS_BUDGETS
        }
        row["min_answer_confidence"] = floors[MAX_HAS_ANS_DROP]
        flags = [*flags[:position], str(row["min_answer_confidence"]), *flags[position + 1 :]]
        # the other HasAns budgets, from the same answers with their floors applied afterwards (as generate.py
        # applies one: the benchmark's test checks that)
        answered, _ = answer(f"{name}_no_floor", run_dir, uncalibrated, files["eval"], args)
        row["has_ans_budgets"] = {
            str(budget): {
                "min_answer_confidence": floor,
                **v2_summary(score_predictions(examples["eval"], abstaining(answered, floor), True)),
            }
            for budget, floor in floors.items()
        }
    rows, seconds = answer(name, run_dir, flags, files["eval"], args)
    row.update(score_predictions(examples["eval"], abstaining(rows, 0.0), version_2, source=name))
    if version_2 and any(not ex["answers"]["text"] for ex in examples["eval"]):
        row["confidence_ranking"] = confidence_ranking(rows, examples["eval"])
    if version_2:  # what each confidence floor would give, from the same answers
        row["min_confidence_curve"] = {
            str(floor): v2_summary(score_predictions(examples["eval"], abstaining(rows, floor), True))
            for floor in CONFIDENCE_CURVE
        }
    return {**row, "generate_seconds": seconds}


def leftovers(output_dir: str, results: dict) -> str:
    """What answer post-processing could still remove that the official normalisation keeps: the prompt's cue
    words inside an answer. (Trailing punctuation and articles the normalisation strips already.)"""
    lines = []
    for name in results:
        preds_dir = os.path.join(output_dir, "predictions", name)
        paths = [os.path.join(preds_dir, f) for f in os.listdir(preds_dir) if f.endswith(".json")]
        predictions = read_predictions(paths[0]).values() if paths else []
        cues = sum(any(cue in p for cue in ("Answer:", "Question:", "Context:")) for p in predictions)
        periods = sum(p.rstrip().endswith(".") for p in predictions)
        lines.append(f"{name}: {cues} of {len(predictions)} answers hold a cue word, {periods} end with a period")
    return "\n".join(lines) + "\n"


def render(results: dict, version_2: bool) -> str:
    em_key = "exact" if version_2 else "exact_match"
    plain = results.get("plain")
    columns = ["EM", "F1"] + (["HasAns EM", "HasAns F1", "NoAns EM"] if version_2 else [])
    lines = [
        f"| setting | {' | '.join(columns)} | ΔEM | ΔF1 | train s | × plain |",
        "|---|" + "---:|" * (len(columns) + 4),
    ]
    for name, row in results.items():
        cells = [row[em_key], row["f1"]] + (
            [row.get("HasAns_exact"), row.get("HasAns_f1"), row.get("NoAns_exact")] if version_2 else []
        )
        delta = [row[em_key] - plain[em_key], row["f1"] - plain["f1"]] if plain else [None, None]
        ratio = row["train_seconds"] / plain["train_seconds"] if plain and row.get("train_seconds") else None
        values = [*cells, *delta]
        formatted = ["–" if v is None else f"{v:+.1f}" if i >= len(cells) else f"{v:.1f}" for i, v in enumerate(values)]
        reused = SETTINGS.get(name, (None, None))[1]
        train_s = f"{row['train_seconds']:.0f}" if row.get("train_seconds") else f"({reused or 'zero-shot'})"
        lines.append(f"| {name} | {' | '.join(formatted)} | {train_s} | {'–' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    (args,), _, _ = parse_args((BenchArguments,), argv)
    names = args.settings.split(",") if args.settings else list(SETTINGS)
    unknown = [name for name in names if name not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    train_examples, eval_examples, calibration_examples, version_2 = split_by_article(
        args.data_file, args.num_train, args.num_eval, args.num_calibration, args.seed
    )
    os.makedirs(args.output_dir, exist_ok=True)
    examples = {"train": train_examples, "eval": eval_examples, "calibration": calibration_examples}
    files = {part: os.path.join(args.output_dir, f"{part}.jsonl") for part in examples}
    for part, rows in examples.items():
        write_jsonl(files[part], rows)
    train_file, eval_file = files["train"], files["eval"]
    results_path = os.path.join(args.output_dir, "results.json")
    results = {}
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)["settings"]
    for name in names:
        train_flags, reused, generate_flags = SETTINGS[name]
        row = {}
        if train_flags is None:
            run_dir = reused and os.path.join(args.output_dir, "runs", reused)
        else:
            run_dir = os.path.join(args.output_dir, "runs", name)
            if not (args.reuse_runs and os.path.exists(os.path.join(run_dir, "run_summary.json"))):
                run_dir = train(name, train_flags, args, train_file, eval_file)
            row["train_seconds"] = read_run_summary(run_dir)["train_metrics"]["train_runtime"]
        row.update(evaluate(name, run_dir, generate_flags, files, examples, version_2, args))
        results[name] = row
        print(f"{name}: {row}", file=sys.stderr, flush=True)
        write_json(results_path, {"model": args.model_name_or_path, "data_file": os.path.basename(args.data_file),
                                  "num_train": len(train_examples), "num_eval": len(eval_examples), "seed": args.seed,
                                  "date": time.strftime("%Y-%m-%d"), "settings": results})  # fmt: skip
    table = render(results, version_2)
    print(table, end="")
    print(leftovers(args.output_dir, results), end="")
    return {"settings": results, "table": table}


if __name__ == "__main__":
    main()
