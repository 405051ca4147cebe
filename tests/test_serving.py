"""squad_lora.serving: vLLM's verdict on an adapter (its rules compared with vLLM's own source where vllm is installed,
and the adapter configs it judges with those peft writes), the exact serving commands, the merged model's generation
config (it stops and decodes as generate.py does), and the model card's Serving section. Nothing here runs vLLM or TGI.
"""

import dataclasses
import importlib.util
import json
import os
import tempfile
import typing

import pytest
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig

from repo_paths import TINY_GPT2_DIR
from squad_lora import hub, serving
from squad_lora.args import LoraArguments
from squad_lora.modeling import apply_lora, lora_summary, save_for_original_base
from squad_lora.prompt import PLAIN, PromptTemplate

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}

# vLLM is not installed with this project (it needs its own torch and transformers builds): the tests that compare
# serving.py's copies of its rules with vLLM's own run where it is, and are skipped, saying so, elsewhere
needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vllm is not installed: serving.py's copies of vLLM's rules (read from vLLM 0.34.0's source) are not "
    "compared with vLLM's own here",
)


def peft_adapter_config(**fields) -> dict:
    """The adapter_config.json peft writes for a LoRA with these LoraConfig fields (r 8, alpha 16 unless given)."""
    from peft import LoraConfig

    config = LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], **fields})
    with tempfile.TemporaryDirectory() as directory:
        config.save_pretrained(directory)
        with open(os.path.join(directory, "adapter_config.json"), encoding="utf-8") as f:
            return json.load(f)


# The verdicts on hand-picked adapters, as documentation of what serving.py decides; that its rules are vLLM's is
# checked against vLLM's source below (test_..._are_vllms), where vllm is installed.
@pytest.mark.parametrize(
    "fields, base_config, ok, reason, max_rank",
    [
        # GPT-2's class in vLLM implements SupportsPP only: no LoRA, whatever the adapter
        ({"target_modules": ["c_attn"]}, GPT2Config(), False, "GPT2LMHeadModel: vLLM serves no LoRA", 16),
        ({}, LLAMA, True, None, 16),
        ({}, LlamaConfig(), True, None, 16),  # no "architectures": the class transformers maps llama to
        ({"use_dora": True}, LLAMA, False, "use_dora: vLLM refuses DoRA", 16),
        ({"modules_to_save": ["lm_head"]}, LLAMA, False, "modules_to_save ['lm_head']", 16),
        ({"r": 32}, LLAMA, True, None, 32),  # above the default 16: needs --max-lora-rank 32
        ({"r": 24}, LLAMA, True, None, 32),  # the smallest allowed value above the rank
        ({"r": 8, "rank_pattern": {"q_proj": 64}}, LLAMA, True, None, 64),
        ({"r": 1024}, LLAMA, False, "rank 1024: above vLLM's largest --max-lora-rank, 512", 512),
        ({"init_lora_weights": "pissa"}, LLAMA, False, "init_lora_weights 'pissa'", 16),
        ({"init_lora_weights": "gaussian"}, LLAMA, True, None, 16),
        ({"bias": "lora_only"}, LLAMA, False, "bias 'lora_only'", 16),
        ({}, {"architectures": ["BloomForCausalLM"]}, False, "BloomForCausalLM: vLLM serves no LoRA", 16),
        ({}, None, False, "architecture is unknown", 16),
    ],
)
def test_the_vllm_verdict_on_adapters_peft_writes(fields, base_config, ok, reason, max_rank):
    got_ok, reasons, got_rank = serving.vllm_lora_support(peft_adapter_config(**fields), base_config)
    assert (got_ok, got_rank) == (ok, max_rank)
    if ok:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reason in reasons[0]


# ---------------------------------------------------------------------------
# serving.py's copies of vLLM's rules, against vLLM's own (where vllm is installed)
# ---------------------------------------------------------------------------


def _peft_choices(field: str) -> list:
    """The string values peft's LoraConfig declares for a field (its Literal type), as peft names them."""
    from peft import LoraConfig

    hint = typing.get_type_hints(LoraConfig)[field]
    literals = [hint] if typing.get_origin(hint) is typing.Literal else typing.get_args(hint)
    return [value for literal in literals if typing.get_origin(literal) is typing.Literal for value in literal.__args__]


def _adapters_to_judge() -> list[dict]:
    """LoraConfig fields covering every rule serving.py copies from vLLM: each init_lora_weights and bias value peft
    declares, DoRA, lora_bias, modules_to_save, ranks about the allowed --max-lora-rank values."""
    inits = [init.replace("_[number of iters]", "_4") for init in _peft_choices("init_lora_weights")]
    inits = [init for init in inits if init != "loftq"]  # LoftQ's config needs scipy, not installed with the project
    return [
        *({"init_lora_weights": init} for init in [True, False, *inits]),
        *({"bias": bias} for bias in _peft_choices("bias")),
        {"use_dora": True},
        {"lora_bias": True},
        *({"modules_to_save": modules} for modules in (["lm_head"], ["score"], ["classifier"], ["score", "lm_head"])),
        *({"r": r} for r in (1, 16, 17, 320, 500, 512, 513)),
        {"r": 8, "rank_pattern": {"q_proj": 64}},
        {"r": 8, "rank_pattern": {"q_proj": 600}},
    ]


@needs_vllm
def test_the_max_lora_rank_rules_are_vllms():
    from vllm.config.lora import LoRAConfig, MaxLoRARanks

    assert typing.get_args(MaxLoRARanks) == serving.VLLM_MAX_LORA_RANKS
    default = {f.name: f.default for f in dataclasses.fields(LoRAConfig)}["max_lora_rank"]
    assert default == serving.VLLM_DEFAULT_MAX_LORA_RANK


@needs_vllm
@pytest.mark.parametrize("fields", _adapters_to_judge(), ids=lambda fields: json.dumps(fields))
def test_vllm_takes_the_adapters_serving_accepts_and_refuses_the_others(fields):
    """vLLM's own check (PEFTHelper.validate_legal, as its LoRA loader runs it) on the adapter config peft writes:
    it passes with the --max-lora-rank serving.py's command passes, and fails, at vLLM's largest rank, for every
    adapter serving.py refuses."""
    from vllm.config.lora import LoRAConfig, MaxLoRARanks
    from vllm.lora.peft_helper import PEFTHelper

    adapter_config = peft_adapter_config(**fields)
    ok, reasons, max_rank = serving.vllm_lora_support(adapter_config, LLAMA)  # a base vLLM serves LoRA on
    helper = PEFTHelper.from_dict(adapter_config)
    if ok:
        helper.validate_legal(LoRAConfig(max_lora_rank=max_rank))
    else:
        with pytest.raises(ValueError):
            helper.validate_legal(LoRAConfig(max_lora_rank=max(typing.get_args(MaxLoRARanks))))


@needs_vllm
def test_the_lora_architectures_are_vllms():
    """serving.VLLM_LORA_ARCHITECTURES against vLLM's model registry, inspected as vLLM inspects it (SupportsLoRA):
    every architecture listed supports LoRA in vLLM, and every causal LM transformers loads that vLLM serves LoRA
    on is listed."""
    import vllm
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from vllm.model_executor.models.registry import ModelRegistry

    ModelRegistry.fill_model_info_cache()  # every model class inspected in one subprocess, as vLLM does
    registered = set(ModelRegistry.get_supported_archs())

    def lora_in_vllm(architecture: str) -> bool | None:
        """Whether vLLM's class for it supports LoRA; None where it is not registered or failed to import."""
        info = ModelRegistry._try_inspect_model_cls(architecture)
        return None if info is None else info.supports_lora

    # a registered class that fails to import here (one needing a vision stack) is not evidence either way
    listed_wrongly = {
        architecture: "not registered" if architecture not in registered else "its class supports no LoRA"
        for architecture in sorted(serving.VLLM_LORA_ARCHITECTURES)
        if architecture not in registered or lora_in_vllm(architecture) is False
    }
    causal_lms = {
        name
        for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
        for name in ([names] if isinstance(names, str) else names)
    }
    missing = sorted(
        architecture
        for architecture in registered & causal_lms
        if architecture not in serving.VLLM_LORA_ARCHITECTURES and lora_in_vllm(architecture)
    )
    assert not listed_wrongly and not missing, (
        f"listed as LoRA in serving.py, not in vLLM {vllm.__version__}: {listed_wrongly}; "
        f"LoRA in vLLM, not listed: {missing}"
    )


def test_every_refusal_is_named():
    adapter_config = peft_adapter_config(use_dora=True, modules_to_save=["lm_head"])
    ok, reasons, _ = serving.vllm_lora_support(adapter_config, GPT2Config())
    assert not ok and [r.split(":")[0] for r in reasons] == [
        "GPT2LMHeadModel",
        "use_dora",
        "modules_to_save ['lm_head']",
    ]


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"init_lora_weights": "pissa_niter_2"},  # saved converted for the original base: rank 2r, init true
        {"init_lora_weights": "gaussian"},
        {"init_lora_weights": "false"},
        {"use_dora": True},
        {"lora_modules_to_save": ["lm_head"]},
        {"lora_bias": "lora_only"},
        {"lora_r": 16, "use_rslora": True},
    ],
    ids=lambda flags: json.dumps(flags),
)
def test_the_card_judges_the_adapter_config_peft_saves_for_the_run(flags, tmp_path):
    """The model card judges a run by the adapter config adapter_config_of_run makes of its summary's "lora" entry;
    vLLM reads the adapter_config.json peft saved for it (as run_qa_lora.py saves it): the same fields, the same
    verdict."""
    lora_args = LoraArguments(**{"lora_r": 4, **flags})
    model = apply_lora(GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR)), lora_args)
    model.save_pretrained(tmp_path)
    save_for_original_base(model, str(tmp_path))
    with open(tmp_path / "adapter_config.json", encoding="utf-8") as f:
        saved = json.load(f)
    from_run = serving.adapter_config_of_run(json.loads(json.dumps(lora_summary(lora_args, model))))
    for field, value in from_run.items():
        if field == "init_lora_weights" and isinstance(saved[field], bool):
            assert value is True, field  # true and false alike: vLLM checks only a named init
        else:
            assert value == saved[field], field
    assert serving.vllm_lora_support(from_run, LLAMA) == serving.vllm_lora_support(saved, LLAMA)
    assert serving.adapter_config_of_run({"lora_r": 0}) is None  # a full fine-tune has no adapter


def test_the_commands_for_an_adapter_vllm_serves():
    commands = serving.serve_commands(
        "HuggingFaceTB/SmolLM2-135M", "/runs/r32", "/runs/r32-merged", PLAIN, (True, [], 32), max_new_tokens=24
    )
    assert commands.vllm_lora == (
        "vllm serve HuggingFaceTB/SmolLM2-135M --enable-lora --lora-modules squad-lora=/runs/r32 --max-lora-rank 32 "
        """--override-generation-config '{"temperature": 0, "max_new_tokens": 24}'"""
    )
    assert commands.vllm_merged == """vllm serve /runs/r32-merged --override-generation-config '{"temperature": 0}'"""
    assert commands.tgi_lora == (
        "text-generation-launcher --model-id HuggingFaceTB/SmolLM2-135M --lora-adapters squad-lora=/runs/r32"
    )
    assert commands.tgi_merged == "text-generation-launcher --model-id /runs/r32-merged"
    assert commands.prompt == "Context: {context}\nQuestion: {question}\nAnswer:"
    assert commands.request == {
        "model": "squad-lora",
        "prompt": "Context: The Eiffel Tower was finished in 1889 in Paris.\nQuestion: When was it finished?\nAnswer:",
        "max_tokens": 24,
        "stop": ["\n"],
        "add_special_tokens": False,
        "temperature": 0,
    }


def test_the_commands_for_an_adapter_vllm_refuses_serve_the_merged_model():
    verdict = serving.vllm_lora_support(peft_adapter_config(), GPT2Config())
    chat = PromptTemplate("chat", "<|user|>", "<|end|>\n<|assistant|>", "<|end|>")
    commands = serving.serve_commands("gpt2", "run", "merged dir", chat, verdict, strategy="top_p", end_token_id=7)
    assert commands.vllm_lora is None and commands.vllm_reasons == tuple(verdict[1])
    assert commands.vllm_merged == "vllm serve 'merged dir'"  # sampling: the generation config's own settings
    assert commands.request["model"] == "merged dir" and commands.request["stop_token_ids"] == [7]
    assert "temperature" not in commands.request and commands.notes
    assert commands.prompt == "<|user|>Context: {context}\nQuestion: {question}<|end|>\n<|assistant|>"
    report = serving.serving_report(commands, chat)
    assert "vLLM refuses the LoRA adapter (serve the merged model):\n    - GPT2LMHeadModel" in report
    assert "the answer ends at <|end|> (or EOS) or the first newline" in report


def test_the_merged_generation_config_stops_and_answers_as_generate_does(local_base_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from squad_lora.commands import generate
    from squad_lora.commands import merge as merge_adapter
    from squad_lora.decoding import stop_token_ids
    from squad_lora.prompt import prediction_from_generation

    run_dir, _ = local_base_run
    merged_dir = merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged")])
    config = GenerationConfig.from_pretrained(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    newline_ids = stop_token_ids(tokenizer)[1:]
    assert newline_ids and config.eos_token_id == [tokenizer.eos_token_id, *newline_ids]  # plain: the end is EOS
    assert (config.do_sample, config.num_beams, config.max_new_tokens) == (False, 1, 32)  # the run's: greedy, 32

    context, question = "The Eiffel Tower was finished in 1889 in Paris.", "When was the Eiffel Tower finished?"
    expected = generate.main(["--adapter", run_dir, "--context", context, "--question", question])["greedy"]
    model = AutoModelForCausalLM.from_pretrained(merged_dir)  # its generation_config.json is the default
    inputs = tokenizer(PLAIN.build(context, question), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert prediction_from_generation(answer) == expected[0]["prediction"]


def test_the_model_card_says_how_to_serve(tiny_llama_dir, tiny_model_dir):
    summary = {
        "run_name": "r32", "base_model": tiny_llama_dir, "dataset": "squad", "parameters": "trainable params: 1",
        "lora": {"lora_r": 32, "lora_alpha": 64, "lora_dropout": 0.0, "lora_bias": "none", "use_dora": False},
        "hub_model_id": "someone/r32", "base_model_id": "org/tiny-llama",
    }  # fmt: skip
    text = hub.build_model_card(summary, {"max_new_tokens": 16}).text
    section = text.split("## Serving\n", 1)[1].split("\n## ", 1)[0]
    assert "vllm serve org/tiny-llama --enable-lora --lora-modules squad-lora=someone/r32 --max-lora-rank 32" in section
    assert json.dumps({"temperature": 0, "max_new_tokens": 16}) in section
    assert "vllm serve MERGED" in section and "text-generation-launcher --model-id MERGED" in section
    assert "have not been run against a server" in section

    gpt2 = hub.build_model_card(dict(summary, base_model=tiny_model_dir, base_model_id="gpt2"), {}).text
    assert "vLLM does not serve this adapter as a LoRA; serve the merged model:\n\n- GPT2LMHeadModel" in gpt2
    full = hub.build_model_card(dict(summary, lora={"lora_r": 0}), {}).text
    assert "A full fine-tune, served as it is:\n\n```bash\nvllm serve someone/r32" in full


def test_a_merged_chat_model_also_stops_at_its_end_of_turn(chat_run, tmp_path, caplog):
    from transformers import AutoTokenizer, GenerationConfig

    from squad_lora.commands import merge as merge_adapter
    from squad_lora.decoding import stop_token_ids

    run_dir, _ = chat_run
    with caplog.at_level("INFO", logger="merge_adapter"):
        merged_dir = merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged")])
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_id != tokenizer.eos_token_id
    assert GenerationConfig.from_pretrained(merged_dir).eos_token_id == [*stop_token_ids(tokenizer), end_id]
    report = caplog.text
    assert f'"stop_token_ids": [{end_id}]' in report and "prompt (chat): '<|im_start|>system" in report
    assert "the answer ends at <|im_end|> (or EOS) or the first newline" in report
