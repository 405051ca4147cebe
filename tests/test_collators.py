"""squad_lora.collators: the padding collator masks the prompt and the padding and keeps the real EOS trained, the
plan picks padding or packing (and the batch order), and a packed row restarts its positions and never attends
across features."""

import torch
from transformers import DataCollatorForSeq2Seq, GPT2Config

from builders import CONTEXT, FILLER, example, features, sample_features, split_feature, train_plan, training_args
from repo_paths import TINY_GPT2_DIR
from squad_lora.collators import PackingCollator, make_collator
from squad_lora.prompt import PLAIN

TINY_CONFIG = GPT2Config.from_pretrained(TINY_GPT2_DIR)


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
