"""merge_adapter.py: the merged export of a run loads without peft (safetensors weights only), answers as the adapter
does, keeps the run's prompt format, and is refused over an existing directory unless told to overwrite."""

import os

import pytest

from builders import answer_plan
from repo_paths import DEV_FILE
from run_outputs import assert_same_answers
from squad_lora.errors import ConfigError


def test_the_merged_model_loads_without_peft_and_answers_as_the_adapter(local_base_run, tmp_path):
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import merge_adapter
    from squad_lora.args import ModelArguments
    from squad_lora.data import load_squad_file
    from squad_lora.decoding import answer_questions
    from squad_lora.modeling import load_for_inference

    run_dir, _ = local_base_run
    merged_dir = merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged")])
    assert sorted(name for name in os.listdir(merged_dir) if name.endswith((".safetensors", ".bin"))) == [
        "model.safetensors"
    ]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    examples, _ = load_squad_file(DEV_FILE)
    adapter, tokenizer = load_for_inference(run_dir, ModelArguments())
    merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    with torch.no_grad():
        plan = answer_plan(tokenizer, adapter, max_new_tokens=8)
        expected = answer_questions(adapter, tokenizer, examples[:12], plan, PartialState())["greedy"]
        plan = answer_plan(merged_tokenizer, merged, max_new_tokens=8)
        got = answer_questions(merged, merged_tokenizer, examples[:12], plan, PartialState())
    assert [row["prediction"] for row in got["greedy"]] == [row["prediction"] for row in expected]
    with pytest.raises(ConfigError, match="exists: pass --overwrite_output_dir"):
        merge_adapter.main([run_dir, "--output_dir", merged_dir])


def test_a_merged_chat_model_keeps_its_prompt_format(chat_run, tmp_path):
    import generate
    import merge_adapter

    run_dir, _ = chat_run
    merged = merge_adapter.main([run_dir, "--output_dir", str(tmp_path / "merged")])
    question = ["--context", "The Eiffel Tower was finished in 1889 in Paris.", "--question", "When was it finished?"]
    merged_answers, adapter_answers = (generate.main(["--adapter", d, *question]) for d in (merged, run_dir))
    assert merged_answers.keys() == adapter_answers.keys()
    for strategy, rows in merged_answers.items():  # the same answers; the scores up to float rounding
        assert_same_answers(rows, adapter_answers[strategy])
    assert generate.main(["--adapter", merged, "--prompt_format", "plain", *question]) != generate.main(
        ["--adapter", merged, *question]
    )  # the formats answer differently here, so the equality above is the format at work
