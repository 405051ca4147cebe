"""squad_lora.args: defaults, and the checks each dataclass makes of its values, peft's LoRA options among them
(QATrainingArguments' are in test_training_args.py)."""

import pytest
import torch

from builders import parse_training_args
from squad_lora.args import DecodingArguments, ModelArguments, TrainModelArguments
from squad_lora.cli import parse_args
from squad_lora.commands import train as run_qa_lora
from squad_lora.errors import ConfigError


def test_defaults_are_the_seed_best_experiment():
    args = parse_training_args([])
    assert args.config_file is None
    assert args.model.model_name_or_path == "gpt2"
    assert (args.lora.lora_r, args.lora.lora_alpha, args.lora.lora_dropout) == (8, 16, 0.1)
    assert args.training.learning_rate == 2e-4
    assert args.decoding.strategies == ["greedy"]


def test_only_training_defaults_the_base_model():
    # generate.py's default base is the one recorded with the adapter
    assert ModelArguments().model_name_or_path is None
    assert TrainModelArguments().model_name_or_path == "gpt2"
    assert TrainModelArguments(model_name_or_path="./my-gpt2").model_name_or_path == "./my-gpt2"


def test_target_modules_on_the_command_line():
    for flags in (["c_attn", "mlp.c_proj"], ["c_attn,mlp.c_proj"]):
        assert parse_training_args(["--lora_target_modules", *flags]).lora.lora_target_modules == [
            "c_attn",
            "mlp.c_proj",
        ]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--lora_r", "-1"], "--lora_r must be >= 0"),
        (["--lora_alpha", "0"], "--lora_alpha must be a finite number > 0"),
        (["--lora_dropout", "1.0"], "--lora_dropout must be in [0, 1)"),
        (["--max_seq_length", "0"], "--max_seq_length must be a positive integer"),
        (["--max_train_samples", "-5"], "--max_train_samples must be a positive integer"),
    ],
)
def test_invalid_values_name_the_flag(argv, expected):
    with pytest.raises(ConfigError) as info:
        parse_training_args(argv)
    assert expected in str(info.value)


def test_lora_problems_are_collected_into_one_error():
    with pytest.raises(ConfigError) as info:
        parse_training_args(["--lora_r", "-1", "--lora_dropout", "1.5"])
    assert "--lora_r" in str(info.value) and "--lora_dropout" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "nucleus"}, "unknown strategy 'nucleus'"),
        ({"strategies": ["greedy,nucleus"]}, "unknown strategy 'nucleus'"),
        ({"top_p": 0.0}, "--top_p must be in"),
        ({"temperature": 0.0}, "--temperature must be a finite number > 0"),
        ({"num_samples": 0}, "--num_samples must be a positive integer"),
        ({"generation_batch_size": 0}, "--generation_batch_size must be a positive integer"),
        ({"no_answer_threshold": 0.0}, "--no_answer_threshold must be in"),
        ({"min_answer_confidence": 1.5}, r"--min_answer_confidence must be in \[0, 1\]"),
    ],
)
def test_bad_decoding_arguments_name_the_flag(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DecodingArguments(**kwargs)


def test_strategies_are_split_and_deduplicated():
    assert DecodingArguments(strategies=["greedy,beam", "top_k", "greedy"]).strategies == ["greedy", "beam", "top_k"]
    assert DecodingArguments(strategy="beam").strategies == ["beam"]


# ---------------------------------------------------------------------------
# Quantized bases
# ---------------------------------------------------------------------------


def test_4bit_and_8bit_together_is_an_error():
    with pytest.raises(ConfigError, match="--load_in_4bit and --load_in_8bit exclude each other"):
        parse_training_args(["--load_in_4bit", "--load_in_8bit"])


def test_from_scratch_cannot_be_quantized():
    with pytest.raises(ConfigError, match="--from_scratch builds a float model"):
        parse_training_args(["--from_scratch", "--load_in_8bit"])


def test_4bit_flags_make_the_qlora_config():
    model_args = parse_training_args(["--load_in_4bit", "--bnb_4bit_compute_dtype", "float32"]).model
    config = model_args.quantization_config()
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant  # QLoRA's defaults
    assert config.bnb_4bit_compute_dtype == torch.float32
    assert ModelArguments().quantization_config() is None


# ---------------------------------------------------------------------------
# peft's LoRA options: refused up front, read from config files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--init_lora_weights", "eva"], "--init_lora_weights eva: not supported: EVA initializes from activations"),
        (["--init_lora_weights", "loftq"], "--init_lora_weights loftq: not supported: LoftQ needs a loftq_config"),
        (["--init_lora_weights", "corda"], "--init_lora_weights corda: not supported: CorDA needs"),
        (["--init_lora_weights", "svd"], "--init_lora_weights svd: choose from true, false, gaussian, pissa"),
        (["--init_lora_weights", "pissa_niter_x"], "choose from .* or pissa_niter_N"),
        (["--init_lora_weights", "mica", "--use_dora"], "mica cannot be combined with --use_dora"),
        (["--init_lora_weights", "pissa", "--use_dora"], "pissa cannot be combined with --use_dora: peft cannot convert"),
        (["--init_lora_weights", "olora", "--lora_modules_to_save", "lm_head"], "olora cannot be combined with --lora_modules_to_save"),
        (["--lora_target_modules", "all-linear", "c_attn"], "all-linear stands alone"),
        (["--lora_r", "0", "--use_dora", "--lora_modules_to_save", "lm_head"], "--use_dora, --lora_modules_to_save: LoRA options, but --lora_r 0"),
    ],
)  # fmt: skip
def test_lora_options_are_checked_before_anything_loads(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(run_qa_lora.ARGUMENT_TYPES, argv)


def test_config_file_init_true_is_the_default(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("init_lora_weights: true\nlora_modules_to_save: lm_head,wte\n", encoding="utf-8")
    lora = parse_args(run_qa_lora.ARGUMENT_TYPES, [str(config)])[0][2]
    assert lora.init_lora_weights == "true" and lora.peft_init_lora_weights() is True
    assert lora.lora_modules_to_save == ["lm_head", "wte"]
