"""What the CPU suite cannot check, in one command on a machine with a CUDA GPU (a few minutes):

    python benchmarks/gpu_check.py --model_name_or_path gpt2 --output gpu_check.json
    python benchmarks/gpu_check.py --device cpu --model_name_or_path configs/tiny-gpt2 --from_scratch  # the tests

1. bf16 training with shared contexts against the same questions unshared: the LoRA loss under bf16 autocast
   within bf16's tolerance of each other (and in fp32 within float noise, the control).
2. The 4-D branch mask through sdpa: the shared batch's loss with sdpa equal to eager attention's (fp32).
3. Flash-attention packing, where flash_attn is installed (CUDA): padding-free rows (position ids restart per
   question) under flash_attention_2 against padded sdpa rows, bf16.
4. QLoRA (CUDA, bitsandbytes): run_qa_lora.py --load_in_4bit trains two steps and saves its adapter.
5. generate.py (its in-place KV cache of shared contexts) on the device: greedy answers with and without
   --share_context identical.
6. Speed: shared-context training of --num_questions questions (LoRA r=8, AdamW; bf16 autocast on CUDA, fp32
   on CPU): questions/s, tokens/s, and MFU against a matmul peak of the same dtype timed in the same run.

Each check says pass, fail (with why) or not run (with why: no CUDA, flash_attn missing); the exit status is
1 when any check fails. Prints a table and writes JSON (--output). Timings are for reading, not for tests.
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
from typing import Optional

import torch
from bench_train_generate import matmul_peak_flops, train_setting, useful_training_flops  # beside this file
from transformers import DataCollatorForSeq2Seq

from squad_lora.args import LoraArguments, ModelArguments
from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.features import build_train_features
from squad_lora.loss import labelled_positions_loss
from squad_lora.modeling import apply_lora, load_base_model, load_tokenizer
from squad_lora.outputs import write_json
from squad_lora.shared_context import ContextBatchSampler, SharedContextCollator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_TOLERANCE = 2e-2  # relative: bf16 keeps 8 bits of mantissa, and a loss sums thousands of rounded products
FP32_TOLERANCE = 1e-4
PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
MEASURED = "measured"  # a speed: a figure to read, not a verdict


@dataclass
class CheckArguments:
    model_name_or_path: str = field(metadata={"help": "A causal LM with sdpa (GPT-2 small shapes or larger)."})
    device: str = field(default="cuda", metadata={"help": "cuda, or cpu (every check that can run there)."})
    from_scratch: bool = field(default=False, metadata={"help": "Random weights from the model's config."})
    data_file: str = field(
        default=os.path.join(REPO, "data", "sample", "dev-v1.1.json"), metadata={"help": "SQuAD questions to use."}
    )
    num_questions: int = field(default=32, metadata={"help": "Questions trained in the speed check."})
    batch_size: int = field(default=8, metadata={"help": "Questions per training step."})
    output: Optional[str] = field(default=None, metadata={"help": "Also write the results here as JSON."})
    seed: int = field(default=0, metadata={"help": "Seed of the model's random weights and the batch order."})


def check(status: str, detail: str, **measured) -> dict:
    return {"status": status, "detail": detail, **measured}


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


class Setup:
    """The tokenizer, the questions' training features (shared and unshared) and their batch plan."""

    def __init__(self, args: CheckArguments):
        self.args = args
        self.device = torch.device(args.device)
        self.tokenizer = load_tokenizer(args.model_name_or_path)
        examples, _ = load_squad_file(args.data_file)
        examples = examples[: args.num_questions]
        columns = {key: [ex[key] for ex in examples] for key in ("context", "question", "answers")}
        built = build_train_features(columns, self.tokenizer, 1024, sharing=True)
        self.features = [{"input_ids": i, "labels": lab} for i, lab in zip(built["input_ids"], built["labels"])]
        self.shared = [{**f, "shared_length": n} for f, n in zip(self.features, built["shared_length"])]
        sampler = ContextBatchSampler(built["shared_length"], built["context_key"], args.batch_size, seed=args.seed)
        self.plan = list(sampler)
        self.shared_collator = SharedContextCollator(self.tokenizer.pad_token_id)
        self.padded_collator = DataCollatorForSeq2Seq(self.tokenizer, label_pad_token_id=-100)

    def model(self, attn_implementation: str = "sdpa", dtype: torch.dtype | None = None):
        torch.manual_seed(self.args.seed)
        model_args = ModelArguments(model_name_or_path=self.args.model_name_or_path)
        model = load_base_model(
            model_args, from_scratch=self.args.from_scratch, attn_implementation=attn_implementation
        )
        model = apply_lora(model, LoraArguments(lora_r=8, lora_alpha=16, lora_dropout=0.0))
        if dtype is not None:
            model = model.to(dtype)
        return model.to(self.device).eval()

    def losses(self, model, shared: bool, bf16: bool = False, additive_mask: bool = False) -> list[float]:
        """The loss of every planned batch, as shared-context rows (their boolean mask as 0 / -inf scores with
        additive_mask) or as padded separate questions."""
        values = []
        for batch in self.plan:
            if shared:
                inputs = self.shared_collator([self.shared[i] for i in batch])
                if additive_mask:
                    mask = inputs["attention_mask"]
                    inputs["attention_mask"] = torch.zeros(mask.shape).masked_fill(
                        ~mask, torch.finfo(torch.float32).min
                    )
            else:
                inputs = self.padded_collator([self.features[i] for i in batch])
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                values.append(labelled_positions_loss(model, inputs).float().item())
        return values


def shared_against_unshared(setup: Setup) -> dict:
    model = setup.model()
    worst = {}
    for precision, bf16, tolerance in (("fp32", False, FP32_TOLERANCE), ("bf16", True, BF16_TOLERANCE)):
        pairs = zip(setup.losses(model, True, bf16), setup.losses(model, False, bf16))
        worst[precision] = max(relative(shared, unshared) for shared, unshared in pairs)
        if worst[precision] > tolerance:
            return check(FAIL, f"{precision} losses differ by {worst[precision]:.2e} (tolerance {tolerance})", **worst)
    return check(PASS, f"{len(setup.plan)} batches; worst relative difference {worst}", **worst)


def mask_through_sdpa(setup: Setup) -> dict:
    """The shared rows through sdpa (on CUDA its fused kernels take the mask) against the reference: eager attention
    given the same mask as additive 0 / -inf scores (eager takes no boolean mask: shared_context.MASK_ATTENTION)."""
    sdpa = setup.losses(setup.model("sdpa"), True)
    reference = setup.losses(setup.model("eager"), True, additive_mask=True)
    worst = max(relative(a, b) for a, b in zip(sdpa, reference))
    status = PASS if worst <= FP32_TOLERANCE else FAIL
    detail = f"shared rows, sdpa against eager with an additive mask: worst relative difference {worst:.2e}"
    return check(status, detail, worst=worst)


def flash_attention_packing(setup: Setup) -> dict:
    if setup.device.type != "cuda":
        return check(NOT_RUN, "flash-attention needs CUDA")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return check(NOT_RUN, "flash_attn is not installed (pip install flash-attn)")
    from transformers import DataCollatorWithFlattening

    flatten = DataCollatorWithFlattening(return_position_ids=True)
    packed_model, padded_model = setup.model("flash_attention_2", torch.bfloat16), setup.model("sdpa", torch.bfloat16)
    worst = 0.0
    for batch in setup.plan:
        features = [setup.features[i] for i in batch]
        with torch.no_grad():
            packed = {k: v.to(setup.device) for k, v in flatten(features).items()}
            padded = {k: v.to(setup.device) for k, v in setup.padded_collator(features).items()}
            worst = max(worst, relative(labelled_positions_loss(packed_model, packed).float().item(),
                                        labelled_positions_loss(padded_model, padded).float().item()))  # fmt: skip
    status = PASS if worst <= BF16_TOLERANCE else FAIL
    return check(status, f"packed flash_attention_2 against padded sdpa, bf16: worst {worst:.2e}", worst=worst)


def script(name: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, name), *argv], capture_output=True, text=True)


def model_flags(args: CheckArguments) -> list[str]:
    return ["--model_name_or_path", args.model_name_or_path, *(["--from_scratch"] if args.from_scratch else [])]


def qlora(args: CheckArguments, workdir: str) -> dict:
    if args.device != "cuda":
        return check(NOT_RUN, "bitsandbytes 4-bit training needs CUDA")
    out = os.path.join(workdir, "qlora")
    done = script(
        "run_qa_lora.py", *model_flags(args), "--train_file", args.data_file, "--output_dir", out,
        "--load_in_4bit", "--bf16", "--lora_r", "8", "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    )  # fmt: skip
    if done.returncode:
        return check(FAIL, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no message")
    saved = os.path.exists(os.path.join(out, "adapter_model.safetensors"))
    return check(PASS if saved else FAIL, "two 4-bit steps, adapter saved" if saved else "no adapter was saved")


def generate_on_device(args: CheckArguments, workdir: str) -> dict:
    """generate.py greedy with and without shared contexts (on CUDA when the machine has it: the script picks the
    device the way accelerate does)."""
    if args.from_scratch:
        base = os.path.join(workdir, "base")  # generate.py loads saved weights: save the random ones once
        if not os.path.exists(base):
            torch.manual_seed(args.seed)
            load_base_model(
                ModelArguments(model_name_or_path=args.model_name_or_path), from_scratch=True
            ).save_pretrained(base)
            load_tokenizer(args.model_name_or_path).save_pretrained(base)
    else:
        base = args.model_name_or_path
    answers = {}
    env = {"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}
    for share in ("true", "false"):
        out = os.path.join(workdir, f"generate_{share}")
        done = subprocess.run(
            [sys.executable, os.path.join(REPO, "generate.py"), "--model_name_or_path", base, "--validation_file",
             args.data_file, "--max_eval_samples", str(args.num_questions), "--max_new_tokens", "8", "--share_context",
             share, "--output_dir", out, "--overwrite_output_dir"],
            capture_output=True, text=True, env={**os.environ, **env},
        )  # fmt: skip
        if done.returncode:
            return check(FAIL, f"--share_context {share}: {done.stderr.strip().splitlines()[-1]}")
        with open(os.path.join(out, "predictions_greedy.json"), encoding="utf-8") as f:
            answers[share] = json.load(f)
    differing = [qid for qid in answers["false"] if answers["true"].get(qid) != answers["false"][qid]]
    status = FAIL if differing else PASS
    return check(status, f"{len(differing)} of {len(answers['false'])} greedy answers differ", differing=differing[:10])


def speed(setup: Setup) -> dict:
    device, cuda = setup.device, setup.device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    peak = matmul_peak_flops(device, dtype, size=8192 if cuda else 2048)
    model = setup.model().train()
    plan = [[setup.shared[i] for i in batch] for batch in setup.plan]
    timed = train_setting(
        model, setup.shared, setup.shared_collator, labelled_positions_loss, setup.args.batch_size, False, device,
        cuda, setup.args.seed, plan=plan,
    )  # fmt: skip
    block_params = sum(p.numel() for name, p in model.named_parameters() if ".h." in name or ".layers." in name)
    flops = useful_training_flops(model.config, setup.features, block_params)
    mfu = flops / timed["seconds"] / peak
    detail = (
        f"{timed['samples_per_second']:.1f} questions/s, {timed['tokens_per_second']:.0f} tokens/s, "
        f"MFU {100 * mfu:.1f}% of a {peak / 1e12:.2f} TFLOP/s {str(dtype).removeprefix('torch.')} matmul peak"
    )
    return check(MEASURED, detail, questions_per_second=timed["samples_per_second"],
                 tokens_per_second=timed["tokens_per_second"], mfu=mfu, peak_flops=peak)  # fmt: skip


def render(results: dict) -> str:
    lines = ["| check | status | detail |", "|---|---|---|"]
    lines += [f"| {name} | {row['status']} | {row['detail']} |" for name, row in results["checks"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    (args,), _, _ = parse_args((CheckArguments,), argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible here; run with --device cpu for the CPU checks")
    setup = Setup(args)
    checks = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, run in (
            ("bf16 shared vs unshared", lambda: shared_against_unshared(setup)),
            ("4-D mask through sdpa", lambda: mask_through_sdpa(setup)),
            ("flash-attention packing", lambda: flash_attention_packing(setup)),
            ("QLoRA 4-bit", lambda: qlora(args, workdir)),
            ("generate.py shared KV cache", lambda: generate_on_device(args, workdir)),
            ("speed", lambda: speed(setup)),
        ):
            start = time.perf_counter()
            try:
                checks[name] = run()
            except Exception as e:  # a check that crashes is a failed check; the others still run
                checks[name] = check(FAIL, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            checks[name]["seconds"] = time.perf_counter() - start
            print(f"{name}: {checks[name]['status']}: {checks[name]['detail']}", file=sys.stderr, flush=True)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    results = {"date": time.strftime("%Y-%m-%d"), "device": device_name, "torch": torch.__version__,
               "arguments": {**asdict(args), "model_name_or_path": os.path.basename(args.model_name_or_path)},
               "checks": checks}  # fmt: skip
    print(render(results), end="")
    if args.output:
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    sys.exit(1 if any(row["status"] == FAIL for row in main()["checks"].values()) else 0)
