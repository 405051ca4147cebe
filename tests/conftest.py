"""Shared fixtures: repository paths, the tiny GPT-2 tokenizer, and a saved random tiny GPT-2.

Every test runs offline: the Hub flags are set before any Hugging Face library is imported, and
HF_HOME points at an empty folder so a developer's download cache cannot answer for the Hub.
"""

import atexit
import os
import shutil
import sys
import tempfile
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="squad-lora-tests-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # datasets.map forks after the tokenizer has run
# Tiny models gain nothing from threads, and on a busy machine torch's spinning threads made
# a 3-step run take 8 s instead of 0.3 s. Set OMP_NUM_THREADS yourself to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)  # the scripts and helpers live at the repository root

SAMPLE_DIR = os.path.join(REPO_ROOT, "data", "sample")
TINY_GPT2_DIR = os.path.join(REPO_ROOT, "configs", "tiny-gpt2")


# run_qa_lora's argument dataclasses by class name, as parse_training_args names them
TRAINING_ROLES = {
    "TrainModelArguments": "model",
    "DataArguments": "data",
    "LoraArguments": "lora",
    "DecodingArguments": "decoding",
    "HubArguments": "hub",
    "QATrainingArguments": "training",
}


def parse_training_args(argv) -> SimpleNamespace:
    """run_qa_lora.py's arguments parsed from argv by its own parser: .model, .data, .lora, .decoding,
    .training (and any other dataclass by role), .all (every instance, in order) and .config_file."""
    import run_qa_lora
    from squad_lora.cli import parse_args

    parsed, config_file, _ = parse_args(run_qa_lora.ARGUMENT_TYPES, [str(word) for word in argv])
    roles = {TRAINING_ROLES.get(type(obj).__name__, type(obj).__name__): obj for obj in parsed}
    return SimpleNamespace(**roles, all=tuple(parsed), config_file=config_file)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a training script end to end (seconds, not milliseconds)")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny GPT-2 tokenizer, prepared as the scripts prepare it (pad = EOS)."""
    from squad_lora.modeling import load_tokenizer

    return load_tokenizer(TINY_GPT2_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A directory holding a random tiny GPT-2 (configs/tiny-gpt2) and its tokenizer, via save_pretrained."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))
    model_dir = tmp_path_factory.mktemp("tiny-gpt2-model")
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    return str(model_dir)
