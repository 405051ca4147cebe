"""The project's error types: a user's fault, reported by the scripts as one line and exit status 2."""

USER_FAULT_EXIT_CODE = 2  # argparse's status for a usage error: every user fault exits with it


class SquadLoraError(Exception):
    """Base of every error whose message is meant for the user (file, field or flag at fault + the fix)."""


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
