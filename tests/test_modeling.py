"""squad_lora.modeling: loading bases, adapters and full fine-tunes for inference, LoRA on GPT-2, Llama and
4/8-bit bases, parameter counts, and weights that load from safetensors only; and apply_lora with peft's LoRA options
(--lora_target_modules all-linear, --use_dora, --use_rslora, --init_lora_weights, --lora_modules_to_save) on GPT-2
(Conv1D layers, weights stored transposed) and a Llama (nn.Linear, grouped-query attention): trainable parameters
against a hand count, the adapter trained, saved and reloaded to the same logits. (A run that shows its options
everywhere is in test_run_qa_lora.py; the options refused up front in test_args.py.)"""

import ast
import inspect
import json
import math
import os
import re

import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import AutoConfig, DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel

from builders import (
    ALL_LINEAR,
    DEFAULT_TARGETS,
    HIDDEN,
    LAYERS,
    LORA_R,
    QUANTIZATION_FLAGS,
    SHAPES,
    VOCAB,
    dora_magnitudes,
    lora_option_params,
    padded_batch,
    parse_training_args,
    quantized_layer_class,
    sample_features,
    save_random_gpt2,
    save_tiny_model,
    train_plan,
    training_args,
)
from repo_paths import REPO_ROOT, TINY_GPT2_DIR
from squad_lora import modeling
from squad_lora.args import EvalDataArguments, LoraArguments, ModelArguments, TrainModelArguments
from squad_lora.cli import parse_args
from squad_lora.commands import generate
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

# ---------------------------------------------------------------------------
# Loading for inference: adapters, merged adapters, full fine-tunes, bare bases, and the errors
# ---------------------------------------------------------------------------


def test_adapter_loads_on_the_base_named_in_its_config(adapter_dir, base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_for_inference(adapter_dir, ModelArguments())
    assert isinstance(model, PeftModel) and not model.training
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert torch.equal(model.get_base_model().transformer.wte.weight, base.transformer.wte.weight)
    lora_b = model.get_base_model().transformer.h[0].attn.c_attn.lora_B["default"].weight
    assert lora_b.abs().sum() > 0  # the saved adapter weights, not a fresh zero init
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_merged_adapter_has_plain_layers(adapter_dir):
    merged_model, _ = load_for_inference(adapter_dir, ModelArguments(), merge=True)
    assert not any("lora" in name for name, _ in merged_model.named_parameters())
    assert not merged_model.training


def test_a_bare_base_loads_for_zero_shot(base_dir):
    from peft import PeftModel

    model, _ = load_for_inference(None, ModelArguments(model_name_or_path=base_dir))
    assert not isinstance(model, PeftModel) and not model.training


def test_from_scratch_adapter_uses_its_saved_base_model(trained_dirs):
    from peft import PeftModel
    from safetensors.torch import load_file

    with open(os.path.join(trained_dirs.lora, "adapter_config.json"), encoding="utf-8") as f:
        assert not os.path.exists(json.load(f)["base_model_name_or_path"])  # moved: only base_model/ remains

    model, _ = load_for_inference(trained_dirs.lora, ModelArguments())
    assert isinstance(model, PeftModel)
    saved_base = load_file(os.path.join(trained_dirs.lora, "base_model", "model.safetensors"))
    c_fc = model.get_base_model().transformer.h[0].mlp.c_fc.weight
    assert torch.equal(c_fc, saved_base["transformer.h.0.mlp.c_fc.weight"])


def test_full_fine_tune_dir_loads_as_a_plain_model(trained_dirs):
    from peft import PeftModel
    from safetensors.torch import load_file

    assert not os.path.exists(os.path.join(trained_dirs.full, "adapter_config.json"))
    model, _ = load_for_inference(trained_dirs.full, ModelArguments())
    assert not isinstance(model, PeftModel)
    saved = load_file(os.path.join(trained_dirs.full, "model.safetensors"))
    assert torch.equal(model.transformer.h[1].attn.c_attn.weight, saved["transformer.h.1.attn.c_attn.weight"])


def test_missing_adapter_dir_is_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-run"
    with pytest.raises(ModelLoadError, match=f"--adapter {re.escape(str(missing))}: no such directory"):
        load_for_inference(str(missing), ModelArguments())
    # a relative path looks like a Hub id (owner/name): the message still says there is no such directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="--adapter runs/missing: no such directory"):
        load_for_inference("runs/missing", ModelArguments())
    with pytest.raises(ModelLoadError, match="--adapter .* or --model_name_or_path"):
        load_for_inference(None, ModelArguments())


def test_adapter_made_for_another_base_is_a_clear_error(adapter_dir, other_base_dir, base_dir):
    with pytest.raises(ModelLoadError) as error:
        load_for_inference(adapter_dir, ModelArguments(model_name_or_path=other_base_dir))
    message = str(error.value)
    assert f"--adapter {adapter_dir} does not fit the base model {other_base_dir!r}" in message
    assert f"trained on {base_dir!r}" in message and "size mismatch" in message


# ---------------------------------------------------------------------------
# LoRA on other architectures: a tiny Llama
# ---------------------------------------------------------------------------


def test_llama_target_modules_flag(tiny_llama_dir):
    lora_args = parse_training_args(["--lora_target_modules", "gate_proj"]).lora
    model = apply_lora(load_base_model(ModelArguments(model_name_or_path=tiny_llama_dir)), lora_args)
    adapted = sorted(name for name, module in model.named_modules() if hasattr(module, "lora_A"))
    assert adapted == [f"base_model.model.model.layers.{i}.mlp.gate_proj" for i in range(2)]
    assert count_parameters(model)["trainable_params"] == 2 * 8 * (64 + 128)


def test_llama_missing_target_module_lists_the_names(tiny_llama_dir):
    lora_args = parse_training_args(["--lora_target_modules", "c_attn"]).lora
    with pytest.raises(ModelLoadError) as info:
        apply_lora(load_base_model(ModelArguments(model_name_or_path=tiny_llama_dir)), lora_args)
    message = str(info.value)
    assert message.startswith("--lora_target_modules c_attn: no such module in llama")
    for name in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ):
        assert name in message


# ---------------------------------------------------------------------------
# peft's LoRA options on GPT-2 and a Llama: counted, trained, saved and reloaded
# ---------------------------------------------------------------------------


# option -> (LoraArguments kwargs, trainable parameters per architecture)
OPTIONS = {
    "all-linear": (
        {"lora_target_modules": ["all-linear"]},
        lambda arch: lora_option_params(arch, SHAPES[arch]),
    ),
    "dora": ({"use_dora": True}, lambda arch: lora_option_params(arch) + dora_magnitudes(arch)),
    "rslora": ({"use_rslora": True}, lora_option_params),
    "init-false": ({"init_lora_weights": "false"}, lora_option_params),
    "gaussian": ({"init_lora_weights": "gaussian"}, lora_option_params),
    "orthogonal": ({"init_lora_weights": "orthogonal"}, lora_option_params),
    "pissa": ({"init_lora_weights": "pissa"}, lora_option_params),
    "pissa-fast-svd": ({"init_lora_weights": "pissa_niter_2"}, lora_option_params),
    "olora": ({"init_lora_weights": "olora"}, lora_option_params),  # Llama only: refused on GPT-2's Conv1D
    # MiCA freezes B: only A (r x in) trains
    "mica": (
        {"init_lora_weights": "mica"},
        lambda arch: LAYERS * sum(LORA_R * SHAPES[arch][t][0] for t in DEFAULT_TARGETS[arch]),
    ),
    "modules-to-save": ({"lora_modules_to_save": ["lm_head"]}, lambda arch: lora_option_params(arch) + VOCAB * HIDDEN),
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
    if option == "olora":  # checked by the plan, before any weights load
        config = AutoConfig.from_pretrained(base_dir)
        if architecture == "gpt2":
            with pytest.raises(ConfigError, match="olora: .*Conv1D.*use pissa"):
                train_plan(tiny_tokenizer, config, training_args(tmp_path), **kwargs)
            return
        train_plan(tiny_tokenizer, config, training_args(tmp_path), **kwargs)  # Llama's Linear layers: accepted
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
        assert (saved["r"], saved["init_lora_weights"]) == (2 * LORA_R, True)
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
    assert scalings[False] == {16 / LORA_R}
    (scaling,) = scalings[True]
    assert scaling == pytest.approx(16 / math.sqrt(LORA_R))


def test_unknown_module_to_save_lists_the_names(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="--lora_modules_to_save lm_haed: no such module in gpt2.*lm_head"):
        lora_model(tiny_model_dir, lora_modules_to_save=["lm_haed"])


# ---------------------------------------------------------------------------
# QLoRA (4-bit) and 8-bit bases through bitsandbytes, on CPU
# ---------------------------------------------------------------------------


def dequantized_weight(layer) -> torch.Tensor:
    """A bitsandbytes layer's weight back in float, (out, in) like nn.Linear."""
    import bitsandbytes as bnb

    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    return layer.weight.data.float() * layer.weight.SCB[:, None] / 127  # int8 rows with their absmax scales


@pytest.mark.parametrize("kind", QUANTIZATION_FLAGS)
def test_quantized_gpt2_replaces_every_conv1d_and_lora_wraps_it(kind, tiny_model_dir):
    model_args = parse_training_args(QUANTIZATION_FLAGS[kind]).model
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
        similarity = torch.nn.functional.cosine_similarity(
            dequantized_weight(layer).flatten(), reference.flatten(), dim=0
        )
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


# ---------------------------------------------------------------------------
# Safety: weights from safetensors only, no remote code by default
# ---------------------------------------------------------------------------


def test_model_dir_with_only_a_pickle_is_refused(tmp_path, monkeypatch):
    model = load_base_model(ModelArguments(model_name_or_path=TINY_GPT2_DIR), from_scratch=True)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")

    def forbidden_load(*args, **kwargs):
        raise AssertionError("torch.load was called on a pickle")

    monkeypatch.setattr(torch, "load", forbidden_load)
    with pytest.raises(ModelLoadError) as info:
        load_base_model(ModelArguments(model_name_or_path=str(tmp_path)))
    assert str(tmp_path) in str(info.value) and "holds only pickled weights (pytorch_model.bin)" in str(info.value)
    with pytest.raises(ModelLoadError):
        load_for_inference(None, ModelArguments(model_name_or_path=str(tmp_path)))


def test_remote_code_is_off_by_default(tiny_model_dir, monkeypatch):
    assert ModelArguments().trust_remote_code is False and TrainModelArguments().trust_remote_code is False
    assert parse_training_args([]).model.trust_remote_code is False
    generate_types = (generate.GenerateArguments, ModelArguments, EvalDataArguments)
    (_, generate_model_args, _), _, _ = parse_args(generate_types, ["--question", "q", "--context", "c"])
    assert generate_model_args.trust_remote_code is False
    assert inspect.signature(modeling.load_tokenizer).parameters["trust_remote_code"].default is False
    # what the loaders hand to transformers
    seen = []
    for auto_class in (modeling.AutoModelForCausalLM, modeling.AutoTokenizer):
        from_pretrained = auto_class.from_pretrained

        def recording(*args, _from_pretrained=from_pretrained, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _from_pretrained(*args, **kwargs)

        monkeypatch.setattr(auto_class, "from_pretrained", recording)
    load_for_inference(None, ModelArguments(model_name_or_path=tiny_model_dir))
    assert seen == [False, False]


def project_python_files() -> list[str]:
    skip = {".git", "outputs", "__pycache__", ".pytest_cache", ".hypothesis"}
    found = []
    for root, dirs, names in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        found += [os.path.join(root, name) for name in names if name.endswith(".py")]
    return sorted(found)


PICKLE_MODULES = ("pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle")


def unsafe_loads(source: str) -> list[str]:
    """Calls that unpickle: torch.load without weights_only=True, and pickle/dill/joblib/cloudpickle loads."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (
            node.module in PICKLE_MODULES
            or node.module == "torch"
            and any(alias.name == "load" for alias in node.names)
        ):
            found.append((node.lineno, ast.unparse(node)))  # a bare load() would escape the checks below
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        weights_only = next((kw.value for kw in node.keywords if kw.arg == "weights_only"), None)
        if (
            name == "torch.load"
            and not (isinstance(weights_only, ast.Constant) and weights_only.value is True)
            or name.split(".")[-1] in ("load", "loads", "Unpickler")
            and name.split(".")[0] in PICKLE_MODULES
        ):
            found.append((node.lineno, ast.unparse(node)))
    return [f"line {lineno}: {code}" for lineno, code in sorted(found)]


def test_unsafe_load_scan_finds_what_it_should():
    source = (
        "import torch, pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, weights_only=True)\n"
        "pickle.loads(b)\nfrom pickle import load\nsafetensors.torch.load_file(p)\njson.load(f)\n"
    )
    assert [line.split(":")[0] for line in unsafe_loads(source)] == ["line 2", "line 3", "line 5", "line 6"]


def test_project_code_never_unpickles():
    files = project_python_files()
    assert (
        os.path.join(REPO_ROOT, "run_qa_lora.py") in files and os.path.join(REPO_ROOT, "tests", "conftest.py") in files
    )
    problems = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            if found := unsafe_loads(f.read()):
                problems[os.path.relpath(path, REPO_ROOT)] = found
    assert problems == {}


def test_gpt2s_gelu_is_the_fused_one_with_the_same_outputs(tmp_path, tiny_tokenizer):
    from transformers.activations import GELUTanh, NewGELUActivation

    path = save_random_gpt2(tmp_path / "model", tiny_tokenizer)
    reference = GPT2LMHeadModel.from_pretrained(path).eval()  # transformers' own: gelu_new in Python
    model = modeling.load_base_model(ModelArguments(model_name_or_path=path)).eval()
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    assert sum(isinstance(m, GELUTanh) for m in model.modules()) == model.config.n_layer
    ids = torch.tensor([tiny_tokenizer("The Broncos won the game in Denver.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
    model.save_pretrained(tmp_path / "saved")  # the saved config still names its own activation
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["activation_function"] == "gelu_new"
