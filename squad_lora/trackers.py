"""What the loggers --report_to names need from this machine, checked when the flags are parsed (QATrainingArguments):
a name the Trainer does not know, or a store a logger would refuse only once training starts (after the model has
loaded, in the logger's own traceback), is one line naming the fix, before anything loads (docs/tracking.md).

Each store is resolved as its logger will resolve it: MLflow's tracking URI by mlflow.get_tracking_uri (the URI set
in this process, else MLFLOW_TRACKING_URI, else MLflow's default: ./mlruns where it holds runs, else
sqlite:///mlflow.db), trackio's directory by trackio itself (TRACKIO_DIR, else $HF_HOME/trackio), TensorBoard's
TENSORBOARD_LOGGING_DIR (unset: under --output_dir, which squad_lora.run_dir checks).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import urllib.parse

from squad_lora.errors import RunFileError
from squad_lora.outputs import check_writable_dir

STANDING_ALONE = ("all", "none")  # TrainingArguments reads these only as the one value of --report_to


def tracker_problems(report_to: list[str]) -> list[str]:
    """One problem per --report_to name the Trainer does not know and per store a logger would refuse; report_to as
    TrainingArguments resolved it (`all` and `none` given alone are already lists of names)."""
    from transformers.integrations import INTEGRATION_TO_CALLBACK

    problems = [
        _unknown_name(name, list(INTEGRATION_TO_CALLBACK)) for name in report_to if name not in INTEGRATION_TO_CALLBACK
    ]
    if "tensorboard" in report_to and os.environ.get("TENSORBOARD_LOGGING_DIR"):
        problems += _unwritable(os.environ["TENSORBOARD_LOGGING_DIR"], "TENSORBOARD_LOGGING_DIR", "tensorboard")
    if "mlflow" in report_to and importlib.util.find_spec("mlflow") is not None:
        problems += mlflow_problems()
    if "trackio" in report_to and importlib.util.find_spec("trackio") is not None:
        import trackio.utils

        problems += _unwritable(str(trackio.utils.TRACKIO_DIR), "TRACKIO_DIR", "trackio")
    return problems


def _unknown_name(name: str, known: list[str]) -> str:
    if name in STANDING_ALONE:
        return f"--report_to {name}: stands alone (`--report_to {name}`), not beside other loggers"
    close = difflib.get_close_matches(name.lower(), known, 1, 0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"--report_to {name}: not a logger the Trainer knows{hint}; known: {', '.join(sorted(known))}, all, none"


def _unwritable(path: str, name: str, logger: str) -> list[str]:
    """The problem with a logger's directory that cannot be written, if any."""
    try:
        check_writable_dir(path, name)
    except RunFileError as e:
        return [f"--report_to {logger}: {e}: point {name} at a directory you can write"]
    return []


def mlflow_problems() -> list[str]:
    """MLflow's file store without MLFLOW_ALLOW_FILE_STORE (MLflow 3.x refuses it in maintenance mode) or in a
    directory that cannot be written. Other stores (a database, a server) are MLflow's to check."""
    import mlflow
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    from mlflow.utils.file_utils import local_file_uri_to_path

    uri = mlflow.get_tracking_uri()
    if urllib.parse.urlparse(uri).scheme not in ("", "file"):
        return []
    problems = []
    try:
        allowed = MLFLOW_ALLOW_FILE_STORE.get()
    except ValueError:
        allowed = True  # the value's own problem is the one to fix first
        problems.append(
            f"MLFLOW_ALLOW_FILE_STORE={os.environ['MLFLOW_ALLOW_FILE_STORE']}: MLflow reads true, false, 1 or 0"
        )
    if not allowed:
        problems.append(
            f"--report_to mlflow: the tracking store {uri} is MLflow's file store, which MLflow {mlflow.__version__} "
            "refuses unless MLFLOW_ALLOW_FILE_STORE=true is set: set it, or point MLFLOW_TRACKING_URI at a database "
            "(sqlite:///$PWD/mlflow.db; docs/tracking.md)"
        )
    return problems + _unwritable(local_file_uri_to_path(uri), "MLFLOW_TRACKING_URI", "mlflow")
