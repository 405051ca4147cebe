"""Random tiny causal LMs by architecture name, for tests that run each option on both: configs/tiny-gpt2 (Conv1D
layers) and conftest's tiny Llama (nn.Linear layers, grouped-query attention); and padded training batches."""

import torch
from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from conftest import TINY_GPT2_DIR, sample_features, tiny_llama_config


def tiny_model(architecture: str, tokenizer, seed: int = 0):
    """A random tiny gpt2 or llama, in eval mode (no dropout)."""
    torch.manual_seed(seed)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))
    else:
        model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    return model.eval()


def save_tiny_model(architecture: str, tokenizer, directory) -> str:
    model = tiny_model(architecture, tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def padded_batch(tokenizer, num_examples: int = 4, start: int = 0) -> dict:
    """The training features of validation questions start.. start + num_examples, padded to the longest."""
    features = sample_features(tokenizer, start + num_examples)[start:]
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(features)
