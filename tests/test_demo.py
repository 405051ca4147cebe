"""demo.py: the functions behind its Ask and Browse tabs on a tiny model, and one real headless browser that asks a
question of the page and reads the answer back."""

import json
import os
import shutil

import pytest
import yaml

from builders import answer_plan, write_jsonl
from fakes import free_port
from repo_paths import DEV_FILE, DEV_V2_FILE

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
BROWSER_INSTALL = "apt-get install -y chromium chromium-driver"
CONTEXT = "The Eiffel Tower is in Paris. Paris is the capital of France, and the tower was finished in 1889."
QUESTION = "Where is the Eiffel Tower?"
# what the run "recorded" in its run_config.yaml: the page's defaults
RECORDED = {"prompt_format": "plain", "strategies": ["beam"], "num_beams": 2, "constrain_to_context": True}


@pytest.fixture(scope="module")
def run_dir(adapter_dir, tmp_path_factory):
    """conftest's adapter, with a run_config.yaml recording a decoding other than the defaults."""
    path = tmp_path_factory.mktemp("demo-run") / "run"
    shutil.copytree(adapter_dir, path)
    (path / "run_config.yaml").write_text(yaml.safe_dump({**RECORDED, "max_new_tokens": 8}), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def demo_model(run_dir):
    from squad_lora.commands import demo

    args, model_args, prompt_args, decoding, _, recorded = demo.parse_arguments(["--adapter", run_dir])
    return demo.load_demo_model(args, model_args, prompt_args, decoding, recorded)


def error_of(function, *args) -> str:
    """The one line a script prints for the user's fault that function raises."""
    from squad_lora.errors import SquadLoraError

    with pytest.raises(SquadLoraError) as caught:
        function(*args)
    return f"error: {caught.value}"


# ---------------------------------------------------------------------------
# Ask
# ---------------------------------------------------------------------------


def test_the_run_s_recorded_decoding_is_the_default_and_shown(demo_model):
    from squad_lora.commands import demo

    assert demo_model.decoding.strategies == ["beam"]
    assert demo_model.decoding.constrain_to_context and demo_model.decoding.num_beams == 2
    assert demo_model.decoding.max_new_tokens == 8
    shown = demo.describe_defaults(demo_model)
    assert "**Prompt format** `plain`" in shown and "**strategies** beam" in shown
    assert "constrain_to_context on" in shown and "Recorded by the run" in shown and "num_beams 2" in shown


@pytest.mark.parametrize(
    "strategies, constrain, flags",
    [
        (["beam"], True, []),  # the recorded decoding
        (["greedy", "top_k"], False, ["--strategies", "greedy,top_k", "--constrain_to_context", "false"]),
    ],
)
def test_ask_answers_as_generate_py_does(demo_model, run_dir, strategies, constrain, flags, capsys):
    from squad_lora.commands import demo, generate

    rows = demo.ask(demo_model, CONTEXT, QUESTION, strategies, constrain)
    expected = generate.main(["--adapter", run_dir, "--context", CONTEXT, "--question", QUESTION, *flags])
    assert rows == [row for strategy_rows in expected.values() for row in strategy_rows]
    assert [row["strategy"] for row in rows] == strategies


def test_constrained_answers_are_highlighted_where_they_occur(demo_model):
    from squad_lora.commands import demo

    answers, spans, error = demo.ask_page(demo_model, CONTEXT, QUESTION, ["greedy", "beam"], True)
    assert error == ""
    assert "".join(text for text, _ in spans) == CONTEXT
    labelled = {label for _, label in spans if label}
    for row in demo.ask(demo_model, CONTEXT, QUESTION, ["greedy", "beam"], True):
        assert f'data-strategy="{row["strategy"]}"' in answers
        if row["prediction"]:  # a span of the context: found there, under its strategy's label
            assert row["prediction"].lower() in CONTEXT.lower()
            assert any(row["strategy"] in label.split(" + ") for label in labelled)


def test_highlight_finds_every_occurrence_as_whole_words():
    from squad_lora.commands import demo

    assert demo.highlight(CONTEXT, "Paris") == [
        ("The Eiffel Tower is in ", None),
        ("Paris", "answer"),
        (". ", None),
        ("Paris", "answer"),
        (" is the capital of France, and the tower was finished in 1889.", None),
    ]
    # case-insensitive; whole words first ("tower" twice, not inside another word)
    assert [text for text, label in demo.highlight(CONTEXT, "tower") if label] == ["Tower", "tower"]
    assert [text for text, label in demo.highlight("Parisians love Paris.", "Paris") if label] == ["Paris"]
    # inside a word only where it is nowhere a whole word (a constrained answer may stop inside one)
    assert demo.highlight("Parisians", "Paris") == [("Paris", "answer"), ("ians", None)]


def test_highlight_without_an_answer_in_the_context():
    from squad_lora.commands import demo

    assert demo.highlight(CONTEXT, "Berlin") == [(CONTEXT, None)]
    assert demo.highlight(CONTEXT, "") == [(CONTEXT, None)]
    assert demo.highlight(CONTEXT, "   ") == [(CONTEXT, None)]
    assert demo.highlight("", "Paris") == []


def test_overlapping_answers_get_both_labels():
    from squad_lora.commands import demo

    spans = demo.highlight_spans("It was finished in 1889 in Paris.", {"gold": ["1889"], "prediction": ["in 1889"]})
    assert spans == [
        ("It was finished ", None),
        ("in ", "prediction"),
        ("1889", "gold + prediction"),
        (" in Paris.", None),
    ]


def test_unlabelled_text_is_shown_word_by_word():
    from squad_lora.commands import demo

    pieces = demo.display_pieces(demo.highlight("Rivers: the Ilvar and  the Carrow.", "the Ilvar"))
    assert pieces == [("Rivers: ", None), ("the Ilvar", "answer"), (" ", None), ("and  ", None), ("the ", None),
                      ("Carrow.", None)]  # fmt: skip


def test_answers_are_shown_escaped_with_their_confidence():
    from squad_lora.commands import demo

    rows = [
        {"id": "question", "strategy": "greedy", "sample": 0, "prediction": "<b>Paris</b> & co", "confidence": 0.51234},
        {"id": "question", "strategy": "top_k", "sample": 1, "prediction": "", "confidence": 0.1},
    ]
    shown = demo.answers_html(rows)
    assert '<div class="answer-text">&lt;b&gt;Paris&lt;/b&gt; &amp; co</div>' in shown
    assert "confidence 0.512" in shown and 'data-strategy="top_k" data-sample="1"' in shown
    assert "top_k [1]" in shown and "(no answer)" in shown


@pytest.mark.parametrize(
    "context, question, strategies, message",
    [
        ("  ", QUESTION, ["greedy"], "error: the context is empty: paste the passage the answer is to come from"),
        (CONTEXT, "", ["greedy"], "error: the question is empty: type a question about the context"),
        (CONTEXT, QUESTION, [], "error: no strategy picked: choose at least one of greedy, beam, top_k, top_p, temperature"),
    ],
)  # fmt: skip
def test_bad_questions_are_refused_with_one_line(demo_model, context, question, strategies, message):
    from squad_lora.commands import demo

    assert demo.ask_page(demo_model, context, question, strategies, False) == ("", [], message)
    assert error_of(demo.ask, demo_model, context, question, strategies, False) == message


# ---------------------------------------------------------------------------
# Browse
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    """Predictions for the sample dev set: right, wrong, abstained ('') and missing, with the ids of each."""
    from squad_lora.data import load_squad_file

    examples, _ = load_squad_file(DEV_FILE)
    answers, kinds = {}, {"right": [], "wrong": [], "abstained": [], "missing": []}
    for i, ex in enumerate(examples):
        kind = ("right", "wrong", "abstained", "missing")[i % 4]
        kinds[kind].append(ex["id"])
        if kind != "missing":
            answers[ex["id"]] = {"right": ex["answers"]["text"][0], "wrong": "no such answer", "abstained": ""}[kind]
    path = tmp_path_factory.mktemp("demo-preds") / "predictions_greedy.json"
    path.write_text(json.dumps(answers), encoding="utf-8")
    return str(path), kinds


def test_browse_scores_equal_evaluate_squad_s(predictions, capsys):
    from squad_lora.commands import demo
    from squad_lora.commands import evaluate as evaluate_squad

    path, _ = predictions
    scores, rows = demo.browse(DEV_FILE, path, "all")
    assert scores == evaluate_squad.main([DEV_FILE, path])
    assert len(rows) == 44
    assert sum(row["exact"] for row in rows) / len(rows) * 100 == pytest.approx(scores["exact_match"])
    line = demo.format_scores(scores, rows)
    assert f"**exact_match** {scores['exact_match']:.2f}" in line and "44 questions, 11 abstained" in line


def test_browse_and_evaluate_squad_read_a_file_with_other_column_names_alike(predictions, tmp_path, capsys):
    from squad_lora.commands import demo
    from squad_lora.commands import evaluate as evaluate_squad
    from squad_lora.data import load_squad_file

    path, _ = predictions
    names = {"id": "qid", "context": "passage", "question": "query", "answers": "gold"}
    examples, _ = load_squad_file(DEV_FILE)
    renamed = [{names.get(key, key): value for key, value in ex.items()} for ex in examples]
    data_file = write_jsonl(tmp_path / "renamed.jsonl", renamed)
    flags = ["--question_column", "query", "--context_column", "passage",
             "--answer_column", "gold", "--id_column", "qid"]  # fmt: skip
    args, *_ = demo.parse_arguments(flags)
    assert demo.browse(data_file, path, "all", args) == demo.browse(DEV_FILE, path, "all")
    assert evaluate_squad.main([data_file, path, *flags]) == evaluate_squad.main([DEV_FILE, path])


def test_browse_scores_a_squad_v2_file_by_its_rules(tmp_path, capsys):
    from squad_lora.commands import demo
    from squad_lora.commands import evaluate as evaluate_squad
    from squad_lora.data import load_squad_file

    examples, _ = load_squad_file(DEV_V2_FILE)
    path = tmp_path / "predictions_greedy.json"
    path.write_text(json.dumps({ex["id"]: "" for ex in examples[:30]}), encoding="utf-8")
    scores, rows = demo.browse(DEV_V2_FILE, str(path), "abstained")
    assert scores == evaluate_squad.main([DEV_V2_FILE, str(path)])
    assert "HasAns_exact" in scores and len(rows) == 30


def test_browse_filters_wrong_and_abstained(predictions):
    from squad_lora.commands import demo

    path, kinds = predictions
    _, wrong = demo.browse(DEV_FILE, path, "wrong")
    _, abstained = demo.browse(DEV_FILE, path, "abstained")
    assert {row["id"] for row in wrong} == set(kinds["wrong"] + kinds["abstained"] + kinds["missing"])
    assert [row["id"] for row in abstained] == kinds["abstained"]
    missing = next(row for row in wrong if row["id"] in kinds["missing"])
    assert missing["prediction"] is None and missing["exact"] == 0 and missing["f1"] == 0.0
    assert (
        error_of(demo.filter_rows, wrong, "right")
        == "error: unknown filter 'right' (choose from all, wrong, abstained)"
    )


def test_a_question_is_shown_with_its_gold_answers_and_prediction(predictions):
    from squad_lora.commands import demo

    path, kinds = predictions
    _, rows = demo.browse(DEV_FILE, path, "all")
    right = next(row for row in rows if row["id"] == kinds["right"][0])
    text, spans = demo.question_view(right)
    assert right["question"] in text and "EM 1 · F1 1.00" in text
    assert "".join(piece for piece, _ in spans) == right["context"]
    both = [piece for piece, label in spans if label == "gold + prediction"]
    assert both and all(piece.lower() == right["prediction"].lower() for piece in both)
    abstained = next(row for row in rows if row["id"] == kinds["abstained"][0])
    text, spans = demo.question_view(abstained)
    assert "*(abstained)*" in text and {label for _, label in spans} <= {None, "gold"}
    assert demo.table_rows([abstained])[0][3] == "" and demo.question_view(None) == ("", [])


def test_browse_takes_generate_py_s_output_dir(predictions, tmp_path):
    from squad_lora.commands import demo

    path, _ = predictions
    directory = tmp_path / "preds"
    directory.mkdir()
    shutil.copy(path, directory / "predictions_greedy.json")
    assert demo.browse(DEV_FILE, str(directory))[0] == demo.browse(DEV_FILE, path)[0]
    shutil.copy(path, directory / "predictions_beam.json")
    assert error_of(demo.browse, DEV_FILE, str(directory)) == (
        f"error: {directory}: holds several predictions files (predictions_beam.json, predictions_greedy.json): "
        "give one of them"
    )


def bad_inputs(tmp_path, predictions_path) -> dict:
    """name -> (data file, predictions file) of each bad input the scripts refuse."""
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"data": [', encoding="utf-8")
    bad_jsonl = tmp_path / "predictions_bad.jsonl"
    bad_jsonl.write_text('{"id": "a", "prediction": "x"}\nnot json\n', encoding="utf-8")
    other = write_jsonl(tmp_path / "predictions_other.jsonl", [{"id": "someone-else", "prediction": "x"}])
    return {
        "missing data file": (str(tmp_path / "missing.json"), predictions_path),
        "missing predictions": (DEV_FILE, str(tmp_path / "missing-predictions.json")),
        "data file not JSON": (str(bad_json), predictions_path),
        "predictions not JSON": (DEV_FILE, str(bad_jsonl)),
        "predictions for another dataset": (DEV_FILE, other),
        "data file as predictions": (DEV_FILE, DEV_FILE),
    }


def test_bad_files_are_refused_with_evaluate_squad_s_one_line(predictions, tmp_path, capsys):
    from squad_lora.commands import demo
    from squad_lora.commands import evaluate as evaluate_squad

    for name, (data_file, predictions_file) in bad_inputs(tmp_path, predictions[0]).items():
        expected = error_of(evaluate_squad.main, [data_file, predictions_file])
        assert demo.browse_page(data_file, predictions_file, "all") == ("", [], [], expected), name
        assert "\n" not in expected and "Traceback" not in expected, name
    assert demo.browse_page(" ", "", "all")[3] == (
        "error: no data file: give the SQuAD file the predictions answer; no predictions file: give generate.py's "
        "predictions_<strategy>.json(l) or its --output_dir"
    )


def test_the_script_refuses_bad_files_and_flags_before_any_model_loads(predictions, tmp_path, monkeypatch):
    from squad_lora.commands import demo

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(demo, "load_demo_model", no_model)
    missing = str(tmp_path / "missing.json")
    assert error_of(demo.main, ["--data_file", missing, "--predictions_file", predictions[0]]) == (
        f"error: {missing}: no such file"
    )
    assert error_of(demo.main, ["--port", "70000"]) == "error: --port must be between 1 and 65535, got 70000"


def test_a_port_in_use_is_refused_with_one_line(demo_model):
    import socket

    from squad_lora.commands import demo

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = demo.DemoArguments(port=port)
        assert error_of(demo.launch, demo.build_app(demo_model, args), args, False) == (
            f"error: --port {port}: cannot serve on 127.0.0.1:{port} (in use?): pass another --port"
        )


# ---------------------------------------------------------------------------
# A user's bad day: odd input, and the server under it
# ---------------------------------------------------------------------------

ODD_TEXTS = {
    "CJK": ("埃菲尔铁塔位于巴黎。巴黎是法国的首都，铁塔于1889年建成。", "埃菲尔铁塔在哪里？"),
    "RTL": ("برج إيفل في باريس. باريس عاصمة فرنسا، واكتمل البرج عام 1889.", "أين يقع برج إيفل؟"),
    "emoji": ("The 🗼 is in Paris 🇫🇷. Paris is the capital of France 👩‍👩‍👧.", "Where is the 🗼?"),
    "NUL": ("The Eiffel Tower\x00 is in Paris.", "Where is\x00 the tower?"),
    "200k characters": (CONTEXT + " " + "More words about other towers. " * 6450, QUESTION),
}


@pytest.mark.parametrize("context, question", list(ODD_TEXTS.values()), ids=list(ODD_TEXTS))
def test_any_text_is_answered_as_generate_py_answers_it(demo_model, run_dir, context, question, capsys):
    from squad_lora.commands import demo, generate

    answers, spans, error = demo.ask_page(demo_model, context, question, ["beam"], True)
    assert error == ""
    assert "".join(text for text, _ in spans) == context  # the whole context shown, nothing lost or mangled
    expected = generate.main(["--adapter", run_dir, "--context", context, "--question", question])
    assert demo.ask(demo_model, context, question, ["beam"], True) == expected["beam"]
    assert f'<div class="answer-text">{demo.html.escape(expected["beam"][0]["prediction"])}</div>' in answers


def test_a_question_too_long_for_the_model_is_one_line_not_an_empty_answer(demo_model):
    from squad_lora.commands import demo

    assert demo.ask_page(demo_model, CONTEXT, "why " * 50_000, ["greedy"], False) == ("", [], (
        "error: the question is too long: the question alone is over the 504 prompt tokens the model takes (its "
        "maximum length less max_new_tokens): shorten it"
    ))  # fmt: skip


def test_lone_surrogates_are_refused_with_one_line_naming_the_field(demo_model):
    from squad_lora.commands import demo

    # what a browser sends for half an emoji: no tokenizer takes it
    assert demo.ask_page(demo_model, "Paris \ud83d is", "Where\udfff?", ["greedy"], False)[2] == (
        "error: the context holds a lone UTF-16 surrogate (\\ud83d) at character 7: it is not text; "
        "the question holds a lone UTF-16 surrogate (\\udfff) at character 6: it is not text"
    )


def call_ask(url: str, data) -> tuple[str, object]:
    """(event, data) of the page's ask endpoint over HTTP, as the page calls it: "complete" with the outputs, or
    "error"."""
    import httpx

    body = json.dumps({"data": data}).encode()  # a lone surrogate escaped (\ud800), as a browser's JSON has it
    started = httpx.post(f"{url}gradio_api/call/ask", content=body, headers={"content-type": "application/json"})
    started.raise_for_status()
    stream = httpx.get(f"{url}gradio_api/call/ask/{started.json()['event_id']}", timeout=120).text
    event = next(line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event: "))
    data_line = next(line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("data: "))
    return event, json.loads(data_line)


def listening_addresses(port: int) -> set[str]:
    import psutil

    listening = [c for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    return {c.laddr.ip for c in listening if c.laddr.port == port}


@pytest.mark.parametrize("flags, address", [([], "127.0.0.1"), (["--host", "0.0.0.0"], "0.0.0.0")])
def test_the_server_binds_where_told_and_keeps_serving_after_bad_requests(demo_model, flags, address):
    import httpx

    from squad_lora.commands import demo

    port = free_port()
    args, *_ = demo.parse_arguments(["--port", str(port), *flags])
    app = demo.build_app(demo_model, args)
    demo.launch(app, args, block=False)
    try:
        assert listening_addresses(port) == {address}  # this machine only, unless --host says otherwise
        url = f"http://127.0.0.1:{port}/"
        assert httpx.post(f"{url}gradio_api/call/ask", content=b"{not json", timeout=30).status_code == 422
        event, outputs = call_ask(url, [CONTEXT + "\ud800", QUESTION, ["greedy"], False])
        assert event == "complete" and outputs[2].startswith("error: the context holds a lone UTF-16 surrogate")
        assert call_ask(url, [CONTEXT, QUESTION, 7, False])[0] == "error"  # not what the page sends
        event, outputs = call_ask(url, [CONTEXT, QUESTION, ["greedy"], False])
        (row,) = demo.ask(demo_model, CONTEXT, QUESTION, ["greedy"], False)
        assert event == "complete" and outputs[2] == ""
        assert f">{demo.html.escape(row['prediction'])}</div>" in outputs[0]
    finally:
        app.close()


@pytest.mark.parametrize("fault", ["missing adapter", "port in use"])
def test_the_script_refuses_a_bad_start_with_one_line_and_status_2(run_dir, tmp_path, fault, capsys):
    import socket

    from squad_lora import cli
    from squad_lora.commands import demo

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv, message = {
            "missing adapter": (["--adapter", str(tmp_path / "gone")], f"error: --adapter {tmp_path / 'gone'}: no such directory"),
            "port in use": (["--adapter", run_dir, "--port", str(port)],
                            f"error: --port {port}: cannot serve on 127.0.0.1:{port} (in use?): pass another --port"),
        }[fault]  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            cli.run(lambda: demo.main(argv, block=False))
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.splitlines()[-1] == message and "Traceback" not in stderr


# ---------------------------------------------------------------------------
# The page in a real browser
# ---------------------------------------------------------------------------


def headless_chromium(user_data_dir: str):
    """Debian's Chromium through its chromedriver, with nothing that reaches for the network."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.fail(f"no headless browser: {', '.join(missing)} missing; install it with: {BROWSER_INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail('selenium is missing: pip install -e ".[demo]"')
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1500",
        f"--user-data-dir={user_data_dir}",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.slow
def test_a_browser_asks_the_page_and_reads_answer_questions_answer(run_dir, tmp_path, monkeypatch):
    from accelerate import PartialState
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from squad_lora.args import ModelArguments
    from squad_lora.commands import demo
    from squad_lora.decoding import answer_questions
    from squad_lora.modeling import load_for_inference

    monkeypatch.setenv("SE_AVOID_STATS", "true")  # selenium: no usage statistics sent
    port = free_port()
    app = demo.main(["--adapter", run_dir, "--port", str(port)], block=False)
    driver = None
    try:
        driver = headless_chromium(str(tmp_path / "chromium-profile"))
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 30)
        context = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#ask-context textarea")))
        context.send_keys(CONTEXT)
        # no question yet: the page says so in one line
        driver.find_element(By.ID, "ask-button").click()
        error = wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "ask-error"), "error:"))
        assert error
        assert driver.find_element(By.ID, "ask-error").text == (
            "error: the question is empty: type a question about the context"
        )
        driver.find_element(By.CSS_SELECTOR, "#ask-question textarea, #ask-question input").send_keys(QUESTION)
        driver.find_element(By.ID, "ask-button").click()
        shown = wait.until(
            expected_conditions.presence_of_element_located(
                (By.CSS_SELECTOR, "#ask-answers .answer[data-strategy='beam'] .answer-text")
            )
        ).get_attribute("textContent")
        assert driver.find_element(By.ID, "ask-error").text == ""
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(entry => entry.name)")
        assert loaded and all(url.startswith(f"http://127.0.0.1:{port}/") for url in loaded)  # nothing from outside
        screenshot = tmp_path / "demo-ask.png"
        driver.save_screenshot(str(screenshot))
    finally:
        if driver is not None:
            driver.quit()
        app.close()

    # the same question, answered by answer_questions with the run's recorded decoding (beam, constrained)
    model, tokenizer = load_for_inference(run_dir, ModelArguments())
    plan = answer_plan(tokenizer, model, strategies=["beam"], num_beams=2, max_new_tokens=8, constrain_to_context=True)
    example = {"id": "question", "context": CONTEXT, "question": QUESTION}
    expected = answer_questions(model, tokenizer, [example], plan, PartialState(), 42, progress=False)
    assert shown == expected["beam"][0]["prediction"]

    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    with Image.open(screenshot) as image:
        assert image.size[0] >= 1000 and image.size[1] >= 1000
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # a rendered page, not a blank one
