"""squad_lora.cli: config files and flags parsed into the argument dataclasses, positional words, the
resolved config a run writes, and how a script ends on a user's fault."""

import json
from dataclasses import dataclass, field
from typing import Optional

import pytest
import yaml

from builders import parse_training_args
from squad_lora import cli
from squad_lora.cli import load_config_file, parse_args, resolved_config
from squad_lora.errors import ConfigError, PredictionsError


def write_config(tmp_path, values, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values) if isinstance(values, dict) else values)
    return str(path)


def parse(argv):
    parsed = parse_training_args(argv)
    return parsed.model, parsed.data, parsed.lora, parsed.training, parsed.config_file


# ---------------------------------------------------------------------------
# Config files and flags
# ---------------------------------------------------------------------------


def test_flag_overrides_config_file(tmp_path):
    path = write_config(tmp_path, {"learning_rate": 1.0e-3, "lora_r": 4, "max_train_samples": 10})
    _, data_args, lora_args, training_args, config_file = parse([path, "--learning_rate", "5e-4", "--lora_r", "16"])
    assert config_file == path
    assert training_args.learning_rate == 5e-4  # the flag wins
    assert lora_args.lora_r == 16
    assert data_args.max_train_samples == 10  # the file still sets what no flag overrides


@pytest.mark.parametrize("form", ["leading", "--config FILE", "--config=FILE"])
def test_the_config_file_can_come_first_or_as_config(tmp_path, form):
    path = write_config(tmp_path, {"lora_r": 4, "max_train_samples": 10})
    argv = {
        "leading": [path, "--lora_alpha", "8"],
        "--config FILE": ["--lora_alpha", "8", "--config", path],
        "--config=FILE": ["--lora_alpha", "8", f"--config={path}"],
    }[form]
    _, data_args, lora_args, _, config_file = parse(argv)
    assert config_file == path
    assert (lora_args.lora_r, lora_args.lora_alpha, data_args.max_train_samples) == (4, 8, 10)


def test_config_without_a_file_is_an_error():
    with pytest.raises(ConfigError, match="--config needs a file"):
        parse(["--lora_r", "4", "--config"])


def test_json_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"lora_r": 4, "lora_target_modules": ["c_attn", "mlp.c_proj"]}))
    _, _, lora_args, _, _ = parse([str(path)])
    assert lora_args.lora_r == 4 and lora_args.lora_target_modules == ["c_attn", "mlp.c_proj"]


def test_unknown_key_lists_valid_keys(tmp_path):
    path = write_config(tmp_path, {"lora_alfa": 32, "learning_rate": 1.0e-4})
    with pytest.raises(ConfigError) as info:
        parse([path])
    message = str(info.value)
    assert message.startswith(f"{path}: unknown key(s): lora_alfa (did you mean lora_alpha?)")
    valid = message.split("Valid keys: ", 1)[1].split(", ")
    for key in ("lora_r", "lora_alpha", "learning_rate", "max_seq_length", "train_file", "model_name_or_path"):
        assert key in valid


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"lora_r": "eight"}, "invalid int value: 'eight'"),
        ({"lora_r": 8.5}, "invalid int value: '8.5'"),
        ({"lora_r": True}, "invalid int value: 'true'"),
        ({"from_scratch": "maybe"}, "Truthy value expected: got maybe"),
        ({"lora_bias": "some"}, "invalid choice: 'some'"),
    ],
)
def test_wrong_type_names_the_file_and_key(tmp_path, values, expected):
    path = write_config(tmp_path, values)
    with pytest.raises(ConfigError) as info:
        parse([path])
    key = next(iter(values))
    assert str(info.value).startswith(f"{path}: {key}: argument --{key}")
    assert expected in str(info.value)


def test_config_values_go_through_the_flags_types(tmp_path):
    # PyYAML reads an unsigned 1e-4 as the string '1e-4'; as a flag's word it is the number
    path = write_config(tmp_path, "learning_rate: 1e-4\ntrain_file: 3\nlora_target_modules: [c_attn, 3]\n")
    _, data_args, lora_args, training_args, _ = parse([path])
    assert training_args.learning_rate == 1e-4 and isinstance(training_args.learning_rate, float)
    assert data_args.train_file == "3"  # a YAML int for a string field is its text
    assert lora_args.lora_target_modules == ["c_attn", "3"]


def test_wrong_type_on_the_command_line_names_the_flag():
    with pytest.raises(ConfigError, match="--lora_r.*invalid int value: 'eight'"):
        parse(["--lora_r", "eight"])


def test_unknown_flag_is_an_error():
    with pytest.raises(ConfigError, match="--lora_rank"):
        parse(["--lora_rank", "4"])


@pytest.mark.parametrize("value", ["c_attn", "c_attn,mlp.c_proj"])
def test_target_modules_as_a_string_in_the_config_file(tmp_path, value):
    path = write_config(tmp_path, {"lora_target_modules": value})
    _, _, lora_args, _, _ = parse([path])
    assert lora_args.lora_target_modules == value.split(",")


def test_invalid_value_in_a_config_file_names_the_flag(tmp_path):
    path = write_config(tmp_path, {"max_seq_length": 0})
    with pytest.raises(ConfigError, match="--max_seq_length must be a positive integer"):
        parse([path])


@pytest.mark.parametrize(
    "content, expected",
    [
        ("- lora_r\n- 8\n", "a config file must be a mapping"),
        ("lora_r: [8\n", "not valid YAML"),
    ],
)
def test_bad_config_file(tmp_path, content, expected):
    path = write_config(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        parse([path])
    assert str(info.value).startswith(f"{path}: {expected}")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        parse([str(tmp_path / "missing.yaml")])


def test_empty_config_file_means_defaults(tmp_path):
    path = write_config(tmp_path, "# nothing set\n")
    assert load_config_file(path) == {}
    assert parse([path])[2].lora_r == 8


# ---------------------------------------------------------------------------
# Positional words
# ---------------------------------------------------------------------------


@dataclass
class FileArguments:
    files: Optional[list[str]] = field(default=None)
    output_dir: Optional[str] = field(default=None)


@dataclass
class OneFileArguments:
    file: Optional[str] = field(default=None)


def test_bare_words_fill_the_positional_fields(tmp_path):
    # a script whose bare words are files takes its config only as --config: a.yaml here is a file
    config = write_config(tmp_path, {"output_dir": "from-config"})
    (args,), config_file, left = parse_args((FileArguments,), ["a.yaml", "b.json", "--config", config], ("files",))
    assert (args.files, args.output_dir, config_file, left) == (["a.yaml", "b.json"], "from-config", config, [])
    # a list field given as a flag keeps its values, and the bare words join them
    (args,), _, _ = parse_args((FileArguments,), ["c", "--files", "a", "b"], ("files",))
    assert args.files == ["a", "b", "c"]


def test_words_without_a_field_come_back_to_the_script():
    (args,), config_file, left = parse_args((OneFileArguments,), ["first", "second", "-3"], ("file",))
    assert (args.file, config_file, left) == ("first", None, ["second", "-3"])  # a negative number is a word
    (args,), _, left = parse_args((OneFileArguments,), ["--file", "given", "other"], ("file",))
    assert (args.file, left) == ("given", ["other"])
    # a script that places no words itself names what it takes
    with pytest.raises(
        ConfigError, match=r"unexpected argument\(s\) second: besides one file, every input is a --flag"
    ):
        parse_args((OneFileArguments,), ["first", "second"], ("file",), bare_words="one file")


# ---------------------------------------------------------------------------
# The resolved config a run writes
# ---------------------------------------------------------------------------


def test_resolved_config_round_trips_and_never_holds_a_token(tmp_path):
    argv = [
        "--lora_target_modules", "c_attn,mlp.c_proj", "--report_to", "none", "--max_steps", "3",
        "--lr_scheduler_type", "constant", "--save_strategy", "no", "--from_scratch", "--hub_token", "hf_secret",
    ]  # fmt: skip
    resolved = resolved_config(*parse_training_args(argv).all)
    assert "hub_token" not in resolved and "hf_secret" not in json.dumps(resolved)
    assert resolved["lora_target_modules"] == ["c_attn", "mlp.c_proj"]
    assert resolved["save_strategy"] == "no" and resolved["max_steps"] == 3 and resolved["from_scratch"] is True
    assert "per_device_train_batch_size" not in resolved  # TrainingArguments defaults are left out
    path = write_config(tmp_path, yaml.safe_dump(resolved, sort_keys=False))
    assert resolved_config(*parse_training_args([path]).all) == resolved


# ---------------------------------------------------------------------------
# cli.run: how a script ends
# ---------------------------------------------------------------------------


def test_a_user_fault_is_one_line_and_exit_status_2(capsys):
    def main():
        raise PredictionsError("p.json: line 3: not JSON")

    with pytest.raises(SystemExit) as info:
        cli.run(main)
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: p.json: line 3: not JSON\n" and captured.out == ""


def test_a_finished_script_exits_0_and_a_bug_keeps_its_traceback():
    with pytest.raises(SystemExit) as info:
        cli.run(lambda: {"exact_match": 100.0})
    assert info.value.code == 0

    def buggy_main():
        raise KeyError("not a user's fault")

    with pytest.raises(KeyError, match="not a user's fault"):
        cli.run(buggy_main)
