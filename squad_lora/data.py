"""SQuAD loading, the prompt template, and the tokenized training features.

Examples are raw SQuAD rows in the flat Hub layout (id, title, context, question,
answers{text, answer_start}); features are their tokenized prompt + target sequences.
"""

from __future__ import annotations

import array
import ast
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from squad_lora.errors import ConfigError, SquadDataError, first_line
from squad_lora.readers import parse_json

logger = logging.getLogger(__name__)

# The single answer string a SQuAD v2 unanswerable question is trained on (and which
# generate.py maps back to the empty prediction the v2 metric expects).
NO_ANSWER = "unanswerable"

COLUMNS = ("id", "title", "context", "question", "answers")


# ---------------------------------------------------------------------------
# The prompt: defined once, used by training and generation alike.
# ---------------------------------------------------------------------------


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


def answer_target(answers: dict) -> str:
    """The text the model learns to produce: the first gold answer, or NO_ANSWER (v2)."""
    texts = answers["text"]
    return f" {texts[0].strip()}" if texts else f" {NO_ANSWER}"


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


def min_prompt_tokens(tokenizer, template: PromptTemplate = PLAIN) -> int:
    """Tokens of the shortest useful example: the template with a one-word context and question, a
    one-token answer and EOS. A sequence length below it cannot hold any example."""
    return len(tokenizer(template.build("x", "x?"), add_special_tokens=False)["input_ids"]) + 2


def prediction_from_generation(text: str) -> str:
    """Turn generated text back into a SQuAD prediction ('' for the no-answer string)."""
    answer = text.split("\n", 1)[0].strip()
    return "" if answer == NO_ANSWER else answer


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


@dataclass
class LoadStats:
    """What loading kept and skipped, for the run summary."""

    num_examples: int = 0
    num_bad_answer_start: int = 0
    bad_answer_start_ids: list[str] = field(default_factory=list)
    num_repaired_answer_start: int = 0
    num_blank_answers: int = 0
    num_numeric_ids: int = 0
    version: str | None = None  # the official JSON's "version" field (v1.1, v2.0), else inferred from the questions
    version_inferred: bool = False


def read_text_file(path: str, error_type: type[Exception] | None = None) -> str:
    """A UTF-8 text file's content; a missing, undecodable or empty file raises error_type naming it.

    A byte-order mark (spreadsheet tools write one) is dropped.
    """
    error_type = error_type or SquadDataError
    if not os.path.isfile(path):
        raise error_type(f"{path}: {'is a directory, not a file' if os.path.isdir(path) else 'no such file'}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise error_type(
            f"{path}: not valid UTF-8 (byte {e.start}): {e.reason}; re-save it as UTF-8 "
            "(spreadsheet tools: 'CSV UTF-8')"
        ) from e
    if not text.strip():
        raise error_type(f"{path}: the file is empty")
    return text


def _official_rows(doc: dict, path: str) -> Iterable[dict]:
    """Flatten the official data/paragraphs/qas layout (v1.1 and v2.0) into Hub rows."""
    if not isinstance(doc["data"], list):
        raise SquadDataError(f"{path}: 'data' must be a list of articles")
    for a, article in enumerate(doc["data"]):
        where = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise SquadDataError(f"{where}: an article needs a 'paragraphs' list")
        title = article.get("title", "")
        for p, paragraph in enumerate(article["paragraphs"]):
            pwhere = f"{where}.paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise SquadDataError(f"{pwhere}: a paragraph needs 'context' and a 'qas' list")
            if not isinstance(paragraph.get("context"), str):
                raise SquadDataError(f"{pwhere}: 'context' must be a string")
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise SquadDataError(f"{pwhere}.qas[{q}]: a question must be an object")
                answers = qa.get("answers")
                if not isinstance(answers, list) or not all(isinstance(x, dict) for x in answers):
                    raise SquadDataError(
                        f"{pwhere}.qas[{q}] (id {qa.get('id')!r}): 'answers' must be a list of "
                        "{text, answer_start} objects"
                    )
                if qa.get("is_impossible"):
                    answers = []
                yield {
                    "id": qa.get("id"),
                    "title": title,
                    "context": paragraph["context"],
                    "question": qa.get("question"),
                    "answers": {
                        "text": [x.get("text") for x in answers],
                        "answer_start": [x.get("answer_start") for x in answers],
                    },
                }


def _parse_answers_cell(cell: str, path: str, line: int) -> Any:
    """CSV exports of the Hub dataset write `answers` as JSON or as a Python dict repr."""
    if cell is None:  # csv.DictReader fills the fields a short row lacks with None
        raise SquadDataError(f"{path}: line {line}: the row has fewer fields than the header (no 'answers')")
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(cell)
        except (ValueError, SyntaxError):
            continue
    raise SquadDataError(f"{path}: line {line}: 'answers' is neither JSON nor a dict literal")


def _csv_delimiter(text: str) -> str:
    """Comma as Python and the Hub write CSV, or ; / tab as spreadsheet tools do in many locales: the header's
    most frequent of the three."""
    header = text.split("\n", 1)[0]
    return max(",;\t", key=header.count)


def _read_rows(path: str) -> tuple[list[dict], str, str | None]:
    """Read any supported layout into raw rows; returns (rows, layout name, declared version or None)."""
    text = read_text_file(path)
    if path.endswith(".csv"):
        # lines end at "\n" only: str.splitlines() would also split inside a field at U+2028, NEL (\x85), ...
        reader = csv.DictReader(io.StringIO(text), delimiter=_csv_delimiter(text))
        missing = [c for c in ("id", "context", "question", "answers") if c not in (reader.fieldnames or [])]
        if missing:
            raise SquadDataError(f"{path}: CSV header lacks column(s) {', '.join(missing)}")
        rows = []
        for row in reader:
            row["answers"] = _parse_answers_cell(
                row["answers"], path, reader.line_num
            )  # a quoted context may span lines
            rows.append(row)
        return rows, "csv", None
    try:
        doc = parse_json(text, path, SquadDataError)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "data" in doc:
        version = doc.get("version")
        return list(_official_rows(doc, path)), "official SQuAD", None if version is None else str(version)
    if isinstance(doc, list):
        return doc, "JSON list", None
    if isinstance(doc, dict) and "context" in doc:  # JSON Lines holding a single example
        return [doc], "JSON Lines", None
    if doc is not None:
        raise SquadDataError(
            f"{path}: unknown layout: expected the official SQuAD JSON (an object with 'data'), "
            "JSON Lines, or CSV with columns id, title, context, question, answers"
        )
    rows = []
    for line, raw in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON leaves U+2028 and NEL unescaped
        if not raw.strip():
            continue
        try:
            rows.append(parse_json(raw, f"{path}: line {line}", SquadDataError))
        except json.JSONDecodeError as e:
            raise SquadDataError(
                f"{path}: line {line}: not JSON ({e.msg}); expected the official SQuAD JSON or JSON Lines"
            ) from e
    return rows, "JSON Lines", None


# An answer_start this close to its answer text (in characters) is repaired to it: real files (translations,
# exports that count a BOM or a CRLF) are often off by one or two.
MAX_OFFSET_REPAIR = 5


def _row_id(row: dict, where: str) -> str:
    """The row's id as a string: integers (and other scalars) as other tools write them become text."""
    value = row.get("id")
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise SquadDataError(
        f"{where}: field 'id' is {'missing' if value is None else f'a {type(value).__name__} ({value!r})'}: "
        "every question needs an id, a non-empty string or a number"
    )


def repaired_start(context: str, text: str, start: int) -> int | None:
    """answer_start itself where it points at text, else the nearest occurrence of text within MAX_OFFSET_REPAIR
    characters of it; None where there is none."""
    if start >= 0 and context[start : start + len(text)] == text:
        return start
    nearest = None
    for delta in range(1, MAX_OFFSET_REPAIR + 1):
        for candidate in (start - delta, start + delta):
            if candidate >= 0 and context[candidate : candidate + len(text)] == text:
                nearest = candidate if nearest is None else nearest
        if nearest is not None:
            return nearest
    return None


def _checked_answers(row: dict, where: str, strict: bool, stats: LoadStats) -> tuple[list[str], list[int]]:
    """(texts, answer_starts) a training row keeps: blank texts skipped, offsets repaired or skipped (counted)."""
    answers = row["answers"]
    texts, starts = [], []
    for text, start in zip(answers["text"], answers["answer_start"]):
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise SquadDataError(f"{where}: an answer needs a string text and an integer answer_start")
        if not text.strip():
            # a blank answer would train the model to answer nothing, and no metric can score it
            if strict:
                raise SquadDataError(f"{where}: an answer text is blank")
            stats.num_blank_answers += 1
            continue
        found = repaired_start(row["context"], text, start)
        if found != start and strict:
            raise SquadDataError(f"{where}: answer_start {start} does not point at the answer {text!r}")
        if found is None:
            stats.num_bad_answer_start += 1
            stats.bad_answer_start_ids.append(row["id"])
            continue
        if found != start:
            stats.num_repaired_answer_start += 1
        texts.append(text)
        starts.append(found)
    return texts, starts


# Long by design: one pass over the rows, checking each field in the order a row holds them, so that every message
# names the row's index and id; split up, each check would need the row, its id and the counts passed again.
def validate_examples(
    rows: list, source: str, strict: bool = False, check_answers: bool = True
) -> tuple[list[dict], LoadStats]:
    """Check every row's fields (and, for training, its answer spans); returns the clean rows and what was done.

    check_answers (training): an answer_start that misses its text by at most MAX_OFFSET_REPAIR characters is
    moved to it, and one that misses further is skipped with a count (the example keeps its other answers, and
    is dropped when none is left); under strict either raises. Without it (scoring: the official scripts never
    read answer_start) every question and every answer text is kept as the file gives it.
    """
    stats = LoadStats()
    seen: dict[str, object] = {}  # id as text -> the id as the file wrote it
    clean = []
    for i, row in enumerate(rows):
        where = f"{source}: example {i}"
        if not isinstance(row, dict):
            raise SquadDataError(f"{where}: expected an object, got {type(row).__name__}")
        row_id = _row_id(row, where)
        where = f"{source}: example {i} (id {row_id!r})"
        for name in ("context", "question"):
            if not isinstance(row.get(name), str) or (name != "context" and not row[name].strip()):
                raise SquadDataError(f"{where}: field '{name}' is missing or not a non-empty string")
        if row_id in seen:
            earlier = seen[row_id]
            same = earlier == row["id"] and type(earlier) is type(row["id"])
            raise SquadDataError(
                f"{where}: duplicate id" if same else f"{where}: ids {earlier!r} and {row['id']!r} are the same as text"
            )
        seen[row_id] = row["id"]
        stats.num_numeric_ids += not isinstance(row["id"], str)
        answers = row.get("answers")
        if (
            not isinstance(answers, dict)
            or not isinstance(answers.get("text"), list)
            or not isinstance(answers.get("answer_start"), list)
            or len(answers["text"]) != len(answers["answer_start"])
        ):
            raise SquadDataError(f"{where}: 'answers' must be {{text: [...], answer_start: [...]}} with equal lengths")
        if check_answers:
            texts, starts = _checked_answers({**row, "id": row_id}, where, strict, stats)
            if answers["text"] and not texts:
                continue  # every answer was bad: drop rather than train it as unanswerable
        else:
            if not all(isinstance(text, str) for text in answers["text"]):
                raise SquadDataError(f"{where}: every answer text must be a string")
            texts, starts = list(answers["text"]), list(answers["answer_start"])
        title = row.get("title")
        clean.append(
            {
                "id": row_id,
                "title": "" if title is None else str(title),  # a missing or null title is none, a number its text
                "context": row["context"],
                "question": row["question"],
                "answers": {"text": texts, "answer_start": starts},
            }
        )
    if not clean:
        raise SquadDataError(f"{source}: no usable examples")
    stats.num_examples = len(clean)
    _log_load_stats(source, stats)
    return clean, stats


def _log_load_stats(source: str, stats: LoadStats) -> None:
    if stats.num_numeric_ids:
        logger.info("%s: %d numeric id(s) read as text", source, stats.num_numeric_ids)
    if stats.num_blank_answers:
        logger.warning(
            "%s: skipped %d blank answer text(s); pass --strict to make this an error", source, stats.num_blank_answers
        )
    if stats.num_repaired_answer_start:
        logger.warning(
            "%s: moved %d answer_start(s) to their answer text, at most %d characters away; pass --strict to make "
            "this an error",
            source,
            stats.num_repaired_answer_start,
            MAX_OFFSET_REPAIR,
        )
    if stats.num_bad_answer_start:
        logger.warning(
            "%s: skipped %d answer(s) whose answer_start does not point at the answer text (first ids: %s); "
            "pass --strict to make this an error",
            source,
            stats.num_bad_answer_start,
            ", ".join(stats.bad_answer_start_ids[:5]),
        )


def infer_version(examples: Iterable[dict]) -> str:
    """The SQuAD version a file without a version field is: v2.0 where any question is unanswerable."""
    return "v2.0" if any(not example["answers"]["text"] for example in examples) else "v1.1"


def load_squad_file(path: str, strict: bool = False, check_answers: bool = True) -> tuple[list[dict], LoadStats]:
    """Load a SQuAD file in any supported layout: official JSON (v1.1/v2.0), JSON Lines or CSV.

    check_answers: as validate_examples (False for scoring, which counts every question whatever its offsets).
    """
    rows, layout, version = _read_rows(path)
    examples, stats = validate_examples(rows, path, strict=strict, check_answers=check_answers)
    if version is None:
        stats.version, stats.version_inferred = infer_version(examples), True
        logger.info("%s: %s layout, %d rows, no version field: %s inferred", path, layout, len(rows), stats.version)
    else:
        stats.version = version
        logger.info("%s: %s layout (version %s), %d rows", path, layout, version, len(rows))
    return examples, stats


def load_squad_split(data_args, split: str = "validation", check_answers: bool = True):
    """One split ("train" or "validation") of the data the arguments name (args.EvalDataArguments, or
    DataArguments for training), from its local file or the Hub, cut to its max_*_samples.

    Returns (dataset, LoadStats).
    """
    import datasets

    if split == "train":
        data_file, hub_split, max_samples = data_args.train_file, "train", data_args.max_train_samples
    else:
        data_file, hub_split, max_samples = data_args.validation_file, data_args.eval_split, data_args.max_eval_samples
    dataset_name, dataset_config_name, strict = data_args.dataset_name, data_args.dataset_config_name, data_args.strict

    if data_file:
        rows, stats = load_squad_file(data_file, strict=strict, check_answers=check_answers)
    else:
        try:
            hub = datasets.load_dataset(dataset_name, dataset_config_name, split=hub_split)
        except Exception as e:  # the Hub raises many types (ConnectionError, DatasetNotFoundError, ...)
            raise SquadDataError(
                f"could not load the dataset {dataset_name!r} (split {hub_split!r}) from the Hugging Face Hub: "
                f"{first_line(e, with_type=True)}\n"
                "If you are offline, pass local SQuAD files instead: "
                "--train_file train-v1.1.json --validation_file dev-v1.1.json "
                "(official JSON, JSON Lines or CSV)"
            ) from e
        missing = [c for c in COLUMNS[2:] + ("id",) if c not in hub.column_names]
        if missing:
            raise SquadDataError(f"dataset {dataset_name!r}: missing column(s) {', '.join(missing)}")
        rows, stats = validate_examples(list(hub), f"{dataset_name}[{hub_split}]", strict, check_answers)
    if max_samples is not None:
        rows = rows[:max_samples]
    return datasets.Dataset.from_list(rows), stats


# ---------------------------------------------------------------------------
# Features: prompt tokens (masked) + answer tokens + EOS (trained)
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


def build_train_features(examples: dict, tokenizer, max_seq_length: int, template: PromptTemplate = PLAIN) -> dict:
    """Batched `datasets.map` function: input_ids and labels (-100 on every prompt token).

    The target is the first gold answer (or NO_ANSWER) followed by EOS (or the chat template's end of turn); an
    example whose answer cannot fit gets empty lists (filtered out by the caller) and `was_cut` records context cuts.
    For shared-context batching, `shared_length` counts the leading tokens that depend on the context
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
    out["shared_length"] = shared_prefix_lengths(tokenizer, examples["question"], prompts, template)
    out["context_key"] = [token_ids_key(prompt[:n]) if n else 0 for prompt, n in zip(prompts, out["shared_length"])]
    return out


def token_ids_key(ids: list[int]) -> int:
    """A 64-bit key for a token sequence, the same in every process (unlike hash())."""
    digest = hashlib.blake2b(array.array("q", ids).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
