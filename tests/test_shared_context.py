"""Shared-context batching: a context read once for all of its questions gives exactly what separate examples give.

The oracle everywhere is the unshared path: the same questions as separate, padded examples (training) or
separate left-padded prompts (generation). Models are random tiny GPT-2s (absolute positions) and tiny
Llamas (rotary positions, grouped-query attention) with configs/tiny-gpt2's tokenizer.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from builders import generate_with, train_plan
from fakes import free_port
from repo_paths import DEV_FILE, DEV_V2_FILE, REPO_ROOT, TINY_GPT2_DIR, TRAIN_FILE
from run_outputs import assert_same_answers
from squad_lora import decoding
from squad_lora.args import DecodingArguments, LoraArguments
from squad_lora.commands import generate
from squad_lora.commands import train as run_qa_lora
from squad_lora.data import load_squad_file
from squad_lora.decoding import context_shards, generation_config, question_batches, stop_token_ids
from squad_lora.errors import ConfigError
from squad_lora.features import build_train_features
from squad_lora.loss import labelled_positions_loss
from squad_lora.modeling import apply_lora
from squad_lora.prompt import PLAIN, EncodedQuestions, build_prompts, prompt_template, shared_prefix_lengths
from squad_lora.shared_context import (
    ContextBatchSampler,
    SharedContextCollator,
    branch_row,
    decide_share_context,
)
from squad_lora.trainer import QATrainer


def feature_columns(rows: list[dict], tokenizer, max_seq_length: int = 512, template=PLAIN) -> dict:
    batch = {key: [row[key] for row in rows] for key in ("context", "question", "answers")}
    return build_train_features(batch, tokenizer, max_seq_length, template, sharing=True)


def training_features(rows, tokenizer, template=PLAIN) -> list[dict]:
    columns = feature_columns(rows, tokenizer, template=template)
    return [
        {"input_ids": ids, "labels": labels, "shared_length": n}
        for ids, labels, n in zip(columns["input_ids"], columns["labels"], columns["shared_length"])
    ]


def tiny_model(architecture: str, tokenizer, **config):
    torch.manual_seed(0)
    if architecture == "gpt2":
        # initializer_range 0.2: greedy answers then differ from prompt to prompt (at 0.02 they are all alike)
        return GPT2LMHeadModel(
            GPT2Config.from_pretrained(TINY_GPT2_DIR, initializer_range=0.2, vocab_size=len(tokenizer), **config)
        )
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            initializer_range=0.2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **config,
        )
    )


# ---------------------------------------------------------------------------
# The prompt's two parts and the shared tokens
# ---------------------------------------------------------------------------


def test_the_prompt_is_its_context_part_then_its_question_part():
    assert PLAIN.build(" Some context. ", " Who? ") == PLAIN.context_part(" Some context. ") + PLAIN.question_part(
        " Who? "
    )
    assert PLAIN.context_part("Some context.") == "Context: Some context.\nQuestion:"
    assert PLAIN.question_part("Who?") == " Who?\nAnswer:"


@pytest.mark.parametrize("path", [DEV_FILE, TRAIN_FILE, DEV_V2_FILE])
def test_shared_tokens_are_the_context_part_tokenized_alone(tiny_tokenizer, path):
    rows, _ = load_squad_file(path)
    prompts, _ = build_prompts(rows, tiny_tokenizer, 10_000)
    lengths = shared_prefix_lengths(tiny_tokenizer, [row["question"] for row in rows], prompts)
    for row, prompt, n in zip(rows, prompts, lengths):
        tokenize = lambda text: tiny_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        assert prompt[:n] == tokenize(PLAIN.context_part(row["context"])), row["id"]
        assert prompt[n:] == tokenize(PLAIN.question_part(row["question"])), row["id"]


def test_a_prompt_whose_question_part_does_not_tokenize_apart_shares_nothing(tiny_tokenizer):
    prompt = tiny_tokenizer(PLAIN.build("Some context.", "Who?"), add_special_tokens=False)["input_ids"]
    (n,) = shared_prefix_lengths(tiny_tokenizer, ["Who?"], [prompt])
    assert 0 < n < len(prompt)
    merged = prompt[: n - 1] + [prompt[n - 1] + 1] + prompt[n + 1 :]  # as if the boundary's two tokens were one
    assert shared_prefix_lengths(tiny_tokenizer, ["Who?"], [merged]) == [0]


def test_questions_share_only_identical_context_windows(tiny_tokenizer):
    filler = "For centuries its wealth came from the wool trade. "
    context = "Zorvik Telan was the harbour master. " + filler * 12 + "The river is the Ilvar."
    rows = [
        {"context": context, "question": q, "answers": {"text": [a], "answer_start": [context.index(a)]}}
        for q, a in (
            ("Who was the harbour master?", "Zorvik Telan"),
            ("Who was the harbour master?", "Zorvik Telan"),  # a window depends on its question's length too
            ("What is the river?", "Ilvar"),
        )
    ]
    whole = feature_columns(rows, tiny_tokenizer)
    assert whole["was_cut"] == [False] * 3 and len(set(whole["context_key"])) == 1  # one context, one key
    cut = feature_columns(rows, tiny_tokenizer, max_seq_length=64)  # windows around each answer
    assert cut["was_cut"] == [True] * 3
    windows = [ids[:n] for ids, n in zip(cut["input_ids"], cut["shared_length"])]
    assert windows[0] == windows[1] != windows[2]  # both answers at the start: the same window
    assert cut["context_key"][0] == cut["context_key"][1] != cut["context_key"][2]


def test_unanswerable_questions_share_their_context(tiny_tokenizer):
    rows, _ = load_squad_file(DEV_V2_FILE)
    columns = feature_columns(rows, tiny_tokenizer)
    keys = {}
    for row, key, n in zip(rows, columns["context_key"], columns["shared_length"]):
        assert n > 0
        keys.setdefault(row["context"], set()).add(key)
    assert all(len(context_keys) == 1 for context_keys in keys.values())
    assert any(not row["answers"]["text"] for row in rows)  # the sample holds unanswerable questions


# ---------------------------------------------------------------------------
# Training rows: layout, then loss and gradients against separate examples
# ---------------------------------------------------------------------------


def test_a_branch_sees_the_shared_tokens_and_its_own_earlier_tokens_only():
    ids, labels, positions, mask = branch_row([1, 2], [([3, 4], [-100, 4]), ([5, 6, 7], [-100, 6, 7])])
    assert ids == [1, 2, 3, 4, 5, 6, 7]
    assert positions == [0, 1, 2, 3, 2, 3, 4]  # each branch continues after the shared tokens
    assert labels == [-100, -100, -100, 4, -100, 6, 7]
    assert mask.int().tolist() == [
        [1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 1, 1, 1],
    ]


def test_collator_makes_one_padded_row_per_context_and_padding_sees_no_one(tiny_tokenizer):
    rows, _ = load_squad_file(DEV_FILE)
    features = training_features(rows[:8], tiny_tokenizer)  # a context of 6 questions, then 2 of the next
    batch = SharedContextCollator(tiny_tokenizer.pad_token_id)(features)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].shape[:2] == (2, 1)
    real = batch["attention_mask"][:, 0].diagonal(dim1=-2, dim2=-1)
    lengths = [f["shared_length"] for f in features]
    expected = [
        lengths[0] + sum(len(f["input_ids"]) - lengths[0] for f in features[:6]),
        lengths[6] + sum(len(f["input_ids"]) - lengths[6] for f in features[6:]),
    ]
    assert real.sum(1).tolist() == expected and expected[1] < expected[0]
    assert not real[1, expected[1] :].any() and (batch["labels"][1, expected[1] :] == -100).all()  # padded row
    assert (batch["labels"] != -100).sum() == sum((torch.tensor(f["labels"]) != -100).sum() for f in features)


def lora_model(architecture: str, tokenizer):
    model = apply_lora(tiny_model(architecture, tokenizer), LoraArguments(lora_r=4, lora_dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # B = 0 at init would leave A without a gradient
    return model.eval()  # dropout off; gradients still flow


def loss_and_gradients(model, batches, loss_fn) -> tuple:
    """Summed loss and LoRA gradients over micro-batches (gradient accumulation)."""
    model.zero_grad()
    total = 0
    for batch in batches:
        loss = loss_fn(batch)
        loss.backward()
        total = total + loss.detach()
    return total, {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_same(actual, expected):
    """Equal to 1e-5 of each tensor's scale. The two paths add the same terms in another order (other sequence
    lengths in the attention kernels), so an element near zero may differ by fp32 rounding of the large ones
    (measured: up to 1.6e-6 of the largest gradient)."""
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=0)
    assert actual[1].keys() == expected[1].keys() and expected[1]
    for name, gradient in expected[1].items():
        scale = float(gradient.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(actual[1][name], gradient, rtol=1e-5, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("architecture,prompt_format", [("gpt2", "plain"), ("llama", "plain"), ("llama", "chat")])
def test_shared_rows_give_the_loss_and_lora_gradients_of_separate_examples(
    architecture, prompt_format, tiny_tokenizer, chat_tokenizer
):
    tokenizer = chat_tokenizer if prompt_format == "chat" else tiny_tokenizer
    rows, _ = load_squad_file(DEV_FILE)
    # contexts of 6, 5 and 3 questions
    features = training_features(rows[:14], tokenizer, prompt_template(tokenizer, prompt_format))
    micro_batches = [features[:8], features[8:]]  # two micro-batches: gradient accumulation, rows of 2 sizes
    padded = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    shared = SharedContextCollator(tokenizer.pad_token_id)
    unshared_batches = [padded([{k: f[k] for k in ("input_ids", "labels")} for f in b]) for b in micro_batches]
    shared_batches = [shared(b) for b in micro_batches]
    assert [b["input_ids"].shape[0] for b in shared_batches] == [2, 2]  # 14 questions in 4 rows
    num_items = sum(int((b["labels"][:, 1:] != -100).sum()) for b in unshared_batches)
    model = lora_model(architecture, tokenizer)

    for loss_fn in (
        lambda b: labelled_positions_loss(model, b, num_items_in_batch=torch.tensor(num_items)),  # the Trainer's
        lambda b: model(**b, num_items_in_batch=torch.tensor(num_items)).loss,  # the model's own loss
    ):
        expected = loss_and_gradients(model, unshared_batches, loss_fn)
        assert_same(loss_and_gradients(model, shared_batches, loss_fn), expected)
    # one micro-batch, the loss a mean over its labelled tokens
    expected = loss_and_gradients(model, unshared_batches[:1], lambda b: labelled_positions_loss(model, b))
    assert_same(loss_and_gradients(model, shared_batches[:1], lambda b: labelled_positions_loss(model, b)), expected)


# ---------------------------------------------------------------------------
# Batches of whole contexts
# ---------------------------------------------------------------------------


def sampler_over(sizes: list[int], max_questions: int, **kwargs) -> ContextBatchSampler:
    keys = [g for g, size in enumerate(sizes) for _ in range(size)]
    lengths = [0 if size == 1 else 7 for size in sizes for _ in range(size)]  # contexts of 1 share nothing
    return ContextBatchSampler(lengths, keys, max_questions, **kwargs)


def test_each_epoch_takes_every_question_once_in_whole_contexts():
    sizes = [6, 5, 1, 1, 3, 12, 2, 4, 4, 1, 7, 5, 2, 3]
    sampler = sampler_over(sizes, max_questions=8, seed=3)
    context_of = [g for g, size in enumerate(sizes) for _ in range(size)]
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)  # the same count every epoch: the Trainer plans its steps on it
        assert sorted(i for b in batches for i in b) == list(range(sum(sizes)))
        for batch in batches:
            assert len(batch) <= 8  # never more questions than the batch size
            contexts = {context_of[i] for i in batch}
            # whole contexts only, but for the 12-question one, cut into a piece of 8 and one of 4
            pieces = [sizes[c] if sizes[c] <= 8 else sum(context_of[i] == c for i in batch) for c in contexts]
            assert sum(pieces) == len(batch) and all(p in (sizes[c], 8, 4) for c, p in zip(contexts, pieces))
        orders.append(batches)
    assert orders[0] != orders[1] != orders[2]  # the epoch reshuffles contexts
    assert len(sampler) == 7 == -(-sum(sizes) // 8)  # 56 questions in batches of 8: as many steps as unshared


def test_a_context_larger_than_the_batch_is_cut_into_batch_size_pieces():
    # 300 questions on one context (SQuAD has such) and batch size 4: 75 steps of 4, not one step of 300
    sampler = sampler_over([300, 3, 1], max_questions=4, seed=0)
    batches = list(sampler)
    assert max(len(b) for b in batches) == 4 and len(sampler) == 76 == -(-304 // 4)
    assert sorted(i for b in batches for i in b) == list(range(304))


def test_sequential_batches_keep_the_dataset_order():
    sampler = sampler_over([6, 5, 6, 5, 3], max_questions=11, shuffle=False)
    assert [len(b) for b in sampler] == [11, 11, 3]
    assert [i for b in sampler for i in b] == list(range(25))


def test_a_resumed_epoch_draws_its_own_order():
    from types import SimpleNamespace

    from squad_lora.callbacks import ContextEpochCallback

    sampler, epoch_one = sampler_over([6, 5, 1, 3, 12, 2], max_questions=8), sampler_over([6, 5, 1, 3, 12, 2], 8)
    epoch_one.set_epoch(1)
    callback = ContextEpochCallback()
    callback.sampler = sampler
    callback.on_epoch_begin(None, SimpleNamespace(epoch=1.5), None)  # the state of a checkpoint mid-epoch 1
    assert list(sampler) == list(epoch_one) and sampler.epoch == 1


def test_two_processes_share_out_the_batches_once(tmp_path):
    from accelerate.data_loader import BatchSamplerShard

    sampler = sampler_over([6, 5, 1, 3, 12, 2, 4, 4, 1, 7], max_questions=8, seed=1)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(BatchSamplerShard(sampler, num_processes=2))
    taken = sorted(i for shard in shards for b in shard for i in b)
    assert set(taken) == set(range(45))  # every question; an odd batch count repeats one batch (even_batches)
    assert len(shards[0]) + len(shards[1]) == len(sampler) + len(sampler) % 2


# ---------------------------------------------------------------------------
# When sharing is on
# ---------------------------------------------------------------------------


def test_auto_is_off_where_sharing_cannot_work_and_true_is_refused_there(caplog):
    from types import SimpleNamespace

    def decide(setting, attention="sdpa", model_type="gpt2", **training):
        args = SimpleNamespace(**{"packing": "auto", "train_sampling_strategy": "auto", **training})
        return decide_share_context(setting, model_type, attention, args if training else None)

    assert decide("auto", packing="auto")[0] and not decide("false", packing="auto")[0]
    on, why, problems = decide("auto", "flash_attention_2")
    assert not on and not problems and "cannot express a context's question branches" in why
    on, why, problems = decide("auto", "eager")
    assert not on and not problems and "eager attention adds a boolean 4-D mask" in why
    on, _, problems = decide("true", "flash_attention_2")
    assert not on and re.search(
        "--share_context true: attention flash_attention_2 .* --attn_implementation sdpa", problems[0]
    )
    for packing, order in (("true", "auto"), ("auto", "group_by_length")):
        assert decide("auto", packing=packing, train_sampling_strategy=order)[:3:2] == (False, [])
        assert "--share_context true" in decide("true", packing=packing, train_sampling_strategy=order)[2][0]
    # positions from the attention mask: not tested exact, so auto is off, and true is on with a warning
    caplog.set_level(logging.WARNING, logger="squad_lora")
    assert not decide("auto", model_type="opt")[0] and decide("true", model_type="opt")[0]
    assert "tested exact for gpt2, llama only" in caplog.text
    assert decide("sometimes")[2] == ["--share_context must be auto, true or false, got 'sometimes'"]


def test_flash_attention_with_share_context_true_is_refused_before_any_weights_or_data_load(tiny_tokenizer, tmp_path):
    # a model directory with a config and a tokenizer but no weights, and no data file: the plan refuses first
    model_dir = tmp_path / "config-only"
    tiny_tokenizer.save_pretrained(model_dir)
    shutil.copy(os.path.join(TINY_GPT2_DIR, "config.json"), model_dir)
    flags = ["--model_name_or_path", str(model_dir), "--attn_implementation", "flash_attention_2",
             "--share_context", "true", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    for script, extra in (
        (run_qa_lora, ["--train_file", str(tmp_path / "absent.json")]),
        (generate, ["--validation_file", str(tmp_path / "absent.json")]),
    ):
        with pytest.raises(ConfigError, match="--share_context true: attention flash_attention_2"):
            script.main(flags + extra)


# ---------------------------------------------------------------------------
# Training runs: the Trainer with shared batches against the Trainer without
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_dropout_gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """A random tiny GPT-2 without dropout, so that shared and unshared runs can be compared step by step."""
    path = tmp_path_factory.mktemp("gpt2-no-dropout")
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config.from_pretrained(TINY_GPT2_DIR, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def sgd_run_args(model_dir, output_dir, *extra) -> list[str]:
    """Two epochs over 44 training questions (contexts of 6, 5, 6, 5) in file order with plain SGD, so that the
    adapter after training is the initial one minus lr times the summed gradients: equal runs, equal weights."""
    return [
        "--model_name_or_path",
        str(model_dir),
        "--train_file",
        TRAIN_FILE,
        "--max_train_samples",
        "44",
        "--output_dir",
        str(output_dir),
        "--num_train_epochs",
        "2",
        "--train_sampling_strategy",
        "sequential",
        "--optim",
        "sgd",
        "--learning_rate",
        "0.5",
        "--lr_scheduler_type",
        "constant",
        "--warmup_steps",
        "0",
        "--max_grad_norm",
        "0",
        "--lora_dropout",
        "0",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        *extra,
    ]


def adapter_weights(run_dir) -> dict:
    return load_file(os.path.join(run_dir, "adapter_model.safetensors"))


def assert_same_adapters(actual: dict, expected: dict):
    assert actual.keys() == expected.keys() and expected
    assert all(
        weight.abs().sum() > 0 for name, weight in expected.items() if "lora_B" in name
    )  # B starts at 0: trained
    for name, weight in expected.items():
        torch.testing.assert_close(actual[name], weight, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_shared_training_with_gradient_accumulation_equals_unshared_training(no_dropout_gpt2_dir, tmp_path, caplog):
    # batches of 11 questions (two whole contexts) in both runs, two of them accumulated per optimizer step
    common = ("--per_device_train_batch_size", "11", "--gradient_accumulation_steps", "2")
    shared = run_qa_lora.main(
        sgd_run_args(no_dropout_gpt2_dir, tmp_path / "shared", *common, "--share_context", "true")
    )
    unshared = run_qa_lora.main(
        sgd_run_args(no_dropout_gpt2_dir, tmp_path / "unshared", *common, "--share_context", "false")
    )
    assert "batches: one row per context" in caplog.text
    assert_same_adapters(adapter_weights(tmp_path / "shared"), adapter_weights(tmp_path / "unshared"))
    losses = [[e["loss"] for e in run["log_history"] if "loss" in e] for run in (shared, unshared)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    # samples count questions either way (2 epochs of 44); tokens count what the model computed: a context once
    for run in (shared, unshared):
        metrics = run["train_metrics"]
        assert metrics["train_samples_per_second"] * metrics["train_runtime"] == pytest.approx(88, rel=0.02)
    assert unshared["num_input_tokens_seen"] == 2 * sum(
        len(ids)
        for ids in feature_columns(load_squad_file(TRAIN_FILE)[0][:44], tokenizer_of(no_dropout_gpt2_dir))["input_ids"]
    )
    assert shared["num_input_tokens_seen"] == 2 * shared_row_tokens(no_dropout_gpt2_dir, 44)


def tokenizer_of(model_dir):
    from squad_lora.modeling import load_tokenizer

    return load_tokenizer(model_dir)


def shared_row_tokens(model_dir, num_questions: int) -> int:
    """Tokens of the first questions' shared rows: each context's tokens once, each question's own tokens."""
    columns = feature_columns(load_squad_file(TRAIN_FILE)[0][:num_questions], tokenizer_of(model_dir))
    contexts = {key: n for key, n in zip(columns["context_key"], columns["shared_length"])}
    return sum(contexts.values()) + sum(len(ids) - n for ids, n in zip(columns["input_ids"], columns["shared_length"]))


def test_token_count_of_a_shared_batch_is_its_real_tokens(tiny_tokenizer, no_dropout_gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from squad_lora.training_args import QATrainingArguments

    rows, _ = load_squad_file(DEV_FILE)
    features = training_features(rows[:8], tiny_tokenizer)
    batch = SharedContextCollator(tiny_tokenizer.pad_token_id)(features)
    args = QATrainingArguments(output_dir=str(tmp_path), report_to="none", eval_strategy="no")
    model = AutoModelForCausalLM.from_pretrained(no_dropout_gpt2_dir)
    trainer = QATrainer(model, args, train_plan(tiny_tokenizer, model, args), processing_class=tiny_tokenizer)
    trainer._track_num_input_tokens(batch)
    assert trainer.state.num_input_tokens_seen == int(batch["attention_mask"][:, 0].diagonal(dim1=-2, dim2=-1).sum())
    assert trainer.state.num_input_tokens_seen < batch["input_ids"].numel()


@pytest.mark.slow
def test_two_process_shared_training_equals_one_process_unshared(no_dropout_gpt2_dir, tmp_path):
    """Two ranks on CPU (gloo), each taking its own batches of whole contexts, step for step as one process
    training the same questions unshared in batches twice as large."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_multiprocess.yaml"),
        "--main_process_port",
        str(free_port()),
        os.path.join(REPO_ROOT, "run_qa_lora.py"),
        *sgd_run_args(
            no_dropout_gpt2_dir, tmp_path / "ddp", "--per_device_train_batch_size", "11", "--share_context", "true"
        ),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batches: one row per context" in proc.stderr
    run_qa_lora.main(
        sgd_run_args(
            no_dropout_gpt2_dir, tmp_path / "one", "--per_device_train_batch_size", "22", "--share_context", "false"
        )
    )
    assert_same_adapters(adapter_weights(tmp_path / "ddp"), adapter_weights(tmp_path / "one"))
    with open(tmp_path / "ddp" / "run_summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["num_input_tokens_seen"] == 2 * shared_row_tokens(no_dropout_gpt2_dir, 44)  # both ranks counted


# ---------------------------------------------------------------------------
# Generation: one KV cache per context
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_shared_generation_answers_as_separate_prompts(architecture, tiny_tokenizer):
    rows, _ = load_squad_file(DEV_FILE)
    rows = rows[:14]  # contexts of 6, 5 and 3 questions
    model = tiny_model(architecture, tiny_tokenizer).eval()
    prompts, _ = build_prompts(rows, tiny_tokenizer, 400)
    shared = shared_prefix_lengths(tiny_tokenizer, [row["question"] for row in rows], prompts)
    shared[3] = 0  # a question that shares nothing is answered on its own
    stop_ids = stop_token_ids(tiny_tokenizer)
    for strategy in ("greedy", "beam"):
        config = generation_config(strategy, DecodingArguments(max_new_tokens=6), tiny_tokenizer, stop_ids)
        for contexts in (None, [row["context"] for row in rows]):  # and --constrain_to_context
            # batches of 5: contexts cut into pieces, and a batch with pieces of two contexts
            expected, expected_confidences, _ = generate_with(model, tiny_tokenizer, prompts, config, 5, contexts)
            got, confidences, _ = generate_with(model, tiny_tokenizer, prompts, config, 5, contexts, shared=shared)
            assert got == expected
            # as --share_context auto answers: the question that shares nothing goes unshared, beside shared batches
            auto, _, _ = generate_with(
                model, tiny_tokenizer, prompts, config, 5, contexts, shared=shared, share_lone=False
            )
            assert auto == expected
            assert sum(confidences, []) == pytest.approx(sum(expected_confidences, []), abs=1e-5)
            assert len({answer[0] for answer in expected}) >= 4 or contexts is not None  # answers differ by prompt
    # sampling, num_samples per question: with top_k 1 every sample is the greedy answer
    decoding = DecodingArguments(strategy="top_k", top_k=1, num_samples=3, max_new_tokens=6)
    config = generation_config("top_k", decoding, tiny_tokenizer, stop_ids)
    greedy, _, _ = generate_with(
        model, tiny_tokenizer, prompts, generation_config("greedy", decoding, tiny_tokenizer, stop_ids), 5
    )
    sampled, _, _ = generate_with(model, tiny_tokenizer, prompts, config, 5, shared=shared)
    assert sampled == [answer * 3 for answer in greedy]


def test_processes_take_whole_contexts():
    contexts = ["a"] * 6 + ["b"] * 5 + ["c"] * 2 + ["a"] + ["d"] * 3
    examples = [{"id": str(i), "context": c} for i, c in enumerate(contexts)]
    shards = context_shards(examples, 2)
    assert sorted(shards[0] + shards[1]) == list(range(17))
    assert {contexts[i] for i in shards[0]} == {"a", "b"} and {contexts[i] for i in shards[1]} == {"c", "d"}
    assert context_shards(examples, 1) == [[0, 1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16]]


def test_a_contexts_lone_question_is_answered_unshared_unless_sharing_was_forced():
    # contexts of 3, 1 (shares nothing: length 0), 2 and 1 questions
    prompts = [[1, 2, 3, 4, 10], [1, 2, 3, 4, 11], [1, 2, 3, 4, 12], [5, 6, 7, 13], [8, 9, 14], [8, 9, 15], [16, 17]]
    questions = EncodedQuestions(prompts, [4, 4, 4, 0, 2, 2, 1])
    auto = SimpleNamespace(batch_size=64, unshared_batch_size=1, share_lone_questions=False)
    assert question_batches(questions, auto) == [[(4, [0, 1, 2]), (2, [4, 5])], [3], [6]]  # lone: longest first
    forced = SimpleNamespace(batch_size=4, unshared_batch_size=1, share_lone_questions=True)
    assert question_batches(questions, forced) == [[(4, [0, 1, 2]), (3, [3])], [(2, [4, 5]), (1, [6])]]
    unshared = SimpleNamespace(batch_size=4, unshared_batch_size=4, share_lone_questions=False)
    assert question_batches(EncodedQuestions(prompts), unshared) == [[0, 1, 2, 3], [4, 5, 6]]


def test_generate_py_answers_the_same_with_and_without_sharing(tiny_tokenizer, tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    tiny_model("llama", tiny_tokenizer).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    shared_batches = []  # the batches that read their context once, in the KV cache
    build_shared_inputs = decoding.shared_context_inputs

    def counted(*args):
        shared_batches.append(args[3])
        return build_shared_inputs(*args)

    monkeypatch.setattr(decoding, "shared_context_inputs", counted)
    runs, batches = {}, {}
    for share in ("auto", "false"):
        shared_batches.clear()
        runs[share] = generate.main(
            [
                "--model_name_or_path",
                str(model_dir),
                "--validation_file",
                DEV_FILE,
                "--max_eval_samples",
                "14",
                "--max_new_tokens",
                "6",
                "--strategies",
                "greedy,beam",
                "--share_context",
                share,
                "--output_dir",
                str(tmp_path / share),
            ]
        )
        batches[share] = len(shared_batches)
    assert batches["auto"] > 0 and batches["false"] == 0  # auto shares with a llama base: both paths were taken
    assert list(runs["auto"]) == list(runs["false"])
    for strategy in runs["auto"]:
        assert_same_answers(runs["auto"][strategy], runs["false"][strategy])
    assert [row["id"] for row in runs["auto"]["greedy"]] == [row["id"] for row in load_squad_file(DEV_FILE)[0][:14]]
