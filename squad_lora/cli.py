"""The command-line convention every script follows: parsing, logging, and how a user's fault ends.

    python SCRIPT.py [CONFIG.yaml] [--flag value ...]
    python SCRIPT.py --config CONFIG.yaml ...          # TRL's form of the same thing
    python SCRIPT.py FILE ... [--config CONFIG.yaml] [--flag value ...]   # scripts that take files

A script whose bare words are files or directories (evaluate_squad.py, report.py) takes its config
only as --config, so that a data file named *.json is never read as one.

A YAML or JSON config holds flag values; flags on the command line override it. Its values go through
the same argparse types as flags, so `learning_rate: 1e-4` (a string to PyYAML) is a number here too.
A user's fault (a SquadLoraError) ends the script with one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import reprlib
import sys
from collections.abc import Callable

from transformers import HfArgumentParser

from squad_lora import outputs, shipped
from squad_lora.errors import INTERRUPTED_EXIT_CODE, USER_FAULT_EXIT_CODE, ConfigError, SquadLoraError
from squad_lora.readers import parse_json, parse_yaml

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _UsageError(ConfigError):
    """argparse's own complaint about a flag's value (wrong type, not a choice)."""


class _Parser(HfArgumentParser):
    """HfArgumentParser whose usage errors raise ConfigError (argparse's documented override point)."""

    def error(self, message):
        raise _UsageError(message)


def load_config_file(path: str) -> dict:
    """Read a YAML or JSON config into a dict of flag values."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        parse = parse_json if path.endswith(".json") else parse_yaml
        values = parse(text, path, ConfigError)
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: config file not found") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{path}: is a directory, not a config file") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # parse_yaml words its own
        raise ConfigError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: {e}") from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of flag names to values")
    return values


def _config_file(argv: list[str], config_first: bool) -> tuple[str | None, list[str]]:
    """The config file given first (where config_first) or as --config FILE (or the one the package ships by that
    name: shipped.py), and argv without it."""
    config_file, argv = _given_config_file(argv, config_first)
    return (shipped.resolve(config_file) if config_file else None), argv


def _given_config_file(argv: list[str], config_first: bool) -> tuple[str | None, list[str]]:
    if config_first and argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        return argv[0], argv[1:]
    for i, item in enumerate(argv):
        if item == "--config":
            if i + 1 == len(argv):
                raise ConfigError("--config needs a file: --config configs/smoke.yaml")
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if item.startswith("--config="):
            return item.split("=", 1)[1], argv[:i] + argv[i + 1 :]
    return None, argv


def flag_value(argv: list[str] | None, name: str, config_first: bool = True) -> str | None:
    """One flag's value as given on the command line or in its config file, read before parsing: the flag that
    decides a script's defaults (generate.py's --adapter, whose run recorded its decoding)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_file, argv = _config_file(argv, config_first)
    for i, word in enumerate(argv):
        if word == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(f"--{name}="):
            return word.split("=", 1)[1]
    value = load_config_file(config_file).get(name) if config_file else None
    return value if isinstance(value, str) else None


def _as_flags(key: str, value) -> list[str] | None:
    """A config value as the command-line words that set it; None when it cannot be written as words."""
    if value is None or value == []:
        return None
    # --key=value: a value such as -1e-4 would otherwise read as a flag
    if isinstance(value, bool):
        return [f"--{key}={str(value).lower()}"]
    if isinstance(value, dict):
        return [f"--{key}={json.dumps(value)}"]
    if isinstance(value, list):
        if any(isinstance(item, (list, dict)) for item in value):
            raise ConfigError(f"{key}: a list of plain values is expected, got {reprlib.repr(value)}")
        return [f"--{key}", *map(str, value)]
    return [f"--{key}={value}"]


def _field_names(dataclass_types) -> list[str]:
    return [f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init]


def _config_values(config_file: str | None, names: list[str]) -> dict:
    """The config file's flag values, every key one of the names."""
    if not config_file:
        return {}
    values = load_config_file(config_file)
    unknown = sorted(set(values) - set(names))
    if unknown:
        hints = [
            f"{k} (did you mean {' or '.join(m)}?)" if (m := difflib.get_close_matches(k, names, 3, 0.75)) else k
            for k in unknown
        ]
        raise ConfigError(f"{config_file}: unknown key(s): {', '.join(hints)}. Valid keys: {', '.join(sorted(names))}")
    return values


def _config_words(values: dict, argv: list[str], parser, dataclass_types, config_file: str | None) -> tuple:
    """(command-line words, keys) for the values no flag on the command line overrides; a value that no words can
    spell becomes the parser's default."""
    optional = {  # fields that take None (null in a config file)
        f.name: f.default is None or "None" in str(f.type) or "Optional" in str(f.type)
        for cls in dataclass_types
        for f in dataclasses.fields(cls)
    }
    # a flag on the command line wins: its config value is not parsed at all (it may be the bad one)
    given = {word[2:].split("=", 1)[0].replace("-", "_") for word in argv if word.startswith("--")}
    given |= {name.removeprefix("no_") for name in given}
    config_words: list[str] = []
    config_keys: set[str] = set()
    for key, value in values.items():
        if key in given:
            continue
        if value is None and not optional[key]:
            raise ConfigError(f"{config_file}: {key}: null is not a value this flag takes: give one, or remove the key")
        try:
            words = _as_flags(key, value)
        except ConfigError as e:
            raise ConfigError(f"{config_file}: {e}") from None
        if words is None:
            parser.set_defaults(**{key: value})
        else:
            config_words += words
        config_keys.add(key)
    return config_words, config_keys


def parse_args(
    dataclass_types: tuple,
    argv: list[str] | None = None,
    positional: tuple[str, ...] = (),
    files_first: bool = False,
    defaults: dict | None = None,
    bare_words: str | None = None,
) -> tuple[tuple, str | None, list[str]]:
    """Parse a config file, positional arguments and flags into the given dataclasses.

    Args:
        positional: field names that bare words on the command line may fill, in order; a list field
            takes all of them. The words a script has no field for come back for the script to place.
        files_first: the script's bare words are files (implied by positional): config only as --config.
        defaults: flag values used where neither the config file nor the command line sets the flag
            (generate.py: the decoding a run recorded).
        bare_words: what the script takes as bare words, for the error on a word left over; None: the
            script places the words left over itself.

    Returns:
        (dataclass instances, config file path or None, positional words not placed).

    Raises:
        ConfigError: an unknown key or flag, a value of the wrong type, or an invalid combination,
            naming the config file and key or the flag.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_file, argv = _config_file(argv, config_first=not (positional or files_first))
    parser = _Parser(dataclass_types)
    names = _field_names(dataclass_types)
    values = {**(defaults or {}), **_config_values(config_file, names)}
    config_words, config_keys = _config_words(values, argv, parser, dataclass_types, config_file)
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=config_words + argv, return_remaining_strings=True)
    except _UsageError as e:
        raise ConfigError(_blame_config(str(e), config_file, config_keys, argv)) from None
    except ConfigError:
        raise
    except ValueError as e:  # a dataclass's own check (TrainingArguments raises ValueError)
        raise ConfigError(f"{config_file + ': ' if config_file else ''}{e}") from e
    unknown_flags = [item for item in remaining if item.startswith("-") and not _is_number(item)]
    if unknown_flags:
        close = difflib.get_close_matches(unknown_flags[0].lstrip("-").split("=")[0], names, 1, 0.75)
        raise ConfigError(
            f"unknown flag(s) {' '.join(unknown_flags)}"
            + (f" (did you mean --{close[0]}?)" if close else "")
            + "; --help lists them"
        )
    words = [item for item in remaining if not item.startswith("-") or _is_number(item)]
    words = _place_positional(parsed, positional, words)
    find_shipped_inputs(*parsed)
    if words and bare_words is not None:  # a word no flag took would otherwise be dropped without a word
        raise ConfigError(f"unexpected argument(s) {' '.join(words)}: besides {bare_words}, every input is a --flag")
    return tuple(parsed), config_file, words


def find_shipped_inputs(*arg_objects) -> None:
    """An input the working directory lacks may be one the package ships (configs/tiny-gpt2, data/sample/...):
    shipped.resolve on each input field (a script that places bare words itself calls this once more)."""
    for obj in arg_objects:
        for name in shipped.INPUT_FIELDS & {f.name for f in dataclasses.fields(obj)}:
            if isinstance(getattr(obj, name), str):
                setattr(obj, name, shipped.resolve(getattr(obj, name)))


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


def _blame_config(message: str, config_file: str | None, config_keys: set[str], argv: list[str]) -> str:
    """Prefix an argparse message about a flag that only the config file set with the file and key."""
    for key in config_keys:
        if f"--{key}" in message and f"--{key}" not in argv:
            return f"{config_file}: {key}: {message}"
    return message


def _place_positional(parsed: list, positional: tuple[str, ...], words: list[str]) -> list[str]:
    """Fill the named fields that are still unset with the bare words, in order; returns the words left."""
    for name in positional:
        if not words:
            break
        target = next(obj for obj in parsed if name in {f.name for f in dataclasses.fields(obj)})
        current = getattr(target, name)
        if isinstance(current, list) or current is None and _is_list_field(target, name):
            setattr(target, name, list(current or []) + words)
            words = []
        elif current is None:
            setattr(target, name, words.pop(0))
    return words


def _is_list_field(obj, name: str) -> bool:
    field_type = {f.name: f.type for f in dataclasses.fields(obj)}[name]
    return "list" in str(field_type)


def _yaml_safe(value):
    """A YAML-safe form of an argument value (enums by value, config objects as dicts)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):
        return value.value
    return value


def resolved_config(*arg_objects) -> dict:
    """Every setting of our dataclasses, plus the TrainingArguments that differ from their defaults.

    The result is a valid config file for the same script. Tokens are never included.
    """
    from transformers import TrainingArguments

    resolved = {}
    for obj in arg_objects:
        # TrainingArguments has ~150 fields: keep those that differ from a default instance's
        defaults = type(obj)() if isinstance(obj, TrainingArguments) else None
        for f in dataclasses.fields(obj):
            if not f.init or f.name.endswith("_token"):
                continue
            value = _yaml_safe(getattr(obj, f.name))
            if defaults is not None and value == _yaml_safe(getattr(defaults, f.name)):
                continue
            resolved[f.name] = value
    return json.loads(json.dumps(resolved, default=str))


def setup_logging(
    logger_name: str,
    verbose: bool = True,
    library_level: int = logging.WARNING,
    level: int | None = None,
    progress: bool = True,
) -> None:
    """The scripts' logging: the script and the squad_lora package at `level` (default INFO; WARNING when not
    verbose, e.g. on ranks other than the main one), the Hugging Face libraries at library_level. progress
    False turns off the libraries' progress bars too (loading weights, datasets' map); ours take it as an argument."""
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING)
    ours = level if level is not None else logging.INFO if verbose else logging.WARNING
    for name in (logger_name, "squad_lora"):
        logging.getLogger(name).setLevel(ours)
    for library in ("transformers", "datasets", "peft", "accelerate", "evaluate"):
        logging.getLogger(library).setLevel(library_level)
    if not progress:
        import datasets
        import huggingface_hub.utils
        import transformers.utils.logging

        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()


def setup_script_logging(logger_name: str, log_args, is_main_process: bool = True) -> None:
    """setup_logging as a script's LoggingArguments (--log_level, --disable_tqdm) ask."""
    ours, libraries = log_args.levels(is_main_process)
    setup_logging(logger_name, level=ours, library_level=libraries, progress=not log_args.disable_tqdm)


def process_state():
    """This process's accelerate PartialState for answering questions. PartialState, unlike the Trainer, ignores
    ACCELERATE_USE_CPU (set by `accelerate launch --cpu` and, for ranks on a machine without GPUs, by run()):
    without cpu=True every rank would answer every question."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def run(main: Callable[[], object]) -> None:
    """Run a script's main(): a user's fault becomes one line on stderr and exit status 2, and so does a full disk,
    whichever library's writer raised it, saying what was kept and where (outputs.full_disk_message).

    Ranks that `accelerate launch --multi_gpu` or torchrun start on a machine without GPUs run on the
    CPU over gloo. The process group is destroyed at exit: gloo aborts the process when it is left alive.
    An unexpected error is a bug and keeps its traceback.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    status = 0
    outputs.forget_full_disk()
    try:
        main()
    except SquadLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        status = e.exit_code
    except Exception as e:
        message = outputs.full_disk_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        status = USER_FAULT_EXIT_CODE
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        status = INTERRUPTED_EXIT_CODE
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(status)
