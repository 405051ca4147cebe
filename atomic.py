"""Atomic output files: written under a temporary name and renamed into place when complete.

A crash or a kill -9 mid-write leaves the previous file (or none), never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import yaml


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """Like open(path, mode) for writing, but the file appears at `path` only once closed cleanly."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str, obj) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str, rows) -> None:
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_yaml(path: str, obj) -> None:
    with atomic_open(path) as f:
        yaml.safe_dump(obj, f, sort_keys=False, allow_unicode=True)


def write_text(path: str, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)
