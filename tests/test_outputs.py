"""squad_lora.outputs: files written atomically (complete or absent), and the run files read back and checked."""

import json
import os

import pytest
import yaml

from squad_lora import outputs
from squad_lora.errors import RunFileError

# ---------------------------------------------------------------------------
# Atomic writes: a writer that fails leaves the previous file, or none
# ---------------------------------------------------------------------------


class Unserializable:
    pass


def listing(directory) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.mark.parametrize(
    "write, bad_value",
    [
        # json.dump has written the first 100 kB when it meets the object it cannot encode
        (outputs.write_json, lambda: {"first": "x" * 100_000, "second": Unserializable()}),
        (outputs.write_yaml, lambda: {"first": "x", "second": Unserializable()}),
        (outputs.write_jsonl, lambda: ({"row": i} if i < 3 else Unserializable() for i in range(5))),
    ],
    ids=["json", "yaml", "jsonl"],
)
def test_failed_write_leaves_the_old_file_or_none(tmp_path, write, bad_value):
    new_path = tmp_path / "new.out"
    with pytest.raises((TypeError, yaml.YAMLError)):
        write(str(new_path), bad_value())
    assert listing(tmp_path) == []

    old_path = tmp_path / "old.out"
    old_path.write_text("previous content\n", encoding="utf-8")
    with pytest.raises((TypeError, yaml.YAMLError)):
        write(str(old_path), bad_value())
    assert listing(tmp_path) == ["old.out"]
    assert old_path.read_text(encoding="utf-8") == "previous content\n"


def test_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    outputs.write_json(str(path), {"version": 1})
    with pytest.raises(KeyboardInterrupt), outputs.atomic_open(str(path)) as f:
        f.write('{"version": 2, "half')
        f.flush()
        raise KeyboardInterrupt
    assert listing(tmp_path) == ["summary.json"]
    assert json.loads(path.read_text(encoding="utf-8")) == {"version": 1}


def test_completed_write_replaces_the_file_with_normal_permissions(tmp_path):
    path = tmp_path / "run_config.yaml"
    path.write_text("old: 1\n", encoding="utf-8")
    old_umask = os.umask(0o022)
    try:
        outputs.write_yaml(str(path), {"new": 2})
    finally:
        os.umask(old_umask)
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == {"new": 2}
    assert (path.stat().st_mode & 0o777) == 0o644
    assert listing(tmp_path) == ["run_config.yaml"]


# ---------------------------------------------------------------------------
# Run files read back
# ---------------------------------------------------------------------------


def finished_summary(**changes) -> dict:
    summary = {
        "run_name": "r", "lora": {"lora_r": 8}, "trainable_params": 1, "all_params": 2, "trainable_percent": 50.0,
        "train_metrics": {}, "eval_metrics": {}, "log_history": [{"loss": 1.0, "step": 1}],
    }  # fmt: skip
    return {**summary, **changes}


def test_run_summary_reads_back_checked(tmp_path):
    outputs.write_json(str(tmp_path / outputs.SUMMARY_FILE), finished_summary())
    assert outputs.read_run_summary(str(tmp_path)) == finished_summary()
    for summary, problem in [
        (finished_summary(trainable_params=True), "'trainable_params' is not a int"),  # a bool is not a count
        (finished_summary(log_history=[{"loss": 1.0}]), "'log_history' entries need an integer 'step'"),
        ({"run_name": "r"}, "'lora' missing"),
    ]:
        outputs.write_json(str(tmp_path / outputs.SUMMARY_FILE), summary)
        with pytest.raises(
            RunFileError, match=f"run_summary.json: not a run summary run_qa_lora.py wrote: .*{problem}"
        ):
            outputs.read_run_summary(str(tmp_path))
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(RunFileError, match="not-a-run: no run_summary.json"):
        outputs.read_run_summary(str(tmp_path / "not-a-run"))
    with pytest.raises(RunFileError, match="no such directory"):
        outputs.read_run_summary(str(tmp_path / "missing"))


def test_strategy_comparison_round_trips_and_is_checked(tmp_path):
    result = {"data": "dev.json", "strategies": [{"strategy": "greedy", "exact_match": 50.0, "f1": 62.5}]}
    paths = outputs.write_comparison(str(tmp_path), result, "| strategy |\n")
    assert [os.path.basename(path) for path in paths] == ["strategy_comparison.md", "strategy_comparison.json"]
    assert outputs.read_comparison(paths[1]) == result
    for rows in ([{"strategy": "greedy", "exact_match": "high", "f1": 1.0}], [{"strategy": "greedy"}], "none"):
        outputs.write_json(paths[1], {"strategies": rows})
        with pytest.raises(RunFileError, match="not a strategy comparison evaluate_squad.py --compare wrote"):
            outputs.read_comparison(paths[1])


def test_output_locations_are_checked_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    outputs.check_writable_dir(str(tmp_path / "new" / "deeper"))  # created later, when written
    with pytest.raises(RunFileError, match="--output_dir .*a-file: is a file, not a directory"):
        outputs.check_writable_dir(str(blocker))
    with pytest.raises(RunFileError, match="a-file is a file, not a directory"):
        outputs.check_writable_dir(str(blocker / "run"))
    with pytest.raises(RunFileError, match="--output .*: is a directory, not a file"):
        outputs.check_writable_file(str(tmp_path))
    assert blocker.read_text() == "keep me" and sorted(os.listdir(tmp_path)) == ["a-file"]
