"""decoding.py helpers on hand-built inputs: the context-span constraint and the strategies' configs."""

import math
import os

import pytest
import torch

from squad_lora.args import DecodingArguments
from squad_lora.decoding import ContextSpanLogitsProcessor, generation_config
from squad_lora.errors import SquadLoraError
from squad_lora.modeling import load_tokenizer

TINY_GPT2_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny-gpt2")

STOP = [0, 9]  # EOS and a newline token
# context tokens 5 7 5 8, the separator, then the no-answer string's tokens 6 7 3
SPAN = torch.tensor([5, 7, 5, 8, -1, 6, 7, 3])
PROMPT = [1, 2]  # two prompt tokens before the answer


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
    assert allowed_after([6]) == {7} | set(STOP)
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


def test_each_strategy_changes_only_its_own_knob():
    args = DecodingArguments(strategies=["greedy,beam", "top_k", "top_p", "temperature"], num_samples=3, top_k=7,
                             top_p=0.5, temperature=0.3, num_beams=5, max_new_tokens=9)
    assert args.strategies == ["greedy", "beam", "top_k", "top_p", "temperature"]
    tokenizer = load_tokenizer(TINY_GPT2_DIR)
    configs = {s: generation_config(s, args, tokenizer, STOP) for s in args.strategies}
    assert not configs["greedy"].do_sample and configs["greedy"].num_beams == 1
    assert not configs["beam"].do_sample and configs["beam"].num_beams == 5
    assert configs["greedy"].num_return_sequences == configs["beam"].num_return_sequences == 1
    sampled = {s: (c.top_k, c.top_p, c.temperature) for s, c in configs.items() if c.do_sample}
    assert sampled == {"top_k": (7, 1.0, 1.0), "top_p": (0, 0.5, 1.0), "temperature": (0, 1.0, 0.3)}
    for config in configs.values():
        assert config.eos_token_id == STOP and config.max_new_tokens == 9
    assert all(configs[s].num_return_sequences == 3 for s in sampled)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "nucleus"}, "unknown strategy 'nucleus'"),
        ({"top_p": 0.0}, "--top_p must be in"),
        ({"temperature": 0.0}, "--temperature must be a finite number > 0"),
        ({"num_samples": 0}, "--num_samples must be a positive integer"),
    ],
)
def test_bad_decoding_arguments_name_the_flag(kwargs, message):
    with pytest.raises(SquadLoraError, match=message):
        DecodingArguments(**kwargs)
