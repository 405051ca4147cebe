"""QATrainer: the Trainer for prompt -> answer features, as a plan.TrainPlan lays it out.

It trains with the labelled-positions loss where the plan says so (loss.py), on one row per context where
it shares contexts (shared_context.py), and adds EM/F1 of generated answers to every evaluation.
"""

from __future__ import annotations

import logging
import warnings

import torch
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import ProgressCallback

from squad_lora.callbacks import (
    AnswerSamplesCallback,
    ContextEpochCallback,
    LoggerSettingsCallback,
    NamedProgressCallback,
    hold_logger_runs,
    release_logger_runs,
    tensorboard_callback,
    write_hparams,
)
from squad_lora.collators import make_collator
from squad_lora.loss import labelled_positions_loss
from squad_lora.modeling import save_for_original_base
from squad_lora.sharded import answering_state, rewrite_fsdp_adapter
from squad_lora.shared_context import ContextBatchSampler, SharedContextCollator

logger = logging.getLogger(__name__)

# the Trainer pins its batches' memory by default (--dataloader_pin_memory), which does nothing and says so on
# every evaluation where there is no GPU; on a GPU it is the right default
warnings.filterwarnings(
    "ignore",
    message=r"'pin_memory' argument is set as true but no accelerator is found",
    category=UserWarning,
    module=r"torch\.utils\.data\.dataloader",
)


class QATrainer(Trainer):
    """Trainer with the labelled-positions loss, and EM/F1 of generated answers at every evaluation."""

    def __init__(self, model, args, plan, eval_examples: list[dict] | None = None, **kwargs):
        """args: the parsed TrainingArguments (the Trainer gets plan.trainer_arguments of them). plan: the run's
        plan.TrainPlan, which also picks the collator. eval_examples: raw validation rows answered at each
        evaluation (as plan.answer says) for EM/F1."""
        kwargs.setdefault("data_collator", make_collator(plan, kwargs.get("processing_class")))
        super().__init__(model, plan.trainer_arguments(args), **kwargs)
        self.plan = plan
        self.eval_examples = eval_examples or []
        self.context_epochs = ContextEpochCallback()
        if plan.share_context:
            self.add_callback(self.context_epochs)
        if self.pop_callback(ProgressCallback) is not None:  # present unless --disable_tqdm
            self.add_callback(NamedProgressCallback)
        # TensorBoard: our own writer on a known directory, so the HParams of the finished run land beside it
        self.tensorboard_dir, tensorboard = None, None
        if self.pop_callback(TensorBoardCallback) is not None:
            tensorboard = tensorboard_callback(self.args, self.is_world_process_zero())
            self.tensorboard_dir = tensorboard.logging_dir
            self.add_callback(tensorboard)
        # the other loggers (--report_to mlflow, trackio): the LoRA and decoding settings at the start, and their runs
        # held open past training for the final evaluation, until log_hparams ends them
        self.held_runs = hold_logger_runs(self.callback_handler, self.args.report_to)
        self.add_callback(LoggerSettingsCallback(plan))
        # --eval_log_samples: generation_metrics hands each evaluation's answers to it
        self.answer_samples = AnswerSamplesCallback(self.args.eval_log_samples, tensorboard)
        if self.args.eval_log_samples:
            self.add_callback(self.answer_samples)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self.plan.labelled_loss:  # prediction_step wants logits: use the plain forward
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # Mirror Trainer's contract for model losses: with num_items_in_batch (the labelled tokens of the
        # whole accumulated, all-rank batch) the loss is a sum over it, and DDP's gradient mean is undone.
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None  # Trainer then divides by the accumulation steps itself
        loss = labelled_positions_loss(model, inputs, num_items_in_batch, self.args.label_smoothing_factor)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        return loss

    def get_train_dataloader(self):
        """With share_context: batches of whole contexts (ContextBatchSampler), one row per context."""
        if not self.plan.share_context:
            return super().get_train_dataloader()
        from torch.utils.data import DataLoader

        dataset = self.train_dataset
        sampler = ContextBatchSampler(
            dataset["shared_length"],
            dataset["context_key"],
            self._train_batch_size,
            shuffle=self.plan.train_sampling_strategy != "sequential",
            seed=self.args.seed,
        )
        logger.info(
            "%d training questions over %d contexts (or context windows): %d batches an epoch",
            len(dataset),
            len(sampler.groups),
            len(sampler),
        )
        loader = DataLoader(
            dataset.select_columns(["input_ids", "labels", "shared_length"]),
            batch_sampler=sampler,
            collate_fn=SharedContextCollator(self.processing_class.pad_token_id),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        self.context_epochs.sampler = sampler
        return self.accelerator.prepare(loader)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if state_dict is not None and self.args.should_save:  # under FSDP, the gathered weights: see there
            rewrite_fsdp_adapter(self.model, output_dir or self.args.output_dir, state_dict)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        # A PiSSA/OLoRA adapter as trained fits only the base its initialization changed: the final adapter is
        # converted to fit the original base. Checkpoints (internal calls) keep the trained form to resume from.
        if not _internal_call and self.args.should_save:
            save_for_original_base(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def _track_num_input_tokens(self, inputs):
        # Private Trainer hook, overridden here only (tests/test_trainer.py fails loudly when it changes): Trainer
        # would count a 4-D mask's T*T entries as tokens. A real token sees itself; padding does not (packed
        # batches have none; SharedContextCollator's does not), so the mask's diagonal marks the real tokens.
        mask = inputs.get("attention_mask")
        if mask is not None and mask.dim() == 4:
            inputs = {**inputs, "attention_mask": mask[:, 0].diagonal(dim1=-2, dim2=-1).long()}
        return super()._track_num_input_tokens(inputs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not prediction_loss_only or not self.plan.labelled_loss:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = labelled_positions_loss(model, inputs, label_smoothing=self.args.label_smoothing_factor)
        return loss.detach(), None, None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_examples:
            output.metrics.update(self.generation_metrics(metric_key_prefix))
        return output

    def generation_metrics(self, prefix: str = "eval") -> dict:
        """EM/F1 of the answers to eval_examples (the plan's strategy, first sample), each question answered once
        across all processes (by every process where the weights are sharded: answering_state). With
        --eval_log_samples, each question's answer and score go to answer_samples, which logs them."""
        from squad_lora.decoding import answer_questions
        from squad_lora.scoring import score_predictions, scored_answers

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        with answering_state(self.model_wrapped, self.plan.sharded) as state:
            results = answer_questions(
                model,
                self.processing_class,
                self.eval_examples,
                self.plan.answer,
                state,
                seed=self.args.seed,
                progress=not self.args.disable_tqdm,
            )
        model.train(was_training)
        (rows,) = results.values()
        predictions = {row["id"]: row["prediction"] for row in rows if row["sample"] == 0}
        scores = score_predictions(self.eval_examples, predictions, source="evaluation")
        if self.args.eval_log_samples and self.is_world_process_zero():
            self.answer_samples.answers = (prefix, scored_answers(self.eval_examples, predictions))
        return {f"{prefix}_exact_match": scores.get("exact_match", scores.get("exact")), f"{prefix}_f1": scores["f1"]}

    def log_hparams(self, config: dict, metrics: dict) -> None:
        """Write the run's settings with its final metrics to TensorBoard's HParams dashboard, and end the other
        loggers' runs, which the final evaluation has reached by now."""
        if self.tensorboard_dir is not None and self.is_world_process_zero():
            model = self.accelerator.unwrap_model(self.model)
            write_hparams(self.tensorboard_dir, config, self.args, model, self.state.max_steps, metrics)
        release_logger_runs(self.held_runs)
