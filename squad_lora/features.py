"""Training features: which gold answer is trained, and each example as prompt tokens (masked) + answer tokens + end.

The end is EOS, or the chat template's end of turn; where the plan shares contexts, the features also carry what
shared-context batching needs (shared_length and context_key).
"""

from __future__ import annotations

import array
import hashlib

from squad_lora.prompt import NO_ANSWER, PLAIN, PromptTemplate, encode_prompt, shared_prefix_lengths

ANSWER_CHOICES = ("first", "most_common", "shortest")


def order_answers(answers: dict, choice: str) -> dict:
    """The answers with the one to train first: the file's first, the most common text among the gold
    answers (ties: the earliest), or the shortest (ties: the earliest)."""
    texts = answers["text"]
    if len(texts) < 2 or choice == "first":
        return answers
    normalized = [" ".join(text.split()) for text in texts]
    if choice == "most_common":
        best = max(range(len(texts)), key=lambda i: (normalized.count(normalized[i]), -i))
    else:
        best = min(range(len(texts)), key=lambda i: (len(normalized[i]), i))
    order = [best] + [i for i in range(len(texts)) if i != best]
    return {key: [values[i] for i in order] for key, values in answers.items()}


def prepare_training_examples(examples, answer_choice: str = "first", answerable_only: bool = False):
    """The training split as trained: the chosen gold answer first, and unanswerable questions dropped when
    asked (a `datasets.Dataset` in, one out)."""
    if answerable_only:
        examples = examples.filter(lambda example: len(example["answers"]["text"]) > 0, desc="answerable only")
    if answer_choice != "first":
        examples = examples.map(
            lambda example: {"answers": order_answers(example["answers"], answer_choice)}, desc="choosing answers"
        )
    return examples


def answer_target(answers: dict) -> str:
    """The text the model learns to produce: the first gold answer, or NO_ANSWER (v2)."""
    texts = answers["text"]
    return f" {texts[0].strip()}" if texts else f" {NO_ANSWER}"


def build_train_features(
    examples: dict, tokenizer, max_seq_length: int, template: PromptTemplate = PLAIN, sharing: bool = False
) -> dict:
    """Batched `datasets.map` function: input_ids and labels (-100 on every prompt token).

    The target is the first gold answer (or NO_ANSWER) followed by EOS (or the chat template's end of turn); an
    example whose answer cannot fit gets empty lists (filtered out by the caller) and `was_cut` records context cuts.
    With sharing (shared-context batching, as the plan says), `shared_length` counts the leading tokens that depend on the context
    (window) alone (see shared_prefix_lengths) and `context_key` identifies those tokens: questions whose
    context was cut to different windows get different keys, and share nothing.
    """
    out = {"input_ids": [], "labels": [], "was_cut": []}
    prompts, end = [], template.end_token_id(tokenizer)
    for context, question, answers in zip(examples["context"], examples["question"], examples["answers"]):
        target = tokenizer(answer_target(answers), add_special_tokens=False)["input_ids"]
        target.append(end)
        span = None
        if answers["text"]:
            start = answers["answer_start"][0]
            # the prompt strips the context, which shifts every char offset by the leading whitespace
            start -= len(context) - len(context.lstrip())
            span = (start, start + len(answers["text"][0]))
        prompt, was_cut = encode_prompt(
            tokenizer, context.strip(), question, max_seq_length - len(target), span, template
        )
        prompts.append(prompt or [])
        if prompt is None:
            out["input_ids"].append([])
            out["labels"].append([])
        else:
            out["input_ids"].append(prompt + target)
            out["labels"].append([-100] * len(prompt) + target)
        out["was_cut"].append(was_cut)
    if sharing:
        out["shared_length"] = shared_prefix_lengths(tokenizer, examples["question"], prompts, template)
        out["context_key"] = [token_ids_key(p[:n]) if n else 0 for p, n in zip(prompts, out["shared_length"])]
    return out


def token_ids_key(ids: list[int]) -> int:
    """A 64-bit key for a token sequence, the same in every process (unlike hash())."""
    digest = hashlib.blake2b(array.array("q", ids).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
