"""A hyperparameter sweep's file formats: the sweep file (YAML: the base run, the search space, the objective) and
sweep_summary.json; and the rules between them: a trial's flags, its directory, and the sweep's trials for report.py.

sweep.py runs the sweep (Optuna). Nothing here imports Optuna, torch or the Trainer: report.py reads a sweep's
summary with it. docs/sweeps.md describes the format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass

from squad_lora import outputs, shipped
from squad_lora.cli import load_config_file
from squad_lora.errors import ConfigError, RunFileError

SUMMARY_FILE = "sweep_summary.json"
STUDY_FILE = "study.db"  # the Optuna study (SQLite), in the sweep's output dir
STUDY_NAME = "sweep"
OBJECTIVES = ("eval_f1", "eval_exact_match")  # what run_summary.json's eval_metrics hold with EM/F1 on
DIRECTIONS = ("maximize", "minimize")
SAMPLERS = ("tpe", "random")
# the flags each trial gets from the sweep itself
SWEEP_FLAGS = ("output_dir", "run_name", "resume_from_checkpoint", "overwrite_output_dir")

TOP_KEYS = ("base_config", "flags", "output_dir", "n_trials", "objective", "direction", "sampler", "space")
RANGE_KEYS = ("low", "high", "log", "step")
SAMPLER_KEYS = ("type", "seed")


@dataclass(frozen=True)
class SearchParam:
    """One flag of the search space: a choice among values, or a number between low and high."""

    name: str
    kind: str  # "categorical", "int" or "float"
    choices: tuple = ()  # the flag values (a list for a list flag: lora_target_modules)
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def labels(self) -> tuple:
        """The choices as Optuna stores them (plain values): a list choice as its items joined by ', '."""
        return tuple(", ".join(map(str, c)) if isinstance(c, list) else c for c in self.choices)

    def value(self, label):
        """The flag value of an Optuna parameter value (a label, for a choice)."""
        if self.kind != "categorical":
            return label
        return self.choices[self.labels.index(label)]

    def as_dict(self) -> dict:
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        plain = {"low": self.low, "high": self.high, "log": self.log}
        return {**plain, "step": self.step} if self.step is not None else plain


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file, checked: every trial runs run_qa_lora.py with base_config, then flags, then its own values."""

    path: str
    name: str  # the sweep file's name: trial runs are named <name>-trial-NNN
    base_config: str | None
    flags: dict
    output_dir: str
    n_trials: int
    objective: str
    direction: str
    sampler: dict  # {"type": tpe|random, "seed": int}
    space: tuple[SearchParam, ...]

    def identity(self) -> str:
        """What a study must have been started with to be resumed by this spec (n_trials may grow)."""
        same = {"base_config": self.base_config, "flags": self.flags, "objective": self.objective}
        same.update(direction=self.direction, sampler=self.sampler, space=[[p.name, p.as_dict()] for p in self.space])
        return json.dumps(same, sort_keys=True)


def flag_kinds(argument_types) -> dict[str, str]:
    """{flag: "int", "float", "bool", "list" or "other"} of every field of the script's argument dataclasses."""
    kinds = {}
    for cls in argument_types:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
            if base is bool:
                kinds[f.name] = "bool"
            elif base in (int, float):
                kinds[f.name] = base.__name__
            elif typing.get_origin(base) is list:
                kinds[f.name] = "list"
            else:
                kinds[f.name] = "other"
    return kinds


def _unknown(keys, valid, where: str) -> None:
    unknown = [key for key in keys if key not in valid]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(valid), 1, 0.7)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}{key}: unknown key{hint}; valid keys: {', '.join(valid)}")


def _number(value, where: str, integer: bool) -> float:
    """A YAML number (PyYAML reads 1e-4 as a string) or a ConfigError naming where."""
    given = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a number, got {given!r}")
    if integer:
        if value != int(value):
            raise ConfigError(f"{where}: the flag takes an integer, got {value!r}")
        return int(value)
    return float(value)


def _search_param(name: str, entry, kinds: dict, where: str) -> SearchParam:
    where = f"{where}space: {name}"
    if name not in kinds:
        close = difflib.get_close_matches(name, list(kinds), 1, 0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{where}: not a run_qa_lora.py flag{hint}; python run_qa_lora.py --help lists them")
    if name in SWEEP_FLAGS:
        raise ConfigError(f"{where}: the sweep sets it for each trial; remove it from the space")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected {{choices: [...]}} or {{low: ..., high: ...}}, got {entry!r}")
    if "choices" in entry:
        _unknown(entry, ("choices",), f"{where}: ")
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices: expected a non-empty list, got {choices!r}")
        for choice in choices:
            items = choice if isinstance(choice, list) else [choice]
            if not items or not all(isinstance(item, (str, int, float, bool)) for item in items):
                raise ConfigError(f"{where}: choices: {choice!r} is not a flag value (a number, a word or a list)")
        param = SearchParam(name, "categorical", tuple(choices))
        if len(set(param.labels)) != len(choices):
            raise ConfigError(f"{where}: choices: a value is given twice")
        return param
    _unknown(entry, RANGE_KEYS, f"{where}: ")
    if "low" not in entry or "high" not in entry:
        raise ConfigError(f"{where}: a range needs low and high (or give choices: [...])")
    kind = kinds[name]
    if kind not in ("int", "float"):
        raise ConfigError(f"{where}: --{name} is not a number flag: give choices: [...]")
    low = _number(entry["low"], f"{where}: low", kind == "int")
    high = _number(entry["high"], f"{where}: high", kind == "int")
    log = entry.get("log", False)
    step = entry.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log: expected true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got {low}")
    if step is not None:
        step = _number(step, f"{where}: step", kind == "int")
        if log or step <= 0:
            raise ConfigError(f"{where}: step must be positive and cannot go with log: true")
        if step > high - low:  # Optuna would draw low alone, with a warning: a one-value search
            raise ConfigError(f"{where}: step ({step}) is wider than the range from low ({low}) to high ({high})")
    return SearchParam(name, kind, low=low, high=high, log=log, step=step)


def _sampler(value, where: str) -> dict:
    sampler = {"type": "tpe", "seed": 0}
    if value is None:
        return sampler
    if not isinstance(value, dict):
        raise ConfigError(f"{where}sampler: expected {{type: tpe, seed: 0}}, got {value!r}")
    _unknown(value, SAMPLER_KEYS, f"{where}sampler: ")
    sampler.update(value)
    if sampler["type"] not in SAMPLERS:
        raise ConfigError(f"{where}sampler: type: {sampler['type']!r}: choose one of {', '.join(SAMPLERS)}")
    if isinstance(sampler["seed"], bool) or not isinstance(sampler["seed"], int):
        raise ConfigError(f"{where}sampler: seed: expected an integer, got {sampler['seed']!r}")
    return sampler


def load_sweep_spec(path: str, kinds: dict[str, str]) -> SweepSpec:
    """Read and check a sweep file against the run's flags (kinds: flag_kinds of run_qa_lora's dataclasses).

    Raises:
        ConfigError: one line naming the file and the key at fault.
    """
    values = load_config_file(path)
    where = f"{path}: "
    _unknown(values, TOP_KEYS, where)
    if "space" not in values or not isinstance(values["space"], dict) or not values["space"]:
        raise ConfigError(f"{where}space: expected a mapping of flags to search, e.g. lora_r: {{choices: [4, 8]}}")
    flags = values.get("flags") or {}
    if not isinstance(flags, dict):
        raise ConfigError(f"{where}flags: expected a mapping of run_qa_lora.py flags to values, got {flags!r}")
    for key in flags:
        if key not in kinds:
            close = difflib.get_close_matches(str(key), list(kinds), 1, 0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{where}flags: {key}: not a run_qa_lora.py flag{hint}")
        if key in SWEEP_FLAGS:
            raise ConfigError(f"{where}flags: {key}: the sweep sets it for each trial; remove it")
    both = sorted(set(flags) & set(values["space"]))
    if both:
        raise ConfigError(f"{where}space: {both[0]}: also set in flags; keep it in one of the two")
    base_config = values.get("base_config")
    base_config = shipped.resolve(base_config) if isinstance(base_config, str) else base_config
    if base_config is not None and (not isinstance(base_config, str) or not os.path.isfile(base_config)):
        raise ConfigError(
            f"{where}base_config: {base_config!r}: no such run config file (paths are from here, {os.getcwd()})"
        )
    n_trials = values.get("n_trials", 10)
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"{where}n_trials: expected a positive integer, got {n_trials!r}")
    objective = values.get("objective", "eval_f1")
    if objective not in OBJECTIVES:
        raise ConfigError(f"{where}objective: {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    direction = values.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise ConfigError(f"{where}direction: {direction!r}: choose one of {', '.join(DIRECTIONS)}")
    name = os.path.splitext(os.path.basename(path))[0]
    output_dir = values.get("output_dir", os.path.join("outputs", "sweeps", name))
    if not isinstance(output_dir, str) or not output_dir:
        raise ConfigError(f"{where}output_dir: expected a directory, got {output_dir!r}")
    return SweepSpec(
        path=path,
        name=name,
        base_config=base_config,
        flags=flags,
        output_dir=output_dir,
        n_trials=n_trials,
        objective=objective,
        direction=direction,
        sampler=_sampler(values.get("sampler"), where),
        space=tuple(_search_param(str(key), entry, kinds, where) for key, entry in values["space"].items()),
    )


def flag_words(values: dict) -> list[str]:
    """Flag values as run_qa_lora.py's command-line words (--key=value; a list as --key item ...)."""
    words = []
    for key, value in values.items():
        if isinstance(value, list):
            words += [f"--{key}", *map(str, value)]
        elif isinstance(value, bool):
            words.append(f"--{key}={str(value).lower()}")
        elif value is not None:
            words.append(f"--{key}={value}")
    return words


def trial_dir_name(number: int) -> str:
    return f"trial-{number:03d}"


def trial_argv(spec: SweepSpec, params: dict, output_dir: str, run_name: str) -> list[str]:
    """run_qa_lora.py's arguments for a trial: the base config, the sweep's flags, the trial's values, its dir."""
    words = [spec.base_config] if spec.base_config else []
    return words + flag_words(spec.flags) + flag_words(params) + ["--output_dir", output_dir, "--run_name", run_name]


def corner_params(spec: SweepSpec) -> list[dict]:
    """Two trials' values that between them take every end of the space: each range's low then high, each
    choice list's first then last; a check of the flags before any trial trains."""
    low = {p.name: p.choices[0] if p.kind == "categorical" else p.low for p in spec.space}
    high = {p.name: p.choices[-1] if p.kind == "categorical" else p.high for p in spec.space}
    return [low, high]


def write_summary(sweep_dir: str, summary: dict) -> None:
    outputs.write_json(os.path.join(sweep_dir, SUMMARY_FILE), summary)


def read_summary(sweep_dir: str) -> dict:
    """A sweep's sweep_summary.json, checked for the trials report.py reads."""
    path = os.path.join(sweep_dir, SUMMARY_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}): the sweep summary is damaged") from e
    trials = summary.get("trials") if isinstance(summary, dict) else None
    if not isinstance(trials, list) or not all(
        isinstance(t, dict) and isinstance(t.get("output_dir"), str) and isinstance(t.get("state"), str) for t in trials
    ):
        raise RunFileError(f"{path}: not a sweep summary sweep.py wrote (expected 'trials' with output_dir and state)")
    return summary


def is_sweep_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SUMMARY_FILE)) and not os.path.isfile(
        os.path.join(path, outputs.SUMMARY_FILE)
    )


def complete_trial_dirs(sweep_dir: str) -> list[str]:
    """The run directories of a sweep's complete trials, in trial order."""
    trials = read_summary(sweep_dir)["trials"]
    return [os.path.join(sweep_dir, t["output_dir"]) for t in trials if t["state"] == "COMPLETE"]
