"""Try an adapter in the browser: ask it questions, and browse a predictions file with its EM/F1.

    pip install -e ".[demo]"
    python demo.py --adapter outputs/exp_r8_lr2e-4_attn                 # then open http://127.0.0.1:7860
    python demo.py --adapter outputs/exp_r8_lr2e-4_attn --data_file data/sample/dev-v1.1.json \\
        --predictions_file outputs/exp_r8_lr2e-4_attn/preds/predictions_greedy.json
    python demo.py --model_name_or_path gpt2 --port 7861                 # a zero-shot base

Ask: paste a context and a question, pick strategies, and see each strategy's answer with its confidence and
where it occurs in the context. Browse: a SQuAD data file and a predictions file, scored as evaluate_squad.py
scores them, filtered to all, wrong or abstained questions. The model loads as generate.py loads it (a run dir,
an adapter, a merged model or a base), and the run's recorded prompt format and decoding are the defaults.

Offline: Gradio's analytics and version check are off, and no share link is made unless --share. A user's
fault in the page shows as one `error: ...` line, the scripts' own message.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from accelerate import PartialState

from squad_lora import cli, outputs
from squad_lora.args import (
    STRATEGIES,
    AdapterArguments,
    ColumnArguments,
    DecodingArguments,
    EvalDataArguments,
    LoggingArguments,
    ModelArguments,
    PromptArguments,
)
from squad_lora.decoding import answer_questions
from squad_lora.errors import ConfigError, PredictionsError, SquadLoraError, raise_problems
from squad_lora.modeling import inference_source, load_inference_model, load_tokenizer_and_config
from squad_lora.plan import describe, resolve_answer_plan
from squad_lora.scoring import (
    check_ids,
    find_prediction_files,
    load_scored_examples,
    read_predictions,
    score_predictions,
    scored_answers,
)

logger = logging.getLogger(__name__)

SHOW_CHOICES = ("all", "wrong", "abstained")  # Browse's filter: abstained = the empty prediction
GOLD, PREDICTION = "gold", "prediction"
BROWSE_COLORS = {GOLD: "#34d399", PREDICTION: "#fb923c", f"{GOLD} + {PREDICTION}": "#60a5fa"}
TABLE_HEADERS = ["id", "question", "gold answers", "prediction", "EM", "F1"]
APP_CSS = """
.answers { display: flex; flex-wrap: wrap; gap: 0.75rem; }
.answer { flex: 1 1 12rem; border: 1px solid #d1d5db; border-radius: 0.5rem; padding: 0.6rem 0.8rem; }
.answer .strategy { font-weight: 600; }
.answer .answer-text { font-size: 1.15rem; margin: 0.3rem 0; white-space: pre-wrap; }
.answer .confidence, .answer .abstained { color: #6b7280; font-size: 0.9rem; }
"""


@dataclass
class DemoArguments(AdapterArguments, ColumnArguments):  # the column flags: Browse's data files
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Address the page is served on: 127.0.0.1 (this machine only), or 0.0.0.0 for every one."},
    )
    port: int = field(default=7860, metadata={"help": "Port the page is served on."})
    share: bool = field(
        default=False, metadata={"help": "Also make a public Gradio share link (through Gradio's servers); off."}
    )
    data_file: Optional[str] = field(
        default=None,
        metadata={"help": "Browse: a SQuAD data file to load at start (any layout evaluate_squad.py reads)."},
    )
    predictions_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "Browse: the predictions to load with --data_file: a predictions file, or a generate.py "
            "--output_dir holding one."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed for the sampling strategies (the same answer per click)."})

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")


@dataclass(frozen=True)
class DemoModel:
    """What the Ask tab answers with: the loaded model, and the flags each question's plan starts from."""

    model: Any
    tokenizer: Any
    config: Any  # the model's transformers config, which the plan reads
    tokenizer_source: str  # where the tokenizer came from, for the plan's messages
    decoding: DecodingArguments  # the flags, over the run's recorded decoding
    prompt_args: PromptArguments
    attn_implementation: Optional[str]
    process: PartialState
    seed: int
    recorded: dict  # what the run recorded (outputs.recorded_decoding), shown on the page


# ---------------------------------------------------------------------------
# Ask
# ---------------------------------------------------------------------------


def ask(demo: DemoModel, context: str, question: str, strategies: list[str], constrain: bool) -> list[dict]:
    """The answers to one question, one row per strategy and sample: {"id", "strategy", "sample", "prediction",
    "confidence"}, as generate.py answers it. The plan is resolved anew from the flags and these choices."""
    problems = []
    if not (context or "").strip():
        problems.append("the context is empty: paste the passage the answer is to come from")
    if not (question or "").strip():
        problems.append("the question is empty: type a question about the context")
    for name, text in (("context", context), ("question", question)):
        problems += not_text(name, text)
    if not strategies:
        problems.append(f"no strategy picked: choose at least one of {', '.join(STRATEGIES)}")
    raise_problems(problems)
    decoding = dataclasses.replace(demo.decoding, strategies=list(strategies), constrain_to_context=bool(constrain))
    plan = resolve_answer_plan(
        decoding, demo.prompt_args, demo.tokenizer, demo.config, demo.attn_implementation, demo.tokenizer_source
    )
    example = {"id": "question", "context": context, "question": question}
    results = answer_questions(demo.model, demo.tokenizer, [example], plan, demo.process, demo.seed, progress=False)
    rows = [row for rows in results.values() for row in rows]
    if not rows:  # answer_questions skips a question too long for any prompt (a dataset goes on without it)
        raise ConfigError(
            f"the question is too long: the question alone is over the {plan.max_prompt_tokens} prompt tokens the "
            "model takes (its maximum length less max_new_tokens): shorten it"
        )
    return rows


def not_text(name: str, text: str | None) -> list[str]:
    """The problem of a field that holds a lone UTF-16 surrogate (a browser sends one from a cut emoji or a bad
    paste), which no tokenizer takes; none for text."""
    try:
        (text or "").encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start : e.end].encode("utf-8", "backslashreplace").decode()
        return [f"the {name} holds a lone UTF-16 surrogate ({bad}) at character {e.start + 1}: it is not text"]
    return []


def answer_spans(text: str, answer: str) -> list[tuple[int, int]]:
    """Where an answer occurs in a text, case-insensitively: as whole words where it does so, else anywhere."""
    answer = answer.strip()
    if not answer:
        return []
    pattern = re.escape(answer)
    for bounded in (rf"(?<!\w){pattern}(?!\w)", pattern):
        spans = [m.span() for m in re.finditer(bounded, text, re.IGNORECASE)]
        if spans:
            return spans
    return []


def highlight_spans(context: str, answers: dict[str, list[str]]) -> list[tuple[str, str | None]]:
    """The context cut into (text, label) pieces for gr.HighlightedText: each answer's every occurrence gets its
    label, and text that several labels cover gets them joined ("gold + prediction"); the rest is unlabelled."""
    labels: list[list[str]] = [[] for _ in context]
    for label, texts in answers.items():
        for text in texts:
            for start, end in answer_spans(context, text):
                for i in range(start, end):
                    if label not in labels[i]:
                        labels[i].append(label)
    pieces: list[tuple[str, str | None]] = []
    for char, char_labels in zip(context, labels):
        label = " + ".join(char_labels) or None
        if pieces and pieces[-1][1] == label:
            pieces[-1] = (pieces[-1][0] + char, label)
        else:
            pieces.append((char, label))
    return pieces


def highlight(context: str, answer: str, label: str = "answer") -> list[tuple[str, str | None]]:
    """The context as (text, label) pieces, every occurrence of the answer labelled."""
    return highlight_spans(context, {label: [answer]})


def display_pieces(pieces: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The unlabelled text cut into words, so that gr.HighlightedText wraps it as a paragraph: it lays each piece
    out as one box, and a long one after an answer would start a new line."""
    return [(word, label) for text, label in pieces for word in ([text] if label else re.findall(r"\S+\s*|\s+", text))]


def answers_html(rows: list[dict]) -> str:
    """The answers side by side: one card per strategy and sample, with its confidence."""
    cards = []
    for row in rows:
        name = row["strategy"] + (f" [{row['sample']}]" if row["sample"] else "")
        abstained = "" if row["prediction"] else '<div class="abstained">(no answer)</div>'
        cards.append(
            f'<div class="answer" data-strategy="{html.escape(row["strategy"])}" data-sample="{row["sample"]}">'
            f'<div class="strategy">{html.escape(name)}</div>'
            f'<div class="answer-text">{html.escape(row["prediction"])}</div>{abstained}'
            f'<div class="confidence">confidence {row["confidence"]:.3f}</div></div>'
        )
    return f'<div class="answers">{"".join(cards)}</div>'


def describe_defaults(demo: DemoModel) -> str:
    """The prompt format and decoding the page answers with by default, and what the run recorded of them."""
    d = demo.decoding
    lines = [
        f"**Prompt format** `{demo.prompt_args.prompt_format}` · **strategies** {', '.join(d.strategies)} · "
        f"max_new_tokens {d.max_new_tokens} · top_k {d.top_k} · top_p {d.top_p} · temperature {d.temperature} · "
        f"num_beams {d.num_beams} · num_samples {d.num_samples} · constrain_to_context "
        f"{'on' if d.constrain_to_context else 'off'}"
    ]
    if demo.recorded:
        recorded = ", ".join(f"{key} {value}" for key, value in demo.recorded.items())
        lines.append(f"Recorded by the run (the defaults here, unless a flag overrides them): {recorded}")
    else:
        lines.append("No decoding recorded (not a run directory): the flags' defaults.")
    return "  \n".join(lines)


def ask_page(demo: DemoModel, context: str, question: str, strategies: list[str], constrain: bool) -> tuple:
    """The Ask tab's outputs: (answers HTML, highlighted context, error line); a user's fault is the error line."""
    try:
        rows = ask(demo, context, question, strategies, constrain)
    except SquadLoraError as e:
        return "", [], f"error: {e}"
    by_strategy: dict[str, list[str]] = {}
    for row in rows:
        by_strategy.setdefault(row["strategy"], []).append(row["prediction"])
    return answers_html(rows), display_pieces(highlight_spans(context, by_strategy)), ""


# ---------------------------------------------------------------------------
# Browse
# ---------------------------------------------------------------------------


def predictions_path(path: str) -> str:
    """A predictions file, or the one predictions file in a directory (generate.py's --output_dir)."""
    if not os.path.isdir(path):
        return path
    files = find_prediction_files([path])
    if len(files) > 1:
        names = ", ".join(os.path.basename(f) for f in files)
        raise PredictionsError(f"{path}: holds several predictions files ({names}): give one of them")
    return files[0]


def load_browse(
    data_file: str, predictions_file: str, columns: ColumnArguments | None = None
) -> tuple[dict, list[dict]]:
    """(scores, one row per question) of a data file (its columns named by `columns`, default SQuAD's) and its
    predictions, scored as evaluate_squad.py does.

    A row: {"id", "question", "context", "answers" (gold texts), "prediction" (None: none given), "exact", "f1"}.
    """
    problems = []
    if not (data_file or "").strip():
        problems.append("no data file: give the SQuAD file the predictions answer")
    if not (predictions_file or "").strip():
        problems.append("no predictions file: give generate.py's predictions_<strategy>.json(l) or its --output_dir")
    raise_problems(problems)
    path = predictions_path(predictions_file.strip())
    predictions = read_predictions(path)  # first, as evaluate_squad.py: a bad file fails before the data loads
    names = {f.name: getattr(columns, f.name) for f in dataclasses.fields(ColumnArguments)} if columns else {}
    data_args = EvalDataArguments(validation_file=data_file.strip(), **names)
    examples, version_2, source = load_scored_examples(data_args, False)
    check_ids(predictions, examples, path, source)
    scores = score_predictions(examples, predictions, version_2, source=path)
    rows = []
    for ex, row in zip(examples, scored_answers(examples, predictions, version_2)):
        exact = row.pop("exact_match")
        rows.append({**row, "context": ex["context"], "exact": exact})
    return scores, rows


def filter_rows(rows: list[dict], show: str) -> list[dict]:
    """The rows Browse shows: all, the wrong ones (no exact match), or the abstained ones (empty prediction)."""
    if show not in SHOW_CHOICES:
        raise ConfigError(f"unknown filter {show!r} (choose from {', '.join(SHOW_CHOICES)})")
    if show == "wrong":
        return [row for row in rows if not row["exact"]]
    if show == "abstained":
        return [row for row in rows if row["prediction"] == ""]
    return list(rows)


def browse(
    data_file: str, predictions_file: str, show: str = "all", columns: ColumnArguments | None = None
) -> tuple[dict, list[dict]]:
    """(scores over every question, the rows the filter keeps)."""
    scores, rows = load_browse(data_file, predictions_file, columns)
    return scores, filter_rows(rows, show)


def format_scores(scores: dict, rows: list[dict]) -> str:
    """The metric's result as one markdown line, with the number of questions and abstentions."""
    values = " · ".join(
        f"**{key}** {value:.2f}" if isinstance(value, float) else f"**{key}** {value}" for key, value in scores.items()
    )
    num_abstained = sum(row["prediction"] == "" for row in rows)
    return f"{values}  \n{len(rows)} questions, {num_abstained} abstained"


def table_rows(rows: list[dict]) -> list[list]:
    return [
        [
            row["id"],
            row["question"],
            " | ".join(row["answers"]),
            "(no prediction)" if row["prediction"] is None else row["prediction"],
            row["exact"],
            round(row["f1"], 3),
        ]
        for row in rows
    ]


def question_view(row: dict | None) -> tuple[str, list[tuple[str, str | None]]]:
    """One question to read: (markdown of the question, gold answers and prediction; the highlighted context)."""
    if row is None:
        return "", []
    prediction = row["prediction"]
    shown = "*(no prediction)*" if prediction is None else "*(abstained)*" if prediction == "" else f"`{prediction}`"
    text = (
        f"**{html.escape(row['id'])}**: {html.escape(row['question'])}  \n"
        f"**Gold** {' | '.join(f'`{a}`' for a in row['answers']) or '*(unanswerable)*'}  \n"
        f"**Prediction** {shown} · EM {row['exact']} · F1 {row['f1']:.2f}"
    )
    spans = highlight_spans(row["context"], {GOLD: row["answers"], PREDICTION: [prediction or ""]})
    return text, display_pieces(spans)


def browse_page(data_file: str, predictions_file: str, show: str, columns: ColumnArguments | None = None) -> tuple:
    """The Browse tab after loading: (scores line, every row, the rows shown, error line)."""
    try:
        scores, rows = load_browse(data_file, predictions_file, columns)
        shown = filter_rows(rows, show)
    except SquadLoraError as e:
        return "", [], [], f"error: {e}"
    return format_scores(scores, rows), rows, shown, ""


# ---------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------


def import_gradio():
    """gradio, with its analytics and version check off: it reads GRADIO_ANALYTICS_ENABLED when imported."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as e:
        raise ConfigError('demo.py needs gradio, an optional extra: pip install -e ".[demo]"') from e
    return gradio


def _question_choices(rows: list[dict]) -> list[tuple[str, str]]:
    return [(f"{row['id']}: {row['question'][:80]}", row["id"]) for row in rows]


def _shown_update(gr, shown: list[dict]) -> tuple:
    """The table, the question picker and the question view for the rows shown (the first one selected)."""
    first = shown[0] if shown else None
    picker = gr.Dropdown(choices=_question_choices(shown), value=first["id"] if first else None)
    return (table_rows(shown), picker, *question_view(first))


def _on_load(gr, columns: ColumnArguments, data_file: str, predictions_file: str, show: str) -> tuple:
    scores_line, rows, shown, error = browse_page(data_file, predictions_file, show, columns)
    return (scores_line, rows, *_shown_update(gr, shown), error)


def _on_filter(gr, rows: list[dict], show: str) -> tuple:
    return _shown_update(gr, filter_rows(rows, show))


def _on_pick(rows: list[dict], question_id: str) -> tuple:
    return question_view(next((row for row in rows if row["id"] == question_id), None))


# Long by design: the page's components and their wiring in the order they appear, as Gradio's Blocks read.
def build_app(demo: DemoModel, args: DemoArguments, preloaded: tuple | None = None):
    """The Gradio page: an Ask tab over `demo`, a Browse tab (preloaded: browse_page's result for the files
    given at start)."""
    gr = import_gradio()
    scores_line, rows, shown, _ = preloaded or ("", [], [], "")
    with gr.Blocks(analytics_enabled=False, title="squad-lora demo") as app:
        gr.Markdown(f"# squad-lora: {html.escape(args.adapter or demo.tokenizer_source)}")
        with gr.Tab("Ask"):
            gr.Markdown(describe_defaults(demo), elem_id="ask-defaults")
            with gr.Row():
                with gr.Column():
                    context = gr.Textbox(label="Context", lines=8, elem_id="ask-context")
                    question = gr.Textbox(label="Question", elem_id="ask-question")
                with gr.Column():
                    strategies = gr.CheckboxGroup(
                        list(STRATEGIES), value=demo.decoding.strategies, label="Strategies", elem_id="ask-strategies"
                    )
                    constrain = gr.Checkbox(
                        value=demo.decoding.constrain_to_context,
                        label="Constrained to context",
                        elem_id="ask-constrain",
                    )
                    answer_button = gr.Button("Answer", variant="primary", elem_id="ask-button")
            ask_error = gr.Markdown(elem_id="ask-error")
            answers = gr.HTML(elem_id="ask-answers")
            highlighted = gr.HighlightedText(
                label="Where each answer is in the context",
                show_legend=True,
                show_inline_category=False,
                elem_id="ask-context-view",
            )
            answer_button.click(
                functools.partial(ask_page, demo),
                [context, question, strategies, constrain],
                [answers, highlighted, ask_error],
                api_name="ask",  # POST /gradio_api/call/ask: the page's answers without the page
            )
        with gr.Tab("Browse"):
            with gr.Row():
                data_file = gr.Textbox(value=args.data_file or "", label="SQuAD data file", elem_id="browse-data")
                predictions_file = gr.Textbox(
                    value=args.predictions_file or "", label="Predictions file or directory", elem_id="browse-preds"
                )
                load_button = gr.Button("Load", elem_id="browse-button")
            browse_error = gr.Markdown(elem_id="browse-error")
            scores = gr.Markdown(scores_line, elem_id="browse-scores")
            all_rows = gr.State(rows)
            show = gr.Radio(list(SHOW_CHOICES), value="all", label="Show", elem_id="browse-show")
            table = gr.Dataframe(table_rows(shown), headers=TABLE_HEADERS, interactive=False, elem_id="browse-table")
            first = shown[0] if shown else None
            picker = gr.Dropdown(
                _question_choices(shown), value=first["id"] if first else None, label="Question", elem_id="browse-pick"
            )
            question_text, context_spans = question_view(first)
            question_md = gr.Markdown(question_text, elem_id="browse-question")
            context_view = gr.HighlightedText(
                context_spans,
                color_map=BROWSE_COLORS,
                show_legend=True,
                show_inline_category=False,
                label="Context",
                elem_id="browse-context",
            )
            shown_outputs = [table, picker, question_md, context_view]
            load_button.click(
                functools.partial(_on_load, gr, args),
                [data_file, predictions_file, show],
                [scores, all_rows, *shown_outputs, browse_error],
            )
            show.change(functools.partial(_on_filter, gr), [all_rows, show], shown_outputs)
            picker.change(_on_pick, [all_rows, picker], [question_md, context_view])
    return app


def launch(app, args: DemoArguments, block: bool = True) -> None:
    """Serve the page on --host/--port; a share link only with --share. block False: return once it is up."""
    try:
        app.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            ssr_mode=False,  # no Node server: the page is the prebuilt one gradio ships
            prevent_thread_lock=not block,
            css=APP_CSS,
        )
    except OSError as e:  # gradio's message names its own parameters, not our flags
        raise ConfigError(
            f"--port {args.port}: cannot serve on {args.host}:{args.port} (in use?): pass another --port"
        ) from e


# ---------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------


def load_demo_model(args: DemoArguments, model_args, prompt_args, decoding, recorded: dict) -> DemoModel:
    """The model as generate.py loads it, its plan for the flags checked once before the weights load."""
    process = cli.process_state()
    source = inference_source(args.adapter, model_args)
    tokenizer, model_config = load_tokenizer_and_config(source, model_args.trust_remote_code)
    plan = resolve_answer_plan(
        decoding, prompt_args, tokenizer, model_config, model_args.attn_implementation, source.tokenizer
    )
    logger.info("plan for the flags (each question resolves its own): %s", describe(plan))
    model = load_inference_model(source, model_args, args.merge, model_args.attn_implementation)
    model.to(process.device)
    return DemoModel(
        model=model,
        tokenizer=tokenizer,
        config=model_config,
        tokenizer_source=source.tokenizer,
        decoding=decoding,
        prompt_args=prompt_args,
        attn_implementation=model_args.attn_implementation,
        process=process,
        seed=args.seed,
        recorded=recorded,
    )


def preload_browse(args: DemoArguments) -> tuple | None:
    """browse_page's result for the --data_file and --predictions_file given at start (None without both)."""
    if not (args.data_file and args.predictions_file):
        return None
    scores, rows = load_browse(args.data_file, args.predictions_file, args)
    return format_scores(scores, rows), rows, rows, ""


def parse_arguments(argv: list[str] | None) -> tuple:
    """(args, model_args, prompt_args, decoding, log_args, recorded): the flags over the run's recorded decoding."""
    types = (DemoArguments, ModelArguments, PromptArguments, DecodingArguments, LoggingArguments)
    # the run's decoding is the default wherever this command line (or its config) does not say otherwise
    recorded = outputs.recorded_decoding(cli.flag_value(argv, "adapter"))
    parsed, _, _ = cli.parse_args(types, argv, defaults=recorded, bare_words="a config file")
    return (*parsed, recorded)


def main(argv: list[str] | None = None, block: bool = True):
    """Serve the demo; block False (tests): return the running app once it is up (app.close() stops it)."""
    args, model_args, prompt_args, decoding, log_args, recorded = parse_arguments(argv)
    cli.setup_script_logging(__name__, log_args)
    if recorded:
        logger.info("decoding recorded by %s (flags given here override it): %s", args.adapter, recorded)
    import_gradio()  # before the model loads: a missing extra is said at once

    preloaded = preload_browse(args)  # before the model: a bad file fails at once, as in evaluate_squad.py
    demo = load_demo_model(args, model_args, prompt_args, decoding, recorded)
    app = build_app(demo, args, preloaded)
    launch(app, args, block)
    return app


if __name__ == "__main__":
    cli.run(main)
