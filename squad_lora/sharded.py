"""What training needs where each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3).

Workarounds for library behaviour, each with the version it was found in: answering with sharded weights,
and saving an adapter whose weights FSDP gathered.
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace


@contextlib.contextmanager
def answering_state(model_wrapped, sharded: bool):
    """The process state to answer evaluation questions with, the weights made usable for generate().

    Where each process holds only a shard of the weights (FSDP, DeepSpeed ZeRO-3), every forward gathers the
    rest from all processes: a collective, so every process must run the same forwards, and each answers every
    question (the same seed, the same samples) instead of its share. FSDP keeps its root unit's weights
    (embeddings, final norm, LM head) sharded between forwards of the root, and generate() runs the modules
    inside it: those are gathered for the while (FSDP version 1, configs/accelerate/fsdp.yaml's).
    """
    from accelerate import PartialState
    from torch.distributed.fsdp import FullyShardedDataParallel

    state = PartialState()
    if sharded:
        state = SimpleNamespace(num_processes=1, process_index=0, is_main_process=state.is_main_process)
    if isinstance(model_wrapped, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(model_wrapped, recurse=False, writeback=False):
            yield state
    else:
        yield state


FSDP_WRAPPED = "_fsdp_wrapped_module"  # the name under which FSDP (1) holds each module it wraps


class _WithoutFsdpNames:
    """A peft model whose module names read as without FSDP's wrappers, as the keys of a gathered state dict do."""

    def __init__(self, model):
        self._model = model

    def named_modules(self, *args, **kwargs):
        for name, module in self._model.named_modules(*args, **kwargs):
            yield name.replace(FSDP_WRAPPED + ".", ""), module

    def __getattr__(self, name):
        return getattr(self._model, name)


def rewrite_fsdp_adapter(model, output_dir: str, state_dict: dict) -> bool:
    """After model.save_pretrained(output_dir, state_dict=...) with a state dict gathered under FSDP (version 1):
    write the adapter's weights again, and return True; False where there was nothing to correct.

    peft (0.21) finds an adapter's weights by module name and removes FSDP's `_fsdp_wrapped_module.` only at the
    start of a name; FSDP puts it inside the names of the blocks it wraps (`...h.0._fsdp_wrapped_module.attn...`),
    so save_pretrained writes an empty adapter_model.safetensors.
    """
    if not hasattr(model, "peft_config") or not any(FSDP_WRAPPED in name for name, _ in model.named_modules()):
        return False
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    weights = get_peft_model_state_dict(_WithoutFsdpNames(model), state_dict=state_dict)
    path = os.path.join(output_dir, "adapter_model.safetensors")
    save_file({key: value.contiguous() for key, value in weights.items()}, path, metadata={"format": "pt"})
    return True
