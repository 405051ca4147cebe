"""Decoding strategies and batched answer generation.

Strategies: greedy, top_k, top_p (nucleus), temperature and beam, with the logits processors (the context
constraint, the no-answer threshold) and the answers' confidences. Prompts (prompt.encode_questions) are sorted by
length, left-padded and decoded in batches with the KV cache (kv_cache.py); decoding stops at EOS or a newline. Greedy
and sampling run decode_live_rows, where an answer that has ended leaves the batch and its KV cache (the answers are
model.generate's); beam search is model.generate's own.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import NamedTuple

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from squad_lora.args import SAMPLING_STRATEGIES, DecodingArguments
from squad_lora.kv_cache import (
    PreallocatedLayer,
    cache_argument,
    grouped_kv_heads_in_sdpa,
    language_model,
    live_first,
    preallocated_cache,
    shared_context_inputs,
)
from squad_lora.prompt import EncodedQuestions, encode_questions, prediction_from_generation
from squad_lora.shared_context import context_groups
from squad_lora.windows import WINDOW_KEYS, best_window_rows, split_long_contexts

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
        return_dict_in_generate=True,
        output_logits=True,  # the raw logits, for answer_confidences
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
    once g is a span of the context or the whole no-answer string. Occurrences are found with one vectorised
    comparison of all length-m windows (unfold) per row and step.
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
                windows = span.unfold(0, m, 1) if span.numel() >= m else span[:0].view(0, m)  # (W, m)
                matches = (windows == generated[row]).all(dim=1)
                matches[separator + 2 :] = False
                starts = matches.nonzero().flatten()
                following = starts + m
                allowed = span[following[following < span.numel()]]
                # an answer may end where it is a whole span of the context, or the whole no-answer string: never
                # on a stub of that string ("un", "unanswer"), which is no span of the context
                whole_no_answer = bool((starts == separator + 1).any()) and m == span.numel() - separator - 1
                # no occurrence at all: the row has ended (a stop token is in it) and is only padded from here
                if bool((starts < separator).any()) or whole_no_answer or starts.numel() == 0:
                    allowed = torch.cat([allowed, self.stop_ids])
                allowed = allowed[allowed >= 0]
            mask[row, allowed.to(scores.device)] = 0
        return scores + mask


class NoAnswerThresholdProcessor(LogitsProcessor):
    """At an answer's first step, rule out the no-answer string's first token in rows where its probability is
    below `threshold`: those rows start a real answer instead. Later steps are left alone."""

    def __init__(self, token_id: int, threshold: float, prompt_length: int):
        self.token_id, self.threshold, self.prompt_length = token_id, threshold, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] != self.prompt_length:
            return scores
        unsure = scores.float().softmax(dim=-1)[:, self.token_id] < self.threshold
        ruled_out = torch.zeros_like(scores, dtype=torch.bool)
        ruled_out[unsure, self.token_id] = True
        return scores.masked_fill(ruled_out, float("-inf"))


def answer_confidences(output, prompt_length: int, stop_ids: list[int]) -> list[float]:
    """Per returned sequence: the geometric mean of the probabilities the model gave its generated tokens, up to
    and including the first stop token. From the raw logits, so sampling knobs and logits processors (the context
    constraint) do not change it; beam search's rows are followed through its beam indices."""
    generated = output.sequences[:, prompt_length:]  # (rows, steps)
    beams = getattr(output, "beam_indices", None)
    log_probs = torch.zeros(generated.shape, dtype=torch.float32, device=generated.device)
    every_row = torch.arange(generated.shape[0], device=generated.device)
    for step, logits in enumerate(output.logits[: generated.shape[1]]):
        rows = every_row if beams is None else beams[:, step].clamp(min=0)
        log_probs[:, step] = logits.float().log_softmax(-1)[rows, generated[:, step]]
    stops = torch.isin(generated, torch.tensor(stop_ids, device=generated.device)).int()
    counted = (stops.cumsum(1) - stops) == 0  # no stop token before this one
    return ((log_probs * counted).sum(1) / counted.sum(1)).exp().tolist()


def no_answer_probabilities(output, prompt_length: int, no_answer_token_id: int) -> list[float]:
    """Per returned sequence: the probability the model gave the no-answer string's first token at the answer's
    first step (the official SQuAD v2 na_prob), from the raw logits, so --no_answer_threshold and the context
    constraint do not change it; beam search's rows are followed to the beam they started from."""
    beams = getattr(output, "beam_indices", None)
    first = output.logits[0].float().softmax(-1)[:, no_answer_token_id]
    rows = torch.arange(output.sequences.shape[0], device=first.device) if beams is None else beams[:, 0].clamp(min=0)
    return first[rows].tolist()


@torch.inference_mode()
def generate_answers(model, tokenizer, questions: EncodedQuestions, config: GenerationConfig, plan, desc=None) -> tuple:
    """(answers, their confidences, their no-answer probabilities): num_return_sequences of each prompt, in the
    prompts' order. A confidence is answer_confidences', a no-answer probability no_answer_probabilities'; an
    'unanswerable' answer comes back as ''. plan: a plan.AnswerPlan (its batch size and
    no-answer threshold); desc: a progress bar's name (None: no bar).

    Prompts are decoded longest first in left-padded batches (the first batch then shows at once whether memory
    suffices); with shared lengths, the questions of one context are batched together and their shared tokens'
    keys and values computed once (shared_context_inputs).
    """
    from tqdm.auto import tqdm

    prompts = questions.prompts
    num_return = config.num_return_sequences or 1
    batches = question_batches(questions, plan)
    answers: list[list[str]] = [[] for _ in prompts]
    confidences: list[list[float]] = [[] for _ in prompts]
    no_answer: list[list[float]] = [[] for _ in prompts]
    for batch in tqdm(batches, disable=desc is None, desc=desc, unit="batch"):
        tokens, batch_confidences, batch_no_answer, rows = generate_batch(
            model, tokenizer, questions, batch, config, plan
        )
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        for row, (text, confidence, probability) in enumerate(zip(texts, batch_confidences, batch_no_answer)):
            answers[rows[row // num_return]].append(prediction_from_generation(text))
            confidences[rows[row // num_return]].append(confidence)
            no_answer[rows[row // num_return]].append(probability)
    return answers, confidences, no_answer


class BatchAnswers(NamedTuple):
    """One batch's answers: a row per returned sequence (num_return_sequences of each prompt, in order)."""

    token_ids: list[list[int]]  # each row's answer tokens
    confidences: list[float]
    no_answer_probabilities: list[float]
    prompts: list[int]  # the prompt index of each of the batch's prompts, whose rows follow in turn


def generate_batch(
    model, tokenizer, questions: EncodedQuestions, batch: list, config: GenerationConfig, plan
) -> BatchAnswers:
    """One batch's answers, the batch given as prompt indices or as shared_batches' groups. Beam search is
    model.generate's; greedy and sampling decode in decode_live_rows, which stops paying for finished answers."""
    device = next(model.parameters()).device
    rows_per_prompt = max(config.num_return_sequences or 1, config.num_beams or 1)
    cache = None
    if not isinstance(batch[0], tuple):  # prompt indices: no shared part
        # left padding: every prompt ends where generation starts
        padded = tokenizer.pad(
            {"input_ids": [questions.prompts[i] for i in batch]}, padding_side="left", return_tensors="pt"
        )
        input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]  # (B, T)
    else:
        input_ids, attention_mask, cache = shared_context_inputs(
            model, tokenizer, questions.prompts, batch, rows_per_prompt
        )
        batch = [i for _, indices in batch for i in indices]
    spans = None if questions.span_ids is None else [questions.span_ids[i] for i in batch]
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    if (config.num_beams or 1) > 1:
        prompt_length = input_ids.shape[1]
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=config,
            logits_processor=answer_processors(plan, spans, rows_per_prompt, prompt_length, config.eos_token_id),
            **({} if cache is None else {cache_argument(model): cache}),
        )  # sequences: (B * num_beams returned, prompt_length + new)
        return BatchAnswers(
            output.sequences[:, prompt_length:].tolist(),
            answer_confidences(output, prompt_length, config.eos_token_id),
            no_answer_probabilities(output, prompt_length, plan.no_answer_token_id),
            batch,
        )
    rows = torch.arange(len(batch), device=device).repeat_interleave(rows_per_prompt)
    return BatchAnswers(
        *decode_live_rows(model, input_ids[rows], attention_mask[rows], cache, config, plan, spans, rows), batch
    )


def answer_processors(
    plan, spans, rows_per_prompt: int, prompt_length: int, stop_ids: list[int]
) -> LogitsProcessorList:
    """The logits processors every strategy applies, in this order: the no-answer threshold (it reads the model's
    own probabilities, before any constraint), then the context constraint where spans are given."""
    processors = LogitsProcessorList()
    if plan.no_answer_threshold is not None:
        processors.append(NoAnswerThresholdProcessor(plan.no_answer_token_id, plan.no_answer_threshold, prompt_length))
    if spans is not None:
        processors.append(ContextSpanLogitsProcessor(spans, rows_per_prompt, prompt_length, stop_ids))
    return processors


def sampling_warpers(config: GenerationConfig) -> LogitsProcessorList:
    """Temperature, top-k and top-p as model.generate applies them (after the logits processors, in this order)."""
    warpers = LogitsProcessorList()
    if config.do_sample and config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.do_sample and config.top_k:
        warpers.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
    if config.do_sample and config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    return warpers


def decode_live_rows(model, input_ids, attention_mask, cache, config: GenerationConfig, plan, spans, prompt_of_row):
    """Greedy or sampled decoding of left-padded rows (cache: the KV cache of their first tokens, or None) that stops
    computing a row once its answer has ended: finished rows leave the batch and the KV cache (PreallocatedLayer moves
    the last live rows into their places), and decoding ends with the longest live answer. Returns, per row, its answer
    token ids (up to and including the stop token), the geometric mean of the raw probabilities of those tokens
    (answer_confidences) and the raw probability of the no-answer token at the first step.

    Each step computes what model.generate computes for a live row (the same logits processors, then temperature,
    top-k and top-p, argmax or one multinomial draw), so greedy answers are model.generate's; sampled answers have
    its distribution (the random stream differs once rows leave)."""
    lm = language_model(model)
    device, num_rows = input_ids.device, input_ids.shape[0]
    stop_ids = torch.tensor(config.eos_token_id, device=device)
    warpers = sampling_warpers(config)
    cache_name = cache_argument(lm)
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.forward).parameters else {}
    cache = preallocated_cache(lm) if cache is None else cache
    live = torch.arange(num_rows, device=device)  # the row each place of the batch holds
    tokens: list[list[int]] = [[] for _ in range(num_rows)]
    log_probs = torch.zeros(num_rows, device=device)
    no_answer = torch.zeros(num_rows, device=device)
    generated = input_ids[:, :0]  # the live rows' answers so far
    step_ids = input_ids[:, cache.get_seq_length() :]  # the tokens the cache does not hold yet
    for layer in cache.layers:  # room for the prompts' own tokens and the answers: no copy of the cache per step
        if isinstance(layer, PreallocatedLayer):
            layer.reserve(step_ids.shape[1] + config.max_new_tokens)
    for step in range(config.max_new_tokens):
        # positions follow the real tokens (the shared-context rows are padded in two places), as in generate()
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
        with grouped_kv_heads_in_sdpa(device if step == 0 else None):
            output = lm(
                input_ids=step_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=True,
                **keep_last,
                **{cache_name: cache},
            )
        logits = output.logits[:, -1].float()
        if step == 0:
            no_answer[live] = logits.softmax(-1)[:, plan.no_answer_token_id]
        live_spans = None if spans is None else [spans[int(prompt_of_row[row])] for row in live]
        scores = answer_processors(plan, live_spans, 1, 0, config.eos_token_id)(generated, logits)
        if config.do_sample:
            next_ids = torch.multinomial(warpers(generated, scores).softmax(-1), num_samples=1).squeeze(1)
        else:
            next_ids = scores.argmax(-1)
        log_probs[live] += logits.log_softmax(-1).gather(1, next_ids[:, None]).squeeze(1)
        for row, token in zip(live.tolist(), next_ids.tolist()):
            tokens[row].append(token)
        ongoing = ~torch.isin(next_ids, stop_ids)
        if step + 1 == config.max_new_tokens or not ongoing.any():
            break
        if not ongoing.all():
            order = live_first(ongoing)
            cache.batch_select_indices(order)
            live, attention_mask, generated, next_ids = (
                live[order],
                attention_mask[order],
                generated[order],
                next_ids[order],
            )
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(live), 1)], dim=1)
        generated = torch.cat([generated, next_ids[:, None]], dim=1)
        step_ids = next_ids[:, None]
    confidences = (log_probs / torch.tensor([len(t) for t in tokens], device=device)).exp()
    return tokens, confidences.tolist(), no_answer.tolist()


def question_batches(questions: EncodedQuestions, plan) -> list[list]:
    """The batches the prompts are answered in: lists of prompt indices (no shared part), longest prompt first,
    plan.unshared_batch_size at a time; and, with shared contexts, shared_batches' groups, plan.batch_size questions
    at a time. Unless the plan shares lone questions, a context with one question in this shard goes unshared:
    its cache would hold one row, at the cost of a second prefill and the batch-size-64 padding."""
    prompts = questions.prompts
    if questions.shared_lengths is None:
        groups = []
        lone = list(range(len(prompts)))
    else:
        keys = [tuple(prompt[:n]) for prompt, n in zip(prompts, questions.shared_lengths)]
        groups = context_groups(questions.shared_lengths, keys)
        lone = [] if plan.share_lone_questions else [indices[0] for indices in groups if len(indices) == 1]
        groups = [indices for indices in groups if len(indices) > 1 or plan.share_lone_questions]
    order = sorted(lone, key=lambda i: -len(prompts[i]))
    size = plan.unshared_batch_size
    unshared = [order[first : first + size] for first in range(0, len(order), size)]
    return shared_batches(prompts, questions.shared_lengths, groups, plan.batch_size) + unshared


def shared_batches(
    prompts: list[list[int]], shared_lengths: list[int], groups: list[list[int]], batch_size: int
) -> list[list[tuple]]:
    """Batches of at most batch_size questions, each a list of (shared length, prompt indices) groups whose
    prompts start with the same shared tokens (context_groups'); longest shared part first, a group larger than a
    batch cut into batch-size pieces. A prompt that shares nothing is a group of one with all but its last token
    "shared"."""
    pieces = []
    for indices in groups:
        n = shared_lengths[indices[0]] or len(prompts[indices[0]]) - 1
        pieces += [(n, indices[k : k + batch_size]) for k in range(0, len(indices), batch_size)]
    pieces.sort(key=lambda piece: -piece[0])
    batches: list[list[tuple]] = []
    room = 0
    for n, indices in pieces:
        if batches and len(indices) <= room:
            batches[-1].append((n, indices))
            room -= len(indices)
        else:
            batches.append([(n, indices)])
            room = batch_size - len(indices)
    return batches


def answer_questions(
    model, tokenizer, examples: list[dict], plan, state, seed: int = 42, progress: bool = True
) -> dict:
    """{strategy: [{"id", "strategy", "sample", "prediction", "confidence", "no_answer_probability"}, ...]} for
    every example, over all processes, as a plan.AnswerPlan says. With its min_answer_confidence, a less confident
    answer becomes ''.

    Each process answers its own shard of whole contexts (context_shards); the rows are gathered once and come
    back in the examples' order, every id exactly once (but a question too long for any prompt: none). A context
    longer than the plan's window is answered in overlapping windows, the most confident answer kept
    (windows.py); its rows say which window answered ("window", None where every window abstained, of
    "windows"). progress: a bar per strategy on the main process.
    """
    shard = [examples[i] for i in context_shards(examples, state.num_processes)[state.process_index]]
    logger.info(
        "process %d of %d answers %d of %d questions",
        state.process_index,
        state.num_processes,
        len(shard),
        len(examples),
    )
    questions, shard = encode_questions(split_long_contexts(shard, tokenizer, plan), tokenizer, plan)
    position = {ex["id"]: i for i, ex in enumerate(examples)}
    results = {}
    for strategy, config in plan.generation_configs.items():
        torch.manual_seed(seed + state.process_index)  # reproducible samples per shard
        desc = f"answering ({strategy})" if progress and state.is_main_process else None
        answers, confidences, no_answer = generate_answers(model, tokenizer, questions, config, plan, desc)
        rows = prediction_rows(shard, strategy, answers, confidences, no_answer, plan.min_answer_confidence)
        rows = best_window_rows(rows)
        if state.num_processes > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)
        results[strategy] = sorted(rows, key=lambda row: position[row["id"]])  # stable: samples stay in order
    return results


def prediction_rows(
    examples, strategy: str, answers, confidences, no_answer, min_confidence: float | None
) -> list[dict]:
    """The rows predictions files hold, one per sample (and per window of a long context: best_window_rows keeps
    one); below min_confidence an answer is '' (abstained)."""
    return [
        {
            "id": ex["id"],
            "strategy": strategy,
            "sample": k,
            "prediction": "" if min_confidence is not None and confidence < min_confidence else text,
            "confidence": confidence,
            "no_answer_probability": probability,
            **{key: ex[key] for key in WINDOW_KEYS if key in ex},
        }
        for ex, texts, scores, probabilities in zip(examples, answers, confidences, no_answer)
        for k, (text, confidence, probability) in enumerate(zip(texts, scores, probabilities))
    ]


def context_shards(examples: list[dict], num_processes: int) -> list[list[int]]:
    """Example indices per process: whole contexts (every question of a context on one process, so that its
    questions can share it), each process about len(examples) / num_processes questions, in order."""
    contexts = [ex["context"] for ex in examples]
    shards: list[list[int]] = [[] for _ in range(num_processes)]
    start = 0
    for group in context_groups([1] * len(examples), contexts):
        shards[start * num_processes // len(examples)].extend(group)  # the process where the context starts
        start += len(group)
    return shards
