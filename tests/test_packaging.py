"""The package builds, installs and works on its own: squad_lora with its evaluate metric, and nothing else; and
what it requires holds together: the lock file CI installs satisfies the ranges users install from (pyproject.toml),
and the tools agree on versions.

The wheel is built from a copy of the checkout (a build writes build/ and *.egg-info beside the sources) with the
setuptools of the environment running the tests (no build isolation: nothing is downloaded), and installed into a
fresh virtual environment that sees this environment's packages (torch, evaluate, ...) but not the checkout.
"""

import ast
import glob
import json
import os
import pathlib
import runpy
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from repo_paths import REPO_ROOT
from squad_lora import shipped
from squad_lora.commands import COMMANDS
from squad_lora.commands import main as commands_main

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the third-party tomli (the test extra installs it there)
    import tomli as tomllib

# What a copy of the checkout leaves out: version control, caches, and what runs and builds write.
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".hypothesis",
    ".ruff_cache",
    "*.egg-info",
    "build",
    "dist",
    "outputs",
    ".venv",
    "venv",
)

CHECK_INSTALLED = textwrap.dedent(
    """
    import json
    import squad_lora
    from squad_lora import scoring
    metric = scoring.load_metric()
    scores = metric.compute(
        predictions=[{"id": "1", "prediction_text": "the Broncos"}],
        references=[{"id": "1", "answers": {"text": ["Denver Broncos", "Broncos"], "answer_start": [0, 7]}}],
    )
    print(json.dumps({"package": squad_lora.__file__, "metric_path": scoring.METRIC_PATH, "scores": scores}))
    """
)


def run(command, **kwargs):
    completed = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert completed.returncode == 0, f"{command} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


def is_inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def shipped_files() -> set[str]:
    """The checkout's configs/ and data/ files a wheel must hold, as their paths inside it."""
    files = set()
    for folder in ("configs", "data"):
        for path in glob.glob(os.path.join(REPO_ROOT, folder, "**", "*"), recursive=True):
            if os.path.isfile(path):
                files.add("squad_lora/shipped/" + os.path.relpath(path, REPO_ROOT).replace(os.sep, "/"))
    return files


@pytest.mark.slow  # a build, a virtual environment, a fresh interpreter that imports evaluate, a 2-step training: ~60 s
def test_the_wheel_holds_the_package_only_and_works_installed_outside_the_checkout(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCES)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    run([*build, "-w", str(wheels), str(source)])
    (wheel,) = wheels.glob("squad_lora-0.1.0-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read("squad_lora-0.1.0.dist-info/METADATA").decode()
        entry_points = archive.read("squad_lora-0.1.0.dist-info/entry_points.txt").decode()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"squad_lora", "squad_lora-0.1.0.dist-info"}, "only the package: no scripts, tests or benchmarks"
    assert "squad_lora/squad_metric/squad_metric.py" in names  # the evaluate metric, loaded by path
    assert {f"squad_lora/commands/{command}.py" for command in COMMANDS} <= set(names)
    missing = shipped_files() - set(names)
    assert not missing, f"configs/ and data/ files the wheel lacks: {sorted(missing)}"
    assert "squad-lora = squad_lora.commands:main" in entry_points
    assert "squad_lora-0.1.0.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    # --system-site-packages shows the base interpreter's packages; when the tests run in a virtual environment,
    # its packages (torch, evaluate, ...) are elsewhere: a .pth line puts them after the new environment's own.
    venv_site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    ours = [*site.getsitepackages(), sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]
    (pathlib.Path(venv_site) / "outer-site-packages.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: neither the current folder, PYTHONPATH nor the user's site-packages is on sys.path
    found = json.loads(run([str(python), "-I", "-c", CHECK_INSTALLED], cwd=elsewhere, env=env).stdout.splitlines()[-1])
    assert is_inside(found["package"], venv_site), found
    assert not is_inside(found["package"], REPO_ROOT), found
    assert is_inside(found["metric_path"], venv_site), found
    assert found["scores"] == {"exact_match": 100.0, "f1": 100.0}

    # The installed command, in a folder with no checkout: the smoke config, the tiny model it names and the sample
    # data it trains on are the ones installed with the package; what it writes goes to the working directory.
    command = [str(bin_dir / "squad-lora"), "train", "configs/smoke.yaml", "--output_dir", "smoke"]
    run([*command, "--max_steps", "2", "--max_eval_samples", "4", "--disable_tqdm", "true"], cwd=elsewhere, env=env)
    with open(elsewhere / "smoke" / "run_config.yaml", encoding="utf-8") as f:
        recorded = yaml.safe_load(f)
    for key in ("model_name_or_path", "train_file", "validation_file"):
        assert is_inside(recorded[key], venv_site), (key, recorded[key])
    assert (elsewhere / "smoke" / "adapter_model.safetensors").is_file()
    listed = run([str(bin_dir / "squad-lora"), "--help"], cwd=elsewhere, env=env).stdout
    assert all(f"  {command} " in listed for command in COMMANDS), listed


def test_each_script_at_the_top_is_its_commands_main():
    """The flat scripts stay, thin (as the Hugging Face examples): each runs the main() of the squad-lora command it
    stands for, so the two take the same arguments; and every script of the checkout is a command."""
    for command, script in COMMANDS.items():
        with open(os.path.join(REPO_ROOT, script), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imports = [
            (node.module, [a.name for a in node.names]) for node in tree.body if isinstance(node, ast.ImportFrom)
        ]
        assert (f"squad_lora.commands.{command}", ["main"]) in imports, (script, imports)
    scripts = {os.path.basename(path) for path in glob.glob(os.path.join(REPO_ROOT, "*.py"))}
    assert scripts == set(COMMANDS.values())


def test_the_command_and_the_script_print_the_same_help(capsys, monkeypatch):
    shown = {}
    for name, start in (
        ("script", lambda: runpy.run_path(os.path.join(REPO_ROOT, "run_qa_lora.py"), run_name="__main__")),
        ("command", lambda: commands_main(["train", "--help"])),
    ):
        monkeypatch.setattr(sys, "argv", ["run_qa_lora.py", "--help"])
        with pytest.raises(SystemExit) as raised:
            start()
        assert raised.value.code == 0
        shown[name] = capsys.readouterr().out

    def words(text):  # argparse wraps the usage lines to the program name's length
        return text.replace("run_qa_lora.py", "squad-lora train").split()

    assert words(shown["script"]) == words(shown["command"])
    assert "--lora_r" in shown["command"]


def test_an_unknown_command_names_the_close_one(capsys):
    with pytest.raises(SystemExit) as raised:
        commands_main(["trian"])
    assert raised.value.code == 2
    assert "'trian' is not a squad-lora command (did you mean train?)" in capsys.readouterr().err


def test_a_data_file_given_as_a_bare_word_is_found_shipped_too(tmp_path, monkeypatch):
    from squad_lora.commands import evaluate

    monkeypatch.chdir(tmp_path)
    with open(os.path.join(REPO_ROOT, "data", "sample", "dev-v1.1.json"), encoding="utf-8") as f:
        ids = [qa["id"] for article in json.load(f)["data"] for p in article["paragraphs"] for qa in p["qas"]]
    (tmp_path / "predictions.json").write_text(json.dumps(dict.fromkeys(ids, "no")), encoding="utf-8")
    assert evaluate.main(["data/sample/dev-v1.1.json", "predictions.json"]) == {"exact_match": 0.0, "f1": 0.0}


def test_a_shipped_path_is_found_only_where_the_working_directory_lacks_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped.resolve("configs/smoke.yaml") == os.path.join(REPO_ROOT, "configs", "smoke.yaml")
    assert shipped.resolve("data/sample/train-v1.1.json") == os.path.join(
        REPO_ROOT, "data", "sample", "train-v1.1.json"
    )
    assert shipped.resolve("gpt2") == "gpt2"  # a Hub id the package does not ship
    assert (
        shipped.resolve("configs/../../etc/passwd") == "configs/../../etc/passwd"
    )  # nothing outside the shipped folder
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "smoke.yaml").write_text("lora_r: 4\n", encoding="utf-8")
    assert shipped.resolve("configs/smoke.yaml") == "configs/smoke.yaml"  # the user's own file wins


# ---------------------------------------------------------------------------
# Requirements: the lock within the ranges, every range bounded, the tools on the locked versions
# ---------------------------------------------------------------------------

# What .ci/run installs with the lock as constraints: the dependencies and these extras.
LOCKED_EXTRAS = ("test", "lint", "demo", "tracking", "sweep", "peers", "gguf")
# Extras that are neither installed nor tested here, so they carry no version (pyproject.toml says why).
UNTESTED_EXTRAS = ("deepspeed", "wandb")


def read_pyproject() -> dict:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def project_requirements(*extras: str) -> list[Requirement]:
    """The project's dependencies and those of the given extras; the extras' references to the project itself
    (dev = squad-lora[test,lint]) are left out, as their requirements are listed on their own."""
    project = read_pyproject()["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    requirements = [Requirement(line) for line in lines]
    return [r for r in requirements if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def read_lock() -> dict[str, str]:
    """{canonical name: version} of requirements.lock, which holds exact versions only."""
    pins = {}
    with open(os.path.join(REPO_ROOT, "requirements.lock"), encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    for requirement in (Requirement(line) for line in lines if line):
        (specifier,) = requirement.specifier  # the lock holds exact versions only
        assert specifier.operator == "==", requirement
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_requirements_txt_is_the_projects_dependencies():
    with open(os.path.join(REPO_ROOT, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert [str(Requirement(line)) for line in lines] == [str(r) for r in project_requirements()]


def test_lock_pins_every_requirement_within_its_range():
    pins = read_lock()
    for requirement in project_requirements(*LOCKED_EXTRAS):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is in pyproject.toml but not locked: refresh requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={pins[name]}, outside pyproject.toml's {requirement.specifier}"
        )


def test_every_requirement_has_a_tested_upper_bound():
    extras = [name for name in read_pyproject()["project"]["optional-dependencies"] if name not in UNTESTED_EXTRAS]
    for requirement in project_requirements(*extras):
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier), (
            f"{requirement.name}: give the newest tested release line as an upper bound"
        )


def test_the_untested_extras_stay_unpinned_and_off_the_lock():
    optional = read_pyproject()["project"]["optional-dependencies"]
    pins = read_lock()
    for extra in UNTESTED_EXTRAS:
        (requirement,) = (Requirement(line) for line in optional[extra])
        assert canonicalize_name(requirement.name) == extra
        assert not requirement.specifier, f"{extra}: no version was tested here, so none is pinned"
        assert extra not in pins, f"{extra} is locked, but CI neither installs nor tests it"


def test_the_dev_extra_is_test_and_lint_and_pre_commit():
    optional = read_pyproject()["project"]["optional-dependencies"]
    dev = [Requirement(line) for line in optional["dev"]]
    (itself,) = (r for r in dev if canonicalize_name(r.name) == "squad-lora")
    assert itself.extras == {"test", "lint"}
    assert {canonicalize_name(r.name) for r in dev} == {"squad-lora", "pre-commit"}


def test_ci_installs_the_locked_extras_with_the_lock_as_constraints():
    with open(os.path.join(REPO_ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    assert f'-c requirements.lock -e ".[{",".join(LOCKED_EXTRAS)}]"' in ci


def test_pre_commit_runs_the_locked_ruff():
    with open(os.path.join(REPO_ROOT, ".pre-commit-config.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    (ruff,) = (repo for repo in config["repos"] if repo["repo"].endswith("/ruff-pre-commit"))
    assert ruff["rev"] == f"v{read_lock()['ruff']}", (
        "pin .pre-commit-config.yaml's ruff rev to requirements.lock's ruff"
    )


def imported_modules(path: str) -> set[str]:
    """The full names of every module a Python file imports, at any depth of its code (`from a.b import c`: a.b
    and a.b.c, as c may be a module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_script_or_package_module_imports_a_script_or_another_command():
    """The scripts at the top import the package, never one another, and the package imports no script:
    installed, it has none beside it. A command's module imports no other command (sweep runs train as a
    process); only the dispatcher (squad_lora/commands/__init__.py) and the command's own script import one."""
    scripts = sorted(glob.glob(os.path.join(REPO_ROOT, "*.py")))
    script_names = {os.path.splitext(os.path.basename(path))[0] for path in scripts}
    assert {"run_qa_lora", "sweep", "generate"} <= script_names
    package = sorted(glob.glob(os.path.join(REPO_ROOT, "squad_lora", "**", "*.py"), recursive=True))
    own_command = {os.path.join(REPO_ROOT, script): command for command, script in COMMANDS.items()}
    own_command.update({os.path.join(REPO_ROOT, "squad_lora", "commands", f"{c}.py"): c for c in COMMANDS})
    dispatcher = os.path.join(REPO_ROOT, "squad_lora", "commands", "__init__.py")
    problems = []
    for path in scripts + package:
        imported = imported_modules(path)
        scripts_imported = {name.split(".")[0] for name in imported} & script_names
        commands_imported = {name.rsplit(".", 1)[1] for name in imported if name.startswith("squad_lora.commands.")}
        if path != dispatcher:
            scripts_imported |= commands_imported - {own_command.get(path)} - {"main", "COMMANDS"}
        for name in sorted(scripts_imported):
            problems.append(f"{os.path.relpath(path, REPO_ROOT)} imports {name}")
    assert not problems, "move what is shared into squad_lora/: " + "; ".join(problems)
