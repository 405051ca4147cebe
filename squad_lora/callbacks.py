"""The trainer's callbacks: named progress bars, the epoch for shared-context batches, TensorBoard's HParams, what
the other loggers (--report_to mlflow, trackio) get: the run's LoRA and decoding settings, and the final evaluation
in the run itself; and each evaluation's answers, in a file and as a table in every logger (docs/tracking.md)."""

from __future__ import annotations

import logging
import os

from tqdm.auto import tqdm
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ProgressCallback, TrainerCallback
from transformers.trainer_utils import has_length

from squad_lora import outputs

logger = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------
# The other loggers (--report_to mlflow, trackio, ...): the Trainer's own callbacks, given what they lack
# ---------------------------------------------------------------------------

# The loggers whose callbacks get the run's settings below; TensorBoard has its HParams (write_hparams)
SETTINGS_LOGGERS = ("mlflow", "trackio")


def tracked_settings(model, plan) -> dict:
    """The run's LoRA and decoding settings, which the Trainer's loggers lack (they record the TrainingArguments and
    the model's config): the adapter's own settings, as peft applied them, and how evaluation answers (the plan).
    Plain values (str, int, float, bool), named as the flags are."""
    from squad_lora.modeling import effective_target_modules

    lora = getattr(model, "peft_config", {}).get("default")
    settings = {"lora_r": lora.r if lora is not None else 0}
    if lora is not None:
        settings.update(
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            lora_target_modules=", ".join(effective_target_modules(model)),
            lora_bias=lora.bias,
            use_dora=lora.use_dora,
            use_rslora=lora.use_rslora,
            init_lora_weights=str(lora.init_lora_weights).lower(),  # as the flag spells it: true, gaussian, pissa
            lora_modules_to_save=", ".join(lora.modules_to_save or []) or "none",
            model_name_or_path=str(lora.base_model_name_or_path),
        )
    (strategy,) = plan.answer.generation_configs  # evaluation answers with one strategy: the first asked
    settings.update(
        strategy=strategy,
        max_new_tokens=plan.answer.max_new_tokens,
        constrain_to_context=plan.answer.constrain_to_context,
        prompt_format=plan.answer.template.format,
        share_context=plan.share_context,
    )
    return settings


class LoggerSettingsCallback(TrainerCallback):
    """Adds tracked_settings to the run each logger's own callback opened at the start of training: after their
    on_train_begin (the callback comes later in the list) and before the first log (trackio records a run's config
    with its first log only). Where a setting's name is one the logger already recorded from the TrainingArguments
    or the model's config, the logger's value stays (MLflow refuses to change a logged param)."""

    def __init__(self, plan):
        self.plan = plan

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        report_to = set(args.report_to or [])
        others = sorted(report_to - {"tensorboard", *SETTINGS_LOGGERS})
        if others and state.is_world_process_zero:
            logger.warning(
                "--report_to %s: records the Trainer's settings and the model's config, not the LoRA and decoding "
                "ones (those are in run_config.yaml)",
                " ".join(others),
            )
        if not state.is_world_process_zero or not report_to & set(SETTINGS_LOGGERS):
            return
        settings = tracked_settings(model, self.plan)
        recorded = {**(model.config.to_dict() if getattr(model, "config", None) is not None else {}), **args.to_dict()}
        new = {key: value for key, value in settings.items() if key not in recorded}
        if "mlflow" in report_to:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_params(new)
        if "trackio" in report_to:
            import trackio

            trackio.config.update(new)


class HeldRunEnd:
    """Holds back a logger callback's end of training (MLflow ends its run there, trackio finishes its own) until
    release(): the final evaluation comes after training where the best checkpoint is loaded at the end, and without
    this MLflow would log it to a new, unnamed run. The callback's other events are untouched."""

    def __init__(self, callback):
        self.callback = callback
        self.train_end = None  # (args, state, control, kwargs) of the held event
        callback.on_train_end = self.hold  # an instance attribute: the handler calls it instead of the class's

    def hold(self, args, state, control, **kwargs):
        self.train_end = (args, state, control, kwargs)

    def release(self) -> None:
        """End the logger's run now (if training ended): its class's own on_train_end."""
        vars(self.callback).pop("on_train_end", None)
        if self.train_end is not None:
            args, state, control, kwargs = self.train_end
            self.train_end = None
            self.callback.on_train_end(args, state, control, **kwargs)


_HELD: list[HeldRunEnd] = []  # the runs held in this process, until released


def hold_logger_runs(handler, report_to) -> list[HeldRunEnd]:
    """Hold the end of training of the handler's --report_to loggers but TensorBoard (whose callback reopens its
    writer itself, and writes the HParams). Runs still held by an earlier trainer of this process (one that failed
    between training and release) are ended first, so that no logger carries on in an earlier run."""
    from transformers.integrations import get_reporting_integration_callbacks

    release_logger_runs(list(_HELD))
    classes = tuple(c for c in get_reporting_integration_callbacks(report_to) if c is not TensorBoardCallback)
    held = [HeldRunEnd(callback) for callback in handler.callbacks if classes and isinstance(callback, classes)]
    _HELD.extend(held)
    return held


def release_logger_runs(held: list[HeldRunEnd]) -> None:
    """End the held runs (release each)."""
    for run in held:
        if run in _HELD:
            _HELD.remove(run)
        run.release()


# ---------------------------------------------------------------------------
# Sample answers (--eval_log_samples): what the model answers at each evaluation, in a file and in each logger
# ---------------------------------------------------------------------------

SAMPLE_COLUMNS = ("evaluation", "step", "id", "question", "gold answers", "prediction", "EM", "F1")


def sample_rows(answers: list[dict], evaluation: str) -> list[list]:
    """The loggers' table: a row of SAMPLE_COLUMNS per question (answers: scoring.scored_answers' rows with their
    step); the gold answers in one cell, each text once, ' | ' between."""
    return [
        [
            evaluation,
            row["step"],
            row["id"],
            row["question"],
            " | ".join(dict.fromkeys(row["answers"])),
            row["prediction"],
            row["exact_match"],
            row["f1"],
        ]
        for row in answers
    ]


def samples_markdown(rows: list[list]) -> str:
    """TensorBoard's text: the table in markdown, under the evaluation it shows (the event's step is its step)."""
    evaluation, step = rows[0][:2]
    title = f"**{'final evaluation' if evaluation == 'final' else 'evaluation'} at step {step}**"
    return f"{title}\n\n" + outputs.markdown_table(SAMPLE_COLUMNS[2:], [row[2:] for row in rows])


def log_samples(tensorboard, report_to, prefix: str, rows: list[list]) -> None:
    """The sample table to each logger of report_to, in the run it has open: TensorBoard's text <prefix>/samples
    (through its callback's writer), MLflow's table artifact <prefix>_samples.json (appended to at each evaluation:
    one table, its evaluation and step columns telling them apart), trackio's table <prefix>/samples."""
    step = rows[0][1]
    if tensorboard is not None and tensorboard.tb_writer is not None:
        tensorboard.tb_writer.add_text(f"{prefix}/samples", samples_markdown(rows), step)
        tensorboard.tb_writer.flush()
    if "mlflow" in report_to:
        import mlflow

        if mlflow.active_run() is not None:
            columns = {name: [row[i] for row in rows] for i, name in enumerate(SAMPLE_COLUMNS)}
            mlflow.log_table(columns, artifact_file=f"{prefix}_samples.json")
    if "trackio" in report_to:
        import trackio

        if trackio.context_vars.current_run.get() is not None:
            table = trackio.Table(columns=list(SAMPLE_COLUMNS), data=rows)
            trackio.log({f"{prefix}/samples": table, "train/global_step": step})  # as the Trainer's callback logs


class AnswerSamplesCallback(TrainerCallback):
    """--eval_log_samples: the answers of each evaluation, which QATrainer.generation_metrics hands over (`answers`,
    on the main process): every question answered, with its step, to <output_dir>/eval_predictions_step<step>.jsonl
    (eval_predictions_final.jsonl for an evaluation after training), and the first num_samples to each logger
    (log_samples). At on_evaluate, after the Trainer logged the evaluation: by then each logger's run is open (after
    training too: TensorBoard's callback reopens its writer to log, and the other runs are held)."""

    def __init__(self, num_samples: int, tensorboard: TensorBoardCallback | None):
        self.num_samples = num_samples
        self.tensorboard = tensorboard
        self.answers = None  # (metric prefix, scored_answers rows) of the evaluation under way
        self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        if state.is_world_process_zero:  # the files of a run this one overwrites, or of the attempt it resumes
            outputs.remove_later_answers(args.output_dir, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_evaluate(self, args, state, control, **kwargs):
        answered, self.answers = self.answers, None
        if answered is None:
            return
        prefix, answers = answered
        step = state.global_step
        evaluation = outputs.evaluation_name(step if self.training else None)
        answers = [{"step": step, **row} for row in answers]
        outputs.write_jsonl(outputs.answers_path(args.output_dir, evaluation, prefix), answers)
        rows = sample_rows(answers[: self.num_samples], evaluation)
        log_samples(self.tensorboard, args.report_to or [], prefix, rows)
