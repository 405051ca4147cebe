"""--prompt_format plain|chat: the chat prompt is the user's turn of the tokenizer's own chat template, only the
answer and the end of the assistant's turn are trained, the context part is still a shared prefix, and a run
records its format for generate.py and the model card."""

import os
import re
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from conftest import DEV_FILE, SAMPLE_DIR, TINY_GPT2_DIR, make_chat_tokenizer
from squad_lora.data import PLAIN, build_train_features, load_squad_file, prompt_template, template_from_dict
from squad_lora.errors import ConfigError
from squad_lora.modeling import load_tokenizer

TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")


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
    features = build_train_features(batch, chat_tokenizer, 512, template)
    end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokenize = lambda text: chat_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for row, ids, labels, shared in zip(rows, features["input_ids"], features["labels"], features["shared_length"]):
        trained = [label for label in labels if label != -100]
        assert trained == tokenize(" " + row["answers"]["text"][0].strip()) + [end], row["id"]
        prompt = ids[: len(ids) - len(trained)]
        assert chat_tokenizer.decode(prompt) == template.build(row["context"], row["question"]), row["id"]
        assert shared > 0 and prompt[:shared] == tokenize(template.context_part(row["context"])), row["id"]
    assert len(set(features["context_key"])) == 3  # contexts of 6, 5 and 3 questions, one key each


@pytest.fixture(scope="module")
def chat_run(chat_model_dir, tmp_path_factory):
    import run_qa_lora

    output_dir = tmp_path_factory.mktemp("chat") / "run"
    summary = run_qa_lora.main(
        ["--model_name_or_path", chat_model_dir, "--train_file", TRAIN_FILE, "--validation_file", DEV_FILE,
         "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "4",
         "--eval_strategy", "steps", "--eval_steps", "2", "--max_eval_samples", "6", "--save_strategy", "no",
         "--report_to", "none", "--learning_rate", "1e-3", "--prompt_format", "chat"]
    )  # fmt: skip
    return str(output_dir), summary


def test_a_chat_run_records_its_format_for_generate_and_the_card(chat_run, chat_tokenizer, monkeypatch):
    import generate
    from squad_lora import decoding

    run_dir, summary = chat_run
    template = prompt_template(chat_tokenizer, "chat")
    assert summary["prompt_template"] == template.as_dict()
    with open(os.path.join(run_dir, "run_config.yaml"), encoding="utf-8") as f:
        assert yaml.safe_load(f)["prompt_format"] == "chat"
    card = ModelCard.load(os.path.join(run_dir, "README.md")).text
    assert template.build("{context}", "{question}") + " {answer}" in card and "(chat format)" in card

    used = []
    build_prompts = decoding.build_prompts
    monkeypatch.setattr(decoding, "build_prompts", lambda *a, **k: used.append(a[3]) or build_prompts(*a, **k))
    question = ["--context", "The Eiffel Tower was finished in 1889 in Paris.", "--question", "When was it finished?"]
    generate.main(["--adapter", run_dir, *question])
    generate.main(["--adapter", run_dir, "--prompt_format", "plain", *question])  # a flag given here wins
    assert used == [template, PLAIN]


def test_the_chat_cards_snippet_answers_as_generate_does(chat_run, tmp_path):
    import generate

    run_dir, _ = chat_run
    text = ModelCard.load(os.path.join(run_dir, "README.md")).text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("<this repo>", run_dir)
    assert 'eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")' in snippet.replace("'", '"')
    completed = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]
    context, question = "The Eiffel Tower was finished in 1889 in Paris.", "When was the Eiffel Tower finished?"
    results = generate.main(["--adapter", run_dir, "--context", context, "--question", question])
    assert completed.stdout.rstrip("\n").split("\n")[-1] == results["greedy"][0]["prediction"]


def test_chat_on_a_tokenizer_without_a_template_is_refused_before_the_model_loads(
    tiny_model_dir, tmp_path, monkeypatch
):
    import run_qa_lora

    monkeypatch.setattr(run_qa_lora, "load_base_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match="has no chat template"):
        run_qa_lora.main(
            ["--model_name_or_path", tiny_model_dir, "--train_file", TRAIN_FILE, "--output_dir", str(tmp_path / "r"),
             "--max_steps", "1", "--prompt_format", "chat"]
        )  # fmt: skip
    assert not os.path.exists(tmp_path / "r" / "adapter_model.safetensors")


def test_a_merged_chat_model_keeps_its_prompt_format(chat_run, tmp_path):
    import generate
    import merge_adapter

    run_dir, _ = chat_run
    merged = merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged")])
    question = ["--context", "The Eiffel Tower was finished in 1889 in Paris.", "--question", "When was it finished?"]
    assert generate.main(["--adapter", merged, *question]) == generate.main(["--adapter", run_dir, *question])
    assert generate.main(["--adapter", merged, "--prompt_format", "plain", *question]) != generate.main(
        ["--adapter", merged, *question]
    )  # the formats answer differently here, so the equality above is the format at work
