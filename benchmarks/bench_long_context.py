"""Long contexts answered in windows against a reader that cuts them: EM/F1 where the answer lies past the first window.

    python benchmarks/bench_long_context.py --adapter outputs/quality_v1/runs/fold1_seed1/recipe \\
        --data_file ../shared/data/squad/dev-v1.1.json --output_dir outputs/bench_long_context
    python benchmarks/bench_long_context.py --model_name_or_path ~/.cache/squad-lora-models/smollm2-135m ...  # 0-shot

The file it builds (data/long.jsonl, in the Hub layout): the data file's first --num_articles articles that the
adapter did not train on (the titles of the train_file its run_config.yaml records are left out), each article's
paragraphs joined by newlines, from its first, as long as the whole stays within --max_article_tokens tokens (of the
model's tokenizer); every answer_start re-based into the joined context and checked to point at its text. Of each
article, the questions whose every gold answer starts past the first window (its first --max_context_tokens
tokens, as squad_lora/windows.py cuts them) are kept, --questions_per_article of them drawn with a fixed seed.
results.json records the counts and, per question, the token where its answer starts and which windows hold it.

Each setting answers the same questions with `python generate.py` (the adapter's recorded decoding), as a user runs
it, each on a file of its own:

- first_window: each context cut to its first window (windows.py's own cut): what a reader that cuts sees, the
  baseline every difference is paired against;
- whole: the joined context in one prompt (where the model's positions hold it);
- windows: the joined context in windows of --max_context_tokens overlapping by --doc_stride, the most confident
  window's answer kept (docs/data.md#long-contexts);
- paragraph: the question's own SQuAD paragraph: what finding the right window could give at best.

Per setting: EM/F1 with 95% bootstrap intervals (questions resampled within each article), the paired difference
against the first window on the same questions, how many answers it found (exact), and its time per question
against the first window's, in the same sitting (each generate.py's wall time less its start: generate.py answering
one question, timed before and after the settings). A question whose gold text also occurs in the first window
(gold_in_first_window) can be right there too. Not a test: it needs a real model; the tests run it on the tiny random
one (tests/test_benchmarks.py).
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

from bench_peers import machine  # beside this file, whose folder Python puts on sys.path
from bench_quality import answer, articles_of, draw, per_question, run

from squad_lora import cli
from squad_lora.args import ModelArguments
from squad_lora.data import load_squad_file
from squad_lora.errors import ConfigError, SquadDataError
from squad_lora.modeling import inference_source, load_tokenizer_and_config
from squad_lora.outputs import read_run_config, write_json, write_jsonl
from squad_lora.stats import bootstrap_mean, format_interval
from squad_lora.windows import split_long_contexts, window_spans

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # a run records its files relative to it

# run in this order: whole, second, fails before its model loads where the model's positions cannot hold an article
SETTINGS = ("first_window", "whole", "windows", "paragraph")
BASELINE = "first_window"
PAIRS = (("windows", "first_window"), ("whole", "first_window"), ("paragraph", "first_window"),
         ("windows", "whole"), ("windows", "paragraph"))  # fmt: skip
FILES = {"first_window": "first_window", "whole": "long", "windows": "long", "paragraph": "paragraph"}


@dataclass
class LongContextArguments:
    data_file: str = field(metadata={"help": "SQuAD JSON whose articles become the long contexts (e.g. dev-v1.1)."})
    adapter: Optional[str] = field(default=None, metadata={"help": "A run_qa_lora.py output dir to answer with."})
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Or a base model, zero-shot."})
    output_dir: str = field(default="outputs/bench_long_context", metadata={"help": "Files, predictions, results."})
    num_articles: int = field(default=4, metadata={"help": "Articles (the file's first the adapter never saw)."})
    questions_per_article: int = field(default=20, metadata={"help": "Questions past the first window, per article."})
    max_article_tokens: int = field(default=3000, metadata={"help": "An article's paragraphs joined up to this."})
    max_context_tokens: int = field(default=512, metadata={"help": "The window (generate.py's flag), in tokens."})
    doc_stride: int = field(default=128, metadata={"help": "Tokens each window shares with the one before."})
    settings: str = field(default=",".join(SETTINGS), metadata={"help": "Comma-separated subset of the settings."})

    def __post_init__(self):
        if (self.adapter is None) == (self.model_name_or_path is None):
            raise ConfigError("give --adapter (a trained run) or --model_name_or_path (zero-shot), one of them")
        unknown = set(self.settings.split(",")) - set(SETTINGS)
        if unknown:
            raise ConfigError(f"--settings: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SETTINGS)}")


def trained_titles(adapter: str | None) -> set[str]:
    """The titles of the articles a local run trained on (its recorded train_file's), which the benchmark leaves
    out; none for a base model, or a run trained on a Hub dataset (SQuAD's train split: no dev article)."""
    if adapter is None or not os.path.isdir(adapter):
        return set()
    train_file = read_run_config(adapter).get("train_file")
    if not train_file:
        return set()
    found = [path for path in (train_file, os.path.join(REPO, train_file)) if os.path.isfile(path)]
    if not found:
        raise ConfigError(f"{adapter}: its run_config.yaml's train_file {train_file} is not here: which articles it "
                          "trained on cannot be told")  # fmt: skip
    return {example["title"] for example in load_squad_file(found[0], check_answers=False)[0]}


def token_of(offsets: list[tuple[int, int]], char: int) -> int:
    """The index of the token that holds character `char` (the first ending after it)."""
    return next(i for i, (_, end) in enumerate(offsets) if end > char)


def long_article(questions: list[dict], tokenizer, args) -> dict | None:
    """One article as a long context: its paragraphs joined from the first while within --max_article_tokens,
    and its questions whose every answer starts past the first window, re-based and checked; None where no
    paragraph fits or no question lies past the first window."""
    paragraphs = list(dict.fromkeys(example["context"] for example in questions))
    joined, used = "", 0
    for paragraph in paragraphs:
        candidate = f"{joined}\n{paragraph.strip()}" if joined else paragraph.strip()
        if len(tokenizer(candidate, add_special_tokens=False)["input_ids"]) > args.max_article_tokens:
            break
        joined, used = candidate, used + 1
    if not used:
        return None
    starts, position = {}, 0  # each paragraph's first character in joined, less the whitespace stripped before it
    for paragraph in paragraphs[:used]:
        starts[paragraph] = position - (len(paragraph) - len(paragraph.lstrip()))
        position += len(paragraph.strip()) + 1
    offsets = tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    spans = window_spans(len(offsets), args.max_context_tokens, args.doc_stride)
    # the first window as generate.py cuts it: windows.py itself, with the window and stride given here
    plan = SimpleNamespace(max_context_tokens=args.max_context_tokens, doc_stride=args.doc_stride)
    first_window = split_long_contexts([{"context": joined}], tokenizer, plan)[0]["context"]
    past = []
    for example in questions:
        if example["context"] not in starts or not example["answers"]["text"]:
            continue
        texts = example["answers"]["text"]
        rebased = [starts[example["context"]] + start for start in example["answers"]["answer_start"]]
        for text, start in zip(texts, rebased):
            if joined[start : start + len(text)] != text:
                raise SquadDataError(f"{args.data_file}: question {example['id']}: answer {text!r} is not at "
                                     f"{start} once its article's paragraphs are joined")  # fmt: skip
        tokens = [token_of(offsets, start) for start in rebased]
        if min(tokens) < args.max_context_tokens:
            continue
        last = token_of(offsets, rebased[0] + len(texts[0]) - 1)
        past.append({
            **example, "context": joined, "answers": {"text": texts, "answer_start": rebased},
            "paragraph": example["context"], "paragraph_answers": example["answers"], "answer_token": tokens[0],
            "answer_windows": [k for k, (lo, hi) in enumerate(spans) if lo <= tokens[0] and last < hi],
            "gold_in_first_window": any(text in first_window for text in texts),
        })  # fmt: skip
    if not past:
        return None
    picked = draw(random.Random(f"questions/{questions[0]['title']}"), past, args.questions_per_article)
    return {"title": questions[0]["title"], "paragraphs": used, "of_paragraphs": len(paragraphs),
            "context_chars": len(joined), "context_tokens": len(offsets), "windows": len(spans),
            "first_window": first_window, "questions_past_first_window": len(past), "questions": picked}  # fmt: skip


def build_files(articles: list[dict], output_dir: str) -> dict[str, str]:
    """Each file's path: the long contexts, their first windows, the questions' own paragraphs (the same ids)."""
    directory = os.path.join(output_dir, "data")
    os.makedirs(directory, exist_ok=True)
    # (context, answers) of a question in each file; the cut keeps answer_start into the joined context (generate.py
    # reads no answer_start)
    parts = {
        "long": lambda article, q: (q["context"], q["answers"]),
        "first_window": lambda article, q: (article["first_window"], q["answers"]),
        "paragraph": lambda article, q: (q["paragraph"], q["paragraph_answers"]),
    }
    files = {}
    for name, part in parts.items():
        files[name] = os.path.join(directory, f"{name}.jsonl")
        rows = []
        for article in articles:
            for q in article["questions"]:
                context, answers = part(article, q)
                rows.append({"id": q["id"], "title": q["title"], "context": context, "question": q["question"],
                             "answers": answers})  # fmt: skip
        write_jsonl(files[name], rows)
    return files


def generate_flags(name: str, articles: list[dict], tokenizer, args) -> list[str]:
    """generate.py's window flags for a setting: the window for `windows`; for the others a window as long as their
    longest context, so that none is split (generate.py refuses one longer than the model's positions leave, before
    loading the model)."""
    if name == "windows":
        return ["--max_context_tokens", str(args.max_context_tokens), "--doc_stride", str(args.doc_stride)]
    contexts = {"whole": [q["context"] for a in articles for q in a["questions"]],
                "first_window": [a["first_window"] for a in articles],
                "paragraph": [q["paragraph"] for a in articles for q in a["questions"]]}[name]  # fmt: skip
    longest = max(len(tokenizer(c.strip(), add_special_tokens=False)["input_ids"]) for c in set(contexts))
    return ["--max_context_tokens", str(longest)]


def scored(name: str, rows: list[dict], questions: list[dict]) -> dict[str, dict]:
    """{id: what the setting answered and its exact/F1 in percent}; a setting that should not be split must not be."""
    by_id = {row["id"]: row for row in rows}
    if name != "windows" and any("window" in row for row in rows):
        raise RuntimeError(
            f"{name}: generate.py split a context into windows: its --max_context_tokens did not hold it"
        )
    scores = per_question(questions, {qid: row["prediction"] for qid, row in by_id.items()}, False)
    return {
        q["id"]: {"prediction": by_id[q["id"]]["prediction"], "confidence": by_id[q["id"]]["confidence"],
                  "exact": scores[q["id"]][0], "f1": scores[q["id"]][1],
                  **({"window": by_id[q["id"]]["window"]} if name == "windows" else {})}
        for q in questions
    }  # fmt: skip


def summarize(questions: list[dict], names: list[str], seconds: dict[str, float], startup: float) -> dict:
    """Per setting: EM/F1 with 95% intervals (articles as strata), the answers found, the kept window (windows),
    time per question; and each pair's paired difference."""

    def strata(name: str, metric: str, minus: str | None = None) -> list[list[float]]:
        by_article: dict[str, list[float]] = {}
        for q in questions:
            value = q["settings"][name][metric] - (q["settings"][minus][metric] if minus else 0.0)
            by_article.setdefault(q["title"], []).append(value)
        return list(by_article.values())

    per_question_seconds = {name: max(0.0, seconds[name] - startup) / len(questions) for name in names}
    rows = {}
    for name in names:
        rows[name] = {
            "questions": len(questions),
            "exact": bootstrap_mean(strata(name, "exact")),
            "f1": bootstrap_mean(strata(name, "f1")),
            "found": sum(q["settings"][name]["exact"] == 100.0 for q in questions),
            "generate_seconds": seconds[name],
            "seconds_per_question": per_question_seconds[name],
            "time_vs_first_window": (
                per_question_seconds[name] / per_question_seconds[BASELINE] if per_question_seconds.get(BASELINE)
                else None
            ),
        }  # fmt: skip
        if name == "windows":
            rows[name]["kept_an_answer_window"] = sum(
                q["settings"][name]["window"] in q["answer_windows"] for q in questions
            )
    differences = {
        f"{a} - {b}": {metric: bootstrap_mean(strata(a, metric, b)) for metric in ("exact", "f1")}
        for a, b in PAIRS
        if a in names and b in names
    }
    return {"settings": rows, "differences": differences}


def render(results: dict) -> str:
    file, summary = results["file"], results["summary"]
    tokens = [q["answer_token"] for q in results["questions"]]
    window, stride = results["parameters"]["max_context_tokens"], results["parameters"]["doc_stride"]
    lines = [
        f"{file['questions']} questions of {len(file['articles'])} articles of {file['min_tokens']}-"
        f"{file['max_tokens']} tokens ({file['min_windows']}-{file['max_windows']} windows of {window}, "
        f"stride {stride}); answers start at token {min(tokens)}-{max(tokens)} "
        f"(median {statistics.median(tokens):g}); {file['gold_in_first_window']} of them have a gold answer's text "
        "in the first window too",
        "",
        "| setting | EM [95%] | F1 [95%] | found (exact) | time per question × first window |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in summary["settings"].items():
        ratio = row["time_vs_first_window"]
        found = f"{row['found']}/{row['questions']}"
        if "kept_an_answer_window" in row:
            found += f" (window holding the answer kept: {row['kept_an_answer_window']})"
        lines.append(f"| {name} | {format_interval(*row['exact'])} | {format_interval(*row['f1'])} | {found} | "
                     f"{'–' if ratio is None else f'{ratio:.1f}'} |")  # fmt: skip
    if summary["differences"]:
        lines += ["", "| paired difference | ΔEM [95%] | ΔF1 [95%] |", "|---|---:|---:|"]
        for pair, row in summary["differences"].items():
            lines.append(f"| {pair} | {format_interval(*row['exact'], signed=True)} | "
                         f"{format_interval(*row['f1'], signed=True)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def startup_seconds(args) -> float:
    """generate.py's start (imports, loading the model) and one question: taken off every setting's wall time. Measured
    before and after the settings, the mean of the two counting, as the machine's load moves."""
    model = ["--adapter", args.adapter] if args.adapter else ["--model_name_or_path", args.model_name_or_path]
    return run("generate.py", *model, "--question", "Who?", "--context", "Someone.")


def shown(argv: list[str]) -> str:
    """The command as run, absolute paths cut to their last part (no machine's paths recorded)."""
    return "python benchmarks/bench_long_context.py " + " ".join(
        os.path.basename(a.rstrip("/")) if os.path.isabs(os.path.expanduser(a)) else a for a in argv
    )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    (args,), _, _ = cli.parse_args((LongContextArguments,), argv)
    names = [name for name in SETTINGS if name in args.settings.split(",")]
    source = inference_source(args.adapter, ModelArguments(model_name_or_path=args.model_name_or_path))
    tokenizer, _ = load_tokenizer_and_config(source)
    seen = trained_titles(args.adapter)
    examples, _ = load_squad_file(args.data_file)
    articles = []
    for questions in articles_of(examples):
        if len(articles) == args.num_articles:
            break
        article = questions[0]["title"] not in seen and long_article(questions, tokenizer, args)
        if article:
            articles.append(article)
    if not articles:
        raise SquadDataError(f"{args.data_file}: no article has a question past the first {args.max_context_tokens} "
                             f"tokens within --max_article_tokens {args.max_article_tokens}")  # fmt: skip
    files = build_files(articles, args.output_dir)
    questions = [q for article in articles for q in article["questions"]]
    flags = {name: generate_flags(name, articles, tokenizer, args) for name in names}
    seconds, answers = {}, {}
    startups = [startup_seconds(args)]
    for name in names:
        rows, seconds[name] = answer(os.path.join(args.output_dir, "predictions", name), args.adapter, flags[name],
                                     files[FILES[name]], args)  # fmt: skip
        answers[name] = scored(name, rows, questions)
        print(f"{name}: {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    startups.append(startup_seconds(args))
    question_rows = [
        {"id": q["id"], "title": q["title"], "question": q["question"], "answers": q["answers"],
         "answer_token": q["answer_token"], "answer_windows": q["answer_windows"],
         "gold_in_first_window": q["gold_in_first_window"], "settings": {n: answers[n][q["id"]] for n in names}}
        for q in questions
    ]  # fmt: skip
    lengths, windows = [a["context_tokens"] for a in articles], [a["windows"] for a in articles]
    file = {
        "articles": [{key: value for key, value in a.items() if key not in ("questions", "first_window")}
                     | {"questions": len(a["questions"])} for a in articles],
        "articles_left_out_as_trained_on": sorted(seen & {ex["title"] for ex in examples}),
        "questions": len(questions),
        "min_tokens": min(lengths), "max_tokens": max(lengths),
        "min_windows": min(windows), "max_windows": max(windows),
        "gold_in_first_window": sum(q["gold_in_first_window"] for q in questions),
    }  # fmt: skip
    results = {
        "command": shown(argv),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": os.path.basename((args.model_name_or_path or source.weights).rstrip("/")),
        "adapter": args.adapter and os.path.basename(args.adapter.rstrip("/")),
        "data_file": os.path.basename(args.data_file),
        "parameters": {key: getattr(args, key) for key in ("num_articles", "questions_per_article",
                                                            "max_article_tokens", "max_context_tokens", "doc_stride")},
        "generate_flags": flags,
        "startup_seconds": startups,
        "file": file,
        "questions": question_rows,
        "summary": summarize(question_rows, names, seconds, statistics.mean(startups)),
    }  # fmt: skip
    results["table"] = render(results)
    print(results["table"], end="")
    write_json(os.path.join(args.output_dir, "results.json"), results)
    return results


if __name__ == "__main__":
    cli.run(main)
