"""Time SQuAD EM/F1 scoring of a real dev set on one CPU core (the target: under 5 s for v1.1 dev).

    python benchmarks/bench_metric.py --data_file ../shared/data/squad/dev-v1.1.json

The predictions are synthetic (seeded): gold answers as they are, re-cased with articles and
punctuation, random spans of the context, and empty answers. Reports the median over
--num_repeats of score_predictions (through the evaluate module), the plain scoring function
without evaluate's Arrow round trip, and one run of the whole command in a fresh process (imports
included), each as wall time and, where a busy machine inflates that, CPU time. Exits 1 when
score_predictions takes --max_seconds or longer.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from squad_lora import scoring
from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.squad_metric.squad_metric import squad_v1_scores, squad_v2_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # evaluate_squad.py is run from the checkout


@dataclass
class BenchArguments:
    data_file: str = field(
        default="../shared/data/squad/dev-v1.1.json",
        metadata={"help": "A real SQuAD dev file (official JSON); v2.0 files are scored by the v2.0 rules."},
    )
    num_repeats: int = field(default=5, metadata={"help": "Timed runs of each step; the median is reported."})
    max_seconds: float = field(default=5.0, metadata={"help": "Budget for score_predictions on one core."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic predictions."})
    run_command: bool = field(default=True, metadata={"help": "Also time evaluate_squad.py end to end."})


def synthetic_predictions(examples: list[dict], seed: int) -> dict[str, str]:
    """One answer per question: a mix of right, right-after-normalization, partial and wrong answers."""
    rng = random.Random(seed)
    predictions = {}
    for ex in examples:
        gold = ex["answers"]["text"][0] if ex["answers"]["text"] else ""
        words = ex["context"].split()
        start = rng.randrange(len(words))
        span = " ".join(words[start : start + rng.randint(1, 6)])
        predictions[ex["id"]] = rng.choice([gold, f"The {gold.upper()}.", span, f"{gold} {span}", ""])
    return predictions


def pin_to_one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def median_seconds(run, num_repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of run(); CPU time is what a busy machine does not inflate."""
    wall, cpu = [], []
    for _ in range(num_repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def time_command(data_file: str, predictions: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of `python evaluate_squad.py DATA PREDICTIONS` in a fresh process on one core."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "predictions.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(predictions, f)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, os.path.join(REPO, "evaluate_squad.py"), data_file, path],
            capture_output=True,
            text=True,
            preexec_fn=pin_to_one_core,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode:
        raise RuntimeError(f"evaluate_squad.py failed:\n{completed.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> dict:
    (args,), _, _ = parse_args((BenchArguments,), argv)
    pin_to_one_core()

    start = time.perf_counter()
    examples, stats = load_squad_file(args.data_file)
    load_seconds = time.perf_counter() - start
    version_2 = scoring.is_version_2(examples, stats.version)
    predictions = synthetic_predictions(examples, args.seed)

    start = time.perf_counter()
    scores = scoring.score_predictions(examples, predictions, version_2)  # first call loads the metric
    first_seconds = time.perf_counter() - start
    score_seconds = median_seconds(
        lambda: scoring.score_predictions(examples, predictions, version_2), args.num_repeats
    )
    references = [(ex["id"], ex["answers"]["text"]) for ex in examples]
    plain = squad_v2_scores if version_2 else squad_v1_scores
    plain_seconds = median_seconds(lambda: plain(references, predictions), args.num_repeats)
    command_seconds = time_command(args.data_file, predictions) if args.run_command else (None, None)

    result = {
        "data_file": args.data_file,
        "num_questions": len(examples),
        "version_2": version_2,
        "scores": scores,
        "load_data_s": round(load_seconds, 3),
        "score_predictions_first_call_s": round(first_seconds, 3),
        "score_predictions_s": round(score_seconds[0], 3),
        "score_predictions_cpu_s": round(score_seconds[1], 3),
        "plain_scoring_s": round(plain_seconds[0], 3),
        "command_s": None if command_seconds[0] is None else round(command_seconds[0], 3),
        "command_cpu_s": None if command_seconds[1] is None else round(command_seconds[1], 3),
        "max_seconds": args.max_seconds,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if outcome["score_predictions_s"] < outcome["max_seconds"] else 1)
