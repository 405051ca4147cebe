"""lm-evaluation-harness's SQuAD v2 task and this project's generate.py + evaluate_squad.py, on the same questions.

    pip install "lm_eval>=0.4.13,<0.5"
    python benchmarks/lm_eval/run_lm_eval.py --adapter outputs/smollm2-v2 --num_questions 200
    python benchmarks/lm_eval/run_lm_eval.py --model_name_or_path ~/models/smollm2-135m    # a zero-shot base
    # training questions for such a run, from the dev articles that hold none of the scored questions:
    python benchmarks/lm_eval/run_lm_eval.py --write_train_file outputs/lm_eval_train.jsonl --num_train 400

The first --num_questions questions of --data_file (the official dev-v2.0.json), in the file's order, are written
in the Hub's flat layout (id, title, context, question, answers{text, answer_start}) into a temporary directory.
There lm_eval runs the squadv2_local task (squadv2_local.yaml: lm_eval's squadv2 prompt, requests and metric on
that file, offline), and generate.py (the run's recorded prompt and decoding: greedy, plain, by default) and
evaluate_squad.py answer and score the same file. --output gets both scores with 95% bootstrap intervals over the
questions (paired for the difference), the commands, the date and the machine. Not a test: it needs a real model
and minutes of CPU; tests/test_serving.py checks the task file and the conversion.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

from squad_lora.cli import parse_args
from squad_lora.data import COLUMNS, load_squad_file
from squad_lora.outputs import write_json, write_jsonl
from squad_lora.prompt import prediction_from_generation
from squad_lora.scoring import read_predictions
from squad_lora.squad_metric.squad_metric import question_scores

TASK_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(TASK_DIR))
TASK = "squadv2_local"
FLAT_FILE = "squad_v2_dev_flat.jsonl"  # the name squadv2_local.yaml reads, in lm_eval's working directory
DEFAULT_DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "squad", "dev-v2.0.json")
DEFAULT_OUTPUT = os.path.join(REPO, "benchmarks", "results", "lm_eval_squad_v2.json")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@dataclass
class LmEvalArguments:
    adapter: Optional[str] = field(
        default=None,
        metadata={"help": "A run_qa_lora.py output dir (LoRA adapter or full fine-tune) or a merged model."},
    )
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "The base: without --adapter, scored zero-shot; with it, replaces its base."}
    )
    data_file: str = field(default=DEFAULT_DATA, metadata={"help": "The official SQuAD v2.0 dev JSON."})
    num_questions: int = field(default=200, metadata={"help": "The first N questions of the file, in its order."})
    output: str = field(default=DEFAULT_OUTPUT, metadata={"help": "Where the result JSON goes."})
    work_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Keep the data, lm_eval's samples and the predictions here (default: a temp dir)."},
    )
    reuse_work_dir: bool = field(
        default=False,
        metadata={
            "help": "Do not run again a command the --work_dir's timings.json records as run: score its outputs."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "lm_eval's --batch_size."})
    num_bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples of the questions."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap and of --write_train_file's draw."})
    write_train_file: Optional[str] = field(
        default=None,
        metadata={"help": "Only write --num_train training questions (JSON Lines) from the articles none of the "
                  "--num_questions scored questions come from, and stop."},
    )  # fmt: skip
    num_train: int = field(default=400, metadata={"help": "Questions --write_train_file draws."})


def first_questions(data_file: str, num_questions: int) -> list[dict]:
    """The first num_questions questions of a SQuAD file in its order, every one kept (whatever its answer offsets),
    as Hub rows: id, title, context, question, answers {text, answer_start} (empty lists: unanswerable)."""
    examples, _ = load_squad_file(data_file, check_answers=False)
    return [{column: example[column] for column in COLUMNS} for example in examples[:num_questions]]


def write_flat_split(data_file: str, directory: str, num_questions: int) -> tuple[str, list[dict]]:
    """The scored questions as the JSON Lines file squadv2_local.yaml names, in directory; returns (path, rows)."""
    rows = first_questions(data_file, num_questions)
    path = os.path.join(directory, FLAT_FILE)
    write_jsonl(path, rows)
    return path, rows


def held_out_training_questions(data_file: str, num_scored: int, num_train: int, seed: int) -> list[dict]:
    """num_train questions drawn with seed from the articles that hold none of the first num_scored questions."""
    examples, _ = load_squad_file(data_file, check_answers=False)
    scored_titles = {example["title"] for example in examples[:num_scored]}
    pool = [example for example in examples[num_scored:] if example["title"] not in scored_titles]
    return random.Random(seed).sample(pool, min(num_train, len(pool)))


def lm_eval_model_args(args: LmEvalArguments) -> str:
    """--model_args of lm_eval's hf model: the base with the adapter as peft=, or the model itself."""
    source = args.adapter or args.model_name_or_path
    config_path = os.path.join(source, "adapter_config.json")
    if not os.path.isfile(config_path):
        return f"pretrained={source},dtype=float32"
    with open(config_path, encoding="utf-8") as f:
        base = args.model_name_or_path or json.load(f)["base_model_name_or_path"]
    return f"pretrained={base},peft={source},tokenizer={source},dtype=float32"


TIMINGS = "timings.json"  # in the work dir: each command run and its wall seconds, for --reuse_work_dir


def run(argv: list[str], cwd: str, reuse: bool = False) -> float:
    """Run a command offline from cwd; returns its wall seconds. reuse: where the work dir's timings record this
    exact command as run (its outputs are there), return its seconds instead of running it again."""
    timings_path = os.path.join(cwd, TIMINGS)
    timings = []
    if os.path.isfile(timings_path):
        with open(timings_path, encoding="utf-8") as f:
            timings = json.load(f)
    earlier = [entry["seconds"] for entry in timings if entry["argv"] == argv]
    if reuse and earlier:
        print(f"reusing the outputs of: {shlex.join(argv)}", file=sys.stderr)
        return earlier[-1]
    start = time.perf_counter()
    completed = subprocess.run(argv, cwd=cwd, env={**os.environ, **OFFLINE}, capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{completed.stderr[-4000:]}")
    seconds = time.perf_counter() - start
    write_json(timings_path, [*timings, {"argv": argv, "seconds": seconds}])
    return seconds


def run_lm_eval(args: LmEvalArguments, work_dir: str) -> tuple[list[str], float, dict, list[dict]]:
    """(command, seconds, lm_eval's reported squadv2 metrics, its logged samples)."""
    import torch

    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", lm_eval_model_args(args),
        "--tasks", TASK, "--include_path", TASK_DIR, "--batch_size", str(args.batch_size),
        "--device", "cuda" if torch.cuda.is_available() else "cpu", "--output_path", os.path.join(work_dir, "lm_eval"),
        "--log_samples", "--seed", str(args.seed),
    ]  # fmt: skip
    seconds = run(command, work_dir, args.reuse_work_dir)
    (results_path,) = glob.glob(os.path.join(work_dir, "lm_eval", "**", "results_*.json"), recursive=True)
    (samples_path,) = glob.glob(os.path.join(work_dir, "lm_eval", "**", f"samples_{TASK}_*.jsonl"), recursive=True)
    with open(results_path, encoding="utf-8") as f:
        metrics = json.load(f)["results"][TASK]
    with open(samples_path, encoding="utf-8") as f:
        samples = [json.loads(line) for line in f if line.strip()]
    return command, seconds, metrics, samples


def lm_eval_predictions(samples: list[dict]) -> dict[str, tuple[str, float]]:
    """{id: (generated text, no-answer probability)}: the prediction each logged sample handed the metric."""
    found = {}
    for sample in samples:
        prediction, _ = sample["exact"]  # (prediction, reference), as process_results gave it to the metric
        found[prediction["id"]] = (prediction["prediction_text"], prediction["no_answer_probability"])
    return found


def check_same(per_question_scores: list[float], reported: float, what: str) -> None:
    """The per-question scores the intervals come from average to what the tool reported."""
    if abs(mean(per_question_scores) - reported) > 1e-6:
        raise RuntimeError(f"{what}: per-question mean {mean(per_question_scores)} is not the reported {reported}")


def run_ours(args: LmEvalArguments, work_dir: str, data_path: str) -> tuple[list[list[str]], float, dict, dict]:
    """(commands, seconds, evaluate_squad.py's scores, {id: prediction}) of generate.py + evaluate_squad.py."""
    model = ["--adapter", args.adapter] if args.adapter else []
    model += ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
    preds_dir, scores_path = os.path.join(work_dir, "preds"), os.path.join(work_dir, "scores.json")
    generate = [sys.executable, os.path.join(REPO, "generate.py"), *model, "--validation_file", data_path,
                "--output_dir", preds_dir, "--disable_tqdm", "true"]  # fmt: skip
    seconds = run(generate, work_dir, args.reuse_work_dir)
    (predictions_path,) = glob.glob(os.path.join(preds_dir, "predictions_*.json"))
    evaluate = [sys.executable, os.path.join(REPO, "evaluate_squad.py"), data_path, predictions_path,
                "--version_2_with_negative", "--output", scores_path]  # fmt: skip
    run(evaluate, work_dir, args.reuse_work_dir)
    with open(scores_path, encoding="utf-8") as f:
        scores = json.load(f)
    return [generate, evaluate], seconds, scores, read_predictions(predictions_path)


def per_question(rows: list[dict], predictions: dict[str, str]) -> tuple[list[float], list[float]]:
    """Per question, in order: (exact match, F1) in percent by the official v2.0 rules; a missing prediction 0."""
    exact, f1 = [], []
    for row in rows:
        prediction = predictions.get(row["id"])
        em, score = (0, 0.0) if prediction is None else question_scores(prediction, row["answers"]["text"], True)
        exact.append(100.0 * em)
        f1.append(100.0 * score)
    return exact, f1


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def bootstrap(first: list[float], second: list[float], num_resamples: int, seed: int) -> dict:
    """95% percentile intervals of the mean of each score list and of second - first, the same resampled questions
    for all three (paired)."""
    rng = random.Random(seed)
    n = len(first)
    draws = {"first": [], "second": [], "difference": []}
    for _ in range(num_resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        a, b = mean([first[i] for i in picks]), mean([second[i] for i in picks])
        draws["first"].append(a)
        draws["second"].append(b)
        draws["difference"].append(b - a)
    low, high = int(0.025 * num_resamples), int(0.975 * num_resamples) - 1
    return {key: [round(sorted(values)[low], 2), round(sorted(values)[high], 2)] for key, values in draws.items()}


def machine() -> str:
    import torch

    return (
        f"{platform.machine()} {platform.processor() or 'CPU'}, {os.cpu_count()} cores visible (shared with other "
        f"jobs), {torch.get_num_threads()} torch threads, {platform.system()} {platform.release()}"
    )


def summarize(args, rows, lm_eval_run, our_run) -> dict:
    """The result file's content: both scores with their intervals, the paired difference, commands, date, machine."""
    lm_command, lm_seconds, lm_metrics, samples = lm_eval_run
    our_commands, our_seconds, our_scores, our_predictions = our_run
    lm_predictions = lm_eval_predictions(samples)
    lm_exact, lm_f1 = per_question(rows, {qid: text for qid, (text, _) in lm_predictions.items()})
    our_exact, our_f1 = per_question(rows, our_predictions)
    # lm_eval's own generations read as generate.py reads its own: "unanswerable" is the empty answer
    ruled = {qid: prediction_from_generation(text) for qid, (text, _) in lm_predictions.items()}
    ruled_exact, ruled_f1 = per_question(rows, ruled)
    for key, lm, ours in (("exact", lm_exact, our_exact), ("f1", lm_f1, our_f1)):
        check_same(lm, lm_metrics[f"{key},none"], f"lm_eval {key}")  # percent, as the metric gives it
        check_same(ours, our_scores[key], f"evaluate_squad.py {key}")
    intervals = {
        key: bootstrap(lm, ours, args.num_bootstrap, args.seed)
        for key, lm, ours in (("exact", lm_exact, our_exact), ("f1", lm_f1, our_f1))
    }
    ruled_intervals = {
        key: bootstrap(lm, ours, args.num_bootstrap, args.seed)
        for key, lm, ours in (("exact", ruled_exact, our_exact), ("f1", ruled_f1, our_f1))
    }
    lm_eval_version = subprocess.run([sys.executable, "-m", "pip", "show", "lm_eval"], capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": args.adapter or args.model_name_or_path,
        "data_file": os.path.basename(args.data_file),
        "questions": f"the first {len(rows)} of the file, in its order",
        "num_questions": len(rows),
        "num_unanswerable": sum(1 for row in rows if not row["answers"]["text"]),
        "lm_eval": {
            "version": next((line.split()[-1] for line in lm_eval_version.stdout.splitlines() if line.startswith("Version")), None),
            "task": f"{TASK}: lm_eval's squadv2 prompt, requests and metric on the local copy",
            "exact": round(mean(lm_exact), 2), "exact_ci95": intervals["exact"]["first"],
            "f1": round(mean(lm_f1), 2), "f1_ci95": intervals["f1"]["first"],
            "reported": {key: value for key, value in lm_metrics.items() if isinstance(value, (int, float))},
            "with_our_answer_rule": {
                "exact": round(mean(ruled_exact), 2), "exact_ci95": ruled_intervals["exact"]["first"],
                "f1": round(mean(ruled_f1), 2), "f1_ci95": ruled_intervals["f1"]["first"],
            },
            "seconds": round(lm_seconds, 1),
        },
        "ours": {
            "exact": round(mean(our_exact), 2), "exact_ci95": intervals["exact"]["second"],
            "f1": round(mean(our_f1), 2), "f1_ci95": intervals["f1"]["second"],
            "reported": our_scores,
            "generate_seconds": round(our_seconds, 1),
        },
        "ours_minus_lm_eval": {
            "exact": round(mean(our_exact) - mean(lm_exact), 2), "exact_ci95": intervals["exact"]["difference"],
            "f1": round(mean(our_f1) - mean(lm_f1), 2), "f1_ci95": intervals["f1"]["difference"],
        },
        # the prompt's part alone: lm_eval's generations read with our answer rule, against ours
        "ours_minus_lm_eval_with_our_answer_rule": {
            "exact": round(mean(our_exact) - mean(ruled_exact), 2), "exact_ci95": ruled_intervals["exact"]["difference"],
            "f1": round(mean(our_f1) - mean(ruled_f1), 2), "f1_ci95": ruled_intervals["f1"]["difference"],
        },
        "bootstrap": f"{args.num_bootstrap} resamples of the questions (seed {args.seed}), percentile intervals; "
        "the difference resamples the same questions for both",
        "commands": {
            "this": shlex.join(["python", "benchmarks/lm_eval/run_lm_eval.py", *sys.argv[1:]]),
            "lm_eval": shlex.join(["python", *lm_command[1:]]),
            "generate": shlex.join(["python", os.path.relpath(our_commands[0][1], REPO), *our_commands[0][2:]]),
            "evaluate": shlex.join(["python", os.path.relpath(our_commands[1][1], REPO), *our_commands[1][2:]]),
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    (args,), _, _ = parse_args((LmEvalArguments,), argv)
    if args.write_train_file:
        rows = held_out_training_questions(args.data_file, args.num_questions, args.num_train, args.seed)
        write_jsonl(args.write_train_file, rows)
        print(f"wrote {len(rows)} training questions to {args.write_train_file}", file=sys.stderr)
        return {"train_file": args.write_train_file, "num_train": len(rows)}
    if not args.adapter and not args.model_name_or_path:
        raise SystemExit("give --adapter RUN_DIR (or a merged model), or --model_name_or_path BASE for zero-shot")
    with tempfile.TemporaryDirectory(prefix="squad-lora-lm-eval-") as scratch:
        work_dir = os.path.abspath(args.work_dir or scratch)
        os.makedirs(work_dir, exist_ok=True)
        data_path, rows = write_flat_split(args.data_file, work_dir, args.num_questions)
        lm_eval_run = run_lm_eval(args, work_dir)
        our_run = run_ours(args, work_dir, data_path)
        result = summarize(args, rows, lm_eval_run, our_run)
    write_json(args.output, result)
    print(json.dumps({key: result[key] for key in ("lm_eval", "ours", "ours_minus_lm_eval")}, indent=2))
    return result


if __name__ == "__main__":
    main()
