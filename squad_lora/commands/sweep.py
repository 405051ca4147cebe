"""Search LoRA settings with Optuna: each trial is a real run_qa_lora.py run, scored by its eval F1 (or EM).

    python sweep.py configs/sweeps/lora_small.yaml                      # the trials the file asks for
    python sweep.py configs/sweeps/lora_small.yaml --n_trials 20        # the same study, grown to 20 trials
    python report.py outputs/sweeps/lora_small --output_dir outputs/sweeps/lora_small/report

The sweep file names a base run config and flags, the search space, the objective and the sampler's seed
(docs/sweeps.md). The study lives in SQLite in the sweep's output dir, beside one run directory per trial
(trial-000, ...): rerunning the command resumes it. A finished trial is never rerun; one that was interrupted is
marked failed and retried with the same values. sweep_summary.json lists the trials and the best.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional

from squad_lora import cli, outputs, sweeps
from squad_lora.errors import ConfigError, RunFileError, SquadLoraError
from squad_lora.training_args import ARGUMENT_TYPES

try:
    import optuna
    from optuna.trial import TrialState
except ImportError:  # the sweep extra; main() says how to install it
    optuna = None

logger = logging.getLogger(__name__)

# What trains each trial: the train command (run_qa_lora.py's story) in a Python of its own
TRAIN_COMMAND = [sys.executable, "-m", "squad_lora.commands.train"]
# The folder holding squad_lora, first on the trial's PYTHONPATH: `python -m` looks in the working directory,
# and a checkout used without installing it may be elsewhere
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Linux's prctl (PR_SET_PDEATHSIG: a signal when the parent dies), loaded here: between fork and exec the trial's
# process should do no more than call it. None elsewhere
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


@dataclass
class SweepArguments:
    sweep_file: Optional[str] = field(
        default=None, metadata={"help": "The sweep file (YAML: base config, flags, space, objective); also positional."}
    )
    output_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where the study, the trial runs and sweep_summary.json go; default the file's output_dir."},
    )
    n_trials: Optional[int] = field(
        default=None, metadata={"help": "Complete trials to reach (resuming the study); default the file's n_trials."}
    )


def check_trial_flags(spec: sweeps.SweepSpec, sweep_dir: str) -> None:
    """Before any trial: run_qa_lora.py's parser takes the trials' flags at both ends of the space, and each trial
    evaluates with EM/F1 (the objective is read from its evaluation)."""
    if os.environ.get("TENSORBOARD_LOGGING_DIR"):
        raise ConfigError("TENSORBOARD_LOGGING_DIR is set: every trial would write into it; unset it (each trial "
                          "writes its own TensorBoard run in its directory)")  # fmt: skip
    for params in sweeps.corner_params(spec):
        argv = sweeps.trial_argv(spec, params, os.path.join(sweep_dir, "trial-check"), "check")
        try:
            parsed, _, _ = cli.parse_args(ARGUMENT_TYPES, argv, bare_words="the config file")
        except ConfigError as e:
            raise ConfigError(f"{spec.path}: {e} (a trial with {params})") from e
        training_args = parsed[-1]
        if not training_args.do_eval or training_args.eval_generation_samples <= 0:
            raise ConfigError(
                f"{spec.path}: objective {spec.objective} is read from each trial's evaluation: set eval_strategy "
                "(steps or epoch) and eval_generation_samples above 0, in flags or the base config"
            )


def open_study(spec: sweeps.SweepSpec, sweep_dir: str):
    """The sweep's Optuna study in SQLite under sweep_dir: created, or loaded where the same sweep ran before."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sweep.py says what each trial did itself
    storage = "sqlite:///" + os.path.abspath(os.path.join(sweep_dir, sweeps.STUDY_FILE))
    study = optuna.create_study(
        storage=storage, study_name=sweeps.STUDY_NAME, direction=spec.direction, load_if_exists=True
    )
    identity = study.user_attrs.get("spec")
    if identity is None:
        study.set_user_attr("spec", spec.identity())
    elif identity != spec.identity():
        raise ConfigError(
            f"{sweep_dir} holds a sweep of other settings (base config, flags, space, objective or sampler) than "
            f"{spec.path}: pass another --output_dir, or the sweep file it was started with"
        )
    # reseeded past the trials already drawn: a resumed sweep does not draw its first trials' values again
    sampler_type = optuna.samplers.TPESampler if spec.sampler["type"] == "tpe" else optuna.samplers.RandomSampler
    study.sampler = sampler_type(seed=spec.sampler["seed"] + len(study.trials))
    return study


def read_objective(trial_dir: str, objective: str) -> float:
    """The objective from a trial's run_summary.json (its final evaluation)."""
    value = outputs.read_run_summary(trial_dir)["eval_metrics"].get(objective)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RunFileError(
            f"{trial_dir}: run_summary.json has no {objective} in eval_metrics (no questions answered at evaluation?)"
        )
    return float(value)


def settle_unfinished(study, spec: sweeps.SweepSpec, sweep_dir: str) -> None:
    """Trials an earlier, stopped sweep left running: kept where their run finished, else marked failed; and each
    failed trial queued again with its values, once."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        name = trial.user_attrs.get("output_dir", sweeps.trial_dir_name(trial.number))
        trial_dir = os.path.join(sweep_dir, name)
        if os.path.isfile(os.path.join(trial_dir, outputs.SUMMARY_FILE)):
            study.tell(trial.number, read_objective(trial_dir, spec.objective))
            logger.info("%s finished before the sweep stopped: kept", name)
        else:
            study.tell(trial.number, state=TrialState.FAIL)
            logger.warning("%s was interrupted: marked failed, and retried with the same values", name)
    retried = {trial.user_attrs.get("retry_of") for trial in study.get_trials(deepcopy=False)}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def suggest(trial, param: sweeps.SearchParam):
    """The trial's value of one search parameter, as Optuna stores it (a choice's label)."""
    if param.kind == "categorical":
        return trial.suggest_categorical(param.name, param.labels)
    if param.kind == "int":
        return trial.suggest_int(param.name, param.low, param.high, log=param.log, step=param.step or 1)
    return trial.suggest_float(param.name, param.low, param.high, log=param.log, step=param.step)


class TrialFailed(SquadLoraError):
    """A trial's run_qa_lora.py exited with an error (it printed which); the sweep exits with the same status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _ends_with_the_sweep(sweep_pid: int):
    """What the trial's process runs before run_qa_lora.py (Linux): a SIGTERM when the sweep dies, even killed
    with SIGKILL, so that no orphaned trial trains on beside the retry that the next sweep starts."""

    def end_with_the_sweep() -> None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != sweep_pid:  # the sweep died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return end_with_the_sweep if _LIBC is not None else None


def train_trial(argv: list[str]) -> None:
    """Train one trial: `squad-lora train ARGV` (run_qa_lora.py) in a process of its own (this Python, environment
    and working directory), as a user would run it. A Ctrl-C reaches the trial too: the sweep
    waits while it says what it kept, then the KeyboardInterrupt goes on. A killed sweep takes its trial along."""
    command = [*TRAIN_COMMAND, *argv]
    path = os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with subprocess.Popen(command, env=env, preexec_fn=_ends_with_the_sweep(os.getpid())) as process:
        try:
            status = process.wait()
        except KeyboardInterrupt:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # the interrupt reached the sweep alone: stop the trial the same way
                process.send_signal(signal.SIGINT)
                process.wait()
            raise
    if status:
        exit_code = status if status > 0 else 128 - status  # killed by a signal: the shell's status for it
        raise TrialFailed(f"run_qa_lora.py exited with status {exit_code} (its error is printed above)", exit_code)


def run_trial(study, spec: sweeps.SweepSpec, sweep_dir: str) -> None:
    """Draw one trial's values, train it with run_qa_lora.py in its own directory, and tell the study its score."""
    trial = study.ask()
    name = sweeps.trial_dir_name(trial.number)
    trial_dir = os.path.join(sweep_dir, name)
    params = {param.name: param.value(suggest(trial, param)) for param in spec.space}
    argv = sweeps.trial_argv(spec, params, trial_dir, f"{spec.name}-{name}")
    trial.set_user_attr("output_dir", name)
    trial.set_user_attr("command", shlex.join(["squad-lora", "train", *argv]))  # run_qa_lora.py in a checkout
    logger.info("%s: %s", name, ", ".join(f"{key}={value}" for key, value in params.items()))
    try:
        train_trial(argv)
        value = read_objective(trial_dir, spec.objective)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        logger.error("%s failed: rerun the same command to resume the sweep (it retries %s)", name, name)
        raise
    study.tell(trial, value)
    logger.info("%s: %s %.2f", name, spec.objective, value)


def build_summary(study, spec: sweeps.SweepSpec, n_trials: int) -> dict:
    """What sweep_summary.json holds: every trial (state, values, objective, directory) and the best."""
    params_of = {param.name: param for param in spec.space}
    trials = []
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        name = trial.user_attrs.get("output_dir", sweeps.trial_dir_name(trial.number))
        trials.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "output_dir": name,
                "run_name": f"{spec.name}-{name}",
                "params": {key: params_of[key].value(label) for key, label in trial.params.items() if key in params_of},
                "objective": trial.value if trial.state.name == "COMPLETE" else None,
                "retry_of": trial.user_attrs.get("retry_of"),
                "duration_s": trial.duration.total_seconds() if trial.duration else None,
                "command": trial.user_attrs.get("command"),
            }
        )
    complete = [trial for trial in trials if trial["state"] == "COMPLETE"]
    best = None
    if complete:
        (best,) = [trial for trial in trials if trial["number"] == study.best_trial.number]
        best = {key: best[key] for key in ("number", "output_dir", "run_name", "objective", "params")}
    return {
        "sweep_file": spec.path,
        "name": spec.name,
        "study": {"storage": sweeps.STUDY_FILE, "study_name": sweeps.STUDY_NAME},
        "objective": spec.objective,
        "direction": spec.direction,
        "sampler": spec.sampler,
        "space": {param.name: param.as_dict() for param in spec.space},
        "n_trials": n_trials,
        "num_complete": len(complete),
        "best": best,
        "trials": trials,
    }


def main(argv: list[str] | None = None) -> dict:
    (args,), _, _ = cli.parse_args((SweepArguments,), argv, positional=("sweep_file",), bare_words="the sweep file")
    cli.setup_logging(__name__)
    if optuna is None:
        raise ConfigError('optuna is not installed: pip install -e ".[sweep]"')
    if not args.sweep_file:
        raise ConfigError("give the sweep file: python sweep.py configs/sweeps/lora_small.yaml")
    spec = sweeps.load_sweep_spec(args.sweep_file, sweeps.flag_kinds(ARGUMENT_TYPES))
    sweep_dir = args.output_dir or spec.output_dir
    n_trials = spec.n_trials if args.n_trials is None else args.n_trials
    if n_trials < 1:
        raise ConfigError(f"--n_trials {n_trials}: give at least 1")
    check_trial_flags(spec, sweep_dir)
    outputs.check_writable_dir(sweep_dir)
    outputs.lock_dir(sweep_dir)  # one sweep at a time on a study: it marks the trials it finds running as failed

    study = open_study(spec, sweep_dir)
    settle_unfinished(study, spec, sweep_dir)
    num_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if num_complete >= n_trials:
        logger.info("%s: %d trials complete already (asked: %d): nothing to train", sweep_dir, num_complete, n_trials)
    while num_complete < n_trials:
        run_trial(study, spec, sweep_dir)
        num_complete += 1
        sweeps.write_summary(sweep_dir, build_summary(study, spec, n_trials))  # after every trial: progress shows

    summary = build_summary(study, spec, n_trials)
    sweeps.write_summary(sweep_dir, summary)
    best = summary["best"]
    logger.info(
        "best: %s (%s %.2f): %s; the table and plots: python report.py %s --output_dir %s",
        best["output_dir"],
        spec.objective,
        best["objective"],
        ", ".join(f"{key}={value}" for key, value in best["params"].items()),
        sweep_dir,
        os.path.join(sweep_dir, "report"),
    )
    return summary


if __name__ == "__main__":
    cli.run(main)
