"""squad_lora.trainer: the labelled-positions loss, the collators, QATrainer (its loss, token count, EM/F1 at
every evaluation) and what it writes to TensorBoard (scalars and HParams)."""

import inspect
import json
import math
import os

import datasets
import pytest
import torch
from transformers import (
    DataCollatorForSeq2Seq,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaForCausalLM,
    Trainer,
)

import run_qa_lora
from conftest import (
    DEV_FILE,
    TINY_GPT2_DIR,
    TRAIN_FILE,
    eval_entries,
    event_dirs,
    read_events,
    sample_features,
    tiny_llama_config,
    tiny_run_args,
    train_plan,
)
from squad_lora import decoding, trainer
from squad_lora.args import LoraArguments
from squad_lora.collators import PackingCollator, make_collator
from squad_lora.data import PLAIN, build_train_features, load_squad_file
from squad_lora.loss import LABELLED_LOSS_MODEL_TYPES, labelled_positions_loss
from squad_lora.modeling import apply_lora
from squad_lora.trainer import QATrainer
from squad_lora.training_args import QATrainingArguments

TINY_CONFIG = GPT2Config.from_pretrained(TINY_GPT2_DIR)


def training_args(output_dir, **kwargs) -> QATrainingArguments:
    """The script's TrainingArguments for a unit test: no evaluation, checkpoints or loggers."""
    defaults = dict(report_to="none", eval_strategy="no", save_strategy="no", disable_tqdm=True)
    return QATrainingArguments(output_dir=str(output_dir), **{**defaults, **kwargs})


def session_hparams(hparams):
    """{name: value} that the HParams dashboard shows for the run."""
    values = hparams["_hparams_/session_start_info"].session_start_info.hparams
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in values.items()}


# ---------------------------------------------------------------------------
# The labelled-positions loss equals the model's own loss, with the same LoRA gradients
# ---------------------------------------------------------------------------


def random_lora_model(architecture, tokenizer):
    torch.manual_seed(0)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))
    else:
        model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    model = apply_lora(model, LoraArguments(lora_r=4, lora_dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # B = 0 at init would leave A without a gradient
    model.eval()  # GPT-2's own dropout off; gradients still flow
    return model


def loss_and_gradients(model, compute_loss) -> tuple:
    model.zero_grad()
    loss = compute_loss()
    loss.backward()
    return loss.detach(), {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}


def assert_same_loss_and_gradients(actual, expected):
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=0)
    assert actual[1].keys() == expected[1].keys()
    for name, gradient in expected[1].items():
        torch.testing.assert_close(actual[1][name], gradient, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_labelled_positions_loss_equals_the_model_loss(architecture, tiny_tokenizer):
    model = random_lora_model(architecture, tiny_tokenizer)
    features = sample_features(tiny_tokenizer)
    padded = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100)(features)
    assert not padded["attention_mask"].all()  # the batch really is padded
    num_labelled = int((padded["labels"][:, 1:] != -100).sum())

    expected = loss_and_gradients(model, lambda: model(**padded).loss)
    assert all(gradient.abs().sum() > 0 for gradient in expected[1].values())
    assert_same_loss_and_gradients(loss_and_gradients(model, lambda: labelled_positions_loss(model, padded)), expected)

    # one packed row (block-diagonal mask, positions restarting per feature) = the padded, unpacked features
    packed = PackingCollator(use_block_mask=True)(features)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert_same_loss_and_gradients(loss_and_gradients(model, lambda: labelled_positions_loss(model, packed)), expected)

    # gradient accumulation: a sum over the labelled tokens divided by those of the whole accumulated batch
    num_items = torch.tensor(3 * num_labelled)
    scaled = (expected[0] * num_labelled / num_items, {k: g * num_labelled / num_items for k, g in expected[1].items()})
    model_scaled = loss_and_gradients(model, lambda: model(**padded, num_items_in_batch=num_items).loss)
    assert_same_loss_and_gradients(model_scaled, scaled)
    for batch in (padded, packed):
        actual = loss_and_gradients(
            model, lambda b=batch: labelled_positions_loss(model, b, num_items_in_batch=num_items)
        )
        assert_same_loss_and_gradients(actual, scaled)


def tiny_gpt_neox(tokenizer) -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return GPTNeoXForCausalLM(config)


def test_a_model_type_outside_the_list_trains_through_its_own_forward(tiny_tokenizer, tmp_path, monkeypatch):
    model = apply_lora(tiny_gpt_neox(tiny_tokenizer), LoraArguments(lora_r=4, lora_dropout=0.0))
    assert model.config.model_type == "gpt_neox" and "gpt_neox" not in LABELLED_LOSS_MODEL_TYPES

    def forbidden(*args, **kwargs):
        raise AssertionError("the labelled-positions loss is not shown equal for gpt_neox")

    monkeypatch.setattr(trainer, "labelled_positions_loss", forbidden)
    features = sample_features(tiny_tokenizer, num_examples=8)
    args = training_args(
        tmp_path, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=0, logging_steps=1
    )
    plan = train_plan(tiny_tokenizer, model, args)
    assert plan.labelled_loss is False and "gpt_neox is not among the types" in plan.reasons["loss"]
    qa_trainer = QATrainer(
        model, args, plan, train_dataset=datasets.Dataset.from_list(features), processing_class=tiny_tokenizer
    )

    batch = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100)(features[:4])
    with torch.no_grad():
        torch.testing.assert_close(qa_trainer.compute_loss(model, batch), model(**batch).loss, rtol=0, atol=0)

    initial = {name: param.detach().clone() for name, param in model.named_parameters() if "lora_B" in name}
    qa_trainer.train()
    losses = [entry["loss"] for entry in qa_trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    trained = dict(model.named_parameters())
    assert initial and all(not torch.equal(trained[name], tensor) for name, tensor in initial.items())


def test_gpt2_and_llama_use_the_labelled_positions_loss(tiny_tokenizer, tmp_path):
    for model in (random_lora_model("gpt2", tiny_tokenizer), random_lora_model("llama", tiny_tokenizer)):
        assert train_plan(tiny_tokenizer, model, training_args(tmp_path)).labelled_loss is True


# ---------------------------------------------------------------------------
# Collators
# ---------------------------------------------------------------------------

CONTEXT = "Lenmargan is a market town on the Ilvar river. It was founded in 1399 by Duke Elnth Elwi."
FILLER = "For centuries its wealth came from the wool trade. "


def example(context, answer, question="Who was the harbour master?"):
    start = context.index(answer)
    return {"id": "q", "title": "t", "context": context, "question": question,
            "answers": {"text": [answer], "answer_start": [start]}}  # fmt: skip


def features(rows, tokenizer, max_seq_length):
    """build_train_features on rows, batched the way datasets.map calls it."""
    batch = {key: [row[key] for row in rows] for key in ("context", "question", "answers")}
    return build_train_features(batch, tokenizer, max_seq_length)


def split_feature(tokenizer, input_ids, labels):
    """(prompt text, labelled ids) of one feature, checking that every prompt token is masked."""
    num_prompt = next(i for i, label in enumerate(labels) if label != -100)
    assert all(label == -100 for label in labels[:num_prompt])
    assert labels[num_prompt:] == input_ids[num_prompt:]
    return tokenizer.decode(input_ids[:num_prompt]), labels[num_prompt:]


def test_padding_collator_masks_prompt_and_padding_and_keeps_the_real_eos(tiny_tokenizer, tmp_path):
    tokenizer = tiny_tokenizer
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # GPT-2 style: the case that can go wrong
    rows = [
        example(CONTEXT, "Ilvar"),
        example(CONTEXT + " " + FILLER * 3, "Duke Elnth Elwi", question="Who founded it?"),
    ]
    feats = features(rows, tokenizer, max_seq_length=512)
    assert feats["was_cut"] == [False, False]
    args = training_args(tmp_path)
    collator = make_collator(train_plan(tokenizer, TINY_CONFIG, args, share_context="false"), tokenizer)
    assert isinstance(collator, DataCollatorForSeq2Seq)
    batch = collator([{"input_ids": i, "labels": lab} for i, lab in zip(feats["input_ids"], feats["labels"])])
    input_ids, labels, attention_mask = (batch[k].tolist() for k in ("input_ids", "labels", "attention_mask"))
    num_real = [len(ids) for ids in feats["input_ids"]]
    assert num_real[0] < num_real[1]  # row 0 is padded
    for row, answer, ids, labs, mask, n in zip(
        rows, ("Ilvar", "Duke Elnth Elwi"), input_ids, labels, attention_mask, num_real
    ):
        prompt, target = split_feature(tokenizer, ids[:n], labs[:n])
        assert prompt == PLAIN.build(row["context"], row["question"])
        assert tokenizer.decode(target) == f" {answer}{tokenizer.eos_token}"
        assert target[-1] == tokenizer.eos_token_id  # the real EOS stays trained although pad == EOS
        assert mask[:n] == [1] * n
        # padding: pad (= EOS) ids, masked from attention and from the loss
        assert ids[n:] == [tokenizer.pad_token_id] * (len(ids) - n)
        assert labs[n:] == [-100] * (len(ids) - n)
        assert mask[n:] == [0] * (len(ids) - n)
    assert len(input_ids[0]) > num_real[0]


def test_the_plan_pads_unless_packing_and_settles_the_batch_order(tiny_tokenizer, tmp_path):
    def plan_of(attention=None, **training):
        args = training_args(tmp_path, **training)
        plan = train_plan(tiny_tokenizer, TINY_CONFIG, args, share_context="false", attn_implementation=attention)
        return plan, make_collator(plan, tiny_tokenizer), args

    plan, collator, args = plan_of()
    assert isinstance(collator, DataCollatorForSeq2Seq) and not plan.packing
    assert plan.train_sampling_strategy == "group_by_length"  # padding: batches of similar lengths pad little
    assert args.train_sampling_strategy == "auto"  # the parsed arguments stay as given
    assert plan.trainer_arguments(args).train_sampling_strategy == "group_by_length"  # what the Trainer sees
    plan, collator, _ = plan_of("sdpa", packing="true")
    assert isinstance(collator, PackingCollator) and collator.use_block_mask
    assert plan.train_sampling_strategy == "random"
    plan, collator, _ = plan_of("flash_attention_2")  # packs by default, boundaries from positions
    assert isinstance(collator, PackingCollator) and not collator.use_block_mask
    plan, _, _ = plan_of(packing="true", train_sampling_strategy="sequential")
    assert plan.train_sampling_strategy == "sequential"  # a strategy given is kept


def test_packed_row_restarts_positions_and_never_attends_across_features(tiny_tokenizer):
    feats = sample_features(tiny_tokenizer, num_examples=3)
    lengths = [len(feature["input_ids"]) for feature in feats]
    packed = PackingCollator(use_block_mask=True)(feats)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    positions, labels, mask = packed["position_ids"][0], packed["labels"][0], packed["attention_mask"][0, 0]
    assert positions.tolist() == [p for n in lengths for p in range(n)]
    assert all(labels[start] == -100 for start in starts)  # no feature is the target of the one before it
    for start, n in zip(starts, lengths):
        block = mask[start : start + n, start : start + n]
        assert torch.equal(block, torch.ones(n, n, dtype=torch.bool).tril())
        assert not mask[start : start + n, :start].any()  # nothing of the features before it
    assert mask.sum() == sum(n * (n + 1) // 2 for n in lengths)


# ---------------------------------------------------------------------------
# The tokens seen: Trainer's private hook, overridden for packed batches
# ---------------------------------------------------------------------------


def test_trainers_private_token_count_hook_is_still_there_and_overridden(tiny_tokenizer, tmp_path):
    """QATrainer overrides Trainer._track_num_input_tokens, a private hook: if transformers renames it or
    changes its signature, the override silently stops applying and packed batches count T*T tokens."""
    hook = getattr(Trainer, "_track_num_input_tokens", None)
    assert callable(hook), "transformers no longer has Trainer._track_num_input_tokens: update QATrainer's override"
    assert list(inspect.signature(hook).parameters) == ["self", "inputs"], inspect.signature(hook)
    assert list(inspect.signature(QATrainer._track_num_input_tokens).parameters) == ["self", "inputs"]
    assert "self._track_num_input_tokens(inputs)" in inspect.getsource(Trainer), "the training loop no longer calls it"

    feats = sample_features(tiny_tokenizer)
    packed = PackingCollator(use_block_mask=True)(feats)
    assert packed["attention_mask"].dim() == 4
    num_tokens = sum(len(feature["input_ids"]) for feature in feats)
    model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))
    args = training_args(tmp_path)
    qa_trainer = QATrainer(model, args, train_plan(tiny_tokenizer, model, args), processing_class=tiny_tokenizer)
    assert qa_trainer.args.include_num_input_tokens_seen == "non_padding"
    qa_trainer._track_num_input_tokens(packed)
    assert qa_trainer.state.num_input_tokens_seen == num_tokens
    # what Trainer's own hook makes of the same batch: the mask's entries
    Trainer._track_num_input_tokens(qa_trainer, packed)
    assert qa_trainer.state.num_input_tokens_seen - num_tokens == int(packed["attention_mask"].sum()) > num_tokens


@pytest.mark.slow
def test_a_packed_run_counts_every_token_once(tiny_model_dir, tiny_tokenizer, tmp_path):
    # 8 features in 2 packed batches of 4: one pass over the data, through the real training loop
    summary = run_qa_lora.main(tiny_run_args(
        tiny_model_dir, tmp_path, "--packing", "true", "--max_train_samples", 8, "--per_device_train_batch_size", 4,
    ))  # fmt: skip
    rows = load_squad_file(TRAIN_FILE)[0][:8]
    mapped = features(rows, tiny_tokenizer, 512)
    assert summary["num_input_tokens_seen"] == sum(len(ids) for ids in mapped["input_ids"])


# ---------------------------------------------------------------------------
# QATrainer's EM/F1: real scores of real generations
# ---------------------------------------------------------------------------


@pytest.fixture
def random_tiny_model():
    """configs/tiny-gpt2 with random weights, in training mode (dropout on), as a Trainer holds it."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR)).train()


def steer_to_token(model, token_id):
    """Make greedy decoding answer token_id at every step, whatever the prompt.

    The final layer norm then outputs a constant: the token's (tied) embedding, scaled up.
    """
    with torch.no_grad():
        embedding = model.get_output_embeddings().weight[token_id]
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(50 * embedding / embedding.norm())
    return model


def qa_trainer(model, tokenizer, output_dir, eval_examples, eval_dataset=None):
    args = training_args(output_dir, per_device_eval_batch_size=4)
    plan = train_plan(tokenizer, model, args, max_new_tokens=3, generation_batch_size=4)
    return QATrainer(
        model, args, plan, eval_dataset=eval_dataset, processing_class=tokenizer, eval_examples=eval_examples
    )


def with_gold(example, answer):
    return {**example, "answers": {"text": [answer], "answer_start": [0]}}


def test_generation_metrics_score_the_greedy_answers(random_tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    answer_questions, modes = decoding.answer_questions, []

    def recording_answer_questions(model, *args, **kwargs):
        modes.append(model.training)
        return answer_questions(model, *args, **kwargs)

    monkeypatch.setattr(decoding, "answer_questions", recording_answer_questions)
    (river,) = tiny_tokenizer(" river", add_special_tokens=False)["input_ids"]
    model = steer_to_token(random_tiny_model, river)  # answers "river river river" (3 new tokens)
    examples, _ = load_squad_file(DEV_FILE)
    examples = examples[:4]

    trainer = qa_trainer(model, tiny_tokenizer, tmp_path, [with_gold(ex, "River river RIVER.") for ex in examples])
    assert trainer.generation_metrics() == {"eval_exact_match": 100.0, "eval_f1": 100.0}
    assert modes == [False] and model.training  # generated in eval mode (no dropout), then back to training

    trainer.eval_examples = [with_gold(ex, ex["answers"]["text"][0]) for ex in examples]  # the real gold answers
    assert trainer.generation_metrics("test") == {"test_exact_match": 0.0, "test_f1": 0.0}

    # one exact, one "river" (precision 1/3, recall 1: F1 1/2), one unrelated, one exact
    golds = ["river river river", "river", "lake", "the river river river"]
    trainer.eval_examples = [with_gold(ex, gold) for ex, gold in zip(examples, golds)]
    scores = trainer.generation_metrics()
    assert scores["eval_exact_match"] == pytest.approx(50.0)
    assert scores["eval_f1"] == pytest.approx((100 + 50 + 0 + 100) / 4)


HAND_EXAMPLES = [
    {
        "id": "q1",
        "title": "t",
        "context": "The Denver Broncos won the game.",
        "question": "Who won?",
        "answers": {"text": ["Denver Broncos"], "answer_start": [4]},
    },
    {
        "id": "q2",
        "title": "t",
        "context": "The tower is in Paris.",
        "question": "Where is the tower?",
        "answers": {"text": ["Paris"], "answer_start": [16]},
    },
]


def test_evaluate_adds_em_f1_of_the_generated_answers(random_tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    calls = []

    def fake_answer_questions(model, tokenizer, examples, plan, state, **kwargs):
        calls.append({"training": model.training, "ids": [ex["id"] for ex in examples], "plan": plan})
        # listed in the other order: scores must follow the ids, not the positions
        predictions = {"q2": "Paris.", "q1": "the Broncos"}
        return {
            "greedy": [
                {"id": qid, "strategy": "greedy", "sample": 0, "prediction": text} for qid, text in predictions.items()
            ]
        }

    monkeypatch.setattr(decoding, "answer_questions", fake_answer_questions)
    features = build_train_features(
        {key: [ex[key] for ex in HAND_EXAMPLES] for key in ("context", "question", "answers")}, tiny_tokenizer, 128
    )
    eval_dataset = datasets.Dataset.from_dict(features).remove_columns("was_cut")
    trainer = qa_trainer(random_tiny_model, tiny_tokenizer, tmp_path, HAND_EXAMPLES, eval_dataset)

    metrics = trainer.evaluate(metric_key_prefix="dev")
    # q1: "broncos" against "denver broncos": EM 0, precision 1, recall 1/2, F1 2/3; q2 exact after normalization
    assert metrics["dev_exact_match"] == pytest.approx(50.0)
    assert metrics["dev_f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert math.isfinite(metrics["dev_loss"])
    assert len(calls) == 1
    assert calls[0]["ids"] == ["q1", "q2"] and calls[0]["training"] is False
    assert calls[0]["plan"] is trainer.plan.answer  # the run's plan, as recorded
    assert list(calls[0]["plan"].generation_configs) == ["greedy"] and calls[0]["plan"].max_new_tokens == 3

    trainer.eval_examples = []  # --eval_generation_samples 0
    assert "dev_exact_match" not in trainer.evaluate(metric_key_prefix="dev")
    assert len(calls) == 1


# ---------------------------------------------------------------------------
# EM/F1 at every evaluation of a run, and TensorBoard
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_em_f1_are_in_every_evaluation_when_generation_is_on(two_runs):
    alpha = two_runs.alpha
    with open(os.path.join(two_runs.alpha_dir, "run_summary.json"), encoding="utf-8") as f:
        assert json.load(f)["eval_metrics"] == json.loads(json.dumps(alpha["eval_metrics"]))
    for key in ("eval_exact_match", "eval_f1"):
        assert 0 <= alpha["eval_metrics"][key] <= 100
    entries = eval_entries(alpha)
    assert [entry["step"] for entry in entries][:2] == [2, 4]
    for entry in entries:
        assert {"eval_exact_match", "eval_f1"} <= entry.keys()


@pytest.mark.slow
def test_eval_generation_samples_0_turns_generation_off(two_runs):
    beta = two_runs.beta
    assert math.isfinite(beta["eval_metrics"]["eval_loss"])
    assert [entry["step"] for entry in eval_entries(beta)] == [2]
    for entry in [beta["eval_metrics"], *beta["log_history"]]:
        assert not {"eval_exact_match", "eval_f1"} & entry.keys()


@pytest.mark.slow
def test_event_files_hold_em_f1_and_the_hparams(two_runs):
    scalars, hparams = read_events(two_runs.alpha_dir)
    for tag in ("eval/exact_match", "eval/f1"):
        assert [step for step, _ in scalars[tag]][:2] == [2, 4]
        assert all(0 <= value <= 100 for _, value in scalars[tag])
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= hparams.keys()
    shown = session_hparams(hparams)
    assert shown["lora_r"] == 8 and shown["lora_alpha"] == 16 and shown["learning_rate"] == pytest.approx(1e-2)
    # Trainer settings left at their defaults are still shown, so every run has every column
    assert shown["seed"] == 42 and shown["gradient_accumulation_steps"] == 1 and shown["num_train_epochs"] == 3
    assert shown["per_device_train_batch_size"] == 4
    metric_tags = {info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert metric_tags == {"hparams/eval_loss", "hparams/eval_exact_match", "hparams/eval_f1"}
    for key in ("eval_loss", "eval_exact_match", "eval_f1"):
        assert scalars[f"hparams/{key}"][-1][1] == pytest.approx(two_runs.alpha["eval_metrics"][key], rel=1e-5)


@pytest.mark.slow
def test_hparams_are_written_when_the_last_evaluation_is_reused(two_runs):
    # beta's final metrics come from the evaluation at its last step, after TensorBoard's writer closed
    scalars, hparams = read_events(two_runs.beta_dir)
    assert "eval/loss" in scalars and "eval/f1" not in scalars
    assert session_hparams(hparams)["lora_r"] == 4
    metric_tags = {info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert metric_tags == {"hparams/eval_loss"}
    assert scalars["hparams/eval_loss"][-1][1] == pytest.approx(two_runs.beta["eval_metrics"]["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_each_run_is_one_tensorboard_run_in_its_own_directory(two_runs):
    # alpha's final evaluation (the best checkpoint, after training closed the writer) lands there too
    assert event_dirs(two_runs.alpha_dir) == {os.path.join(two_runs.alpha_dir, "runs", "alpha")}
    assert event_dirs(two_runs.beta_dir) == {os.path.join(two_runs.beta_dir, "runs", "beta")}
    scalars, _ = read_events(two_runs.alpha_dir)
    assert [step for step, _ in scalars["eval/loss"]] == [2, 4, 4]
    assert scalars["eval/loss"][-1][1] == pytest.approx(two_runs.alpha["eval_metrics"]["eval_loss"], rel=1e-5)
