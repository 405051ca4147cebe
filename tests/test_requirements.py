"""The lock file CI installs must satisfy the ranges users install from."""

import os

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO_ROOT


def read_requirements(name: str) -> list[Requirement]:
    with open(os.path.join(REPO_ROOT, name), encoding="utf-8") as f:
        lines = [line.split("#", 1)[0].strip() for line in f]
    return [Requirement(line) for line in lines if line]


def test_lock_pins_every_requirement_within_its_range():
    pins = {}
    for requirement in read_requirements("requirements.lock"):
        (specifier,) = requirement.specifier  # the lock holds exact versions only
        assert specifier.operator == "==", requirement
        pins[canonicalize_name(requirement.name)] = specifier.version
    for requirement in read_requirements("requirements.txt"):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is in requirements.txt but not locked: refresh requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {requirement.name}=={pins[name]}, outside requirements.txt's {requirement.specifier}"
        )


def test_every_requirement_has_a_tested_upper_bound():
    for requirement in read_requirements("requirements.txt"):
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier), (
            f"{requirement.name}: give the newest tested release line as an upper bound"
        )
