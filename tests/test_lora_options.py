"""peft's LoRA options as flags: --lora_target_modules all-linear, --use_dora, --use_rslora, --init_lora_weights,
--lora_modules_to_save, on GPT-2 (Conv1D layers, weights stored transposed) and a Llama (nn.Linear, grouped-query
attention): trainable parameters against a hand count, the adapter trained, saved and reloaded to the same logits,
the refusals up front, and where a run shows them (log line, run summary, model card, TensorBoard HParams)."""

import json
import math

import pytest
import torch
from huggingface_hub import ModelCard
from peft.tuners.lora import LoraLayer
from tiny_models import padded_batch, save_tiny_model

import run_qa_lora
from conftest import DEV_FILE, TRAIN_FILE, read_events
from squad_lora.args import LoraArguments, ModelArguments
from squad_lora.cli import parse_args
from squad_lora.errors import ConfigError, ModelLoadError
from squad_lora.loss import labelled_positions_loss
from squad_lora.modeling import (
    apply_lora,
    count_parameters,
    effective_target_modules,
    load_base_model,
    load_for_inference,
    save_for_original_base,
)

# configs/tiny-gpt2: 2 layers, n_embd 64, MLP 256, vocabulary 813. Per layer, LoRA r on a layer of in -> out
# features trains r * (in + out); DoRA adds one magnitude per output feature.
#   c_attn 64 -> 192, attn.c_proj 64 -> 64, mlp.c_fc 64 -> 256, mlp.c_proj 256 -> 64
# The tiny Llama: 2 layers, hidden 64, MLP 128, 4 query heads of 16 and 2 key/value heads (k, v: 64 -> 32).
#   q_proj, o_proj 64 -> 64; k_proj, v_proj 64 -> 32; gate_proj, up_proj 64 -> 128; down_proj 128 -> 64
LAYERS, R, VOCAB, HIDDEN = 2, 8, 813, 64
SHAPES = {
    "gpt2": {"c_attn": (64, 192), "attn.c_proj": (64, 64), "mlp.c_fc": (64, 256), "mlp.c_proj": (256, 64)},
    "llama": {
        "q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
        "gate_proj": (64, 128), "up_proj": (64, 128), "down_proj": (128, 64),
    },
}  # fmt: skip
DEFAULT_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}  # ours for GPT-2, peft's for Llama
# what peft resolves all-linear to, named per transformer layer
ALL_LINEAR = {
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    "llama": [
        "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
        "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj",
    ],
}  # fmt: skip


def lora_params(architecture, targets=None) -> int:
    shapes = SHAPES[architecture]
    return LAYERS * sum(R * sum(shapes[t]) for t in targets or DEFAULT_TARGETS[architecture])


def dora_magnitudes(architecture, targets=None) -> int:
    return LAYERS * sum(SHAPES[architecture][t][1] for t in targets or DEFAULT_TARGETS[architecture])


# option -> (LoraArguments kwargs, trainable parameters per architecture)
OPTIONS = {
    "all-linear": (
        {"lora_target_modules": ["all-linear"]},
        lambda arch: lora_params(arch, SHAPES[arch]),
    ),
    "dora": ({"use_dora": True}, lambda arch: lora_params(arch) + dora_magnitudes(arch)),
    "rslora": ({"use_rslora": True}, lora_params),
    "init-false": ({"init_lora_weights": "false"}, lora_params),
    "gaussian": ({"init_lora_weights": "gaussian"}, lora_params),
    "orthogonal": ({"init_lora_weights": "orthogonal"}, lora_params),
    "pissa": ({"init_lora_weights": "pissa"}, lora_params),
    "pissa-fast-svd": ({"init_lora_weights": "pissa_niter_2"}, lora_params),
    "olora": ({"init_lora_weights": "olora"}, lora_params),  # Llama only: refused on GPT-2's Conv1D
    # MiCA freezes B: only A (r x in) trains
    "mica": (
        {"init_lora_weights": "mica"},
        lambda arch: LAYERS * sum(R * SHAPES[arch][t][0] for t in DEFAULT_TARGETS[arch]),
    ),
    "modules-to-save": ({"lora_modules_to_save": ["lm_head"]}, lambda arch: lora_params(arch) + VOCAB * HIDDEN),
}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def base(request, tmp_path_factory, tiny_tokenizer):
    """(architecture, directory of a saved random tiny model of it)."""
    directory = tmp_path_factory.mktemp(f"tiny-{request.param}")
    return request.param, save_tiny_model(request.param, tiny_tokenizer, directory)


def lora_model(model_dir, **options):
    return apply_lora(
        load_base_model(ModelArguments(model_name_or_path=model_dir)), LoraArguments(lora_dropout=0.0, **options)
    )


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_option_trains_saves_and_reloads_to_the_same_model(option, base, tiny_tokenizer, tmp_path):
    architecture, base_dir = base
    kwargs, expected_trainable = OPTIONS[option]
    if option == "olora" and architecture == "gpt2":
        with pytest.raises(ConfigError, match="olora: .*Conv1D.*use pissa"):
            lora_model(base_dir, **kwargs)
        return
    model = lora_model(base_dir, **kwargs)
    counts = count_parameters(model)
    assert counts["trainable_params"] == expected_trainable(architecture)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert counts["trainable_params"] == sum(p.numel() for p in trainable.values())

    # a few steps with the labelled-positions loss, which equals the model's own loss with each option
    batch = padded_batch(tiny_tokenizer)
    model.eval()  # GPT-2's own dropout off, so that the two losses see the same network; gradients still flow
    torch.testing.assert_close(labelled_positions_loss(model, batch), model(**batch).loss, rtol=1e-5, atol=0)
    before = {name: p.detach().clone() for name, p in trainable.items()}
    optimizer = torch.optim.Adam(trainable.values(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        labelled_positions_loss(model, batch).backward()
        optimizer.step()
    assert all(not torch.equal(before[name], p) for name, p in trainable.items())  # every trainable weight learned

    # saved as run_qa_lora.py saves it, then loaded on the untouched base as generate.py loads it
    model.save_pretrained(tmp_path)
    save_for_original_base(model, str(tmp_path))
    reloaded, _ = load_for_inference(str(tmp_path), ModelArguments(model_name_or_path=base_dir))
    torch.testing.assert_close(logits(reloaded, batch), logits(model, batch), rtol=1e-4, atol=1e-4)
    with open(tmp_path / "adapter_config.json", encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["use_dora"] == kwargs.get("use_dora", False) and saved["use_rslora"] == kwargs.get("use_rslora", False)
    if option.startswith(("pissa", "olora")):  # converted to fit the original base: trained minus initial product
        assert (saved["r"], saved["init_lora_weights"]) == (2 * R, True)
    if option == "modules-to-save":
        assert saved["modules_to_save"] == ["lm_head"]


def test_all_linear_adapts_every_linear_layer_but_the_head(base):
    architecture, base_dir = base
    model = lora_model(base_dir, lora_target_modules=["all-linear"])
    assert effective_target_modules(model) == ALL_LINEAR[architecture]
    head = model.get_base_model().get_output_embeddings()
    assert not any(name.startswith("lora_") for name, _ in head.named_parameters())


def test_rslora_scales_by_the_square_root_of_the_rank(base):
    _, base_dir = base
    scalings = {
        rslora: {
            m.scaling["default"] for m in lora_model(base_dir, use_rslora=rslora).modules() if isinstance(m, LoraLayer)
        }
        for rslora in (False, True)
    }
    assert scalings[False] == {16 / R}
    (scaling,) = scalings[True]
    assert scaling == pytest.approx(16 / math.sqrt(R))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--init_lora_weights", "eva"], "--init_lora_weights eva: not supported: EVA initializes from activations"),
        (["--init_lora_weights", "loftq"], "--init_lora_weights loftq: not supported: LoftQ needs a loftq_config"),
        (["--init_lora_weights", "corda"], "--init_lora_weights corda: not supported: CorDA needs"),
        (["--init_lora_weights", "svd"], "--init_lora_weights svd: choose from true, false, gaussian, pissa"),
        (["--init_lora_weights", "pissa_niter_x"], "choose from .* or pissa_niter_N"),
        (["--init_lora_weights", "mica", "--use_dora"], "mica cannot be combined with --use_dora"),
        (["--init_lora_weights", "pissa", "--use_dora"], "pissa cannot be combined with --use_dora: peft cannot convert"),
        (["--init_lora_weights", "olora", "--lora_modules_to_save", "lm_head"], "olora cannot be combined with --lora_modules_to_save"),
        (["--lora_target_modules", "all-linear", "c_attn"], "all-linear stands alone"),
        (["--lora_r", "0", "--use_dora", "--lora_modules_to_save", "lm_head"], "--use_dora, --lora_modules_to_save: LoRA options, but --lora_r 0"),
    ],
)  # fmt: skip
def test_lora_options_are_checked_before_anything_loads(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(run_qa_lora.ARGUMENT_TYPES, argv)


def test_config_file_init_true_is_the_default(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("init_lora_weights: true\nlora_modules_to_save: lm_head,wte\n", encoding="utf-8")
    lora = parse_args(run_qa_lora.ARGUMENT_TYPES, [str(config)])[0][2]
    assert lora.init_lora_weights == "true" and lora.peft_init_lora_weights() is True
    assert lora.lora_modules_to_save == ["lm_head", "wte"]


def test_unknown_module_to_save_lists_the_names(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="--lora_modules_to_save lm_haed: no such module in gpt2.*lm_head"):
        lora_model(tiny_model_dir, lora_modules_to_save=["lm_haed"])


def session_hparams(output_dir) -> dict:
    """{name: value} that TensorBoard's HParams dashboard shows for the run."""
    values = read_events(output_dir)[1]["_hparams_/session_start_info"].session_start_info.hparams
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in values.items()}


# two runs, as PiSSA cannot go with DoRA or modules saved in full: (flags, what the log and card show)
RUNS = {
    "dora-all-linear": (
        ["--lora_target_modules", "all-linear", "--use_dora", "--init_lora_weights", "gaussian",
         "--lora_modules_to_save", "lm_head"],
        f"target_modules={ALL_LINEAR['gpt2']} (all-linear), use_dora=True, init_lora_weights=gaussian, "
        "modules_to_save=['lm_head']",
    ),
    "pissa-rslora": (
        ["--init_lora_weights", "pissa", "--use_rslora"],
        "target_modules=['c_attn'], use_rslora=True, init_lora_weights=pissa",
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(RUNS))
def test_a_run_shows_its_lora_options_everywhere(run, tiny_model_dir, tmp_path, caplog):
    options, shown_line = RUNS[run]
    out = tmp_path / "run"
    argv = [
        "--model_name_or_path", tiny_model_dir, "--train_file", TRAIN_FILE, "--validation_file", DEV_FILE,
        "--max_train_samples", "16",
        "--max_eval_samples", "4", "--eval_generation_samples", "2", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--eval_strategy", "epoch", "--save_strategy", "no",
        "--report_to", "tensorboard", "--disable_tqdm", "true", "--output_dir", str(out), *options,
    ]  # fmt: skip
    caplog.set_level("INFO", logger="run_qa_lora")
    summary = run_qa_lora.main(argv)
    lora = summary["lora"]
    if run == "dora-all-linear":
        targets = ALL_LINEAR["gpt2"]
        lora_and_dora = lora_params("gpt2", SHAPES["gpt2"]) + dora_magnitudes("gpt2", SHAPES["gpt2"])
        assert summary["trainable_params"] == lora_and_dora + VOCAB * HIDDEN
        assert (lora["use_dora"], lora["init_lora_weights"], lora["lora_modules_to_save"]) == (
            True,
            "gaussian",
            ["lm_head"],
        )
    else:
        targets = ["c_attn"]
        assert summary["trainable_params"] == lora_params("gpt2")
        assert (lora["use_rslora"], lora["init_lora_weights"]) == (True, "pissa")
        with open(out / "adapter_config.json", encoding="utf-8") as f:
            assert json.load(f)["r"] == 2 * R  # saved converted to fit the original base
    assert lora["target_modules"] == targets

    assert any(summary["parameters"] in line and shown_line in line for line in caplog.messages)  # the parameter line
    assert shown_line in ModelCard.load(str(out / "README.md")).text
    shown = session_hparams(str(out))
    assert shown["lora_target_modules"] == ", ".join(targets)
    assert (shown["use_dora"], shown["use_rslora"]) == (lora["use_dora"], lora["use_rslora"])
    assert shown["init_lora_weights"] == lora["init_lora_weights"]
    assert shown["max_steps"] == max(entry["step"] for entry in summary["log_history"]) > 0  # what ran, not -1
