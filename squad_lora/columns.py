"""The columns of a JSON Lines, CSV or Hub dataset: the flags that name them otherwise (--question_column,
--context_column, --answer_column, --id_column), the check that the data has them, and the renaming to the
standard names that data.py does once, at loading.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from squad_lora.errors import SquadDataError

# The columns a JSON Lines, CSV or Hub dataset may name otherwise, and the flag (args.ColumnArguments) naming each
COLUMN_FLAGS = {
    "question": "question_column",
    "context": "context_column",
    "answers": "answer_column",
    "id": "id_column",
}
STANDARD_COLUMNS = {column: column for column in COLUMN_FLAGS}  # the file's name of each column: no renaming


def column_label(column: str, columns: dict[str, str]) -> str:
    """A column as messages name it: 'question', or 'query' (--question_column) where a flag renamed it."""
    name = columns[column]
    return f"'{name}'" if name == column else f"'{name}' (--{COLUMN_FLAGS[column]})"


def check_columns(present: list[str], columns: dict[str, str], required: Iterable[str], source: str) -> None:
    """Refuse, naming each required column the data lacks with its flag, and listing the columns it has."""
    missing = [f"'{columns[c]}' (--{COLUMN_FLAGS[c]})" for c in required if columns[c] not in present]
    if missing:
        raise SquadDataError(
            f"{source}: no column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
            f"columns are: {', '.join(present) or 'none'}"
        )


def renames_of(columns: dict[str, str]) -> dict[str, str]:
    """{the file's name: the standard name} of the columns a flag renames."""
    return {name: column for column, name in columns.items() if name != column}


def renamed(row: Any, renames: dict[str, str]) -> Any:
    """The row with its columns renamed to the standard names; a standard name the file uses for something else
    gives way to the column renamed to it. Anything but an object is left to validate_examples to refuse."""
    if not renames or not isinstance(row, dict):
        return row
    kept = {key: value for key, value in row.items() if key not in renames and key not in renames.values()}
    return {**kept, **{renames[key]: value for key, value in row.items() if key in renames}}
