"""Shared fixtures and helpers: repository paths, tiny models and runs, run arguments, the fake Hub, trainer spies.

Every test runs offline: the Hub flags are set before any Hugging Face library is imported, and
HF_HOME points at an empty folder so a developer's download cache cannot answer for the Hub.

The models are random and tiny (configs/tiny-gpt2: 2 layers, n_embd 64, its own small tokenizer), so
a training run takes well under a second; what they answer is noise unless a test teaches them.
"""

import atexit
import glob
import json
import os
import shutil
import socket
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

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SAMPLE_DIR = os.path.join(REPO_ROOT, "data", "sample")
TINY_GPT2_DIR = os.path.join(REPO_ROOT, "configs", "tiny-gpt2")
TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")  # 220 questions
DEV_FILE = os.path.join(SAMPLE_DIR, "dev-v1.1.json")  # 44 questions
DEV_V2_FILE = os.path.join(SAMPLE_DIR, "dev-v2.0.json")  # 60 questions, 16 of them unanswerable
SMOKE_CONFIG = os.path.join(REPO_ROOT, "configs", "smoke.yaml")

# configs/tiny-gpt2: 2 layers, n_embd 64. LoRA r on c_attn (64 -> 3 * 64) adds r * (64 + 192) per layer,
# on mlp.c_proj (4 * 64 -> 64) r * (256 + 64).
TINY_NUM_PARAMS = 184_896
ATTN, MLP_PROJ = 64 + 3 * 64, 4 * 64 + 64


def lora_params(r: int, *module_sizes: int) -> int:
    """Parameters LoRA rank r adds to the tiny GPT-2's two layers, for modules of these in + out sizes."""
    return 2 * r * sum(module_sizes)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs a training script end to end (seconds, not milliseconds)")


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------

# run_qa_lora's argument dataclasses by class name, as parse_training_args names them
TRAINING_ROLES = {
    "TrainModelArguments": "model",
    "DataArguments": "data",
    "LoraArguments": "lora",
    "PromptArguments": "prompt",
    "DecodingArguments": "decoding",
    "HubArguments": "hub",
    "QATrainingArguments": "training",
}


def parse_training_args(argv) -> SimpleNamespace:
    """run_qa_lora.py's arguments parsed from argv by its own parser: .model, .data, .lora, .decoding,
    .training (and any other dataclass by role), .all (every instance, in order) and .config_file."""
    import run_qa_lora
    from squad_lora.cli import parse_args

    parsed, config_file, _ = parse_args(run_qa_lora.ARGUMENT_TYPES, [str(word) for word in argv])
    roles = {TRAINING_ROLES.get(type(obj).__name__, type(obj).__name__): obj for obj in parsed}
    return SimpleNamespace(**roles, all=tuple(parsed), config_file=config_file)


def tiny_run_args(model_dir, output_dir, *extra) -> list[str]:
    """A 2-step run of a saved tiny model on the sample data, no evaluation, checkpoints or loggers.

    Flags in `extra` come last, so they override these (argparse keeps a flag's last value).
    """
    return [
        "--model_name_or_path", str(model_dir),
        "--train_file", TRAIN_FILE,
        "--validation_file", DEV_FILE,
        "--output_dir", str(output_dir),
        "--max_steps", "2",
        "--per_device_train_batch_size", "4",
        "--logging_steps", "1",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--report_to", "none",
        "--disable_tqdm", "true",
        *[str(word) for word in extra],
    ]  # fmt: skip


def logged_losses(summary: dict) -> list[float]:
    """The training losses a run logged, in order."""
    return [entry["loss"] for entry in summary["log_history"] if "loss" in entry]


def eval_entries(summary: dict) -> list[dict]:
    """The log_history entries of a run's evaluations, in order."""
    return [entry for entry in summary["log_history"] if "eval_loss" in entry]


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def assert_same_answers(*row_lists) -> None:
    """Prediction rows (answer_questions') equal, their confidences equal up to float noise: batches of other
    shapes or other processes round the last digits differently."""
    first, *others = row_lists
    for other in others:
        assert [{**row, "confidence": None} for row in other] == [{**row, "confidence": None} for row in first]
        assert [row["confidence"] for row in other] == pytest.approx([row["confidence"] for row in first], abs=1e-5)


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def read_events(directory) -> tuple[dict, dict]:
    """({tag: [(step, value), ...]}, {hparams tag: HParamsPluginData}) from every TensorBoard event file
    under directory, in file-name order (the files of one run sort by creation time)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    scalars, hparams = {}, {}
    for path in sorted(glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"), recursive=True)):
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
        try:
            contents = accumulator.PluginTagToContent("hparams")
        except KeyError:  # no hparams summary in this file
            contents = {}
        for tag, content in contents.items():
            hparams[tag] = plugin_data_pb2.HParamsPluginData.FromString(content)
    return scalars, hparams


def event_dirs(directory) -> set[str]:
    """The directories holding TensorBoard event files under directory: one per TensorBoard run."""
    pattern = os.path.join(directory, "**", "events.out.tfevents.*")
    return {os.path.dirname(path) for path in glob.glob(pattern, recursive=True)}


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict:
    """The environment of a script run as a subprocess: offline, on the CPU, one thread per process."""
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": REPO_ROOT,
    }  # fmt: skip


# ---------------------------------------------------------------------------
# Spies and fakes
# ---------------------------------------------------------------------------


def install_trainer_spy(monkeypatch) -> SimpleNamespace:
    """Record every Trainer that trains, and the global step at each training step (whatever subclass runs)."""
    import transformers

    spy = SimpleNamespace(trainers=[], steps=[])
    train, training_step = transformers.Trainer.train, transformers.Trainer.training_step

    def recording_train(self, *args, **kwargs):
        spy.trainers.append(self)
        return train(self, *args, **kwargs)

    def counting_training_step(self, *args, **kwargs):
        spy.steps.append(self.state.global_step)
        return training_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", recording_train)
    monkeypatch.setattr(transformers.Trainer, "training_step", counting_training_step)
    return spy


@pytest.fixture
def trainer_spy(monkeypatch):
    return install_trainer_spy(monkeypatch)


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls and what an upload would send."""

    endpoint = "https://huggingface.co"
    calls: list = []

    def __init__(self, *args, **kwargs):
        assert "token" not in kwargs  # the token is huggingface_hub's business, never ours

    def whoami(self):
        self.calls.append(("whoami", None, {}))
        return {"name": "someone"}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        all_files = sorted(
            os.path.relpath(os.path.join(root, name), folder_path)
            for root, _, names in os.walk(folder_path)
            for name in names
        )
        uploaded = list(filter_repo_objects(all_files, ignore_patterns=ignore_patterns))  # as upload_folder filters
        self.calls.append(
            ("upload_folder", repo_id, {"folder_path": folder_path, "all": all_files, "uploaded": uploaded, **kwargs})
        )


@pytest.fixture
def fake_hub(monkeypatch):
    from squad_lora import hub

    FakeHfApi.calls = []
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    return FakeHfApi


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


# ChatML, as SmolLM2-Instruct and Qwen write it, with a default system turn; its turns end with <|im_end|>, which
# is not the tokenizer's EOS (as in Llama 3's and Gemma's templates): the case where the end token must be found.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nAnswer from the "
    "context.<|im_end|>\n{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_chat_tokenizer():
    """The tiny tokenizer with ChatML's two special tokens and CHAT_TEMPLATE (815 tokens)."""
    from squad_lora.modeling import load_tokenizer

    tokenizer = load_tokenizer(TINY_GPT2_DIR)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def chat_tokenizer():
    return make_chat_tokenizer()


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory, chat_tokenizer):
    """A random tiny GPT-2 (prompt-dependent answers, see save_random_gpt2) with the chat tokenizer."""
    path = tmp_path_factory.mktemp("tiny-chat-gpt2")
    return save_random_gpt2(path, chat_tokenizer, vocab_size=len(chat_tokenizer))


def tiny_llama_config(tokenizer):
    """A 2-layer Llama on the tiny tokenizer: 4 query heads of 16 dims sharing 2 key/value heads
    (grouped-query attention, as in the larger Llamas)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


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


def save_random_gpt2(path, tokenizer, seed: int = 0, **config) -> str:
    """Save a random GPT-2 of configs/tiny-gpt2's shape (overridden by `config`) and the tokenizer.

    initializer_range is 0.2, not 0.02, so that greedy answers differ from prompt to prompt: at 0.02
    every prompt gets the same answer, and a batching bug could not show.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR, initializer_range=0.2, **config))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


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
def trained_dirs(tmp_path_factory):
    """Two real run_qa_lora.py outputs (2 steps each): a --from_scratch LoRA run, moved after training
    so the absolute base path in its adapter_config.json is stale, and a full fine-tune (--lora_r 0)."""
    import run_qa_lora

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


def sample_features(tokenizer, num_examples: int = 4) -> list[dict]:
    """Training features of the first validation questions: different lengths, so a padded batch has padding."""
    from squad_lora.data import build_train_features, load_squad_file

    rows = load_squad_file(DEV_FILE)[0][:num_examples]
    batch = {key: [row[key] for row in rows] for key in ("context", "question", "answers")}
    mapped = build_train_features(batch, tokenizer, max_seq_length=512)
    return [{"input_ids": ids, "labels": labels} for ids, labels in zip(mapped["input_ids"], mapped["labels"])]


# ---------------------------------------------------------------------------
# Two finished runs, shared by the trainer, run_qa_lora and report tests
# ---------------------------------------------------------------------------

ALPHA_LORA = lora_params(8, ATTN)  # 4,096
BETA_LORA = lora_params(4, ATTN, MLP_PROJ)  # 4,608


@pytest.fixture(scope="session")
def two_runs(tiny_model_dir, tmp_path_factory):
    """`alpha`: r=8 on c_attn, EM/F1 at every evaluation, best model by F1, TensorBoard; `beta`: r=4 on
    c_attn + mlp.c_proj, generation off, TensorBoard. Both evaluate 8 validation questions."""
    import run_qa_lora

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


# ---------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------


def _flag_groups(flags: dict, classes) -> list:
    """Instances of the argument dataclasses with the flags each declares (the others at their defaults)."""
    import dataclasses

    names = {cls: {f.name for f in dataclasses.fields(cls)} for cls in classes}
    unknown = set(flags) - set().union(*names.values())
    assert not unknown, f"no such flag: {unknown}"
    return [cls(**{k: v for k, v in flags.items() if k in names[cls]}) for cls in classes]


def answer_plan(tokenizer, model_or_config, **flags):
    """plan.resolve_answer_plan for a unit test, from generate.py flags given by name (defaults otherwise)."""
    from squad_lora.args import DecodingArguments, PromptArguments
    from squad_lora.plan import resolve_answer_plan

    config = getattr(model_or_config, "config", model_or_config)
    attention = flags.pop("attn_implementation", None)
    prompt, decoding_args = _flag_groups(flags, (PromptArguments, DecodingArguments))
    return resolve_answer_plan(decoding_args, prompt, tokenizer, config, attention)


def train_plan(tokenizer, model_or_config, training_args, **flags):
    """plan.resolve_train_plan for a unit test, from run_qa_lora.py flags given by name (defaults otherwise)."""
    from squad_lora.args import DataArguments, DecodingArguments, LoraArguments, PromptArguments, TrainModelArguments
    from squad_lora.plan import resolve_train_plan

    config = getattr(model_or_config, "config", model_or_config)
    flags.setdefault("model_name_or_path", TINY_GPT2_DIR)
    model, data, lora, prompt, decoding_args = _flag_groups(
        flags, (TrainModelArguments, DataArguments, LoraArguments, PromptArguments, DecodingArguments)
    )
    return resolve_train_plan(data, prompt, decoding_args, training_args, tokenizer, config, model, lora)


def generate_with(model, tokenizer, prompts, config, batch_size, contexts=None, no_answer_threshold=None, shared=None):
    """decoding.generate_answers on token-id prompts with one GenerationConfig, in batches of batch_size; contexts:
    --constrain_to_context to them; shared: shared prefix lengths (shared-context batches)."""
    import dataclasses

    from squad_lora.decoding import EncodedQuestions, answer_span_ids, generate_answers

    plan = dataclasses.replace(
        answer_plan(tokenizer, model), batch_size=batch_size, no_answer_threshold=no_answer_threshold
    )
    spans = None if contexts is None else [answer_span_ids(tokenizer, context) for context in contexts]
    return generate_answers(model, tokenizer, EncodedQuestions(prompts, shared, spans), config, plan)
