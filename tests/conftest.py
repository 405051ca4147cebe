"""The offline environment every test runs in, pytest's hooks, and the shared fixtures: tiny models and tokenizers,
adapters and finished runs, the fake Hub and the trainer spy. The plain helpers that tests import are beside it:
repo_paths.py (paths), builders.py (tiny models, arguments, examples, plans), fakes.py (the fake Hub, spies,
subprocess environments), run_outputs.py (readers of what runs wrote) and squad_reference.py (the official
SQuAD scorers and the loader's promises, restated); tests/ is on sys.path as the folder of this conftest.py.

Every test runs offline: the Hub flags are set before any Hugging Face library is imported, and
HF_HOME points at an empty folder so a developer's download cache cannot answer for the Hub.

The models are random and tiny (configs/tiny-gpt2: 2 layers, n_embd 64, its own small tokenizer), so
a training run takes well under a second; what they answer is noise unless a test teaches them.
"""

import atexit
import json
import os
import shutil
import tempfile
from types import SimpleNamespace

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="squad-lora-tests-hf-home-")
atexit.register(shutil.rmtree, os.environ["HF_HOME"], ignore_errors=True)
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # datasets.map forks after the tokenizer has run
# Tiny models gain nothing from threads, and on a busy machine torch's spinning threads made
# a 3-step run take 8 s instead of 0.3 s. Set OMP_NUM_THREADS yourself to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402  (after the environment above, before any Hugging Face import)

from builders import (  # noqa: E402
    make_chat_tokenizer,
    save_random_gpt2,
    tiny_llama_config,
    tiny_run_args,
    train_for_sharing,
    write_jsonl,
)
from fakes import FakeHfApi, RecordingHfApi, install_trainer_spy  # noqa: E402
from repo_paths import DEV_FILE, REPO_ROOT, TINY_GPT2_DIR, TRAIN_FILE  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a training script end to end (seconds, not milliseconds)")


# ---------------------------------------------------------------------------
# Spies and fakes
# ---------------------------------------------------------------------------


@pytest.fixture
def trainer_spy(monkeypatch):
    return install_trainer_spy(monkeypatch)


@pytest.fixture
def fake_hub(monkeypatch):
    from squad_lora import hub

    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    return FakeHfApi


@pytest.fixture
def recording_hub(monkeypatch):
    """squad_lora.hub's HfApi replaced by RecordingHfApi: set .refuse to the call that should fail."""
    from squad_lora import hub

    RecordingHfApi.calls, RecordingHfApi.refuse = [], None
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    return RecordingHfApi


# ---------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny GPT-2 tokenizer, prepared as the scripts prepare it (pad = EOS)."""
    from squad_lora.modeling import load_tokenizer

    return load_tokenizer(TINY_GPT2_DIR)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A directory holding a random tiny GPT-2 (configs/tiny-gpt2) and its tokenizer, via save_pretrained."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))
    model_dir = tmp_path_factory.mktemp("tiny-gpt2-model")
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    return str(model_dir)


@pytest.fixture(scope="session")
def chat_tokenizer():
    return make_chat_tokenizer()


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory, chat_tokenizer):
    """A random tiny GPT-2 (prompt-dependent answers, see save_random_gpt2) with the chat tokenizer."""
    path = tmp_path_factory.mktemp("tiny-chat-gpt2")
    return save_random_gpt2(path, chat_tokenizer, vocab_size=len(chat_tokenizer))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer):
    """A random tiny Llama saved with configs/tiny-gpt2's tokenizer."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tiny_tokenizer))
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    return str(model_dir)


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, tiny_tokenizer):
    """A random tiny GPT-2 whose greedy answers depend on the prompt (see save_random_gpt2)."""
    return save_random_gpt2(tmp_path_factory.mktemp("base"), tiny_tokenizer)


@pytest.fixture(scope="session")
def other_base_dir(tmp_path_factory, tiny_tokenizer):
    """A base of another width (n_embd 32, not 64): base_dir's adapter cannot fit it."""
    return save_random_gpt2(tmp_path_factory.mktemp("other-base"), tiny_tokenizer, n_embd=32)


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, base_dir, tiny_tokenizer):
    """A LoRA adapter on base_dir, saved as run_qa_lora.py saves one (adapter + tokenizer).

    Its B matrices are random, not zero (init_lora_weights=False): the adapter changes the answers.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False,
        task_type="CAUSAL_LM",
    )  # fmt: skip
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    with open(out / "adapter_config.json", encoding="utf-8") as f:
        assert json.load(f)["base_model_name_or_path"] == base_dir  # the base the loader must find
    return str(out)


@pytest.fixture(scope="session")
def questions_file(tmp_path_factory):
    """Eight questions on the sample's contexts cut to 1..4 sentences: prompts of different lengths,
    in no particular length order."""
    from squad_lora.data import load_squad_file

    rows, _ = load_squad_file(DEV_FILE)
    examples = []
    for i, row in enumerate(rows[:8]):
        sentences = row["context"].split(". ")
        context = ". ".join(sentences[: 1 + (i * 3) % 4])
        examples.append(
            {"id": f"q{i}", "title": "", "context": context, "question": row["question"],
             "answers": {"text": [context[:5]], "answer_start": [0]}}
        )  # fmt: skip
    return write_jsonl(tmp_path_factory.mktemp("questions") / "questions.jsonl", examples)


# ---------------------------------------------------------------------------
# Finished runs, shared by the tests of several files (read them; copy one before changing it)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def trained_dirs(tmp_path_factory):
    """Two real run_qa_lora.py outputs (2 steps each): a --from_scratch LoRA run, moved after training
    so the absolute base path in its adapter_config.json is stale, and a full fine-tune (--lora_r 0)."""
    from squad_lora.commands import train as run_qa_lora

    root = tmp_path_factory.mktemp("runs")
    common = [
        "--model_name_or_path", TINY_GPT2_DIR, "--from_scratch", "--train_file", TRAIN_FILE,
        "--max_train_samples", 8, "--per_device_train_batch_size", 4, "--max_steps", 2, "--learning_rate", "1e-2",
        "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    run_qa_lora.main([str(a) for a in common + ["--lora_r", 4, "--output_dir", root / "lora-trained-here"]])
    run_qa_lora.main([str(a) for a in common + ["--lora_r", 0, "--output_dir", root / "full"]])
    lora_dir = root / "lora-moved-here"
    shutil.move(root / "lora-trained-here", lora_dir)
    return SimpleNamespace(lora=str(lora_dir), full=str(root / "full"))


@pytest.fixture(scope="session")
def two_runs(tiny_model_dir, tmp_path_factory):
    """`alpha`: r=8 on c_attn, EM/F1 at every evaluation, best model by F1, TensorBoard; `beta`: r=4 on
    c_attn + mlp.c_proj, generation off, TensorBoard. Both evaluate 8 validation questions."""
    from squad_lora.commands import train as run_qa_lora

    root = tmp_path_factory.mktemp("runs")

    def run(name, *flags):
        return run_qa_lora.main(
            tiny_run_args(tiny_model_dir, root / name, "--run_name", name, "--max_eval_samples", 8, *flags)
        )

    alpha = run(
        "alpha",
        "--max_steps", 4, "--learning_rate", "1e-2", "--warmup_steps", 0,
        "--eval_strategy", "steps", "--eval_steps", 2, "--save_strategy", "steps", "--save_steps", 2,
        "--metric_for_best_model", "f1", "--load_best_model_at_end",
        "--eval_generation_samples", 4,
        "--report_to", "tensorboard",
    )  # fmt: skip
    # generation off, and the last evaluation (at the last step) is reused as the final one
    beta = run(
        "beta",
        "--lora_r", 4, "--lora_target_modules", "c_attn", "mlp.c_proj",
        "--eval_strategy", "steps", "--eval_steps", 2,
        "--eval_generation_samples", 0,
        "--report_to", "tensorboard",
    )  # fmt: skip
    return SimpleNamespace(alpha=alpha, beta=beta, alpha_dir=str(root / "alpha"), beta_dir=str(root / "beta"))


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory):
    """A finished 2-step LoRA run on the tiny random GPT-2 (its random base saved beside the adapter)."""
    from squad_lora.commands import train as run_qa_lora

    output_dir = tmp_path_factory.mktemp("faults") / "run"
    run_qa_lora.main(
        [
            os.path.join(REPO_ROOT, "configs", "smoke.yaml"),
            "--output_dir",
            str(output_dir),
            "--max_steps",
            "2",
            "--eval_strategy",
            "no",
            "--report_to",
            "none",
            "--model_name_or_path",
            TINY_GPT2_DIR,
            "--train_file",
            TRAIN_FILE,
            "--validation_file",
            DEV_FILE,
        ]
    )
    return str(output_dir)


@pytest.fixture(scope="session")
def local_base_run(tiny_model_dir, tmp_path_factory):
    """A finished run on a local base directory that has no Hub id."""
    output_dir = tmp_path_factory.mktemp("sharing") / "run"
    summary = train_for_sharing(tiny_model_dir, output_dir, "--license", "mit")
    return str(output_dir), summary


@pytest.fixture(scope="session")
def chat_run(chat_model_dir, tmp_path_factory):
    """A finished 2-step run with --prompt_format chat on chat_model_dir: (run dir, run summary)."""
    from squad_lora.commands import train as run_qa_lora

    output_dir = tmp_path_factory.mktemp("chat") / "run"
    summary = run_qa_lora.main(
        ["--model_name_or_path", chat_model_dir, "--train_file", TRAIN_FILE, "--validation_file", DEV_FILE,
         "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "4",
         "--eval_strategy", "steps", "--eval_steps", "2", "--max_eval_samples", "6", "--save_strategy", "no",
         "--report_to", "none", "--learning_rate", "1e-3", "--prompt_format", "chat"]
    )  # fmt: skip
    return str(output_dir), summary
