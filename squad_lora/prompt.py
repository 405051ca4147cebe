"""The prompt: how a question is put to the model and how its answer is read back, and prompts as token ids.

PromptTemplate (plain, or chat from the tokenizer's own chat template) is defined once for training and generation
alike; NO_ANSWER is the answer an unanswerable question is trained on. encode_prompt cuts a context to fit; the
generation side encodes whole question sets (encode_questions) as a plan.AnswerPlan asks.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from squad_lora.errors import ConfigError, SquadDataError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# The single answer string a SQuAD v2 unanswerable question is trained on (and which
# generate.py maps back to the empty prediction the v2 metric expects).
NO_ANSWER = "unanswerable"

PROMPT_FORMATS = ("plain", "chat")


@dataclass(frozen=True)
class PromptTemplate:
    """How a question is put to the model, defined once for training and generation alike.

    plain: "Context: ...\nQuestion: ...\nAnswer:". chat: the same words as the user's message in the tokenizer's
    chat template, the answer being the assistant's reply (for instruct and chat bases). In both, the model is
    trained on " answer" and `end` only: the answer keeps its leading space so that its tokens are the context's
    own (what --constrain_to_context relies on), and `end` is EOS or the template's end of turn.
    """

    format: str = "plain"
    head: str = ""  # chat: the template's text before the user's message (system prompt, role markers)
    tail: str = "\nAnswer:"  # after the question (chat: the end of the user's turn and the assistant's cue)
    end: str | None = None  # the token that ends an answer; None: the tokenizer's EOS

    def context_part(self, context: str) -> str:
        """All of the prompt that does not depend on the question."""
        return f"{self.head}Context: {context.strip()}\nQuestion:"

    def question_part(self, question: str) -> str:
        """The rest, after context_part. It starts with a space before a word (or number, or quote): byte-level
        BPE pre-tokenizers never merge a token across that, so the two parts tokenize apart exactly as the whole
        prompt does (benchmarks/bench_shared_context.py checks it on every SQuAD dev question)."""
        return f" {question.strip()}{self.tail}"

    def build(self, context: str, question: str) -> str:
        """The whole prompt: the context, then the question, then the answer cue."""
        return self.context_part(context) + self.question_part(question)

    def end_token_id(self, tokenizer) -> int:
        return tokenizer.eos_token_id if self.end is None else tokenizer.convert_tokens_to_ids(self.end)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


PLAIN = PromptTemplate()
_MARK = "\x00squad-lora\x00"  # stands for the user's message while the chat template is rendered


def prompt_template(tokenizer, prompt_format: str, source: str = "the tokenizer") -> PromptTemplate:
    """The PromptTemplate of --prompt_format: plain, or chat from the tokenizer's own chat template."""
    if prompt_format == "plain":
        return PLAIN
    if prompt_format != "chat":
        raise ConfigError(f"--prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"--prompt_format chat: {source} has no chat template (a base model's usually has none); use "
            "--prompt_format plain, or an instruct model's tokenizer (--tokenizer_name)"
        )
    user = [{"role": "user", "content": _MARK}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    reply = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": _MARK}], tokenize=False)
    if prompt.count(_MARK) != 1 or reply.count(_MARK) != 2 or not reply.startswith(prompt.split(_MARK)[0]):
        raise ConfigError(
            f"--prompt_format chat: the chat template of {source} does not put a user message and a reply into "
            "the text as given; use --prompt_format plain"
        )
    head, tail = prompt.split(_MARK)
    # the end of the assistant's turn: the first token the template writes after the reply, when it is special
    after = tokenizer(reply.rsplit(_MARK, 1)[1], add_special_tokens=False)["input_ids"]
    end = None
    if after and after[0] in tokenizer.all_special_ids and after[0] != tokenizer.eos_token_id:
        end = tokenizer.convert_ids_to_tokens(after[0])
    return PromptTemplate("chat", head, tail, end)


def template_from_dict(recorded: dict | None) -> PromptTemplate:
    """The PromptTemplate a run summary recorded (runs from before the chat format: plain)."""
    return PromptTemplate(**recorded) if recorded else PLAIN


def min_prompt_tokens(tokenizer, template: PromptTemplate = PLAIN) -> int:
    """Tokens of the shortest useful example: the template with a one-word context and question, a
    one-token answer and EOS. A sequence length below it cannot hold any example."""
    return len(tokenizer(template.build("x", "x?"), add_special_tokens=False)["input_ids"]) + 2


def prediction_from_generation(text: str) -> str:
    """Turn generated text back into a SQuAD prediction ('' for the no-answer string)."""
    answer = text.split("\n", 1)[0].strip()
    return "" if answer == NO_ANSWER else answer


def shared_prefix_lengths(
    tokenizer, questions: list[str], prompts: list[list[int]], template: PromptTemplate = PLAIN
) -> list[int]:
    """For each prompt (token ids), how many leading tokens come from its context part alone, and so are the same
    for every question of that context: the prompt less its question part. 0 where the question part tokenized
    alone is not the prompt's exact tail (a tokenizer that merges across the boundary): that prompt shares nothing.
    """
    if not questions:  # a process whose shard of whole contexts is empty
        return []
    tails = tokenizer([template.question_part(q) for q in questions], add_special_tokens=False)["input_ids"]
    lengths = []
    for prompt, tail in zip(prompts, tails):
        n = len(prompt) - len(tail)
        lengths.append(n if n > 0 and prompt[n:] == tail else 0)
    return lengths


# ---------------------------------------------------------------------------
# Prompts as token ids
# ---------------------------------------------------------------------------


def _context_window(offsets: list, budget: int, span: tuple[int, int] | None) -> tuple[int, int]:
    """Token window [lo, hi) of at most `budget` context tokens, centred on the char span if any."""
    num_tokens = len(offsets)
    if span is None:
        return 0, min(budget, num_tokens)  # no answer to keep: cut from the end
    first = next((t for t, (s, e) in enumerate(offsets) if e > span[0]), num_tokens - 1)
    last = next((t for t in range(num_tokens - 1, -1, -1) if offsets[t][0] < span[1]), first)
    if last - first + 1 > budget:
        return -1, -1
    slack = budget - (last - first + 1)
    lo = max(0, first - slack // 2)
    hi = min(num_tokens, lo + budget)
    lo = max(0, hi - budget)
    return lo, hi


def encode_prompt(
    tokenizer,
    context: str,
    question: str,
    max_prompt_tokens: int,
    answer_span: tuple[int, int] | None = None,
    template: PromptTemplate = PLAIN,
) -> tuple[list[int] | None, bool]:
    """Token ids of template.build(context, question), cutting the context to fit when needed.

    Without answer_span the context is cut from its end (the question is always kept); with it,
    the window is centred on the answer so the answer survives. Returns (ids, was_cut); ids is None
    when the prompt cannot fit (the question alone, or the answer, is too long).
    """
    ids = tokenizer(template.build(context, question), add_special_tokens=False)["input_ids"]
    if len(ids) <= max_prompt_tokens:
        return ids, False
    enc = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    budget = len(offsets) - (len(ids) - max_prompt_tokens)
    # Re-tokenizing the cut text can merge tokens differently at the seams: shrink until it fits.
    while budget > 0:
        lo, hi = _context_window(offsets, budget, answer_span)
        if lo < 0:
            return None, True
        cut = context[offsets[lo][0] : offsets[hi - 1][1]]
        ids = tokenizer(template.build(cut, question), add_special_tokens=False)["input_ids"]
        if len(ids) <= max_prompt_tokens:
            return ids, True
        budget -= len(ids) - max_prompt_tokens
    return None, True


def build_prompts(
    examples, tokenizer, max_prompt_tokens: int, template: PromptTemplate = PLAIN
) -> tuple[list[list[int]], int]:
    """Prompt ids for every example, the context cut from its end where needed; returns (prompts, num_cut).
    A question too long for any prompt is an error naming it (answer_questions skips and counts those instead)."""
    prompts, num_cut = _prompts_or_none(examples, tokenizer, max_prompt_tokens, template)
    for example, ids in zip(examples, prompts):
        if ids is None:
            raise SquadDataError(
                f"question {example['id']!r}: the question alone is longer than the {max_prompt_tokens} prompt tokens "
                "left (the model's maximum length minus --max_new_tokens)"
            )
    return prompts, num_cut


def _prompts_or_none(examples, tokenizer, max_prompt_tokens: int, template: PromptTemplate) -> tuple[list, int]:
    """(prompt ids, or None where the question alone does not fit; the number of contexts cut)."""
    prompts, num_cut = [], 0
    for example in examples:
        ids, was_cut = encode_prompt(
            tokenizer, example["context"], example["question"], max_prompt_tokens, template=template
        )
        prompts.append(ids)
        num_cut += was_cut and ids is not None
    return prompts, num_cut


@dataclass
class EncodedQuestions:
    """The prompts of the questions one process answers, with what the plan asks generation to use."""

    prompts: list[list[int]]  # token ids
    shared_lengths: list[int] | None = None  # with shared contexts: shared_prefix_lengths
    span_ids: list[torch.Tensor] | None = None  # with --constrain_to_context: answer_span_ids of each context


def answer_span_ids(tokenizer, context: str) -> torch.Tensor:
    """The token sequences an answer may follow with --constrain_to_context."""
    import torch  # here: report.py imports this module (through args.py) and never torch

    # a leading space gives the first word the same token as an answer after "Answer:" would use
    context_ids = tokenizer(" " + context.strip(), add_special_tokens=False)["input_ids"]
    no_answer_ids = tokenizer(" " + NO_ANSWER, add_special_tokens=False)["input_ids"]
    return torch.tensor(context_ids + [-1] + no_answer_ids)


def encode_questions(examples: list[dict], tokenizer, plan) -> tuple[EncodedQuestions, list[dict]]:
    """The prompts of these examples, as a plan.AnswerPlan asks (template, length, sharing, constraint), and the
    examples they are of: a question too long for any prompt is skipped and counted, as training drops it."""
    prompts, num_cut = _prompts_or_none(examples, tokenizer, plan.max_prompt_tokens, plan.template)
    if num_cut:
        logger.warning(
            "%d context(s) longer than %d prompt tokens were cut from their end", num_cut, plan.max_prompt_tokens
        )
    skipped = list(dict.fromkeys(ex["id"] for ex, ids in zip(examples, prompts) if ids is None))  # once, not per window
    if skipped:
        logger.warning(
            "skipped %d question(s) longer alone than the %d prompt tokens left (the model's maximum length minus "
            "--max_new_tokens), so they have no prediction: %s",
            len(skipped),
            plan.max_prompt_tokens,
            ", ".join(skipped[:5]),
        )
        examples = [ex for ex, ids in zip(examples, prompts) if ids is not None]
        prompts = [ids for ids in prompts if ids is not None]
    questions = EncodedQuestions(prompts)
    if plan.share_context:
        questions.shared_lengths = shared_prefix_lengths(
            tokenizer, [ex["question"] for ex in examples], prompts, plan.template
        )
    if plan.constrain_to_context:
        questions.span_ids = [answer_span_ids(tokenizer, ex["context"]) for ex in examples]
    return questions, examples
