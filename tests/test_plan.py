"""squad_lora.plan: every auto and cross-flag rule settled once, raised together, recorded, and used as recorded."""

import json
import logging
import os
import re

import pytest
from transformers import DataCollatorForSeq2Seq, GPT2Config, LlamaConfig

from builders import answer_plan, tiny_run_args, train_plan, training_args
from repo_paths import DEV_FILE, TINY_GPT2_DIR
from squad_lora import decoding
from squad_lora.collators import PackingCollator
from squad_lora.commands import generate
from squad_lora.commands import train as run_qa_lora
from squad_lora.errors import ConfigError, SquadLoraError
from squad_lora.plan import default_attention, model_max_length
from squad_lora.prompt import min_prompt_tokens

TINY_CONFIG = GPT2Config.from_pretrained(TINY_GPT2_DIR)  # n_positions 512


def test_every_problem_is_raised_at_once(tiny_tokenizer, tmp_path):
    args = training_args(tmp_path)
    with pytest.raises(ConfigError) as info:
        train_plan(
            tiny_tokenizer,
            TINY_CONFIG,
            args,
            prompt_format="chat",  # the tiny GPT-2 tokenizer has no chat template
            max_seq_length=4096,
            max_new_tokens=600,
            share_context="true",
            attn_implementation="flash_attention_2",
        )
    message = str(info.value)
    for fault in ("--prompt_format chat", "--max_seq_length 4096", "--max_new_tokens 600", "--share_context true"):
        assert fault in message


def test_the_plan_settles_every_auto_and_leaves_the_arguments_as_parsed(tiny_tokenizer, tmp_path):
    args = training_args(tmp_path)
    plan = train_plan(tiny_tokenizer, TINY_CONFIG, args)
    assert args.train_sampling_strategy == "auto" and args.packing == "auto"  # nothing mutated
    assert (plan.share_context, plan.packing, plan.train_sampling_strategy) == (True, False, "random")
    assert plan.attn_implementation == "sdpa" and plan.labelled_loss
    assert plan.max_seq_length == 512 == model_max_length(TINY_CONFIG, tiny_tokenizer)
    assert plan.answer.share_context and plan.answer.batch_size == 64 and plan.answer.max_prompt_tokens == 512 - 32
    assert set(plan.reasons) == {"share_context", "batches", "loss", "max_seq_length"}
    trainer_args = plan.trainer_arguments(args)
    assert (
        trainer_args is not args and trainer_args.train_sampling_strategy == "random" and not trainer_args.push_to_hub
    )
    unshared = train_plan(tiny_tokenizer, TINY_CONFIG, args, share_context="false", generation_batch_size=8)
    assert (unshared.share_context, unshared.train_sampling_strategy, unshared.answer.batch_size) == (
        False,
        "group_by_length",
        8,
    )
    # auto answers a context's lone question unshared, at the unshared batch size; true shares it as asked
    assert not plan.answer.share_lone_questions and plan.answer.unshared_batch_size == 16
    assert plan.answer.reasons["share_lone_questions"] == "off: a context with one question is answered unshared"
    assert train_plan(tiny_tokenizer, TINY_CONFIG, args, share_context="true").answer.share_lone_questions
    assert "share_lone_questions" not in unshared.answer.reasons and unshared.answer.unshared_batch_size == 8
    compiled = train_plan(tiny_tokenizer, TINY_CONFIG, training_args(tmp_path, torch_compile=True))
    assert not compiled.labelled_loss and "--torch_compile" in compiled.reasons["loss"]


def test_attention_is_the_requested_one_or_the_architectures_default():
    assert default_attention(TINY_CONFIG, None) == "sdpa"
    assert default_attention(LlamaConfig(), "eager") == "eager"
    loaded = GPT2Config.from_pretrained(TINY_GPT2_DIR)
    loaded._attn_implementation = "eager"  # a loaded model's config says what it runs
    assert default_attention(loaded, None) == "eager"


def test_pissa_under_fsdp_is_refused_by_the_plan(tiny_tokenizer, tmp_path, monkeypatch):
    args = training_args(tmp_path)  # parsed on a machine with GPUs, where FSDP passes the arguments' own checks
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # as `accelerate launch` with an FSDP config sets it
    with pytest.raises(ConfigError, match="--init_lora_weights pissa cannot be used with FSDP"):
        train_plan(tiny_tokenizer, TINY_CONFIG, args, init_lora_weights="pissa")
    assert train_plan(tiny_tokenizer, TINY_CONFIG, args).share_context


def test_an_answer_plan_refuses_what_cannot_work_at_once(tiny_tokenizer):
    with pytest.raises(ConfigError) as info:
        answer_plan(
            tiny_tokenizer,
            TINY_CONFIG,
            prompt_format="chat",
            share_context="true",
            attn_implementation="flash_attention_2",
        )
    assert "--prompt_format chat" in str(info.value) and "--share_context true" in str(info.value)
    plan = answer_plan(tiny_tokenizer, TINY_CONFIG, strategies=["greedy", "beam"], num_beams=3)
    assert list(plan.generation_configs) == ["greedy", "beam"] and plan.generation_configs["beam"].num_beams == 3
    assert tiny_tokenizer.eos_token_id in plan.stop_ids


def test_the_plan_decides_the_windows_of_long_contexts_once(tiny_tokenizer):
    plan = answer_plan(tiny_tokenizer, TINY_CONFIG, max_new_tokens=32)
    template = min_prompt_tokens(tiny_tokenizer)  # 26 with the tiny tokenizer
    # what the model's 512 positions leave after the answer, the template and 64 tokens of question
    assert plan.max_context_tokens == 512 - 32 - template - 64 == 390
    assert plan.doc_stride == 390 // 4  # a quarter of the window, less than run_qa.py's 128
    assert {"max_context_tokens", "doc_stride"} <= set(plan.reasons)
    assert plan.as_dict()["max_context_tokens"] == plan.max_context_tokens  # recorded in run_summary.json's plan
    small = answer_plan(tiny_tokenizer, GPT2Config.from_pretrained(TINY_GPT2_DIR, n_positions=64), max_new_tokens=8)
    assert small.max_context_tokens == (64 - 8 - template) // 2 == 15  # the other half left for a question
    given = answer_plan(tiny_tokenizer, TINY_CONFIG, max_context_tokens=100, doc_stride=20)
    assert (given.max_context_tokens, given.doc_stride) == (100, 20) and "max_context_tokens" not in given.reasons
    with pytest.raises(ConfigError) as info:
        answer_plan(tiny_tokenizer, TINY_CONFIG, max_context_tokens=500, doc_stride=500)
    assert "--max_context_tokens 500: more than the 454 context tokens" in str(info.value)
    assert "--doc_stride 500: must be less than the window of 500 context tokens" in str(info.value)
    with pytest.raises(ConfigError, match="--doc_stride must be >= 0, got -1"):
        answer_plan(tiny_tokenizer, TINY_CONFIG, doc_stride=-1)


def recording_trainer(monkeypatch) -> list:
    """The QATrainer run_qa_lora.main builds, and the plans its evaluation answered with."""
    seen = {"trainers": [], "answer_plans": []}
    original_trainer, original_answer = run_qa_lora.QATrainer, decoding.answer_questions

    class Recording(original_trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["trainers"].append(self)

    def recording_answer(model, tokenizer, examples, plan, *args, **kwargs):
        seen["answer_plans"].append(plan)
        return original_answer(model, tokenizer, examples, plan, *args, **kwargs)

    monkeypatch.setattr(run_qa_lora, "QATrainer", Recording)
    monkeypatch.setattr(decoding, "answer_questions", recording_answer)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("flags", [(), ("--share_context", "false", "--packing", "true")])
def test_a_runs_recorded_plan_is_what_collator_trainer_and_generation_used(
    flags, tiny_model_dir, tmp_path, monkeypatch, caplog
):
    seen = recording_trainer(monkeypatch)
    caplog.set_level(logging.INFO, logger="run_qa_lora")
    argv = tiny_run_args(
        tiny_model_dir, tmp_path / "run", "--eval_strategy", "steps", "--eval_steps", "2",
        "--eval_generation_samples", "6", "--max_new_tokens", "4", *flags,
    )  # fmt: skip
    summary = run_qa_lora.main(argv)
    with open(tmp_path / "run" / "run_summary.json", encoding="utf-8") as f:
        recorded = json.load(f)["plan"]
    assert recorded == json.loads(json.dumps(summary["plan"]))
    (trainer,) = seen["trainers"]
    assert json.loads(json.dumps(trainer.plan.as_dict())) == recorded  # the trainer's plan is the recorded one
    # the collator, the batch order and the loss the trainer ran with are the recorded ones
    packed = isinstance(trainer.data_collator, PackingCollator)
    assert packed == recorded["packing"]
    assert packed or isinstance(trainer.data_collator, DataCollatorForSeq2Seq)
    assert trainer.args.train_sampling_strategy == recorded["train_sampling_strategy"]
    # the data built the sharing columns where the plan shares, for training only (evaluation batches are padded)
    assert trainer.train_dataset.column_names.count("shared_length") == int(recorded["share_context"])
    assert trainer.train_dataset.column_names.count("context_key") == int(recorded["share_context"])
    assert {"shared_length", "context_key"}.isdisjoint(trainer.eval_dataset.column_names)
    assert trainer.model.config._attn_implementation == recorded["attn_implementation"]
    # every evaluation answered with the recorded answer plan, and the log said the plan once
    assert seen["answer_plans"] and all(plan is trainer.plan.answer for plan in seen["answer_plans"])
    assert json.loads(json.dumps(seen["answer_plans"][0].as_dict())) == recorded["answer"]
    assert sum("plan: " in record.getMessage() for record in caplog.records) == 1

    # generate.py on the run: the run's prompt and sharing, and the plan it logs is the one it answers with
    answered = []
    original = generate.answer_questions
    monkeypatch.setattr(
        generate,
        "answer_questions",
        lambda model, tok, ex, plan, *a: answered.append(plan) or original(model, tok, ex, plan, *a),
    )
    generate.main(["--adapter", str(tmp_path / "run"), "--validation_file", DEV_FILE, "--max_eval_samples", "6",
                   "--output_dir", str(tmp_path / "preds"), "--disable_tqdm", "true"])  # fmt: skip
    (plan,) = answered
    assert plan.template.as_dict() == recorded["answer"]["template"]
    assert plan.share_context == recorded["share_context"]
    assert plan.max_new_tokens == 4  # the run's recorded decoding


@pytest.mark.parametrize(
    "flags, error",
    [
        (["--init_lora_weights", "olora"], "--init_lora_weights olora: peft's OLoRA does not handle"),
        (["--lora_target_modules", "q_proj"], "--lora_target_modules q_proj: no such module in gpt2"),
    ],
)
def test_what_lora_cannot_wrap_is_refused_before_any_weights_load(flags, error, tiny_model_dir, tmp_path, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("the base's weights were loaded before the refusal")

    monkeypatch.setattr(run_qa_lora, "load_base_model", no_weights)
    with pytest.raises(SquadLoraError, match=re.escape(error)):
        run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / "run", *flags))
    assert not os.path.exists(tmp_path / "run" / "adapter_model.safetensors")
