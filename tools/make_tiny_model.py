"""Write configs/tiny-gpt2/: a GPT-2-architecture config small enough for CPU tests, and its tokenizer.

The tokenizer is GPT-2's byte-level BPE scheme trained on the shipped sample (data/sample), so it
covers any text (bytes) while keeping the sample's prompts short. No weights are stored: runs
build the model with random weights (--from_scratch).

    python tools/make_tiny_model.py configs/tiny-gpt2
"""

import glob
import json
import sys

from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2TokenizerFast

EOS = "<|endoftext|>"


def sample_texts():
    for path in sorted(glob.glob("data/sample/*.json")):
        with open(path, encoding="utf-8") as f:
            articles = json.load(f)["data"]
        for article in articles:
            for paragraph in article["paragraphs"]:
                yield paragraph["context"]
                for qa in paragraph["qas"]:
                    yield qa["question"]
    yield "Context: Question: Answer: unanswerable"


def main(out_dir):
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(sample_texts()), vocab_size=1024, min_frequency=2, special_tokens=[EOS])
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(out_dir)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config.save_pretrained(out_dir)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "configs/tiny-gpt2")
