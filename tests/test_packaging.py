"""The package builds, installs and works on its own: squad_lora with its evaluate metric, and nothing else.

The wheel is built from a copy of the checkout (a build writes build/ and *.egg-info beside the sources) with the
setuptools of the environment running the tests (no build isolation: nothing is downloaded), and installed into a
fresh virtual environment that sees this environment's packages (torch, evaluate, ...) but not the checkout.
"""

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

from conftest import REPO_ROOT

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
