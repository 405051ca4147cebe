"""The files a run writes and reads back, each format in one place, every file written atomically.

Atomic: written under a temporary name and renamed into place when complete, so a crash or a kill -9
mid-write leaves the previous file (or none), never half of one.

Formats: run_summary.json and run_config.yaml (run_qa_lora.py), strategy_comparison.json / .md
(evaluate_squad.py --compare), eval_predictions_<evaluation>.jsonl (each evaluation's answers, QATrainer);
report.py reads them. Predictions are scoring.py's.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable

import yaml

from squad_lora.args import DecodingArguments, PromptArguments
from squad_lora.errors import ConfigError, RunFileError, first_line, is_disk_full, raise_problems
from squad_lora.readers import parse_json, parse_yaml

SUMMARY_FILE = "run_summary.json"
CONFIG_FILE = "run_config.yaml"
LOCK_FILE = ".squad-lora.lock"  # lock_dir's: in a run's output dir while the run is alive
COMPARISON_FILE = "strategy_comparison"  # .json and .md


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


@contextlib.contextmanager
def atomic_dir(path: str):
    """A directory that appears at `path` (replacing what is there) only once the block completes: the block
    fills the staging directory it is given, beside `path` so that the final rename stays on one file system."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(path))}.")
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private
        shutil.rmtree(path, ignore_errors=True)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class KeptFilesError(RunFileError):
    """Writing failed part way; what was written is kept in `kept` (a directory) for the user to rescue."""

    def __init__(self, message: str, kept: str):
        super().__init__(f"{message}; what was written is kept in {kept}")
        self.kept = kept


@contextlib.contextmanager
def atomic_files(directory: str):
    """A staging directory whose files are each renamed into `directory` once the block completes: every file
    appears whole or not at all, and the other files of `directory` stay."""
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(dir=directory, prefix=".saving-")
    kept = False
    try:
        yield staging
        for name in os.listdir(staging):
            path = os.path.join(staging, name)
            if os.path.isfile(path):
                os.chmod(path, 0o666 & ~_umask())  # some writers create private (0600) files
            os.replace(path, os.path.join(directory, name))
    except Exception as e:  # a full disk, a permission: what was written may be all a run has; keep it
        if not (isinstance(e, OSError) or is_disk_full(e)):  # the Rust writers raise a plain Exception
            raise
        kept = bool(os.listdir(staging))
        if kept:
            raise KeptFilesError(f"writing into {directory} failed ({first_line(e, with_type=True)})", staging) from e
        raise
    finally:
        if not kept:
            shutil.rmtree(staging, ignore_errors=True)


# Where this script writes and how it says what a full disk left there (on_full_disk); None: it has not said
_FULL_DISK: tuple[str, Callable[[BaseException], str]] | None = None


def on_full_disk(directory: str, describe: Callable[[BaseException], str]) -> None:
    """Say how a full disk under directory leaves this script's outputs: describe(error) names what was kept and
    where. cli.run ends the script with it, whichever write failed and whichever library raised the error."""
    global _FULL_DISK
    _FULL_DISK = (directory, describe)


def forget_full_disk() -> None:
    """A new script's main (cli.run): an earlier one's outputs are not this one's."""
    global _FULL_DISK
    _FULL_DISK = None


def full_disk_message(error: BaseException) -> str | None:
    """The line a full disk ends the script with (what was kept, and where); None when error is no full disk."""
    directory, describe = _FULL_DISK or (None, None)
    if not is_disk_full(error, directory):
        return None
    if describe is None:
        reason = first_line(error, with_type=True)
        return f"the disk is full ({reason}): this script's files appear whole or not at all; free space, run it again"
    return describe(error)


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


def check_writable_dir(path: str, flag: str = "--output_dir") -> None:
    """Fail before any work when path cannot become a directory we write into."""
    if os.path.lexists(path) and not os.path.exists(path):
        raise RunFileError(f"{flag} {path}: is a symbolic link that leads nowhere (a loop, or a missing target)")
    try:
        os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunFileError(f"{flag} {path}: its path runs through a loop of symbolic links") from e
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunFileError(f"{flag} {path}: is a file, not a directory")
    existing = path
    while existing and not os.path.exists(existing):
        existing = os.path.dirname(existing)
    existing = existing or "."
    if not os.path.isdir(existing):
        raise RunFileError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunFileError(f"{flag} {path}: {existing} is not writable")


_LOCKS: dict = {}  # directory -> its open lock file, held until the process ends


def lock_dir(directory: str, flag: str = "--output_dir") -> None:
    """Hold an exclusive lock on directory (created if new) for the rest of this process: two runs writing into one
    directory would silently mix or replace each other's files."""
    import fcntl

    if os.path.realpath(directory) in _LOCKS:  # this process holds it already (a script's main called again)
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115  kept open (and locked) until the process ends
    try:
        # a POSIX record lock, not flock: it belongs to this process alone, so that the children it forks (data
        # loader workers) do not keep it alive after the run is killed
        handle.seek(0)  # the whole file, from its start, whatever "a+" left the position at
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise RunFileError(
            f"{flag} {directory}: another run is writing into it now (process {holder}): wait for it to end, or "
            f"choose another {flag}"
        ) from None
    try:
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
    except OSError:  # a full disk: no lock file is left behind (removed while still held: no one else's)
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):  # closing flushes the unwritten pid again
            handle.close()
        raise
    _LOCKS[os.path.realpath(directory)] = handle
    atexit.register(release_dir, directory)


def release_dir(directory: str) -> None:
    """Remove lock_dir's lock file, then let go of the lock (at the end of a run, and at exit whatever happened)."""
    handle = _LOCKS.pop(os.path.realpath(directory), None)
    if handle is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(directory, LOCK_FILE))
    handle.close()


def check_not_an_input(path: str, flag: str, inputs: dict, holding: bool = True) -> None:
    """Fail before any work when an output path is one of the inputs ({flag: path}), or (holding) a directory
    holding one, through symbolic links: writing or replacing it would destroy what the command was asked to read."""
    target = os.path.realpath(path)
    for name, given in inputs.items():
        for source_path in [given] if isinstance(given, str) else given or []:
            if not os.path.exists(source_path):  # a Hub id, or a file the script will find missing itself
                continue
            source = os.path.realpath(source_path)
            if source == target or (holding and source.startswith(target.rstrip(os.sep) + os.sep)):
                what = "is" if source == target else "holds"
                raise ConfigError(f"{flag} {path} {what} the input {name} {source_path}: choose another {flag}")


def check_writable_file(path: str, flag: str = "--output") -> None:
    """Fail before any work when a file cannot be written at path."""
    if os.path.isdir(path):
        raise RunFileError(f"{flag} {path}: is a directory, not a file")
    check_writable_dir(os.path.dirname(path) or ".", flag)


def _read_json(path: str, what: str) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_json(f.read(), path, RunFileError)
    except UnicodeDecodeError as e:
        raise RunFileError(f"{path}: not UTF-8 text: is it the {what}?") from e
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}): the {what} is damaged") from e


# run_summary.json: keys report.py needs, and their types
SUMMARY_SHAPE = {
    "run_name": str,
    "lora": dict,
    "trainable_params": int,
    "all_params": int,
    "trainable_percent": (int, float),
    "train_metrics": dict,
    "eval_metrics": dict,
    "log_history": list,
}


def read_run_summary(run_dir: str) -> dict:
    """A finished run's run_summary.json, checked for the keys the report needs."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    if not os.path.isdir(run_dir):
        raise RunFileError(f"{run_dir}: no such directory")
    if not os.path.isfile(path):
        raise RunFileError(f"{run_dir}: no {SUMMARY_FILE} (not a finished run_qa_lora.py output dir)")
    summary = _read_json(path, "run summary")
    if not isinstance(summary, dict):
        raise RunFileError(f"{path}: expected a JSON object, got a JSON {type(summary).__name__}")
    problems = [
        f"'{key}' missing" if key not in summary else f"'{key}' is not a {getattr(kind, '__name__', 'number')}"
        for key, kind in SUMMARY_SHAPE.items()
        if not isinstance(summary.get(key), kind) or isinstance(summary.get(key), bool)
    ]
    history = summary.get("log_history")
    if isinstance(history, list) and not all(isinstance(e, dict) and isinstance(e.get("step"), int) for e in history):
        problems.append("'log_history' entries need an integer 'step'")
    lora = summary.get("lora")
    if isinstance(lora, dict) and not isinstance(lora.get("lora_r"), int):
        problems.append("'lora.lora_r' is not an integer")
    raise_problems(problems, RunFileError, f"{path}: not a run summary run_qa_lora.py wrote: ")
    return summary


def write_results(output_dir: str, train_metrics: dict, eval_metrics: dict) -> None:
    """train_results.json, eval_results.json and all_results.json, as the Hugging Face examples write them."""
    results = {"train": train_metrics, "eval": eval_metrics}
    for split, metrics in results.items():
        if metrics:
            write_json(os.path.join(output_dir, f"{split}_results.json"), dict(sorted(metrics.items())))
    combined = {key: value for metrics in results.values() for key, value in metrics.items()}
    write_json(os.path.join(output_dir, "all_results.json"), dict(sorted(combined.items())))


def read_run_config(run_dir: str) -> dict:
    """A finished run's run_config.yaml (the resolved configuration)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = parse_yaml(f.read(), path, RunFileError)
    except FileNotFoundError as e:
        raise RunFileError(f"{run_dir}: no {CONFIG_FILE} (not a finished run_qa_lora.py output dir)") from e
    except UnicodeDecodeError as e:  # parse_yaml words malformed YAML itself
        raise RunFileError(f"{path}: not valid UTF-8 ({e}): the run's config is damaged") from e
    if not isinstance(config, dict):
        raise RunFileError(f"{path}: expected a mapping of settings")
    return config


def find_comparison(run_dir: str) -> dict | None:
    """The strategy comparison evaluate_squad.py --compare wrote somewhere under run_dir, if any."""
    import glob

    found = sorted(glob.glob(os.path.join(run_dir, "**", f"{COMPARISON_FILE}.json"), recursive=True))
    return read_comparison(found[0]) if found else None


def write_comparison(output_dir: str, result: dict, markdown: str) -> list[str]:
    """strategy_comparison.md and .json; returns their paths."""
    paths = [os.path.join(output_dir, f"{COMPARISON_FILE}.md"), os.path.join(output_dir, f"{COMPARISON_FILE}.json")]
    write_text(paths[0], markdown)
    write_json(paths[1], result)
    return paths


COMPARISON_ROW_KEYS = ("strategy", "exact_match", "f1")


def read_comparison(path: str) -> dict:
    """A strategy_comparison.json, checked for the rows report.py plots."""
    result = _read_json(path, "strategy comparison")
    rows = result.get("strategies") if isinstance(result, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(row, dict)
        and all(key in row for key in COMPARISON_ROW_KEYS)
        and isinstance(row["strategy"], str)
        and all(
            isinstance(row[key], (int, float)) and not isinstance(row[key], bool) for key in COMPARISON_ROW_KEYS[1:]
        )
        for row in rows
    ):
        raise RunFileError(
            f"{path}: not a strategy comparison evaluate_squad.py --compare wrote (expected 'strategies': rows "
            f"with {', '.join(COMPARISON_ROW_KEYS)}); delete it or rerun evaluate_squad.py --compare"
        )
    return result


def recorded_decoding(adapter: str | None) -> dict:
    """The decoding flags a local run (generate.py --adapter RUN) recorded in its run_config.yaml: its prompt format
    and a recipe's recommended decoding."""
    if not adapter or not os.path.isfile(os.path.join(adapter, CONFIG_FILE)):
        return {}
    decoding_flags = {f.name for cls in (DecodingArguments, PromptArguments) for f in dataclasses.fields(cls)}
    recorded = {key: value for key, value in read_run_config(adapter).items() if key in decoding_flags}
    strategies = recorded.pop("strategies", None)
    if strategies:  # the strategy the run's evaluation answered with; --strategy/--strategies still override it
        recorded["strategy"] = strategies[0]
    return recorded


# ---------------------------------------------------------------------------
# eval_predictions_<evaluation>.jsonl: each evaluation's answers (--eval_log_samples), for report.py --question
# ---------------------------------------------------------------------------

ANSWERS_FILE = re.compile(r"^eval_predictions_(?P<label>step(?P<step>\d+)|final)\.jsonl$")
ANSWER_KEYS = ("step", "id", "question", "answers", "prediction", "exact_match", "f1")


def evaluation_name(step: int | None) -> str:
    """How answer files and tables name an evaluation: step<step> during training, final (step None) after it
    (run_qa_lora.py's final evaluation, of the best checkpoint or of a last step not evaluated in training)."""
    return "final" if step is None else f"step{step}"


def answers_path(output_dir: str, evaluation: str, prefix: str = "eval") -> str:
    """<prefix>_predictions_<evaluation>.jsonl in output_dir (evaluation: evaluation_name's)."""
    return os.path.join(output_dir, f"{prefix}_predictions_{evaluation}.jsonl")


def remove_later_answers(output_dir: str, step: int) -> None:
    """Remove the eval_predictions files of evaluations after `step` and the final one: what a run that starts (or
    resumes) at `step` in output_dir will write anew, left by the run it overwrites (or the attempt it resumes)."""
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else ():
        match = ANSWERS_FILE.match(name)
        if match and (match["step"] is None or int(match["step"]) > step):
            os.remove(os.path.join(output_dir, name))


def _answer_row(line: str, where: str) -> dict:
    try:
        row = parse_json(line, where, RunFileError)
    except json.JSONDecodeError as e:
        raise RunFileError(f"{where}: not JSON ({e.msg}): the file is damaged") from e
    if not isinstance(row, dict) or not all(key in row for key in ANSWER_KEYS):
        raise RunFileError(f"{where}: expected an object with {', '.join(ANSWER_KEYS)}: the file is damaged")
    return row


def read_answers(run_dir: str) -> list[tuple[str, list[dict]]]:
    """(evaluation, rows) for every eval_predictions_*.jsonl in run_dir, in the order the evaluations ran: by
    step, the final one last. evaluation: the file's label (step<N> or final)."""
    found = []
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else ():
        match = ANSWERS_FILE.match(name)
        if match:
            order = (1, 0) if match["step"] is None else (0, int(match["step"]))
            found.append((order, match["label"], os.path.join(run_dir, name)))
    evaluations = []
    for _, label, path in sorted(found):
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except UnicodeDecodeError as e:
            raise RunFileError(f"{path}: not UTF-8 text: the file is damaged") from e
        rows = [_answer_row(line, f"{path}: line {n}") for n, line in enumerate(lines, 1) if line.strip()]
        evaluations.append((label, rows))
    return evaluations


def markdown_table(columns, rows) -> str:
    """rows under columns as a markdown table (TensorBoard's sample answers, report.py --question): each cell on one
    line with its | escaped, a float to 2 decimals, None as –."""

    def cell(value) -> str:
        text = "–" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
        return " ".join(text.split()).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows])
