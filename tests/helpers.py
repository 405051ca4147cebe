"""What the tests share besides fixtures: repository paths, tiny models and runs, run arguments, plans, the fake Hub,
trainer spies, and the examples and features several test files build.

conftest.py imports this module after it has set up the offline environment, and holds the fixtures; test files
import from here (`from helpers import ...`: tests/ is on sys.path as the folder of the rootdir's conftest.py).
Hugging Face libraries are imported inside the functions, so that importing this module imports none of them.

The models are random and tiny (configs/tiny-gpt2: 2 layers, n_embd 64, its own small tokenizer), so
a training run takes well under a second; what they answer is noise unless a test teaches them.
"""

import collections
import dataclasses
import functools
import glob
import inspect
import json
import os
import re
import shutil
import socket
import string
from types import SimpleNamespace

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SAMPLE_DIR = os.path.join(REPO_ROOT, "data", "sample")
TINY_GPT2_DIR = os.path.join(REPO_ROOT, "configs", "tiny-gpt2")
TRAIN_FILE = os.path.join(SAMPLE_DIR, "train-v1.1.json")  # 220 questions, contexts of 6 and 5 in turn
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


# the two finished runs of conftest's two_runs fixture
ALPHA_LORA = lora_params(8, ATTN)  # 4,096
BETA_LORA = lora_params(4, ATTN, MLP_PROJ)  # 4,608


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


def training_args(output_dir, **kwargs):
    """The script's TrainingArguments (QATrainingArguments) for a unit test: no evaluation, checkpoints or loggers."""
    from squad_lora.training_args import QATrainingArguments

    defaults = dict(report_to="none", eval_strategy="no", save_strategy="no", disable_tqdm=True)
    return QATrainingArguments(output_dir=str(output_dir), **{**defaults, **kwargs})


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
    """Prediction rows (answer_questions') equal, their confidences and no-answer probabilities equal up to float
    noise: batches of other shapes or other processes round the last digits differently."""
    first, *others = row_lists
    scores = ("confidence", "no_answer_probability")
    for other in others:
        assert [{**row, **dict.fromkeys(scores)} for row in other] == [
            {**row, **dict.fromkeys(scores)} for row in first
        ]
        for key in scores:
            assert [row[key] for row in other] == pytest.approx([row[key] for row in first], abs=1e-5)


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def copy_run(run_dir: str, destination) -> str:
    """A copy of a finished run, for a test that changes or damages it."""
    shutil.copytree(run_dir, destination)
    return str(destination)


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


def session_hparams(hparams) -> dict:
    """{name: value} that TensorBoard's HParams dashboard shows for the run, from read_events' hparams."""
    values = hparams["_hparams_/session_start_info"].session_start_info.hparams
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in values.items()}


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


def hide_gpus(monkeypatch) -> None:
    """This process sees no GPU, as on a CPU-only machine: torch.cuda.is_available and torch.accelerator.is_available
    (what squad_lora, the scripts and benchmarks/ ask) both say False, so that a test of CPU-only behaviour asserts
    it on a machine with a GPU too. Scripts run as subprocesses: subprocess_env."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)


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


def check_hf_api_call(name: str, args=(), kwargs=None) -> None:
    """Bind a call of HfApi.<name> (`__init__`: the constructor) to huggingface_hub's own signature: an argument it
    does not take (renamed there, misspelled here) or a missing required one raises TypeError, as the real call
    would."""
    from huggingface_hub import HfApi

    inspect.signature(getattr(HfApi, name)).bind(None, *args, **(kwargs or {}))


class SignatureCheckedHfApi:
    """Base of the HfApi fakes: every call of a method HfApi has (one a subclass defines or a test patches in, and
    the constructor) is checked by check_hf_api_call before the fake answers, so fakes may take **kwargs freely."""

    def __init__(self, *args, **kwargs):
        check_hf_api_call("__init__", args, kwargs)

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        from huggingface_hub import HfApi

        if name.startswith("_") or not inspect.isfunction(getattr(HfApi, name, None)):
            return value

        @functools.wraps(value)
        def checked(*args, **kwargs):
            check_hf_api_call(name, args, kwargs)
            return value(*args, **kwargs)

        return checked


class FakeHfApi(SignatureCheckedHfApi):
    """Stands in for huggingface_hub.HfApi: records the calls and what an upload would send."""

    endpoint = "https://huggingface.co"
    calls: list = []

    def __init__(self, *args, **kwargs):
        assert "token" not in kwargs  # the token is huggingface_hub's business, never ours
        super().__init__(*args, **kwargs)

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


class RecordingHfApi(SignatureCheckedHfApi):
    """HfApi's calls that squad_lora.hub makes, recorded; `refuse` names the call that fails."""

    endpoint = "https://hub.example"
    calls: list = []
    refuse = None

    def _call(self, name, *args, **kwargs):
        type(self).calls.append((name, args, kwargs))
        if name == type(self).refuse:
            raise ConnectionError(f"{name}: connection refused")

    def whoami(self):
        self._call("whoami")
        return {"name": "tester"}

    def create_repo(self, repo_id, **kwargs):
        self._call("create_repo", repo_id, **kwargs)
        return f"{self.endpoint}/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self._call("create_branch", repo_id, **kwargs)

    def upload_folder(self, **kwargs):
        self._call("upload_folder", **kwargs)


# ---------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------

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


def tiny_llama_config(tokenizer):
    """A 2-layer Llama on the tiny tokenizer: 4 query heads of 16 dims sharing 2 key/value heads
    (grouped-query attention, as in the larger Llamas)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


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


# Random tiny causal LMs by architecture name, for tests that run each option on both: configs/tiny-gpt2 (Conv1D
# layers) and the tiny Llama of tiny_llama_config (nn.Linear layers, grouped-query attention).


def tiny_model(architecture: str, tokenizer, seed: int = 0):
    """A random tiny gpt2 or llama, in eval mode (no dropout)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

    torch.manual_seed(seed)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config.from_pretrained(TINY_GPT2_DIR))
    else:
        model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    return model.eval()


def save_tiny_model(architecture: str, tokenizer, directory) -> str:
    model = tiny_model(architecture, tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


# ---------------------------------------------------------------------------
# Examples and training features
# ---------------------------------------------------------------------------

CONTEXT = "Lenmargan is a market town on the Ilvar river. It was founded in 1399 by Duke Elnth Elwi."
FILLER = "For centuries its wealth came from the wool trade. "
QUESTION = "Who was the harbour master?"


def example(context, answer, question=QUESTION, start=None, id_="q1"):
    """A flat Hub-layout row whose answer_start points at `answer` (or has no answer when None)."""
    if answer is None:
        return {
            "id": id_,
            "title": "t",
            "context": context,
            "question": question,
            "answers": {"text": [], "answer_start": []},
        }
    start = context.index(answer) if start is None else start
    return {
        "id": id_,
        "title": "t",
        "context": context,
        "question": question,
        "answers": {"text": [answer], "answer_start": [start]},
    }


def features(rows, tokenizer, max_seq_length):
    """build_train_features on rows, batched the way datasets.map calls it."""
    from squad_lora.data import build_train_features

    batch = {key: [row[key] for row in rows] for key in ("context", "question", "answers")}
    return build_train_features(batch, tokenizer, max_seq_length)


def split_feature(tokenizer, input_ids, labels):
    """(prompt text, labelled ids) of one feature, checking that every prompt token is masked."""
    num_prompt = next(i for i, label in enumerate(labels) if label != -100)
    assert all(label == -100 for label in labels[:num_prompt])
    assert labels[num_prompt:] == input_ids[num_prompt:]
    return tokenizer.decode(input_ids[:num_prompt]), labels[num_prompt:]


def sample_features(tokenizer, num_examples: int = 4) -> list[dict]:
    """Training features of the first validation questions: different lengths, so a padded batch has padding."""
    from squad_lora.data import build_train_features, load_squad_file

    rows = load_squad_file(DEV_FILE)[0][:num_examples]
    batch = {key: [row[key] for row in rows] for key in ("context", "question", "answers")}
    mapped = build_train_features(batch, tokenizer, max_seq_length=512)
    return [{"input_ids": ids, "labels": labels} for ids, labels in zip(mapped["input_ids"], mapped["labels"])]


def padded_batch(tokenizer, num_examples: int = 4, start: int = 0) -> dict:
    """The training features of validation questions start.. start + num_examples, padded to the longest."""
    from transformers import DataCollatorForSeq2Seq

    features = sample_features(tokenizer, start + num_examples)[start:]
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(features)


# ---------------------------------------------------------------------------
# What load_squad_file promises, stated on its own: the random-file tests hold the loader to it
# ---------------------------------------------------------------------------


def rows_of_official(doc: dict) -> list | None:
    """The official layout's data/paragraphs/qas flattened into Hub rows, as written (an unanswerable question's
    answers dropped); None where the structure is broken (the whole file is refused)."""
    if not isinstance(doc["data"], list):
        return None
    rows = []
    for article in doc["data"]:
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            return None
        for paragraph in article["paragraphs"]:
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                return None
            if not isinstance(paragraph.get("context"), str):
                return None
            for qa in paragraph["qas"]:
                answers = qa.get("answers") if isinstance(qa, dict) else None
                if not isinstance(answers, list) or not all(isinstance(answer, dict) for answer in answers):
                    return None
                answers = [] if qa.get("is_impossible") else answers
                rows.append(
                    {
                        "id": qa.get("id"),
                        "title": article.get("title", ""),
                        "context": paragraph["context"],
                        "question": qa.get("question"),
                        "answers": {
                            "text": [answer.get("text") for answer in answers],
                            "answer_start": [answer.get("answer_start") for answer in answers],
                        },
                    }
                )
    return rows


def rows_of_json_file(values: list) -> tuple[list | None, str | None]:
    """(rows, declared version) of a JSON file holding values[0] alone, or of JSON Lines, one value a line: an
    object with 'data' is the official layout, a list a list of rows, an object with 'context' one row; rows None
    where the file is refused whole (empty, of no known layout, or a broken official structure)."""
    if len(values) != 1:
        return (values or None), None  # JSON Lines (two values or more are not one JSON document)
    (doc,) = values
    if isinstance(doc, dict) and "data" in doc:
        return rows_of_official(doc), None if doc.get("version") is None else str(doc["version"])
    if isinstance(doc, list):
        return doc, None
    return ([doc] if isinstance(doc, dict) and "context" in doc else None), None


def _kept_answer(context: str, text, start, strict: bool):
    """("keep", start) for an answer a training row keeps (answer_start moved to its text when it misses by at most
    MAX_OFFSET_REPAIR characters, the nearest, earlier first), ("blank" | "bad", None) for one skipped and counted,
    ("refuse", None) for one that refuses the file (a wrong type; under strict, anything short of exact)."""
    from squad_lora.data import MAX_OFFSET_REPAIR

    if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
        return "refuse", None
    if not text.strip():
        return ("refuse" if strict else "blank"), None
    near = [s for s in range(max(0, start - MAX_OFFSET_REPAIR), start + MAX_OFFSET_REPAIR + 1)
            if context[s : s + len(text)] == text]  # fmt: skip
    if start in near:
        return "keep", start
    if strict:
        return "refuse", None
    return ("keep", min(near, key=lambda s: (abs(s - start), s))) if near else ("bad", None)


def expected_load(rows: list, strict: bool = False) -> SimpleNamespace:
    """What load_squad_file (check_answers, the default) must return for these rows: .examples (None where it must
    refuse), .refused_row (the index of the first row it must refuse, None where no row is at fault) and the
    counts of its LoadStats."""
    counts = dict(num_blank_answers=0, num_bad_answer_start=0, bad_answer_start_ids=[], num_repaired_answer_start=0,
                  num_numeric_ids=0)  # fmt: skip
    examples, seen = [], set()
    for i, row in enumerate(rows):
        refused = SimpleNamespace(examples=None, refused_row=i, counts=None)
        row_id = row.get("id") if isinstance(row, dict) else None
        if isinstance(row_id, (int, float)) and not isinstance(row_id, bool):
            counts["num_numeric_ids"] += 1
            row_id = str(row_id)
        elif not (isinstance(row_id, str) and row_id.strip()):
            return refused  # not an object, or no id: a non-empty string or a number
        if not isinstance(row.get("context"), str) or not isinstance(row.get("question"), str):
            return refused
        if not row["question"].strip() or row_id in seen:
            return refused
        seen.add(row_id)
        answers = row.get("answers")
        if not isinstance(answers, dict) or not all(isinstance(answers.get(k), list) for k in ("text", "answer_start")):
            return refused
        if len(answers["text"]) != len(answers["answer_start"]):
            return refused
        texts, starts = [], []
        for text, start in zip(answers["text"], answers["answer_start"]):
            outcome, kept_start = _kept_answer(row["context"], text, start, strict)
            if outcome == "refuse":
                return refused
            if outcome == "blank":
                counts["num_blank_answers"] += 1
            elif outcome == "bad":
                counts["num_bad_answer_start"] += 1
                counts["bad_answer_start_ids"].append(row_id)
            else:
                counts["num_repaired_answer_start"] += kept_start != start
                texts.append(text)
                starts.append(kept_start)
        if answers["text"] and not texts:
            continue  # every answer skipped: dropped, not trained as unanswerable
        title = row.get("title")
        examples.append({"id": row_id, "title": "" if title is None else str(title),
                         "context": row["context"], "question": row["question"],
                         "answers": {"text": texts, "answer_start": starts}})  # fmt: skip
    if not examples:
        return SimpleNamespace(examples=None, refused_row=None, counts=None)
    return SimpleNamespace(examples=examples, refused_row=None, counts={**counts, "num_examples": len(examples)})


def assert_loads_as_written(path, rows: list | None, strict: bool = False, version: str | None = None) -> str:
    """Load path, whose rows as written are `rows` (None: a file refused whole), and hold the result to
    expected_load: the same examples, field for field and offset for offset, and the same counts; or a refusal
    (SquadDataError) that names the file, and the row at fault where one is. Returns "loaded" or "refused"."""
    from squad_lora.data import load_squad_file
    from squad_lora.errors import SquadDataError

    expected = SimpleNamespace(examples=None, refused_row=None) if rows is None else expected_load(rows, strict)
    try:
        examples, stats = load_squad_file(str(path), strict=strict)
    except SquadDataError as e:
        message = str(e)
        assert expected.examples is None, f"refused ({message}), but should load as {expected.examples}"
        assert message.startswith(f"{path}: "), message
        if expected.refused_row is not None:
            assert re.search(rf"\bexample {expected.refused_row}\b", message), message
        elif rows is not None:
            assert message == f"{path}: no usable examples", message
        return "refused"
    assert expected.examples is not None, f"loaded {examples}, but should be refused"
    assert examples == expected.examples
    assert {key: getattr(stats, key) for key in expected.counts} == expected.counts
    inferred = "v2.0" if any(not example["answers"]["text"] for example in examples) else "v1.1"
    assert (stats.version, stats.version_inferred) == ((inferred, True) if version is None else (version, False))
    return "loaded"


# ---------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------


def _flag_groups(flags: dict, classes) -> list:
    """Instances of the argument dataclasses with the flags each declares (the others at their defaults)."""
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
    --constrain_to_context to them; shared: shared prefix lengths (shared-context batches). Returns (answers,
    confidences, no-answer probabilities)."""
    from squad_lora.decoding import EncodedQuestions, answer_span_ids, generate_answers

    plan = dataclasses.replace(
        answer_plan(tokenizer, model), batch_size=batch_size, no_answer_threshold=no_answer_threshold
    )
    spans = None if contexts is None else [answer_span_ids(tokenizer, context) for context in contexts]
    return generate_answers(model, tokenizer, EncodedQuestions(prompts, shared, spans), config, plan)


# ---------------------------------------------------------------------------
# Quantized bases: QLoRA (4-bit) and 8-bit through bitsandbytes on CPU
# ---------------------------------------------------------------------------

QUANTIZATION_FLAGS = {
    "4bit": ["--load_in_4bit", "--bnb_4bit_compute_dtype", "float32"],  # nf4 and double quant are the defaults
    "8bit": ["--load_in_8bit"],
}


def quantized_layer_class(kind):
    import bitsandbytes as bnb

    return {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}[kind]


# ---------------------------------------------------------------------------
# peft's LoRA options on the tiny GPT-2 and the tiny Llama: trainable parameters by hand
# ---------------------------------------------------------------------------

# configs/tiny-gpt2: 2 layers, n_embd 64, MLP 256, vocabulary 813. Per layer, LoRA r on a layer of in -> out
# features trains r * (in + out); DoRA adds one magnitude per output feature.
#   c_attn 64 -> 192, attn.c_proj 64 -> 64, mlp.c_fc 64 -> 256, mlp.c_proj 256 -> 64
# The tiny Llama: 2 layers, hidden 64, MLP 128, 4 query heads of 16 and 2 key/value heads (k, v: 64 -> 32).
#   q_proj, o_proj 64 -> 64; k_proj, v_proj 64 -> 32; gate_proj, up_proj 64 -> 128; down_proj 128 -> 64
LAYERS, LORA_R, VOCAB, HIDDEN = 2, 8, 813, 64  # LORA_R: the default --lora_r, which the option tests keep
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


def lora_option_params(architecture, targets=None) -> int:
    """Parameters LoRA of rank LORA_R trains on these target modules (the architecture's default ones)."""
    shapes = SHAPES[architecture]
    return LAYERS * sum(LORA_R * sum(shapes[t]) for t in targets or DEFAULT_TARGETS[architecture])


def dora_magnitudes(architecture, targets=None) -> int:
    return LAYERS * sum(SHAPES[architecture][t][1] for t in targets or DEFAULT_TARGETS[architecture])


# ---------------------------------------------------------------------------
# Runs to share: what a run leaves for others (conftest's local_base_run)
# ---------------------------------------------------------------------------


def train_for_sharing(model_dir: str, output_dir, *extra: str) -> dict:
    """A 3-step run with one evaluation (EM/F1 of 8 answers) at its end, no checkpoints or loggers."""
    import run_qa_lora

    return run_qa_lora.main(
        [
            "--model_name_or_path",
            model_dir,
            "--train_file",
            TRAIN_FILE,
            "--validation_file",
            DEV_FILE,
            "--output_dir",
            str(output_dir),
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "4",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "3",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--max_eval_samples",
            "8",
            "--eval_generation_samples",
            "8",
            "--learning_rate",
            "1e-3",
            *extra,
        ]
    )


# ---------------------------------------------------------------------------
# The official SQuAD v1.1 / v2.0 scripts' logic, written out plainly (the reference the metric must equal)
# ---------------------------------------------------------------------------


def official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_v1_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_v1_evaluate(examples, predictions):
    f1 = exact_match = total = 0
    for ex in examples:
        total += 1
        if ex["id"] not in predictions:
            continue
        ground_truths = ex["answers"]["text"]
        prediction = predictions[ex["id"]]
        exact_match += max(official_normalize(prediction) == official_normalize(gt) for gt in ground_truths)
        f1 += max(official_v1_f1(prediction, gt) for gt in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def official_v2_tokens(s):
    if not s:
        return []
    return official_normalize(s).split()


def official_v2_f1(a_gold, a_pred):
    gold_toks = official_v2_tokens(a_gold)
    pred_toks = official_v2_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def official_v2_evaluate(examples, predictions, na_probs=None, na_prob_thresh=1.0):
    """The v2.0 script (every prediction must be present), with its --na-prob-file and --na-prob-thresh."""
    has_ans = {ex["id"]: bool(ex["answers"]["text"]) for ex in examples}
    exact_scores, f1_scores = {}, {}
    for ex in examples:
        gold_answers = [a for a in ex["answers"]["text"] if official_normalize(a)] or [""]
        a_pred = predictions[ex["id"]]
        exact_scores[ex["id"]] = max(int(official_normalize(a) == official_normalize(a_pred)) for a in gold_answers)
        f1_scores[ex["id"]] = max(official_v2_f1(a, a_pred) for a in gold_answers)
    probabilities = na_probs if na_probs is not None else {k: 0.0 for k in predictions}

    def apply_no_ans_threshold(scores):
        return {qid: float(not has_ans[qid]) if probabilities[qid] > na_prob_thresh else s for qid, s in scores.items()}

    exact_thresh, f1_thresh = apply_no_ans_threshold(exact_scores), apply_no_ans_threshold(f1_scores)
    total = len(exact_thresh)
    out = {
        "exact": 100.0 * sum(exact_thresh.values()) / total,
        "f1": 100.0 * sum(f1_thresh.values()) / total,
        "total": total,
    }
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [k for k, v in has_ans.items() if v is wanted]
        if qids:
            out[f"{prefix}_exact"] = 100.0 * sum(exact_thresh[k] for k in qids) / len(qids)
            out[f"{prefix}_f1"] = 100.0 * sum(f1_thresh[k] for k in qids) / len(qids)
            out[f"{prefix}_total"] = len(qids)

    def find_best_thresh(scores):
        num_no_ans = sum(1 for k in has_ans if not has_ans[k])
        cur_score = num_no_ans
        best_score = cur_score
        best_thresh = 0.0
        qid_list = sorted(probabilities, key=lambda k: probabilities[k])
        for qid in qid_list:
            if qid not in scores:
                continue
            if has_ans[qid]:
                diff = scores[qid]
            else:
                diff = -1 if predictions[qid] else 0
            cur_score += diff
            if cur_score > best_score:
                best_score = cur_score
                best_thresh = probabilities[qid]
        return 100.0 * best_score / len(scores), best_thresh

    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = find_best_thresh(exact_scores)
        out["best_f1"], out["best_f1_thresh"] = find_best_thresh(f1_scores)
    return out
