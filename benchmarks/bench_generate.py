"""generate.py's answering against a plain batched model.generate() on the same questions, in one sitting:

    python benchmarks/bench_generate.py --model_name_or_path ~/.cache/squad-lora-models/smollm2-135m \\
        --data_file ../shared/data/squad/dev-v1.1.json --output benchmarks/results/bench_generate.json
    python benchmarks/bench_generate.py ... --adapter outputs/my_run     # a tuned adapter: short answers

The questions: the data file's first --num_questions, in file order. Every setting decodes greedily, at most
--max_new_tokens, stopping at EOS or a newline (generate.py's stop tokens), on one model loaded once:

- plain_generate: model.generate() on --plain_batch_size questions at a time, in file order, left-padded: how
  one batches by hand (the baseline);
- ours_default: decoding.answer_questions as generate.py runs it by default (contexts shared, finished answers
  leave the batch);
- ours_unshared: the same with --share_context false.

Settings run in turns, --repeats times each; the fastest run counts (all are in the JSON). The answers of every
setting are compared with the baseline's, question by question. Not a test: the tests run it on a tiny model.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from accelerate import PartialState
from bench_peers import machine  # beside this file, whose folder Python puts on sys.path

from squad_lora.args import DecodingArguments, ModelArguments, PromptArguments
from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.decoding import answer_questions
from squad_lora.modeling import inference_source, load_inference_model, load_tokenizer_and_config
from squad_lora.outputs import write_json
from squad_lora.plan import resolve_answer_plan
from squad_lora.prompt import build_prompts, prediction_from_generation

SETTINGS = ("plain_generate", "ours_default", "ours_unshared")
BASELINE = "plain_generate"


@dataclass
class GenerationBenchArguments:
    model_name_or_path: str = field(metadata={"help": "The base model (a real pretrained causal LM)."})
    data_file: str = field(metadata={"help": "SQuAD JSON whose first questions are answered."})
    adapter: Optional[str] = field(default=None, metadata={"help": "A run_qa_lora.py output dir to answer with."})
    num_questions: int = field(default=96, metadata={"help": "Questions every setting answers."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest answer in tokens (generate.py's default)."})
    plain_batch_size: int = field(default=16, metadata={"help": "Questions per model.generate() call, baseline."})
    generation_batch_size: Optional[int] = field(
        default=None, metadata={"help": "generate.py's --generation_batch_size for ours_* (default: its own)."}
    )
    repeats: int = field(default=2, metadata={"help": "Runs of each setting, in turns; the fastest counts."})
    settings: str = field(default=",".join(SETTINGS), metadata={"help": "Comma-separated subset of the settings."})
    output: Optional[str] = field(default=None, metadata={"help": "Write the results here as JSON."})


@torch.inference_mode()
def plain_generate(model, tokenizer, examples: list[dict], plan, batch_size: int) -> list[str]:
    """Left-padded batches in file order through model.generate, with the plan's prompts and greedy config."""
    prompts, _ = build_prompts(examples, tokenizer, plan.max_prompt_tokens, plan.template)
    config = plan.generation_configs["greedy"]
    answers = []
    for first in range(0, len(prompts), batch_size):
        padded = tokenizer.pad(
            {"input_ids": prompts[first : first + batch_size]}, padding_side="left", return_tensors="pt"
        )
        output = model.generate(**padded, generation_config=config)
        texts = tokenizer.batch_decode(output.sequences[:, padded["input_ids"].shape[1] :], skip_special_tokens=True)
        answers += [prediction_from_generation(text) for text in texts]
    return answers


def ours(model, tokenizer, examples: list[dict], plan) -> list[str]:
    rows = answer_questions(model, tokenizer, examples, plan, PartialState(cpu=True), progress=False)["greedy"]
    return [row["prediction"] for row in rows]


def summarize(seconds: dict[str, list[float]], answers: dict[str, list[str]], num_questions: int) -> dict:
    """Per setting: its fastest repeat's speed, that speed against the baseline's fastest, and how many of its
    answers equal the baseline's, question by question."""
    baseline = num_questions / min(seconds[BASELINE])
    return {
        name: {
            "seconds": min(times),
            "all_seconds": times,
            "questions_per_second": num_questions / min(times),
            "vs_plain_generate": num_questions / min(times) / baseline,
            "same_answers_as_plain_generate": sum(a == b for a, b in zip(answers[name], answers[BASELINE])),
        }
        for name, times in seconds.items()
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    (args,), _, _ = parse_args((GenerationBenchArguments,), argv)
    examples = load_squad_file(args.data_file)[0][: args.num_questions]
    model_args = ModelArguments(model_name_or_path=args.model_name_or_path)
    source = inference_source(args.adapter, model_args)
    tokenizer, config = load_tokenizer_and_config(source, False)
    plans = {
        share: resolve_answer_plan(
            DecodingArguments(
                strategy="greedy", max_new_tokens=args.max_new_tokens, generation_batch_size=args.generation_batch_size
            ),
            PromptArguments(share_context=share),
            tokenizer,
            config,
        )
        for share in ("auto", "false")
    }
    model = load_inference_model(source, model_args, False, None).eval()
    run = {
        "plain_generate": lambda: plain_generate(model, tokenizer, examples, plans["false"], args.plain_batch_size),
        "ours_default": lambda: ours(model, tokenizer, examples, plans["auto"]),
        "ours_unshared": lambda: ours(model, tokenizer, examples, plans["false"]),
    }
    names = [name for name in SETTINGS if name in args.settings.split(",")]
    if BASELINE not in names:
        raise SystemExit(f"--settings {args.settings}: the baseline, {BASELINE}, is one of them")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    answers = {}
    for _ in range(args.repeats):
        for name in names:
            start = time.perf_counter()
            answers[name] = run[name]()
            seconds[name].append(time.perf_counter() - start)
            print(f"{name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
    rows = summarize(seconds, answers, args.num_questions)
    lengths = [len(tokenizer(" " + answer)["input_ids"]) for answer in answers[BASELINE]]
    results = {
        "command": "python benchmarks/bench_generate.py "
        + " ".join(os.path.basename(a.rstrip("/")) if os.path.isabs(a) else a for a in argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": os.path.basename(args.model_name_or_path.rstrip("/")),
        "adapter": args.adapter and os.path.basename(args.adapter.rstrip("/")),
        "num_questions": args.num_questions,
        "mean_answer_tokens": sum(lengths) / len(lengths),
        "settings": rows,
    }
    print(render(results), end="")
    if args.output:
        write_json(args.output, results)
    return results


def render(results: dict) -> str:
    lines = [
        f"{results['num_questions']} questions, {results['model']}"
        + (f" + {results['adapter']}" if results["adapter"] else "")
        + f", greedy, answers of {results['mean_answer_tokens']:.1f} tokens on average",
        "| setting | questions/s | vs plain generate() | same answers |",
        "|---|---:|---:|---:|",
    ]
    for name, row in results["settings"].items():
        lines.append(
            f"| {name} | {row['questions_per_second']:.2f} | {row['vs_plain_generate']:.1f}x | "
            f"{row['same_answers_as_plain_generate']}/{results['num_questions']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
