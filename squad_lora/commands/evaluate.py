"""Score SQuAD predictions by the official v1.1 / v2.0 rules, or compare decoding strategies.

A drop-in for the official evaluation scripts (prints their JSON):

    python evaluate_squad.py data/sample/dev-v1.1.json predictions.json
    python evaluate_squad.py predictions.json --dataset_name squad_v2 --output scores.json

Precision versus diversity of generate.py's strategies (one predictions_<strategy>.jsonl each, or the
directory holding them); prints a markdown table and writes strategy_comparison.md / .json to
--output_dir (default: the directory of the first file):

    python evaluate_squad.py dev-v1.1.json --compare outputs/preds/predictions_*.jsonl --output_dir outputs/preds
    python evaluate_squad.py dev-v1.1.json --compare outputs/preds

Predictions are the official {id: answer} JSON or generate.py's JSON Lines ({"id", "strategy",
"sample", "prediction"} per line; the first sample is scored). Questions without a prediction score 0
and are counted in a warning. The rules are v2.0 when the data file's version is 2 or more, the
dataset is squad_v2, any question is unanswerable, or --version_2_with_negative is given.
The files may also be given as --validation_file and --prediction_file. A single positional file is
the prediction file (scored against --dataset_name), or with --compare the data file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from squad_lora import cli, outputs
from squad_lora.args import EvalDataArguments, LoggingArguments
from squad_lora.errors import PredictionsError, raise_problems
from squad_lora.scoring import (
    check_ids,
    compare_strategies,
    load_scored_examples,
    read_na_probs,
    read_prediction_sets,
    read_predictions,
    render_comparison_markdown,
    score_predictions,
)

logger = logging.getLogger(__name__)


@dataclass
class EvaluateArguments:
    prediction_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "Predictions to score: the official {id: answer} JSON or generate.py's JSON Lines; also "
            "the positional argument after the data file."
        },
    )
    version_2_with_negative: bool = field(
        default=False, metadata={"help": "Score by the SQuAD v2.0 rules even when the data looks like v1.1."}
    )
    na_prob_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "SQuAD v2: the official na_prob JSON ({id: probability of no answer}; generate.py writes "
            "na_prob_<strategy>.json): adds best_exact, best_f1 and their thresholds, as the official script does."
        },
    )
    na_prob_thresh: float = field(
        default=1.0,
        metadata={
            "help": "With --na_prob_file: a question whose no-answer probability is above this counts as answered "
            "empty (the official script's --na-prob-thresh)."
        },
    )
    output: Optional[str] = field(
        default=None, metadata={"help": "Also write the result as JSON to this file (written atomically)."}
    )
    compare: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Compare decoding strategies instead: generate.py's predictions_<strategy>.jsonl files "
            "(or .json), or directories holding them."
        },
    )
    output_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": f"Where --compare writes {outputs.COMPARISON_FILE}.md and .json; default the directory of the "
            "first compared file."
        },
    )


def parse_arguments(argv: list[str] | None) -> tuple[EvaluateArguments, EvalDataArguments, LoggingArguments]:
    """Flags plus up to two positional files (DATA_FILE PREDICTION_FILE), checked together."""
    (args, data_args, log_args), _, positional = cli.parse_args(
        (EvaluateArguments, EvalDataArguments, LoggingArguments), argv, files_first=True, bare_words=None
    )
    problems = []
    # DATA_FILE PREDICTION_FILE, or PREDICTION_FILE alone (data from --dataset_name); --compare: DATA_FILE
    slots = [
        (obj, name)
        for obj, name in ((data_args, "validation_file"), (args, "prediction_file"))
        if getattr(obj, name) is None
    ]
    if args.compare:
        slots = [slot for slot in slots if slot[1] == "validation_file"]
    if len(positional) > len(slots):
        problems.append(
            f"unexpected argument(s) {' '.join(positional[len(slots) :])}: give DATA_FILE and PREDICTION_FILE at most"
        )
    else:
        slots = slots[len(slots) - len(positional) :]
    for (obj, name), value in zip(slots, positional):
        setattr(obj, name, value)
    cli.find_shipped_inputs(data_args)
    if args.compare and args.prediction_file:
        problems.append("give either a prediction file to score or --compare FILES, not both")
    if not args.compare and not args.prediction_file:
        problems.append("nothing to score: give a PREDICTION_FILE (after the DATA_FILE) or --compare FILES")
    if args.na_prob_file and args.compare:
        problems.append("--na_prob_file scores one prediction file: give it without --compare")
    if args.na_prob_thresh != 1.0 and not args.na_prob_file:
        problems.append("--na_prob_thresh applies the no-answer probabilities of --na_prob_file: give that file too")
    if args.output_dir and not args.compare:
        problems.append("--output_dir is for --compare; to save the scores pass --output FILE")
    raise_problems(problems)
    return args, data_args, log_args


def check_outputs(args: EvaluateArguments, data_args: EvalDataArguments) -> None:
    """Where results go must be writable, and none of the inputs, before anything is scored."""
    inputs = {
        "DATA_FILE": data_args.validation_file,
        "PREDICTION_FILE": args.prediction_file,
        "--compare": args.compare,
        "--na_prob_file": args.na_prob_file,
    }
    if args.output:
        outputs.check_writable_file(args.output)
        outputs.check_not_an_input(args.output, "--output", inputs)
    if args.compare:
        for suffix in (".json", ".md"):
            path = os.path.join(comparison_dir(args), outputs.COMPARISON_FILE + suffix)
            outputs.check_not_an_input(path, "--output_dir", inputs)
        outputs.check_writable_dir(comparison_dir(args))


def comparison_dir(args: EvaluateArguments) -> str:
    first = args.compare[0]
    return args.output_dir or (first if os.path.isdir(first) else os.path.dirname(first) or ".")


def score_file(
    args: EvaluateArguments, predictions: dict[str, str], examples: list[dict], version_2: bool, source: str
) -> dict:
    """EM/F1 of one prediction file, printed as the official scripts print it."""
    check_ids(predictions, examples, args.prediction_file, source)
    no_answer = None
    if args.na_prob_file:
        if not version_2:
            raise PredictionsError(
                f"--na_prob_file {args.na_prob_file}: no-answer probabilities are for SQuAD v2.0 data, and {source} "
                "is v1.1 (pass --version_2_with_negative to score it by the v2.0 rules anyway)"
            )
        no_answer = read_na_probs(args.na_prob_file, predictions)
    scores = score_predictions(
        examples, predictions, version_2, args.prediction_file, no_answer, no_answer_threshold=args.na_prob_thresh
    )
    print(json.dumps(scores, indent=2 if version_2 else None))
    return scores


def compare_files(
    args: EvaluateArguments, prediction_sets: dict, examples: list[dict], version_2: bool, source: str
) -> dict:
    """The strategy comparison: printed as markdown and written as markdown and JSON."""
    for strategy, samples in prediction_sets.items():
        check_ids({qid: a for sample in samples for qid, a in sample.items()}, examples, f"strategy {strategy}", source)
    rows = compare_strategies(examples, prediction_sets, version_2)
    markdown = render_comparison_markdown(rows)
    print(markdown, end="")
    result = {"data": source, "version_2": version_2, "num_questions": len(examples), "strategies": rows}
    for path in outputs.write_comparison(comparison_dir(args), result, markdown):
        logger.info("wrote %s", path)
    return result


def main(argv: list[str] | None = None) -> dict:
    args, data_args, log_args = parse_arguments(argv)
    cli.setup_script_logging(__name__, log_args)
    logger.info("arguments: %s", {**asdict(args), **asdict(data_args)})
    check_outputs(args, data_args)
    # predictions first: a malformed or mixed-up file fails fast, before a dataset download
    if args.compare:
        prediction_sets = read_prediction_sets(args.compare)
        examples, version_2, source = load_scored_examples(data_args, args.version_2_with_negative)
        result = compare_files(args, prediction_sets, examples, version_2, source)
    else:
        predictions = read_predictions(args.prediction_file)
        examples, version_2, source = load_scored_examples(data_args, args.version_2_with_negative)
        result = score_file(args, predictions, examples, version_2, source)
    if args.output:
        outputs.write_json(args.output, result)
    return result


if __name__ == "__main__":
    cli.run(main)
