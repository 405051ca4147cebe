"""Answer SQuAD questions with a trained adapter, using one or several decoding strategies.

    # one question
    python generate.py --adapter outputs/exp_r8_lr2e-4_attn --context "The Eiffel Tower is in Paris." \\
        --question "Where is the Eiffel Tower?"
    # a dataset, several strategies (model loaded once), ready for evaluate_squad.py
    python generate.py --adapter outputs/exp_r8_lr2e-4_attn --validation_file dev-v1.1.json \\
        --strategies greedy,top_k,top_p,temperature --num_samples 5 --output_dir outputs/preds
    accelerate launch --num_processes 2 generate.py ...   # questions sharded, predictions gathered

Per strategy, --output_dir gets predictions_<strategy>.json (the official {id: answer}, first sample)
and predictions_<strategy>.jsonl (every sample: {"id", "strategy", "sample", "prediction", "confidence", "no_answer_probability"}). An
output dir that already holds predictions is refused unless --overwrite_output_dir, which removes them
first, so that a --compare never mixes this run's files with an earlier one's. A context longer than
--max_context_tokens is answered in windows overlapping by --doc_stride tokens, the most confident answer kept;
its rows add "window" (the one kept) and "windows" (docs/data.md#long-contexts).

Decoding flags and --prompt_format default to what the run recorded in its run_config.yaml (the prompt
it was trained on, a recipe's recommended decoding, which its evaluation used too); flags given here
override them.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from squad_lora import cli, outputs
from squad_lora.args import (
    AdapterArguments,
    DecodingArguments,
    EvalDataArguments,
    LoggingArguments,
    ModelArguments,
    PromptArguments,
)
from squad_lora.data import load_squad_split, read_text_file
from squad_lora.decoding import answer_questions
from squad_lora.errors import ConfigError, first_line
from squad_lora.hub import go_offline_if_unreachable, needs_hub
from squad_lora.modeling import inference_source, load_inference_model, load_tokenizer_and_config
from squad_lora.plan import describe, resolve_answer_plan
from squad_lora.scoring import existing_prediction_files, is_version_2, prediction_paths, write_predictions

logger = logging.getLogger(__name__)


@dataclass
class GenerateArguments(AdapterArguments):
    context: Optional[str] = field(default=None, metadata={"help": "One question mode: the context."})
    context_file: Optional[str] = field(
        default=None, metadata={"help": "One question mode: read the context from a file."}
    )
    question: Optional[str] = field(default=None, metadata={"help": "One question mode: the question."})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where the prediction files go (dataset mode)."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the prediction files an earlier run left in --output_dir."}
    )
    seed: int = field(default=42, metadata={"help": "Seed for the sampling strategies."})

    def __post_init__(self):
        if self.question is None:
            if self.context is not None or self.context_file is not None:
                raise ConfigError("--context/--context_file go with --question")
            if not self.output_dir:
                raise ConfigError(
                    "give either --question with --context/--context_file, or a dataset (--validation_file or "
                    "--dataset_name) with --output_dir for the prediction files"
                )
        elif (self.context is None) == (self.context_file is None):
            raise ConfigError("--question needs exactly one of --context and --context_file")
        elif self.output_dir:
            raise ConfigError("--output_dir is for dataset mode; one question's answers are printed")


def check_output_dir(args: GenerateArguments, data_args: EvalDataArguments, strategies: list[str]) -> None:
    """Before any model loads: the output dir must be writable and hold no earlier predictions (unless told), and
    no prediction file this run writes or replaces may be one of its inputs."""
    outputs.check_writable_dir(args.output_dir)
    earlier = existing_prediction_files(args.output_dir)
    written = [path for strategy in strategies for path in prediction_paths(args.output_dir, strategy)]
    for path in written + earlier:
        outputs.check_not_an_input(path, "--output_dir", {"--validation_file": data_args.validation_file})
    if earlier and not args.overwrite_output_dir:
        raise ConfigError(
            f"--output_dir {args.output_dir} already holds predictions ({', '.join(map(os.path.basename, earlier))}): "
            "pass --overwrite_output_dir to replace them, or another --output_dir"
        )


def unwritten_predictions_message(output_dir: str, error: BaseException) -> str:
    """What a full disk left of the prediction files: each is written whole or not at all."""
    written = existing_prediction_files(output_dir)
    kept = f"kept in {output_dir}: {', '.join(map(os.path.basename, written))}" if written else "none was kept"
    return (
        f"writing the predictions into {output_dir} failed ({first_line(error, with_type=True)}); {kept}; free space "
        "and rerun with --overwrite_output_dir"
    )


def questions_to_answer(args: GenerateArguments, data_args: EvalDataArguments) -> tuple[list[dict], bool]:
    """The one question given on the command line, or the dataset's questions; and whether they are SQuAD v2's
    (some have no answer)."""
    if args.question is not None:
        context = args.context if args.context_file is None else read_text_file(args.context_file)
        return [{"id": "question", "context": context, "question": args.question}], True
    dataset, stats = load_squad_split(
        data_args, check_answers=False
    )  # every question is answered, whatever its offsets
    examples = list(dataset)
    return examples, is_version_2(examples, stats.version)


def count_abstentions(results: dict, plan, version_2: bool) -> dict:
    """{strategy: how many answers are '' (abstained)} where the plan abstains (--min_answer_confidence,
    --no_answer_threshold), logged; on SQuAD v1.1 data, where every question has an answer, as a warning."""
    if plan.min_answer_confidence is None and plan.no_answer_threshold is None:
        return {}
    counts = {strategy: sum(row["prediction"] == "" for row in rows) for strategy, rows in results.items()}
    for strategy, count in counts.items():
        total = len(results[strategy])
        if version_2:
            logger.info("%s: %d of %d answers abstained ('')", strategy, count, total)
        elif count:
            logger.warning(
                "%s: %d of %d answers abstained ('') on SQuAD v1.1 data, where every question has an answer: each "
                "scores 0; drop --min_answer_confidence/--no_answer_threshold for v1.1",
                strategy,
                count,
                total,
            )
    return counts


def main(argv: list[str] | None = None) -> dict:
    types = (GenerateArguments, ModelArguments, EvalDataArguments, PromptArguments, DecodingArguments, LoggingArguments)
    # the run's decoding is the default wherever this command line (or its config) does not say otherwise
    recorded = outputs.recorded_decoding(cli.flag_value(argv, "adapter"))
    (args, model_args, data_args, prompt_args, decoding, log_args), _, _ = cli.parse_args(
        types, argv, defaults=recorded, bare_words="a config file"
    )
    state = cli.process_state()
    cli.setup_script_logging(__name__, log_args, state.is_main_process)
    if recorded:
        logger.info("decoding recorded by %s (flags given here override it): %s", args.adapter, recorded)
    if args.output_dir:
        check_output_dir(args, data_args, decoding.strategies)
        outputs.on_full_disk(args.output_dir, functools.partial(unwritten_predictions_message, args.output_dir))
    from_hub = not data_args.validation_file and args.question is None
    if from_hub or needs_hub(args.adapter, model_args.model_name_or_path, model_args.tokenizer_name):
        go_offline_if_unreachable()

    # The plan, from the flags, the model's config and its tokenizer: before any weights or data load
    source = inference_source(args.adapter, model_args)
    tokenizer, model_config = load_tokenizer_and_config(source, model_args.trust_remote_code)
    plan = resolve_answer_plan(
        decoding, prompt_args, tokenizer, model_config, model_args.attn_implementation, source.tokenizer
    )
    logger.info("plan: %s", describe(plan))
    if args.output_dir and state.is_main_process:  # the one writer: a second command on the directory is refused
        outputs.lock_dir(args.output_dir)  # (created here: a command refused before this leaves none)

    examples, version_2 = questions_to_answer(args, data_args)
    model = load_inference_model(source, model_args, args.merge, model_args.attn_implementation)
    model.to(state.device)
    results = answer_questions(model, tokenizer, examples, plan, state, args.seed, not log_args.disable_tqdm)
    if state.is_main_process and args.question is None:
        count_abstentions(results, plan, version_2)

    if state.is_main_process and args.question is not None:
        for strategy, rows in results.items():
            for row in rows:
                print(f"{strategy}[{row['sample']}]: {row['prediction']}")
    elif state.is_main_process:
        for path in existing_prediction_files(args.output_dir):
            os.remove(path)  # --overwrite_output_dir: no earlier strategy's file may outlive this run
        for path in write_predictions(results, args.output_dir, version_2):
            logger.info("wrote %s", path)
        outputs.release_dir(args.output_dir)
    return results


if __name__ == "__main__":
    cli.run(main)
