"""Shared-context batching (squad_lora/shared_context.py) against this project's other paths, in one run.

    python benchmarks/bench_shared_context.py --validation_file ../shared/data/squad/dev-v1.1.json \\
        --gpt2_tokenizer ~/.cache/squad-lora-models/gpt2-tokenizer --train_model ~/.cache/squad-lora-models/gpt2-random \\
        --generation_model ~/.cache/squad-lora-models/smollm2-135m

1. Tokenization, over every question of the file, with GPT-2's tokenizer and the generation model's: the
   prompt's context part and question part tokenized apart equal the prompt tokenized whole, and the
   tokens per question with and without sharing.
2. Training samples/s (the training model, LoRA r=8, AdamW) on the file's first --num_train_samples
   questions in file order, at most --max_per_context per context, batches of --batch_size questions:
   (a) pad to 1024 + LM head everywhere, (c) the default without sharing (length-grouped padding + head at
   labelled positions), (s) shared-context rows + head at labelled positions. (c) and (s) run three times,
   in turns, and the fastest pass of each is reported (this machine is shared; both passes are in the JSON).
3. generate.py as a whole process (start, load, answer --num_questions greedily, write): with sharing (its
   default 64 questions a batch, and 16 as without sharing) and with --share_context false (16 a batch), each
   twice in turns, the faster run counting; and a process that loads the model the same way and calls
   generate() once per question.
4. Greedy agreement on the file's first --num_agreement_questions questions: shared against unshared
   answers, and for each difference the logits of the two tokens where the answers part (unshared model,
   one prompt, no padding).
Prints a table and writes JSON (--output). No assertion: numbers are for reading, not for tests.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
from bench_train_generate import full_head_loss, train_setting  # beside this file, whose folder Python puts on sys.path
from transformers import DataCollatorForSeq2Seq

from squad_lora.args import DecodingArguments, LoraArguments, ModelArguments, PromptArguments
from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.decoding import generate_answers, stop_token_ids
from squad_lora.features import build_train_features
from squad_lora.loss import labelled_positions_loss
from squad_lora.modeling import (
    apply_lora,
    load_base_model,
    load_for_inference,
    load_tokenizer,
)
from squad_lora.outputs import write_json
from squad_lora.plan import GENERATION_BATCH_SIZE, resolve_answer_plan
from squad_lora.prompt import EncodedQuestions, build_prompts, prompt_template, shared_prefix_lengths
from squad_lora.shared_context import ContextBatchSampler, SharedContextCollator

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class BenchArguments:
    validation_file: str = field(metadata={"help": "The real SQuAD dev file (official JSON)."})
    gpt2_tokenizer: str = field(metadata={"help": "GPT-2's tokenizer directory."})
    train_model: str = field(metadata={"help": "Model for training: GPT-2 small shapes (random weights will do)."})
    generation_model: str = field(metadata={"help": "A real model for generation (SmolLM2-135M)."})
    num_train_samples: int = field(default=32, metadata={"help": "Training questions per setting."})
    max_per_context: int = field(default=5, metadata={"help": "At most this many training questions per context."})
    num_naive_samples: int = field(default=4, metadata={"help": "Questions for the slow pad-to-1024 setting (a)."})
    batch_size: int = field(default=4, metadata={"help": "Training batch size in questions."})
    num_questions: int = field(default=96, metadata={"help": "Questions generate.py answers in the timed runs."})
    num_agreement_questions: int = field(default=200, metadata={"help": "Questions of the greedy agreement check."})
    loop_baseline: bool = field(default=False, metadata={"help": "Internal: be the one-question-per-call process."})
    output: str = field(default="benchmarks/results/bench_shared_context.json", metadata={"help": "JSON results."})
    seed: int = field(default=0, metadata={"help": "Seed for the model and the batch order."})


# ---------------------------------------------------------------------------
# 1. Tokenization
# ---------------------------------------------------------------------------


def tokenization_check(examples: list[dict], tokenizer_path: str, prompt_format: str = "plain") -> dict:
    tokenizer = load_tokenizer(tokenizer_path)
    template = prompt_template(tokenizer, prompt_format, tokenizer_path)
    tokenize = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    whole = tokenize([template.build(ex["context"], ex["question"]) for ex in examples])
    contexts = tokenize([template.context_part(ex["context"]) for ex in examples])
    questions = tokenize([template.question_part(ex["question"]) for ex in examples])
    lengths = shared_prefix_lengths(tokenizer, [ex["question"] for ex in examples], whole, template)
    distinct = {ex["context"]: len(ids) for ex, ids in zip(examples, contexts)}
    return {
        "questions": len(examples),
        "contexts": len(distinct),
        "apart_equals_whole": sum(c + q == w for c, q, w in zip(contexts, questions, whole)),
        "sharing": sum(n > 0 for n in lengths),
        "prompt_tokens_per_question": sum(map(len, whole)) / len(examples),
        "shared_tokens_per_question": (sum(distinct.values()) + sum(map(len, questions))) / len(examples),
    }


# ---------------------------------------------------------------------------
# 2. Training
# ---------------------------------------------------------------------------


def training_questions(examples: list[dict], num: int, max_per_context: int) -> list[dict]:
    """The first `num` questions in file order, at most max_per_context of each context."""
    taken, chosen = {}, []
    for ex in examples:
        if taken.get(ex["context"], 0) < max_per_context:
            taken[ex["context"]] = taken.get(ex["context"], 0) + 1
            chosen.append(ex)
        if len(chosen) == num:
            break
    return chosen


def training_comparison(examples: list[dict], args: BenchArguments, device) -> dict:
    tokenizer = load_tokenizer(args.train_model)
    columns = {key: [ex[key] for ex in examples] for key in ("context", "question", "answers")}
    built = build_train_features(columns, tokenizer, 1024, sharing=True)
    features = [{"input_ids": i, "labels": lab} for i, lab in zip(built["input_ids"], built["labels"])]
    sharing = [{**f, "shared_length": n} for f, n in zip(features, built["shared_length"])]
    sampler = ContextBatchSampler(built["shared_length"], built["context_key"], args.batch_size, seed=args.seed)
    shared_plan = [[sharing[i] for i in batch] for batch in sampler]

    torch.manual_seed(args.seed)
    model = load_base_model(ModelArguments(model_name_or_path=args.train_model)).to(device)
    model = apply_lora(model, LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.0))
    model.train()
    padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    pad_1024 = DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=1024, label_pad_token_id=-100)
    runs = {
        "c_default_grouped_labelled_head": lambda: train_setting(
            model, features, padded, labelled_positions_loss, args.batch_size, True, device, False, args.seed
        ),
        "s_shared_context_labelled_head": lambda: train_setting(
            model, sharing, SharedContextCollator(tokenizer.pad_token_id), labelled_positions_loss, args.batch_size,
            False, device, False, args.seed, plan=shared_plan,
        ),
    }  # fmt: skip
    results = {"a_pad1024_full_head": {"passes": []}, **{name: {"passes": []} for name in runs}}
    naive = features[: args.num_naive_samples]
    results["a_pad1024_full_head"]["passes"].append(
        train_setting(model, naive, pad_1024, full_head_loss, args.batch_size, False, device, False, args.seed)
    )
    for _ in range(3):
        for name, run in runs.items():
            results[name]["passes"].append(run())
            print(f"{name}: {results[name]['passes'][-1]['samples_per_second']:.3f} samples/s", file=sys.stderr)
    for result in results.values():
        result.update(min(result["passes"], key=lambda r: r["seconds"]))
    for result in results.values():
        result["vs_a"] = result["samples_per_second"] / results["a_pad1024_full_head"]["samples_per_second"]
        result["vs_c"] = result["samples_per_second"] / results["c_default_grouped_labelled_head"]["samples_per_second"]
    results["contexts"] = len(sampler.groups)
    results["shared_batches"] = [len(batch) for batch in shared_plan]
    return results


# ---------------------------------------------------------------------------
# 3. generate.py as a whole process, against a one-question-per-call process
# ---------------------------------------------------------------------------


def greedy_setup(args: BenchArguments, num_questions: int) -> tuple:
    """The generation model loaded as generate.py loads it, its greedy plan, the first questions' prompts and the
    greedy config."""
    model, tokenizer = load_for_inference(None, ModelArguments(model_name_or_path=args.generation_model))
    examples = load_squad_file(args.validation_file)[0][:num_questions]
    plan = resolve_answer_plan(DecodingArguments(), PromptArguments(), tokenizer, model.config)
    prompts, _ = build_prompts(examples, tokenizer, plan.max_prompt_tokens)
    return model, tokenizer, examples, prompts, plan.generation_configs["greedy"]


def loop_baseline(args: BenchArguments) -> None:
    """The naive process: load as generate.py does, then one generate() call per question, greedy."""
    model, _, _, prompts, config = greedy_setup(args, args.num_questions)
    with torch.inference_mode():
        for prompt in prompts:
            model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                           generation_config=config)  # fmt: skip


def timed_process(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def generation_processes(args: BenchArguments, workdir: str) -> dict:
    """Seconds of each whole process; the three generate.py runs twice in turns (the faster run of each counts)."""
    common = [sys.executable, "generate.py", "--model_name_or_path", args.generation_model, "--validation_file",
              args.validation_file, "--max_eval_samples", str(args.num_questions), "--overwrite_output_dir"]  # fmt: skip
    runs = {
        "unshared": ["--share_context", "false"],  # what generate.py did before shared contexts
        "shared": ["--share_context", "true"],
        "shared_batch_16": ["--share_context", "true", "--generation_batch_size", str(GENERATION_BATCH_SIZE)],
    }
    passes = {name: [] for name in runs}
    for _ in range(2):
        for name, flags in runs.items():
            passes[name].append(timed_process([*common, *flags, "--output_dir", os.path.join(workdir, name)]))
    loop_flags = (f"--{name}={getattr(args, name)}" for name in
                  ("validation_file", "gpt2_tokenizer", "train_model", "generation_model", "num_questions"))  # fmt: skip
    seconds = {name: min(times) for name, times in passes.items()}
    seconds["loop"] = timed_process([sys.executable, os.path.abspath(__file__), "--loop_baseline", "true", *loop_flags])
    predictions = {}
    for name in runs:
        with open(os.path.join(workdir, name, "predictions_greedy.json"), encoding="utf-8") as f:
            predictions[name] = json.load(f)
    return {
        "passes": passes,
        "seconds": seconds,
        "questions_per_second": {name: args.num_questions / s for name, s in seconds.items()},
        "shared_vs_unshared": seconds["unshared"] / seconds["shared"],
        "shared_vs_loop": seconds["loop"] / seconds["shared"],
        "unshared_vs_loop": seconds["loop"] / seconds["unshared"],
        "same_predictions_as_unshared": {
            name: sum(predictions[name][i] == predictions["unshared"][i] for i in predictions["unshared"])
            for name in runs
        },
    }


# ---------------------------------------------------------------------------
# 4. Greedy agreement
# ---------------------------------------------------------------------------


def greedy_agreement(args: BenchArguments) -> dict:
    model, tokenizer, examples, prompts, config = greedy_setup(args, args.num_agreement_questions)
    shared_lengths = shared_prefix_lengths(tokenizer, [ex["question"] for ex in examples], prompts)
    # each path in the batches generate.py gives it by default
    plans = {
        share: resolve_answer_plan(DecodingArguments(), PromptArguments(share_context=share), tokenizer, model.config)
        for share in ("false", "true")
    }
    unshared, *_ = generate_answers(model, tokenizer, EncodedQuestions(prompts), config, plans["false"])
    shared, *_ = generate_answers(model, tokenizer, EncodedQuestions(prompts, shared_lengths), config, plans["true"])
    differences = [
        {"id": ex["id"], "unshared": a[0], "shared": b[0], **parting_logits(model, tokenizer, prompt, a[0], b[0])}
        for ex, prompt, a, b in zip(examples, prompts, unshared, shared)
        if a != b
    ]
    return {"questions": len(examples), "identical": len(examples) - len(differences), "differences": differences}


@torch.inference_mode()
def parting_logits(model, tokenizer, prompt: list[int], unshared: str, shared: str) -> dict:
    """Where two answers part: the first token where they differ (an answer that ended there: a stop token), and
    the unshared model's logits for both there, with the top two."""
    first, second = (tokenizer(" " + text, add_special_tokens=False)["input_ids"] for text in (unshared, shared))
    step = next((k for k, (x, y) in enumerate(zip(first, second)) if x != y), min(len(first), len(second)))
    logits = model(torch.tensor([prompt + first[:step]])).logits[0, -1].float()
    top = logits.topk(2)
    stops = set(stop_token_ids(tokenizer))

    def candidate(ids):  # the answer's token at the parting step, or its best stop token when it ended there
        if step < len(ids):
            return ids[step]
        return max(stops, key=lambda token: logits[token])

    a, b = candidate(first), candidate(second)
    return {
        "step": step,
        "tokens": [tokenizer.decode([a]), tokenizer.decode([b])],
        "logits": [float(logits[a]), float(logits[b])],
        "gap": abs(float(logits[a] - logits[b])),
        "top2": [tokenizer.decode([t]) for t in top.indices.tolist()],
        "top2_gap": float(top.values[0] - top.values[1]),
    }


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    (args,), _, _ = parse_args((BenchArguments,), argv)
    if args.loop_baseline:
        loop_baseline(args)
        return {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    examples, _ = load_squad_file(args.validation_file)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        + (torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"),
        "arguments": asdict(args),
        "tokenization": {
            "gpt2": tokenization_check(examples, args.gpt2_tokenizer),
            "generation_model": tokenization_check(examples, args.generation_model),
        },
    }
    if load_tokenizer(args.generation_model).chat_template:  # the chat prompt must share its context part too
        results["tokenization"]["generation_model_chat"] = tokenization_check(examples, args.generation_model, "chat")
    print(results["tokenization"], file=sys.stderr, flush=True)
    chosen = training_questions(examples, args.num_train_samples, args.max_per_context)
    results["training"] = training_comparison(chosen, args, device)
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as workdir:
        results["generation"] = generation_processes(args, workdir)
    print(results["generation"], file=sys.stderr, flush=True)
    results["agreement"] = greedy_agreement(args)
    write_json(args.output, results)
    print(render_table(results))
    return results


def render_table(results: dict) -> str:
    lines = ["| tokenizer | questions | contexts | context + question tokenized apart = whole | sharing | "
             "prompt tokens / question | shared tokens / question |", "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, t in results["tokenization"].items():
        lines.append(
            f"| {name} | {t['questions']} | {t['contexts']} | {t['apart_equals_whole']} | {t['sharing']} | "
            f"{t['prompt_tokens_per_question']:.1f} | {t['shared_tokens_per_question']:.1f} |"
        )
    lines += ["", "| training setting | samples/s | tokens fed / question | padding | peak memory (MiB) | vs (a) | vs (c) |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in results["training"].items():
        if isinstance(r, dict):
            lines.append(
                f"| {name} | {r['samples_per_second']:.3f} | {r['tokens_per_sample']:.0f} | {r['padding_fraction']:.0%} "
                f"| {r['peak_memory_mb']:.0f} | {r['vs_a']:.1f}x | {r['vs_c']:.2f}x |"
            )
    g = results["generation"]
    lines += ["", "| generation, whole process | seconds | questions/s | vs loop | vs unshared |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name in ("loop", "unshared", "shared_batch_16", "shared"):
        lines.append(
            f"| {name} | {g['seconds'][name]:.1f} | {g['questions_per_second'][name]:.2f} | "
            f"{g['seconds']['loop'] / g['seconds'][name]:.2f}x | {g['seconds']['unshared'] / g['seconds'][name]:.2f}x |"
        )
    a = results["agreement"]
    lines += ["", f"greedy agreement: {a['identical']} of {a['questions']} identical"]
    for d in a["differences"]:
        lines.append(f"  {d['id']}: step {d['step']}, {d['tokens']} logits {d['logits']} (gap {d['gap']:.2g})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
