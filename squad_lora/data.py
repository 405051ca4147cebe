"""SQuAD files and splits: reading every supported layout, validating the rows, loading a split.

Examples are raw SQuAD rows in the flat Hub layout (id, title, context, question, answers{text, answer_start}),
read from the official JSON (v1.1, v2.0), JSON Lines, CSV or the Hub.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from squad_lora.columns import COLUMN_FLAGS, STANDARD_COLUMNS, check_columns, column_label, renamed, renames_of
from squad_lora.errors import SquadDataError, first_line
from squad_lora.readers import parse_json

logger = logging.getLogger(__name__)

COLUMNS = ("id", "title", "context", "question", "answers")


@dataclass
class LoadStats:
    """What loading kept and skipped, for the run summary."""

    num_examples: int = 0
    num_bad_answer_start: int = 0
    bad_answer_start_ids: list[str] = field(default_factory=list)
    num_repaired_answer_start: int = 0
    num_blank_answers: int = 0
    num_numeric_ids: int = 0
    version: str | None = None  # the official JSON's "version" field (v1.1, v2.0), else inferred from the questions
    version_inferred: bool = False


def read_text_file(path: str, error_type: type[Exception] | None = None) -> str:
    """A UTF-8 text file's content; a missing, undecodable or empty file raises error_type naming it.

    A byte-order mark (spreadsheet tools write one) is dropped.
    """
    error_type = error_type or SquadDataError
    if not os.path.isfile(path):
        raise error_type(f"{path}: {'is a directory, not a file' if os.path.isdir(path) else 'no such file'}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise error_type(
            f"{path}: not valid UTF-8 (byte {e.start}): {e.reason}; re-save it as UTF-8 "
            "(spreadsheet tools: 'CSV UTF-8')"
        ) from e
    if not text.strip():
        raise error_type(f"{path}: the file is empty")
    return text


def _official_rows(doc: dict, path: str) -> Iterable[dict]:
    """Flatten the official data/paragraphs/qas layout (v1.1 and v2.0) into Hub rows."""
    if not isinstance(doc["data"], list):
        raise SquadDataError(f"{path}: 'data' must be a list of articles")
    for a, article in enumerate(doc["data"]):
        where = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise SquadDataError(f"{where}: an article needs a 'paragraphs' list")
        title = article.get("title", "")
        for p, paragraph in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise SquadDataError(f"{pwhere}: a paragraph needs 'context' and a 'qas' list")
            if not isinstance(paragraph.get("context"), str):
                raise SquadDataError(f"{pwhere}: 'context' must be a string")
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise SquadDataError(f"{pwhere}.qas[{q}]: a question must be an object")
                answers = qa.get("answers")
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    raise SquadDataError(
                        f"{pwhere}.qas[{q}] (id {qa.get('id')!r}): 'answers' must be a list of "
                        "{text, answer_start} objects"
                    )
                if qa.get("is_impossible"):
                    answers = []
                yield {
                    "id": qa.get("id"),
                    "title": title,
                    "context": paragraph["context"],
                    "question": qa.get("question"),
                    "answers": {
                        "text": [x.get("text") for x in answers],
                        "answer_start": [x.get("answer_start") for x in answers],
                    },
                }


def _parse_answers_cell(cell: str, path: str, line: int, label: str) -> Any:
    """CSV exports of the Hub dataset write `answers` as JSON or as a Python dict repr."""
    if cell is None:  # csv.DictReader fills the fields a short row lacks with None
        raise SquadDataError(f"{path}: line {line}: the row has fewer fields than the header (no {label})")
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(cell)
        except (ValueError, SyntaxError):
            continue
    raise SquadDataError(f"{path}: line {line}: {label} is neither JSON nor a dict literal")


def _csv_delimiter(text: str) -> str:
    """Comma as Python and the Hub write CSV, or ; / tab as spreadsheet tools do in many locales: the header's
    most frequent of the three."""
    header = text.split("\n", 1)[0]
    return max(",;\t", key=header.count)


def _csv_rows(text: str, path: str, columns: dict[str, str]) -> list[dict]:
    """A CSV file's rows, their columns renamed and their answers parsed; the header must hold every column."""
    # lines end at "\n" only: str.splitlines() would also split inside a field at U+2028, NEL (\x85), ...
    reader = csv.DictReader(io.StringIO(text), delimiter=_csv_delimiter(text))
    check_columns(reader.fieldnames or [], columns, COLUMN_FLAGS, path)
    renames, label = renames_of(columns), column_label("answers", columns)
    rows = []
    for row in reader:
        row = renamed(row, renames)
        row["answers"] = _parse_answers_cell(row["answers"], path, reader.line_num, label)  # lines, not rows
        rows.append(row)
    return rows


OFFICIAL = "official SQuAD"  # the layout that names its own fields: the column flags do not apply to it


def _read_rows(path: str, columns: dict[str, str]) -> tuple[list[dict], str, str | None]:
    """Read any supported layout into raw rows with the standard column names; returns (rows, layout name, declared
    version or None). columns: the file's name of each standard column (--question_column, ...)."""
    text = read_text_file(path)
    if path.endswith(".csv"):
        return _csv_rows(text, path, columns), "csv", None
    try:
        doc = parse_json(text, path, SquadDataError)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "data" in doc:
        if renames_of(columns):
            logger.info("%s: the official SQuAD layout names its own fields: the column flags do not apply", path)
        version = doc.get("version")
        return list(_official_rows(doc, path)), OFFICIAL, None if version is None else str(version)
    if isinstance(doc, list):
        rows, layout = doc, "JSON list"
    elif isinstance(doc, dict) and columns["context"] in doc:  # JSON Lines holding a single example
        rows, layout = [doc], "JSON Lines"
    elif doc is not None:
        raise SquadDataError(
            f"{path}: unknown layout: expected the official SQuAD JSON (an object with 'data'), "
            "JSON Lines, or CSV with columns id, title, context, question, answers"
        )
    else:
        rows, layout = _json_lines(text, path), "JSON Lines"
    # a column a flag renames must be in some row; a row without a column is refused by validate_examples, by index
    present = list(dict.fromkeys(key for row in rows if isinstance(row, dict) for key in row))
    if present:
        check_columns(present, columns, [column for column, name in columns.items() if name != column], path)
    renames = renames_of(columns)
    return [renamed(row, renames) for row in rows], layout, None


def _json_lines(text: str, path: str) -> list:
    rows = []
    for line, raw in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON leaves U+2028 and NEL unescaped
        if not raw.strip():
            continue
        try:
            rows.append(parse_json(raw, f"{path}: line {line}", SquadDataError))
        except json.JSONDecodeError as e:
            raise SquadDataError(
                f"{path}: line {line}: not JSON ({e.msg}); expected the official SQuAD JSON or JSON Lines"
            ) from e
    return rows


# An answer_start this close to its answer text (in characters) is repaired to it: real files (translations,
# exports that count a BOM or a CRLF) are often off by one or two.
MAX_OFFSET_REPAIR = 5


def _row_id(row: dict, where: str, label: str) -> str:
    """The row's id as a string: integers (and other scalars) as other tools write them become text."""
    value = row.get("id")
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise SquadDataError(
        f"{where}: field {label} is {'missing' if value is None else f'a {type(value).__name__} ({value!r})'}: "
        "every question needs an id, a non-empty string or a number"
    )


def repaired_start(context: str, text: str, start: int) -> int | None:
    """answer_start itself where it points at text, else the nearest occurrence of text within MAX_OFFSET_REPAIR
    characters of it; None where there is none."""
    if start >= 0 and context[start : start + len(text)] == text:
        return start
    nearest = None
    for delta in range(1, MAX_OFFSET_REPAIR + 1):
        for candidate in (start - delta, start + delta):
            if candidate >= 0 and context[candidate : candidate + len(text)] == text:
                nearest = candidate if nearest is None else nearest
        if nearest is not None:
            return nearest
    return None


def _checked_answers(row: dict, where: str, strict: bool, stats: LoadStats) -> tuple[list[str], list[int]]:
    """(texts, answer_starts) a training row keeps: blank texts skipped, offsets repaired or skipped (counted)."""
    answers = row["answers"]
    texts, starts = [], []
    for text, start in zip(answers["text"], answers["answer_start"]):
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise SquadDataError(f"{where}: an answer needs a string text and an integer answer_start")
        if not text.strip():
            # a blank answer would train the model to answer nothing, and no metric can score it
            if strict:
                raise SquadDataError(f"{where}: an answer text is blank")
            stats.num_blank_answers += 1
            continue
        found = repaired_start(row["context"], text, start)
        if found != start and strict:
            raise SquadDataError(f"{where}: answer_start {start} does not point at the answer {text!r}")
        if found is None:
            stats.num_bad_answer_start += 1
            stats.bad_answer_start_ids.append(row["id"])
            continue
        if found != start:
            stats.num_repaired_answer_start += 1
        texts.append(text)
        starts.append(found)
    return texts, starts


# Long by design: one pass over the rows, checking each field in the order a row holds them, so that every message
# names the row's index and id; split up, each check would need the row, its id and the counts passed again.
def validate_examples(
    rows: list,
    source: str,
    strict: bool = False,
    check_answers: bool = True,
    columns: dict[str, str] = STANDARD_COLUMNS,
) -> tuple[list[dict], LoadStats]:
    """Check every row's fields (and, for training, its answer spans); returns the clean rows and what was done.

    The rows hold the standard column names; columns (the file's names, already renamed) only name them in messages.

    check_answers (training): an answer_start that misses its text by at most MAX_OFFSET_REPAIR characters is
    moved to it, and one that misses further is skipped with a count (the example keeps its other answers, and
    is dropped when none is left); under strict either raises. Without it (scoring: the official scripts never
    read answer_start) every question and every answer text is kept as the file gives it.
    """
    stats = LoadStats()
    labels = {column: column_label(column, columns) for column in COLUMN_FLAGS}
    seen: dict[str, object] = {}  # id as text -> the id as the file wrote it
    clean = []
    for i, row in enumerate(rows):
        where = f"{source}: example {i}"
        if not isinstance(row, dict):
            raise SquadDataError(f"{where}: expected an object, got {type(row).__name__}")
        row_id = _row_id(row, where, labels["id"])
        where = f"{source}: example {i} (id {row_id!r})"
        for name in ("context", "question"):
            if not isinstance(row.get(name), str) or (name != "context" and not row[name].strip()):
                raise SquadDataError(f"{where}: field {labels[name]} is missing or not a non-empty string")
        if row_id in seen:
            earlier = seen[row_id]
            same = earlier == row["id"] and type(earlier) is type(row["id"])
            raise SquadDataError(
                f"{where}: duplicate id" if same else f"{where}: ids {earlier!r} and {row['id']!r} are the same as text"
            )
        seen[row_id] = row["id"]
        stats.num_numeric_ids += not isinstance(row["id"], str)
        answers = row.get("answers")
        if (
            not isinstance(answers, dict)
            or not isinstance(answers.get("text"), list)
            or not isinstance(answers.get("answer_start"), list)
            or len(answers["text"]) != len(answers["answer_start"])
        ):
            raise SquadDataError(
                f"{where}: {labels['answers']} must be {{text: [...], answer_start: [...]}} with equal lengths"
            )
        if check_answers:
            texts, starts = _checked_answers({**row, "id": row_id}, where, strict, stats)
            if answers["text"] and not texts:
                continue  # every answer was bad: drop rather than train it as unanswerable
        else:
            if not all(isinstance(text, str) for text in answers["text"]):
                raise SquadDataError(f"{where}: every answer text must be a string")
            texts, starts = list(answers["text"]), list(answers["answer_start"])
        title = row.get("title")
        clean.append(
            {
                "id": row_id,
                "title": "" if title is None else str(title),  # a missing or null title is none, a number its text
                "context": row["context"],
                "question": row["question"],
                "answers": {"text": texts, "answer_start": starts},
            }
        )
    if not clean:
        raise SquadDataError(f"{source}: no usable examples")
    stats.num_examples = len(clean)
    _log_load_stats(source, stats)
    return clean, stats


def _log_load_stats(source: str, stats: LoadStats) -> None:
    if stats.num_numeric_ids:
        logger.info("%s: %d numeric id(s) read as text", source, stats.num_numeric_ids)
    if stats.num_blank_answers:
        logger.warning(
            "%s: skipped %d blank answer text(s); pass --strict to make this an error", source, stats.num_blank_answers
        )
    if stats.num_repaired_answer_start:
        logger.warning(
            "%s: moved %d answer_start(s) to their answer text, at most %d characters away; pass --strict to make "
            "this an error",
            source,
            stats.num_repaired_answer_start,
            MAX_OFFSET_REPAIR,
        )
    if stats.num_bad_answer_start:
        logger.warning(
            "%s: skipped %d answer(s) whose answer_start does not point at the answer text (first ids: %s); "
            "pass --strict to make this an error",
            source,
            stats.num_bad_answer_start,
            ", ".join(stats.bad_answer_start_ids[:5]),
        )


def infer_version(examples: Iterable[dict]) -> str:
    """The SQuAD version a file without a version field is: v2.0 where any question is unanswerable."""
    return "v2.0" if any(not example["answers"]["text"] for example in examples) else "v1.1"


def load_squad_file(
    path: str, strict: bool = False, check_answers: bool = True, columns: dict[str, str] = STANDARD_COLUMNS
) -> tuple[list[dict], LoadStats]:
    """Load a SQuAD file in any supported layout: official JSON (v1.1/v2.0), JSON Lines or CSV.

    check_answers: as validate_examples (False for scoring, which counts every question whatever its offsets).
    columns: the file's name of each standard column (args.ColumnArguments.column_names); not for official JSON.
    """
    rows, layout, version = _read_rows(path, columns)
    names = STANDARD_COLUMNS if layout == OFFICIAL else columns
    examples, stats = validate_examples(rows, path, strict=strict, check_answers=check_answers, columns=names)
    if version is None:
        stats.version, stats.version_inferred = infer_version(examples), True
        logger.info("%s: %s layout, %d rows, no version field: %s inferred", path, layout, len(rows), stats.version)
    else:
        stats.version = version
        logger.info("%s: %s layout (version %s), %d rows", path, layout, version, len(rows))
    return examples, stats


def load_split_rows(data_args, split: str, check_answers: bool = True) -> tuple[list[dict], LoadStats]:
    """Every row of one split ("train" or "validation") of the data the arguments name, from its local file or
    the Hub, with the standard column names."""
    import datasets

    data_file, hub_split = (
        (data_args.train_file, "train") if split == "train" else (data_args.validation_file, data_args.eval_split)
    )
    dataset_name, strict, columns = data_args.dataset_name, data_args.strict, data_args.column_names()
    if data_file:
        return load_squad_file(data_file, strict=strict, check_answers=check_answers, columns=columns)
    try:
        hub = datasets.load_dataset(dataset_name, data_args.dataset_config_name, split=hub_split)
    except Exception as e:  # the Hub raises many types (ConnectionError, DatasetNotFoundError, ...)
        raise SquadDataError(
            f"could not load the dataset {dataset_name!r} (split {hub_split!r}) from the Hugging Face Hub: "
            f"{first_line(e, with_type=True)}\n"
            "If you are offline, pass local SQuAD files instead: "
            "--train_file train-v1.1.json --validation_file dev-v1.1.json "
            "(official JSON, JSON Lines or CSV)"
        ) from e
    check_columns(hub.column_names, columns, COLUMN_FLAGS, f"dataset {dataset_name!r}")
    renames = renames_of(columns)
    rows = [renamed(row, renames) for row in hub]
    rows, stats = validate_examples(rows, f"{dataset_name}[{hub_split}]", strict, check_answers, columns)
    if os.path.basename(dataset_name.rstrip("/")) == "squad_v2":  # its rows carry no version: the name says it
        stats.version, stats.version_inferred = "v2.0", False
    return rows, stats


def load_squad_split(data_args, split: str = "validation", check_answers: bool = True):
    """One split ("train" or "validation") of the data the arguments name (args.EvalDataArguments, or
    DataArguments for training), from its local file or the Hub, cut to its max_*_samples.

    Returns (dataset, LoadStats).
    """
    rows, stats = load_split_rows(data_args, split, check_answers)
    return as_dataset(rows, data_args.max_train_samples if split == "train" else data_args.max_eval_samples), stats


def as_dataset(rows: list[dict], max_samples: int | None):
    """The rows as a datasets.Dataset, cut to the first max_samples."""
    import datasets

    return datasets.Dataset.from_list(rows if max_samples is None else rows[:max_samples])
