"""What tests build their inputs from: run_qa_lora.py's arguments parsed by its own parser or written out for a tiny
run (parse_training_args, tiny_run_args, training_args), tiny random models and tokenizers (the GPT-2 of
configs/tiny-gpt2, a grouped-query Llama, a ChatML tokenizer), SQuAD examples and training features, answer and
training plans, JSON Lines input files, the quantization flags, the parameter counts of the tiny models' LoRA
adapters worked out by hand, and a short run whose output other tests share (train_for_sharing). Hugging Face
libraries are imported inside the functions, so that importing this module imports none of them; the models are
random and tiny (2 layers, n_embd 64), so a training run takes well under a second, and what they answer is noise
unless a test teaches them.
"""

import dataclasses
import json
from types import SimpleNamespace

from repo_paths import DEV_FILE, TINY_GPT2_DIR, TRAIN_FILE

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
    from squad_lora.cli import parse_args
    from squad_lora.commands import train as run_qa_lora

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
# Examples, training features and input files
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
    from squad_lora.features import build_train_features

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
    from squad_lora.data import load_squad_file
    from squad_lora.features import build_train_features

    rows = load_squad_file(DEV_FILE)[0][:num_examples]
    batch = {key: [row[key] for row in rows] for key in ("context", "question", "answers")}
    mapped = build_train_features(batch, tokenizer, max_seq_length=512)
    return [{"input_ids": ids, "labels": labels} for ids, labels in zip(mapped["input_ids"], mapped["labels"])]


def padded_batch(tokenizer, num_examples: int = 4, start: int = 0) -> dict:
    """The training features of validation questions start.. start + num_examples, padded to the longest."""
    from transformers import DataCollatorForSeq2Seq

    features = sample_features(tokenizer, start + num_examples)[start:]
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(features)


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


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


def generate_with(
    model, tokenizer, prompts, config, batch_size, contexts=None, no_answer_threshold=None, shared=None, share_lone=True
):
    """decoding.generate_answers on token-id prompts with one GenerationConfig, in batches of batch_size; contexts:
    --constrain_to_context to them; shared: shared prefix lengths (shared-context batches, a context's lone
    question too, share_lone: False answers it unshared as --share_context auto does). Returns (answers,
    confidences, no-answer probabilities)."""
    from squad_lora.decoding import generate_answers
    from squad_lora.prompt import EncodedQuestions, answer_span_ids

    plan = dataclasses.replace(
        answer_plan(tokenizer, model),
        batch_size=batch_size,
        unshared_batch_size=batch_size,
        share_lone_questions=share_lone,
        no_answer_threshold=no_answer_threshold,
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
    from squad_lora.commands import train as run_qa_lora

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
