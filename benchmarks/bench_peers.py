"""This project's training against TRL's SFTTrainer on the same questions, in one sitting (pip install -e ".[peers]"):

    python benchmarks/bench_peers.py --model_name_or_path ~/.cache/squad-lora-models/gpt2-random \\
        --data_file ../shared/data/squad/dev-v1.1.json --output benchmarks/results/bench_peers.json

The questions: the data file's first --num_questions in file order, at most --max_per_context per context. Every
setting trains them for one epoch, LoRA r=8 / alpha 16 / dropout 0.1 on c_attn, fp32, --batch_size questions a
step, lr 1e-3, seed 0, each in its own process (so peak memory is its own):

- ours_default: run_qa_lora.py as a user runs it (shared contexts on);
- ours_unshared: run_qa_lora.py --share_context false;
- ours_bf16: the default with bf16 autocast (--bf16, and --use_cpu where there is no GPU), its MFU against a bf16
  matmul peak timed in the same run, its loss beside the fp32 default's;
- trl_default: SFTTrainer on a prompt-completion dataset (completion-only loss, TRL's default for it);
- trl_padding_free, trl_packing: the same with padding_free=True, and with packing=True (best-fit decreasing).

The prompt and completion TRL gets are our prompt and answer as text; the benchmark checks that every setting
trained the same token ids with the same labels (per question where rows hold one question; the labelled
tokens where packing mixes them). Settings run --repeats times in turns and the fastest run counts (the others
are in the JSON). Speed is the Trainer's own train_runtime. MFU is the useful training FLOPs of the questions
(4 x block parameters x tokens, counting each context's tokens once and each question's own: LoRA's frozen
weights need no weight gradients) per second, against an fp32 matmul peak timed in the same run. Not a test: the
tests run it once on a tiny model.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import torch
from bench_shared_context import training_questions  # beside this file, whose folder Python puts on sys.path
from bench_train_generate import matmul_peak_flops

from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.features import build_train_features
from squad_lora.outputs import write_json, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("ours_default", "ours_unshared", "ours_bf16", "trl_default", "trl_padding_free", "trl_packing")
BASELINE = "trl_default"
LORA = {"r": 8, "alpha": 16, "dropout": 0.1, "target": "c_attn"}
LEARNING_RATE, SEED, MAX_LENGTH = 1e-3, 0, 1024


@dataclass
class PeerArguments:
    model_name_or_path: str = field(metadata={"help": "GPT-2 small shapes (random weights will do) and tokenizer."})
    data_file: str = field(metadata={"help": "SQuAD JSON whose first questions are trained."})
    num_questions: int = field(default=64, metadata={"help": "Questions trained by every setting."})
    max_per_context: int = field(default=5, metadata={"help": "At most this many questions of one context."})
    batch_size: int = field(default=4, metadata={"help": "Questions per optimizer step."})
    repeats: int = field(default=2, metadata={"help": "Runs of each setting, in turns; the fastest counts."})
    settings: str = field(default=",".join(SETTINGS), metadata={"help": "Comma-separated subset of the settings."})
    output: Optional[str] = field(default=None, metadata={"help": "Write the results here as JSON."})
    child: Optional[str] = field(default=None, metadata={"help": "Internal: be the process that runs this setting."})
    workdir: Optional[str] = field(default=None, metadata={"help": "Internal: the parent's working directory."})


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ---------------------------------------------------------------------------
# The children: one setting each
# ---------------------------------------------------------------------------


def run_ours(args: PeerArguments, train_file: str, share: bool, bf16: bool) -> dict:
    """run_qa_lora.main as a user runs it, with QATrainer.train wrapped to record what it trained."""
    sys.path.insert(0, REPO)
    from squad_lora.commands import train as run_qa_lora
    from squad_lora.shared_context import SharedContextCollator
    from squad_lora.trainer import QATrainer

    record, sizes = {}, []
    train, shared_collate = QATrainer.train, SharedContextCollator.__call__

    def counting_shared(self, features):
        sizes.append(len(features))
        return shared_collate(self, features)

    def recording_train(self, *a, **k):
        record["examples"] = [[row["input_ids"], row["labels"]] for row in self.train_dataset]
        collate = self.data_collator  # the unshared batches' (shared ones build a SharedContextCollator)

        def counting(features):
            sizes.append(len(features))
            return collate(features)

        self.data_collator = counting
        output = train(self, *a, **k)
        record.update(
            steps=self.state.global_step,
            batch_questions=sizes,
            train_seconds=output.metrics["train_runtime"],
            train_loss=output.metrics["train_loss"],
        )
        return output

    QATrainer.train, SharedContextCollator.__call__ = recording_train, counting_shared
    run_qa_lora.main(
        ["--model_name_or_path", args.model_name_or_path, "--train_file", train_file, "--output_dir",
         os.path.join(args.workdir, "ours"), "--overwrite_output_dir", "--lora_r", str(LORA["r"]), "--lora_alpha",
         str(LORA["alpha"]), "--lora_dropout", str(LORA["dropout"]), "--lora_target_modules", LORA["target"],
         "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(LEARNING_RATE),
         "--num_train_epochs", "1", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
         "--disable_tqdm", "true", "--seed", str(SEED), "--share_context", "true" if share else "false",
         *(["--bf16", "true"] if bf16 else []), *(["--use_cpu", "true"] if bf16 and not torch.accelerator.is_available() else [])]
    )  # fmt: skip
    return record


def prompt_completion_rows(examples: list[dict], tokenizer) -> list[dict]:
    """Our training prompt and answer of each question as the text TRL's prompt-completion format takes (TRL
    adds the EOS)."""
    columns = {key: [ex[key] for ex in examples] for key in ("context", "question", "answers")}
    built = build_train_features(columns, tokenizer, MAX_LENGTH)
    rows = []
    for ids, labels in zip(built["input_ids"], built["labels"]):
        prompt_length = labels.count(-100)
        rows.append(
            {"prompt": tokenizer.decode(ids[:prompt_length]), "completion": tokenizer.decode(ids[prompt_length:-1])}
        )
    return rows


def run_trl(args: PeerArguments, examples: list[dict], mode: str) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    dataset = Dataset.from_list(prompt_completion_rows(examples, tokenizer))
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
    config = SFTConfig(
        output_dir=os.path.join(args.workdir, "trl"), per_device_train_batch_size=args.batch_size,
        num_train_epochs=1, learning_rate=LEARNING_RATE, seed=SEED, report_to="none", save_strategy="no",
        disable_tqdm=True, completion_only_loss=True, bf16=False,
        max_length=None if mode == "padding_free" else MAX_LENGTH,  # TRL refuses a length it cannot enforce there; every prompt fits
        padding_free=mode == "padding_free", packing=mode == "packing",
    )  # fmt: skip
    peft_config = LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=[LORA["target"]],
        task_type="CAUSAL_LM",
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)  # fmt: skip
    record = {"examples": [[row["input_ids"], row["labels"]] for row in trainer.train_dataset]}
    sizes, collate = [], trainer.data_collator

    def counting(features):
        sizes.append(len(features))
        return collate(features)

    trainer.data_collator = counting
    output = trainer.train()
    record.update(steps=trainer.state.global_step, batch_questions=sizes, train_seconds=output.metrics["train_runtime"],
                  train_loss=output.metrics["train_loss"])  # fmt: skip
    return record


def child(args: PeerArguments) -> None:
    train_file = os.path.join(args.workdir, "questions.jsonl")
    with open(train_file, encoding="utf-8") as f:
        examples = [json.loads(line) for line in f]
    if args.child.startswith("ours"):
        record = run_ours(args, train_file, share=args.child != "ours_unshared", bf16=args.child == "ours_bf16")
    else:
        record = run_trl(args, examples, args.child.removeprefix("trl_"))
    record["peak_rss_bytes"] = peak_rss_bytes()
    write_json(os.path.join(args.workdir, f"{args.child}.json"), record)


# ---------------------------------------------------------------------------
# The parent: the questions, the runs in turns, the checks and the table
# ---------------------------------------------------------------------------


def labelled_tokens(examples: list[list[list[int]]]) -> Counter:
    return Counter(token for _, labels in examples for token in labels if token != -100)


def same_training(record: dict, reference: dict, packed: bool) -> dict:
    """Whether a setting trained what the reference trained: the labelled tokens always; for rows of one question
    each, every question's token ids and labels."""
    tokens, expected = labelled_tokens(record["examples"]), labelled_tokens(reference["examples"])
    result = {"labelled_tokens": sum(tokens.values()), "same_labelled_tokens": tokens == expected}
    if not packed:
        rows = sorted(map(json.dumps, record["examples"]))
        result["same_questions"] = rows == sorted(map(json.dumps, reference["examples"]))
    return result


def useful_tokens(examples: list[dict], model_name_or_path: str) -> int:
    """The tokens training these questions must compute: each context's once, and each question's own."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    columns = {key: [ex[key] for ex in examples] for key in ("context", "question", "answers")}
    built = build_train_features(columns, tokenizer, MAX_LENGTH, sharing=True)
    own = sum(len(ids) - n for ids, n in zip(built["input_ids"], built["shared_length"]))
    contexts = dict(zip(built["context_key"], built["shared_length"]))
    return own + sum(contexts.values())


def block_parameters(model_name_or_path: str) -> int:
    """The weights every token passes through (the blocks, embeddings aside): 12 C^2 a GPT-2 layer."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_name_or_path)
    return 12 * config.n_layer * config.n_embd**2


def machine() -> str:
    return (
        f"{platform.machine()} {platform.processor() or 'CPU'}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"torch threads, {platform.system()} {platform.release()}, torch {torch.__version__}"
    )


def summarize(runs: dict, flops: float, peaks: dict, num_questions: int) -> dict:
    """Per setting: its fastest run's speed, MFU against its dtype's peak (peaks: {"fp32", "bf16"}: FLOP/s), memory,
    steps, and its first run's loss against the default's (the same seed: the same run but for its arithmetic)."""
    rows = {}
    for name, records in runs.items():
        best = min(records, key=lambda r: r["train_seconds"])
        rows[name] = {
            "train_seconds": best["train_seconds"],
            "all_train_seconds": [r["train_seconds"] for r in records],
            "questions_per_second": num_questions / best["train_seconds"],
            "peak_rss_gib": max(r["peak_rss_bytes"] for r in records) / 2**30,
            "mfu": flops / best["train_seconds"] / peaks["bf16" if name == "ours_bf16" else "fp32"],
            "train_loss": records[0]["train_loss"],
            "loss_minus_ours_default": records[0]["train_loss"] - runs["ours_default"][0]["train_loss"],
            "steps": best["steps"],
            "max_questions_per_step": max(best["batch_questions"]),
        }
    if BASELINE in rows:
        for row in rows.values():
            row["vs_trl_default"] = row["questions_per_second"] / rows[BASELINE]["questions_per_second"]
    return rows


def render(results: dict) -> str:
    lines = [
        "| setting | questions/s | MFU | peak RSS | steps | × TRL default | loss − default | same tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in results["settings"].items():
        same = results["same_training"][name]
        ratio = row.get("vs_trl_default")
        lines.append(
            f"| {name} | {row['questions_per_second']:.2f} | {100 * row['mfu']:.1f}% | {row['peak_rss_gib']:.1f} GiB | "
            f"{row['steps']} | {'–' if ratio is None else f'{ratio:.1f}x'} | {row['loss_minus_ours_default']:+.4f} | "
            f"{'yes' if all(v for k, v in same.items() if k.startswith('same')) else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    (args,), _, _ = parse_args((PeerArguments,), argv)
    if args.child:
        child(args)
        return {}
    names = args.settings.split(",")
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or "ours_default" not in names:
        raise SystemExit(f"--settings: choose from {', '.join(SETTINGS)}, ours_default among them (the reference)")
    examples, _ = load_squad_file(args.data_file)
    examples = training_questions(examples, args.num_questions, args.max_per_context)
    peaks = {"fp32": matmul_peak_flops(torch.device("cpu"), torch.float32)}
    if "ours_bf16" in names:
        peaks["bf16"] = matmul_peak_flops(torch.device("cpu"), torch.bfloat16)
    runs = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as workdir:
        write_jsonl(os.path.join(workdir, "questions.jsonl"), examples)
        for _ in range(args.repeats):
            for name in names:
                command = [sys.executable, os.path.abspath(__file__), *argv, "--child", name, "--workdir", workdir]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{name} failed:\n{done.stderr[-4000:]}")
                with open(os.path.join(workdir, f"{name}.json"), encoding="utf-8") as f:
                    runs[name].append(json.load(f))
                print(f"{name}: {runs[name][-1]['train_seconds']:.1f} s", file=sys.stderr, flush=True)
    reference = runs["ours_default"][0]
    tokens = useful_tokens(examples, args.model_name_or_path)
    flops = 4 * block_parameters(args.model_name_or_path) * tokens
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/bench_peers.py " + " ".join(os.path.basename(a) if os.path.isabs(a) else a for a in argv),
        "machine": machine(),
        "fp32_matmul_peak_gflops": peaks["fp32"] / 1e9,
        "bf16_matmul_peak_gflops": peaks["bf16"] / 1e9 if "bf16" in peaks else None,
        "questions": len(examples),
        "useful_tokens": tokens,
        "useful_gflop_per_question": flops / len(examples) / 1e9,
        "settings": summarize(runs, flops, peaks, len(examples)),
        "same_training": {name: same_training(records[0], reference, name == "trl_packing") for name, records in runs.items()},
    }  # fmt: skip
    results["table"] = render(results)
    print(results["table"], end="")
    if args.output:
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
