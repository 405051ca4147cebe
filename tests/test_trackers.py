"""What the loggers besides TensorBoard store of a run (docs/tracking.md): MLflow on a local file store and trackio in
its local database, both offline, read back through their own clients. Each gets the eval EM/F1 and loss that
run_summary.json holds (also where the final evaluation, of the best checkpoint, comes after training), and the
run's LoRA and decoding settings as well as the Trainer's."""

import os
import socket

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from trackio.api import Api as TrackioApi
from trackio.sqlite_storage import SQLiteStorage

import run_qa_lora
from builders import tiny_run_args

FINAL_METRICS = ("eval_exact_match", "eval_f1", "eval_loss")
TRACKIO_NAMES = {"eval_exact_match": "eval/exact_match", "eval_f1": "eval/f1", "eval_loss": "eval/loss"}


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt that leaves this machine is refused and recorded (local sockets still work)."""
    attempts = []
    connect = socket.socket.connect

    def local_only(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    return attempts


@pytest.fixture
def local_trackers(tmp_path, monkeypatch):
    """MLflow on a file store under tmp_path, and trackio local (no Space, no server): its database lies in the
    tests' HF_HOME (conftest), each test's runs in a project of their own."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.18 wants it for a file store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"squad-lora-{tmp_path.name}")
    for name in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID", "TRACKIO_DATASET_ID"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(uri)  # the callback takes the variable only where no URI is set in this process yet
    return uri, f"trackers-{tmp_path.name}"


def mlflow_run(uri: str, experiment_name: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])  # one run: the final evaluation is not a run of its own
    return client, run


def last_trackio_values(project: str, run_name: str) -> dict:
    """{metric: its last logged value} of a trackio run, from its local database."""
    values = {}
    for entry in SQLiteStorage.get_logs(project, run_name):
        values.update(entry)
    return values


@pytest.mark.slow
def test_mlflow_and_trackio_get_the_final_metrics_and_the_lora_settings(
    tiny_model_dir, tmp_path, local_trackers, no_network
):
    uri, project = local_trackers
    # the best checkpoint (by F1: step 2, as the untrained model's F1 does not improve) is evaluated after training
    summary = run_qa_lora.main(
        tiny_run_args(
            tiny_model_dir, tmp_path / "run",
            "--run_name", "tracked", "--project", project, "--report_to", "mlflow", "trackio",
            "--max_steps", 4, "--learning_rate", "1e-3", "--lora_r", 4, "--lora_target_modules", "c_attn", "mlp.c_proj",
            "--eval_strategy", "steps", "--eval_steps", 2, "--save_strategy", "steps", "--save_steps", 2,
            "--load_best_model_at_end", "--metric_for_best_model", "f1",
            "--max_eval_samples", 4, "--eval_generation_samples", 4,
        )
    )  # fmt: skip
    final = summary["eval_metrics"]
    assert no_network == []

    client, run = mlflow_run(uri, os.environ["MLFLOW_EXPERIMENT_NAME"])
    assert (run.info.run_name, run.info.status) == ("tracked", "FINISHED")
    for key in FINAL_METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [2, 4, 4]  # at each evaluation, then the best checkpoint's
        assert history[-1].value == pytest.approx(final[key], rel=1e-6)
        assert run.data.metrics[key] == pytest.approx(final[key], rel=1e-6)
    params = run.data.params
    assert (params["lora_r"], float(params["lora_alpha"]), float(params["lora_dropout"])) == ("4", 16.0, 0.1)
    assert params["lora_target_modules"] == "c_attn, mlp.c_proj"
    assert float(params["learning_rate"]) == 1e-3 and params["max_steps"] == "4"
    assert (params["strategy"], params["max_new_tokens"], params["constrain_to_context"]) == ("greedy", "32", "False")

    (trackio_run,) = TrackioApi().runs(project)
    assert trackio_run.name == "tracked"
    logged = last_trackio_values(project, "tracked")
    for key, name in TRACKIO_NAMES.items():
        assert logged[name] == pytest.approx(final[key], rel=1e-6), name
    config = trackio_run.config
    assert (config["lora_r"], config["lora_alpha"], config["lora_dropout"]) == (4, 16.0, 0.1)
    assert config["lora_target_modules"] == "c_attn, mlp.c_proj"
    assert config["learning_rate"] == 1e-3 and config["strategy"] == "greedy"


@pytest.mark.slow
def test_mlflow_alone_gets_the_evaluation_reused_at_the_last_step(tiny_model_dir, tmp_path, local_trackers):
    uri, _ = local_trackers
    summary = run_qa_lora.main(
        tiny_run_args(
            tiny_model_dir, tmp_path / "run", "--run_name", "alone", "--report_to", "mlflow",
            "--eval_strategy", "steps", "--eval_steps", 2, "--max_eval_samples", 4, "--eval_generation_samples", 4,
        )
    )  # fmt: skip
    client, run = mlflow_run(uri, os.environ["MLFLOW_EXPERIMENT_NAME"])
    assert run.info.status == "FINISHED"
    for key in FINAL_METRICS:
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)] == [
            (2, pytest.approx(summary["eval_metrics"][key], rel=1e-6))
        ]
    assert run.data.params["lora_r"] == "8" and run.data.params["lora_target_modules"] == "c_attn"
