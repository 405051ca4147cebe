"""Scale (issue 6): two processes under `accelerate launch`, QLoRA and 8-bit bases, gradient checkpointing,
a Llama base, the accelerate configs, and the labelled-positions loss against the model's own loss."""

import glob
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, TINY_GPT2_DIR
from safetensors.torch import load_file
from test_run_qa_lora import TRAIN_FILE, VALIDATION_FILE, install_trainer_spy, tiny_run_args
from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import generate
import run_qa_lora
from squad_lora.args import LoraArguments, ModelArguments
from squad_lora.cli import parse_args
from squad_lora.data import build_train_features, load_squad_file
from squad_lora.errors import ConfigError, ModelLoadError
from squad_lora.modeling import apply_lora, count_parameters, load_base_model, load_for_inference
from squad_lora.scoring import score_predictions
from squad_lora.trainer import PackingCollator, labelled_positions_loss

DATACLASSES = run_qa_lora.ARGUMENT_TYPES
GLOO_ABORTS = ("terminate called", "Aborted", "ProcessGroupGloo", "Traceback")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def logged_losses(summary) -> list[float]:
    return [entry["loss"] for entry in summary["log_history"] if "loss" in entry]


def sample_features(tokenizer, num_examples: int = 4) -> list[dict]:
    """Training features of the first validation questions: different lengths, so a padded batch has padding."""
    rows = load_squad_file(VALIDATION_FILE)[0][:num_examples]
    batch = {key: [row[key] for row in rows] for key in ("context", "question", "answers")}
    mapped = build_train_features(batch, tokenizer, max_seq_length=512)
    return [{"input_ids": ids, "labels": labels} for ids, labels in zip(mapped["input_ids"], mapped["labels"])]


def tiny_llama_config(tokenizer) -> LlamaConfig:
    # 4 query heads of 16 dims sharing 2 key/value heads: grouped-query attention, as in the larger Llamas
    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A random tiny Llama saved with configs/tiny-gpt2's tokenizer."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tiny_tokenizer))
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    return str(model_dir)


# ---------------------------------------------------------------------------
# Two processes: `accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml`
# ---------------------------------------------------------------------------

# run_qa_lora.py run as __main__ (run_cli and all), recording per rank what a file count cannot show:
# the answers each rank got back from the evaluation's gather, and which rank wrote which output.
RECORDING_LAUNCHER = """
import json, os, runpy, sys
sys.path.insert(0, {repo!r})
from squad_lora import decoding, outputs as atomic

record = os.path.join({record_dir!r}, "rank" + os.environ["RANK"] + ".jsonl")

def log(**event):
    with open(record, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\\n")

answer_questions = decoding.answer_questions
def recording_answer_questions(model, tokenizer, examples, *args, **kwargs):
    results = answer_questions(model, tokenizer, examples, *args, **kwargs)
    log(event="answers", asked=[ex["id"] for ex in examples], rows=results["greedy"])
    return results
decoding.answer_questions = recording_answer_questions

for name in ("write_json", "write_yaml"):
    def recording_write(path, obj, _write=getattr(atomic, name)):
        log(event="write", path=os.path.basename(path))
        return _write(path, obj)
    setattr(atomic, name, recording_write)

sys.argv[0] = os.path.join({repo!r}, "run_qa_lora.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_two_processes_shard_training_and_evaluation(tmp_path, tiny_tokenizer):
    out, record_dir = tmp_path / "out", tmp_path / "record"
    record_dir.mkdir()
    launcher = tmp_path / "launch_run_qa_lora.py"
    launcher.write_text(RECORDING_LAUNCHER.format(repo=REPO_ROOT, record_dir=str(record_dir)), encoding="utf-8")
    # 220 examples in batches of 5: 44 batches, 22 per rank; with an odd count accelerate would repeat a batch
    # on one rank (even_batches) and the token count below would include it twice
    num_questions, batch_size = 5, 5
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_multiprocess.yaml"),
        "--main_process_port", str(free_port()),
        str(launcher), "configs/smoke.yaml",
        "--output_dir", str(out), "--num_train_epochs", "1", "--per_device_train_batch_size", str(batch_size),
        "--logging_steps", "1", "--eval_generation_samples", str(num_questions), "--max_eval_samples", "8",
        "--disable_tqdm", "true",
    ]
    proc = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for message in GLOO_ABORTS:
        assert message not in proc.stderr, message

    # Training: each rank trained on its own half, so one epoch took ceil(examples / (2 * batch)) steps
    with open(out / "run_summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    num_examples = summary["data"]["train"]["features"]
    assert num_examples == 220
    steps_per_epoch = math.ceil(num_examples / (2 * batch_size))
    assert max(entry["step"] for entry in summary["log_history"]) == steps_per_epoch  # 22; 44 on one process
    assert summary["log_history"][0]["epoch"] == pytest.approx(1 / steps_per_epoch)
    # ... and the halves were disjoint and complete: the tokens counted (gathered from both ranks) over the
    # epoch are those of every training feature exactly once
    features = build_train_features(
        {key: [row[key] for row in load_squad_file(TRAIN_FILE)[0]] for key in ("context", "question", "answers")},
        tiny_tokenizer, max_seq_length=512,
    )
    assert summary["num_input_tokens_seen"] == sum(len(ids) for ids in features["input_ids"])

    # Outputs: one writer, one adapter, one TensorBoard run, one configuration line
    assert (proc.stdout + proc.stderr).count("configuration: ") == 1
    assert glob.glob(str(out / "**" / "adapter_model.safetensors"), recursive=True) == [str(out / "adapter_model.safetensors")]
    event_files = glob.glob(str(out / "**" / "events.out.tfevents.*"), recursive=True)
    assert len({os.path.dirname(path) for path in event_files}) == 1
    records = {}
    for path in sorted(record_dir.glob("rank*.jsonl")):
        records[path.stem] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert set(records) == {"rank0", "rank1"}
    writes = {rank: sorted(e["path"] for e in events if e["event"] == "write") for rank, events in records.items()}
    assert {"run_config.yaml", "run_summary.json"} <= set(writes["rank0"]) and writes["rank1"] == []

    # Evaluation: one evaluation, each rank answered its share and got back every question exactly once
    ids = [row["id"] for row in load_squad_file(VALIDATION_FILE)[0][:num_questions]]
    for events in records.values():
        (answers,) = [e for e in events if e["event"] == "answers"]
        assert answers["asked"] == ids
        assert [row["id"] for row in answers["rows"]] == ids
    assert records["rank0"][0]["rows"] == records["rank1"][0]["rows"]

    # ... and they are the answers (and scores) one process gets from the saved adapter
    single = generate.main(["--adapter", str(out), "--validation_file", VALIDATION_FILE, "--max_eval_samples", str(num_questions),
                            "--output_dir", str(tmp_path / "single")])
    assert single["greedy"] == records["rank0"][0]["rows"]
    examples = load_squad_file(VALIDATION_FILE)[0][:num_questions]
    scores = score_predictions(examples, {row["id"]: row["prediction"] for row in single["greedy"]})
    assert summary["eval_metrics"]["eval_exact_match"] == pytest.approx(scores["exact_match"])
    assert summary["eval_metrics"]["eval_f1"] == pytest.approx(scores["f1"])


# ---------------------------------------------------------------------------
# QLoRA (4-bit) and 8-bit bases through bitsandbytes, on CPU
# ---------------------------------------------------------------------------

QUANTIZATION_FLAGS = {
    "4bit": ["--load_in_4bit", "--bnb_4bit_compute_dtype", "float32"],  # nf4 and double quant are the defaults
    "8bit": ["--load_in_8bit"],
}


def quantized_layer_class(kind):
    import bitsandbytes as bnb

    return {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}[kind]


def dequantized_weight(layer) -> torch.Tensor:
    """A bitsandbytes layer's weight back in float, (out, in) like nn.Linear."""
    import bitsandbytes as bnb

    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    return layer.weight.data.float() * layer.weight.SCB[:, None] / 127  # int8 rows with their absmax scales


def test_4bit_and_8bit_together_is_an_error():
    with pytest.raises(ConfigError, match="--load_in_4bit and --load_in_8bit exclude each other"):
        parse_args(DATACLASSES, ["--load_in_4bit", "--load_in_8bit"])


def test_4bit_flags_make_the_qlora_config():
    (model_args, *_), _, _ = parse_args(DATACLASSES, QUANTIZATION_FLAGS["4bit"])
    config = model_args.quantization_config()
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float32


@pytest.mark.parametrize("kind", QUANTIZATION_FLAGS)
def test_quantized_gpt2_replaces_every_conv1d_and_lora_wraps_it(kind, tiny_model_dir):
    (model_args, *_), _, _ = parse_args(DATACLASSES, QUANTIZATION_FLAGS[kind])
    float_model = load_base_model(ModelArguments(model_name_or_path=tiny_model_dir))
    model = load_base_model(model_args, name=tiny_model_dir)
    layer_class = quantized_layer_class(kind)
    conv1d_names = [name for name, module in float_model.named_modules() if type(module).__name__ == "Conv1D"]
    assert len(conv1d_names) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of 2 layers
    for name in conv1d_names:
        layer = model.get_submodule(name)
        assert isinstance(layer, layer_class), name
        # Conv1D stores (in, out): the quantized (out, in) weight must be its transpose, not a reshape
        reference = float_model.get_submodule(name).weight.T
        similarity = torch.nn.functional.cosine_similarity(dequantized_weight(layer).flatten(), reference.flatten(), dim=0)
        assert similarity > 0.99, name
    if kind == "4bit":
        quant_state = model.transformer.h[0].attn.c_attn.weight.quant_state
        assert quant_state.quant_type == "nf4" and quant_state.nested  # nested: double quantization
        assert model.transformer.h[0].attn.c_attn.compute_dtype == torch.float32

    peft_model = apply_lora(model, LoraArguments(lora_r=4))
    assert peft_model.peft_config["default"].fan_in_fan_out is False  # Linear4bit/8bitLt store (out, in)
    for layer_index in range(2):
        c_attn = peft_model.base_model.model.transformer.h[layer_index].attn.c_attn
        assert isinstance(c_attn.base_layer, layer_class) and "default" in c_attn.lora_A
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert count_parameters(peft_model)["trainable_params"] == 2 * 4 * (64 + 3 * 64)


@pytest.mark.slow
@pytest.mark.parametrize("kind", QUANTIZATION_FLAGS)
def test_quantized_base_trains_saves_and_reloads(kind, tiny_model_dir, tmp_path, monkeypatch):
    spy = install_trainer_spy(monkeypatch)
    # two examples, one batch seen six times at a large learning rate: the loss must fall
    summary = run_qa_lora.main(tiny_run_args(
        tiny_model_dir, tmp_path, *QUANTIZATION_FLAGS[kind], "--max_train_samples", "2", "--per_device_train_batch_size", "2",
        "--max_steps", "6", "--learning_rate", "1e-2", "--warmup_steps", "0", "--lora_dropout", "0",
    ))
    losses = logged_losses(summary)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1
    trained = spy.trainers[0].model
    assert isinstance(trained.base_model.model.transformer.h[0].attn.c_attn.base_layer, quantized_layer_class(kind))
    assert summary["lora"]["target_modules"] == ["c_attn"]
    with open(tmp_path / "adapter_config.json", encoding="utf-8") as f:
        adapter_config = json.load(f)
    assert adapter_config["fan_in_fan_out"] is False and adapter_config["base_model_name_or_path"] == tiny_model_dir
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)
    assert all(tensor.abs().sum() > 0 for name, tensor in saved.items() if "lora_B" in name)  # moved off zero

    # reload on the float base (peft switches fan_in_fan_out on for its Conv1D layers) and answer
    model, _ = load_for_inference(str(tmp_path), ModelArguments())
    reloaded = {name.replace(".default.", "."): param for name, param in model.named_parameters() if "lora_" in name}
    assert set(reloaded) == set(saved)
    for name, tensor in saved.items():
        torch.testing.assert_close(reloaded[name], tensor, rtol=0, atol=0)
    results = generate.main(["--adapter", str(tmp_path), "--validation_file", VALIDATION_FILE, "--max_eval_samples", "3",
                             "--max_new_tokens", "4", "--output_dir", str(tmp_path / "predictions")])
    ids = [row["id"] for row in load_squad_file(VALIDATION_FILE)[0][:3]]
    assert [row["id"] for row in results["greedy"]] == ids
    assert all(isinstance(row["prediction"], str) for row in results["greedy"])


# ---------------------------------------------------------------------------
# Gradient checkpointing with LoRA
# ---------------------------------------------------------------------------


def lora_gradients(model, batch) -> dict:
    model.zero_grad()
    labelled_positions_loss(model, batch).backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_tokenizer):
    features = sample_features(tiny_tokenizer)
    batch = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100)(features)
    gradients = {}
    for use_checkpointing in (False, True):
        torch.manual_seed(0)
        # no dropout: checkpointing only acts in training mode, where dropout would make the runs differ
        config = GPT2Config.from_pretrained(TINY_GPT2_DIR, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = apply_lora(GPT2LMHeadModel(config), LoraArguments(lora_dropout=0.0), use_checkpointing)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)  # B = 0 at init would leave A without a gradient
        if use_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.get_base_model().is_gradient_checkpointing
        model.train()
        gradients[use_checkpointing] = lora_gradients(model, batch)
    assert gradients[True].keys() == gradients[False].keys() and len(gradients[True]) == 4
    for name, gradient in gradients[False].items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(gradients[True][name], gradient, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_gradient_checkpointing_run_trains_lora(tiny_model_dir, tmp_path, monkeypatch):
    spy = install_trainer_spy(monkeypatch)
    initial = {}
    train = run_qa_lora.QATrainer.train

    def train_recording_initial_lora(self, *args, **kwargs):
        initial.update({name: param.detach().clone() for name, param in self.model.named_parameters() if "lora_" in name})
        return train(self, *args, **kwargs)

    monkeypatch.setattr(run_qa_lora.QATrainer, "train", train_recording_initial_lora)
    summary = run_qa_lora.main(tiny_run_args(
        tiny_model_dir, tmp_path, "--gradient_checkpointing", "--max_train_samples", "2", "--per_device_train_batch_size", "2",
        "--max_steps", "6", "--learning_rate", "1e-2", "--warmup_steps", "0", "--lora_dropout", "0",
    ))
    model = spy.trainers[0].model
    assert model.get_base_model().is_gradient_checkpointing
    losses = logged_losses(summary)
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1
    assert initial and all(torch.equal(t, torch.zeros_like(t)) for name, t in initial.items() if "lora_B" in name)
    trained = {name: param.detach() for name, param in model.named_parameters() if "lora_" in name}
    for name, tensor in initial.items():
        assert not torch.equal(trained[name], tensor), f"{name} did not change"


# ---------------------------------------------------------------------------
# A second architecture: a tiny Llama
# ---------------------------------------------------------------------------

# q_proj maps 64 -> 64; v_proj 64 -> 32 (2 key/value heads of 16): LoRA r adds r * (128 + 96) per layer
TINY_LLAMA_LORA_R8_PARAMS = 2 * 8 * ((64 + 64) + (64 + 32))


@pytest.mark.slow
def test_llama_trains_with_peft_default_targets_and_answers(tiny_llama_dir, tmp_path):
    summary = run_qa_lora.main(tiny_run_args(
        tiny_llama_dir, tmp_path / "run", "--max_train_samples", "8", "--max_steps", "4", "--learning_rate", "1e-2",
        "--warmup_steps", "0", "--lora_dropout", "0",
        "--eval_strategy", "steps", "--eval_steps", "4", "--max_eval_samples", "3", "--eval_generation_samples", "3",
    ))
    assert summary["lora"]["target_modules"] == ["q_proj", "v_proj"]  # peft's default for llama
    assert summary["trainable_params"] == TINY_LLAMA_LORA_R8_PARAMS
    losses = logged_losses(summary)
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert {"eval_loss", "eval_exact_match", "eval_f1"} <= set(summary["eval_metrics"])
    with open(tmp_path / "run" / "adapter_config.json", encoding="utf-8") as f:
        adapter_config = json.load(f)
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"] and adapter_config["fan_in_fan_out"] is False

    results = generate.main(["--adapter", str(tmp_path / "run"), "--validation_file", VALIDATION_FILE, "--max_eval_samples", "3",
                             "--max_new_tokens", "4", "--output_dir", str(tmp_path / "predictions")])
    ids = [row["id"] for row in load_squad_file(VALIDATION_FILE)[0][:3]]
    assert [row["id"] for row in results["greedy"]] == ids
    with open(tmp_path / "predictions" / "predictions_greedy.json", encoding="utf-8") as f:
        assert list(json.load(f)) == ids


def test_llama_target_modules_flag(tiny_llama_dir):
    (_, _, lora_args, *_), _, _ = parse_args(DATACLASSES, ["--lora_target_modules", "gate_proj"])
    model = apply_lora(load_base_model(ModelArguments(model_name_or_path=tiny_llama_dir)), lora_args)
    adapted = sorted(name for name, module in model.named_modules() if hasattr(module, "lora_A"))
    assert adapted == [f"base_model.model.model.layers.{i}.mlp.gate_proj" for i in range(2)]
    assert count_parameters(model)["trainable_params"] == 2 * 8 * (64 + 128)


def test_llama_missing_target_module_lists_the_names(tiny_llama_dir):
    (_, _, lora_args, *_), _, _ = parse_args(DATACLASSES, ["--lora_target_modules", "c_attn"])
    with pytest.raises(ModelLoadError) as info:
        apply_lora(load_base_model(ModelArguments(model_name_or_path=tiny_llama_dir)), lora_args)
    message = str(info.value)
    assert message.startswith("--lora_target_modules c_attn: no such module in llama")
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert name in message


# ---------------------------------------------------------------------------
# accelerate configs (configs/accelerate/*.yaml are loaded by test_configs.py)
# ---------------------------------------------------------------------------


def test_top_level_accelerate_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(REPO_ROOT, "accelerate_config.yaml"))
    assert config.distributed_type == "MULTI_GPU" and config.mixed_precision == "bf16" and config.num_processes >= 1


def test_cpu_multiprocess_config_starts_two_ranks():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_multiprocess.yaml"))
    assert (config.num_processes, config.num_machines, config.mixed_precision) == (2, 1, "no")


# ---------------------------------------------------------------------------
# The labelled-positions loss equals the model's own loss, with the same LoRA gradients
# ---------------------------------------------------------------------------


def random_lora_model(architecture, tokenizer):
    torch.manual_seed(0)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))
    else:
        model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    model = apply_lora(model, LoraArguments(lora_r=4, lora_dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # B = 0 at init would leave A without a gradient
    model.eval()  # GPT-2's own dropout off; gradients still flow
    return model


def loss_and_gradients(model, compute_loss) -> tuple:
    model.zero_grad()
    loss = compute_loss()
    loss.backward()
    return loss.detach(), {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}


def assert_same_loss_and_gradients(actual, expected):
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=0)
    assert actual[1].keys() == expected[1].keys()
    for name, gradient in expected[1].items():
        torch.testing.assert_close(actual[1][name], gradient, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_labelled_positions_loss_equals_the_model_loss(architecture, tiny_tokenizer):
    model = random_lora_model(architecture, tiny_tokenizer)
    features = sample_features(tiny_tokenizer)
    padded = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100)(features)
    assert not padded["attention_mask"].all()  # the batch really is padded
    num_labelled = int((padded["labels"][:, 1:] != -100).sum())

    expected = loss_and_gradients(model, lambda: model(**padded).loss)
    assert all(gradient.abs().sum() > 0 for gradient in expected[1].values())
    assert_same_loss_and_gradients(loss_and_gradients(model, lambda: labelled_positions_loss(model, padded)), expected)

    # one packed row (block-diagonal mask, positions restarting per feature) = the padded, unpacked features
    packed = PackingCollator(use_block_mask=True)(features)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert_same_loss_and_gradients(loss_and_gradients(model, lambda: labelled_positions_loss(model, packed)), expected)

    # gradient accumulation: a sum over the labelled tokens divided by those of the whole accumulated batch
    num_items = torch.tensor(3 * num_labelled)
    scaled = (expected[0] * num_labelled / num_items, {k: g * num_labelled / num_items for k, g in expected[1].items()})
    model_scaled = loss_and_gradients(model, lambda: model(**padded, num_items_in_batch=num_items).loss)
    assert_same_loss_and_gradients(model_scaled, scaled)
    for batch in (padded, packed):
        actual = loss_and_gradients(model, lambda b=batch: labelled_positions_loss(model, b, num_items_in_batch=num_items))
        assert_same_loss_and_gradients(actual, scaled)
