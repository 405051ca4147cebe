"""squad_lora.serving: vLLM's verdict on an adapter (hand-built adapter configs against the rules read from vLLM),
the exact serving commands, the merged model's generation config (it stops and decodes as generate.py does), and the
model card's Serving section. Nothing here runs vLLM or TGI."""

import json

import pytest
from transformers import GPT2Config, LlamaConfig

from squad_lora import hub, serving
from squad_lora.data import PLAIN, PromptTemplate

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}


def lora(**fields) -> dict:
    """An adapter_config.json as peft writes one for a plain LoRA, with fields changed."""
    return {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none", "use_dora": False,
            "modules_to_save": None, "init_lora_weights": True, "rank_pattern": {}, **fields}  # fmt: skip


@pytest.mark.parametrize(
    "adapter_config, base_config, ok, reason, max_rank",
    [
        # GPT-2's class in vLLM implements SupportsPP only: no LoRA, whatever the adapter
        (lora(target_modules=["c_attn"]), GPT2Config(), False, "GPT2LMHeadModel: vLLM serves no LoRA", 16),
        (lora(), LLAMA, True, None, 16),
        (lora(), LlamaConfig(), True, None, 16),  # no "architectures": the class transformers maps llama to
        (lora(use_dora=True), LLAMA, False, "use_dora: vLLM refuses DoRA", 16),
        (lora(modules_to_save=["lm_head"]), LLAMA, False, "modules_to_save ['lm_head']", 16),
        (lora(r=32), LLAMA, True, None, 32),  # above the default 16: needs --max-lora-rank 32
        (lora(r=24), LLAMA, True, None, 32),  # the smallest allowed value above the rank
        (lora(r=8, rank_pattern={"q_proj": 64}), LLAMA, True, None, 64),
        (lora(r=1024), LLAMA, False, "rank 1024: above vLLM's largest --max-lora-rank, 512", 512),
        (lora(init_lora_weights="pissa"), LLAMA, False, "init_lora_weights 'pissa'", 16),
        (lora(init_lora_weights="gaussian"), LLAMA, True, None, 16),
        (lora(bias="lora_only"), LLAMA, False, "bias 'lora_only'", 16),
        (lora(), {"architectures": ["BloomForCausalLM"]}, False, "BloomForCausalLM: vLLM serves no LoRA", 16),
        (lora(), None, False, "architecture is unknown", 16),
    ],
)
def test_the_vllm_verdict_follows_vllms_rules(adapter_config, base_config, ok, reason, max_rank):
    got_ok, reasons, got_rank = serving.vllm_lora_support(adapter_config, base_config)
    assert (got_ok, got_rank) == (ok, max_rank)
    if ok:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reason in reasons[0]


def test_every_refusal_is_named():
    ok, reasons, _ = serving.vllm_lora_support(lora(use_dora=True, modules_to_save=["lm_head"]), GPT2Config())
    assert not ok and [r.split(":")[0] for r in reasons] == [
        "GPT2LMHeadModel",
        "use_dora",
        "modules_to_save ['lm_head']",
    ]


def test_a_pissa_run_is_judged_as_peft_saves_it():
    # saved converted for the original base: rank 2r, init_lora_weights true
    config = serving.adapter_config_of_run({"lora_r": 16, "init_lora_weights": "pissa_niter_4", "use_dora": False})
    assert config["r"] == 32 and config["init_lora_weights"] is True
    assert serving.vllm_lora_support(config, LLAMA) == (True, [], 32)
    assert serving.adapter_config_of_run({"lora_r": 0}) is None


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
    verdict = serving.vllm_lora_support(lora(), GPT2Config())
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

    import generate
    import merge_adapter
    from squad_lora.data import prediction_from_generation
    from squad_lora.decoding import stop_token_ids

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

    import merge_adapter
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
