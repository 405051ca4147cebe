"""What the package ships besides code: a checkout's configs/ and data/sample/, so that an installed
`squad-lora train configs/smoke.yaml` works in any folder, as `python run_qa_lora.py configs/smoke.yaml` does in a
checkout.

A wheel holds them inside the package (squad_lora/shipped/configs, squad_lora/shipped/data: pyproject.toml maps
the checkout's folders there); a checkout, installed editable or not, has them at its root. A relative path that
does not exist from the working directory but is one the package ships (configs/smoke.yaml, the tiny model
configs/tiny-gpt2 it names, data/sample/train-v1.1.json) is read from there. A file of the user's own always wins.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# The flags whose value may be a shipped file or folder (any script's; a config file's keys are flags too)
INPUT_FIELDS = frozenset({"model_name_or_path", "train_file", "validation_file", "data_file", "sweep_file"})


def shipped_root() -> str | None:
    """The folder holding the shipped configs/ and data/: inside an installed package, or a checkout's root."""
    for root in (os.path.join(_PACKAGE, "shipped"), os.path.dirname(_PACKAGE)):
        if os.path.isdir(os.path.join(root, "configs")) and os.path.isdir(os.path.join(root, "data")):
            return root
    return None


def resolve(path: str) -> str:
    """path where it exists from the working directory (or is absolute, or a Hub id the package does not ship);
    else the shipped file or folder of that relative path."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    root = shipped_root()
    candidate = os.path.normpath(os.path.join(root, path)) if root else None
    if candidate is None or not os.path.exists(candidate) or os.path.commonpath([candidate, root]) != root:
        return path
    logger.info("%s: not in %s; using the one shipped with squad_lora (%s)", path, os.getcwd(), candidate)
    return candidate
