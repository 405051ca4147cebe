"""The resolved plan: every `auto` and every rule between flags of different groups, settled once.

A script parses its flags (each dataclass checks its own fields), loads the model's config and the tokenizer,
and then calls one resolver here, before any weights or data load: resolve_train_plan (run_qa_lora.py) or
resolve_answer_plan (generate.py). A resolver collects every problem and raises them together, and returns
frozen plain values that the collator, the trainer and generation take as given: nothing below decides again,
and no argument object is changed. A run logs its plan once and records it in run_summary.json ("plan").
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import NamedTuple

from squad_lora.args import converted_for_original_base
from squad_lora.errors import ConfigError, raise_problems
from squad_lora.loss import LABELLED_LOSS_MODEL_TYPES
from squad_lora.modeling import lora_layer_problems
from squad_lora.prompt import NO_ANSWER, PromptTemplate, min_prompt_tokens, prompt_template
from squad_lora.shared_context import decide_share_context

logger = logging.getLogger(__name__)

# Questions per generate() call by default (--generation_batch_size). With shared contexts a question costs about
# a quarter of the prefill tokens, and decoding, which then dominates, gains from wider batches.
GENERATION_BATCH_SIZE, SHARED_GENERATION_BATCH_SIZE = 16, 64
# A long context's windows leave room for a question of this many tokens (SQuAD's longest are about 60 GPT-2
# tokens; a longer question has its window cut from the end) or half the room, where that is less.
QUESTION_TOKENS = 64
DOC_STRIDE = 128  # run_qa.py's default --doc_stride, where the window is more than four times it


@dataclass(frozen=True)
class AnswerPlan:
    """How questions are answered: by generate.py, and by the trainer for eval EM/F1."""

    template: PromptTemplate
    generation_configs: dict  # strategy -> its transformers GenerationConfig, in the order answered
    max_new_tokens: int
    max_prompt_tokens: int  # the model's positions less max_new_tokens: a longer prompt is cut from its end
    max_context_tokens: int  # a longer context is answered in overlapping windows of this many tokens (windows.py)
    doc_stride: int  # the tokens each window shares with the one before
    share_context: bool
    share_lone_questions: bool  # a context with one question shares too (--share_context true), else goes unshared
    batch_size: int  # questions per generate() call
    unshared_batch_size: int  # the same for questions answered without a shared part
    stop_ids: tuple[int, ...]  # EOS, every token holding a newline, and the template's end of turn
    no_answer_token_id: int  # the first token of the no-answer string, for --no_answer_threshold
    constrain_to_context: bool
    no_answer_threshold: float | None
    min_answer_confidence: float | None
    reasons: dict  # setting -> why it has its value, for the log and the record

    def as_dict(self) -> dict:
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain["template"] = self.template.as_dict()
        plain.pop("stop_ids")  # hundreds of ids: the rule that makes them is on the field
        plain["generation_configs"] = {
            strategy: {
                k: v for k, v in config.to_diff_dict().items() if k not in ("eos_token_id", "transformers_version")
            }
            for strategy, config in self.generation_configs.items()
        }
        return plain


@dataclass(frozen=True)
class TrainPlan:
    """How run_qa_lora.py trains: the batches, the loss and the lengths, and how its evaluation answers."""

    attn_implementation: str | None  # the model loads with it; None: the model class is unknown (remote code)
    packing: bool  # one unpadded row per batch (collators.PackingCollator)
    block_mask: bool  # packed rows get a block-diagonal mask (all attention but flash, which reads positions)
    train_sampling_strategy: str  # what the Trainer's sampler (or ContextBatchSampler) is given
    max_seq_length: int
    labelled_loss: bool  # the LM head on the labelled positions only (loss.labelled_positions_loss)
    sharded: bool  # each process holds a shard of the weights (FSDP, DeepSpeed ZeRO-3): evaluation answers in step
    answer: AnswerPlan
    reasons: dict

    @property
    def share_context(self) -> bool:
        """One row per context (shared_context.py): decided once, held by the answer plan, which training follows."""
        return self.answer.share_context

    def as_dict(self) -> dict:
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain["share_context"] = self.share_context  # recorded beside the batches it shapes
        plain["answer"] = self.answer.as_dict()
        return plain

    def trainer_arguments(self, training_args):
        """A copy of the parsed TrainingArguments as the Trainer is to see them: the planned batch order, and no
        push of its own (run_qa_lora.py pushes itself: at each save with hub_pushes.py, at the end with hub.py)."""
        args = copy.copy(training_args)
        args.train_sampling_strategy = self.train_sampling_strategy
        args.push_to_hub = False
        return args


def model_max_length(config, tokenizer) -> int:
    """The longest sequence the model accepts (n_positions for GPT-2)."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return min(tokenizer.model_max_length, 4096)


def default_attention(config, requested: str | None) -> str | None:
    """The attention implementation a model of this config loads with: the requested one, else transformers'
    choice (sdpa where the architecture supports it, else eager); None where the class is unknown (remote code)."""
    if requested:
        return requested
    if getattr(config, "_attn_implementation", None):  # a loaded model's config knows
        return config._attn_implementation
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None
    return "sdpa" if getattr(model_class, "_supports_sdpa", False) else "eager"


def _length_problems(limit: int, shortest: int, max_seq_length: int | None, max_new_tokens: int) -> list[str]:
    problems = []
    if max_seq_length is not None and not shortest <= max_seq_length <= limit:
        problems.append(
            f"--max_seq_length {max_seq_length}: must be between {shortest} (the prompt template with a one-word "
            f"context, question and answer) and {limit} (the longest sequence the model takes)"
        )
    if max_new_tokens > limit - shortest:
        problems.append(
            f"--max_new_tokens {max_new_tokens}: leaves no room for a prompt in the model's {limit} positions; "
            f"use at most {limit - shortest}"
        )
    return problems


class Windows(NamedTuple):
    """How long contexts are split for answering (windows.py), why, and the flags' problems."""

    max_context_tokens: int
    doc_stride: int
    reasons: dict
    problems: list[str]


def _windows(decoding, limit: int, shortest: int) -> Windows:
    """The window length and stride: the flags', else what the model's positions leave after the answer, the
    prompt template (shortest: its tokens with a one-word context and question) and a question."""
    room = max(1, limit - decoding.max_new_tokens - shortest)
    reasons, problems = {}, []
    window = decoding.max_context_tokens
    if window is None:
        question = min(QUESTION_TOKENS, room // 2)
        window = max(1, room - question)
        reasons["max_context_tokens"] = (
            f"the model's {limit} positions less {decoding.max_new_tokens} new tokens, {shortest} for the prompt "
            f"template and {question} for the question"
        )
    elif window > room:
        problems.append(
            f"--max_context_tokens {window}: more than the {room} context tokens the model's {limit} positions leave "
            f"after --max_new_tokens and the prompt template; use at most {room}"
        )
    stride = decoding.doc_stride
    if stride is None:
        stride = min(DOC_STRIDE, window // 4)
        reasons["doc_stride"] = f"{DOC_STRIDE}, or a quarter of the window where that is less"
    elif stride >= window:
        problems.append(f"--doc_stride {stride}: must be less than the window of {window} context tokens")
    return Windows(window, stride, reasons, problems)


def _template(tokenizer, prompt_format: str, source: str, problems: list[str]) -> PromptTemplate | None:
    try:
        return prompt_template(tokenizer, prompt_format, source)
    except ConfigError as e:
        problems.append(str(e))
        return None


def _answer_plan(
    decoding, tokenizer, config, template, share: bool, share_setting: str, windows: Windows, reasons: dict, strategies
) -> AnswerPlan:
    from squad_lora.decoding import generation_config, stop_token_ids

    if decoding.generation_batch_size:
        batch_size = unshared_batch_size = decoding.generation_batch_size
    else:
        batch_size = SHARED_GENERATION_BATCH_SIZE if share else GENERATION_BATCH_SIZE
        unshared_batch_size = GENERATION_BATCH_SIZE
        reasons = {**reasons, "batch_size": f"the default with{'' if share else 'out'} shared contexts"}
    # A context's only question gains nothing from a shared part and pays for it (a second prefill, the shared
    # batch size): auto answers it unshared; true shares every question, as asked
    share_lone = share and share_setting == "true"
    if share:
        lone_why = (
            "on (--share_context true)" if share_lone else "off: a context with one question is answered unshared"
        )
        reasons = {**reasons, "share_lone_questions": lone_why}
    stop_ids = (*stop_token_ids(tokenizer), template.end_token_id(tokenizer))
    reasons = {**reasons, **windows.reasons}
    return AnswerPlan(
        template=template,
        generation_configs={
            s: generation_config(s, decoding, tokenizer, stop_ids) for s in strategies or decoding.strategies
        },
        max_new_tokens=decoding.max_new_tokens,
        max_prompt_tokens=model_max_length(config, tokenizer) - decoding.max_new_tokens,
        max_context_tokens=windows.max_context_tokens,
        doc_stride=windows.doc_stride,
        share_context=share,
        share_lone_questions=share_lone,
        batch_size=batch_size,
        unshared_batch_size=unshared_batch_size,
        stop_ids=stop_ids,
        no_answer_token_id=tokenizer(" " + NO_ANSWER, add_special_tokens=False)["input_ids"][0],
        constrain_to_context=decoding.constrain_to_context,
        no_answer_threshold=decoding.no_answer_threshold,
        min_answer_confidence=decoding.min_answer_confidence,
        reasons=reasons,
    )


def resolve_answer_plan(
    decoding, prompt_args, tokenizer, config, attn_implementation: str | None = None, source: str = "the tokenizer"
) -> AnswerPlan:
    """generate.py's plan, from its flags, the model's config and its tokenizer; raises every problem at once."""
    problems: list[str] = []
    template = _template(tokenizer, prompt_args.prompt_format, source, problems)
    limit = model_max_length(config, tokenizer)
    shortest = min_prompt_tokens(tokenizer, template or PromptTemplate())
    problems += _length_problems(limit, shortest, None, decoding.max_new_tokens)
    windows = _windows(decoding, limit, shortest)
    attention = default_attention(config, attn_implementation)
    share, why, sharing_problems = decide_share_context(prompt_args.share_context, config.model_type, attention)
    raise_problems(problems + windows.problems + sharing_problems)
    return _answer_plan(
        decoding, tokenizer, config, template, share, prompt_args.share_context, windows, {"share_context": why}, None
    )


def sharded_engines(training_args) -> list[str]:
    """FSDP and DeepSpeed ZeRO-3, asked for by flag or by an `accelerate launch` config: each process then holds a
    shard of the weights."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled  # set by TrainingArguments' parsing

    from squad_lora.training_args import fsdp_asked

    engines = ["FSDP"] if fsdp_asked(training_args) else []
    if is_deepspeed_zero3_enabled():
        engines.append("DeepSpeed ZeRO-3")
    return engines


def _loss_path(model_type: str, torch_compile: bool) -> tuple[bool, str]:
    if torch_compile:
        # the labelled-positions loss would break the compiled graph at the LM head on every step
        return False, "the model's own forward, compiled (--torch_compile)"
    if model_type in LABELLED_LOSS_MODEL_TYPES:
        return True, "LM head on the labelled positions only"
    tested = ", ".join(sorted(LABELLED_LOSS_MODEL_TYPES))
    return (
        False,
        f"the model's own forward ({model_type} is not among the types where the labelled loss is shown equal: {tested})",
    )


class Batches(NamedTuple):
    """How training batches are made, and why (for the plan's log)."""

    packing: bool
    block_mask: bool
    train_sampling_strategy: str
    why: str


def _batches(share: bool, attention: str | None, training_args) -> Batches:
    """The batches for this sharing decision, attention and these flags."""
    sampling = training_args.train_sampling_strategy
    if share:
        sampling = "random" if sampling == "auto" else sampling
        return Batches(
            False, False, sampling, f"one row per context, whole contexts in {sampling} order; evaluation padded"
        )
    flash = (attention or "").startswith("flash")
    packing = training_args.packing == "true" or (training_args.packing == "auto" and flash)
    if sampling == "auto":  # length grouping only pays where there is padding
        sampling = "random" if packing else "group_by_length"
    return Batches(
        packing,
        packing and not flash,
        sampling,
        f"{'packed' if packing else 'padded to their longest'}, {sampling} order",
    )


def resolve_train_plan(
    data_args, prompt_args, decoding, training_args, tokenizer, config, model_args, lora_args
) -> TrainPlan:
    """run_qa_lora.py's plan, from its flags, the base's config and the tokenizer, before any weights or data
    load; raises every problem at once."""
    problems: list[str] = []
    source = model_args.tokenizer_name or model_args.model_name_or_path
    template = _template(tokenizer, prompt_args.prompt_format, source, problems)
    limit = model_max_length(config, tokenizer)
    shortest = min_prompt_tokens(tokenizer, template or PromptTemplate())
    problems += _length_problems(limit, shortest, data_args.max_seq_length, decoding.max_new_tokens)
    windows = _windows(decoding, limit, shortest)
    problems += windows.problems
    attention = default_attention(config, model_args.attn_implementation)
    share, share_why, sharing_problems = decide_share_context(
        prompt_args.share_context, config.model_type, attention, training_args
    )
    problems += sharing_problems
    problems += lora_layer_problems(config, lora_args)
    engines = sharded_engines(training_args)
    if engines and lora_args.lora_r and converted_for_original_base(lora_args.init_lora_weights):
        # converting the adapter for the original base (modeling.save_for_original_base) needs the whole weights
        problems.append(
            f"--init_lora_weights {lora_args.init_lora_weights} cannot be used with {' or '.join(engines)}: the "
            "adapter is converted for the original base from the whole weights, which they shard"
        )
    hub_strategy = getattr(training_args.hub_strategy, "value", training_args.hub_strategy)
    if hub_strategy != "end" and lora_args.lora_r and converted_for_original_base(lora_args.init_lora_weights):
        # modeling.save_for_original_base converts the final adapter only: a checkpoint's is the trained form
        problems.append(
            f"--hub_strategy {hub_strategy} cannot be used with --init_lora_weights "
            f"{lora_args.init_lora_weights}: a checkpoint's adapter fits only the base it changed, so the one pushed "
            "at each save would answer wrongly on the original base; use --hub_strategy end"
        )
    if data_args.validation_split_percentage is not None and not training_args.do_eval:
        problems.append(
            "--validation_split_percentage holds questions out of training to evaluate on, but --eval_strategy no "
            "never evaluates: set --eval_strategy epoch or steps, or drop --validation_split_percentage"
        )
    raise_problems(problems)
    packing, block_mask, sampling, batches_why = _batches(share, attention, training_args)
    labelled_loss, loss_why = _loss_path(config.model_type, training_args.torch_compile)
    reasons = {"share_context": share_why, "batches": batches_why, "loss": loss_why}
    if engines:
        reasons["sharded"] = " and ".join(engines)
    if data_args.max_seq_length is None:
        reasons["max_seq_length"] = "the model's maximum"
    # evaluation answers with the first strategy (the one a run's EM/F1 are reported for)
    answer = _answer_plan(
        decoding, tokenizer, config, template, share, prompt_args.share_context, windows, {}, decoding.strategies[:1]
    )
    return TrainPlan(
        attn_implementation=attention,
        packing=packing,
        block_mask=block_mask,
        train_sampling_strategy=sampling,
        max_seq_length=data_args.max_seq_length or limit,
        labelled_loss=labelled_loss,
        sharded=bool(engines),
        answer=answer,
        reasons=reasons,
    )


def describe(plan: TrainPlan | AnswerPlan) -> str:
    """The plan as one log line: each decision with its reason."""
    values = plan.as_dict()
    values.pop("reasons")
    values.pop("template", None)
    values.pop("generation_configs", None)
    return "; ".join(
        [f"{key}={value}" for key, value in values.items() if not isinstance(value, dict)]
        + [f"{key}: {why}" for key, why in plan.reasons.items()]
    )


QUANTIZATION_FLAGS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
                      "bnb_4bit_compute_dtype")  # fmt: skip


@dataclass(frozen=True)
class MergePlan:
    """How merge_adapter.py merges: into which weights, and saved in which dtype."""

    dtype: str  # what the merged weights are saved in; the merge itself is done in float32
    quantization: dict  # the bitsandbytes flags the adapter was trained under ({} for a float base)
    reasons: dict


def resolve_merge_plan(given_dtype: str | None, base_config, recorded: dict, model_args) -> MergePlan:
    """The merged model's dtype: --dtype where given (auto: the base's), else the base's own (16-bit for a 16-bit
    base, as other tools' merges are), float32 where the base's config names none. The weights merged into: those
    the adapter was trained against, dequantized when it was trained on a 4- or 8-bit base (--load_in_4bit/8bit,
    or else the run's run_config.yaml)."""
    base_dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    base_dtype = str(base_dtype).removeprefix("torch.") if base_dtype is not None else None
    if given_dtype and given_dtype != "auto":
        dtype, dtype_why = given_dtype, "--dtype"
    elif base_dtype in ("float32", "bfloat16", "float16"):
        dtype, dtype_why = base_dtype, "the base's own dtype, from its config.json"
    else:
        dtype, dtype_why = "float32", "the base's config names no float dtype"
    if model_args.load_in_4bit or model_args.load_in_8bit:
        quantization, why = {name: getattr(model_args, name) for name in QUANTIZATION_FLAGS}, "--load_in_4bit/8bit"
    elif recorded.get("load_in_4bit") or recorded.get("load_in_8bit"):
        quantization = {name: recorded[name] for name in QUANTIZATION_FLAGS if name in recorded}
        why = "the run's run_config.yaml"
    else:
        quantization, why = {}, "the run trained on the float base"
    if quantization.get("load_in_4bit"):
        merged_into = f"the dequantized 4-bit {quantization.get('bnb_4bit_quant_type', 'nf4')} weights"
    elif quantization:
        merged_into = "the dequantized 8-bit weights"
    else:
        merged_into = "the base's float weights"
    merged_into += f" the adapter was trained against ({why})"
    return MergePlan(dtype, quantization, {"dtype": dtype_why, "merged_into": merged_into})
