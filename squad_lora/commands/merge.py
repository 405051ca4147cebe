"""Fold a trained LoRA adapter into its base: a standalone model that loads without peft.

    python merge_adapter.py outputs/exp_r8_lr2e-4_attn --output_dir outputs/exp_r8_lr2e-4_attn-merged

The result (safetensors weights, config, tokenizer, the run's run_config.yaml, and a generation_config.json with the
run's stop tokens and decoding) is what vLLM, TGI and the GGUF converters take:
`AutoModelForCausalLM.from_pretrained(DIR)` loads it, and it answers as the adapter does. The merge is done in
float32 and saved in the base's own dtype (--dtype overrides); an adapter trained on a 4- or 8-bit base (QLoRA) is
merged into the dequantized weights it was trained against. With --gguf TYPE, llama.cpp's converter also writes
model-TYPE.gguf and an Ollama Modelfile beside it (docs/serving.md, "GGUF and Ollama"). Everything is written
under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Optional

import torch

from squad_lora import cli, gguf, outputs, serving
from squad_lora.args import ModelArguments
from squad_lora.errors import ConfigError
from squad_lora.modeling import inference_source, load_for_inference, load_model_config, read_adapter_config
from squad_lora.plan import MergePlan, resolve_merge_plan
from squad_lora.prompt import prompt_template

logger = logging.getLogger(__name__)


@dataclass
class MergeArguments:
    adapter: Optional[str] = field(
        default=None, metadata={"help": "A run_qa_lora.py output dir holding a LoRA adapter; also positional."}
    )
    output_dir: Optional[str] = field(default=None, metadata={"help": "Where the merged model goes (a new dir)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace an existing --output_dir."})
    gguf: Optional[str] = field(
        default=None,
        metadata={"help": "Also write model-TYPE.gguf and an Ollama Modelfile.", "choices": list(gguf.GGUF_TYPES)},
    )
    llama_cpp: Optional[str] = field(
        default=None, metadata={"help": "A llama.cpp source tree: its convert_hf_to_gguf.py writes --gguf."}
    )


def check_arguments(args: MergeArguments, model_args: ModelArguments) -> str | None:
    """Before anything loads: a local adapter dir, a free (or replaceable) output dir, and with --gguf the
    converter (returned)."""
    if not args.adapter or not args.output_dir:
        raise ConfigError("give the adapter and the destination: python merge_adapter.py RUN_DIR --output_dir DIR")
    if not os.path.isdir(args.adapter):
        raise ConfigError(f"--adapter {args.adapter}: no such directory")
    if read_adapter_config(args.adapter) is None:
        raise ConfigError(f"--adapter {args.adapter}: a full fine-tune (no adapter_config.json) is already standalone")
    if os.path.exists(args.output_dir) and not args.overwrite_output_dir:
        raise ConfigError(f"--output_dir {args.output_dir} exists: pass --overwrite_output_dir or another directory")
    outputs.check_not_an_input(
        args.output_dir,
        "--output_dir",
        {"--adapter": args.adapter, "--model_name_or_path": model_args.model_name_or_path},
    )
    outputs.check_writable_dir(args.output_dir)
    if args.llama_cpp and not args.gguf:
        raise ConfigError("--llama_cpp is the converter for --gguf: add --gguf TYPE")
    return gguf.find_converter(args.llama_cpp) if args.gguf else None


def model_card(adapter: str, base: str, plan: MergePlan, gguf_name: str | None) -> str:
    """The merged model's README.md: what was merged into what, and in which dtype."""
    lines = [
        f"# {os.path.basename(os.path.abspath(adapter))} (merged)",
        "",
        f"The LoRA adapter {os.path.abspath(adapter)} merged into {base} by squad-lora's merge_adapter.py: "
        "a standalone model that loads without peft.",
        "",
        f"- merged into: {plan.reasons['merged_into']}",
        f"- saved in: {plan.dtype} ({plan.reasons['dtype']}); the merge itself was done in float32",
    ]
    if gguf_name:
        lines.append(f"- {gguf_name}: the same weights as GGUF for llama.cpp; `ollama create NAME -f Modelfile`")
    return "\n".join(lines) + "\n"


def save_merged(model, tokenizer, adapter: str, output_dir: str, card: str, gguf_type=None, converter=None):
    """save_pretrained into a staging dir beside output_dir, then rename it into place. The run's
    run_config.yaml goes along: generate.py reads the prompt format and decoding the run recorded from it. With
    gguf_type, llama.cpp's converter writes the GGUF from the staged model, and the Modelfile goes beside it."""
    with outputs.atomic_dir(output_dir) as staging:
        if gguf_type:
            gguf.prepare_config(model.config)
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        if os.path.isfile(os.path.join(adapter, outputs.CONFIG_FILE)):
            shutil.copy(os.path.join(adapter, outputs.CONFIG_FILE), staging)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        if gguf_type:
            template = prompt_template(tokenizer, outputs.recorded_decoding(adapter).get("prompt_format", "plain"))
            stops = ["\n", tokenizer.eos_token] + ([template.end] if template.end else [])
            gguf.export(staging, gguf_type, converter, template, stops, model.generation_config.max_new_tokens)


def main(argv: list[str] | None = None) -> str:
    (args, model_args), _, _ = cli.parse_args(
        (MergeArguments, ModelArguments), argv, positional=("adapter",), bare_words="one adapter directory"
    )
    cli.setup_logging(__name__)
    converter = check_arguments(args, model_args)
    source = inference_source(args.adapter, model_args)
    recorded = (
        outputs.read_run_config(args.adapter) if os.path.isfile(os.path.join(args.adapter, outputs.CONFIG_FILE)) else {}
    )
    plan = resolve_merge_plan(
        cli.flag_value(argv, "dtype", config_first=False),
        load_model_config(source.weights, model_args.trust_remote_code),
        recorded,
        model_args,
    )
    logger.info("merging into %s; saving in %s (%s)", plan.reasons["merged_into"], plan.dtype, plan.reasons["dtype"])
    # merged in float32, then cast: a 16-bit merge would round the sum of base and LoRA update twice
    merge_args = dataclasses.replace(model_args, dtype="float32", **plan.quantization)
    model, tokenizer = load_for_inference(args.adapter, merge_args, merge=True)
    model = model.to(getattr(torch, plan.dtype))
    # saved with the model: a server then stops and decodes as generate.py does (docs/serving.md)
    model.generation_config, report = serving.merged_model_serving(
        model,
        tokenizer,
        source.adapter_config,
        outputs.recorded_decoding(args.adapter),
        args.adapter,
        args.output_dir,
    )
    card = model_card(args.adapter, source.weights, plan, args.gguf and gguf.gguf_file_name(args.gguf))
    save_merged(model, tokenizer, args.adapter, args.output_dir, card, args.gguf, converter)
    logger.info("wrote the merged model to %s", args.output_dir)
    logger.info("%s", report)
    return args.output_dir


if __name__ == "__main__":
    cli.run(main)
