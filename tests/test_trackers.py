"""What the loggers store of a run (docs/tracking.md): MLflow on a local file store and trackio in its local database,
both offline, read back through their own clients. Each gets the eval EM/F1 and loss that run_summary.json holds
(also where the final evaluation, of the best checkpoint, comes after training), and the run's LoRA and decoding
settings as well as the Trainer's. At each evaluation (--eval_log_samples) every question's answer and score go to
the run's eval_predictions_*.jsonl, and the first ones as a table to each logger, TensorBoard's text included."""

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from trackio.api import Api as TrackioApi
from trackio.sqlite_storage import SQLiteStorage

from builders import tiny_run_args
from repo_paths import DEV_FILE, REPO_ROOT
from run_outputs import eval_entries, read_texts
from squad_lora import outputs
from squad_lora.callbacks import SAMPLE_COLUMNS, AnswerSamplesCallback, sample_rows
from squad_lora.commands import train as run_qa_lora
from squad_lora.data import load_squad_file
from squad_lora.errors import ConfigError
from squad_lora.squad_metric.squad_metric import question_scores
from squad_lora.training_args import QATrainingArguments

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


def mlflow_table(client, run, artifact_file: str, directory) -> tuple[list, list]:
    """(columns, rows) of a table mlflow.log_table stored in the run."""
    with open(client.download_artifacts(run.info.run_id, artifact_file, str(directory)), encoding="utf-8") as f:
        table = json.load(f)
    return table["columns"], table["data"]


def assert_same_rows(rows, expected) -> None:
    """Sample table rows equal, their F1 (last column) up to the float rounding of a logger's JSON."""
    assert [row[:-1] for row in rows] == [row[:-1] for row in expected]
    assert [row[-1] for row in rows] == pytest.approx([row[-1] for row in expected], abs=1e-9)


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
            "--max_eval_samples", 4, "--eval_generation_samples", 4, "--eval_log_samples", 3,
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

    # the answers of each evaluation: all 4 questions in the run's files, the first 3 in each logger's table
    evaluations = outputs.read_answers(str(tmp_path / "run"))
    assert [(name, len(rows)) for name, rows in evaluations] == [("step2", 4), ("step4", 4), ("final", 4)]
    tables = [sample_rows(rows[:3], name) for name, rows in evaluations]
    columns, rows = mlflow_table(client, run, "eval_samples.json", tmp_path)  # one table, appended to
    assert columns == list(SAMPLE_COLUMNS)
    assert_same_rows(rows, [row for table in tables for row in table])
    logged = [entry["eval/samples"] for entry in SQLiteStorage.get_logs(project, "tracked") if "eval/samples" in entry]
    assert len(logged) == len(tables)
    for table, expected in zip(logged, tables):
        assert table["_type"] == "trackio.table"
        assert [list(row) for row in table["_value"]] == [list(SAMPLE_COLUMNS)] * len(expected)
        assert_same_rows([list(row.values()) for row in table["_value"]], expected)


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


def test_answer_files_are_named_by_evaluation_and_a_run_clears_those_it_will_write(tmp_path):
    """A run resumed at step 2 (or one overwriting the directory, at step 0) writes the later evaluations and the
    final one anew: the files left of them go as training begins, the others stay. Then an evaluation during
    training is written by its step, one after training as the final one."""
    for name in ("step2", "step4", "final"):
        outputs.write_jsonl(outputs.answers_path(str(tmp_path), name), [])
    (tmp_path / "eval_predictions_notes.jsonl").write_text("not an evaluation's\n")
    callback = AnswerSamplesCallback(8, tensorboard=None)
    args = SimpleNamespace(output_dir=str(tmp_path), report_to=[])
    state = SimpleNamespace(global_step=2, is_world_process_zero=True)
    callback.on_train_begin(args, state, None)
    assert sorted(os.listdir(tmp_path)) == ["eval_predictions_notes.jsonl", "eval_predictions_step2.jsonl"]
    row = {"id": "q1", "question": "Who?", "answers": ["Ann"], "prediction": "Ann", "exact_match": 1, "f1": 1.0}
    state.global_step = 3
    callback.answers = ("eval", [row])
    callback.on_evaluate(args, state, None)
    callback.on_train_end(args, state, None)
    callback.answers = ("eval", [row])
    callback.on_evaluate(args, state, None)
    callback.on_evaluate(args, state, None)  # an evaluation without answers (generation off) writes nothing
    assert outputs.read_answers(str(tmp_path)) == [
        ("step2", []), ("step3", [{"step": 3, **row}]), ("final", [{"step": 3, **row}])
    ]  # fmt: skip


@pytest.mark.slow
def test_each_evaluation_writes_its_answers_and_tensorboard_shows_them(two_runs):
    """alpha answers the first 4 validation questions at steps 2 and 4, then its best checkpoint after training: all
    4 in each file and, within --eval_log_samples' default 8, in each TensorBoard text."""
    examples = load_squad_file(DEV_FILE)[0][:4]
    evaluations = outputs.read_answers(two_runs.alpha_dir)
    entries = eval_entries(two_runs.alpha)
    texts = read_texts(two_runs.alpha_dir)["eval/samples"]
    assert [name for name, _ in evaluations] == ["step2", "step4", "final"]
    assert [entry["step"] for entry in entries] == [step for step, _ in texts] == [2, 4, 4]
    for (name, rows), entry, (_, text) in zip(evaluations, entries, texts):
        assert [row["id"] for row in rows] == [ex["id"] for ex in examples]
        for row, ex in zip(rows, examples):
            assert (row["step"], row["question"]) == (entry["step"], ex["question"])
            assert row["answers"] == ex["answers"]["text"]
            assert (row["exact_match"], row["f1"]) == question_scores(row["prediction"], ex["answers"]["text"])
        # the evaluation's EM/F1 are the means of its questions' own
        assert 100 * sum(row["exact_match"] for row in rows) / len(rows) == pytest.approx(entry["eval_exact_match"])
        assert 100 * sum(row["f1"] for row in rows) / len(rows) == pytest.approx(entry["eval_f1"])
        title, _, header, _, *lines = text.splitlines()
        assert title == f"**{'final evaluation' if name == 'final' else 'evaluation'} at step {entry['step']}**"
        assert header == "| " + " | ".join(SAMPLE_COLUMNS[2:]) + " |"
        assert len(lines) == len(rows)
        for line, row in zip(lines, rows):
            assert line.startswith(f"| {row['id']} | {row['question']} | {row['answers'][0]}")
            assert line.endswith(f" | {row['exact_match']} | {row['f1']:.2f} |")


# ---------------------------------------------------------------------------
# A store a logger would refuse, or a name the Trainer does not know: one line before anything loads
# (squad_lora/trackers.py, from QATrainingArguments)


@pytest.fixture
def load_spy(monkeypatch):
    """run_qa_lora's load_base_model replaced by a spy that records its call and stops the run there."""
    calls = []

    class Reached(Exception):
        pass

    def spy(*args, **kwargs):
        calls.append(args)
        raise Reached

    monkeypatch.setattr(run_qa_lora, "load_base_model", spy)
    return calls, Reached


@pytest.fixture
def mlflow_env(monkeypatch):
    """MLflow's tracking URI as a fresh process resolves it: from the environment, none set in this process."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    mlflow.set_tracking_uri(None)
    yield monkeypatch
    mlflow.set_tracking_uri(None)


def test_mlflow_file_store_without_its_flag_is_refused_before_the_model_loads_and_the_flag_lets_it_run(
    tiny_model_dir, tmp_path, mlflow_env, load_spy
):
    calls, reached = load_spy
    uri = (tmp_path / "mlruns").as_uri()
    mlflow_env.setenv("MLFLOW_TRACKING_URI", uri)
    args = tiny_run_args(tiny_model_dir, tmp_path / "run", "--report_to", "mlflow")
    with pytest.raises(ConfigError) as info:
        run_qa_lora.main(args)
    assert f"the tracking store {uri} is MLflow's file store" in str(info.value)
    assert "MLFLOW_ALLOW_FILE_STORE=true" in str(info.value) and calls == []
    mlflow_env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with pytest.raises(reached):
        run_qa_lora.main(args)
    assert len(calls) == 1


def test_mlflow_default_store_is_the_file_store_where_mlruns_holds_runs(tmp_path, mlflow_env):
    """Unset MLFLOW_TRACKING_URI: MLflow 3.18 uses ./mlruns where it holds runs (else sqlite:///mlflow.db)."""
    (tmp_path / "mlruns" / "0").mkdir(parents=True)
    (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    mlflow_env.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"the tracking store file://\S+/mlruns is MLflow's file store"):
        QATrainingArguments(output_dir=str(tmp_path / "run"), report_to=["mlflow"])
    mlflow_env.setenv("MLFLOW_ALLOW_FILE_STORE", "yes")
    with pytest.raises(ConfigError, match=r"^MLFLOW_ALLOW_FILE_STORE=yes: MLflow reads true, false, 1 or 0$"):
        QATrainingArguments(output_dir=str(tmp_path / "run"), report_to=["mlflow"])
    mlflow_env.setenv("MLFLOW_ALLOW_FILE_STORE", "1")
    assert QATrainingArguments(output_dir=str(tmp_path / "run"), report_to=["mlflow"]).report_to == ["mlflow"]


@pytest.mark.parametrize("logger", ["tensorboard", "mlflow", "trackio"])
def test_a_logging_directory_that_cannot_be_written_is_refused_before_the_model_loads(
    logger, tiny_model_dir, tmp_path, mlflow_env, load_spy
):
    import trackio.utils

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    directory = blocker / "logs"  # under a file: no directory can be made there
    variable = {"tensorboard": "TENSORBOARD_LOGGING_DIR", "mlflow": "MLFLOW_TRACKING_URI", "trackio": "TRACKIO_DIR"}
    mlflow_env.setenv("TENSORBOARD_LOGGING_DIR", str(directory))
    mlflow_env.setenv("MLFLOW_TRACKING_URI", directory.as_uri())
    mlflow_env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow_env.setattr(trackio.utils, "TRACKIO_DIR", directory)  # trackio reads TRACKIO_DIR when imported
    with pytest.raises(ConfigError) as info:
        run_qa_lora.main(tiny_run_args(tiny_model_dir, tmp_path / "run", "--report_to", logger))
    assert str(info.value) == (
        f"--report_to {logger}: {variable[logger]} {directory}: {blocker} is a file, not a directory: point "
        f"{variable[logger]} at a directory you can write"
    )
    assert load_spy[0] == []


@pytest.mark.parametrize(
    "words, message",
    [
        (["mlfow"], "--report_to mlfow: not a logger the Trainer knows (did you mean mlflow?); known: azure_ml, "),
        (["tensorboard", "TrackIO"], "--report_to TrackIO: not a logger the Trainer knows (did you mean trackio?)"),
        (["none", "tensorboard"], "--report_to none: stands alone (`--report_to none`), not beside other loggers"),
    ],
)
def test_an_unknown_logger_name_is_refused_with_a_close_match(words, message, tmp_path):
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "run_qa_lora.py"), "--output_dir", str(tmp_path / "run"),
         "--report_to", *words],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    (line,) = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {message}")
    assert not (tmp_path / "run").exists()  # refused while parsing: nothing written
