"""Score SQuAD predictions by the official v1.1 / v2.0 rules, or compare decoding strategies.

A drop-in for the official evaluation scripts (prints their JSON):

    python evaluate_squad.py data/sample/dev-v1.1.json predictions.json
    python evaluate_squad.py predictions.json --dataset_name squad_v2 --split validation --output scores.json

Precision versus diversity of generate.py's strategies (one predictions_<strategy>.jsonl each, or the
directory holding them); prints a markdown table and writes strategy_comparison.md / .json to
--output_dir (default: the directory of the first file):

    python evaluate_squad.py dev-v1.1.json --compare outputs/preds/predictions_*.jsonl --output_dir outputs/preds
    python evaluate_squad.py dev-v1.1.json --compare outputs/preds

Predictions are the official {id: answer} JSON or generate.py's JSON Lines ({"id", "strategy",
"sample", "prediction"} per line; the first sample is scored). Questions without a prediction score 0
and are counted in a warning. The rules are v2.0 when the data file's version is 2 or more, the
dataset is squad_v2, any question is unanswerable, or --version_2_with_negative is given.
The file arguments may also be given as --data_file and --prediction_file. A single one is the
prediction file (scored against --dataset_name), or with --compare the data file. Put them before
--compare and --version_2_with_negative, which would take them as their values.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from transformers import HfArgumentParser

import atomic
from errors import ConfigError, run_cli
from squad_data import SquadDataError, load_squad_file, load_squad_split
from squad_eval import (
    PredictionsError,
    compare_strategies,
    is_version_2,
    read_prediction_sets,
    read_predictions,
    read_squad_version,
    render_comparison_markdown,
    score_predictions,
)

logger = logging.getLogger(__name__)

COMPARISON_FILE = "strategy_comparison"
USAGE = (
    "python evaluate_squad.py DATA_FILE PREDICTION_FILE [--output FILE]\n"
    "       python evaluate_squad.py DATA_FILE --compare FILE_OR_DIR [FILE_OR_DIR ...] [--output_dir DIR]"
)


@dataclass
class EvaluateArguments:
    data_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "SQuAD data: official JSON (v1.1/v2.0), JSON Lines or CSV; also the first positional "
            "argument. Without it, --dataset_name is loaded from the Hub."
        },
    )
    prediction_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "Predictions to score: the official {id: answer} JSON or generate.py's JSON Lines; also "
            "the second positional argument."
        },
    )
    dataset_name: str = field(
        default="squad",
        metadata={"help": "Hub dataset when no data file is given: squad or squad_v2 (scored by the v2.0 rules)."},
    )
    split: str = field(default="validation", metadata={"help": "Split of --dataset_name to score against."})
    version_2_with_negative: bool = field(
        default=False,
        metadata={"help": "Score by the SQuAD v2.0 rules even when the data looks like v1.1."},
    )
    max_samples: Optional[int] = field(
        default=None,
        metadata={"help": "Score only the first N questions (those generate.py --max_samples N answered)."},
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
            "help": f"Where --compare writes {COMPARISON_FILE}.md and .json; default the directory of the "
            "first compared file."
        },
    )


def parse_arguments(argv: list[str] | None) -> EvaluateArguments:
    """Flags plus up to two positional arguments (data file, prediction file), checked together."""
    parser = HfArgumentParser(EvaluateArguments, usage=USAGE, description=__doc__.splitlines()[0])
    try:
        args, extra = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    problems = [f"unknown flag {item}" for item in extra if item.startswith("-")]
    positional = [item for item in extra if not item.startswith("-")]
    # DATA_FILE PREDICTION_FILE, or PREDICTION_FILE alone (data from --dataset_name); --compare: DATA_FILE
    names = [name for name in ("data_file", "prediction_file") if getattr(args, name) is None]
    if args.compare:
        names = [name for name in names if name == "data_file"]
    if len(positional) > len(names):
        problems.append(
            f"unexpected argument(s) {' '.join(positional[len(names) :])}: give DATA_FILE and PREDICTION_FILE at most"
        )
    else:
        names = names[len(names) - len(positional) :]
    for name, value in zip(names, positional):
        setattr(args, name, value)
    if args.compare and args.prediction_file:
        problems.append("give either a prediction file to score or --compare FILES, not both")
    if not args.compare and not args.prediction_file:
        problems.append("nothing to score: give a PREDICTION_FILE (after the DATA_FILE) or --compare FILES")
    if args.output_dir and not args.compare:
        problems.append("--output_dir is for --compare; to save the scores pass --output FILE")
    if problems:
        raise ConfigError("; ".join(problems))
    return args


def load_examples(args: EvaluateArguments) -> tuple[list[dict], bool, str]:
    """The questions to score against, whether to use the v2.0 rules, and the data's name."""
    if args.data_file:
        examples, _ = load_squad_file(args.data_file)
        version = read_squad_version(args.data_file)
        source = args.data_file
    else:
        try:
            dataset, _ = load_squad_split(args.dataset_name, args.split)
        except SquadDataError as e:
            if e.__cause__ is None:  # the dataset loaded but is unusable: the message says why
                raise
            raise SquadDataError(
                f"{str(e).splitlines()[0]}\nOffline? Give a local SQuAD file first: "
                "python evaluate_squad.py dev-v1.1.json PREDICTION_FILE"
            ) from e
        examples, version = list(dataset), None
        source = f"{args.dataset_name}[{args.split}]"
    version_2 = args.version_2_with_negative or is_version_2(
        examples, version, None if args.data_file else args.dataset_name
    )
    if args.max_samples is not None:
        examples = examples[: args.max_samples]
    logger.info(
        "%s: %d questions, scored by the SQuAD %s rules", source, len(examples), "v2.0" if version_2 else "v1.1"
    )
    return examples, version_2, source


def score_file(args: EvaluateArguments, predictions: dict[str, str], examples: list[dict], version_2: bool) -> dict:
    """EM/F1 of one prediction file; an error when none of its ids are in the data (wrong file?)."""
    example_ids = {ex["id"] for ex in examples}
    if predictions and example_ids.isdisjoint(predictions):
        raise PredictionsError(
            f"{args.prediction_file}: none of its {len(predictions)} question ids are in the data "
            f"({args.data_file or args.dataset_name}): is it the right data file?"
        )
    scores = score_predictions(examples, predictions, version_2, source=args.prediction_file)
    print(json.dumps(scores, indent=2 if version_2 else None))  # the official scripts' output
    return scores


def compare_files(
    args: EvaluateArguments, prediction_sets: dict, examples: list[dict], version_2: bool, source: str
) -> dict:
    """The strategy comparison: printed as markdown and written as markdown and JSON."""
    rows = compare_strategies(examples, prediction_sets, version_2)
    markdown = render_comparison_markdown(rows)
    print(markdown, end="")
    first = args.compare[0]
    output_dir = args.output_dir or (first if os.path.isdir(first) else os.path.dirname(first) or ".")
    result = {"data": source, "version_2": version_2, "num_questions": len(examples), "strategies": rows}
    atomic.write_text(os.path.join(output_dir, f"{COMPARISON_FILE}.md"), markdown)
    atomic.write_json(os.path.join(output_dir, f"{COMPARISON_FILE}.json"), result)
    logger.info("wrote %s.md and .json to %s", COMPARISON_FILE, output_dir)
    return result


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    for name in (__name__, "squad_eval", "squad_data"):  # our progress lines; libraries stay at warnings
        logging.getLogger(name).setLevel(logging.INFO)
    args = parse_arguments(argv)
    logger.info("arguments: %s", asdict(args))
    # predictions first: a malformed or mixed-up file fails fast, before a dataset download
    if args.compare:
        prediction_sets = read_prediction_sets(args.compare)
        examples, version_2, source = load_examples(args)
        result = compare_files(args, prediction_sets, examples, version_2, source)
    else:
        predictions = read_predictions(args.prediction_file)
        examples, version_2, source = load_examples(args)
        result = score_file(args, predictions, examples, version_2)
    if args.output:
        atomic.write_json(args.output, result)
    return result


if __name__ == "__main__":
    run_cli(main)
