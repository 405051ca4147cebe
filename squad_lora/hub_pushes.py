"""Pushes to the Hub during training: --push_to_hub with --hub_strategy every_save, checkpoint or all_checkpoints,
in the Trainer's meanings (TrainingArguments.hub_strategy, Trainer._push_from_checkpoint).

At each checkpoint save the adapter (or the model), the tokenizer and a model card with the latest eval EM/F1 go to
the repo's root; `checkpoint` adds the whole checkpoint as last-checkpoint/ (optimizer state included, so a run
resumes from it), `all_checkpoints` each checkpoint under its own name. Each save is one commit.

A push runs in a background thread, so training does not wait for the upload. A push that fails is one warning line
and training goes on: the next save pushes the newest state. A save while the previous push still uploads pushes
nothing (the Trainer's rule), unless --hub_always_push queues it. The files go from a snapshot of hard links taken at
the save, so the Trainer's rotation of old checkpoints cannot delete them under the upload. The end of training waits
for the push in flight, so the final push (hub.push_to_hub) lands last.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from squad_lora import hub
from squad_lora.errors import first_line

logger = logging.getLogger(__name__)

# A checkpoint's files that make the model: the adapter's (or the model's) weights and configs, and the tokenizer's
# files; not the optimizer, scheduler, RNG and trainer state, which only resuming needs.
MODEL_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja")
LAST_CHECKPOINT = "last-checkpoint"  # where `checkpoint` puts the newest checkpoint in the repo, as the Trainer does
STAGING_PREFIX = ".hub-push-"  # in the output dir; hub.UPLOAD_IGNORE leaves these out of the final push


@dataclass(frozen=True)
class CheckpointPushes:
    """What is pushed at each save, decided from the flags once (run_qa_lora.build_trainer)."""

    repo_id: str
    revision: str | None  # --hub_revision: the branch (None: main)
    strategy: str  # every_save, checkpoint or all_checkpoints
    queue: bool  # --hub_always_push: a save's push waits behind one still uploading, instead of being skipped


def checkpoint_pushes(training_args, repo_id: str | None) -> CheckpointPushes | None:
    """What --hub_strategy pushes at each save (its flags checked by QATrainingArguments), or None: no push
    (repo_id None) or --hub_strategy end, the default."""
    strategy = getattr(training_args.hub_strategy, "value", training_args.hub_strategy)
    if repo_id is None or strategy == "end":
        return None
    return CheckpointPushes(repo_id, training_args.hub_revision, strategy, training_args.hub_always_push)


def latest_evaluation(log_history: list[dict]) -> tuple[int | None, dict]:
    """The step of the newest evaluation the Trainer logged and its metrics (eval_* and epoch); (None, {}) if none."""
    last = next((entry for entry in reversed(log_history) if "eval_loss" in entry), None)
    if last is None:
        return None, {}
    return last["step"], {key: value for key, value in last.items() if key.startswith("eval_") or key == "epoch"}


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (instant, and it keeps the file when the checkpoint is deleted), or a copy where links fail."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


class HubPushCallback(TrainerCallback):
    """Pushes each checkpoint the Trainer saves, in the background (see the module's docstring).

    card_summary: what the model card says of the run (run_qa_lora.run_facts); each push's card adds the latest
    evaluation to it. config: the resolved configuration, the card's training table.
    """

    def __init__(self, pushes: CheckpointPushes, card_summary: dict, config: dict):
        self.pushes = pushes
        self.card_summary = card_summary
        self.config = config
        self.api = hub.HfApi()  # the token is huggingface_hub's to read, as for the final push
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-push")
        self.in_flight: Future | None = None  # the newest push submitted (the worker runs them in order)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and os.path.isdir(args.output_dir):  # snapshots left by a run killed mid-push
            for name in os.listdir(args.output_dir):
                if name.startswith(STAGING_PREFIX):
                    shutil.rmtree(os.path.join(args.output_dir, name), ignore_errors=True)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if self.in_flight is not None and not self.in_flight.done() and not self.pushes.queue:
            logger.info(
                "not pushing %s: the previous push is still uploading (the next save pushes; --hub_always_push "
                "queues each save's push instead)",
                name,
            )
            return
        staging = os.path.join(args.output_dir, STAGING_PREFIX + name)
        try:
            self._stage(os.path.join(args.output_dir, name), staging, state)
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            self._warn(name, e)
            return
        self.in_flight = self.worker.submit(self._upload, staging, name, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        """Wait for the push in flight (and any queued): the final push must not be overwritten by an older one."""
        if self.in_flight is not None and not self.in_flight.done():
            logger.info("waiting for the push of the last checkpoint to %s to finish", self.pushes.repo_id)
        self.worker.shutdown(wait=True)

    def _stage(self, checkpoint: str, staging: str, state) -> None:
        """The commit as the repo will hold it: the checkpoint's model files and the card at the root, and for
        checkpoint/all_checkpoints the whole checkpoint in its folder."""
        os.makedirs(staging)
        for name in os.listdir(checkpoint):
            path = os.path.join(checkpoint, name)
            model_file = any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILES)
            if os.path.isfile(path) and model_file and name != TRAINER_STATE_NAME:
                _link_or_copy(path, os.path.join(staging, name))
        folder = {"checkpoint": LAST_CHECKPOINT, "all_checkpoints": os.path.basename(checkpoint)}
        if self.pushes.strategy in folder:
            target = os.path.join(staging, folder[self.pushes.strategy])
            shutil.copytree(checkpoint, target, copy_function=_link_or_copy)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(str(self._card(state)))

    def _card(self, state):
        eval_step, metrics = latest_evaluation(state.log_history)
        scores = f"the scores are the evaluation's at step {eval_step}" if metrics else "not evaluated yet"
        note = (
            f"Training in progress: the checkpoint of step {state.global_step} of {state.max_steps}; {scores}. "
            "The finished run's adapter and card replace these at the end of training."
        )
        return hub.build_model_card({**self.card_summary, "eval_metrics": metrics}, self.config, in_progress=note)

    def _upload(self, staging: str, name: str, step: int) -> None:
        try:
            self.api.upload_folder(
                repo_id=self.pushes.repo_id,
                folder_path=staging,
                revision=self.pushes.revision,
                commit_message=f"Training in progress, step {step}",
                # last-checkpoint/ becomes exactly the newest checkpoint: files of an older one do not linger
                delete_patterns=[f"{LAST_CHECKPOINT}/*"] if self.pushes.strategy == "checkpoint" else None,
            )
            logger.info("pushed %s to %s", name, self.pushes.repo_id)
        except Exception as e:  # huggingface_hub raises many types (HTTP, connection); training goes on
            self._warn(name, e)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _warn(self, name: str, error: Exception) -> None:
        logger.warning(
            "pushing %s to %s failed (%s); training goes on, and the next save pushes the newest checkpoint",
            name,
            self.pushes.repo_id,
            first_line(error, with_type=True),
        )
