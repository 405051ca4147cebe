"""squad_lora.decoding on hand-built inputs: prompts cut to fit, the stop tokens, the context-span constraint,
the strategies' configs and long contexts in windows (generation end to end is in test_generate.py)."""

import dataclasses
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from builders import answer_plan, generate_with, tiny_model
from repo_paths import DEV_FILE, TINY_GPT2_DIR
from squad_lora.args import DecodingArguments
from squad_lora.decoding import (
    ContextSpanLogitsProcessor,
    NoAnswerThresholdProcessor,
    generation_config,
    prediction_rows,
    stop_token_ids,
)
from squad_lora.errors import SquadDataError
from squad_lora.prompt import NO_ANSWER, build_prompts, prediction_from_generation
from squad_lora.windows import best_window_rows, split_long_contexts, window_spans

STOP = [0, 9]  # EOS and a newline token (for the processor: any ids do)
# context tokens 5 7 5 8, the separator, then the no-answer string's tokens 6 7 3
SPAN = torch.tensor([5, 7, 5, 8, -1, 6, 7, 3])
PROMPT = [1, 2]  # two prompt tokens before the answer


# ---------------------------------------------------------------------------
# Prompts and stop tokens
# ---------------------------------------------------------------------------

QUESTION = "Which river is it?"
LONG_CONTEXT = " ".join(f"Fact number {i} is about the river." for i in range(40))


def unanswered(id_, context, question=QUESTION):
    return {
        "id": id_,
        "title": "",
        "context": context,
        "question": question,
        "answers": {"text": [], "answer_start": []},
    }


def test_too_long_context_is_cut_from_its_end(tiny_tokenizer):
    tokenizer = tiny_tokenizer
    examples = [unanswered("long", LONG_CONTEXT), unanswered("short", "The river is the Ilvar.")]
    prompts, num_cut = build_prompts(examples, tokenizer, 64 - 8)
    assert num_cut == 1 and len(prompts[0]) <= 56
    text = tokenizer.decode(prompts[0])
    assert text.endswith(f"\nQuestion: {QUESTION}\nAnswer:")  # the question is kept whole
    kept = text[len("Context: ") : -len(f"\nQuestion: {QUESTION}\nAnswer:")]
    assert len(kept) > 10 and LONG_CONTEXT.startswith(kept)  # the context's start is kept, its end cut
    assert tokenizer.decode(prompts[1]).startswith("Context: The river is the Ilvar.\n")

    with pytest.raises(SquadDataError, match="question 'long': the question alone is longer than the 56 prompt tokens"):
        build_prompts([unanswered("long", LONG_CONTEXT, question=LONG_CONTEXT)], tokenizer, 56)


def test_stop_tokens_are_eos_and_every_token_holding_a_newline(tiny_tokenizer):
    stops = stop_token_ids(tiny_tokenizer)
    assert isinstance(stops, tuple) and stops[0] == tiny_tokenizer.eos_token_id
    newline_tokens = [i for i in range(len(tiny_tokenizer)) if "\n" in tiny_tokenizer.decode([i])]
    assert newline_tokens and set(stops[1:]) == set(newline_tokens)
    assert stop_token_ids(tiny_tokenizer) is stops  # decoded once per tokenizer


# ---------------------------------------------------------------------------
# --constrain_to_context
# ---------------------------------------------------------------------------


def allowed_after(answer_so_far: list[int], span=SPAN) -> set[int]:
    processor = ContextSpanLogitsProcessor([span], rows_per_prompt=1, prompt_length=len(PROMPT), stop_ids=STOP)
    scores = processor(torch.tensor([PROMPT + answer_so_far]), torch.zeros(1, 10))
    return {i for i in range(10) if scores[0, i] > -math.inf}


def test_first_token_is_a_context_token_or_the_no_answer_start():
    assert allowed_after([]) == {5, 7, 8, 6}  # not 3 (inside the no-answer string), no stop: an empty answer


def test_next_token_follows_an_occurrence_in_the_context():
    assert allowed_after([5]) == {7, 8} | set(STOP)  # both occurrences of 5 count
    assert allowed_after([5, 7]) == {5} | set(STOP)
    assert allowed_after([5, 8]) == set(STOP)  # the context ends: only a stop
    assert allowed_after([6]) == {7}  # a stub of the no-answer string cannot end there
    assert allowed_after([6, 7, 3]) == set(STOP)


def test_context_word_does_not_continue_into_the_no_answer_string():
    # 7 occurs in the context (followed by 5) and inside the no-answer string (followed by 3)
    assert allowed_after([7]) == {5} | set(STOP)
    assert allowed_after([8]) == set(STOP)  # across the separator is no span


def test_rows_of_one_prompt_share_its_span():
    other = torch.tensor([4, 4, -1, 6])
    processor = ContextSpanLogitsProcessor([SPAN, other], rows_per_prompt=2, prompt_length=1, stop_ids=STOP)
    scores = processor(torch.tensor([[1], [1], [1], [1]]), torch.zeros(4, 10))
    allowed = [{i for i in range(10) if row[i] > -math.inf} for row in scores]
    assert allowed == [{5, 7, 8, 6}, {5, 7, 8, 6}, {4, 6}, {4, 6}]


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------


def test_each_strategy_changes_only_its_own_knob(tiny_tokenizer):
    args = DecodingArguments(
        strategies=["greedy,beam", "top_k", "top_p", "temperature"],
        num_samples=3,
        top_k=7,
        top_p=0.5,
        temperature=0.3,
        num_beams=5,
        max_new_tokens=9,
    )
    assert args.strategies == ["greedy", "beam", "top_k", "top_p", "temperature"]
    configs = {s: generation_config(s, args, tiny_tokenizer, STOP) for s in args.strategies}
    assert not configs["greedy"].do_sample and configs["greedy"].num_beams == 1
    assert not configs["beam"].do_sample and configs["beam"].num_beams == 5
    assert configs["greedy"].num_return_sequences == configs["beam"].num_return_sequences == 1
    sampled = {s: (c.top_k, c.top_p, c.temperature) for s, c in configs.items() if c.do_sample}
    assert sampled == {"top_k": (7, 1.0, 1.0), "top_p": (0, 0.5, 1.0), "temperature": (0, 1.0, 0.3)}
    for config in configs.values():
        assert config.eos_token_id == STOP and config.max_new_tokens == 9
    assert all(configs[s].num_return_sequences == 3 for s in sampled)


# ---------------------------------------------------------------------------
# The no-answer threshold (SQuAD v2)
# ---------------------------------------------------------------------------


def test_the_no_answer_threshold_acts_at_the_first_step_only():
    processor = NoAnswerThresholdProcessor(token_id=2, threshold=0.5, prompt_length=2)
    scores = torch.log(torch.tensor([[0.1, 0.3, 0.6], [0.1, 0.5, 0.4]]))  # p(no answer): 0.6 and 0.4
    first = processor(torch.tensor([PROMPT, PROMPT]), scores.clone())
    assert first[0, 2] == scores[0, 2] and first[1, 2] == -math.inf  # 0.4 < 0.5: that row starts an answer
    assert torch.equal(first[:, :2], scores[:, :2])
    later = processor(torch.tensor([PROMPT + [1], PROMPT + [1]]), scores.clone())  # a later step: untouched
    assert torch.equal(later, scores)


@pytest.mark.parametrize("share", [False, True])
def test_answers_start_with_no_answer_only_above_the_threshold(tiny_tokenizer, share):
    from squad_lora.prompt import shared_prefix_lengths

    model = tiny_model("gpt2", tiny_tokenizer)
    first = tiny_tokenizer(" " + NO_ANSWER, add_special_tokens=False)["input_ids"][0]
    # a model that gives the no-answer string's first token about 0.8 at every step (random tiny logits are near 0)
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits.index_add(
        -1, torch.tensor([first]), torch.full((*logits.shape[:-1], 1), 8.0)))  # fmt: skip
    rows = [unanswered(str(i), f"The river number {i} is the Ilvar.", q) for i in range(3) for q in ("Which?", "Who?")]
    prompts, _ = build_prompts(rows, tiny_tokenizer, 200)
    shared = shared_prefix_lengths(tiny_tokenizer, [row["question"] for row in rows], prompts) if share else None
    config = generation_config(
        "greedy", DecodingArguments(max_new_tokens=3), tiny_tokenizer, stop_token_ids(tiny_tokenizer)
    )

    def answers(threshold):
        found, _, _ = generate_with(model, tiny_tokenizer, prompts, config, 4, None, threshold, shared)
        return [answer[0] for answer in found]

    # the tiny tokenizer's no-answer string starts with a lone space: favoured at every step, it makes an answer of
    # spaces (an empty prediction), unless the first step rules it out
    assert answers(None) == answers(0.5) == [""] * len(rows)
    assert all(answers(0.9))


# ---------------------------------------------------------------------------
# Answer confidence (SQuAD v2's --min_answer_confidence)
# ---------------------------------------------------------------------------


def test_confidence_counts_the_tokens_up_to_the_first_stop_and_follows_beams():
    from types import SimpleNamespace

    from squad_lora.decoding import answer_confidences

    # two rows, prompt [1, 2]; vocabulary of 4; row 0 answers 3 then stops (0), row 1 answers 3, 3 (no stop)
    probs = [
        torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]),  # step 0 of beams 0 and 1
        torch.tensor([[0.5, 0.1, 0.1, 0.3], [0.25, 0.25, 0.25, 0.25]]),  # step 1
        torch.tensor([[0.9, 0.0, 0.0, 0.1], [0.9, 0.0, 0.0, 0.1]]),  # step 2 (row 0's padding after its stop)
    ]
    output = SimpleNamespace(
        sequences=torch.tensor([[1, 2, 3, 0, 0], [1, 2, 3, 3, 3]]),
        logits=tuple(p.log() + 5.0 for p in probs),  # unnormalised, as models give them
    )
    mean = answer_confidences(output, 2, [0])
    assert mean == pytest.approx([(0.4 * 0.5) ** (1 / 2), (0.1 * 0.25 * 0.1) ** (1 / 3)])
    # beam search: returned row 0 took beam 1 at step 0, then beam 0; -1 marks steps after it ended
    output.beam_indices = torch.tensor([[1, 0, -1], [0, 1, 1]])
    assert answer_confidences(output, 2, [0]) == pytest.approx([(0.1 * 0.5) ** (1 / 2), (0.4 * 0.25 * 0.1) ** (1 / 3)])


def teacher_forced_confidence(model, prompt: list[int], answer: list[int]) -> float:
    """exp(mean log p(answer token | everything before)), from one forward pass over prompt + answer."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1]
    log_probs = logits.float().log_softmax(-1)[torch.arange(len(answer)), torch.tensor(answer)]
    return log_probs.mean().exp().item()


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_confidence_is_the_answers_own_probability(tiny_tokenizer, strategy):
    model = tiny_model("gpt2", tiny_tokenizer).eval()
    rows = [unanswered(str(i), f"The river number {i} is the Ilvar, {i * 7} km long.", QUESTION) for i in range(3)]
    prompts, _ = build_prompts(rows, tiny_tokenizer, 200)
    stop_ids = stop_token_ids(tiny_tokenizer)
    decoding = DecodingArguments(max_new_tokens=5, num_beams=3)
    config = generation_config(strategy, decoding, tiny_tokenizer, stop_ids)
    _, confidences, _ = generate_with(model, tiny_tokenizer, prompts, config, 1)
    for prompt, (confidence,) in zip(prompts, confidences):
        with torch.no_grad():
            output = model.generate(torch.tensor([prompt]), generation_config=config)
            sequence = output.sequences[0, len(prompt) :].tolist()
        stop = next((i for i, token in enumerate(sequence) if token in stop_ids), len(sequence) - 1)
        assert 0 < confidence < 1
        assert confidence == pytest.approx(teacher_forced_confidence(model, prompt, sequence[: stop + 1]), rel=1e-4)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_the_no_answer_probability_is_the_first_steps_probability_of_the_no_answer_token(tiny_tokenizer, strategy):
    model = tiny_model("gpt2", tiny_tokenizer).eval()
    rows = [unanswered(str(i), f"The river number {i} is the Ilvar, {i * 7} km long.", QUESTION) for i in range(3)]
    prompts, _ = build_prompts(rows, tiny_tokenizer, 200)
    config = generation_config(strategy, DecodingArguments(max_new_tokens=3, num_beams=3), tiny_tokenizer, [0])
    token_id = tiny_tokenizer(" " + NO_ANSWER, add_special_tokens=False)["input_ids"][0]
    # a threshold of 1 rules the no-answer token out: the probability still comes from the raw logits
    for threshold in (None, 1.0):
        _, _, probabilities = generate_with(model, tiny_tokenizer, prompts, config, 2, no_answer_threshold=threshold)
        for prompt, (probability,) in zip(prompts, probabilities):
            with torch.no_grad():
                expected = model(torch.tensor([prompt])).logits[0, -1].float().softmax(-1)[token_id].item()
            assert probability == pytest.approx(expected, rel=1e-4)


def test_answers_below_the_minimum_confidence_become_no_answer(tiny_tokenizer):
    from accelerate import PartialState

    from squad_lora.decoding import answer_questions

    model = tiny_model("gpt2", tiny_tokenizer).eval()
    rows = [unanswered(str(i), f"The river number {i} is the Ilvar.", q) for i in range(3) for q in ("Which?", "Who?")]

    def answered(floor):
        plan = answer_plan(tiny_tokenizer, model, max_new_tokens=4, min_answer_confidence=floor)
        return answer_questions(model, tiny_tokenizer, rows, plan, PartialState(), progress=False)["greedy"]

    free = answered(None)
    assert all(row["prediction"] for row in free)  # a random tiny model always says something
    middle = sorted(row["confidence"] for row in free)[len(free) // 2]
    assert answered(0.0) == free
    kept = answered(middle)
    assert [row["confidence"] for row in kept] == [row["confidence"] for row in free]
    assert [row["prediction"] for row in kept] == [
        row["prediction"] if row["confidence"] >= middle else "" for row in free
    ]
    assert any(row["prediction"] == "" for row in kept) and any(row["prediction"] for row in kept)


# ---------------------------------------------------------------------------
# Decoding that stops paying for finished answers
# ---------------------------------------------------------------------------


def dev_prompts(tokenizer, count: int = 14):
    from squad_lora.data import load_squad_file
    from squad_lora.prompt import shared_prefix_lengths

    rows, _ = load_squad_file(DEV_FILE)
    rows = rows[:count]  # contexts of 6, 5 and 3 questions
    prompts, _ = build_prompts(rows, tokenizer, 400)
    shared = shared_prefix_lengths(tokenizer, [row["question"] for row in rows], prompts)
    return rows, prompts, shared


def varied_stops(model, tokenizer, prompts, processors=lambda prompt: None) -> list[int]:
    """EOS and tokens of the prompts' unstopped greedy answers, added while they make more answer lengths: a random
    tiny model then ends its answers at different steps."""
    config = generation_config("greedy", DecodingArguments(max_new_tokens=8), tokenizer, [tokenizer.eos_token_id])
    free = generate_one_at_a_time(model, tokenizer, prompts, config, processors)

    def lengths(stops):
        return {next((i + 1 for i, token in enumerate(ids) if token in stops), len(ids)) for ids in free}

    stops = {tokenizer.eos_token_id}
    for token in dict.fromkeys(token for ids in free for token in ids[1:]):
        if len(lengths(stops | {token})) > len(lengths(stops)):
            stops.add(token)
    return sorted(stops)


def generate_one_at_a_time(model, tokenizer, prompts, config, processors=lambda prompt: None) -> list[list[int]]:
    """model.generate on each prompt alone: its answer token ids, up to and including the first stop token."""
    answers = []
    for prompt in prompts:
        with torch.no_grad():
            output = model.generate(
                torch.tensor([prompt]), generation_config=config, logits_processor=processors(prompt)
            )
        sequence = output.sequences[0, len(prompt) :].tolist()
        stop = next((i for i, token in enumerate(sequence) if token in config.eos_token_id), len(sequence) - 1)
        answers.append(sequence[: stop + 1])
    return answers


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("constrain", [False, True])
def test_greedy_answers_are_model_generates_whatever_rows_have_left(architecture, constrain, tiny_tokenizer):
    from squad_lora.decoding import answer_processors
    from squad_lora.prompt import answer_span_ids

    model = tiny_model(architecture, tiny_tokenizer)
    rows, prompts, shared = dev_prompts(tiny_tokenizer)
    plan = answer_plan(tiny_tokenizer, model)
    spans = {tuple(p): answer_span_ids(tiny_tokenizer, row["context"]) for p, row in zip(prompts, rows)}

    def processors(stops):  # the constraint for one prompt alone, as generate_batch builds it
        return lambda prompt: answer_processors(
            plan, [spans[tuple(prompt)]] if constrain else None, 1, len(prompt), stops
        )

    stops = varied_stops(model, tiny_tokenizer, prompts, processors([tiny_tokenizer.eos_token_id]))
    config = generation_config("greedy", DecodingArguments(max_new_tokens=8), tiny_tokenizer, stops)
    expected_ids = generate_one_at_a_time(model, tiny_tokenizer, prompts, config, processors(stops))
    expected = [
        [prediction_from_generation(tiny_tokenizer.decode(ids, skip_special_tokens=True))] for ids in expected_ids
    ]
    if architecture == "llama":  # the random tiny GPT-2 repeats one token: its answers are all as long
        assert len({len(ids) for ids in expected_ids}) >= 3  # answers end at different steps: rows leave mid-batch
    contexts = [row["context"] for row in rows] if constrain else None
    for share in (None, shared):
        got, confidences, _ = generate_with(model, tiny_tokenizer, prompts, config, 5, contexts, shared=share)
        assert got == expected
        for prompt, ids, (confidence,) in zip(prompts, expected_ids, confidences):
            assert confidence == pytest.approx(teacher_forced_confidence(model, prompt, ids), rel=1e-4)


def test_a_finished_answer_leaves_the_batch(tiny_tokenizer):
    model = tiny_model("llama", tiny_tokenizer)
    _, prompts, shared = dev_prompts(tiny_tokenizer)
    stops = varied_stops(model, tiny_tokenizer, prompts)
    config = generation_config("greedy", DecodingArguments(max_new_tokens=8), tiny_tokenizer, stops)
    answer_ids = generate_one_at_a_time(model, tiny_tokenizer, prompts, config)
    rows_per_call = []
    forward = model.forward

    def counting_forward(*args, **kwargs):
        rows_per_call.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    model.forward = counting_forward
    generate_with(model, tiny_tokenizer, prompts, config, len(prompts), shared=shared)
    # one batch: a call per token of the longest answer, each on the rows whose answers go on
    assert len(rows_per_call) == max(len(ids) for ids in answer_ids)
    assert rows_per_call == [sum(len(ids) > step for ids in answer_ids) for step in range(len(rows_per_call))]
    assert rows_per_call[-1] < rows_per_call[0]


@pytest.mark.parametrize("strategy", ["top_k", "top_p", "temperature"])
def test_one_prompts_samples_are_model_generates_for_the_same_seed(strategy, tiny_tokenizer):
    model = tiny_model("gpt2", tiny_tokenizer)
    _, prompts, _ = dev_prompts(tiny_tokenizer, 3)
    decoding = DecodingArguments(strategy=strategy, top_k=20, top_p=0.8, temperature=1.5, max_new_tokens=6)
    config = generation_config(strategy, decoding, tiny_tokenizer, stop_token_ids(tiny_tokenizer))
    for seed in (0, 1):
        torch.manual_seed(seed)
        longest_first = sorted(prompts, key=lambda prompt: -len(prompt))  # generate_answers' order
        expected = dict(
            zip(map(tuple, longest_first), generate_one_at_a_time(model, tiny_tokenizer, longest_first, config))
        )
        torch.manual_seed(seed)
        got, _, _ = generate_with(model, tiny_tokenizer, prompts, config, 1)
        decoded = [
            [prediction_from_generation(tiny_tokenizer.decode(expected[tuple(p)], skip_special_tokens=True))]
            for p in prompts
        ]
        assert got == decoded


# ---------------------------------------------------------------------------
# Long contexts in windows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("window, stride", [(50, 10), (37, 0), (64, 63), (120, 30)])
def test_windows_are_the_tokenizers_overflowing_chunks(window, stride, tiny_tokenizer):
    """run_qa.py's --doc_stride is the tokenizer's stride: the tokens each chunk shares with the one before."""
    ids = tiny_tokenizer(LONG_CONTEXT, add_special_tokens=False)["input_ids"]
    chunks = tiny_tokenizer(LONG_CONTEXT, add_special_tokens=False, truncation=True, max_length=window, stride=stride,
                            return_overflowing_tokens=True)["input_ids"]  # fmt: skip
    assert [ids[lo:hi] for lo, hi in window_spans(len(ids), window, stride)] == chunks and len(chunks) > 1
    assert window_spans(len(ids), len(ids), stride) == [(0, len(ids))]  # a context that fits is one window


def test_only_contexts_longer_than_the_window_are_split(tiny_tokenizer):
    plan = answer_plan(tiny_tokenizer, tiny_model("gpt2", tiny_tokenizer).config, max_context_tokens=120, doc_stride=30)
    short = unanswered("short", "The river is the Ilvar.")
    asked = split_long_contexts([unanswered("a", LONG_CONTEXT), short, unanswered("b", LONG_CONTEXT, "Why?")],
                                tiny_tokenizer, plan)  # fmt: skip
    ids = tiny_tokenizer(LONG_CONTEXT, add_special_tokens=False)["input_ids"]
    windows = 1 + math.ceil((len(ids) - 120) / (120 - 30))
    assert [ex["id"] for ex in asked] == ["a"] * windows + ["short"] + ["b"] * windows
    assert asked[windows] is short  # asked as it is
    assert [ex["window"] for ex in asked[:windows]] == list(range(windows)) and asked[0]["windows"] == windows
    texts = [tiny_tokenizer.decode(ids[lo:hi]).strip() for lo, hi in window_spans(len(ids), 120, 30)]
    assert [ex["context"] for ex in asked[:windows]] == texts == [ex["context"] for ex in asked[windows + 1 :]]
    overlap = tiny_tokenizer.decode(ids[90:120]).strip()  # 30 tokens in the first window and the second
    assert texts[0].endswith(overlap) and texts[1].startswith(overlap) and LONG_CONTEXT.endswith(texts[-1])


def window_row(id_, window, prediction, confidence, no_answer, sample=0):
    return {"id": id_, "strategy": "greedy", "sample": sample, "prediction": prediction, "confidence": confidence,
            "no_answer_probability": no_answer, "window": window, "windows": 3}  # fmt: skip


def test_the_most_confident_answering_window_is_kept_and_no_answer_only_when_every_window_abstains():
    whole = {"id": "short", "strategy": "greedy", "sample": 0, "prediction": "", "confidence": 0.2,
             "no_answer_probability": 0.9}  # fmt: skip
    rows = [
        window_row("q", 0, "", 0.95, 0.8),  # the most confident window says "no answer": the others still count
        window_row("q", 1, "Lyon", 0.4, 0.3),
        window_row("q", 2, "Paris", 0.6, 0.5),
        window_row("q", 0, "Nice", 0.3, 0.8, sample=1),
        window_row("q", 1, "Metz", 0.7, 0.3, sample=1),
        window_row("q", 2, "", 0.1, 0.5, sample=1),
        whole,
        window_row("v2", 0, "", 0.5, 0.7),
        window_row("v2", 1, "", 0.9, 0.6),
        window_row("v2", 2, "", 0.2, 0.95),
    ]
    kept = best_window_rows(rows)
    assert [(row["id"], row["sample"], row["prediction"], row.get("window", "-")) for row in kept] == [
        ("q", 0, "Paris", 2), ("q", 1, "Metz", 1), ("short", 0, "", "-"), ("v2", 0, "", None)
    ]  # fmt: skip
    assert kept[2] == whole  # a context answered whole passes as it is
    # the least no-answer probability of a question's windows, as run_qa.py keeps the least null score
    assert [row["no_answer_probability"] for row in kept] == [0.3, 0.3, 0.9, 0.6]
    assert [row["confidence"] for row in kept] == [0.6, 0.7, 0.2, 0.9]


def test_a_window_below_the_minimum_confidence_abstains_before_the_best_is_chosen():
    examples = [{"id": "q", "window": k, "windows": 3} for k in range(3)]
    rows = prediction_rows(examples, "greedy", [["Lyon"], ["Paris"], [""]], [[0.5], [0.3], [0.9]], [[0.2]] * 3, 0.4)
    assert [row["prediction"] for row in best_window_rows(rows)] == ["Lyon"]
    rows = prediction_rows(examples, "greedy", [["Lyon"], ["Paris"], [""]], [[0.5], [0.3], [0.9]], [[0.2]] * 3, 0.6)
    assert [(row["prediction"], row["window"]) for row in best_window_rows(rows)] == [("", None)]


@pytest.mark.parametrize("strategy", ["greedy", "beam", "top_k"])
def test_each_window_is_read_once_for_all_its_questions_and_the_best_answer_kept(strategy, tiny_tokenizer, monkeypatch):
    from accelerate import PartialState

    from squad_lora import kv_cache
    from squad_lora.decoding import answer_questions

    torch.manual_seed(0)  # weights at save_random_gpt2's scale: answers that differ from window to window
    model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR, initializer_range=0.2)).eval()
    questions = ["Which river is it?", "What is fact 30 about?", "Where is it?"]
    examples = [unanswered(f"q{i}", LONG_CONTEXT, q) for i, q in enumerate(questions)]
    examples.append(unanswered("short", "The river is the Ilvar."))
    plan = answer_plan(tiny_tokenizer, model, strategy=strategy, num_samples=2, num_beams=2, max_new_tokens=4,
                       max_context_tokens=120, doc_stride=30, share_context="true")  # fmt: skip
    windows = sorted({ex["context"] for ex in split_long_contexts(examples, tiny_tokenizer, plan)})
    read = []
    original = kv_cache.context_cache

    def reading(model, input_ids, attention_mask):
        read.extend(tiny_tokenizer.batch_decode(input_ids, skip_special_tokens=True))
        return original(model, input_ids, attention_mask)

    monkeypatch.setattr(kv_cache, "context_cache", reading)
    rows = answer_questions(model, tiny_tokenizer, examples, plan, PartialState(), progress=False)[strategy]
    assert sorted(read) == sorted(plan.template.context_part(context) for context in windows)  # each once
    samples = 2 if strategy == "top_k" else 1
    assert [(row["id"], row["sample"]) for row in rows] == [(ex["id"], k) for ex in examples for k in range(samples)]
    assert all(
        row["windows"] == len(windows) - 1 and row["window"] in range(len(windows) - 1) for row in rows[:-samples]
    )
    assert "window" not in rows[-1]
    if strategy != "greedy":
        return
    # greedy: the kept answer is the most confident of the answers to each window asked alone
    alone = [
        {**ex, "id": f"{ex['id']}-{ex['window']}"} for ex in split_long_contexts(examples[:3], tiny_tokenizer, plan)
    ]
    for ex in alone:
        del ex["window"], ex["windows"]
    wider = dataclasses.replace(plan, max_context_tokens=200)  # a window asked alone is not split again
    each = answer_questions(model, tiny_tokenizer, alone, wider, PartialState(), progress=False)["greedy"]
    for row in rows[:3]:
        of_question = [r for r in each if r["id"].startswith(row["id"] + "-")]
        best = max((r for r in of_question if r["prediction"]), key=lambda r: r["confidence"])
        assert (row["prediction"], row["window"]) == (best["prediction"], int(best["id"].rsplit("-", 1)[1]))
        assert row["confidence"] == pytest.approx(best["confidence"], abs=1e-5)
