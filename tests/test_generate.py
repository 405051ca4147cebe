"""generate.py end to end: batching, seeds, context-constrained decoding, every kind of model directory,
one-question mode, long contexts, the decoding a run recorded, and a tiny model that learns to answer.

The models are random tiny GPT-2s whose greedy answers depend on the prompt (builders.save_random_gpt2).
"""

import json
import math
import os
import random
import re
import time

import pytest

from builders import ATTN, MLP_PROJ, lora_params, save_random_gpt2, tiny_run_args, write_jsonl
from repo_paths import DEV_FILE, DEV_V2_FILE, REPO_ROOT
from run_outputs import logged_losses
from squad_lora.args import STRATEGIES
from squad_lora.commands import generate
from squad_lora.commands import train as run_qa_lora
from squad_lora.data import load_squad_file
from squad_lora.errors import ModelLoadError
from squad_lora.modeling import BASE_MODEL_SUBDIR
from squad_lora.prompt import build_prompts
from squad_lora.scoring import read_prediction_rows


def run_generate(*argv) -> dict:
    return generate.main([str(a) for a in argv])


def predictions(rows: list[dict]) -> list[tuple]:
    return [(row["id"], row["sample"], row["prediction"]) for row in rows]


def contexts_by_id(path: str) -> dict:
    rows, _ = load_squad_file(path)
    return {row["id"]: row["context"] for row in rows}


# ---------------------------------------------------------------------------
# Batching and seeds
# ---------------------------------------------------------------------------


def test_batched_greedy_equals_one_question_at_a_time(base_dir, questions_file, tiny_tokenizer, tmp_path):
    rows, _ = load_squad_file(questions_file)
    prompts, _ = build_prompts(rows, tiny_tokenizer, 512)
    lengths = [len(p) for p in prompts]
    assert len(set(lengths)) >= 4 and lengths != sorted(lengths, reverse=True)  # padding and sorting both happen

    common = ["--model_name_or_path", base_dir, "--validation_file", questions_file, "--max_new_tokens", 10]
    batched = run_generate(*common, "--generation_batch_size", 8, "--output_dir", tmp_path / "batched")["greedy"]
    one_by_one = run_generate(*common, "--generation_batch_size", 1, "--output_dir", tmp_path / "single")["greedy"]

    assert [row["id"] for row in batched] == [row["id"] for row in rows]  # back in the file's order
    assert predictions(batched) == predictions(one_by_one)
    assert len({row["prediction"] for row in batched}) >= 4  # answers depend on the prompt


def test_same_seed_same_samples_other_seed_other_samples(base_dir, questions_file, tmp_path):
    def sample(seed, name):
        return run_generate(
            "--model_name_or_path",
            base_dir,
            "--validation_file",
            questions_file,
            "--output_dir",
            tmp_path / name,
            "--strategies",
            "top_k,top_p,temperature",
            "--num_samples",
            3,
            "--max_new_tokens",
            6,
            "--seed",
            seed,
        )

    first, again, other = sample(1, "first"), sample(1, "again"), sample(2, "other")
    assert list(first) == ["top_k", "top_p", "temperature"]
    for strategy, rows in first.items():
        assert [(row["id"], row["sample"]) for row in rows] == [(f"q{i}", k) for i in range(8) for k in range(3)]
        assert predictions(rows) == predictions(again[strategy]), strategy
        assert predictions(rows) != predictions(other[strategy]), strategy
        # the samples of one question are drawn independently, not copies of one
        samples = [{row["prediction"] for row in rows if row["id"] == qid} for qid in ("q0", "q1", "q2")]
        assert any(len(texts) > 1 for texts in samples), strategy


# ---------------------------------------------------------------------------
# --constrain_to_context
# ---------------------------------------------------------------------------


def test_constrained_answers_are_spans_of_their_context(base_dir, questions_file, tmp_path):
    contexts = contexts_by_id(questions_file)
    common = [
        "--model_name_or_path",
        base_dir,
        "--validation_file",
        questions_file,
        "--strategies",
        ",".join(STRATEGIES),
        "--num_samples",
        2,
        "--num_beams",
        3,
        "--max_new_tokens",
        8,
        "--generation_batch_size",
        3,
    ]
    free = run_generate(*common, "--output_dir", tmp_path / "free")
    constrained = run_generate(*common, "--constrain_to_context", "--output_dir", tmp_path / "constrained")

    for strategy in STRATEGIES:
        # the random model left alone does not answer with spans: the constraint is what makes them
        assert any(row["prediction"] not in contexts[row["id"]] for row in free[strategy]), strategy
        rows = constrained[strategy]
        assert len(rows) == 8 * (2 if strategy in ("top_k", "top_p", "temperature") else 1)
        for row in rows:
            assert row["prediction"] in contexts[row["id"]], (strategy, row)
        assert sum(len(row["prediction"]) >= 2 for row in rows) >= len(rows) // 2, strategy  # not just empty answers


# ---------------------------------------------------------------------------
# Loading: adapters, merged adapters, full fine-tunes, bare bases, and the errors
# ---------------------------------------------------------------------------


def greedy_answers(tmp_path, name, questions_file, *model_args) -> list[tuple]:
    rows = run_generate(
        *model_args, "--validation_file", questions_file, "--max_new_tokens", 8, "--output_dir", tmp_path / name
    )["greedy"]
    return predictions(rows)


def test_merged_adapter_answers_like_the_unmerged_one(adapter_dir, base_dir, questions_file, tmp_path):
    unmerged = greedy_answers(tmp_path, "unmerged", questions_file, "--adapter", adapter_dir)
    merged = greedy_answers(tmp_path, "merged", questions_file, "--adapter", adapter_dir, "--merge")
    zero_shot = greedy_answers(tmp_path, "zero-shot", questions_file, "--model_name_or_path", base_dir)
    assert merged == unmerged
    assert unmerged != zero_shot  # the adapter is applied, not silently dropped


def test_zero_shot_base_model(base_dir, questions_file, tmp_path):
    results = run_generate(
        "--model_name_or_path",
        base_dir,
        "--validation_file",
        questions_file,
        "--max_new_tokens",
        4,
        "--output_dir",
        tmp_path,
    )
    with open(tmp_path / "predictions_greedy.json", encoding="utf-8") as f:
        assert sorted(json.load(f)) == sorted(contexts_by_id(questions_file))
    assert len(results["greedy"]) == 8


def test_squad_v2_answers_come_with_the_official_na_prob_file(base_dir, tmp_path, capsys):
    from squad_lora.commands import evaluate as evaluate_squad

    out = tmp_path / "preds"
    run_generate("--model_name_or_path", base_dir, "--validation_file", DEV_V2_FILE, "--max_new_tokens", 3,
                 "--strategies", "greedy,beam", "--output_dir", out)  # fmt: skip
    ids = list(contexts_by_id(DEV_V2_FILE))
    for strategy in ("greedy", "beam"):
        na_probs = json.loads((out / f"na_prob_{strategy}.json").read_text())
        rows = [json.loads(line) for line in (out / f"predictions_{strategy}.jsonl").read_text().splitlines()]
        assert list(na_probs) == ids and all(0 <= p <= 1 for p in na_probs.values())
        assert [row["no_answer_probability"] for row in rows] == list(na_probs.values())
        # evaluate_squad.py takes it as the official script does
        scores = evaluate_squad.main([DEV_V2_FILE, str(out / f"predictions_{strategy}.json"),
                                      "--na_prob_file", str(out / f"na_prob_{strategy}.json")])  # fmt: skip
        assert {"best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} <= scores.keys()
    # overwriting removes the earlier run's na_prob files with its predictions; v1.1 data writes none
    run_generate("--model_name_or_path", base_dir, "--validation_file", DEV_FILE, "--max_new_tokens", 3,
                 "--output_dir", out, "--overwrite_output_dir")  # fmt: skip
    assert sorted(os.listdir(out)) == ["predictions_greedy.json", "predictions_greedy.jsonl"]


def test_every_kind_of_run_dir_answers(trained_dirs, questions_file, tmp_path):
    # a --from_scratch LoRA run moved since training (its random base saved beside it), a full fine-tune
    lora = greedy_answers(tmp_path, "lora", questions_file, "--adapter", trained_dirs.lora)
    base = os.path.join(trained_dirs.lora, BASE_MODEL_SUBDIR)
    assert len(lora) == 8 and lora != greedy_answers(tmp_path, "base", questions_file, "--model_name_or_path", base)
    assert len(greedy_answers(tmp_path, "full", questions_file, "--adapter", trained_dirs.full)) == 8


def test_a_missing_adapter_dir_stops_generate_before_any_output(tmp_path, questions_file):
    missing = tmp_path / "no-such-run"
    with pytest.raises(ModelLoadError, match=f"--adapter {re.escape(str(missing))}: no such directory"):
        run_generate("--adapter", missing, "--validation_file", questions_file, "--output_dir", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_question_mode_prints_the_answers(base_dir, questions_file, tmp_path, capsys):
    example = load_squad_file(questions_file)[0][3]
    expected = run_generate(
        "--model_name_or_path",
        base_dir,
        "--validation_file",
        questions_file,
        "--strategies",
        "greedy,beam",
        "--max_new_tokens",
        8,
        "--output_dir",
        tmp_path / "all",
    )
    capsys.readouterr()
    common = [
        "--model_name_or_path",
        base_dir,
        "--question",
        example["question"],
        "--strategies",
        "greedy,beam",
        "--max_new_tokens",
        8,
    ]
    lines = [f"{strategy}[0]: {expected[strategy][3]['prediction']}" for strategy in ("greedy", "beam")]

    run_generate(*common, "--context", example["context"])
    assert capsys.readouterr().out.splitlines() == lines

    context_file = tmp_path / "context.txt"
    context_file.write_text(example["context"] + "\n", encoding="utf-8")
    run_generate(*common, "--context_file", context_file)
    assert capsys.readouterr().out.splitlines() == lines
    assert not (tmp_path / "predictions_greedy.json").exists()


# ---------------------------------------------------------------------------
# The decoding a run recorded
# ---------------------------------------------------------------------------


def test_generate_answers_with_the_decoding_the_run_recorded(tmp_path):
    from squad_lora.commands import generate
    from squad_lora.commands import train as run_qa_lora

    run_dir = tmp_path / "run"
    run_qa_lora.main(
        [os.path.join(REPO_ROOT, "configs", "smoke.yaml"), "--output_dir", str(run_dir), "--max_steps", "1",
         "--eval_strategy", "no", "--report_to", "none", "--strategy", "beam", "--num_beams", "2",
         "--constrain_to_context"]
    )  # fmt: skip
    common = ["--adapter", str(run_dir), "--validation_file", DEV_FILE, "--max_eval_samples", "4"]
    recorded = generate.main([*common, "--output_dir", str(tmp_path / "recorded")])
    assert list(recorded) == ["beam"]
    explicit = generate.main(
        [*common, "--output_dir", str(tmp_path / "explicit"), "--strategy", "beam", "--num_beams", "2",
         "--constrain_to_context"]
    )  # fmt: skip
    assert recorded == explicit
    overridden = generate.main([*common, "--output_dir", str(tmp_path / "greedy"), "--strategy", "greedy"])
    assert list(overridden) == ["greedy"]


# ---------------------------------------------------------------------------
# Contexts longer than the model
# ---------------------------------------------------------------------------


def test_too_long_contexts_are_answered_in_windows_counted_and_recorded(tiny_tokenizer, tmp_path, caplog):
    short_base = save_random_gpt2(tmp_path / "short-base", tiny_tokenizer, n_positions=64)
    long_context = " ".join(f"Fact number {i} is about the river." for i in range(40))
    question = "Which river is it?"
    examples = [
        {"id": "long", "title": "", "context": long_context, "question": question,
         "answers": {"text": [], "answer_start": []}},
        {"id": "short", "title": "", "context": "The river is the Ilvar.", "question": question,
         "answers": {"text": [], "answer_start": []}},
    ]  # fmt: skip
    data_file = write_jsonl(tmp_path / "long.jsonl", examples)
    with caplog.at_level("INFO", logger="squad_lora.windows"):
        results = run_generate("--model_name_or_path", short_base, "--validation_file", data_file,
                               "--max_new_tokens", 8, "--output_dir", tmp_path / "out")  # fmt: skip
    # 64 positions - 8 new tokens - 26 of prompt template leave 30, half of them for the question: windows of 15
    # context tokens, overlapping by a quarter of that
    num_tokens = len(tiny_tokenizer(long_context, add_special_tokens=False)["input_ids"])
    windows = 1 + math.ceil((num_tokens - 15) / (15 - 3))
    assert f"1 context(s) longer than 15 tokens answered in {windows} windows overlapping by 3 tokens" in caplog.text
    long, short = results["greedy"]
    assert (long["id"], short["id"]) == ("long", "short") and long["windows"] == windows and "window" not in short
    # the prediction file records the window, and still reads as before
    jsonl = tmp_path / "out" / "predictions_greedy.jsonl"
    assert read_prediction_rows(str(jsonl))[0]["prediction"] == long["prediction"]
    with open(jsonl, encoding="utf-8") as f:
        assert json.loads(f.readline())["windows"] == windows


# ---------------------------------------------------------------------------
# Learning: train, generate, score
# ---------------------------------------------------------------------------

# One token each (with a leading space) in configs/tiny-gpt2's tokenizer, so prompts stay short (~55 tokens)
# and every answer is one token. Five values per relation, not ten: the model has to learn which value
# belongs to which relation, and with ten it often stalls near 65 EM for hundreds of steps.
RELATIONS = {
    "master": ["Abbot", "Admiral", "Baroness", "Bishop", "Captain"],
    "color": ["amber", "black", "blue", "golden", "green"],
    "town": ["Dormar", "Marlen", "Velis", "Kagan", "Rogan"],
}
THINGS = ["stag", "swan", "heron", "lynx", "otter", "falcon", "badger", "boar", "ship", "banner"]
# The LoRA learning test's settings: held-out EM 85 shared and 83 unshared when tried (300 steps at 1e-2: 26 and 22)
LORA_TRAIN_CONTEXTS, LORA_STEPS, LORA_LEARNING_RATE, LORA_MIN_EXACT_MATCH = 1000, 600, "5e-3", 70


def synthetic_questions(num_contexts: int, seed: int, questions_per_context: int = 1) -> list[dict]:
    """SQuAD rows whose context holds three facts, one per relation, each about another thing, in random
    order; each question asks for one of them (a different one per question of a context) and the answer is the
    value's span in the context."""
    rng = random.Random(seed)
    examples = []
    for i in range(num_contexts):
        things = rng.sample(THINGS, len(RELATIONS))
        facts = [(relation, thing, rng.choice(values)) for (relation, values), thing in zip(RELATIONS.items(), things)]
        rng.shuffle(facts)
        context = " ".join(f"The {relation} of the {thing} is {value}." for relation, thing, value in facts)
        for j, (relation, thing, value) in enumerate(rng.sample(facts, questions_per_context)):
            start = context.index(f"The {relation} of the {thing} is {value}.") + len(
                f"The {relation} of the {thing} is "
            )
            examples.append(
                {
                    "id": f"s{seed}-{i}-{j}",
                    "title": "synthetic",
                    "context": context,
                    "question": f"What is the {relation} of the {thing}?",
                    "answers": {"text": [value], "answer_start": [start]},
                }
            )
    return examples


def held_out_exact_match(tmp_path, name, questions_file, *model_args) -> float:
    """generate.py's greedy answers to the questions, scored by evaluate_squad.py."""
    from squad_lora.commands import evaluate as evaluate_squad

    run_generate(*model_args, "--validation_file", questions_file, "--output_dir", tmp_path / name,
                 "--max_new_tokens", 4, "--generation_batch_size", 50)  # fmt: skip
    return evaluate_squad.main([questions_file, str(tmp_path / name / "predictions_greedy.json")])["exact_match"]


@pytest.mark.slow
@pytest.mark.parametrize("share_context", ["true", "false"])
def test_a_lora_adapter_learns_to_answer_held_out_questions(share_context, tiny_tokenizer, tmp_path):
    """LoRA r=8 on c_attn and mlp.c_proj (the seed table's attn_mlp targets) over a frozen random 2-layer GPT-2,
    trained by run_qa_lora.py on contexts of three facts with all three asked, in shared-context rows or one
    question a row; held-out contexts are answered by generate.py and scored by evaluate_squad.py, against the
    untrained base in the same test. Only the rule can carry over: which fact the question asks for (about 33 EM
    for a fact of the context at random, 20 for a value of the asked relation at random). A minute or two a path."""
    train = synthetic_questions(LORA_TRAIN_CONTEXTS, seed=1, questions_per_context=3)
    seen = {ex["context"] for ex in train}
    held_out = [ex for ex in synthetic_questions(60, seed=2, questions_per_context=3) if ex["context"] not in seen]
    train_file = write_jsonl(tmp_path / "train.jsonl", train)
    test_file = write_jsonl(tmp_path / "test.jsonl", held_out[:150])
    base_dir = save_random_gpt2(tmp_path / "base", tiny_tokenizer, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
                                attn_pdrop=0.0)  # fmt: skip

    summary = run_qa_lora.main(tiny_run_args(
        base_dir, tmp_path / "adapter", "--train_file", train_file, "--share_context", share_context,
        "--lora_r", 8, "--lora_alpha", 16, "--lora_target_modules", "c_attn", "mlp.c_proj", "--lora_dropout", 0,
        "--max_steps", LORA_STEPS, "--per_device_train_batch_size", 16, "--learning_rate", LORA_LEARNING_RATE,
        "--train_sampling_strategy", "random", "--logging_steps", 50,
    ))  # fmt: skip
    assert summary["trainable_params"] == lora_params(8, ATTN, MLP_PROJ)  # LoRA's alone: the base is frozen
    losses = logged_losses(summary)
    untrained = held_out_exact_match(tmp_path, "untrained", test_file, "--model_name_or_path", base_dir)
    tuned = held_out_exact_match(tmp_path, "tuned", test_file, "--adapter", tmp_path / "adapter")
    assert untrained <= 5 and tuned >= LORA_MIN_EXACT_MATCH, (untrained, tuned, losses)


@pytest.mark.slow
def test_tiny_model_learns_to_answer_held_out_questions(tiny_tokenizer, tmp_path):
    """run_qa_lora.py (full fine-tuning of a random 2-layer GPT-2), then generate.py, then evaluate_squad.py.

    600 steps of 16 examples: five training seeds tried (42, 47-50) each reached 100 EM, loss under 0.02
    by step 400; with 500 steps one of five stopped at 92. Training takes ~30 s on 2 CPU cores.
    """
    from transformers import GPT2Config

    from squad_lora.commands import evaluate as evaluate_squad

    train = synthetic_questions(3000, seed=1)
    seen = {(ex["context"], ex["question"]) for ex in train}
    held_out = [ex for ex in synthetic_questions(110, seed=2) if (ex["context"], ex["question"]) not in seen][:100]
    train_file = write_jsonl(tmp_path / "train.jsonl", train)
    test_file = write_jsonl(tmp_path / "test.jsonl", held_out)

    base_dir = tmp_path / "base"
    GPT2Config(
        vocab_size=len(tiny_tokenizer),
        n_positions=128,
        n_embd=128,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tiny_tokenizer.eos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    ).save_pretrained(base_dir)
    tiny_tokenizer.save_pretrained(base_dir)

    started = time.time()
    summary = run_qa_lora.main(
        [
            str(a)
            for a in [
                "--model_name_or_path",
                base_dir,
                "--from_scratch",
                "--lora_r",
                0,
                "--train_file",
                train_file,
                "--output_dir",
                tmp_path / "model",
                "--max_steps",
                600,
                "--per_device_train_batch_size",
                16,
                "--learning_rate",
                "1e-3",
                # not the default group_by_length: " color" is 3 tokens, so grouping by length would fill whole
                # batches with color questions (measured: 24 EM)
                "--train_sampling_strategy",
                "random",
                "--save_strategy",
                "no",
                "--eval_strategy",
                "no",
                "--report_to",
                "none",
                "--logging_steps",
                100,
                "--disable_tqdm",
                "true",
            ]
        ]
    )
    train_seconds = time.time() - started
    generate.main(
        [
            str(a)
            for a in [
                "--adapter",
                tmp_path / "model",
                "--validation_file",
                test_file,
                "--output_dir",
                tmp_path / "preds",
                "--max_new_tokens",
                4,
                "--generation_batch_size",
                50,
            ]
        ]
    )
    scores = evaluate_squad.main([test_file, str(tmp_path / "preds" / "predictions_greedy.json")])

    losses = [entry["loss"] for entry in summary.get("log_history", []) if "loss" in entry]
    assert scores["exact_match"] >= 80, (scores, losses, f"{train_seconds:.0f}s of training")
    assert scores["f1"] >= scores["exact_match"]
