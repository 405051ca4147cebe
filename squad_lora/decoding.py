"""Decoding strategies and batched answer generation.

Strategies: greedy, top_k, top_p (nucleus), temperature and beam. Prompts are sorted by length,
left-padded and decoded in batches with the KV cache; decoding stops at EOS or a newline.
"""

from __future__ import annotations

import functools
import logging

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from squad_lora.args import SAMPLING_STRATEGIES, DecodingArguments
from squad_lora.data import NO_ANSWER, encode_prompt, prediction_from_generation
from squad_lora.errors import SquadDataError
from squad_lora.modeling import check_sequence_lengths

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """EOS plus every token whose text contains a newline: answers are one line.

    Decodes the whole vocabulary in one batch call, once per tokenizer (evaluation runs it many times).
    """
    texts = tokenizer.batch_decode([[token_id] for token_id in range(len(tokenizer))])
    return (tokenizer.eos_token_id, *(token_id for token_id, text in enumerate(texts) if "\n" in text))


def generation_config(strategy: str, args: DecodingArguments, tokenizer, stop_ids: list[int]) -> GenerationConfig:
    """The GenerationConfig of one strategy; every strategy shares the stopping rule and length."""
    common = dict(
        max_new_tokens=args.max_new_tokens,
        eos_token_id=list(stop_ids),
        pad_token_id=tokenizer.pad_token_id,
        num_return_sequences=args.num_samples if strategy in SAMPLING_STRATEGIES else 1,
    )
    if strategy == "greedy":
        return GenerationConfig(do_sample=False, num_beams=1, **common)
    if strategy == "beam":
        return GenerationConfig(do_sample=False, num_beams=args.num_beams, early_stopping=True, **common)
    # the sampling strategies each change one knob and leave the others neutral
    knobs = {
        "top_k": dict(top_k=args.top_k, top_p=1.0, temperature=1.0),
        "top_p": dict(top_k=0, top_p=args.top_p, temperature=1.0),
        "temperature": dict(top_k=0, top_p=1.0, temperature=args.temperature),
    }[strategy]
    return GenerationConfig(do_sample=True, num_beams=1, **knobs, **common)


class ContextSpanLogitsProcessor(LogitsProcessor):
    """Restrict each answer to token sequences that occur in its own context (or the no-answer string).

    For a row whose answer so far is g (m tokens), the allowed next tokens are those that follow an
    occurrence of g in the context's tokens or at the start of the no-answer string, plus the stop tokens
    once m > 0. Occurrences are found with one vectorised comparison of all length-m windows (unfold) per
    row and step.
    """

    def __init__(self, span_ids: list[torch.Tensor], rows_per_prompt: int, prompt_length: int, stop_ids: list[int]):
        self.span_ids = span_ids  # one 1-D tensor per prompt: context tokens, -1, no-answer tokens
        self.rows_per_prompt = rows_per_prompt
        self.prompt_length = prompt_length
        self.stop_ids = torch.tensor(stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :].cpu()  # (rows, m); on the CPU, like the spans it is compared to
        m = generated.shape[1]
        mask = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            span = self.span_ids[row // self.rows_per_prompt]
            separator = int((span < 0).nonzero()[0])
            # an answer starts anywhere in the context, but only at the start of the no-answer string
            # (else "able" alone, or a context word continued into "...able", would pass as a span)
            if m == 0:
                allowed = span[: separator + 2][span[: separator + 2] >= 0]
            else:
                windows = span[:-1].unfold(0, m, 1) if span.numel() > m else span[:0].view(0, m)  # (W, m)
                matches = (windows == generated[row]).all(dim=1)
                matches[separator + 2 :] = False
                starts = matches.nonzero().flatten()
                allowed = torch.cat([span[starts + m], self.stop_ids])
                allowed = allowed[allowed >= 0]
            mask[row, allowed.to(scores.device)] = 0
        return scores + mask


def answer_span_ids(tokenizer, context: str) -> torch.Tensor:
    """The token sequences an answer may follow with --constrain_to_context."""
    # a leading space gives the first word the same token as an answer after "Answer:" would use
    context_ids = tokenizer(" " + context.strip(), add_special_tokens=False)["input_ids"]
    no_answer_ids = tokenizer(" " + NO_ANSWER, add_special_tokens=False)["input_ids"]
    return torch.tensor(context_ids + [-1] + no_answer_ids)


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    prompts: list[list[int]],
    config: GenerationConfig,
    batch_size: int,
    contexts: list[str] | None = None,
    progress: bool = False,
) -> list[list[str]]:
    """Answers for every prompt (token ids), num_return_sequences of them each, in the prompts' order.

    Prompts are decoded longest first in left-padded batches (the first batch then shows at once
    whether memory suffices). With `contexts`, answers are constrained to spans of them.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    num_return = config.num_return_sequences or 1
    stop_ids = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[list[str]] = [[] for _ in prompts]
    for first in tqdm(range(0, len(order), batch_size), disable=not progress, desc="generating", unit="batch"):
        batch = order[first : first + batch_size]
        # left padding: every prompt ends where generation starts
        padded = tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, padding_side="left", return_tensors="pt")
        input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]  # (B, T)
        longest = input_ids.shape[1]
        processors = LogitsProcessorList()
        if contexts is not None:
            rows_per_prompt = max(num_return, config.num_beams or 1)
            spans = [answer_span_ids(tokenizer, contexts[i]) for i in batch]
            processors.append(ContextSpanLogitsProcessor(spans, rows_per_prompt, longest, stop_ids))
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=config,
            logits_processor=processors,
        )  # (B * num_return, longest + new)
        texts = tokenizer.batch_decode(output[:, longest:], skip_special_tokens=True)
        for row, text in enumerate(texts):
            answers[batch[row // num_return]].append(prediction_from_generation(text))
    return answers


def build_prompts(examples, tokenizer, max_prompt_tokens: int) -> tuple[list[list[int]], int]:
    """Prompt ids for every example, the context cut from its end where needed; returns (prompts, num_cut)."""
    prompts, num_cut = [], 0
    for example in examples:
        ids, was_cut = encode_prompt(tokenizer, example["context"], example["question"], max_prompt_tokens)
        if ids is None:
            raise SquadDataError(
                f"question {example['id']!r}: the question alone is longer than the {max_prompt_tokens} prompt tokens "
                "left (the model's maximum length minus --max_new_tokens)"
            )
        prompts.append(ids)
        num_cut += was_cut
    return prompts, num_cut


def answer_questions(
    model,
    tokenizer,
    examples: list[dict],
    decoding: DecodingArguments,
    state,
    seed: int = 42,
    strategies: list[str] | None = None,
) -> dict:
    """{strategy: [{"id", "strategy", "sample", "prediction"}, ...]} for every example, over all processes.

    Each process answers its own contiguous shard; the rows are gathered once and come back in
    the examples' order, every id exactly once. strategies: default decoding.strategies.
    """
    max_prompt_tokens = (
        check_sequence_lengths(model, tokenizer, None, decoding.max_new_tokens) - decoding.max_new_tokens
    )
    stop_ids = stop_token_ids(tokenizer)
    results = {}
    with state.split_between_processes(examples) as shard:
        logger.info(
            "process %d of %d answers %d of %d questions",
            state.process_index,
            state.num_processes,
            len(shard),
            len(examples),
        )
        prompts, num_cut = build_prompts(shard, tokenizer, max_prompt_tokens)
        if num_cut:
            logger.warning(
                "%d context(s) longer than %d prompt tokens were cut from their end", num_cut, max_prompt_tokens
            )
        for strategy in strategies or decoding.strategies:
            torch.manual_seed(seed + state.process_index)  # reproducible samples per shard
            config = generation_config(strategy, decoding, tokenizer, stop_ids)
            contexts = [ex["context"] for ex in shard] if decoding.constrain_to_context else None
            answers = generate_answers(
                model,
                tokenizer,
                prompts,
                config,
                decoding.generation_batch_size,
                contexts,
                progress=state.is_main_process,
            )
            rows = [
                {"id": ex["id"], "strategy": strategy, "sample": k, "prediction": text}
                for ex, texts in zip(shard, answers)
                for k, text in enumerate(texts)
            ]
            if state.num_processes > 1:
                from accelerate.utils import gather_object

                rows = gather_object(rows)
            results[strategy] = rows
    return results
