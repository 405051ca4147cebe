"""squad_lora.sharded, on one process: answering_state (each process answers every question where the weights are
sharded), the plan's `sharded` (what transformers' own Trainer reads under FSDP and DeepSpeed), and the FSDP
adapter workaround: peft finds no adapter weights under the module names FSDP gives the blocks it wraps, and
rewrite_fsdp_adapter writes them (and nothing where there is nothing to correct).
FSDP's module names are made here by wrapping each GPT-2 block as FSDP (version 1) does, under torch's name for the
wrapped module; the multi-process runs under FSDP itself are in test_distributed.py."""

import os

import torch
from accelerate import PartialState
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from builders import train_plan, training_args
from repo_paths import REPO_ROOT, TINY_GPT2_DIR
from squad_lora.args import LoraArguments
from squad_lora.modeling import apply_lora
from squad_lora.sharded import FSDP_WRAPPED, _WithoutFsdpNames, answering_state, rewrite_fsdp_adapter


class FsdpWrapped(torch.nn.Module):
    """A module held under FSDP's name for the module it wraps, as FullyShardedDataParallel (1) holds it."""

    def __init__(self, module):
        super().__init__()
        self.add_module(FSDP_WRAPPED, module)

    def forward(self, *args, **kwargs):
        return getattr(self, FSDP_WRAPPED)(*args, **kwargs)


def lora_gpt2():
    torch.manual_seed(0)
    return apply_lora(GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR)), LoraArguments(lora_r=4))


def wrap_blocks(peft_model):
    """Each transformer block wrapped as FSDP's auto-wrap policy wraps it (GPT2Block, configs/accelerate/fsdp.yaml)."""
    blocks = peft_model.get_base_model().transformer.h
    for i in range(len(blocks)):
        blocks[i] = FsdpWrapped(blocks[i])
    return peft_model


def test_answering_state_is_one_process_where_the_weights_are_sharded():
    with answering_state(torch.nn.Linear(2, 2), sharded=False) as state:
        assert isinstance(state, PartialState)  # each process answers its share
    with answering_state(torch.nn.Linear(2, 2), sharded=True) as state:
        assert not isinstance(state, PartialState)
        assert (state.num_processes, state.process_index) == (1, 0)  # every process answers every question
        assert state.is_main_process == PartialState().is_main_process  # ... and only the main one writes


def tiny_trainer(output_dir, **kwargs):
    """transformers' own Trainer on the tiny GPT-2."""
    from transformers import Trainer, TrainingArguments

    model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))
    return Trainer(model, TrainingArguments(output_dir=str(output_dir), report_to="none", **kwargs))


def trainer_shards(trainer) -> bool:
    """Whether transformers' Trainer runs with each process holding a shard of the weights, as it reads it."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return trainer.is_fsdp_enabled or is_deepspeed_zero3_enabled()


def test_the_plan_shards_under_fsdp_as_transformers_trainer_reads_it(tmp_path, monkeypatch, tiny_tokenizer):
    from accelerate.state import AcceleratorState
    from accelerate.utils import FullyShardedDataParallelPlugin

    config = GPT2Config.from_pretrained(TINY_GPT2_DIR)
    args = training_args(tmp_path)  # parsed on a machine with GPUs, where FSDP passes the arguments' own checks
    plan = train_plan(tiny_tokenizer, config, args)
    assert plan.sharded is False and trainer_shards(tiny_trainer(tmp_path)) is False  # one process, no FSDP
    # `accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP, which the plan reads, and (across GPUs)
    # puts FSDP's plugin in accelerate's process-wide state, which the Trainer reads: the plugin is put there by
    # hand, and a Trainer told to use the state as it is (use_configured_state) reads it as under FSDP
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    plan = train_plan(tiny_tokenizer, config, args)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=1, transformer_cls_names_to_wrap=["GPT2Block"])
    monkeypatch.setattr(AcceleratorState(), "fsdp_plugin", plugin, raising=False)
    trainer = tiny_trainer(tmp_path, accelerator_config={"use_configured_state": True})
    assert trainer.accelerator.state.fsdp_plugin is plugin and trainer.is_fsdp_enabled
    assert plan.sharded is True and plan.reasons["sharded"] == "FSDP"


def test_the_plan_shards_under_deepspeed_zero3_only_as_transformers_reads_it(tmp_path, tiny_tokenizer):
    import inspect

    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations import deepspeed

    config = GPT2Config.from_pretrained(TINY_GPT2_DIR)
    args = training_args(tmp_path)
    trainer = tiny_trainer(tmp_path)
    # transformers' HfDeepSpeedConfig (the Trainer's, made from --deepspeed) is accelerate's, registered where
    # is_deepspeed_zero3_enabled reads it when made; it needs deepspeed installed, so the registration is done here
    assert "set_hf_deepspeed_config(self)" in inspect.getsource(deepspeed.HfDeepSpeedConfig.__init__)
    configs = {
        stage: HfDeepSpeedConfig(os.path.join(REPO_ROOT, "configs", "deepspeed", f"zero{stage}.json"))
        for stage in (2, 3)
    }
    try:
        deepspeed.set_hf_deepspeed_config(configs[2])
        # ZeRO-2 shards the optimizer state and gradients, not the weights
        assert train_plan(tiny_tokenizer, config, args).sharded is False and trainer_shards(trainer) is False
        deepspeed.set_hf_deepspeed_config(configs[3])
        plan = train_plan(tiny_tokenizer, config, args)
        assert plan.sharded is True and trainer_shards(trainer) is True
        assert plan.reasons["sharded"] == "DeepSpeed ZeRO-3"
    finally:
        deepspeed.unset_hf_deepspeed_config()
    assert train_plan(tiny_tokenizer, config, args).sharded is False and trainer_shards(trainer) is False


def test_module_names_read_as_without_fsdps_wrappers():
    from torch.distributed.fsdp._common_utils import FSDP_WRAPPED_MODULE

    assert FSDP_WRAPPED == FSDP_WRAPPED_MODULE  # the name torch's FullyShardedDataParallel holds a module under
    model = wrap_blocks(lora_gpt2())
    wrapped = [name for name, _ in model.named_modules() if FSDP_WRAPPED in name]
    assert "base_model.model.transformer.h.0._fsdp_wrapped_module.attn.c_attn" in wrapped
    names = [name for name, _ in _WithoutFsdpNames(model).named_modules()]
    assert not any(FSDP_WRAPPED + "." in name for name in names)  # inside a wrapper, names read as without it
    assert "base_model.model.transformer.h.0.attn.c_attn" in names
    assert _WithoutFsdpNames(model).peft_config is model.peft_config  # everything else is the model's


def test_rewrite_fsdp_adapter_writes_the_weights_peft_misses_under_fsdp_names(tmp_path):
    model = lora_gpt2()
    expected = get_peft_model_state_dict(model)
    assert expected and all("lora_" in key for key in expected)
    state_dict = {key: value.clone() for key, value in model.state_dict().items()}  # gathered: no FSDP names
    wrap_blocks(model)
    # peft 0.21 alone finds nothing (when this fails, peft handles FSDP's names and rewrite_fsdp_adapter can go)
    assert get_peft_model_state_dict(model, state_dict=state_dict) == {}
    assert rewrite_fsdp_adapter(model, str(tmp_path), state_dict) is True
    saved = load_file(os.path.join(tmp_path, "adapter_model.safetensors"))
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(saved[key], value), key


def test_rewrite_fsdp_adapter_leaves_what_needs_no_correction(tmp_path):
    full_model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))  # no adapter: a full fine-tune
    assert rewrite_fsdp_adapter(full_model, str(tmp_path), full_model.state_dict()) is False
    unwrapped = lora_gpt2()  # an adapter without FSDP's names: peft saved it right
    assert rewrite_fsdp_adapter(unwrapped, str(tmp_path), unwrapped.state_dict()) is False
    assert os.listdir(tmp_path) == []
