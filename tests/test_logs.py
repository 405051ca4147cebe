"""What the scripts print: no library warning repeated on every run, every progress bar named for what it counts,
and --disable_tqdm / --log_level quieting our own bars and lines as well as the libraries'."""

import os
import re
import subprocess
import sys

import pytest

from fakes import subprocess_env
from repo_paths import DEV_FILE, REPO_ROOT
from squad_lora.args import LoggingArguments

# a tqdm bar as it is drawn: [description: ]NN%|...
BAR = re.compile(r"(?:^|\r|\n)([^\r\n%|]*?):?\s*\d+%\|")
LIBRARY_NOISE = ("Warning", "warnings.warn", "gemm_4bit_forward", "PAD/BOS/EOS")


def run_script(script: str, *args) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.pop("PYTHONWARNINGS", None)  # the scripts' own warnings settings, as a user runs them
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, script), *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def pipeline(tmp_path, *flags) -> dict:
    """Train (2 steps, one evaluation answering 2 questions), answer with two strategies, compare them: each
    script's output (stdout + stderr) by name."""
    run_dir, preds = tmp_path / "run", tmp_path / "preds"
    train = run_script(
        "run_qa_lora.py", "configs/smoke.yaml", "--output_dir", run_dir, "--max_train_samples", "16",
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--eval_strategy", "steps", "--eval_steps", "2",
        "--max_eval_samples", "4", "--eval_generation_samples", "2", *flags,
    )  # fmt: skip
    generate = run_script(
        "generate.py", "--adapter", run_dir, "--validation_file", DEV_FILE, "--max_eval_samples", "4",
        "--strategies", "greedy,top_p", "--output_dir", preds, *flags,
    )  # fmt: skip
    evaluate = run_script("evaluate_squad.py", DEV_FILE, "--compare", preds, "--max_eval_samples", "4", *flags)
    return {
        name: proc.stdout + proc.stderr
        for name, proc in (("train", train), ("generate", generate), ("evaluate", evaluate))
    }


@pytest.mark.slow
def test_default_runs_have_no_library_warnings_and_named_bars(tmp_path):
    outputs = pipeline(tmp_path)
    for script, text in outputs.items():
        for noise in LIBRARY_NOISE:
            assert noise not in text, f"{script}: {noise!r} in\n{text[-3000:]}"
        unnamed = [line for line in BAR.findall(text) if not line.strip()]
        assert not unnamed, f"{script}: a progress bar without a name"
    names = {name.strip() for name in BAR.findall(outputs["train"] + outputs["generate"])}
    assert {"training (steps)", "evaluating (loss)", "answering (greedy)", "answering (top_p)"} <= names
    assert {"tokenizing train", "tokenizing validation", "Loading weights"} <= names
    assert " INFO " in outputs["train"] and " INFO " in outputs["generate"] and " INFO " in outputs["evaluate"]


@pytest.mark.slow
def test_disable_tqdm_and_log_level_quiet_every_script(tmp_path):
    outputs = pipeline(tmp_path, "--disable_tqdm", "true", "--log_level", "warning")
    for script, text in outputs.items():
        assert not BAR.findall(text), f"{script}: a progress bar with --disable_tqdm:\n{text[-2000:]}"
        assert " INFO " not in text, f"{script}: an INFO line with --log_level warning:\n{text[-2000:]}"
    assert "| greedy |" in outputs["evaluate"]  # the results are printed whatever the level


@pytest.mark.parametrize(
    "log_level, main, other",
    [("passive", (20, 30), (30, 30)), ("error", (40, 40), (40, 40)), ("debug", (10, 10), (30, 30))],
)
def test_log_level_sets_our_level_and_the_libraries(log_level, main, other):
    args = LoggingArguments(log_level=log_level)
    assert args.levels(is_main_process=True) == main and args.levels(is_main_process=False) == other
