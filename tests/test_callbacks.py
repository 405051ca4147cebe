"""squad_lora.callbacks: what a run writes to TensorBoard: EM/F1 at every evaluation, the HParams (also when the
last evaluation is reused after training closed the writer), and one TensorBoard run per run, in its own
directory. (The progress bars' names are in test_logs.py, with the rest of what the scripts print.)"""

import os

import pytest

from run_outputs import event_dirs, read_events, session_hparams


@pytest.mark.slow
def test_event_files_hold_em_f1_and_the_hparams(two_runs):
    scalars, hparams = read_events(two_runs.alpha_dir)
    for tag in ("eval/exact_match", "eval/f1"):
        assert [step for step, _ in scalars[tag]][:2] == [2, 4]
        assert all(0 <= value <= 100 for _, value in scalars[tag])
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= hparams.keys()
    shown = session_hparams(hparams)
    assert shown["lora_r"] == 8 and shown["lora_alpha"] == 16 and shown["learning_rate"] == pytest.approx(1e-2)
    # Trainer settings left at their defaults are still shown, so every run has every column
    assert shown["seed"] == 42 and shown["gradient_accumulation_steps"] == 1 and shown["num_train_epochs"] == 3
    assert shown["per_device_train_batch_size"] == 4
    metric_tags = {info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert metric_tags == {"hparams/eval_loss", "hparams/eval_exact_match", "hparams/eval_f1"}
    for key in ("eval_loss", "eval_exact_match", "eval_f1"):
        assert scalars[f"hparams/{key}"][-1][1] == pytest.approx(two_runs.alpha["eval_metrics"][key], rel=1e-5)


@pytest.mark.slow
def test_hparams_are_written_when_the_last_evaluation_is_reused(two_runs):
    # beta's final metrics come from the evaluation at its last step, after TensorBoard's writer closed
    scalars, hparams = read_events(two_runs.beta_dir)
    assert "eval/loss" in scalars and "eval/f1" not in scalars
    assert session_hparams(hparams)["lora_r"] == 4
    metric_tags = {info.name.tag for info in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert metric_tags == {"hparams/eval_loss"}
    assert scalars["hparams/eval_loss"][-1][1] == pytest.approx(two_runs.beta["eval_metrics"]["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_each_run_is_one_tensorboard_run_in_its_own_directory(two_runs):
    # alpha's final evaluation (the best checkpoint, after training closed the writer) lands there too
    assert event_dirs(two_runs.alpha_dir) == {os.path.join(two_runs.alpha_dir, "runs", "alpha")}
    assert event_dirs(two_runs.beta_dir) == {os.path.join(two_runs.beta_dir, "runs", "beta")}
    scalars, _ = read_events(two_runs.alpha_dir)
    assert [step for step, _ in scalars["eval/loss"]] == [2, 4, 4]
    assert scalars["eval/loss"][-1][1] == pytest.approx(two_runs.alpha["eval_metrics"]["eval_loss"], rel=1e-5)
