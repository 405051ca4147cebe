"""squad_lora.loss: the labelled-positions loss equals the model's own loss, with the same LoRA gradients (padded,
packed and under gradient accumulation), on GPT-2 and Llama; and a model type outside the list trains through its
own forward."""

import math

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
)

from builders import sample_features, tiny_llama_config, train_plan, training_args
from repo_paths import TINY_GPT2_DIR
from squad_lora import trainer
from squad_lora.args import LoraArguments
from squad_lora.collators import PackingCollator
from squad_lora.loss import LABELLED_LOSS_MODEL_TYPES, labelled_positions_loss
from squad_lora.modeling import apply_lora
from squad_lora.trainer import QATrainer


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
