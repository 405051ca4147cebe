"""Readers of what a run or a script wrote, for tests to assert on: JSON files (read_json), TensorBoard event files,
the HParams and texts a run logged (read_events, session_hparams, read_texts, event_dirs), the training losses and
evaluations in a run's log_history (logged_losses, eval_entries), prediction rows compared up to float noise
(assert_same_answers), and a copy of a finished run for a test that changes or damages it (copy_run).
"""

import glob
import json
import os
import shutil

import pytest


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def copy_run(run_dir: str, destination) -> str:
    """A copy of a finished run, for a test that changes or damages it."""
    shutil.copytree(run_dir, destination)
    return str(destination)


def logged_losses(summary: dict) -> list[float]:
    """The training losses a run logged, in order."""
    return [entry["loss"] for entry in summary["log_history"] if "loss" in entry]


def eval_entries(summary: dict) -> list[dict]:
    """The log_history entries of a run's evaluations, in order."""
    return [entry for entry in summary["log_history"] if "eval_loss" in entry]


def assert_same_answers(*row_lists) -> None:
    """Prediction rows (answer_questions') equal, their confidences and no-answer probabilities equal up to float
    noise: batches of other shapes or other processes round the last digits differently."""
    first, *others = row_lists
    scores = ("confidence", "no_answer_probability")
    for other in others:
        assert [{**row, **dict.fromkeys(scores)} for row in other] == [
            {**row, **dict.fromkeys(scores)} for row in first
        ]
        for key in scores:
            assert [row[key] for row in other] == pytest.approx([row[key] for row in first], abs=1e-5)


# ---------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------


def read_events(directory) -> tuple[dict, dict]:
    """({tag: [(step, value), ...]}, {hparams tag: HParamsPluginData}) from every TensorBoard event file
    under directory, in file-name order (the files of one run sort by creation time)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    scalars, hparams = {}, {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)):
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
        try:
            contents = accumulator.PluginTagToContent("hparams")
        except KeyError:  # no hparams summary in this file
            contents = {}
        for tag, content in contents.items():
            hparams[tag] = plugin_data_pb2.HParamsPluginData.FromString(content)
    return scalars, hparams


def read_texts(directory) -> dict:
    """{tag: [(step, text), ...]} of the text summaries in every TensorBoard event file under directory, in file-name
    order; each tag as given to SummaryWriter.add_text (which stores it with /text_summary appended)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    texts = {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)):
        accumulator = EventAccumulator(path, size_guidance={"tensors": 0})  # 0: every event, not a sample
        accumulator.Reload()
        try:
            tags = accumulator.PluginTagToContent("text")
        except KeyError:  # no text summary in this file
            tags = {}
        for tag in tags:
            events = [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(tag)]
            texts.setdefault(tag.removesuffix("/text_summary"), []).extend(events)
    return texts


def session_hparams(hparams) -> dict:
    """{name: value} that TensorBoard's HParams dashboard shows for the run, from read_events' hparams."""
    values = hparams["_hparams_/session_start_info"].session_start_info.hparams
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in values.items()}


def event_dirs(directory) -> set[str]:
    """The directories holding TensorBoard event files under directory: one per TensorBoard run."""
    pattern = os.path.join(directory, "**", "events.out.tfevents.*")
    return {os.path.dirname(path) for path in glob.glob(pattern, recursive=True)}
