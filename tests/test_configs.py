"""Every config file parses through run_qa_lora's real parser (and accelerate's, for its own); the seed
configs give the seed's settings and parameter counts."""

import glob
import os

import pytest
import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from builders import parse_training_args
from repo_paths import REPO_ROOT
from squad_lora.modeling import apply_lora, count_parameters, format_parameter_line

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True))

# The seed's experiment table for GPT-2 small (GPT2Config() defaults: 124,439,808 parameters).
SEED_TABLE = {
    # name: (r, alpha, dropout, lr, target modules, trainable, all, line's trainable%)
    "exp_r4_lr1e-4_attn": (4, 16, 0.1, 1e-4, ["c_attn"], 147_456, 124_587_264, "0.1184"),
    "exp_r8_lr2e-4_attn": (8, 16, 0.1, 2e-4, ["c_attn"], 294_912, 124_734_720, "0.2364"),
    "exp_r16_lr5e-4_attn": (16, 16, 0.1, 5e-4, ["c_attn"], 589_824, 125_029_632, "0.4717"),
    "exp_r8_lr2e-4_attn_mlp": (8, 16, 0.1, 2e-4, ["c_attn", "mlp.c_proj"], 663_552, 125_103_360, "0.5304"),
    "exp_r32_lr2e-4_attn_mlp": (32, 32, 0.1, 2e-4, ["c_attn", "mlp.c_proj"], 2_654_208, 127_094_016, "2.0884"),
}
GPT2_SMALL_PARAMS = 124_439_808


ACCELERATE_DIR = os.path.join(REPO_ROOT, "configs", "accelerate")
SWEEPS_DIR = os.path.join(REPO_ROOT, "configs", "sweeps")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_config_parses_with_the_real_parser(path):
    with open(path, encoding="utf-8") as f:
        first_line = f.readline()
        values = yaml.safe_load(first_line + f.read())
    assert first_line.startswith("#"), "a config opens with a comment saying why it exists"
    if path.startswith(ACCELERATE_DIR + os.sep):
        # `accelerate launch --config_file` configs: accelerate's own loader, which refuses unknown keys
        from accelerate.commands.config.config_args import load_config_from_file

        assert load_config_from_file(path).num_processes >= 1
        return
    if path.startswith(SWEEPS_DIR + os.sep):
        # sweep.py's files: the sweep's own checks, which put both ends of the space through run_qa_lora's parser
        from squad_lora.commands import train as run_qa_lora
        from squad_lora.sweeps import flag_kinds, load_sweep_spec

        assert load_sweep_spec(path, flag_kinds(run_qa_lora.ARGUMENT_TYPES)).space
        return
    args = parse_training_args([path])
    assert args.config_file == path
    parsed = {key: value for obj in args.all if obj is not args.training for key, value in vars(obj).items()}
    parsed.update(args.training.to_dict())
    for key, value in values.items():
        expected = [value] if key == "lora_target_modules" and isinstance(value, str) else value
        assert parsed[key] == expected, key


@pytest.mark.parametrize("name", SEED_TABLE)
def test_seed_config_values(name):
    args = parse_training_args([os.path.join(REPO_ROOT, "configs", f"{name}.yaml")])
    lora_args, training_args = args.lora, args.training
    r, alpha, dropout, lr, targets, *_ = SEED_TABLE[name]
    assert (lora_args.lora_r, lora_args.lora_alpha, lora_args.lora_dropout) == (r, alpha, dropout)
    assert training_args.learning_rate == pytest.approx(lr, rel=1e-12)
    assert isinstance(training_args.learning_rate, float)
    assert lora_args.lora_target_modules == targets


@pytest.mark.parametrize("name", SEED_TABLE)
def test_seed_config_parameter_counts_on_gpt2_small(name):
    lora_args = parse_training_args([os.path.join(REPO_ROOT, "configs", f"{name}.yaml")]).lora
    *_, num_trainable, num_all, percent = SEED_TABLE[name]
    with torch.device("meta"):  # GPT-2 small's shapes without allocating (or initializing) its weights
        model = GPT2LMHeadModel(GPT2Config())
        assert count_parameters(model)["all_params"] == GPT2_SMALL_PARAMS
        model = apply_lora(model, lora_args)
    counts = count_parameters(model)
    assert counts["trainable_params"] == num_trainable
    assert counts["all_params"] == num_all
    assert format_parameter_line(counts) == (
        f"trainable params: {num_trainable:,} || all params: {num_all:,} || trainable%: {percent}"
    )
    # peft's own count agrees with ours
    assert model.get_nb_trainable_parameters() == (num_trainable, num_all)


# ---------------------------------------------------------------------------
# accelerate configs (every one under configs/accelerate also loads above)
# ---------------------------------------------------------------------------


def test_top_level_accelerate_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(REPO_ROOT, "accelerate_config.yaml"))
    assert config.distributed_type == "MULTI_GPU" and config.mixed_precision == "bf16" and config.num_processes >= 1


def test_cpu_multiprocess_config_starts_two_ranks():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_multiprocess.yaml"))
    assert (config.num_processes, config.num_machines, config.mixed_precision) == (2, 1, "no")
