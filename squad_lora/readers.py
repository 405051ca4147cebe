"""Parsing JSON and YAML that users bring, with the faults real files hold turned into one-line errors.

json and PyYAML take things that break later with a traceback: nesting deep enough to exhaust Python's
recursion, lone UTF-16 surrogates (`"\\ud800"`) that no UTF-8 writer or tokenizer accepts, and YAML aliases,
whose expansion (a "billion laughs" config) an error message or a copy can blow up. PyYAML also keeps the
last of two equal keys without a word.
"""

from __future__ import annotations

import json

import yaml


def _check_strings(value, source: str, error_type: type[Exception]) -> None:
    """Every string (key or value) in a parsed document encodes to UTF-8; iterative: the nesting is unbounded."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                bad = item[e.start : e.end].encode("utf-8", "backslashreplace").decode()
                raise error_type(
                    f"{source}: a string holds a lone UTF-16 surrogate ({bad}, in {item[:40]!r}): it is not text; "
                    "fix the file's escapes"
                ) from None


def parse_json(text: str, source: str, error_type: type[Exception]):
    """json.loads, with too deep nesting and lone surrogates raised as error_type naming source.
    Malformed JSON raises json.JSONDecodeError as json does (callers word it for their layout)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error_type(
            f"{source}: JSON nested too deeply to read (thousands of levels): not a SQuAD-style file"
        ) from None
    _check_strings(value, source, error_type)
    return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is given twice",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """yaml's message on one line, with the line and column it names (not its '"<unicode string>", line 2' marks)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = ": ".join(filter(None, (getattr(e, "context", None), getattr(e, "problem", None)))) or str(e)
    return f"{where}: {' '.join(what.split())}"


def parse_yaml(text: str, source: str, error_type: type[Exception]):
    """yaml.safe_load with malformed YAML, duplicate keys, aliases, too deep nesting and lone surrogates raised as
    error_type naming source (and, for malformed YAML, yaml's message and line)."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise error_type(
                    f"{source}: line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not supported "
                    "in a config: write the values out"
                )
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506  a SafeLoader subclass
    except yaml.YAMLError as e:
        raise error_type(f"{source}: not valid YAML{_yaml_problem(e)}") from e
    except RecursionError:
        raise error_type(f"{source}: YAML nested too deeply to read") from None
    _check_strings(value, source, error_type)
    return value
