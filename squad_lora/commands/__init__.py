"""The installed command: `squad-lora COMMAND [ARGS ...]`, where each command is one script of a checkout with the
same arguments, parser and outputs (`squad-lora train configs/smoke.yaml` is `python run_qa_lora.py
configs/smoke.yaml`). Each command's module here holds its story; the flat scripts of a checkout call the same
main(). `python -m squad_lora` is the same command, and `accelerate launch -m squad_lora train ...` launches it.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import sys
from importlib.metadata import PackageNotFoundError, version

# command: the checkout's script it stands for (its module is squad_lora.commands.<command>)
COMMANDS = {
    "train": "run_qa_lora.py",
    "generate": "generate.py",
    "evaluate": "evaluate_squad.py",
    "report": "report.py",
    "merge": "merge_adapter.py",
    "push": "push_to_hub.py",
    "demo": "demo.py",
    "sweep": "sweep.py",
}
PROG = "squad-lora"


def summary(command: str) -> str:
    """The first line of a command's docstring, read without importing it (torch takes seconds to import)."""
    spec = importlib.util.find_spec(f"{__name__}.{command}")
    with open(spec.origin, encoding="utf-8") as f:
        docstring = ast.get_docstring(ast.parse(f.read())) or ""
    return docstring.splitlines()[0] if docstring else ""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [ARGS ...]   ({PROG} COMMAND --help: its arguments)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary(name)}  [{script}]" for name, script in COMMANDS.items()]
    lines += ["", "A config file and the sample data of a checkout (configs/..., data/sample/...) are found installed",
              "where the working directory has no file of that name."]  # fmt: skip
    return "\n".join(lines)


def package_version() -> str:
    try:
        return version("squad-lora")
    except PackageNotFoundError:  # a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"{PROG} {package_version()}")
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, 1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"error: {command!r} is not a {PROG} command{hint}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"{__name__}.{command}")
    from squad_lora import cli

    # argparse names the program from sys.argv[0]: --help and usage errors say `squad-lora train`
    sys.argv = [f"{PROG} {command}", *rest]
    cli.run(module.main)
