"""squad_lora.data, .prompt and .features: the prompt templates (plain, and chat from the tokenizer's own template)
and the target, which gold answer is trained and whether unanswerable questions are, every supported file layout,
malformed and random files, and the training features (contexts cut around the answer; with the chat format, only
the answer and the end of the assistant's turn trained, the context part still a shared prefix)."""

import collections
import csv
import json
import logging
import os

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from builders import CONTEXT, FILLER, QUESTION, example, features, make_chat_tokenizer, split_feature
from repo_paths import DEV_FILE, DEV_V2_FILE, SAMPLE_DIR, TINY_GPT2_DIR, TRAIN_FILE
from squad_lora.args import DataArguments, EvalDataArguments
from squad_lora.data import load_squad_file, load_squad_split, validate_examples
from squad_lora.errors import ConfigError, SquadDataError
from squad_lora.features import answer_target, build_train_features, order_answers, prepare_training_examples
from squad_lora.modeling import load_tokenizer
from squad_lora.prompt import NO_ANSWER, PLAIN, prediction_from_generation, prompt_template, template_from_dict
from squad_lora.scoring import is_version_2, load_scored_examples
from squad_lora.splits import load_training_splits, split_by_context
from squad_reference import assert_loads_as_written, rows_of_json_file

ANSWER = "Zorvik Telan"


# ---------------------------------------------------------------------------
# Prompt and target
# ---------------------------------------------------------------------------


def test_prompt_template():
    assert PLAIN.build("  Some context. ", " Who? ") == "Context: Some context.\nQuestion: Who?\nAnswer:"


def test_answer_target_is_first_gold_answer_or_no_answer():
    assert answer_target({"text": ["Ilvar", "the Ilvar"], "answer_start": [34, 30]}) == " Ilvar"
    assert answer_target({"text": [], "answer_start": []}) == f" {NO_ANSWER}"


def test_prediction_from_generation():
    assert prediction_from_generation(" Ilvar\nQuestion: more") == "Ilvar"
    assert prediction_from_generation(f" {NO_ANSWER}") == ""


# ---------------------------------------------------------------------------
# --prompt_format plain|chat: the chat prompt is the user's turn of the tokenizer's own template
# ---------------------------------------------------------------------------


def user_turn(tokenizer, context: str, question: str) -> str:
    message = {"role": "user", "content": f"Context: {context}\nQuestion: {question}"}
    return tokenizer.apply_chat_template([message], add_generation_prompt=True, tokenize=False)


def test_plain_is_the_seed_prompt(tiny_tokenizer):
    assert prompt_template(tiny_tokenizer, "plain") is PLAIN
    assert PLAIN.build(" Some context. ", " Who? ") == "Context: Some context.\nQuestion: Who?\nAnswer:"
    assert PLAIN.end_token_id(tiny_tokenizer) == tiny_tokenizer.eos_token_id


def test_chat_puts_context_and_question_in_the_users_turn(chat_tokenizer):
    template = prompt_template(chat_tokenizer, "chat")
    assert template.build(" Some context. ", " Who? ") == user_turn(chat_tokenizer, "Some context.", "Who?")
    assert template.head.startswith("<|im_start|>system\nAnswer from the context.<|im_end|>\n<|im_start|>user\n")
    assert template.tail == "<|im_end|>\n<|im_start|>assistant\n"
    # the template ends a turn with <|im_end|>, not EOS: that is the token trained after the answer
    assert template.end == "<|im_end|>"
    assert template.end_token_id(chat_tokenizer) == chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert template_from_dict(template.as_dict()) == template and template_from_dict(None) is PLAIN


def test_a_turn_that_ends_with_eos_trains_eos():
    tokenizer = make_chat_tokenizer()
    tokenizer.chat_template = tokenizer.chat_template.replace("}}<|im_end|>", "}}{{ eos_token }}")
    assert prompt_template(tokenizer, "chat").end is None


def test_chat_needs_a_template_that_keeps_the_message(chat_tokenizer):
    with pytest.raises(
        ConfigError, match=r"--prompt_format chat: gpt2-dir has no chat template.*--prompt_format plain"
    ):
        prompt_template(load_tokenizer(TINY_GPT2_DIR), "chat", "gpt2-dir")
    changing = make_chat_tokenizer()
    changing.chat_template = changing.chat_template.replace("m['content']", "m['content'] | upper")
    with pytest.raises(ConfigError, match="does not put a user message and a reply into the text as given"):
        prompt_template(changing, "chat")


def test_chat_features_train_the_answer_and_end_of_turn_only_and_share_the_context_part(chat_tokenizer):
    template = prompt_template(chat_tokenizer, "chat")
    rows = load_squad_file(DEV_FILE)[0][:14]
    batch = {key: [row[key] for row in rows] for key in ("context", "question", "answers")}
    features = build_train_features(batch, chat_tokenizer, 512, template, sharing=True)
    end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenize = lambda text: chat_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for row, ids, labels, shared in zip(rows, features["input_ids"], features["labels"], features["shared_length"]):
        trained = [label for label in labels if label != -100]
        assert trained == tokenize(" " + row["answers"]["text"][0].strip()) + [end], row["id"]
        prompt = ids[: len(ids) - len(trained)]
        assert chat_tokenizer.decode(prompt) == template.build(row["context"], row["question"]), row["id"]
        assert shared > 0 and prompt[:shared] == tokenize(template.context_part(row["context"])), row["id"]
    assert len(set(features["context_key"])) == 3  # contexts of 6, 5 and 3 questions, one key each


# ---------------------------------------------------------------------------
# The answer trained: which gold answer, and unanswerable questions
# ---------------------------------------------------------------------------


def answers(*texts: str) -> dict:
    return {"text": list(texts), "answer_start": list(range(len(texts)))}


@pytest.mark.parametrize(
    "gold, choice, first",
    [
        (answers("Denver Broncos", "the Denver Broncos", "Denver Broncos"), "most_common", ("Denver Broncos", 0)),
        (answers("the Broncos", "Denver  Broncos", "Denver Broncos"), "most_common", ("Denver  Broncos", 1)),  # spaces
        (answers("a", "b", "c"), "most_common", ("a", 0)),  # a tie: the earliest
        (answers("Santa Clara, California", "Santa Clara", "Levi's Stadium"), "shortest", ("Santa Clara", 1)),
        (answers("Santa Clara, California", "Santa Clara"), "first", ("Santa Clara, California", 0)),
    ],
)
def test_the_chosen_answer_comes_first_and_every_answer_is_kept(gold, choice, first):
    ordered = order_answers(gold, choice)
    assert (ordered["text"][0], ordered["answer_start"][0]) == first
    assert sorted(zip(ordered["text"], ordered["answer_start"])) == sorted(zip(gold["text"], gold["answer_start"]))


def test_unanswerable_questions_are_dropped_from_training_only_when_asked():
    import datasets

    rows = [
        {"id": "a", "answers": answers("x", "y", "y")},
        {"id": "b", "answers": {"text": [], "answer_start": []}},
    ]
    dataset = datasets.Dataset.from_list(rows)
    assert len(prepare_training_examples(dataset)) == 2
    kept = prepare_training_examples(dataset, "most_common", answerable_only=True)
    assert [row["id"] for row in kept] == ["a"] and kept[0]["answers"]["text"] == ["y", "x", "y"]


# ---------------------------------------------------------------------------
# Features: prompt tokens masked, answer + EOS trained
# ---------------------------------------------------------------------------


def test_unanswerable_example_is_trained_on_the_no_answer_string(tiny_tokenizer):
    feats = features([example(CONTEXT, None)], tiny_tokenizer, 512)
    _, target = split_feature(tiny_tokenizer, feats["input_ids"][0], feats["labels"][0])
    assert tiny_tokenizer.decode(target) == f" {NO_ANSWER}{tiny_tokenizer.eos_token}"


@pytest.mark.parametrize(
    "context",
    [
        FILLER * 20 + f"The harbour master was {ANSWER}.",  # answer at the very end
        f"{ANSWER} was the harbour master. " + FILLER * 20,  # answer at the very start
        " \n  " + FILLER * 20 + f"The harbour master was {ANSWER}.",  # leading whitespace shifts offsets
        FILLER * 10 + f"The harbour master was {ANSWER}. " + FILLER * 10,  # answer in the middle
    ],
    ids=["end", "start", "leading-whitespace", "middle"],
)
def test_long_context_is_cut_around_the_answer(tiny_tokenizer, context):
    max_seq_length = 64  # the tiny tokenizer spends 31 tokens on the prompt frame + question, 10 on the target
    full = tiny_tokenizer(PLAIN.build(context, QUESTION))["input_ids"]
    assert len(full) > 3 * max_seq_length
    feats = features([example(context, ANSWER)], tiny_tokenizer, max_seq_length)
    ids, labels = feats["input_ids"][0], feats["labels"][0]
    assert feats["was_cut"] == [True]
    assert 0 < len(ids) <= max_seq_length
    prompt, target = split_feature(tiny_tokenizer, ids, labels)
    assert tiny_tokenizer.decode(target) == f" {ANSWER}{tiny_tokenizer.eos_token}"
    assert prompt.startswith("Context: ") and prompt.endswith(f"\nQuestion: {QUESTION}\nAnswer:")
    kept_context = prompt[len("Context: ") : -len(f"\nQuestion: {QUESTION}\nAnswer:")]
    assert ANSWER in kept_context
    assert kept_context in context
    assert len(ids) >= max_seq_length - 4  # the budget is used, not thrown away


def test_unanswerable_long_context_is_cut_from_the_end(tiny_tokenizer):
    context = "Lenmargan lies on the Ilvar. " + FILLER * 20
    feats = features([example(context, None)], tiny_tokenizer, 48)
    prompt, _ = split_feature(tiny_tokenizer, feats["input_ids"][0], feats["labels"][0])
    assert feats["was_cut"] == [True] and len(feats["input_ids"][0]) <= 48
    assert prompt.startswith("Context: Lenmargan lies on the Ilvar.")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    num_before=st.integers(0, 30),
    num_after=st.integers(0, 30),
    max_seq_length=st.integers(60, 200),  # below ~52 the answer itself cannot fit
)
def test_answer_always_survives_the_cut(tiny_tokenizer, num_before, num_after, max_seq_length):
    context = FILLER * num_before + f"The harbour master was {ANSWER}. " + FILLER * num_after
    feats = features([example(context, ANSWER)], tiny_tokenizer, max_seq_length)
    ids = feats["input_ids"][0]
    assert 0 < len(ids) <= max_seq_length
    prompt, target = split_feature(tiny_tokenizer, ids, feats["labels"][0])
    assert ANSWER in prompt
    assert tiny_tokenizer.decode(target) == f" {ANSWER}{tiny_tokenizer.eos_token}"


def test_prompt_that_cannot_fit_is_dropped(tiny_tokenizer):
    long_question = "Which of the many towns along the Ilvar river " * 10 + "was founded first?"
    long_answer = FILLER * 6
    rows = [
        example(CONTEXT, "Ilvar", question=long_question, id_="long-question"),
        example(FILLER * 8 + "end", long_answer, id_="long-answer"),
        example(CONTEXT, "Ilvar", id_="fits"),
    ]
    feats = features(rows, tiny_tokenizer, 40)
    assert [len(ids) for ids in feats["input_ids"][:2]] == [0, 0]
    assert [len(labels) for labels in feats["labels"][:2]] == [0, 0]
    assert 0 < len(feats["input_ids"][2]) <= 40


def test_max_seq_length_below_the_target_drops_everything(tiny_tokenizer):
    feats = features([example(CONTEXT, "Duke Elnth Elwi")], tiny_tokenizer, 3)
    assert feats["input_ids"] == [[]]


# ---------------------------------------------------------------------------
# Answer spans
# ---------------------------------------------------------------------------


def test_mismatched_answer_start_is_skipped_with_a_count(caplog):
    rows = [
        example(CONTEXT, "Ilvar", id_="good"),
        example(CONTEXT, "Ilvar", start=CONTEXT.index("Ilvar") + 40, id_="bad"),  # too far to repair
        {
            **example(CONTEXT, "1399", id_="half"),
            "answers": {"text": ["1399", "Elnth"], "answer_start": [CONTEXT.index("1399"), 0]},
        },
        example(CONTEXT, None, id_="unanswerable"),
    ]
    with caplog.at_level(logging.WARNING, logger="squad_lora.data"):
        clean, stats = validate_examples(rows, "rows.jsonl")
    assert [row["id"] for row in clean] == ["good", "half", "unanswerable"]  # "bad" had no good answer left
    assert clean[1]["answers"] == {"text": ["1399"], "answer_start": [CONTEXT.index("1399")]}
    assert clean[2]["answers"] == {"text": [], "answer_start": []}  # a v2 no-answer row is not "bad"
    assert stats.num_bad_answer_start == 2
    assert stats.bad_answer_start_ids == ["bad", "half"]
    assert stats.num_examples == 3
    assert "--strict" in caplog.text and "bad" in caplog.text


def test_mismatched_answer_start_is_an_error_under_strict(tmp_path):
    path = tmp_path / "bad_start.jsonl"
    rows = [example(CONTEXT, "Ilvar", id_="good"), example(CONTEXT, "Ilvar", start=2, id_="bad")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load_squad_file(str(path))[1].num_bad_answer_start == 1
    with pytest.raises(SquadDataError) as info:
        load_squad_file(str(path), strict=True)
    message = str(info.value)
    assert str(path) in message and "'bad'" in message and "answer_start 2" in message


def test_every_answer_bad_leaves_no_usable_examples():
    with pytest.raises(SquadDataError, match="rows.json: no usable examples"):
        validate_examples([example(CONTEXT, "Ilvar", start=0)], "rows.json")


# ---------------------------------------------------------------------------
# Layouts
# ---------------------------------------------------------------------------


def sample(name):
    return os.path.join(SAMPLE_DIR, name)


def test_official_v1_json_loads():
    rows, stats = load_squad_file(DEV_FILE)
    assert len(rows) == stats.num_examples == 44
    assert rows[0] == {
        "id": "100000",
        "title": "Lenmargan",
        "context": rows[0]["context"],
        "question": "On which river does Lenmargan lie?",
        "answers": {"text": ["Ilvar"], "answer_start": [34]},
    }
    assert rows[0]["context"].startswith("Lenmargan is a market town on the Ilvar river.")


def test_official_v2_json_loads_unanswerable_questions():
    rows, _ = load_squad_file(DEV_V2_FILE)
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == 60
    assert by_id["100090"]["answers"] == {"text": [], "answer_start": []}  # is_impossible
    assert by_id["100000"]["answers"] == {"text": ["Ilvar"], "answer_start": [34]}
    assert sum(1 for row in rows if not row["answers"]["text"]) == 16


def test_the_version_of_an_official_file_is_recorded():
    assert load_squad_file(DEV_FILE)[1].version == "1.1"
    assert load_squad_file(DEV_V2_FILE)[1].version == "v2.0"
    assert not load_squad_file(DEV_FILE)[1].version_inferred
    stats = load_squad_file(sample("dev-v1.1.jsonl"))[1]  # other layouts declare none: inferred from the questions
    assert (stats.version, stats.version_inferred) == ("v1.1", True)


@pytest.mark.parametrize("name", ["dev-v1.1.jsonl", "dev-v1.1.csv"])
def test_jsonl_and_csv_load_the_same_examples_as_the_official_json(name):
    official, _ = load_squad_file(DEV_FILE)
    rows, stats = load_squad_file(sample(name))
    assert rows == official
    assert stats.num_bad_answer_start == 0


def test_json_list_and_single_line_jsonl_load(tmp_path):
    rows = [example(CONTEXT, "Ilvar", id_="a"), example(CONTEXT, "1399", id_="b")]
    as_list = tmp_path / "rows.json"
    as_list.write_text(json.dumps(rows))
    one_line = tmp_path / "one.jsonl"
    one_line.write_text(json.dumps(rows[0]) + "\n")
    assert load_squad_file(str(as_list))[0] == rows
    assert load_squad_file(str(one_line))[0] == rows[:1]


def test_csv_with_python_repr_answers_loads(tmp_path):
    path = tmp_path / "repr.csv"
    path.write_text(
        f"id,title,context,question,answers\na,t,\"{CONTEXT}\",Where?,\"{{'text': ['Ilvar'], 'answer_start': [34]}}\"\n"
    )
    rows, _ = load_squad_file(str(path))
    assert rows[0]["answers"] == {"text": ["Ilvar"], "answer_start": [34]}


def jsonl(*rows):
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


GOOD = example(CONTEXT, "Ilvar", id_="a")
MALFORMED = {
    "not_json.json": (b"this is not JSON at all\n", "not JSON"),
    "unknown_layout.json": (b'{"version": "1.1", "articles": []}', "unknown layout"),
    "scalar.json": (b"42", "unknown layout"),
    "empty.json": (b"", "the file is empty"),
    "blank.jsonl": (b"  \n\n", "the file is empty"),
    "bad_line.jsonl": (jsonl(GOOD) + b"{oops\n", "line 2: not JSON"),
    "invalid_utf8.json": (b'{"data": "caf\xe9"}', "not valid UTF-8"),
    "missing_question.jsonl": (jsonl({k: v for k, v in GOOD.items() if k != "question"}), "field 'question'"),
    "missing_id.jsonl": (jsonl({k: v for k, v in GOOD.items() if k != "id"}), "field 'id'"),
    "empty_question.jsonl": (jsonl({**GOOD, "question": "  "}), "field 'question'"),
    "duplicate_ids.jsonl": (jsonl(GOOD, {**GOOD, "question": "Again?"}), "duplicate id"),
    "not_object.json": (b'["a row"]', "expected an object"),
    "answers_string.jsonl": (jsonl({**GOOD, "answers": "Ilvar"}), "'answers' must be"),
    "answers_unequal.jsonl": (
        jsonl({**GOOD, "answers": {"text": ["Ilvar", "x"], "answer_start": [34]}}),
        "equal lengths",
    ),
    "answers_no_start.jsonl": (jsonl({**GOOD, "answers": {"text": ["Ilvar"]}}), "'answers' must be"),
    "answer_start_string.jsonl": (
        jsonl({**GOOD, "answers": {"text": ["Ilvar"], "answer_start": ["34"]}}),
        "integer answer_start",
    ),
    "official_data_not_list.json": (b'{"data": {"title": "x"}}', "'data' must be a list"),
    "official_no_paragraphs.json": (b'{"data": [{"title": "x"}]}', "data[0]: an article needs a 'paragraphs' list"),
    "official_answers_dict.json": (
        json.dumps(
            {
                "data": [
                    {
                        "title": "x",
                        "paragraphs": [
                            {
                                "context": CONTEXT,
                                "qas": [
                                    {"id": "a", "question": "Where?", "answers": {"text": "Ilvar", "answer_start": 34}}
                                ],
                            }
                        ],
                    }
                ]
            }
        ).encode(),
        "data[0].paragraphs[0].qas[0] (id 'a'): 'answers' must be a list",
    ),
    "csv_missing_column.csv": (
        b"id,title,context,question\na,t,c,q\n",
        "no column 'answers' (--answer_column); columns are: id, title, context, question",
    ),
    "csv_bad_answers.csv": (
        b'id,title,context,question,answers\na,t,"c",q,Ilvar\n',
        "line 2: 'answers' is neither JSON",
    ),
    "csv_short_row.csv": (b'id,title,context,question,answers\na,t,"c"\n', "line 2: the row has fewer fields"),
    "csv_header_only.csv": (b"id,title,context,question,answers\n", "no usable examples"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_file_fails_naming_the_file(tmp_path, name):
    content, expected = MALFORMED[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SquadDataError) as info:
        load_squad_file(str(path))
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message


def test_missing_file_fails_naming_the_file(tmp_path):
    with pytest.raises(SquadDataError, match="nope.json: no such file"):
        load_squad_file(str(tmp_path / "nope.json"))


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


def test_load_squad_split_from_a_file():
    data_args = EvalDataArguments(validation_file=sample("dev-v1.1.csv"), max_eval_samples=5)
    dataset, stats = load_squad_split(data_args)
    assert len(dataset) == 5 and stats.num_examples == 44
    assert set(dataset.column_names) == {"id", "title", "context", "question", "answers"}
    assert dataset[0]["answers"] == {"text": ["Ilvar"], "answer_start": [34]}


def test_load_squad_split_from_the_hub_offline_says_to_pass_files():
    with pytest.raises(SquadDataError) as info:
        load_squad_split(DataArguments(), "train")
    message = str(info.value)
    assert "'squad'" in message and "If you are offline" in message
    assert "--train_file" in message and "--validation_file" in message


# ---------------------------------------------------------------------------
# Random SQuAD-shaped files: loaded as written (squad_reference.expected_load: every example, field, offset and
# count), or refused with a SquadDataError naming the file and the question at fault
# ---------------------------------------------------------------------------

# Line and paragraph separators, NEL, quotes and backslashes next to arbitrary characters
CHARS = st.one_of(st.sampled_from(list('ab \n\r\t"\\,\u2028\u2029\x85é')), st.characters(codec="utf-8"))
TEXT = st.text(CHARS, max_size=12)
IDS = st.one_of(st.sampled_from(["q1", "q2", "q3"]), TEXT)  # few ids: duplicates are common
ANY_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.lists(st.integers(-1, 3), max_size=2),
    st.dictionaries(st.sampled_from(["text", "answer_start"]), st.integers(0, 3)),
)
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# per file: the percentage of fields missing or of a wrong type. A whole file (damage 0) holds at least one question,
# none of them blank, and its first question keeps its answers (spans of the context, answer_start exact) or has
# none: it must load, unless --strict meets a later answer that is blank or whose answer_start misses its text.
DAMAGE = st.sampled_from([0, 2, 10, 30])
QUESTIONS = st.one_of(st.just("Who?"), TEXT)  # random text is sometimes empty or blank: not a question


def questions(damage: int):
    return QUESTIONS if damage else QUESTIONS.filter(str.strip)


@st.composite
def corrupted(draw, fields: dict, damage: int) -> dict:
    """The fields, each with probability damage% missing or replaced by a value of a random (usually wrong) type."""
    result = {}
    for key, value in fields.items():
        if draw(st.integers(0, 99)) >= damage:
            result[key] = value
        elif draw(st.booleans()):
            result[key] = draw(ANY_JSON)
    return result


@st.composite
def question_id(draw, number: int, damage: int) -> str:
    """A unique id, or with probability damage% one from a small pool (duplicates) or random text."""
    return draw(IDS) if draw(st.integers(0, 99)) < damage else f"q{number}"


@st.composite
def answers_for(draw, context: str, exact: bool = False) -> list[dict]:
    """0-2 answers: spans of the context (answer_start usually right), or random text at a random start; exact: only
    non-blank spans at their answer_start, which load even under --strict."""
    answers = []
    for _ in range(draw(st.integers(0, 2))):
        if context and (exact or draw(st.booleans())):
            start = draw(st.integers(0, len(context) - 1))
            text = context[start : draw(st.integers(start, len(context)))]
            start += 0 if exact else draw(st.sampled_from([0, 0, 0, 1, -1, 50]))
        else:
            text, start = draw(TEXT), draw(st.integers(-3, 40))
        if not exact or (context and text.strip()):
            answers.append({"text": text, "answer_start": start})
    return answers


@st.composite
def official_documents(draw) -> tuple[dict, bool]:
    """(document, whether it is whole): the official layout, randomly damaged."""
    damage = draw(DAMAGE)
    whole = damage == 0
    articles, num_questions = [], 0
    for _ in range(draw(st.integers(whole, 2))):
        paragraphs = []
        for _ in range(draw(st.integers(whole and not num_questions, 2))):
            context = draw(TEXT)
            qas = []
            for _ in range(draw(st.integers(whole and not num_questions, 3))):
                exact = whole and not num_questions
                answers = [draw(corrupted(answer, damage)) for answer in draw(answers_for(context, exact))]
                qa = {"id": draw(question_id(num_questions, damage)), "question": draw(questions(damage)),
                      "answers": answers}  # fmt: skip
                num_questions += 1
                if draw(st.booleans()):
                    qa["is_impossible"] = draw(st.booleans())
                qas.append(draw(corrupted(qa, damage)))
            paragraphs.append(draw(corrupted({"context": context, "qas": qas}, damage)))
        articles.append(draw(corrupted({"title": draw(TEXT), "paragraphs": paragraphs}, damage)))
    return draw(corrupted({"version": draw(st.sampled_from(["1.1", "v2.0"])), "data": articles}, damage)), whole


@st.composite
def json_lines_rows(draw) -> tuple[list, bool]:
    """(rows, whether they are whole): Hub-layout rows (JSON Lines), randomly damaged; now and then a row that is not
    an object at all."""
    damage, rows = draw(DAMAGE), []
    for number in range(draw(st.integers(damage == 0, 4))):
        context = draw(TEXT)
        answers = draw(answers_for(context, exact=damage == 0 and number == 0))
        texts, starts = [a["text"] for a in answers], [a["answer_start"] for a in answers]
        if starts and draw(st.integers(0, 99)) < damage:
            starts.pop()  # lists of different lengths
        row = {
            "id": draw(question_id(number, damage)),
            "title": draw(TEXT),
            "context": context,
            "question": draw(questions(damage)),
            "answers": draw(corrupted({"text": texts, "answer_start": starts}, damage)),
        }
        rows.append(draw(ANY_JSON) if draw(st.integers(0, 99)) < damage // 2 else draw(corrupted(row, damage)))
    return rows, damage == 0


def assert_loads_cleanly_or_refuses(path, strict):
    try:
        rows, stats = load_squad_file(str(path), strict=strict)
    except SquadDataError:
        event("refused")  # pytest --hypothesis-show-statistics shows how often each outcome came up
        return
    event("loaded")
    assert rows and stats.num_examples == len(rows)
    assert len({row["id"] for row in rows}) == len(rows)
    for row in rows:
        assert all(isinstance(row[key], str) for key in ("id", "title", "context", "question"))
        texts, starts = row["answers"]["text"], row["answers"]["answer_start"]
        assert len(texts) == len(starts)
        for text, start in zip(texts, starts):
            assert isinstance(text, str) and isinstance(start, int) and start >= 0
            assert row["context"][start : start + len(text)] == text


def assert_whole_files_load(outcomes: collections.Counter, whole: bool, strict: bool, outcome: str) -> None:
    """A whole file loads (unless --strict); counted, whole or not, by outcome."""
    outcomes["whole" if whole and not strict else "other", outcome] += 1
    assert outcome == "loaded" or not whole or strict


def assert_ran_both_ways(outcomes: collections.Counter) -> None:
    """The run held damaged files that loaded and damaged files refused, and more than one whole file in twenty."""
    assert outcomes["other", "refused"] > 0 and outcomes["other", "loaded"] > 0, outcomes
    assert outcomes["whole", "loaded"] > sum(outcomes.values()) / 20, outcomes


def test_random_official_json_loads_as_written_or_is_refused_naming_the_file_and_question(tmp_path_factory):
    outcomes = collections.Counter()

    @SETTINGS
    @given(drawn=official_documents(), ensure_ascii=st.booleans(), strict=st.booleans())
    def check(drawn, ensure_ascii, strict):
        (doc, whole), path = drawn, tmp_path_factory.getbasetemp() / "random-official.json"
        path.write_text(json.dumps(doc, ensure_ascii=ensure_ascii), encoding="utf-8")
        rows, version = rows_of_json_file([doc])
        outcome = assert_loads_as_written(path, rows, strict, version)
        event(outcome)  # pytest --hypothesis-show-statistics shows how often each outcome came up
        assert_whole_files_load(outcomes, whole, strict, outcome)

    check()
    assert_ran_both_ways(outcomes)


def test_random_json_lines_load_as_written_or_are_refused_naming_the_file_and_row(tmp_path_factory):
    outcomes = collections.Counter()

    @SETTINGS
    @given(drawn=json_lines_rows(), ensure_ascii=st.booleans(), strict=st.booleans(), blank_lines=st.booleans())
    def check(drawn, ensure_ascii, strict, blank_lines):
        (rows, whole), path = drawn, tmp_path_factory.getbasetemp() / "random.jsonl"
        separator = "\n\n" if blank_lines else "\n"
        path.write_text(separator.join(json.dumps(row, ensure_ascii=ensure_ascii) for row in rows), encoding="utf-8")
        written, version = rows_of_json_file(rows)  # one line alone is read as a JSON document
        outcome = assert_loads_as_written(path, written, strict, version)
        event(outcome)
        assert_whole_files_load(outcomes, whole, strict, outcome)

    check()
    assert_ran_both_ways(outcomes)


@settings(max_examples=50, deadline=None)
@given(content=st.binary(max_size=64))
def test_random_bytes_load_cleanly_or_raise_squad_data_error(tmp_path_factory, content):
    path = tmp_path_factory.getbasetemp() / "random-bytes.json"
    path.write_bytes(content)
    assert_loads_cleanly_or_refuses(path, strict=False)


@st.composite
def valid_examples(draw, chars=CHARS):
    """Well-formed rows with unique ids, each answer a non-blank span of its context (texts may hold any character)."""
    text = st.text(chars, max_size=12)
    examples = []
    for i in range(draw(st.integers(1, 3))):
        context = draw(st.text(chars, min_size=1, max_size=20))
        start = draw(st.integers(0, len(context) - 1))
        answer = context[start : draw(st.integers(start + 1, len(context)))]
        assume(answer.strip())  # a blank answer is skipped (an error under strict): not a valid example
        examples.append(
            {
                "id": f"q{i}",
                "title": draw(text),
                "context": context,
                "question": "Q" + draw(text),
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
    return examples


def write_official(path, examples):
    paragraphs = [
        {
            "context": ex["context"],
            "qas": [
                {
                    "id": ex["id"],
                    "question": ex["question"],
                    "answers": [
                        {"text": t, "answer_start": s}
                        for t, s in zip(ex["answers"]["text"], ex["answers"]["answer_start"])
                    ],
                }
            ],
        }
        for ex in examples
    ]
    path.write_text(
        json.dumps(
            {"version": "1.1", "data": [{"title": examples[0]["title"], "paragraphs": paragraphs}]}, ensure_ascii=False
        ),
        encoding="utf-8",
    )


def write_csv(path, examples):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "title", "context", "question", "answers"])
        writer.writeheader()
        for ex in examples:
            writer.writerow({**ex, "answers": json.dumps(ex["answers"], ensure_ascii=False)})


@SETTINGS
@given(examples=valid_examples(), layout=st.sampled_from(["official", "jsonl", "jsonl-ascii"]))
def test_valid_json_files_load_every_character_intact(tmp_path_factory, examples, layout):
    path = tmp_path_factory.getbasetemp() / ("valid.json" if layout == "official" else "valid.jsonl")
    if layout == "official":
        examples = [{**ex, "title": examples[0]["title"]} for ex in examples]  # one article
        write_official(path, examples)
    else:
        path.write_text(
            "".join(json.dumps(ex, ensure_ascii=layout == "jsonl-ascii") + "\n" for ex in examples), encoding="utf-8"
        )
    rows, stats = load_squad_file(str(path), strict=True)
    assert rows == examples and stats.num_bad_answer_start == 0


# a raw "\r" in a CSV field comes back as "\n": files are read with universal newlines, like any text file
@SETTINGS
@given(examples=valid_examples(CHARS.filter(lambda c: c != "\r")))
def test_valid_csv_files_load_every_character_intact(tmp_path_factory, examples):
    path = tmp_path_factory.getbasetemp() / "valid.csv"
    write_csv(path, examples)
    rows, stats = load_squad_file(str(path), strict=True)
    assert rows == examples and stats.num_bad_answer_start == 0


@pytest.mark.parametrize("name, version", [("rajpurkar/squad_v2", "v2.0"), ("squad_v2", "v2.0"), ("squad", None)])
def test_a_hub_dataset_named_squad_v2_is_version_2_by_its_name(name, version, monkeypatch):
    import datasets

    answered = [{"id": "q1", "title": "", "context": "The river is the Ilvar.", "question": "What is the river?",
                 "answers": {"text": ["Ilvar"], "answer_start": [17]}}]  # fmt: skip
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: datasets.Dataset.from_list(answered))
    _, stats = load_squad_split(DataArguments(dataset_name=name), "validation")
    assert stats.version == version  # every question answered: only the name says v2.0 (other names: the rows)
    assert is_version_2(answered, stats.version) == (version == "v2.0")


# ---------------------------------------------------------------------------
# Column names (--question_column, --context_column, --answer_column, --id_column)
# ---------------------------------------------------------------------------

# the standard column -> the name a user's file gives it
USER_NAMES = {"id": "qid", "context": "passage", "question": "query", "answers": "gold"}
COLUMN_FLAGS = {"question_column": "query", "context_column": "passage", "answer_column": "gold", "id_column": "qid"}


def renamed_rows(rows: list[dict]) -> list[dict]:
    return [{USER_NAMES.get(key, key): value for key, value in row.items()} for row in rows]


def write_rows(path, rows: list[dict]) -> str:
    """rows as JSON Lines, or as CSV (answers as JSON) where path ends in .csv; returns the path."""
    if str(path).endswith(".csv"):
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            answers = next(key for key in rows[0] if key in ("answers", "gold"))
            writer.writerows({**row, answers: json.dumps(row[answers])} for row in rows)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("layout", ["jsonl", "csv"])
def test_a_file_with_other_column_names_loads_as_the_standard_one(tmp_path, layout):
    standard, _ = load_squad_file(DEV_FILE)
    path = write_rows(tmp_path / f"renamed.{layout}", renamed_rows(standard))
    for split, data_args in [
        ("train", DataArguments(train_file=path, **COLUMN_FLAGS)),
        ("validation", EvalDataArguments(validation_file=path, **COLUMN_FLAGS)),
    ]:
        dataset, _ = load_squad_split(data_args, split)
        assert list(dataset) == standard


def test_a_hub_dataset_with_other_column_names_loads_as_the_standard_one(monkeypatch):
    import datasets

    standard, _ = load_squad_file(DEV_FILE)
    renamed = datasets.Dataset.from_list(renamed_rows(standard))
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: asked.append(args) or renamed)
    dataset, _ = load_squad_split(DataArguments(dataset_name="someone/qa", **COLUMN_FLAGS), "train")
    assert list(dataset) == standard and asked == [("someone/qa", None)]
    with pytest.raises(SquadDataError) as info:
        load_squad_split(DataArguments(dataset_name="someone/qa", question_column="prompt"), "train")
    assert str(info.value) == (
        "dataset 'someone/qa': no columns 'prompt' (--question_column), 'context' (--context_column), 'answers' "
        "(--answer_column), 'id' (--id_column); columns are: qid, title, passage, query, gold"
    )


@pytest.mark.parametrize("layout", ["jsonl", "csv"])
def test_a_wrong_column_name_is_refused_naming_the_flag_and_the_columns(tmp_path, layout):
    path = write_rows(tmp_path / f"train.{layout}", [example(CONTEXT, "Ilvar", id_="a")])
    with pytest.raises(SquadDataError) as info:
        load_squad_split(DataArguments(train_file=path, question_column="query"), "train")
    assert str(info.value) == (
        f"{path}: no column 'query' (--question_column); columns are: id, title, context, question, answers"
    )


def test_a_row_without_a_renamed_column_is_refused_naming_the_row_and_the_flag(tmp_path):
    rows = renamed_rows([example(CONTEXT, "Ilvar", id_="a"), example(CONTEXT, "1399", id_="b")])
    del rows[1]["query"]
    path = write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(SquadDataError) as info:
        load_squad_file(path, columns=dict(USER_NAMES))
    assert str(info.value) == (
        f"{path}: example 1 (id 'b'): field 'query' (--question_column) is missing or not a non-empty string"
    )


def test_a_renamed_column_takes_the_place_of_a_column_with_the_standard_name(tmp_path):
    row = example(CONTEXT, "Ilvar", id_="a")
    swapped = {**row, "question": row["context"], "context": row["question"]}  # the two columns' names swapped
    path = write_rows(tmp_path / "swapped.jsonl", [swapped])
    columns = {"id": "id", "answers": "answers", "question": "context", "context": "question"}
    assert load_squad_file(path, columns=columns)[0] == [row]


def test_scoring_reads_other_column_names_too(tmp_path):
    standard, _ = load_squad_file(DEV_FILE, check_answers=False)
    path = write_rows(tmp_path / "dev.csv", renamed_rows(standard))
    examples, version_2, source = load_scored_examples(EvalDataArguments(validation_file=path, **COLUMN_FLAGS), False)
    assert (examples, version_2, source) == (standard, False, path)


def test_the_official_layout_ignores_the_column_flags():
    official, _ = load_squad_file(DEV_FILE)
    dataset, _ = load_squad_split(EvalDataArguments(validation_file=DEV_FILE, **COLUMN_FLAGS))
    assert list(dataset) == official


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"question_column": " "}, "--question_column must name a column"),
        ({"question_column": "text", "context_column": "text"}, "--question_column and --context_column name the "
         "same column 'text'"),
        ({"id_column": "question"}, "--question_column and --id_column name the same column 'question'"),
    ],
)  # fmt: skip
def test_column_flags_that_cannot_name_the_columns_are_refused(flags, message):
    for arguments in (DataArguments, EvalDataArguments):
        with pytest.raises(ConfigError, match=message):
            arguments(**flags)


# ---------------------------------------------------------------------------
# A validation split held out of the training data (--validation_split_percentage)
# ---------------------------------------------------------------------------


def test_the_split_keeps_each_context_on_one_side_and_counts_the_percentage_in_questions():
    rows, _ = load_squad_file(TRAIN_FILE)  # 220 questions, 40 contexts of 6 and 5 questions
    train, validation, counts = split_by_context(rows, 10, seed=7, source="train")
    assert {row["context"] for row in train}.isdisjoint(row["context"] for row in validation)
    assert sorted(train + validation, key=rows.index) == rows  # every question on one side, in the file's order
    assert train == [row for row in rows if row in train] and validation == [row for row in rows if row in validation]
    assert 22 <= len(validation) < 22 + 6  # at least 10% of the questions, less than one context more
    assert counts == {
        "percentage": 10,
        "seed": 7,
        "train": {"questions": len(train), "contexts": len({row["context"] for row in train})},
        "validation": {"questions": len(validation), "contexts": len({row["context"] for row in validation})},
    }
    assert counts["train"]["contexts"] + counts["validation"]["contexts"] == 40


def test_the_split_is_the_same_for_the_same_seed_and_another_for_another():
    rows, _ = load_squad_file(TRAIN_FILE)
    first = split_by_context(rows, 25, seed=1, source="train")
    assert split_by_context(list(rows), 25, seed=1, source="train") == first
    assert split_by_context(rows, 25, seed=2, source="train")[1] != first[1]


def test_a_split_that_leaves_nothing_to_train_on_is_refused():
    rows = [example(CONTEXT, "Ilvar", id_="a"), example(CONTEXT, "1399", id_="b")]  # one context
    with pytest.raises(SquadDataError) as info:
        split_by_context(rows, 1, seed=0, source="one.jsonl")
    assert str(info.value).startswith(
        "one.jsonl: --validation_split_percentage 1 leaves nothing to train on: its 2 questions have 1 distinct "
        "context(s)"
    )


def test_the_training_splits_come_from_the_held_out_contexts_and_are_cut_after_the_split():
    data_args = DataArguments(train_file=TRAIN_FILE, validation_split_percentage=10)
    splits, held_out = load_training_splits(data_args, seed=3, evaluates=True)
    train, validation = (list(splits[split][0]) for split in ("train", "validation"))
    assert (len(train), len(validation)) == (held_out["train"]["questions"], held_out["validation"]["questions"])
    assert {row["context"] for row in train}.isdisjoint(row["context"] for row in validation)
    assert splits["validation"][1].version == splits["train"][1].version == "1.1"  # the file's
    cut = DataArguments(train_file=TRAIN_FILE, validation_split_percentage=10, max_train_samples=5, max_eval_samples=4)
    cut_splits, cut_held_out = load_training_splits(cut, seed=3, evaluates=True)
    assert cut_held_out == held_out  # the same questions held out, whatever the cuts
    assert list(cut_splits["train"][0]) == train[:5] and list(cut_splits["validation"][0]) == validation[:4]


def test_without_a_percentage_the_validation_split_is_the_validation_file_and_only_where_the_run_evaluates():
    data_args = DataArguments(train_file=TRAIN_FILE, validation_file=DEV_FILE)
    splits, held_out = load_training_splits(data_args, seed=3, evaluates=True)
    assert held_out is None and len(splits["validation"][0]) == 44 and len(splits["train"][0]) == 220
    assert set(load_training_splits(data_args, seed=3, evaluates=False)[0]) == {"train"}


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"validation_split_percentage": 0}, "must be between 0 and 100 (both excluded), got 0"),
        ({"validation_split_percentage": 100}, "must be between 0 and 100 (both excluded), got 100"),
        (
            {"validation_split_percentage": 10, "validation_file": DEV_FILE},
            "--validation_split_percentage holds validation data out of the training data: give it or "
            "--validation_file, not both",
        ),
    ],
)
def test_a_validation_split_percentage_out_of_range_or_with_a_validation_file_is_refused(flags, message):
    with pytest.raises(ConfigError) as info:
        DataArguments(train_file=TRAIN_FILE, **flags)
    assert message in str(info.value)
