"""Answer SQuAD questions with a trained adapter, using one or several decoding strategies.

    # one question
    python generate.py --adapter outputs/exp_r8_lr2e-4_attn --context "The Eiffel Tower is in Paris." \\
        --question "Where is the Eiffel Tower?"
    # a dataset, several strategies (model loaded once), ready for evaluate_squad.py
    python generate.py --adapter outputs/exp_r8_lr2e-4_attn --validation_file dev-v1.1.json \\
        --strategies greedy,top_k,top_p,temperature --num_samples 5 --output_dir outputs/preds
    accelerate launch --num_processes 2 generate.py ...   # questions sharded, predictions gathered

Per strategy, --output_dir gets predictions_<strategy>.json (the official {id: answer}, first sample)
and predictions_<strategy>.jsonl (every sample: {"id", "strategy", "sample", "prediction"}).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

import atomic
from args import parse_args
from decoding import DecodingArguments, answer_questions
from errors import SquadLoraError, run_cli
from modeling import load_for_inference
from squad_data import load_squad_split

logger = logging.getLogger(__name__)


@dataclass
class GenerateArguments:
    adapter: Optional[str] = field(
        default=None,
        metadata={"help": "A run_qa_lora.py output dir or Hub id (LoRA adapter or full fine-tune). Omit for zero-shot."},
    )
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Base model; default the one recorded in the adapter's adapter_config.json."}
    )
    merge: bool = field(default=False, metadata={"help": "Merge the LoRA weights into the base for faster decoding."})
    dtype: str = field(
        default="float32",
        metadata={"help": "dtype to decode in.", "choices": ["float32", "bfloat16", "float16", "auto"]},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run modelling code shipped with a Hub model."})
    context: Optional[str] = field(default=None, metadata={"help": "One question mode: the context."})
    context_file: Optional[str] = field(default=None, metadata={"help": "One question mode: read the context from a file."})
    question: Optional[str] = field(default=None, metadata={"help": "One question mode: the question."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset with SQuAD's columns (squad, squad_v2)."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration name."})
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "SQuAD file to answer: official JSON, JSON Lines or CSV."}
    )
    split: str = field(default="validation", metadata={"help": "Hub split to answer."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "Answer only the first N questions."})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where the prediction files go (dataset mode)."})

    def __post_init__(self):
        one_question = self.question is not None
        dataset = self.dataset_name is not None or self.validation_file is not None
        if one_question == dataset:
            raise SquadLoraError(
                "give either --question with --context/--context_file, or --dataset_name/--validation_file with --output_dir"
            )
        if one_question and (self.context is None) == (self.context_file is None):
            raise SquadLoraError("--question needs exactly one of --context and --context_file")
        if dataset and not self.output_dir:
            raise SquadLoraError("dataset mode needs --output_dir for the prediction files")


def write_predictions(results: dict, output_dir: str) -> list[str]:
    """Write predictions_<strategy>.json and .jsonl per strategy; returns the paths written."""
    paths = []
    for strategy, rows in results.items():
        official = {row["id"]: row["prediction"] for row in rows if row["sample"] == 0}
        json_path = os.path.join(output_dir, f"predictions_{strategy}.json")
        jsonl_path = os.path.join(output_dir, f"predictions_{strategy}.jsonl")
        atomic.write_json(json_path, official)
        atomic.write_jsonl(jsonl_path, rows)
        paths += [json_path, jsonl_path]
    return paths


def main(argv: list[str] | None = None) -> dict:
    (args, decoding), _ = parse_args((GenerateArguments, DecodingArguments), argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # PartialState, unlike the Trainer, ignores ACCELERATE_USE_CPU (set by `accelerate launch --cpu` and, for
    # ranks on a machine without GPUs, by run_cli): without cpu=True every rank would answer every question.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))

    model, tokenizer = load_for_inference(
        args.adapter, args.model_name_or_path, args.merge, args.dtype, args.trust_remote_code
    )
    model.to(state.device)
    tokenizer.padding_side = "left"

    if args.question is not None:
        context = args.context
        if args.context_file:
            with open(args.context_file, encoding="utf-8") as f:
                context = f.read()
        examples = [{"id": "question", "context": context, "question": args.question}]
    else:
        dataset, _ = load_squad_split(
            args.dataset_name, args.split, args.validation_file, args.dataset_config_name, max_samples=args.max_samples
        )
        examples = list(dataset)

    results = answer_questions(model, tokenizer, examples, decoding, state)

    if args.question is not None:
        if state.is_main_process:
            for strategy, rows in results.items():
                for row in rows:
                    print(f"{strategy}[{row['sample']}]: {row['prediction']}")
    elif state.is_main_process:
        for path in write_predictions(results, args.output_dir):
            logger.info("wrote %s", path)
    return results


if __name__ == "__main__":
    run_cli(main)
