"""Fine-tune a causal LM on SQuAD as generative question answering, with a LoRA adapter.

    accelerate launch --quiet run_qa_lora.py --lora_r 8                  # GPT-2 small, SQuAD v1.1 (Hub)
    python run_qa_lora.py configs/exp_r8_lr2e-4_attn.yaml --num_train_epochs 1 --max_train_samples 2000
    python run_qa_lora.py --model_name_or_path ./my-gpt2 --train_file train-v1.1.json --validation_file dev-v1.1.json
    python run_qa_lora.py configs/smoke.yaml                              # offline install check (answers are noise)

Each example is `Context: ...\\nQuestion: ...\\nAnswer:` followed by the first gold answer and EOS;
only the answer and EOS tokens are trained. Every Trainer flag works (--learning_rate, --bf16, ...) or is refused
up front with the reason (squad_lora/training_args.py). The output directory's rules (its name, a finished run
never overwritten, which checkpoint `--resume_from_checkpoint last` resumes) are in squad_lora/run_dir.py.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import NamedTuple

import squad_lora  # noqa: F401  before transformers: silences a line bitsandbytes logs when transformers imports it

# isort: split
from datasets import Dataset
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

from squad_lora import cli, outputs
from squad_lora.args import DataArguments, describe_lora
from squad_lora.errors import ConfigError, Interrupted, RunFileError, SquadDataError
from squad_lora.features import build_train_features, prepare_training_examples
from squad_lora.hub import (
    base_model_reference,
    build_model_card,
    check_hub_repo,
    dataset_hub_id,
    go_offline_if_unreachable,
    needs_hub,
    push_to_hub,
    run_repo_id,
)
from squad_lora.hub_pushes import HubPushCallback, checkpoint_pushes, latest_evaluation
from squad_lora.modeling import (
    BASE_MODEL_SUBDIR,
    apply_lora,
    count_parameters,
    format_parameter_line,
    load_base_model,
    load_model_config,
    load_tokenizer,
    lora_summary,
    use_tokenizer_padding,
)
from squad_lora.plan import TrainPlan, describe, resolve_train_plan
from squad_lora.run_dir import interrupted_message, resolve_run, unsaved_message
from squad_lora.splits import load_training_splits
from squad_lora.trainer import QATrainer
from squad_lora.training_args import ARGUMENT_TYPES

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Steps of main()
# ---------------------------------------------------------------------------


def setup_logging(training_args: TrainingArguments) -> None:
    """--log_level (--log_level_replica on the other processes) for our lines and the libraries'; passive (the
    default): ours at INFO on the main process, the libraries at warnings. --disable_tqdm: no progress bars."""
    level = training_args.get_process_log_level()
    passive = training_args.should_log and training_args.log_level == "passive"
    cli.setup_logging(
        __name__,
        level=logging.INFO if passive else level,
        library_level=level,
        progress=not training_args.disable_tqdm,
    )


def check_hub_reachable(model_args, data_args, training_args) -> None:
    """Where the run needs the Hub (a model, tokenizer or dataset from it, or a push), one short connection
    attempt first: an unreachable Hub turns offline mode on, said in one line, instead of minutes of retries."""
    models = (model_args.model_name_or_path, model_args.tokenizer_name)
    if needs_hub(*models) or not data_args.train_file or training_args.push_to_hub:
        go_offline_if_unreachable()


def resolve_base(model_args, hub_args, training_args, hub_model_id: str | None) -> tuple[str | None, str | None]:
    """What the adapter records as its base and the base's Hub id; with --push_to_hub, the Hub checked now,
    before hours of training, not after."""
    if model_args.from_scratch:  # a random base: saved beside the adapter once built
        base_reference, base_model_id = None, hub_args.base_model_id
    else:
        base_reference, base_model_id = base_model_reference(model_args.model_name_or_path, hub_args.base_model_id)
    if hub_model_id and training_args.should_save:
        if base_model_id is None and not model_args.from_scratch:
            raise ConfigError(
                f"--push_to_hub: the base {model_args.model_name_or_path} is a local directory with no known Hub id, "
                "so nobody could load the pushed adapter: pass --base_model_id ORG/NAME"
            )
        check_hub_repo(hub_model_id, training_args.hub_private_repo, revision=training_args.hub_revision)
    return base_reference, base_model_id


class Datasets(NamedTuple):
    """What training and its evaluation read."""

    train: Dataset  # tokenized training features
    validation: Dataset | None  # tokenized validation features (None: the run does not evaluate)
    validation_examples: Dataset | None  # the validation questions as loaded, for EM/F1
    counts: dict  # the data's counts, for run_summary.json


def build_datasets(data_args: DataArguments, tokenizer, plan: TrainPlan, training_args) -> Datasets:
    """Tokenized train and validation features, the validation questions, and the data counts."""
    template, max_seq_length = plan.answer.template, plan.max_seq_length
    with training_args.main_process_first(desc="loading the data"):
        splits, held_out = load_training_splits(data_args, training_args.seed, evaluates=training_args.do_eval)
    features, counts = {}, {"max_seq_length": max_seq_length}
    if held_out:
        counts["validation_split"] = held_out
    for split, (examples, stats) in splits.items():
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            if split == "train":
                examples = prepare_training_examples(examples, data_args.train_answer, data_args.train_answerable_only)
            mapped = examples.map(
                build_train_features,
                batched=True,
                fn_kwargs={
                    "tokenizer": tokenizer,
                    "max_seq_length": max_seq_length,
                    "template": template,
                    "sharing": plan.share_context and split == "train",  # evaluation batches are padded
                },
                remove_columns=examples.column_names,
                num_proc=data_args.preprocessing_num_workers,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"tokenizing {split}",
            )
        num_cut = sum(mapped["was_cut"])
        kept = mapped.filter(lambda ex: len(ex["input_ids"]) > 0, desc=f"dropping {split} questions that do not fit")
        kept = kept.remove_columns("was_cut")
        if len(kept) == 0:
            held = split == "validation" and not held_out  # else: the training data's
            data_file = data_args.validation_file if held else data_args.train_file
            raise SquadDataError(
                f"{data_file or data_args.dataset_name}: none of the {len(examples)} {split} questions fits "
                f"--max_seq_length {max_seq_length} with its answer: raise --max_seq_length"
            )
        counts[split] = {
            "examples": len(examples),
            "features": len(kept),
            "context_cut": num_cut,
            "dropped_too_long": len(mapped) - len(kept),
            "skipped_bad_answer_start": stats.num_bad_answer_start,
            "skipped_blank_answers": stats.num_blank_answers,
            "squad_version": stats.version,
            "squad_version_inferred": stats.version_inferred,
            "repaired_answer_start": stats.num_repaired_answer_start,
        }
        logger.info(
            "%s: %d examples, %d contexts cut to fit %d tokens, %d dropped (answer could not fit)",
            split,
            len(examples),
            num_cut,
            max_seq_length,
            len(mapped) - len(kept),
        )
        features[split] = kept
        features[f"{split}_examples"] = examples
    if "validation" in features:
        counts["validation"]["ids_also_in_train"] = warn_overlap(
            features["train_examples"], features["validation_examples"]
        )
    return Datasets(features["train"], features.get("validation"), features.get("validation_examples"), counts)


def warn_overlap(train_examples, validation_examples) -> int:
    """How many validation question ids are training ones too (leakage: the evaluation scores trained questions)."""
    overlap = set(train_examples["id"]) & set(validation_examples["id"])
    if overlap:
        logger.warning(
            "%d of the %d validation question ids are training ones too (e.g. %s): their eval scores measure "
            "memory, not answering; split the data by article",
            len(overlap),
            len(validation_examples),
            ", ".join(sorted(overlap)[:3]),
        )
    return len(overlap)


def build_trainer(
    model, tokenizer, plan: TrainPlan, training_args, train_dataset, eval_dataset, eval_examples, hub_pushes=None
):
    """The QATrainer of this plan, with early stopping where asked and hub_pushes (a HubPushCallback: the pushes of
    --hub_strategy at each save) where given."""
    num_answered = training_args.eval_generation_samples
    patience = training_args.early_stopping_patience
    callbacks = [EarlyStoppingCallback(patience)] if patience else []
    if hub_pushes is not None:
        callbacks.append(hub_pushes)
    return QATrainer(
        model,
        training_args,
        plan,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        eval_examples=list(eval_examples)[:num_answered] if eval_examples else None,
        callbacks=callbacks or None,
    )


def train(trainer: Trainer, resume_from: str | None):
    """trainer.train(), and a run that took no optimizer step refused before anything is saved."""
    try:
        train_result = trainer.train(resume_from_checkpoint=resume_from)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(trainer.args.output_dir, trainer.state.global_step)) from None
    if trainer.state.global_step == 0:
        raise ConfigError(
            f"training ran 0 optimizer steps ({len(trainer.train_dataset)} features, --num_train_epochs "
            f"{trainer.args.num_train_epochs}, --max_steps {trainer.args.max_steps}): nothing was saved; "
            "train for more epochs or steps"
        )
    return train_result


def declared_version(counts: dict) -> str | None:
    """The SQuAD version a training file declares (an inferred one says nothing of where the data comes from)."""
    return None if counts.get("squad_version_inferred") else counts["squad_version"]


def final_eval_metrics(trainer: Trainer) -> dict:
    """The final model's eval metrics: reuse the evaluation Trainer just ran at the last step, if any."""
    step, metrics = latest_evaluation(trainer.state.log_history)
    if step == trainer.state.global_step and not trainer.args.load_best_model_at_end:
        return metrics
    return trainer.evaluate()


def save_random_base(model, tokenizer, output_dir: str) -> str:
    """Save a --from_scratch base beside its adapter: those random weights exist nowhere else."""
    base_dir = os.path.join(output_dir, BASE_MODEL_SUBDIR)
    with outputs.atomic_dir(base_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return os.path.abspath(base_dir)


def save_outputs(trainer: Trainer, output_dir: str) -> None:
    """Save the adapter (or the full model) and tokenizer, each file renamed into place when complete.

    Every process calls it: under FSDP and DeepSpeed gathering the weights is a collective. Only the
    processes that save (the main one; each node's with --save_on_each_node) write.
    """
    if not trainer.args.should_save:
        trainer.save_model(output_dir)  # joins the gathering; the Trainer writes nothing on this process
        return
    with outputs.atomic_files(output_dir) as staging:
        trainer.save_model(staging)


def framework_versions() -> dict:
    """The versions of the libraries a run used, for the model card."""
    from importlib.metadata import version

    return {name: version(name) for name in ("transformers", "peft", "torch", "accelerate", "datasets", "tokenizers")}


def run_facts(args, model, plan, data_counts, hub_model_id, base_model_id) -> dict:
    """What the run is, known before training (run_summary.json's and the model card's, the card of each checkpoint
    pushed during training too), built here from the parsed arguments (args, as parse_args returns them) and what
    the run made: the parameter counts, the data counts, the plan and prompt format, and the Hub ids (hub_model_id
    None: no push)."""
    model_args, data_args, lora_args, _, _, hub_args, training_args = args
    parameter_counts = count_parameters(model)
    return {
        "run_name": training_args.run_name,
        "base_model": model_args.model_name_or_path,
        "dataset": data_args.train_file or data_args.dataset_name,
        "framework_versions": framework_versions(),
        "parameters": format_parameter_line(parameter_counts),
        **parameter_counts,
        "lora": lora_summary(lora_args, model),
        "learning_rate": training_args.learning_rate,
        "data": data_counts,
        "plan": plan.as_dict(),
        "prompt_template": plan.answer.template.as_dict(),
        "hub_model_id": hub_model_id,
        "hub_revision": training_args.hub_revision if training_args.push_to_hub else None,
        "base_model_id": base_model_id,
        "dataset_id": dataset_hub_id(
            data_args.dataset_name, data_args.train_file, declared_version(data_counts["train"])
        ),
        "license": hub_args.license,
    }


def run_summary(facts: dict, trainer, train_result, eval_metrics: dict) -> dict:
    """What run_summary.json holds: the run's facts (run_facts) and what training made: the metrics and the loss
    history."""
    return {
        **facts,
        "train_metrics": train_result.metrics,
        "num_input_tokens_seen": int(trainer.state.num_input_tokens_seen),
        "train_tokens_per_second": trainer.state.num_input_tokens_seen / train_result.metrics["train_runtime"],
        "eval_metrics": eval_metrics,
        "log_history": trainer.state.log_history,
    }


def save_run(trainer: Trainer, config: dict, summary: dict) -> None:
    """The adapter, tokenizer, resolved config, result files, model card and summary; the summary last (it
    marks a finished run). A save that fails (a full disk) keeps what it can and says where, in one line."""
    output_dir = trainer.args.output_dir
    try:
        save_outputs(trainer, output_dir)
        if not trainer.args.should_save:
            return
        outputs.write_yaml(os.path.join(output_dir, outputs.CONFIG_FILE), config)
        outputs.write_results(output_dir, summary["train_metrics"], summary["eval_metrics"])
        outputs.write_text(os.path.join(output_dir, "README.md"), str(build_model_card(summary, config)))
        outputs.write_json(os.path.join(output_dir, outputs.SUMMARY_FILE), summary)
    except (OSError, outputs.KeptFilesError) as e:
        raise RunFileError(unsaved_message(output_dir, e)) from e


def main(argv: list[str] | None = None) -> dict:
    args, config_file, _ = cli.parse_args(ARGUMENT_TYPES, argv, bare_words="the config file")
    model_args, data_args, lora_args, prompt_args, decoding, hub_args, training_args = args
    setup_logging(training_args)
    check_hub_reachable(model_args, data_args, training_args)
    resume_from = resolve_run(training_args, model_args, data_args, lora_args, config_file)
    # a full disk anywhere from here on (a checkpoint, an event file, the adapter) ends in one line of what was kept
    outputs.on_full_disk(training_args.output_dir, functools.partial(unsaved_message, training_args.output_dir))
    push = training_args.push_to_hub
    hub_model_id = run_repo_id(training_args.hub_model_id, training_args.run_name) if push else None
    base_reference, base_model_id = resolve_base(model_args, hub_args, training_args, hub_model_id)
    config = cli.resolved_config(*args)
    logger.info("configuration: %s", config)
    set_seed(training_args.seed)

    # The plan: every auto and cross-flag rule settled from the flags, the base's config and the tokenizer
    tokenizer = load_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path, model_args.trust_remote_code)
    model_config = load_model_config(model_args.model_name_or_path, model_args.trust_remote_code)
    plan = resolve_train_plan(
        data_args, prompt_args, decoding, training_args, tokenizer, model_config, model_args, lora_args
    )
    logger.info("plan: %s", describe(plan))

    # Data and model
    train_dataset, eval_dataset, eval_examples, data_counts = build_datasets(data_args, tokenizer, plan, training_args)
    model = load_base_model(
        model_args, from_scratch=model_args.from_scratch, attn_implementation=plan.attn_implementation
    )
    use_tokenizer_padding(model, tokenizer)
    if model_args.from_scratch and lora_args.lora_r and training_args.should_save:
        os.makedirs(training_args.output_dir, exist_ok=True)
        base_reference = save_random_base(model, tokenizer, training_args.output_dir)
    if base_reference:
        model.name_or_path = base_reference  # what peft records as the adapter's base
    checkpointing = training_args.gradient_checkpointing_kwargs if training_args.gradient_checkpointing else None
    model = apply_lora(model, lora_args, checkpointing)
    logger.info(
        "%s (%s)", format_parameter_line(count_parameters(model)), describe_lora(lora_summary(lora_args, model))
    )

    # Training (with --hub_strategy every_save, checkpoint or all_checkpoints: a push at each save)
    facts = run_facts(args, model, plan, data_counts, hub_model_id, base_model_id)
    pushes = checkpoint_pushes(training_args, hub_model_id)
    hub_pushes = HubPushCallback(pushes, facts, config) if pushes else None
    trainer = build_trainer(
        model, tokenizer, plan, training_args, train_dataset, eval_dataset, eval_examples, hub_pushes
    )
    train_result = train(trainer, resume_from)
    eval_metrics = final_eval_metrics(trainer) if eval_dataset is not None else {}
    trainer.log_hparams(config, eval_metrics)

    # Outputs (written by the main process)
    summary = run_summary(facts, trainer, train_result, eval_metrics)
    save_run(trainer, config, summary)  # every process: saving may gather sharded weights
    if push and trainer.is_world_process_zero():
        private, revision = training_args.hub_private_repo, training_args.hub_revision
        push_to_hub(training_args.output_dir, hub_model_id, private=private, revision=revision)
    outputs.release_dir(training_args.output_dir)
    return summary


if __name__ == "__main__":
    cli.run(main)
