"""squad-lora: the code the scripts share (arguments, data, model, trainer, decoding, scoring, outputs)."""

import logging


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


# bitsandbytes logs this at import (peft imports it, and transformers imports peft) on CPUs with AVX512-BF16 when
# the optional `kernels` package is missing: a faster 4-bit matmul it could not fetch, on every run of every
# script. Installed here, before any script imports transformers, and for that one message only.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community")
)
