"""merge_adapter.py --gguf against generate.py --merge: the GGUF, served by llama.cpp's llama-server with the prompt its
Ollama Modelfile's TEMPLATE renders and the Modelfile's stops, answers as generate.py answers with the merged model.

    python benchmarks/gguf_parity.py --adapter outputs/quality_v1/runs/fold1_seed1/recipe \\
        --llama_cpp ~/.cache/llama-cpp/llama_cpp_python-0.3.36/vendor/llama.cpp \\
        --llama_server ~/.cache/llama-cpp/bin/llama-server \\
        --validation_file ../shared/data/squad/dev-v1.1.json --output benchmarks/results/gguf_parity.json

../shared/tools/llama-cpp.sh builds llama-server and unpacks the llama.cpp tree. The questions: the file's first
--num_questions. Greedy on both sides (temperature 0, top_k 1); an answer is the text before the first newline,
stripped, as generate.py reads one; generate.py without --constrain_to_context, which no server applies. Not a
test: CI has no llama-server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from bench_peers import machine  # beside this file, whose folder Python puts on sys.path
from llama_server import LlamaServer, completions

from squad_lora.cli import parse_args
from squad_lora.data import load_squad_file
from squad_lora.gguf import CONTEXT_SLOT, QUESTION_SLOT, gguf_file_name
from squad_lora.outputs import write_json
from squad_lora.prompt import prediction_from_generation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class ParityArguments:
    adapter: str = field(metadata={"help": "A run_qa_lora.py output dir holding a LoRA adapter."})
    llama_cpp: str = field(metadata={"help": "A llama.cpp source tree (merge_adapter.py --llama_cpp)."})
    llama_server: str = field(metadata={"help": "llama.cpp's llama-server binary."})
    validation_file: str = field(metadata={"help": "SQuAD questions (JSON, JSON Lines or CSV)."})
    output: str = field(metadata={"help": "The result JSON."})
    gguf: str = field(default="f16", metadata={"help": "The GGUF type compared."})
    num_questions: int = field(default=20, metadata={"help": "The file's first N questions."})


def modelfile_prompt_and_stops(modelfile: str, context: str, question: str) -> tuple[str, list[str]]:
    """The prompt Ollama renders from the Modelfile's TEMPLATE (the request's system: the context; its prompt: the
    question), and its stops."""
    (template,) = re.findall(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M)
    stops = re.findall(r'^PARAMETER stop """(.*?)"""$', modelfile, re.S | re.M)
    return template.replace(CONTEXT_SLOT, context.strip()).replace(QUESTION_SLOT, question.strip()), stops


def served_answers(args: ParityArguments, merged: str, examples: list[dict], max_new_tokens: int) -> list[str]:
    """The answers of llama-server on the merged model's GGUF, each prompt rendered as Ollama renders the
    Modelfile's TEMPLATE, with its stops."""
    with open(os.path.join(merged, "Modelfile"), encoding="utf-8") as f:
        modelfile = f.read()
    rendered = [modelfile_prompt_and_stops(modelfile, ex["context"], ex["question"]) for ex in examples]
    stops = rendered[0][1]
    with LlamaServer(args.llama_server, os.path.join(merged, gguf_file_name(args.gguf))) as server:
        texts = completions(server.url, [prompt for prompt, _ in rendered], max_new_tokens, stops)
    return [prediction_from_generation(text) for text in texts]


def main(argv: list[str] | None = None) -> dict:
    ((args,), _, _) = parse_args((ParityArguments,), argv)
    examples = load_squad_file(args.validation_file)[0][: args.num_questions]
    with tempfile.TemporaryDirectory() as tmp:
        merged, predictions = os.path.join(tmp, "merged"), os.path.join(tmp, "predictions")
        script = [sys.executable, os.path.join(ROOT, "merge_adapter.py"), args.adapter, "--output_dir", merged]
        subprocess.run([*script, "--gguf", args.gguf, "--llama_cpp", args.llama_cpp], check=True)
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "generate.py"), "--adapter", args.adapter, "--merge", "--strategy",
             "greedy", "--constrain_to_context", "false", "--validation_file", args.validation_file,
             "--max_eval_samples", str(args.num_questions), "--output_dir", predictions],
            check=True,
        )  # fmt: skip
        with open(os.path.join(predictions, "predictions_greedy.json"), encoding="utf-8") as f:
            expected = json.load(f)
        with open(os.path.join(merged, "generation_config.json"), encoding="utf-8") as f:
            max_new_tokens = json.load(f)["max_new_tokens"]
        served = served_answers(args, merged, examples, max_new_tokens)
    compared = [
        {"id": ex["id"], "generate_merge": expected[ex["id"]], "gguf": answer} for ex, answer in zip(examples, served)
    ]
    result = {
        "machine": machine(),
        "adapter": args.adapter,
        "gguf": args.gguf,
        "decoding": "greedy, no --constrain_to_context (a server cannot apply it), max_new_tokens from the run",
        "num_questions": len(compared),
        "same_answers": sum(row["generate_merge"] == row["gguf"] for row in compared),
        "differing": [row for row in compared if row["generate_merge"] != row["gguf"]],
        "answers": compared,
    }
    write_json(args.output, result)
    print(
        f"{result['same_answers']}/{result['num_questions']} answers the same ({args.gguf} GGUF vs generate.py --merge)"
    )
    return result


if __name__ == "__main__":
    main()
