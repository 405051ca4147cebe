"""A training run's directory, as run_qa_lora.py uses it: its name, the claim on it, and the checkpoint it resumes.

resolve_run fills in --run_name and the {run_name} in --output_dir, refuses a directory that would clobber a
finished run, checkpoints or an input, holds the directory for the run, and returns the checkpoint to resume:
`last` means the newest complete one, and a checkpoint's adapter must have the shape the LoRA flags ask for.
last_complete_checkpoint and unsaved_message say what an interrupted or failed run left to resume from.
"""

from __future__ import annotations

import json
import logging
import os

from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

from squad_lora import outputs
from squad_lora.errors import ConfigError, first_line

logger = logging.getLogger(__name__)


def name_run(training_args, model_args, lora_args, config_file: str | None) -> None:
    """run_name (the config file's name, else <model>-squad-r<lora_r>) and the {run_name} in output_dir: the
    parsed arguments' own placeholders, filled in where the Trainer reads them."""
    if not training_args.run_name:
        if config_file:
            training_args.run_name = os.path.splitext(os.path.basename(config_file))[0]
        else:
            model = os.path.basename(os.path.normpath(model_args.model_name_or_path or "model"))
            training_args.run_name = f"{model}-squad-r{lora_args.lora_r}"
    training_args.output_dir = training_args.output_dir.replace("{run_name}", training_args.run_name)


def resolve_run(training_args, model_args, data_args, lora_args, config_file: str | None) -> str | None:
    """Fill in run_name and output_dir, refuse to clobber a finished run or an input, hold the output dir; returns
    the checkpoint to resume (checked against the LoRA flags)."""
    name_run(training_args, model_args, lora_args, config_file)
    if training_args.hub_token:
        raise ConfigError(
            "--hub_token would be stored in shell history and the run's config: set HF_TOKEN or run "
            "`hf auth login` instead"
        )
    output_dir = training_args.output_dir
    outputs.check_writable_dir(output_dir)
    check_inputs_survive(output_dir, model_args, data_args)
    if training_args.process_index == 0:  # held until the process ends: a second run on the directory is refused
        outputs.lock_dir(output_dir)
    try:
        return resolve_resume(training_args, lora_args, output_dir)
    except ConfigError:
        outputs.release_dir(output_dir)  # refused: the directory is free for the run that will be asked next
        raise


def resolve_resume(training_args, lora_args, output_dir: str) -> str | None:
    """The checkpoint to resume (checked against the LoRA flags), or None for a fresh run; a finished run or
    checkpoints in output_dir are refused unless --overwrite_output_dir or --resume_from_checkpoint says."""
    resume = training_args.resume_from_checkpoint
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if resume and resume.lower() in ("last", "latest", "true"):
        if last is None:
            raise ConfigError(f"--resume_from_checkpoint {resume}: no checkpoint-* directory in {output_dir}")
        resume = last_complete_checkpoint(output_dir)
        if resume is None:
            raise ConfigError(
                f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: no complete checkpoint in "
                f"{output_dir}: every checkpoint-* lacks {TRAINER_STATE_NAME} (interrupted while saving)"
            )
    elif resume and not os.path.isdir(resume):
        raise ConfigError(f"--resume_from_checkpoint {resume}: no such checkpoint directory")
    elif resume and not os.path.isfile(os.path.join(resume, TRAINER_STATE_NAME)):
        # the Trainer would silently restart at step 0 from whatever weights the directory holds
        raise ConfigError(
            f"--resume_from_checkpoint {resume}: incomplete checkpoint, no {TRAINER_STATE_NAME} (interrupted while "
            "saving?): pass an earlier checkpoint, or `last` for the newest complete one"
        )
    if not resume and not training_args.overwrite_output_dir:
        if os.path.exists(os.path.join(output_dir, outputs.SUMMARY_FILE)):
            raise ConfigError(
                f"{output_dir} holds a finished run: pass --overwrite_output_dir to replace it, or another --output_dir"
            )
        if last is not None:
            raise ConfigError(
                f"{output_dir} holds checkpoints ({os.path.basename(last)}): pass --resume_from_checkpoint last "
                "to continue that run, or --overwrite_output_dir to start over"
            )
    if resume:
        check_resume_matches(resume, lora_args)
    return resume


def check_inputs_survive(output_dir: str, model_args, data_args) -> None:
    """The output dir is none of the inputs: a run writes its tokenizer, config and card over what is there (a
    directory that merely holds the data, such as `.`, is fine: no run file is named like a data file)."""
    inputs = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--tokenizer_name": model_args.tokenizer_name,
        "--train_file": data_args.train_file,
        "--validation_file": data_args.validation_file,
    }
    outputs.check_not_an_input(output_dir, "--output_dir", inputs, holding=False)


def check_resume_matches(checkpoint: str, lora_args) -> None:
    """Before any weights load: the checkpoint's adapter has the shape these LoRA flags ask for (else the Trainer
    fails deep inside loading, or trains a different adapter than the one resumed)."""
    path = os.path.join(checkpoint, "adapter_config.json")
    saved = None
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    full_weights = saved is None and os.path.isfile(os.path.join(checkpoint, "config.json"))
    if (saved is not None and not lora_args.lora_r) or (full_weights and lora_args.lora_r):
        kind = "a LoRA adapter" if saved else "full fine-tuning weights"
        raise ConfigError(
            f"--resume_from_checkpoint {checkpoint}: it holds {kind}, but --lora_r is {lora_args.lora_r}: "
            "resume with the flags the run was started with"
        )
    if saved is None or not lora_args.lora_r:
        return
    asked = {"r": lora_args.lora_r, "lora_alpha": lora_args.lora_alpha, "use_dora": lora_args.use_dora}
    asked["use_rslora"] = lora_args.use_rslora
    differ = [f"{key} {saved.get(key)!r} (asked: {value!r})" for key, value in asked.items() if saved.get(key) != value]
    if differ:
        raise ConfigError(
            f"--resume_from_checkpoint {checkpoint}: its adapter has {', '.join(differ)}: resume with the flags the "
            "run was started with (its run_config.yaml, once finished, or the command you started it with)"
        )


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-N that finished saving: the Trainer writes trainer_state.json into it last."""
    for path in reversed(sort_checkpoints(output_dir)):
        if os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
            return path
        logger.warning("%s is incomplete (no %s: interrupted while saving); skipping it", path, TRAINER_STATE_NAME)
    return None


def interrupted_message(output_dir: str, step: int) -> str:
    """What a Ctrl-C in training left: the newest checkpoint to resume from, or that there is none."""
    last = last_complete_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    resumable = (
        f"the newest checkpoint is {last}: continue with --resume_from_checkpoint last"
        if last
        else "no checkpoint was saved yet (--save_strategy, --save_steps), so nothing can be resumed"
    )
    return f"training interrupted (Ctrl-C) at step {step}; {resumable}"


def unsaved_message(output_dir: str, error: Exception) -> str:
    """What a failed write (a full disk at a checkpoint, an event file or the final save; a permission) lost and
    what it kept: the trained weights under a temporary name, the adapter already in place (the run files not), or
    the newest checkpoint to resume from."""
    adapter_saved = os.path.isfile(os.path.join(output_dir, "adapter_model.safetensors"))
    if isinstance(error, outputs.KeptFilesError):
        kept = f"{error}; move its files into {output_dir} once there is room"
    else:
        kept = f"writing into {output_dir} failed ({first_line(error, with_type=True)})"
        if adapter_saved:
            kept += "; the trained adapter itself is saved there"
    last = last_complete_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last:
        kept += f"; the newest checkpoint is {last}: free space and rerun with --resume_from_checkpoint last"
    elif not (adapter_saved or isinstance(error, outputs.KeptFilesError)):
        kept += "; nothing was kept: no checkpoint was complete yet"
    return kept
