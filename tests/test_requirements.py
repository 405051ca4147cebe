"""The lock file CI installs must satisfy the ranges users install from (pyproject.toml), and the tools agree on versions."""

import os
import sys

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the third-party tomli (the test extra installs it there)
    import tomli as tomllib

# What .ci/run installs with the lock as constraints: the dependencies and these extras.
LOCKED_EXTRAS = ("test", "lint")
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
