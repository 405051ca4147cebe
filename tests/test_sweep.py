"""sweep.py and squad_lora/sweeps.py: a sweep file's checks (one line naming the file and key), three real tiny trials
with their run directories, TensorBoard runs and summary, resuming (no trial trained twice; an interrupted one
retried with its values), and report.py over a sweep's directory."""

import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from repo_paths import DEV_FILE, REPO_ROOT, TRAIN_FILE
from run_outputs import event_dirs
from squad_lora import sweeps
from squad_lora.commands import report, sweep
from squad_lora.errors import ConfigError, RunFileError
from squad_lora.training_args import ARGUMENT_TYPES

KINDS = sweeps.flag_kinds(ARGUMENT_TYPES)
SWEEP_FILES = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "sweeps", "*.yaml")))


def tiny_flags(model_dir) -> dict:
    """A 2-step run of the tiny model, evaluated (loss and EM/F1 on 4 questions) at its last step."""
    return {
        "model_name_or_path": str(model_dir), "train_file": TRAIN_FILE, "validation_file": DEV_FILE,
        "max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1,
        "eval_strategy": "steps", "eval_steps": 2, "max_eval_samples": 4, "eval_generation_samples": 4,
        "save_strategy": "no", "report_to": "tensorboard", "disable_tqdm": True,
    }  # fmt: skip


SPACE = {
    "lora_r": {"choices": [2, 4]},
    "learning_rate": {"low": "1e-3", "high": "5e-2", "log": True},  # as PyYAML reads 1e-3: a string
    "lora_target_modules": {"choices": [["c_attn"], ["c_attn", "mlp.c_proj"]]},
}


def write_sweep_file(path, **values) -> str:
    spec = {"flags": {"max_steps": 2, "eval_strategy": "steps", "eval_steps": 2}, "n_trials": 3, "space": SPACE}
    spec.update(values)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def load(tmp_path, **values) -> sweeps.SweepSpec:
    return sweeps.load_sweep_spec(write_sweep_file(tmp_path / "s.yaml", **values), KINDS)


# ---------------------------------------------------------------------------
# The sweep file
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", SWEEP_FILES, ids=os.path.basename)
def test_every_sweep_config_loads_and_its_trials_parse(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # base_config paths are from the repository root, as the docs run them
    spec = sweeps.load_sweep_spec(os.path.relpath(path, REPO_ROOT), KINDS)
    with open(path, encoding="utf-8") as f:
        assert f.readline().startswith("#"), "a config opens with a comment saying why it exists"
    sweep.check_trial_flags(spec, str(tmp_path))  # both ends of the space through run_qa_lora.py's parser


def test_a_space_entry_becomes_a_search_parameter(tmp_path):
    spec = load(tmp_path, sampler={"seed": 3})
    lora_r, learning_rate, targets = spec.space
    assert (lora_r.kind, lora_r.choices) == ("categorical", (2, 4))
    assert (learning_rate.kind, learning_rate.low, learning_rate.high, learning_rate.log) == ("float", 1e-3, 5e-2, True)
    assert targets.labels == ("c_attn", "c_attn, mlp.c_proj")  # what Optuna stores: plain values
    assert targets.value("c_attn, mlp.c_proj") == ["c_attn", "mlp.c_proj"]
    assert (spec.objective, spec.direction, spec.sampler, spec.n_trials) == (
        "eval_f1",
        "maximize",
        {"type": "tpe", "seed": 3},
        3,
    )
    assert spec.output_dir == os.path.join("outputs", "sweeps", "s")
    params = {"lora_r": 4, "learning_rate": 0.01, "lora_target_modules": ["c_attn", "mlp.c_proj"]}
    assert sweeps.trial_argv(spec, params, "out/trial-001", "s-trial-001") == [
        "--max_steps=2", "--eval_strategy=steps", "--eval_steps=2",
        "--lora_r=4", "--learning_rate=0.01", "--lora_target_modules", "c_attn", "mlp.c_proj",
        "--output_dir", "out/trial-001", "--run_name", "s-trial-001",
    ]  # fmt: skip


BAD_SPECS = [
    # (values over the good sweep file, what the one-line error says after "<file>: ")
    ({"n_trial": 3}, "n_trial: unknown key (did you mean n_trials?)"),
    (
        {"space": {"lora_dropuot": {"low": 0, "high": 1}}},
        "space: lora_dropuot: not a run_qa_lora.py flag (did you mean lora_dropout?)",
    ),
    ({"space": {"output_dir": {"choices": ["a"]}}}, "space: output_dir: the sweep sets it for each trial"),
    ({"space": {"learning_rate": {"low": 1e-3, "high": 1e-4}}}, "space: learning_rate: low (0.001) must be below high"),
    (
        {"space": {"learning_rate": {"low": 0, "high": 1e-3, "log": True}}},
        "space: learning_rate: log: true needs low > 0",
    ),
    ({"space": {"lora_r": {"low": 2.5, "high": 8}}}, "space: lora_r: low: the flag takes an integer, got 2.5"),
    ({"space": {"lora_r": {"low": 2}}}, "space: lora_r: a range needs low and high"),
    ({"space": {"lora_r": {"choice": [4]}}}, "space: lora_r: choice: unknown key"),
    ({"space": {"lora_r": {"choices": []}}}, "space: lora_r: choices: expected a non-empty list"),
    ({"space": {"lora_r": {"choices": [4, 4]}}}, "space: lora_r: choices: a value is given twice"),
    (
        {"space": {"lora_target_modules": {"low": 1, "high": 2}}},
        "space: lora_target_modules: --lora_target_modules is not a number flag",
    ),
    (
        {"space": {"learning_rate": {"low": "fast", "high": 1}}},
        "space: learning_rate: low: expected a number, got 'fast'",
    ),
    ({"space": {}}, "space: expected a mapping of flags to search"),
    ({"flags": {"lora_rr": 4}}, "flags: lora_rr: not a run_qa_lora.py flag (did you mean lora_r?)"),
    ({"flags": {"lora_r": 4}}, "space: lora_r: also set in flags"),
    ({"objective": "eval_loss"}, "objective: 'eval_loss': choose one of eval_f1, eval_exact_match"),
    ({"direction": "up"}, "direction: 'up': choose one of maximize, minimize"),
    ({"n_trials": 0}, "n_trials: expected a positive integer, got 0"),
    ({"sampler": {"type": "grid"}}, "sampler: type: 'grid': choose one of tpe, random"),
    ({"sampler": {"seeds": 1}}, "sampler: seeds: unknown key (did you mean seed?)"),
    ({"base_config": "configs/missing.yaml"}, "base_config: 'configs/missing.yaml': no such run config file"),
]


@pytest.mark.parametrize(("values", "message"), BAD_SPECS, ids=[message[:40] for _, message in BAD_SPECS])
def test_a_bad_sweep_file_is_one_line_naming_the_file_and_key(tmp_path, values, message):
    path = write_sweep_file(tmp_path / "s.yaml", **values)
    with pytest.raises(ConfigError) as info:
        sweeps.load_sweep_spec(path, KINDS)
    assert str(info.value).startswith(f"{path}: {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "space: expected a mapping of flags to search"),
        ("# a sweep to come\n", "space: expected a mapping of flags to search"),
        ("- lora_r\n- learning_rate\n", "a config file must be a mapping of flag names to values"),
        ("space:\n", "space: expected a mapping of flags to search"),
        ("space: [lora_r, learning_rate]\n", "space: expected a mapping of flags to search"),
        ("space:\n  lora_r:\n", "space: lora_r: expected {choices: [...]} or {low: ..., high: ...}, got None"),
        ("space:\n  lora_r: [4, 8]\n", "space: lora_r: expected {choices: [...]} or {low: ..., high: ...}, got [4, 8]"),
        ("space:\n  lora_r: {choices: '4, 8'}\n", "space: lora_r: choices: expected a non-empty list, got '4, 8'"),
        ("space:\n  lora_r: {choices: [{r: 4}]}\n", "space: lora_r: choices: {'r': 4} is not a flag value"),
        ("space:\n  lora_r: {low: 4, high: 4}\n", "space: lora_r: low (4) must be below high (4)"),
        ("space:\n  learning_rate: {low: .nan, high: 1}\n", "space: learning_rate: low: expected a number, got nan"),
        ("space:\n  learning_rate: {low: 0, high: .inf}\n", "space: learning_rate: high: expected a number, got inf"),
        ("space:\n  lora_r: {low: 2, high: 4, step: 8}\n",
         "space: lora_r: step (8) is wider than the range from low (2) to high (4)"),
        ("space:\n  lora_r: {choices: [4]}\n  lora_r: {choices: [8]}\n",
         "not valid YAML at line 3, column 3: the key 'lora_r' is given twice"),
        ("space: {lora_r: [\n", "not valid YAML at line 2, column 1"),
    ],
)  # fmt: skip
def test_an_empty_or_malformed_sweep_file_ends_sweep_py_with_one_line(text, message, tmp_path, monkeypatch, capsys):
    from squad_lora.cli import run

    monkeypatch.chdir(tmp_path)  # where the default output_dir (outputs/sweeps/<name>) would go
    (tmp_path / "broken.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        run(lambda: sweep.main(["broken.yaml"]))
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.splitlines()[-1].startswith(f"error: broken.yaml: {message}") and "Traceback" not in stderr
    assert os.listdir(tmp_path) == ["broken.yaml"]  # no study, no directory


@pytest.mark.parametrize(
    ("flags", "space", "message"),
    [
        ({"eval_strategy": "no"}, SPACE, "objective eval_f1 is read from each trial's evaluation"),
        ({"eval_generation_samples": 0}, SPACE, "objective eval_f1 is read from each trial's evaluation"),
        ({}, {"lora_r": {"choices": [4, "four"]}}, "--lora_r/--lora-r: invalid int value: 'four'"),
        ({}, {"lora_r": {"choices": [[4, 8]]}}, "unexpected argument(s) 8"),
    ],
)
def test_trials_that_could_not_give_the_objective_are_refused_before_training(tmp_path, flags, space, message):
    spec = load(tmp_path, flags={"eval_strategy": "steps", **flags}, space=space)
    with pytest.raises(ConfigError, match=f"^{re.escape(spec.path)}: .*{re.escape(message)}"):
        sweep.check_trial_flags(spec, str(tmp_path / "out"))


# ---------------------------------------------------------------------------
# The study: resuming without a sweep's training
# ---------------------------------------------------------------------------


def test_an_interrupted_trial_is_marked_failed_and_retried_with_its_values(tmp_path):
    spec = load(tmp_path, sampler={"type": "random", "seed": 0})
    sweep_dir = str(tmp_path / "sweep")
    os.makedirs(sweep_dir)
    study = sweep.open_study(spec, sweep_dir)
    killed = study.ask()  # a trial whose process was killed: left RUNNING in the study
    values = {param.name: sweep.suggest(killed, param) for param in spec.space}
    finished = study.ask()  # killed after its run finished, before the study heard of it
    for param in spec.space:
        sweep.suggest(finished, param)
    write_fake_run(os.path.join(sweep_dir, sweeps.trial_dir_name(finished.number)), eval_f1=12.5)

    study = sweep.open_study(spec, sweep_dir)  # the next `python sweep.py` on the directory
    sweep.settle_unfinished(study, spec, sweep_dir)
    states = {t.number: (t.state, t.value) for t in study.trials}
    assert states[killed.number] == (TrialState.FAIL, None)
    assert states[finished.number] == (TrialState.COMPLETE, 12.5)  # kept: not trained again
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.user_attrs["retry_of"] == killed.number
    again = study.ask()
    assert {param.name: sweep.suggest(again, param) for param in spec.space} == values
    sweep.settle_unfinished(sweep.open_study(spec, sweep_dir), spec, sweep_dir)  # `again` was killed too
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1  # its own retry; the first is not queued twice


def test_a_sweep_stopped_in_a_trial_retries_it_when_run_again(tmp_path, monkeypatch):
    path = write_sweep_file(
        tmp_path / "s.yaml", output_dir=str(tmp_path / "out"), n_trials=2, sampler={"type": "random", "seed": 0}
    )
    calls = []

    def fake_run(argv):  # run_qa_lora.py, without the training: Ctrl-C in the second trial
        output_dir = argv[argv.index("--output_dir") + 1]
        calls.append((os.path.basename(output_dir), argv[: argv.index("--output_dir")]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        write_fake_run(output_dir, eval_f1=10.0 * len(calls))

    monkeypatch.setattr(sweep, "train_trial", fake_run)
    with pytest.raises(KeyboardInterrupt):
        sweep.main([path])
    with open(tmp_path / "out" / "sweep_summary.json", encoding="utf-8") as f:
        assert [t["state"] for t in json.load(f)["trials"]] == ["COMPLETE"]  # written after each finished trial

    summary = sweep.main([path])
    assert [name for name, _ in calls] == ["trial-000", "trial-001", "trial-002"]
    assert calls[2][1] == calls[1][1]  # the same flags: trial-001's values
    assert [(t["state"], t["retry_of"]) for t in summary["trials"]] == [
        ("COMPLETE", None),
        ("FAIL", None),
        ("COMPLETE", 1),
    ]
    assert summary["best"]["output_dir"] == "trial-002" and summary["num_complete"] == 2


@pytest.mark.slow
def test_a_trial_whose_run_fails_fails_the_sweep_with_its_status(tiny_model_dir, tmp_path, caplog):
    # run_qa_lora.py as its own process, through the real seam: it parses, then finds no training file
    flags = {**tiny_flags(tiny_model_dir), "train_file": str(tmp_path / "missing.json")}
    path = write_sweep_file(
        tmp_path / "s.yaml", flags=flags, output_dir=str(tmp_path / "out"), sampler={"type": "random", "seed": 0}
    )
    with pytest.raises(sweep.TrialFailed, match="run_qa_lora.py exited with status 2") as info:
        sweep.main([path])
    assert info.value.exit_code == 2  # a user's fault, as the trial's own run said
    assert "trial-000 failed: rerun the same command to resume the sweep" in caplog.text
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{tmp_path}/out/study.db")
    assert [trial.state for trial in study.trials] == [TrialState.FAIL]


# run_qa_lora.py's stand-in for a real sweep process: each trial records its pid and writes a run summary at once,
# except the trial named in $HANG_TRIAL, which waits to be stopped (on Ctrl-C: exits as run_qa_lora.py does)
FAKE_TRIAL = """
import json, os, sys, time
output_dir = sys.argv[sys.argv.index("--output_dir") + 1]
name = os.path.basename(output_dir)
try:
    with open(os.path.join(os.environ["TRIAL_RECORD"], name), "a") as f:
        f.write(f"{os.getpid()}\\n")
    if name == os.environ.get("HANG_TRIAL"):
        time.sleep(300)
except KeyboardInterrupt:
    print("error: interrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(130)
os.makedirs(output_dir)
lora_r = int(next(w for w in sys.argv if w.startswith("--lora_r=")).split("=")[1])
summary = {"run_name": name, "lora": {"lora_r": lora_r}, "trainable_params": 1, "all_params": 2,
           "trainable_percent": 50.0, "train_metrics": {}, "eval_metrics": {"eval_f1": 10.0 * lora_r},
           "log_history": []}
with open(os.path.join(output_dir, "run_summary.json"), "w") as f:
    json.dump(summary, f)
"""
SWEEP_WITH_FAKE_TRIALS = """
import sys
from squad_lora.commands import sweep
from squad_lora import cli
sweep.TRAIN_COMMAND = [sys.executable, sys.argv.pop(1)]
cli.run(sweep.main)
"""


def start_sweep(tmp_path, sweep_file, hang_trial=None) -> subprocess.Popen:
    """sweep.py on the sweep file as its own process (session), with FAKE_TRIAL for run_qa_lora.py."""
    fake, record = tmp_path / "fake_run_qa_lora.py", tmp_path / "record"
    fake.write_text(FAKE_TRIAL, encoding="utf-8")
    record.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TRIAL_RECORD": str(record), "HANG_TRIAL": hang_trial or ""}
    command = [sys.executable, "-c", SWEEP_WITH_FAKE_TRIALS, str(fake), sweep_file]
    # Ctrl-C's disposition as a terminal gives it: an ignored SIGINT (which an earlier test or a library may leave
    # in this process) is inherited across exec, and Python then installs no KeyboardInterrupt for it
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def wait_for(path, process, seconds=120.0) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"no {path} after {seconds} s"
        time.sleep(0.05)


def ended(pid: int, seconds=30.0) -> bool:
    import psutil

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("stop", ["ctrl-c", "sigkill"])
def test_a_sweep_stopped_mid_trial_by_ctrl_c_or_sigkill_resumes_losing_and_repeating_nothing(stop, tmp_path):
    space = {"lora_r": {"choices": [1, 2, 3, 4, 5, 6, 7, 8]}}
    path = write_sweep_file(tmp_path / "s.yaml", space=space, n_trials=3, sampler={"type": "random", "seed": 0})
    record, sweep_dir = tmp_path / "record", tmp_path / "outputs" / "sweeps" / "s"
    first = start_sweep(tmp_path, path, hang_trial="trial-001")
    try:
        wait_for(record / "trial-001", first)  # trial-000 done, trial-001 training
        (trial_pid,) = map(int, (record / "trial-001").read_text().split())
        if stop == "ctrl-c":  # the terminal's Ctrl-C reaches the sweep and its trial: the process group
            os.killpg(first.pid, signal.SIGINT)
        else:  # the sweep alone, with no chance to tell the study
            first.send_signal(signal.SIGKILL)
        first.wait(timeout=120)
        assert ended(trial_pid), "the trial outlived its sweep"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # whatever is left of the sweep's process group
    stderr = first.stderr.read()
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep_dir}/study.db")
    left = [trial.state for trial in study.trials]
    if stop == "ctrl-c":
        assert first.returncode == 130 and stderr.splitlines()[-1] == "error: interrupted (Ctrl-C)"
        assert "Traceback" not in stderr and left == [TrialState.COMPLETE, TrialState.FAIL]
    else:
        assert first.returncode == -signal.SIGKILL and left == [TrialState.COMPLETE, TrialState.RUNNING]

    again = start_sweep(tmp_path, path)  # the same command: the killed sweep's lock went with it
    assert again.wait(timeout=300) == 0, again.stderr.read()
    with open(sweep_dir / "sweep_summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    trials = summary["trials"]
    assert [(t["output_dir"], t["state"], t["retry_of"]) for t in trials] == [
        ("trial-000", "COMPLETE", None), ("trial-001", "FAIL", None),
        ("trial-002", "COMPLETE", 1), ("trial-003", "COMPLETE", None),
    ]  # fmt: skip
    assert trials[2]["params"] == trials[1]["params"]  # the interrupted trial retried with its values, once
    assert summary["num_complete"] == 3  # trial-000 counted once, not trained again
    runs = {name: (record / name).read_text().split() for name in os.listdir(record)}
    assert sorted(runs) == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert all(len(pids) == 1 for pids in runs.values())  # each trial's run started once
    for trial in trials:
        if trial["state"] == "COMPLETE":
            assert trial["objective"] == 10.0 * trial["params"]["lora_r"]


@pytest.mark.parametrize("child_heard_it", [True, False], ids=["ctrl-c-in-the-terminal", "sweep-alone"])
def test_ctrl_c_during_a_trial_lets_its_run_finish_then_stops_the_sweep(monkeypatch, child_heard_it):
    events = []

    class Child:  # the trial's run_qa_lora.py process
        def __init__(self, command, env, preexec_fn):
            events.append(("start", command))
            # the package is found from any working directory, installed or not
            assert env["PYTHONPATH"].split(os.pathsep)[0] == REPO_ROOT

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def wait(self, timeout=None):
            events.append(("wait", timeout))
            if len(events) == 2:
                raise KeyboardInterrupt  # Ctrl-C while the trial trains
            if timeout is not None and not child_heard_it:
                raise sweep.subprocess.TimeoutExpired("run_qa_lora.py", timeout)
            return 130  # it said what it kept and exited as a Ctrl-C'd script does

        def send_signal(self, signum):
            events.append(("signal", signum))

    monkeypatch.setattr(sweep.subprocess, "Popen", Child)
    with pytest.raises(KeyboardInterrupt):
        sweep.train_trial(["--output_dir", "out/trial-000"])
    assert events[0] == ("start", [sys.executable, "-m", "squad_lora.commands.train", "--output_dir", "out/trial-000"])
    assert events[1:] == [("wait", None), ("wait", 30)] + (
        [] if child_heard_it else [("signal", signal.SIGINT), ("wait", None)]
    )


def test_a_study_of_other_settings_is_not_resumed(tmp_path):
    sweep_dir = str(tmp_path / "sweep")
    os.makedirs(sweep_dir)
    sweep.open_study(load(tmp_path), sweep_dir)
    other = load(tmp_path, space={"lora_r": {"choices": [2, 8]}})
    with pytest.raises(ConfigError, match="holds a sweep of other settings"):
        sweep.open_study(other, sweep_dir)
    sweep.open_study(load(tmp_path, n_trials=5), sweep_dir)  # more trials: the same sweep


def test_the_summary_names_the_best_trial(tmp_path):
    spec = load(tmp_path, sampler={"type": "random", "seed": 1})
    sweep_dir = str(tmp_path / "sweep")
    os.makedirs(sweep_dir)
    study = sweep.open_study(spec, sweep_dir)
    for value in (10.0, 50.0, None, 30.0):
        trial = study.ask()
        for param in spec.space:
            sweep.suggest(trial, param)
        study.tell(trial, value, state=TrialState.FAIL if value is None else None)
    summary = sweep.build_summary(study, spec, n_trials=3)
    assert [(t["state"], t["objective"]) for t in summary["trials"]] == [
        ("COMPLETE", 10.0), ("COMPLETE", 50.0), ("FAIL", None), ("COMPLETE", 30.0)
    ]  # fmt: skip
    assert (summary["num_complete"], summary["best"]["number"], summary["best"]["objective"]) == (3, 1, 50.0)
    assert summary["best"]["params"] == summary["trials"][1]["params"]
    assert isinstance(summary["best"]["params"]["lora_target_modules"], list)  # the flag's value, not Optuna's label


def write_fake_run(run_dir, eval_f1):
    os.makedirs(run_dir)
    summary = {
        "run_name": os.path.basename(run_dir), "lora": {"lora_r": 2}, "trainable_params": 1, "all_params": 2,
        "trainable_percent": 50.0, "train_metrics": {}, "eval_metrics": {"eval_f1": eval_f1}, "log_history": [],
    }  # fmt: skip
    with open(os.path.join(run_dir, "run_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f)


# ---------------------------------------------------------------------------
# Three real trials
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sweep(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    path = root / "tiny.yaml"
    spec = {
        "flags": tiny_flags(tiny_model_dir), "output_dir": str(root / "out"), "n_trials": 3,
        "sampler": {"type": "random", "seed": 0}, "space": SPACE,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    summary = sweep.main([str(path)])
    return str(path), str(root / "out"), summary


@pytest.mark.slow
def test_a_sweep_trains_each_trial_in_its_own_run_directory(tiny_sweep):
    _, sweep_dir, summary = tiny_sweep
    assert [t["output_dir"] for t in summary["trials"]] == ["trial-000", "trial-001", "trial-002"]
    assert summary["num_complete"] == 3
    for trial in summary["trials"]:
        assert trial["command"].startswith("squad-lora train ") and "--output_dir" in trial["command"]
        run_dir = os.path.join(sweep_dir, trial["output_dir"])
        with open(os.path.join(run_dir, "run_summary.json"), encoding="utf-8") as f:
            run = json.load(f)
        assert trial["state"] == "COMPLETE" and run["run_name"] == f"tiny-{trial['output_dir']}"
        assert trial["objective"] == run["eval_metrics"]["eval_f1"]
        # the trial's values reached its run
        assert run["lora"]["lora_r"] == trial["params"]["lora_r"]
        assert run["lora"]["lora_target_modules"] == trial["params"]["lora_target_modules"]
        assert run["learning_rate"] == pytest.approx(trial["params"]["learning_rate"], rel=1e-12)
        assert event_dirs(run_dir) == {os.path.join(run_dir, "runs", run["run_name"])}  # its own TensorBoard run
    with open(os.path.join(sweep_dir, "sweep_summary.json"), encoding="utf-8") as f:
        assert json.load(f) == summary


@pytest.mark.slow
def test_the_best_trial_is_the_studys_and_the_highest_objective(tiny_sweep):
    _, sweep_dir, summary = tiny_sweep
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep_dir}/study.db")
    objectives = [trial["objective"] for trial in summary["trials"]]
    assert summary["best"]["objective"] == study.best_value == max(objectives)
    assert summary["best"]["number"] == study.best_trial.number
    assert summary["best"]["params"] == summary["trials"][summary["best"]["number"]]["params"]


@pytest.mark.slow
def test_rerunning_the_sweep_trains_nothing(tiny_sweep, monkeypatch):
    path, sweep_dir, summary = tiny_sweep

    def no_training(argv):
        raise AssertionError(f"a finished trial was trained again: {argv}")

    monkeypatch.setattr(sweep, "train_trial", no_training)
    again = sweep.main([path])
    assert again["num_complete"] == 3 and again["trials"] == summary["trials"]


@pytest.mark.slow
def test_report_over_a_sweep_directory_tables_its_trials(tiny_sweep, tmp_path):
    _, sweep_dir, summary = tiny_sweep
    result = report.main([sweep_dir, "--output_dir", str(tmp_path / "report")])
    assert [row["name"] for row in result["rows"]] == [t["run_name"] for t in summary["trials"]]
    assert [row["f1"] for row in result["rows"]] == [t["objective"] for t in summary["trials"]]
    assert [row["r"] for row in result["rows"]] == [t["params"]["lora_r"] for t in summary["trials"]]
    for name in ("results.md", "results.csv", "loss_curves.png", "em_f1.png"):
        assert os.path.isfile(tmp_path / "report" / name)
    # the trial directories themselves work as before
    trial_dirs = sorted(glob.glob(os.path.join(sweep_dir, "trial-*")))
    assert len(report.main([*trial_dirs, "--output_dir", str(tmp_path / "by-dirs")])["rows"]) == 3


def test_report_over_a_sweep_with_no_complete_trial_says_so(tmp_path):
    sweeps.write_summary(str(tmp_path), {"trials": [{"number": 0, "state": "FAIL", "output_dir": "trial-000"}]})
    with pytest.raises(RunFileError, match="a sweep with no complete trial yet"):
        report.main([str(tmp_path), "--output_dir", str(tmp_path / "report")])
