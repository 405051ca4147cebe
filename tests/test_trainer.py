"""squad_lora.trainer: QATrainer's token count (Trainer's private hook, overridden for packed batches) and its EM/F1
of real generations at every evaluation of a run. Its loss is in test_loss.py, its collators in test_collators.py,
what it writes to TensorBoard in test_callbacks.py."""

import inspect
import json
import math
import os

import datasets
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer

from builders import features, sample_features, tiny_run_args, train_plan, training_args
from repo_paths import DEV_FILE, TINY_GPT2_DIR, TRAIN_FILE
from run_outputs import eval_entries, read_texts
from squad_lora import decoding
from squad_lora.collators import PackingCollator
from squad_lora.commands import train as run_qa_lora
from squad_lora.data import load_squad_file
from squad_lora.features import build_train_features
from squad_lora.trainer import QATrainer

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


def test_evaluate_writes_each_answer_with_its_own_score(random_tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """--eval_log_samples 1: every question's answer, gold and EM/F1 (the metric's per-question rule: their means
    are the evaluation's) to the evaluation's file; the first question to TensorBoard's text, as a markdown table."""

    def fake_answer_questions(model, tokenizer, examples, plan, state, **kwargs):
        predictions = {"q2": "Paris.", "q1": "the Broncos | won"}
        return {"greedy": [{"id": qid, "sample": 0, "prediction": text} for qid, text in predictions.items()]}

    monkeypatch.setattr(decoding, "answer_questions", fake_answer_questions)
    features = build_train_features(
        {key: [ex[key] for ex in HAND_EXAMPLES] for key in ("context", "question", "answers")}, tiny_tokenizer, 128
    )
    eval_dataset = datasets.Dataset.from_dict(features).remove_columns("was_cut")
    for samples in (1, 0):
        output_dir = tmp_path / f"samples-{samples}"
        args = training_args(
            output_dir, per_device_eval_batch_size=4, report_to="tensorboard", eval_log_samples=samples
        )
        plan = train_plan(tiny_tokenizer, random_tiny_model, args, max_new_tokens=3)
        trainer = QATrainer(
            random_tiny_model, args, plan, eval_dataset=eval_dataset, processing_class=tiny_tokenizer,
            eval_examples=HAND_EXAMPLES,
        )  # fmt: skip
        metrics = trainer.evaluate()  # outside training: the final evaluation's file
        # q1: "broncos won" against "denver broncos": precision 1/2, recall 1/2
        assert (metrics["eval_exact_match"], metrics["eval_f1"]) == pytest.approx((50.0, 75.0))
        if not samples:  # --eval_log_samples 0: off
            assert not [name for name in os.listdir(output_dir) if name.startswith("eval_predictions")]
            assert "eval/samples" not in read_texts(trainer.tensorboard_dir)
            continue
        with open(output_dir / "eval_predictions_final.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        assert rows == [
            {"step": 0, "id": "q1", "question": "Who won?", "answers": ["Denver Broncos"],
             "prediction": "the Broncos | won", "exact_match": 0, "f1": pytest.approx(0.5)},
            {"step": 0, "id": "q2", "question": "Where is the tower?", "answers": ["Paris"],
             "prediction": "Paris.", "exact_match": 1, "f1": 1.0},
        ]  # fmt: skip
        ((step, text),) = read_texts(trainer.tensorboard_dir)["eval/samples"]
        assert step == 0
        assert text.splitlines() == [
            "**final evaluation at step 0**",
            "",
            "| id | question | gold answers | prediction | EM | F1 |",
            "|---|---|---|---|---|---|",
            "| q1 | Who won? | Denver Broncos | the Broncos \\| won | 0 | 0.50 |",
        ]


# ---------------------------------------------------------------------------
# EM/F1 at every evaluation of a run
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
