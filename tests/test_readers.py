"""squad_lora.readers: JSON and YAML that users bring, parsed with the faults real files hold as one-line errors."""

import sys

import pytest

from squad_lora.errors import ConfigError, RunFileError
from squad_lora.readers import parse_json, parse_yaml


def test_json_parses_as_json_does_and_refuses_lone_surrogates_and_deep_nesting():
    assert parse_json('{"a": ["\\u00e9", 1]}', "f.json", ConfigError) == {"a": ["é", 1]}
    assert parse_json('"\\ud83d\\ude00"', "f.json", ConfigError) == "😀"  # a surrogate pair is one character
    with pytest.raises(ConfigError, match=r"f.json: a string holds a lone UTF-16 surrogate \(\\ud800"):
        parse_json('{"k": ["ok", {"\\ud800": 1}]}', "f.json", ConfigError)  # a key, deep inside
    with pytest.raises(ConfigError, match="f.json: JSON nested too deeply"):
        parse_json("[" * 100_000 + "]" * 100_000, "f.json", ConfigError)


def test_yaml_refuses_aliases_duplicate_keys_and_deep_nesting():
    assert parse_yaml("a: 1\nb: [x, y]\n", "c.yaml", ConfigError) == {"a": 1, "b": ["x", "y"]}
    with pytest.raises(ConfigError, match=r"c.yaml: line 2: YAML aliases \(\*x\) are not supported"):
        parse_yaml("a: &x [1, 2]\nb: *x\n", "c.yaml", ConfigError)
    with pytest.raises(ConfigError, match="^c.yaml: not valid YAML at line 3, column 1: the key 'a' is given twice$"):
        parse_yaml("a: 1\nb: 2\na: 3\n", "c.yaml", ConfigError)
    with pytest.raises(ConfigError, match="nested too deeply"):
        depth = 3 * sys.getrecursionlimit()  # past the recursion limit: deeper only costs the parser's time
        parse_yaml("[" * depth + "]" * depth, "c.yaml", ConfigError)


@pytest.mark.parametrize("error_type", [ConfigError, RunFileError])
def test_malformed_yaml_is_the_error_type_given_naming_the_file_and_line(error_type):
    with pytest.raises(error_type) as info:
        parse_yaml("lora_r: 8\nlora_alpha: [16\n", "c.yaml", error_type)
    assert type(info.value) is error_type
    assert str(info.value) == (
        "c.yaml: not valid YAML at line 3, column 1: while parsing a flow sequence: expected ',' or ']', but got "
        "'<stream end>'"
    )
