"""Training and generation throughput of this project against the naive baselines, measured in one run.

    python benchmarks/bench_train_generate.py                               # GPT-2 small shapes, random weights
    python benchmarks/bench_train_generate.py --model_name_or_path ~/.cache/squad-lora-models/smollm2-135m \\
        --validation_file ../shared/data/squad/dev-v1.1.json --bf16       # a real model and SQuAD (GPU: bf16)

Training (LoRA r=8, AdamW, same examples for every setting):
  (a) naive: every feature padded to 1024 tokens, LM head and loss over every position
  (b) dynamic padding to each batch's longest feature, random order, LM head everywhere
  (c) this project's default: length-grouped batches + the LM head only at labelled positions
  (d) packing (one unpadded row per batch, block-diagonal attention) + the head at labelled positions
Generation: generate.py's batched, length-sorted, left-padded greedy decoding against a
one-question-at-a-time `model.generate` loop.

MFU counts the useful work only: per non-padding token 2 FLOPs per weight of the transformer blocks
forward and 2 more backward (input gradients; the frozen weights get none), attention over the
causal prefix, and the LM head at labelled positions. The peak is a large matmul timed in this run.
Prints a table and writes JSON (--output). No assertion: numbers are for reading, not for tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel
from transformers.trainer_pt_utils import get_length_grouped_indices

from squad_lora.args import DecodingArguments, LoraArguments, ModelArguments, PromptArguments
from squad_lora.cli import parse_args
from squad_lora.collators import PackingCollator
from squad_lora.data import load_squad_file
from squad_lora.decoding import generate_answers
from squad_lora.features import build_train_features
from squad_lora.loss import labelled_positions_loss
from squad_lora.modeling import apply_lora, load_base_model, load_tokenizer
from squad_lora.outputs import write_json
from squad_lora.plan import resolve_answer_plan
from squad_lora.prompt import EncodedQuestions


@dataclass
class BenchArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Model dir or Hub id; default GPT2Config() (GPT-2 small shapes) with random weights."},
    )
    validation_file: Optional[str] = field(
        default=None,
        metadata={"help": "SQuAD file for real prompts; default synthetic ones with SQuAD's length distribution."},
    )
    num_train_samples: int = field(default=32, metadata={"help": "Training features per setting."})
    num_naive_samples: int = field(default=4, metadata={"help": "Features for the slow pad-to-1024 setting (a)."})
    batch_size: int = field(default=4, metadata={"help": "Training batch size."})
    num_questions: int = field(default=16, metadata={"help": "Questions for the generation comparison."})
    generation_batch_size: int = field(default=16, metadata={"help": "Batch size of the batched generation."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per question (generate.py's default)."})
    bf16: bool = field(default=False, metadata={"help": "Train and generate in bfloat16 autocast (GPUs)."})
    output: str = field(default="benchmarks/results/bench_train_generate.json", metadata={"help": "JSON results file."})
    seed: int = field(default=0, metadata={"help": "Seed for the synthetic data and the model."})


# SQuAD v1.1 dev with GPT-2's tokenizer: prompt tokens mean 183, p90 268, max 820; answers ~4 tokens.
PROMPT_LOG_MEAN, PROMPT_LOG_STD, PROMPT_MAX = math.log(170), 0.38, 820


def synthetic_features(num: int, vocab_size: int, eos: int, rng: random.Random) -> list[dict]:
    """Token-id features with SQuAD's prompt-length distribution and a 3-5 token answer + EOS."""
    features = []
    for _ in range(num):
        prompt_length = min(PROMPT_MAX, max(40, int(rng.lognormvariate(PROMPT_LOG_MEAN, PROMPT_LOG_STD))))
        answer = [rng.randrange(vocab_size - 1) for _ in range(rng.randint(3, 5))] + [eos]
        prompt = [rng.randrange(vocab_size - 1) for _ in range(prompt_length)]
        features.append({"input_ids": prompt + answer, "labels": [-100] * prompt_length + answer})
    return features


def squad_features(path: str, tokenizer, num: int) -> list[dict]:
    examples, _ = load_squad_file(path)
    columns = {key: [ex[key] for ex in examples[:num]] for key in ("context", "question", "answers")}
    built = build_train_features(columns, tokenizer, 1024)
    return [{"input_ids": i, "labels": lab} for i, lab in zip(built["input_ids"], built["labels"]) if i]


class PeakMemory:
    """Peak memory above the starting point: CUDA's allocator counter, or sampled RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        _release_freed_memory()  # else memory freed by an earlier setting hides this one's growth
        self.start = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()
            self.bytes = self.peak - self.start


def _release_freed_memory() -> None:
    """Hand memory that Python and the allocator hold but no longer use back to the OS (glibc)."""
    import ctypes
    import gc

    gc.collect()
    # not glibc: RSS deltas are then upper-bounded by what was kept
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    """FLOP/s of a large square matmul: the machine's practical peak for this dtype."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm up
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iterations += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * size**3 * iterations / (time.perf_counter() - start)


def useful_training_flops(model_config, features: list[dict], num_block_params: int) -> float:
    """Model FLOPs the LoRA training of these features needs, padding and unlabelled head excluded."""
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    vocab = model_config.vocab_size
    total = 0.0
    for feature in features:
        length = len(feature["input_ids"])
        labelled = sum(label != -100 for label in feature["labels"])
        forward = (
            2 * num_block_params * length + 2 * layers * length * length * hidden
        )  # blocks + causal attention (QK, AV)
        forward += 2 * hidden * vocab * labelled
        total += 2 * forward  # backward: input gradients only, about the forward's cost
    return total


def batches(features: list[dict], batch_size: int, grouped: bool, seed: int) -> list[list[dict]]:
    if grouped:  # what Trainer's group_by_length sampler does
        order = get_length_grouped_indices(
            [len(f["input_ids"]) for f in features], batch_size, generator=torch.Generator().manual_seed(seed)
        )
    else:
        order = list(range(len(features)))
        random.Random(seed).shuffle(order)
    return [[features[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]


def train_setting(model, features, collate, loss_fn, batch_size, grouped, device, bf16, seed, plan=None) -> dict:
    """Time one pass of LoRA training over the features (after one untimed warm-up step).

    plan: the batches (lists of features) to train, instead of batches(features, batch_size, grouped, seed).
    """
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    plan = plan or batches(features, batch_size, grouped, seed)

    def step(batch) -> tuple[int, int]:
        inputs = {k: v.to(device) for k, v in collate(batch).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model, inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return inputs["input_ids"].numel(), real_tokens(inputs)

    step(plan[0][:1])  # warm-up on one feature: allocator and kernels ready, little time spent
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        counts = [step(batch) for batch in plan]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    computed, real = (sum(column) for column in zip(*counts))
    return {
        "seconds": seconds,
        "samples_per_second": len(features) / seconds,
        "tokens_per_second": real / seconds,
        "tokens_per_sample": real / len(features),
        "padding_fraction": 1 - real / computed,
        "peak_memory_mb": memory.bytes / 2**20,
    }


def real_tokens(inputs: dict) -> int:
    """The non-padding tokens a batch feeds the model: a 2-D mask's ones, a 4-D mask's diagonal (a padding token
    does not see itself: shared_context.SharedContextCollator), or every token where there is no mask."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return inputs["input_ids"].numel()
    return int(mask[:, 0].diagonal(dim1=-2, dim2=-1).sum() if mask.dim() == 4 else mask.sum())


def full_head_loss(model, inputs):
    return model(**inputs).loss


def memory_by_precision(base_path: str, features: list[dict], collate, args, device) -> dict:
    """Memory of LoRA r=8 training (the default setting) with the frozen base in fp32, bf16 and 4-bit nf4."""
    import gc

    compute_dtype = "bfloat16" if device.type == "cuda" else "float32"  # CPU 4-bit kernels: fp32
    precisions = {
        "fp32": ModelArguments(model_name_or_path=base_path, dtype="float32"),
        "bf16": ModelArguments(model_name_or_path=base_path, dtype="bfloat16"),
        "4bit_nf4": ModelArguments(
            model_name_or_path=base_path, load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype
        ),
    }
    results = {}
    for name, model_args in precisions.items():
        model = load_base_model(model_args)
        if not model_args.load_in_4bit:
            model.to(device)
        weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        model = apply_lora(model, LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.0))
        model.train()
        run = train_setting(
            model, features, collate, labelled_positions_loss, args.batch_size, True, device, False, args.seed
        )
        results[name] = {
            "weights_mb": weights / 2**20,
            "training_growth_mb": run["peak_memory_mb"],
            "samples_per_second": run["samples_per_second"],
        }
        print(f"memory {name}: {results[name]}", file=sys.stderr, flush=True)
        del model
        gc.collect()
    return results


def generation_comparison(model, tokenizer, prompts, args, device) -> dict:
    """Greedy answers: a one-question-per-call loop on the LoRA model, then generate.py's batched decoding
    on the same model and on its merged weights (generate.py --merge)."""
    decoding = DecodingArguments(max_new_tokens=args.max_new_tokens, generation_batch_size=args.generation_batch_size)
    plan = resolve_answer_plan(decoding, PromptArguments(share_context="false"), tokenizer, model.config)
    config = plan.generation_configs["greedy"]
    # a fixed answer length makes every side do the same work however the random model answers
    config.min_new_tokens = args.max_new_tokens
    generate_answers(model, tokenizer, EncodedQuestions(prompts[:2]), config, plan)  # warm up

    def timed(run) -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def loop():
        with torch.inference_mode():
            for prompt in prompts:  # the naive way: one question per generate() call
                model.generate(
                    torch.tensor([prompt], device=device),
                    generation_config=config,
                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
                )

    seconds = {"loop": timed(loop)}
    seconds["batched"] = timed(lambda: generate_answers(model, tokenizer, EncodedQuestions(prompts), config, plan))
    merged = model.merge_and_unload()
    seconds["batched_merged"] = timed(
        lambda: generate_answers(merged, tokenizer, EncodedQuestions(prompts), config, plan)
    )
    return {
        **{f"{name}_questions_per_second": len(prompts) / value for name, value in seconds.items()},
        "speedup": seconds["loop"] / seconds["batched"],
        "speedup_merged": seconds["loop"] / seconds["batched_merged"],
    }


# Long by design: the benchmark's sitting in the order it runs (setup, each timed row, the results file).
def main(argv: list[str] | None = None) -> dict:
    (args,), _, _ = parse_args((BenchArguments,), argv)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.model_name_or_path:
        tokenizer = load_tokenizer(args.model_name_or_path)
        model = load_base_model(ModelArguments(model_name_or_path=args.model_name_or_path))
    else:
        model = GPT2LMHeadModel(GPT2Config())
        tokenizer = TokenIdsOnly(model.config.eos_token_id)
    model.to(device)
    eos = tokenizer.eos_token_id
    if args.validation_file:
        features = squad_features(args.validation_file, tokenizer, args.num_train_samples + args.num_questions)
    else:
        features = synthetic_features(args.num_train_samples + args.num_questions, model.config.vocab_size, eos, rng)
    train_features, question_features = features[: args.num_train_samples], features[args.num_train_samples :]

    base_path = args.model_name_or_path
    if base_path is None:  # the random base must exist on disk to be reloaded in bf16 and 4-bit
        base_path = tempfile.mkdtemp(prefix="bench-gpt2-")
        model.save_pretrained(base_path)
    model = apply_lora(model, LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.0))
    model.train()
    num_block_params = sum(p.numel() for n, p in model.named_parameters() if ".h." in n or ".layers." in n)
    peak_dtype = torch.bfloat16 if args.bf16 else torch.float32
    peak = matmul_peak_flops(device, peak_dtype)

    pad_1024 = DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=1024, label_pad_token_id=-100)
    dynamic = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    settings = {
        "a_pad1024_full_head": (train_features[: args.num_naive_samples], pad_1024, full_head_loss, False),
        "b_dynamic_padding": (train_features, dynamic, full_head_loss, False),
        "c_default_grouped_labelled_head": (train_features, dynamic, labelled_positions_loss, True),
        "d_packing_labelled_head": (train_features, PackingCollator(), labelled_positions_loss, False),
    }
    training = {}
    for name, (feats, collate, loss_fn, grouped) in settings.items():
        result = train_setting(model, feats, collate, loss_fn, args.batch_size, grouped, device, args.bf16, args.seed)
        result["mfu"] = useful_training_flops(model.config, feats, num_block_params) / result["seconds"] / peak
        training[name] = result
        print(f"{name}: {result['samples_per_second']:.3f} samples/s", file=sys.stderr, flush=True)
    memory = memory_by_precision(base_path, train_features[: args.batch_size], dynamic, args, device)
    if base_path != args.model_name_or_path:
        shutil.rmtree(base_path)
    baseline = training["a_pad1024_full_head"]["samples_per_second"]
    for result in training.values():
        result["speedup_vs_a"] = result["samples_per_second"] / baseline

    model.eval()
    prompts = [f["input_ids"][: f["labels"].count(-100)] for f in question_features]
    generation = generation_comparison(model, tokenizer, prompts, args, device)  # merges the LoRA weights: last

    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
        + (torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"),
        "arguments": asdict(args),
        "matmul_peak_gflops": peak / 1e9,
        "training": training,
        "memory_by_precision": memory,
        "generation": generation,
    }
    write_json(args.output, results)
    print(render_table(results))
    return results


class TokenIdsOnly:
    """The tokenizer methods the collators and generate_answers use, for GPT-2 shapes without vocabulary files.

    Padding uses EOS, as GPT-2 does; decoding returns empty strings (the random model's text is noise).
    """

    padding_side = "right"
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, eos_token_id: int):
        self.eos_token_id = self.pad_token_id = eos_token_id

    def __len__(self) -> int:
        return 0  # stop_token_ids then holds EOS only

    def pad(self, features, padding=True, max_length=None, return_tensors="pt", padding_side=None, **unused):
        if isinstance(features, dict):  # tokenizer.pad({"input_ids": [...]}) as generate_answers calls it
            features = [{"input_ids": ids} for ids in features["input_ids"]]
        length = max_length if padding == "max_length" else max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_token_id)
        attention_mask = torch.zeros_like(input_ids)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            place = slice(length - n, length) if (padding_side or self.padding_side) == "left" else slice(0, n)
            input_ids[row, place] = torch.tensor(feature["input_ids"])
            attention_mask[row, place] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def batch_decode(self, sequences, skip_special_tokens=True) -> list[str]:
        return ["" for _ in sequences]


def render_table(results: dict) -> str:
    lines = [
        f"matmul peak: {results['matmul_peak_gflops']:.1f} GFLOP/s ({results['machine']})",
        "",
        "| training setting | samples/s | non-pad tokens/s | padding | peak memory (MiB) | MFU | vs (a) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["training"].items():
        lines.append(
            f"| {name} | {r['samples_per_second']:.3f} | {r['tokens_per_second']:.0f} | {r['padding_fraction']:.0%} "
            f"| {r['peak_memory_mb']:.0f} | {r['mfu']:.0%} | {r['speedup_vs_a']:.1f}x |"
        )
    lines += [
        "",
        "| LoRA r=8 training, base in | weights (MiB) | training growth (MiB) | samples/s |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results["memory_by_precision"].items():
        lines.append(
            f"| {name} | {r['weights_mb']:.0f} | {r['training_growth_mb']:.0f} | {r['samples_per_second']:.3f} |"
        )
    g = results["generation"]
    if g:
        lines += [
            "",
            "| generation | questions/s |",
            "|---|---:|",
            f"| one question per generate() (LoRA model) | {g['loop_questions_per_second']:.2f} |",
            f"| generate.py: batched, sorted, left padded | {g['batched_questions_per_second']:.2f} ({g['speedup']:.1f}x) |",
            f"| generate.py --merge (LoRA folded into the weights) | {g['batched_merged_questions_per_second']:.2f} "
            f"({g['speedup_merged']:.1f}x) |",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
