"""GGUF for llama.cpp and Ollama: the merged model through llama.cpp's own converter, and an Ollama Modelfile that
puts questions to it in the run's prompt format and stops where generate.py stops.

The converter is llama.cpp's convert_hf_to_gguf.py, run from a llama.cpp source tree (--llama_cpp DIR) with this
Python, so it sees the torch and transformers installed here; `pip install "squad-lora[gguf]"` adds what it imports
beyond them (sentencepiece) and gguf, which reads the written file back. docs/serving.md, "GGUF and Ollama".
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shlex
import subprocess
import sys

from squad_lora.errors import ConfigError, ModelLoadError
from squad_lora.prompt import PromptTemplate

logger = logging.getLogger(__name__)

CONVERTER = "convert_hf_to_gguf.py"
# convert_hf_to_gguf.py's --outtype values that name one file type (its tq1_0/tq2_0 are for ternary models only)
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")
MODELFILE = "Modelfile"
GET_LLAMA_CPP = (
    "a llama.cpp source tree (git clone https://github.com/ggml-org/llama.cpp, or vendor/llama.cpp in the sdist "
    "`pip download llama-cpp-python --no-deps --no-binary :all:` fetches)"
)
# Ollama's template language (Go templates) fills .System and .Prompt from a request's system and prompt
CONTEXT_SLOT, QUESTION_SLOT = "{{ .System }}", "{{ .Prompt }}"


def gguf_file_name(gguf_type: str) -> str:
    return f"model-{gguf_type}.gguf"


def find_converter(llama_cpp: str | None) -> str:
    """The path of convert_hf_to_gguf.py in --llama_cpp, checked with what it and the read-back import, before any
    weights load."""
    if not llama_cpp:
        raise ConfigError(f"--gguf needs llama.cpp's converter: pass --llama_cpp DIR, {GET_LLAMA_CPP}")
    converter = os.path.join(os.path.expanduser(llama_cpp), CONVERTER)
    if not os.path.isfile(converter):
        raise ConfigError(f"--llama_cpp {llama_cpp}: no {CONVERTER} there; give the root of {GET_LLAMA_CPP}")
    missing = [name for name in ("gguf", "sentencepiece") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f'--gguf needs {" and ".join(missing)}: pip install "squad-lora[gguf]"')
    return converter


def prepare_config(config) -> None:
    """What llama.cpp's converter reads that transformers 5 no longer writes: a GPT-2's n_ctx (n_positions)."""
    if config.model_type == "gpt2" and getattr(config, "n_ctx", None) is None:
        config.n_ctx = config.n_positions


def convert(model_dir: str, gguf_type: str, converter: str) -> str:
    """Run llama.cpp's converter on a saved model dir, writing model-TYPE.gguf into it; returns the file's path."""
    out_file = os.path.join(model_dir, gguf_file_name(gguf_type))
    command = [sys.executable, converter, model_dir, "--outfile", out_file, "--outtype", gguf_type]
    logger.info("converting to GGUF: %s", shlex.join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        raise ModelLoadError(
            f"{converter} could not convert the merged model: {lines[-1] if lines else f'exit {done.returncode}'}"
        )
    return out_file


def read_gguf(path: str) -> dict:
    """What a GGUF holds that serving depends on, read back with gguf's reader: architecture, file type, tensors
    (name -> shape, type), the tokenizer's tokens and its EOS and BOS ids, and whether it adds BOS."""
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def value(key):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    return {
        "architecture": value("general.architecture"),
        "file_type": value("general.file_type"),
        "tensors": {t.name: (tuple(int(n) for n in t.shape), t.tensor_type.name) for t in reader.tensors},
        "tokens": value("tokenizer.ggml.tokens"),
        "eos_token_id": value("tokenizer.ggml.eos_token_id"),
        "bos_token_id": value("tokenizer.ggml.bos_token_id"),
        "add_bos_token": bool(value("tokenizer.ggml.add_bos_token")),
    }


def _go_template_text(text: str) -> str:
    """Text for a Go template: an action's opening braces written as an action that prints them."""
    return text.replace("{{", '{{ "{{" }}')


def _quoted(value: str) -> str:
    """A Modelfile value: Ollama's parser keeps everything between triple quotes, newlines included, unescaped."""
    if '"""' in value:
        raise ConfigError(f"{value!r}: a Modelfile cannot quote text holding three double quotes")
    return f'"""{value}"""'


def modelfile(gguf_name: str, template: PromptTemplate, stops: list[str], max_new_tokens: int) -> str:
    """An Ollama Modelfile for a GGUF beside it: the run's prompt with the context from the request's system and
    the question from its prompt, greedy decoding, and the stops generate.py answers up to (newline, EOS, the
    template's end of turn)."""
    mark_context, mark_question = "\x00context\x00", "\x00question\x00"
    prompt = _go_template_text(template.build(mark_context, mark_question))
    prompt = prompt.replace(mark_context, CONTEXT_SLOT).replace(mark_question, QUESTION_SLOT)
    lines = [
        "# ollama create NAME -f Modelfile; a request's system holds the context, its prompt the question",
        f"FROM ./{gguf_name}",
        f"TEMPLATE {_quoted(prompt)}",
        *(f"PARAMETER stop {_quoted(stop)}" for stop in dict.fromkeys(stops)),
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"


def export(
    model_dir: str, gguf_type: str, converter: str, template: PromptTemplate, stops: list[str], max_new_tokens: int
):
    """The saved model in model_dir as model-TYPE.gguf, read back and logged, and its Ollama Modelfile beside it."""
    written = read_gguf(convert(model_dir, gguf_type, converter))
    logger.info(
        "wrote %s: %s, %d tensors, %d tokens, EOS id %s%s",
        gguf_file_name(gguf_type),
        written["architecture"],
        len(written["tensors"]),
        len(written["tokens"]),
        written["eos_token_id"],
        "; llama.cpp and Ollama put BOS before a prompt, which training did not" if written["add_bos_token"] else "",
    )
    with open(os.path.join(model_dir, MODELFILE), "w", encoding="utf-8") as f:
        f.write(modelfile(gguf_file_name(gguf_type), template, stops, max_new_tokens))
