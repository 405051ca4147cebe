"""merge_adapter.py: the merged export of a run loads without peft (safetensors weights only), answers as the adapter
does, keeps the run's prompt format, and is refused over an existing directory unless told to overwrite."""

import glob
import os
import re

import pytest

from builders import DEFAULT_TARGETS, answer_plan, tiny_llama_config
from repo_paths import DEV_FILE
from run_outputs import assert_same_answers
from squad_lora.errors import ConfigError


def test_the_merged_model_loads_without_peft_and_answers_as_the_adapter(local_base_run, tmp_path):
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from squad_lora.args import ModelArguments
    from squad_lora.commands import merge as merge_adapter
    from squad_lora.data import load_squad_file
    from squad_lora.decoding import answer_questions
    from squad_lora.modeling import load_for_inference

    run_dir, _ = local_base_run
    merged_dir = merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged")])
    assert sorted(name for name in os.listdir(merged_dir) if name.endswith((".safetensors", ".bin"))) == [
        "model.safetensors"
    ]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    examples, _ = load_squad_file(DEV_FILE)
    adapter, tokenizer = load_for_inference(run_dir, ModelArguments())
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    with torch.no_grad():
        plan = answer_plan(tokenizer, adapter, max_new_tokens=8)
        expected = answer_questions(adapter, tokenizer, examples[:12], plan, PartialState())["greedy"]
        plan = answer_plan(merged_tokenizer, merged, max_new_tokens=8)
        got = answer_questions(merged, merged_tokenizer, examples[:12], plan, PartialState())
    assert [row["prediction"] for row in got["greedy"]] == [row["prediction"] for row in expected]
    with pytest.raises(ConfigError, match="exists: pass --overwrite_output_dir"):
        merge_adapter.main([run_dir, "--output_dir", merged_dir])


def test_a_merged_chat_model_keeps_its_prompt_format(chat_run, tmp_path):
    from squad_lora.commands import generate
    from squad_lora.commands import merge as merge_adapter

    run_dir, _ = chat_run
    merged = merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged")])
    question = ["--context", "The Eiffel Tower was finished in 1889 in Paris.", "--question", "When was it finished?"]
    merged_answers, adapter_answers = (generate.main(["--adapter", d, *question]) for d in (merged, run_dir))
    assert merged_answers.keys() == adapter_answers.keys()
    for strategy, rows in merged_answers.items():  # the same answers; the scores up to float rounding
        assert_same_answers(rows, adapter_answers[strategy])
    assert generate.main(["--adapter", merged, "--prompt_format", "plain", *question]) != generate.main(
        ["--adapter", merged, *question]
    )  # the formats answer differently here, so the equality above is the format at work


# ---------------------------------------------------------------------------
# The merged dtype, and QLoRA adapters merged into the weights they were trained against
# ---------------------------------------------------------------------------


def save_random_adapter(base_dir: str, adapter_dir, target_modules=None, run_config: dict | None = None) -> str:
    """A LoRA adapter with random A and B (a visible update) saved for base_dir, and a run_config.yaml if given."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    lora = LoraConfig(r=4, init_lora_weights=False, target_modules=target_modules)
    get_peft_model(base, lora).save_pretrained(adapter_dir)
    if run_config is not None:
        with open(os.path.join(adapter_dir, "run_config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(run_config, f)
    return str(adapter_dir)


def float32_merge(adapter_dir: str):
    from squad_lora.args import ModelArguments
    from squad_lora.modeling import load_for_inference

    return load_for_inference(adapter_dir, ModelArguments(), merge=True)[0]


def test_the_merge_is_saved_in_the_bases_dtype_unless_dtype_says_otherwise(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from squad_lora.commands import merge as merge_adapter

    base_dir = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base_dir)
    adapter = save_random_adapter(tiny_model_dir, tmp_path / "adapter", ["c_attn"])
    flags = ["--model_name_or_path", str(base_dir)]
    merged = {
        dtype: load_file(
            os.path.join(
                merge_adapter.main([adapter, *flags, "--output_dir", str(tmp_path / dtype), *extra]),
                "model.safetensors",
            )
        )
        for dtype, extra in (("base", []), ("float32", ["--dtype", "float32"]))
    }
    assert {t.dtype for t in merged["base"].values()} == {torch.bfloat16}
    assert {t.dtype for t in merged["float32"].values()} == {torch.float32}
    with open(tmp_path / "base" / "README.md", encoding="utf-8") as f:
        assert "saved in: bfloat16 (the base's own dtype, from its config.json" in f.read()
    # merged in float32 and rounded once: the 16-bit weights are the float32 merge's, rounded
    for name, tensor in merged["base"].items():
        torch.testing.assert_close(tensor, merged["float32"][name].to(torch.bfloat16), rtol=0, atol=0)
    name = "transformer.h.0.attn.c_attn.weight"
    base = load_file(os.path.join(base_dir, "model.safetensors"))[name]
    assert not torch.equal(merged["base"][name], base)  # the update is in


@pytest.mark.parametrize(
    "given, base_dtype, expected",
    [(None, "bfloat16", "bfloat16"), (None, "float16", "float16"), (None, None, "float32"), ("auto", "float16", "float16"),
     ("float32", "bfloat16", "float32"), ("bfloat16", "float32", "bfloat16")],
)  # fmt: skip
def test_the_merge_dtype_is_the_bases_unless_given(given, base_dtype, expected):
    from types import SimpleNamespace

    from squad_lora.args import ModelArguments
    from squad_lora.plan import resolve_merge_plan

    plan = resolve_merge_plan(given, SimpleNamespace(dtype=base_dtype), {}, ModelArguments())
    assert plan.dtype == expected and plan.quantization == {}


QLORA_RECORD = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": "float32"}  # fmt: skip


def test_a_qlora_adapter_merges_into_the_dequantized_weights_and_answers_as_on_its_4bit_base(tiny_model_dir, tmp_path):
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from squad_lora.args import ModelArguments
    from squad_lora.commands import merge as merge_adapter
    from squad_lora.data import load_squad_file
    from squad_lora.decoding import answer_questions
    from squad_lora.modeling import load_for_inference

    adapter = save_random_adapter(tiny_model_dir, tmp_path / "qlora", ["c_attn"], QLORA_RECORD)
    merged_dir = merge_adapter.main([adapter, "--output_dir", str(tmp_path / "merged")])
    with open(os.path.join(merged_dir, "README.md"), encoding="utf-8") as f:
        assert "merged into: the dequantized 4-bit nf4 weights the adapter was trained against" in f.read()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    name = "transformer.h.0.attn.c_attn"
    on_float_base = float32_merge(adapter).get_submodule(name).weight
    # 4-bit rounding moves the weights: the merge is not the float base's
    assert (merged.get_submodule(name).weight - on_float_base).abs().max() > 1e-3

    examples, _ = load_squad_file(DEV_FILE)
    four_bit = ModelArguments(**{k: v for k, v in QLORA_RECORD.items()})
    adapter_model, tokenizer = load_for_inference(adapter, four_bit)  # the adapter on its 4-bit base, as trained
    with torch.no_grad():
        expected = answer_questions(
            adapter_model,
            tokenizer,
            examples[:12],
            answer_plan(tokenizer, adapter_model, max_new_tokens=8),
            PartialState(),
        )["greedy"]
        merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
        plan = answer_plan(merged_tokenizer, merged, max_new_tokens=8)
        got = answer_questions(merged, merged_tokenizer, examples[:12], plan, PartialState())["greedy"]
    assert [row["prediction"] for row in got] == [row["prediction"] for row in expected]


# ---------------------------------------------------------------------------
# GGUF and the Ollama Modelfile
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gguf", "f16"], "--gguf needs llama.cpp's converter: pass --llama_cpp DIR"),
        (["--gguf", "f16", "--llama_cpp", "."], r"--llama_cpp \.: no convert_hf_to_gguf.py there"),
        (["--llama_cpp", "."], "--llama_cpp is the converter for --gguf"),
    ],
)
def test_gguf_without_its_converter_is_one_error_before_anything_is_written(local_base_run, tmp_path, flags, message):
    from squad_lora.commands import merge as merge_adapter

    run_dir, _ = local_base_run
    with pytest.raises(ConfigError, match=message):
        merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged"), *flags])
    assert not os.listdir(tmp_path)


def filled(modelfile: str, context: str, question: str) -> str:
    """The prompt Ollama renders from a Modelfile's TEMPLATE for a request's system (context) and prompt."""
    (template,) = re.findall(r'^TEMPLATE """(.*?)"""$', modelfile, re.S | re.M)
    return template.replace("{{ .System }}", context).replace("{{ .Prompt }}", question)


@pytest.mark.parametrize("format_", ["plain", "chat"])
def test_the_modelfile_holds_the_runs_prompt_its_stops_and_greedy_decoding(format_, tiny_tokenizer, chat_tokenizer):
    from squad_lora.gguf import modelfile
    from squad_lora.prompt import prompt_template

    tokenizer = {"plain": tiny_tokenizer, "chat": chat_tokenizer}[format_]
    template = prompt_template(tokenizer, format_)
    stops = ["\n", tokenizer.eos_token] + ([template.end] if template.end else [])
    text = modelfile("model-f16.gguf", template, stops, 24)
    context, question = "The tower was finished in 1889.", "When was it finished?"
    assert filled(text, context, question) == template.build(context, question)
    assert text.splitlines()[1] == "FROM ./model-f16.gguf"
    assert re.findall(r'^PARAMETER stop """(.*?)"""$', text, re.S | re.M) == stops
    assert "\nPARAMETER temperature 0\n" in text and "\nPARAMETER num_predict 24\n" in text


def test_template_braces_in_a_prompt_are_text_to_ollama():
    from squad_lora.gguf import modelfile
    from squad_lora.prompt import PromptTemplate

    text = modelfile("m.gguf", PromptTemplate(head="{{ sys }} "), ["\n"], 8)
    assert 'TEMPLATE """{{ "{{" }} sys }} Context: {{ .System }}' in text


def test_a_gpt2_config_gets_the_n_ctx_llama_cpps_converter_reads():
    from transformers import GPT2Config, LlamaConfig

    from squad_lora.gguf import prepare_config

    config, llama = GPT2Config(n_positions=128), LlamaConfig()
    prepare_config(config)
    prepare_config(llama)
    assert GPT2Config.from_dict(config.to_dict()).n_ctx == 128  # saved in config.json
    assert getattr(llama, "n_ctx", None) is None


# With llama.cpp's converter (SQUAD_LORA_LLAMA_CPP, or where ../shared/tools/llama-cpp.sh builds it) and the real
# GPT-2 tokenizer (../shared/tools/offline-models.sh): the converter knows only published tokenizers' pre-tokenizers,
# not configs/tiny-gpt2's. A user's clone has neither (CI on this project's machine has both); docs/serving.md says so.
LLAMA_CPP = os.environ.get("SQUAD_LORA_LLAMA_CPP") or next(
    iter(sorted(glob.glob(os.path.expanduser("~/.cache/llama-cpp/llama_cpp_python-*/vendor/llama.cpp")))), None
)
GPT2_TOKENIZER = os.path.expanduser("~/.cache/squad-lora-models/gpt2-tokenizer")
needs_llama_cpp = pytest.mark.skipif(
    not (LLAMA_CPP and os.path.isfile(os.path.join(LLAMA_CPP, "convert_hf_to_gguf.py")))
    or not os.path.isdir(GPT2_TOKENIZER),
    reason="llama.cpp's convert_hf_to_gguf.py (set SQUAD_LORA_LLAMA_CPP to a llama.cpp tree) or the GPT-2 tokenizer "
    "(../shared/tools/offline-models.sh) is missing: the GGUF itself is not tested",
)
GGUF_TENSORS = {"gpt2": 4 + 12 * 2, "llama": 3 + 9 * 2}  # per model, and per layer of 2


@needs_llama_cpp
@pytest.mark.parametrize("architecture, gguf_type", [("gpt2", "f16"), ("llama", "f16"), ("gpt2", "q8_0")])
def test_the_gguf_holds_the_merged_weights_the_tokenizer_and_eos(architecture, gguf_type, tmp_path):
    import numpy as np
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    from squad_lora.commands import merge as merge_adapter
    from squad_lora.gguf import read_gguf

    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    torch.manual_seed(0)
    if architecture == "gpt2":
        base = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=2, n_positions=128))
    else:
        base = LlamaForCausalLM(tiny_llama_config(tokenizer))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    adapter = save_random_adapter(str(tmp_path / "base"), tmp_path / "adapter", DEFAULT_TARGETS[architecture])
    merged_dir = merge_adapter.main(
        [adapter, "--output_dir", str(tmp_path / "merged"), "--gguf", gguf_type, "--llama_cpp", LLAMA_CPP]
    )
    path = os.path.join(merged_dir, f"model-{gguf_type}.gguf")
    written = read_gguf(path)
    assert written["architecture"] == architecture
    assert len(written["tensors"]) == GGUF_TENSORS[architecture]
    assert written["tokens"] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert written["eos_token_id"] == tokenizer.eos_token_id and not written["add_bos_token"]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    # the merged attention weights, as the GGUF holds them (f16: to f16 precision; q8_0: a block of 32 to ~1%)
    name, layer = {"gpt2": ("blk.0.attn_qkv.weight", "transformer.h.0.attn.c_attn"),
                   "llama": ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj")}[architecture]  # fmt: skip
    weight = merged.get_submodule(layer).weight.detach()
    weight = weight.T if architecture == "gpt2" else weight  # GGUF rows are output features
    (tensor,) = (t for t in GGUFReader(path).tensors if t.name == name)
    if gguf_type == "f16":
        np.testing.assert_array_equal(np.asarray(tensor.data).reshape(weight.shape), weight.half().numpy())
    else:
        from gguf.quants import dequantize

        got = dequantize(tensor.data, tensor.tensor_type).reshape(weight.shape)
        np.testing.assert_allclose(got, weight.numpy(), atol=float(weight.abs().max()) / 100)
    base_weight = base.get_submodule(layer).weight.detach()
    assert not torch.allclose(weight, base_weight.T if architecture == "gpt2" else base_weight)  # the merge is in
    with open(os.path.join(merged_dir, "Modelfile"), encoding="utf-8") as f:
        assert f.read().splitlines()[1] == f"FROM ./model-{gguf_type}.gguf"
