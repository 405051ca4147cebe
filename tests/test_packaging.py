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


@pytest.mark.slow  # a build, a virtual environment and a fresh interpreter that imports evaluate: ~20 s
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
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"squad_lora", "squad_lora-0.1.0.dist-info"}, "only the package: no scripts, tests or benchmarks"
    assert "squad_lora/squad_metric/squad_metric.py" in names  # the evaluate metric, loaded by path
    assert "squad_lora-0.1.0.dist-info/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
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
    """The top-level names of every module a Python file imports, at any depth of its code."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_script_or_package_module_imports_a_script():
    """The scripts at the top import the package, never one another (sweep.py runs run_qa_lora.py as a process),
    and the package imports no script: installed, it has none beside it."""
    scripts = sorted(glob.glob(os.path.join(REPO_ROOT, "*.py")))
    script_names = {os.path.splitext(os.path.basename(path))[0] for path in scripts}
    assert {"run_qa_lora", "sweep", "generate"} <= script_names
    package = sorted(glob.glob(os.path.join(REPO_ROOT, "squad_lora", "**", "*.py"), recursive=True))
    problems = []
    for path in scripts + package:
        own = os.path.splitext(os.path.basename(path))[0]
        for name in sorted(imported_modules(path) & (script_names - {own})):
            problems.append(f"{os.path.relpath(path, REPO_ROOT)} imports {name}")
    assert not problems, "move what is shared into squad_lora/: " + "; ".join(problems)
