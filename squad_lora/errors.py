"""The project's error types: a user's fault, reported by the scripts as one line and exit status 2.

Also the two ways every module words such a fault: the first line of a library's exception, and several
problems collected by a check and raised together; and is_disk_full, which tells a full disk whichever library's
writer raised it.
"""

import errno
import re
import shutil

USER_FAULT_EXIT_CODE = 2  # argparse's status for a usage error: every user fault exits with it


INTERRUPTED_EXIT_CODE = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)


class SquadLoraError(Exception):
    """Base of every error whose message is meant for the user (file, field or flag at fault + the fix)."""

    exit_code = USER_FAULT_EXIT_CODE


class ConfigError(SquadLoraError, ValueError):
    """A config file or flag value that cannot be used; the message names the file, key or flag."""


class SquadDataError(SquadLoraError, ValueError):
    """A SQuAD file or dataset that cannot be used; the message names the file and the fault."""


class PredictionsError(SquadLoraError, ValueError):
    """A predictions file that cannot be used; the message names the file, the line and the fault."""


class ModelLoadError(SquadLoraError, RuntimeError):
    """A model, tokenizer or adapter that cannot be loaded; the message says what to do instead."""


class RunFileError(SquadLoraError, ValueError):
    """A file a run wrote (run_summary.json, strategy_comparison.json) that cannot be read back."""


class Interrupted(SquadLoraError):
    """The user pressed Ctrl-C; the message says what can be resumed."""

    exit_code = INTERRUPTED_EXIT_CODE


class HubError(SquadLoraError, RuntimeError):
    """The Hub refused or could not be reached; the message says which and what to do."""


def first_line(error: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (its type's name where the message is empty): library errors
    often carry a traceback-like essay after it."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    return f"{type(error).__name__}: {line}" if with_type else line


def raise_problems(problems: list[str], error_type: type[SquadLoraError] = ConfigError, prefix: str = "") -> None:
    """Raise every problem a check collected as one error (nothing when there are none)."""
    if problems:
        raise error_type(prefix + "; ".join(problems))


# A full disk or quota: Python's OSError carries the errno; the Rust writers of tokenizers and safetensors raise a plain
# Exception (a SafetensorError) whose message ends with the OS error, "No space left on device (os error 28)", and
# some libraries re-raise an OSError's text ("[Errno 28] ...") as another type
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_CODES = "|".join(map(str, DISK_FULL_ERRNOS))
_DISK_FULL_TEXT = re.compile(rf"\(os error ({_CODES})\)|\[Errno ({_CODES})\]")
# PyTorch's zip writer (torch.save: a checkpoint's optimizer.pt) names no OS error on a full disk, only this
_TORCH_WRITE_FAILED = re.compile(r"PytorchStreamWriter failed|unexpected pos \d+ vs \d+")
_NO_ROOM_BYTES = 1 << 20  # what a disk has left when a writer gave up on it for want of room


def is_disk_full(error: BaseException, directory: str | None = None) -> bool:
    """Whether error (or an error it was raised from) is a full disk or quota: an OSError by its errno, any other
    exception by the OS error its message names, whatever its class. PyTorch's writer names none: its failure counts
    where the disk holding directory (what the script writes into) has less than a MiB left."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS or _DISK_FULL_TEXT.search(str(error)):
            return True
        if directory and _TORCH_WRITE_FAILED.search(str(error)):
            try:
                return shutil.disk_usage(directory).free < _NO_ROOM_BYTES
            except OSError:
                return False
        error = error.__cause__
    return False
