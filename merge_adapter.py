"""Fold a trained LoRA adapter into its base: a standalone model that loads without peft.

    python merge_adapter.py outputs/exp_r8_lr2e-4_attn --output_dir outputs/exp_r8_lr2e-4_attn-merged

The result (safetensors weights, config, tokenizer, the run's run_config.yaml, and a generation_config.json with the
run's stop tokens and decoding) is what vLLM, TGI and the GGUF converters take:
`AutoModelForCausalLM.from_pretrained(DIR)` loads it, and it answers as the adapter does. It is written
under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Optional

from squad_lora import cli, outputs, serving
from squad_lora.args import ModelArguments
from squad_lora.errors import ConfigError
from squad_lora.modeling import load_for_inference, read_adapter_config

logger = logging.getLogger(__name__)


@dataclass
class MergeArguments:
    adapter: Optional[str] = field(
        default=None, metadata={"help": "A run_qa_lora.py output dir holding a LoRA adapter; also positional."}
    )
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where the merged model goes (a new dir)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing --output_dir."})


def check_arguments(args: MergeArguments, model_args: ModelArguments) -> None:
    """Before anything loads: a local adapter dir, a float base, and a free (or replaceable) output dir."""
    if not args.adapter or not args.output_dir:
        raise ConfigError("give the adapter and the destination: python merge_adapter.py RUN_DIR --output_dir DIR")
    if not os.path.isdir(args.adapter):
        raise ConfigError(f"--adapter {args.adapter}: no such directory")
    if read_adapter_config(args.adapter) is None:
        raise ConfigError(f"--adapter {args.adapter}: a full fine-tune (no adapter_config.json) is already standalone")
    if model_args.load_in_4bit or model_args.load_in_8bit:
        raise ConfigError("LoRA merges into float weights: drop --load_in_4bit/--load_in_8bit")
    if os.path.exists(args.output_dir) and not args.overwrite_output_dir:
        raise ConfigError(f"--output_dir {args.output_dir} exists: pass --overwrite_output_dir or another directory")
    outputs.check_not_an_input(
        args.output_dir,
        "--output_dir",
        {"--adapter": args.adapter, "--model_name_or_path": model_args.model_name_or_path},
    )
    outputs.check_writable_dir(args.output_dir)


def save_merged(model, tokenizer, adapter: str, output_dir: str) -> None:
    """save_pretrained into a staging dir beside output_dir, then rename it into place. The run's
    run_config.yaml goes along: generate.py reads the prompt format and decoding the run recorded from it."""
    with outputs.atomic_dir(output_dir) as staging:
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        if os.path.isfile(os.path.join(adapter, outputs.CONFIG_FILE)):
            shutil.copy(os.path.join(adapter, outputs.CONFIG_FILE), staging)


def main(argv: list[str] | None = None) -> str:
    (args, model_args), _, _ = cli.parse_args(
        (MergeArguments, ModelArguments), argv, positional=("adapter",), bare_words="one adapter directory"
    )
    cli.setup_logging(__name__)
    check_arguments(args, model_args)
    model, tokenizer = load_for_inference(args.adapter, model_args, merge=True)
    # saved with the model: a server then stops and decodes as generate.py does (docs/serving.md)
    model.generation_config, report = serving.merged_model_serving(
        model,
        tokenizer,
        read_adapter_config(args.adapter),
        outputs.recorded_decoding(args.adapter),
        args.adapter,
        args.output_dir,
    )
    save_merged(model, tokenizer, args.adapter, args.output_dir)
    logger.info("wrote the merged model to %s", args.output_dir)
    logger.info("%s", report)
    return args.output_dir


if __name__ == "__main__":
    cli.run(main)
