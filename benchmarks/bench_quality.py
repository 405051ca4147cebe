"""What each setting is worth: EM/F1 on SQuAD articles nobody tuned on, with 95% intervals, paired against plain.

    python benchmarks/bench_quality.py --model_name_or_path ~/.cache/squad-lora-models/smollm2-135m \\
        --data_file ../shared/data/squad/dev-v1.1.json --output_dir outputs/bench_quality \\
        --settings plain,recipe --folds 1,2,3,4 --seeds 0,1          # the report: plain against the recipe
    python benchmarks/bench_quality.py ... --folds 0 --settings plain,all_linear,lr_2e-3   # choosing levers
    python benchmarks/bench_quality.py ... --article_draw 7 --num_eval 200 --settings plain,recipe  # a fresh draw
    python benchmarks/bench_quality.py ... --folds 1 --settings plain,recipe --output_dir outputs/quality_bf16 \\
        --extra_train_flags "--bf16 --use_cpu" --paired_with outputs/bench_quality/results.json  # bf16 against fp32

The protocol (PROTOCOL, recorded in results.json): the data file's articles fall into 5 folds by position
(fold k: articles k, k+5, k+10, ...). A run scores one fold's questions (--num_eval of them, the same for every
seed and setting) after training one epoch on --num_train questions drawn, with the seed, from the other folds'
articles (on SQuAD v2 the next fold is left out of training: its questions are where a calibrated setting picks
its confidence floor). Settings are chosen on fold 0 (where the first recipe was tuned) and reported on folds
1-4. Per setting the table gives the mean EM/F1 over the runs' questions with a 95% bootstrap interval
(questions and seeds resampled within each fold) and the paired difference against plain on the same questions,
seeds and training questions; where two or more folds have run, also the 95% prediction interval for the gain
one fresh draw of 200 questions from other articles should show (stats.prediction_interval). Each setting is
run_qa_lora.py on top of the plain run's flags (or a config file's), then generate.py with the setting's decoding
flags, each as its own process, as a user runs them; decoding-only settings reuse the run they name. results.json
is rewritten after every setting (per-question scores included), so --folds, --seeds, --settings and --reuse_runs
run the protocol in parts and resume it. Not a test: it needs a real model and CPU hours; the tests run it on the
tiny random model and check the intervals on made-up scores.
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
from squad_lora.squad_metric.squad_metric import question_scores
from squad_lora.stats import bootstrap_mean, format_interval, prediction_interval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "configs", "recipe_small.yaml")
NUM_FOLDS = 5  # fold k: the data file's articles k, k+5, k+10, ...
REPORTING_FOLDS = (1, 2, 3, 4)  # fold 0 is where settings are chosen (the first recipe was tuned on it)
PROTOCOL = (
    f"{NUM_FOLDS} folds of the data file's articles by position (fold k: articles k, k+{NUM_FOLDS}, ...); a run "
    "trains one epoch on questions drawn with its seed from the other folds (SQuAD v2: not the next fold, its "
    "calibration fold) and scores a fixed draw of its fold's questions; settings chosen on fold 0, reported on "
    "folds 1-4; 95% percentile bootstrap (2000 resamples of questions and seeds within each fold), differences "
    "paired on the same questions and seeds"
)
CALIBRATED = "calibrated"  # --min_answer_confidence: the value pick_min_confidence finds on the calibration questions
MAX_HAS_ANS_DROP = 3.0  # what abstaining may cost HasAns EM on the calibration questions, in points
HAS_ANS_BUDGETS = (1.0, 2.0, 3.0, 5.0)  # each picked on the calibration questions and scored; holds MAX_HAS_ANS_DROP
CONFIDENCE_CURVE = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # --min_answer_confidence values the trade-off is shown at
FRESH_DRAW_QUESTIONS = 200  # the prediction interval is for one fresh draw of this many scored questions
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
    "lr_2e-4": (["--learning_rate", "2e-4"], None, []),
    "dropout_0": (["--lora_dropout", "0"], None, []),  # plain's LoRA dropout is run_qa_lora.py's default, 0.1
    "dropout_0.05": (["--lora_dropout", "0.05"], None, []),
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
    folds: str = field(
        default=",".join(map(str, REPORTING_FOLDS)),
        metadata={
            "help": f"Folds scored, comma-separated (0-{NUM_FOLDS - 1}): fold k holds the file's articles k, "
            f"k+{NUM_FOLDS}, ...; fold 0 is where settings are chosen, the others report."
        },
    )
    seeds: str = field(default="0", metadata={"help": "Training seeds, comma-separated (each draws its questions)."})
    article_draw: Optional[int] = field(
        default=None,
        metadata={
            "help": "Instead of folds: score a random fifth of the articles, drawn with this seed (a fresh draw to "
            "check a reported interval against)."
        },
    )
    num_train: int = field(default=400, metadata={"help": "Training questions (one epoch), from the other folds."})
    num_eval: int = field(default=400, metadata={"help": "Questions scored per fold (0: all of the fold's)."})
    num_calibration: int = field(
        default=200,
        metadata={
            "help": "SQuAD v2: questions of the next fold (never trained on or scored) on which the calibrated "
            "settings pick --min_answer_confidence (the most abstention that costs HasAns EM at most 3 points)."
        },
    )
    extra_train_flags: Optional[str] = field(
        default=None, metadata={"help": "Flags added to every training run (e.g. '--max_steps 2' for a smoke run)."}
    )
    paired_with: Optional[str] = field(
        default=None,
        metadata={
            "help": "Another output's results.json (the same protocol run another way, e.g. in fp32): each setting's "
            "EM/F1 here minus there, paired on the runs and questions both hold (results.json: 'paired_with')."
        },
    )
    reuse_runs: bool = field(
        default=False,
        metadata={"help": "Keep a finished run (run_summary.json) and scored setting instead of doing it again."},
    )


@dataclass
class Split:
    """One training run's questions: trained, scored and (SQuAD v2) calibration questions, from disjoint articles."""

    group: str  # the stratum the bootstrap resamples within: fold1, or draw7 for --article_draw 7
    seed: int
    train: list[dict]
    scored: list[dict]
    calibration: list[dict]

    @property
    def key(self) -> str:
        return f"{self.group}_seed{self.seed}"


def articles_of(examples: list[dict]) -> list[list[dict]]:
    """The questions grouped by article (title), in file order."""
    articles: dict[str, list[dict]] = {}
    for ex in examples:
        articles.setdefault(ex["title"], []).append(ex)
    return list(articles.values())


def draw(rng: random.Random, pool: list[dict], count: int) -> list[dict]:
    """count questions of pool (all of them for 0 or more than it holds), in the pool's order."""
    if count <= 0 or count >= len(pool):
        return list(pool)
    picked = set(rng.sample(range(len(pool)), count))
    return [ex for i, ex in enumerate(pool) if i in picked]


def make_split(articles: list[list[dict]], fold: int | None, seed: int, args, version_2: bool) -> Split:
    """Fold `fold`'s questions scored (or, with --article_draw, a random fifth of the articles'), the training
    questions drawn with `seed` from the other articles; on SQuAD v2 the next fold is the calibration fold and
    is trained on by no one. The scored and calibration draws do not depend on the seed, so every seed and
    setting of a fold scores the same questions (the pairing)."""
    count = len(articles)
    if args.article_draw is None:
        group = f"fold{fold}"
        order = list(range(count))
        scored_ids = {i for i in order if i % NUM_FOLDS == fold}
        calibration_ids = {i for i in order if i % NUM_FOLDS == (fold + 1) % NUM_FOLDS}
    else:
        group = f"draw{args.article_draw}"
        order = random.Random(f"articles/{args.article_draw}").sample(range(count), count)
        scored_ids, calibration_ids = (
            set(order[: count // NUM_FOLDS]),
            set(order[count // NUM_FOLDS : 2 * count // NUM_FOLDS]),
        )
    if not version_2:
        calibration_ids = set()
    questions = {part: [ex for i in range(count) if i in ids for ex in articles[i]]
                 for part, ids in (("scored", scored_ids), ("calibration", calibration_ids))}  # fmt: skip
    pool = [ex for i in range(count) if i not in scored_ids | calibration_ids for ex in articles[i]]
    return Split(
        group=group,
        seed=seed,
        train=draw(random.Random(f"train/{group}/{seed}"), pool, args.num_train),
        scored=draw(random.Random(f"scored/{group}"), questions["scored"], args.num_eval),
        calibration=draw(random.Random(f"calibration/{group}"), questions["calibration"], args.num_calibration),
    )


def run(script: str, *args: str) -> float:
    """Run one of the project's scripts as its own process; returns its wall time in seconds."""
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{completed.stderr[-4000:]}")
    return time.perf_counter() - start


def train(flags: list[str], run_dir: str, split: Split, files: dict, args: BenchArguments) -> None:
    base = [] if flags[:1] == ["--config"] else PLAIN  # a config file's values, not the plain run's flags over them
    run(
        "run_qa_lora.py", *base, "--model_name_or_path", args.model_name_or_path, "--train_file", files["train"],
        "--validation_file", files["eval"], "--output_dir", run_dir, "--overwrite_output_dir", "--num_train_epochs",
        "1", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--seed", str(split.seed),
        "--disable_tqdm", "true", *flags, *(args.extra_train_flags or "").split(),
    )  # fmt: skip


def answer(preds_dir: str, run_dir: str | None, flags: list[str], eval_file: str, args) -> tuple[list[dict], float]:
    """generate.py's prediction rows (with confidences) for eval_file, and its wall time."""
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


def per_question(examples: list[dict], predictions: dict[str, str], version_2: bool) -> dict[str, list[float]]:
    """{id: [exact, F1]} in percent, by the official rules (what score_predictions averages)."""
    return {
        ex["id"]: [100.0 * score for score in question_scores(predictions[ex["id"]], ex["answers"]["text"], version_2)]
        for ex in examples
    }


def na_prob_threshold(name: str, run_dir, flags: list[str], files: dict, split: Split, rows: list[dict], args) -> dict:
    """The official v2 threshold search done honestly: the no-answer-probability threshold that is best on the
    calibration fold's questions (its best_exact_thresh), applied to the scored questions; beside it, the best
    threshold chosen on the scored questions themselves (the official best_exact: an upper bound)."""
    if not split.calibration:
        return {}
    calibration, _ = answer(os.path.join(args.output_dir, "predictions", split.key, f"{name}_na_calibration"),
                            run_dir, flags, files["calibration"], args)  # fmt: skip

    def probabilities(answered):
        return {row["id"]: row["no_answer_probability"] for row in answered}

    picked = score_predictions(split.calibration, abstaining(calibration, 0.0), True, name, probabilities(calibration))
    threshold = picked["best_exact_thresh"]
    scored = score_predictions(split.scored, abstaining(rows, 0.0), True, name, probabilities(rows), threshold)
    return {"threshold": threshold, **v2_summary(scored),
            "best_exact_on_scored": scored["best_exact"], "best_f1_on_scored": scored["best_f1"]}  # fmt: skip


def evaluate(name: str, run_dir: str | None, flags: list[str], files: dict, split: Split, version_2: bool, args):
    """The setting's scores on the split's scored questions, overall and per question; a calibrated setting first
    picks its confidence floor on the calibration questions."""
    predictions = os.path.join(args.output_dir, "predictions", split.key)
    row = {}
    if CALIBRATED in flags:
        position = flags.index(CALIBRATED)
        uncalibrated = flags[: position - 1] + flags[position + 1 :]
        calibration, _ = answer(
            os.path.join(predictions, f"{name}_calibration"), run_dir, uncalibrated, files["calibration"], args
        )
        floors = {budget: pick_min_confidence(calibration, split.calibration, budget) for budget in HAS_ANS_BUDGETS}
        row["min_answer_confidence"] = floors[MAX_HAS_ANS_DROP]
        flags = [*flags[:position], str(row["min_answer_confidence"]), *flags[position + 1 :]]
        # the other HasAns budgets, from the same answers with their floors applied afterwards (as generate.py
        # applies one: the benchmark's test checks that)
        answered, _ = answer(os.path.join(predictions, f"{name}_no_floor"), run_dir, uncalibrated, files["eval"], args)
        row["has_ans_budgets"] = {
            str(budget): {
                "min_answer_confidence": floor,
                **v2_summary(score_predictions(split.scored, abstaining(answered, floor), True)),
            }
            for budget, floor in floors.items()
        }
    rows, seconds = answer(os.path.join(predictions, name), run_dir, flags, files["eval"], args)
    answers = abstaining(rows, 0.0)
    row.update(score_predictions(split.scored, answers, version_2, source=name))
    if version_2 and any(not ex["answers"]["text"] for ex in split.scored):
        row["confidence_ranking"] = confidence_ranking(rows, split.scored)
    if version_2:  # what each confidence floor would give, from the same answers
        row["min_confidence_curve"] = {
            str(floor): v2_summary(score_predictions(split.scored, abstaining(rows, floor), True))
            for floor in CONFIDENCE_CURVE
        }
        row["na_prob_threshold"] = na_prob_threshold(name, run_dir, flags, files, split, rows, args)
    return {**row, "generate_seconds": seconds, "questions": per_question(split.scored, answers, version_2)}


def leftovers(output_dir: str, split_key: str, names: list[str]) -> str:
    """What answer post-processing could still remove that the official normalisation keeps: the prompt's cue
    words inside an answer. (Trailing punctuation and articles the normalisation strips already.)"""
    lines = []
    for name in names:
        preds_dir = os.path.join(output_dir, "predictions", split_key, name)
        paths = [os.path.join(preds_dir, f) for f in os.listdir(preds_dir) if f.endswith(".json")]
        predictions = read_predictions(paths[0]).values() if paths else []
        cues = sum(any(cue in p for cue in ("Answer:", "Question:", "Context:")) for p in predictions)
        periods = sum(p.rstrip().endswith(".") for p in predictions)
        lines.append(
            f"{split_key} {name}: {cues} of {len(predictions)} answers hold a cue word, {periods} end with a period"
        )
    return "\n".join(lines) + "\n"


def scores_of(runs: dict, keys: list[tuple[str, str]], name: str, baseline: str | None, column: int) -> list:
    """Per stratum, a seeds x questions array of the setting's per-question scores (minus the baseline's on the
    same questions when given), over the (group, run key) pairs given."""
    strata: dict[str, list[list[float]]] = {}
    for group, key in keys:
        questions = runs[key][name]["questions"]
        row = [scores[column] for scores in questions.values()]
        if baseline:
            reference = runs[key][baseline]["questions"]
            row = [value - reference[qid][column] for qid, value in zip(questions, row)]
        strata.setdefault(group, []).append(row)
    return list(strata.values())


def summarize(runs: dict, split_keys: list[tuple[str, str]], names: list[str], version_2: bool) -> dict:
    """Per setting over the given runs: mean EM/F1 with 95% intervals, the paired difference against plain on the
    runs both have, and the training time against plain's."""
    summary = {}
    for name in names:
        keys = [(group, key) for group, key in split_keys if name in runs.get(key, {})]
        if not keys:
            continue
        distinct = {group: len(runs[key][name]["questions"]) for group, key in keys}  # each seed: the same ones
        row = {"runs": len(keys), "questions": sum(distinct.values())}
        for column, metric in enumerate(("exact", "f1")):
            row[metric] = bootstrap_mean(scores_of(runs, keys, name, None, column))
        paired = [(group, key) for group, key in keys if "plain" in runs[key]]
        if name != "plain" and paired:
            row["paired_runs"] = len(paired)
            for column, metric in enumerate(("exact", "f1")):
                differences = scores_of(runs, paired, name, "plain", column)
                row[f"delta_{metric}"] = bootstrap_mean(differences)
                if len(differences) > 1:  # where one fresh draw's gain should land: needs the spread over folds
                    row[f"predicted_delta_{metric}"] = prediction_interval(differences, FRESH_DRAW_QUESTIONS)
            ratios = [runs[key][name]["train_seconds"] / runs[key]["plain"]["train_seconds"]
                      for _, key in paired if runs[key][name].get("train_seconds")]  # fmt: skip
            row["train_time_vs_plain"] = sum(ratios) / len(ratios) if ratios else None
        row["by_run"] = {key: runs[key][name]["exact" if version_2 else "exact_match"] for _, key in keys}
        summary[name] = row
    return summary


def paired_with(runs: dict, other_runs: dict, names: list[str]) -> dict:
    """Per setting, EM and F1 in runs minus in other_runs with 95% intervals, over the runs (split keys) both hold,
    question by question; each run is its own stratum."""
    rows = {}
    for name in names:
        keys = [key for key in runs if name in runs[key] and name in other_runs.get(key, {})]
        if keys:
            rows[name] = {"runs": keys}
            for column, metric in enumerate(("exact", "f1")):
                strata = [[value[column] - other_runs[key][name]["questions"][qid][column]
                           for qid, value in runs[key][name]["questions"].items()] for key in keys]  # fmt: skip
                rows[name][f"delta_{metric}"] = bootstrap_mean(strata)
    return rows


def render(summary: dict) -> str:
    lines = [
        "| setting | runs | questions | EM [95%] | F1 [95%] | ΔEM vs plain [95%] | ΔF1 vs plain [95%] "
        f"| ΔEM, one fresh draw of {FRESH_DRAW_QUESTIONS} [95% prediction] | train × plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        deltas = [format_interval(*row[key], signed=True) if key in row else "–"
                  for key in ("delta_exact", "delta_f1", "predicted_delta_exact")]  # fmt: skip
        ratio = row.get("train_time_vs_plain")
        trained = SETTINGS.get(name, (None, None))[0] is not None or name == "plain"
        time_cell = (
            f"{ratio:.2f}" if ratio else "–" if trained or name == "plain" else f"({SETTINGS[name][1] or 'zero-shot'})"
        )
        lines.append(
            f"| {name} | {row['runs']} | {row['questions']} | {format_interval(*row['exact'])} | "
            f"{format_interval(*row['f1'])} | {' | '.join(deltas)} | {time_cell} |"
        )
    return "\n".join(lines) + "\n"


def write_split_files(split: Split, output_dir: str) -> dict[str, str]:
    directory = os.path.join(output_dir, "data", split.key)
    os.makedirs(directory, exist_ok=True)
    files = {}
    for part, rows in (("train", split.train), ("eval", split.scored), ("calibration", split.calibration)):
        files[part] = os.path.join(directory, f"{part}.jsonl")
        write_jsonl(files[part], rows)
    return files


def run_setting(name: str, split: Split, files: dict, version_2: bool, args: BenchArguments) -> dict:
    """Train the setting on the split (or reuse the run it names) and score it."""
    train_flags, reused, generate_flags = SETTINGS[name]
    runs_dir = os.path.join(args.output_dir, "runs", split.key)
    row = {}
    if train_flags is None:
        run_dir = reused and os.path.join(runs_dir, reused)
    else:
        run_dir = os.path.join(runs_dir, name)
        if not (args.reuse_runs and os.path.exists(os.path.join(run_dir, "run_summary.json"))):
            train(train_flags, run_dir, split, files, args)
        row["train_seconds"] = read_run_summary(run_dir)["train_metrics"]["train_runtime"]
    row.update(evaluate(name, run_dir, generate_flags, files, split, version_2, args))
    return row


def command_line(argv: list[str]) -> str:
    """The command as run, with the model and data paths cut to their last part (no machine's paths recorded)."""
    shown = [os.path.basename(a.rstrip("/")) if os.path.isabs(os.path.expanduser(a)) else a for a in argv]
    return "python benchmarks/bench_quality.py " + " ".join(shown)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    (args,), _, _ = parse_args((BenchArguments,), argv)
    names = args.settings.split(",") if args.settings else list(SETTINGS)
    unknown = [name for name in names if name not in SETTINGS]
    folds = [None] if args.article_draw is not None else [int(fold) for fold in args.folds.split(",")]
    if unknown:
        raise SystemExit(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    if any(fold is not None and not 0 <= fold < NUM_FOLDS for fold in folds):
        raise SystemExit(f"--folds {args.folds}: folds are 0 to {NUM_FOLDS - 1}")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    examples, stats = load_squad_file(args.data_file)
    version_2 = is_version_2(examples, stats.version)
    articles = articles_of(examples)
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = os.path.join(args.output_dir, "results.json")
    results = {"runs": {}, "summaries": {}}
    if os.path.exists(results_path):
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
    results.update(model=os.path.basename(args.model_name_or_path.rstrip("/")),
                   data_file=os.path.basename(args.data_file), protocol=PROTOCOL)  # fmt: skip
    split_keys = []
    label = f"draw {args.article_draw}" if args.article_draw is not None else f"folds {args.folds}"
    label += f", seeds {args.seeds}, {args.num_train} training questions"
    for seed in seeds:  # a whole seed over every fold first: a run stopped early still covers each fold
        for fold in folds:
            split = make_split(articles, fold, seed, args, version_2)
            split_keys.append((split.group, split.key))
            sizes = {"num_train": args.num_train, "num_eval": args.num_eval, "num_calibration": args.num_calibration}
            recorded = results.setdefault("splits", {}).setdefault(split.key, sizes)
            if recorded != sizes:  # a budget curve's points each need their own --output_dir
                raise SystemExit(f"{results_path}: its {split.key} runs were made with {recorded}, not {sizes}: "
                                 "give another --output_dir")  # fmt: skip
            files = write_split_files(split, args.output_dir)
            done = results["runs"].setdefault(split.key, {})
            for name in names:
                if args.reuse_runs and name in done:
                    continue
                done[name] = run_setting(name, split, files, version_2, args)
                shown = {k: v for k, v in done[name].items() if k not in ("questions", "min_confidence_curve")}
                print(f"{split.key} {name}: {shown}", file=sys.stderr, flush=True)
                summary = summarize(results["runs"], split_keys, names, version_2)
                results["summaries"][label] = {"command": command_line(argv), "date": time.strftime("%Y-%m-%d"),
                                               "settings": summary}  # fmt: skip
                write_json(results_path, results)
    summary = summarize(results["runs"], split_keys, names, version_2)
    table = render(summary)
    print(table, end="")
    if args.paired_with:
        with open(args.paired_with, encoding="utf-8") as f:
            other = json.load(f)
        results["paired_with"] = {"results": os.path.basename(args.paired_with), "command": command_line(argv),
                                  "settings": paired_with(results["runs"], other["runs"], names)}  # fmt: skip
        write_json(results_path, results)
        for name, row in results["paired_with"]["settings"].items():
            deltas = ", ".join(
                f"{metric} {format_interval(*row[f'delta_{metric}'], signed=True)}" for metric in ("exact", "f1")
            )
            print(f"{name} here minus {args.paired_with}: {deltas} over {', '.join(row['runs'])}")
    print(leftovers(args.output_dir, split_keys[-1][1], names), end="")
    return {"settings": summary, "runs": results["runs"], "table": table}


if __name__ == "__main__":
    main()
