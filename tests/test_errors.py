"""squad_lora.errors: every error class is a SquadLoraError (a user's fault, exit status 2), first_line words a
library's exception as one line, and raise_problems raises every problem a check collected as one error."""

import inspect

import pytest

from squad_lora import errors
from squad_lora.errors import (
    USER_FAULT_EXIT_CODE,
    ConfigError,
    HubError,
    SquadDataError,
    SquadLoraError,
    first_line,
    raise_problems,
)


def test_every_error_class_is_a_squad_lora_error():
    classes = [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if cls.__module__ == errors.__name__]
    assert {cls.__name__ for cls in classes} >= {
        "SquadLoraError", "ConfigError", "SquadDataError", "PredictionsError", "ModelLoadError", "RunFileError",
        "HubError",
    }  # fmt: skip
    for cls in classes:
        assert issubclass(cls, SquadLoraError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(HubError, RuntimeError)  # what callers may catch
    assert USER_FAULT_EXIT_CODE == 2  # argparse's status for a usage error


def test_first_line_is_the_messages_first_line():
    error = OSError("  can't open file 'x.bin'\nTraceback-like detail\n  more detail")
    assert first_line(error) == "can't open file 'x.bin'"
    assert first_line(error, with_type=True) == "OSError: can't open file 'x.bin'"
    assert first_line(ValueError("one line")) == "one line"


@pytest.mark.parametrize("message", ["", "   ", "\n\n"])
def test_first_line_of_an_empty_message_is_the_type_name(message):
    assert first_line(KeyboardInterrupt(message)) == "KeyboardInterrupt"
    assert first_line(RuntimeError(message), with_type=True) == "RuntimeError"  # the name once, not "name: "


def test_raise_problems_raises_nothing_for_no_problems():
    assert raise_problems([]) is None
    assert raise_problems([], SquadDataError, prefix="data.json: ") is None


def test_raise_problems_joins_every_problem_into_one_error():
    with pytest.raises(ConfigError) as info:  # the default type
        raise_problems(["--lora_r must be >= 0", "--lora_dropout must be in [0, 1)"])
    assert str(info.value) == "--lora_r must be >= 0; --lora_dropout must be in [0, 1)"
    assert type(info.value) is ConfigError

    with pytest.raises(SquadDataError) as info:
        raise_problems(["line 2: not JSON"], SquadDataError, prefix="data.jsonl: ")
    assert str(info.value) == "data.jsonl: line 2: not JSON"
    assert type(info.value) is SquadDataError and isinstance(info.value, SquadLoraError)
