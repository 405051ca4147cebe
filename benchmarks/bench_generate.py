"""generate.py's answering against a plain batched model.generate() on the same questions, in one sitting:

    python benchmarks/bench_generate.py --model_name_or_path ~/.cache/squad-lora-models/smollm2-135m \\
        --data_file ../shared/data/squad/dev-v1.1.json --output benchmarks/results/bench_generate.json
    python benchmarks/bench_generate.py ... --adapter outputs/my_run     # a tuned adapter: short answers

The questions: --num_questions of the data file, in file order, in each of --question_sets (each set's
questions, contexts and prompt tokens are in the results):

- at_most_5: the first questions taking at most 5 of a context (SQuAD v1.1 dev averages 5.1): the headline;
- one_per_context: the first question of each context: nothing to share;
- dense: the first questions as the file has them (the dev file's first 96: 4 contexts of 24), which flatters
  shared contexts.

Every setting decodes greedily, at most --max_new_tokens, stopping at EOS or a newline (generate.py's stop
tokens), on one model loaded once:

- plain_generate: model.generate() on --plain_batch_size questions at a time, in file order, left-padded: how
  one batches by hand (the baseline);
- ours_default: decoding.answer_questions as generate.py runs it by default (contexts shared, finished answers
  leave the batch);
- ours_unshared: the same with --share_context false;
- ours_bf16: ours_default with the model loaded in bfloat16 (generate.py --dtype bfloat16: weights, matrix
  products and KV cache in 16-bit), a second copy of the model;
- llama_cpp_<gguf>_<n>slots (with --llama_server): llama.cpp's llama-server on the same model as GGUF
  (merge_adapter.py --gguf, or llama.cpp's converter), asked for the same prompt tokens n at a time, greedy,
  stopping at a newline, each slot with its prompt cache: the binary given is started on 127.0.0.1 for each
  --gguf file and --llama_slots count (its threads: all cores), afresh for each timing (a slot's cache must not
  carry one repeat's prompts into the next), outside the clock; a URL is a server already running.

Settings run in turns, --repeats times each; the fastest run counts (all are in the JSON). The answers of every
setting are compared with the baseline's, question by question. Not a test: the tests run it on a tiny model.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from accelerate import PartialState
from bench_peers import machine  # beside this file, whose folder Python puts on sys.path
from llama_server import LlamaServer, completions

from squad_lora.args import DecodingArguments, ModelArguments, PromptArguments
from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.decoding import answer_questions
from squad_lora.modeling import inference_source, load_inference_model, load_tokenizer_and_config
from squad_lora.outputs import write_json
from squad_lora.plan import resolve_answer_plan
from squad_lora.prompt import build_prompts, prediction_from_generation

SETTINGS = ("plain_generate", "ours_default", "ours_unshared", "ours_bf16")
BASELINE = "plain_generate"
QUESTION_SETS = {"at_most_5": 5, "one_per_context": 1, "dense": None}  # set: questions a context at most


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
    llama_server: Optional[str] = field(
        default=None, metadata={"help": "llama.cpp's llama-server binary to start, or the URL of one running."}
    )
    gguf: Optional[str] = field(
        default=None, metadata={"help": "Comma-separated GGUF files of the model (f32, f16, ...) for the binary."}
    )
    llama_slots: str = field(default="1,8,16", metadata={"help": "Comma-separated parallel slot counts (requests)."})
    question_sets: str = field(
        default=",".join(QUESTION_SETS), metadata={"help": "Comma-separated subset of the question sets."}
    )
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


def llama_answers(url: str, tokenizer, examples: list[dict], plan, slots: int) -> list[str]:
    """llama-server's answers to the plan's prompts, as token ids (the same tokens the model sees here)."""
    prompts, _ = build_prompts(examples, tokenizer, plan.max_prompt_tokens, plan.template)
    texts = completions(url, prompts, plan.max_new_tokens, ["\n"], parallel=slots)
    return [prediction_from_generation(text) for text in texts]


def llama_rows(args: GenerationBenchArguments) -> dict[str, tuple[str | None, int]]:
    """{setting name: (GGUF file, or None for the running server at a URL; parallel requests)} of the llama.cpp
    rows: one for each GGUF file and slot count."""
    if not args.llama_server:
        return {}
    slots = [int(n) for n in args.llama_slots.split(",")]
    if args.llama_server.startswith(("http://", "https://")):
        return {f"llama_cpp_{n}slots": (None, n) for n in slots}
    if not args.gguf:
        raise SystemExit("--llama_server BINARY needs --gguf FILE[,FILE]: the model it serves")
    return {
        f"llama_cpp_{os.path.splitext(os.path.basename(gguf))[0].replace('-', '_')}_{n}slots": (gguf, n)
        for gguf in args.gguf.split(",")
        for n in slots
    }


def cpu_bf16_flags() -> list[str]:
    """The CPU's bfloat16 instructions as Linux lists them (avx512_bf16, amx_bf16); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(flag for flag in set(flags) if "bf16" in flag)


def question_set(examples: list[dict], num: int, name: str) -> list[dict]:
    """The first `num` questions in file order, at most QUESTION_SETS[name] of each context."""
    limit = QUESTION_SETS[name]
    taken, chosen = {}, []
    for ex in examples:
        if limit is None or taken.get(ex["context"], 0) < limit:
            taken[ex["context"]] = taken.get(ex["context"], 0) + 1
            chosen.append(ex)
        if len(chosen) == num:
            break
    return chosen


def composition(examples: list[dict], tokenizer, plan) -> dict:
    """What a question set holds: questions, contexts, questions a context, prompt tokens."""
    prompts, _ = build_prompts(examples, tokenizer, plan.max_prompt_tokens, plan.template)
    contexts = len({ex["context"] for ex in examples})
    return {
        "questions": len(examples),
        "contexts": contexts,
        "questions_per_context": len(examples) / contexts,
        "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
    }


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
    names = [name for name in SETTINGS if name in args.settings.split(",")]
    if BASELINE not in names:
        raise SystemExit(f"--settings {args.settings}: the baseline, {BASELINE}, is one of them")
    set_names = args.question_sets.split(",")
    unknown = [name for name in set_names if name not in QUESTION_SETS]
    if unknown:
        raise SystemExit(f"--question_sets: unknown {', '.join(unknown)}; choose from {', '.join(QUESTION_SETS)}")
    all_examples = load_squad_file(args.data_file)[0]
    llama = llama_rows(args)
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
    if "ours_bf16" in names:
        bf16_args = ModelArguments(model_name_or_path=args.model_name_or_path, dtype="bfloat16")
        bf16_model = load_inference_model(inference_source(args.adapter, bf16_args), bf16_args, False, None).eval()

    def run(name: str, examples: list[dict], url: str | None) -> list[str]:
        if name in llama:
            return llama_answers(url, tokenizer, examples, plans["false"], llama[name][1])
        if name == BASELINE:
            return plain_generate(model, tokenizer, examples, plans["false"], args.plain_batch_size)
        if name == "ours_bf16":
            return ours(bf16_model, tokenizer, examples, plans["auto"])
        # ours_default: generate.py's default (auto sharing); ours_unshared: --share_context false
        return ours(model, tokenizer, examples, plans["auto" if name == "ours_default" else "false"])

    def timed_set(examples: list[dict], names: list[str]) -> dict:
        """Every setting on one question set, in turns, --repeats times; the set's composition and each setting's
        summary. A llama.cpp row gets a fresh server each time (started before its clock): a slot's prompt cache
        must not carry one repeat's prompts into the next. A server at a URL keeps its cache: use --repeats 1."""
        seconds: dict[str, list[float]] = {name: [] for name in names}
        answers = {}
        for _ in range(args.repeats):
            for name in names:
                with contextlib.ExitStack() as stack:
                    url = args.llama_server
                    if name in llama and llama[name][0] is not None:
                        url = stack.enter_context(LlamaServer(args.llama_server, *llama[name])).url
                    start = time.perf_counter()
                    answers[name] = run(name, examples, url)
                    seconds[name].append(time.perf_counter() - start)
                print(f"{len(examples)} questions, {name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
        lengths = [len(tokenizer(" " + answer)["input_ids"]) for answer in answers[BASELINE]]
        return {
            **composition(examples, tokenizer, plans["false"]),
            "mean_answer_tokens": sum(lengths) / len(lengths),
            "settings": summarize(seconds, answers, len(examples)),
        }

    sets = {
        set_name: timed_set(question_set(all_examples, args.num_questions, set_name), names + list(llama))
        for set_name in set_names
    }
    results = {
        "command": "python benchmarks/bench_generate.py "
        + " ".join(os.path.basename(a.rstrip("/")) if os.path.isabs(a) else a for a in argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "model": os.path.basename(args.model_name_or_path.rstrip("/")),
        "adapter": args.adapter and os.path.basename(args.adapter.rstrip("/")),
        "sets": sets,
    }
    print(render(results), end="")
    if args.output:
        write_json(args.output, results)
    return results


def render(results: dict) -> str:
    lines = [
        f"{results['model']}" + (f" + {results['adapter']}" if results["adapter"] else "") + ", greedy",
        "| questions | setting | questions/s | vs plain generate() | same answers |",
        "|---|---|---:|---:|---:|",
    ]
    for set_name, held in results["sets"].items():
        shown = (
            f"{set_name}: {held['questions']} in {held['contexts']} contexts, {held['mean_prompt_tokens']:.0f}-token "
            f"prompts, {held['mean_answer_tokens']:.1f}-token answers"
        )
        for name, row in held["settings"].items():
            lines.append(
                f"| {shown} | {name} | {row['questions_per_second']:.2f} | {row['vs_plain_generate']:.2f}x | "
                f"{row['same_answers_as_plain_generate']}/{held['questions']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
