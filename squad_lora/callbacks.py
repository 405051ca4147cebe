"""The trainer's callbacks: named progress bars, the epoch for shared-context batches, TensorBoard's HParams."""

from __future__ import annotations

import os

from tqdm.auto import tqdm
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ProgressCallback, TrainerCallback
from transformers.trainer_utils import has_length

HPARAM_KEYS = (
    "model_name_or_path",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_bias",
    "use_dora",
    "use_rslora",
    "init_lora_weights",
    "lora_modules_to_save",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "max_train_samples",
)


class NamedProgressCallback(ProgressCallback):
    """The Trainer's progress bars, each named for what it counts (the answering bars of eval EM/F1 name theirs).

    Each bar is created here with its name, since a bar draws itself when created; the Trainer's callback then
    updates and closes it as before.
    """

    def on_train_begin(self, args, state, control, **kwargs):  # the Trainer's, with a name
        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True, desc="training (steps)")
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if self.prediction_bar is None and state.is_world_process_zero and has_length(eval_dataloader):
            self.prediction_bar = tqdm(
                total=len(eval_dataloader),
                leave=self.training_bar is None,
                dynamic_ncols=True,
                desc="evaluating (loss)",
            )
        super().on_prediction_step(args, state, control, eval_dataloader, **kwargs)


class ContextEpochCallback(TrainerCallback):
    """Hands the epoch to the ContextBatchSampler as each epoch begins. The Trainer's own set_epoch does not
    reach it where accelerate wraps it twice (resuming mid-epoch on several processes: a skipping sampler
    around a sharding one), and that epoch would replay epoch 0's order."""

    sampler = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.sampler is not None:
            self.sampler.set_epoch(int(state.epoch))  # resumed mid-epoch, state.epoch is e.g. 1.5: epoch 1


def tensorboard_callback(args, is_main_process: bool) -> TensorBoardCallback:
    """The Trainer's TensorBoard callback with its writer on this run's directory (its logging_dir): the
    TENSORBOARD_LOGGING_DIR the Trainer honours, else <output_dir>/runs/<run_name>."""
    from torch.utils.tensorboard import SummaryWriter

    directory = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(
        args.output_dir, "runs", args.run_name or "run"
    )
    callback = TensorBoardCallback(tb_writer=SummaryWriter(directory) if is_main_process else None)
    # the callback closes its writer when training ends and opens a new one at its logging_dir for a later log (the
    # final evaluation): that must be this run's directory, not runs/<date>_<host>
    callback.logging_dir = directory
    return callback


def write_hparams(directory: str, config: dict, args, model, steps: int, metrics: dict) -> None:
    """The run's settings with its final metrics, for TensorBoard's HParams dashboard."""
    from torch.utils.tensorboard import SummaryWriter

    from squad_lora.modeling import effective_target_modules

    hparams = {
        k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items() if k in HPARAM_KEYS
    }
    # run_config keeps only the Trainer settings that differ from their defaults: every run shows them all here
    hparams.update({k: getattr(args, k) for k in HPARAM_KEYS if k not in hparams and hasattr(args, k)})
    # what the run did, not what was asked: the layers peft adapted (all-linear or its default resolved), and the
    # steps taken (max_steps is -1 when --num_train_epochs sets the length)
    targets = effective_target_modules(model)
    if targets is not None:
        hparams["lora_target_modules"] = ", ".join(targets)
    hparams["max_steps"] = steps
    final = {f"hparams/{k}": v for k, v in metrics.items() if k in ("eval_loss", "eval_exact_match", "eval_f1")}
    with SummaryWriter(directory) as writer:  # the callback closed its writer at the end of training
        writer.add_hparams(hparams, final, run_name=".")
