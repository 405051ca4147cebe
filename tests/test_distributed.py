"""Several processes, on the CPU over gloo: run_qa_lora.py under `accelerate launch` (training and evaluation
sharded, one writer) and generate.py under torchrun (questions sharded, every answer written once); two "machines"
on one host (configs/accelerate/multi_node.yaml); FSDP with configs/accelerate/fsdp.yaml's settings through torch
(accelerate runs FSDP only on GPUs, so the scripts refuse it on CPUs, as they refuse the DeepSpeed configs, which also
need deepspeed); and the DeepSpeed configs' form. (The FSDP workarounds' unit tests are in test_sharded.py.)"""

import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from accelerate import PartialState

from builders import answer_plan, parse_training_args, tiny_run_args
from fakes import free_port, subprocess_env
from repo_paths import DEV_FILE, REPO_ROOT, SMOKE_CONFIG, TRAIN_FILE
from run_outputs import assert_same_answers, event_dirs
from squad_lora.args import ModelArguments
from squad_lora.commands import generate
from squad_lora.data import load_squad_file
from squad_lora.decoding import answer_questions
from squad_lora.errors import ConfigError
from squad_lora.features import build_train_features
from squad_lora.modeling import load_for_inference
from squad_lora.scoring import score_predictions

GLOO_ABORTS = ("terminate called", "Aborted", "ProcessGroupGloo", "Traceback")


def without_exit_barrier_noise(stderr: str) -> str:
    """A machine's stderr without torch elastic's exit-barrier log. On two "machines", the agent of rank 0 holds
    the rendezvous store and may leave once its worker is done, before the other agent has passed the barrier;
    that agent then logs a DistNetworkError traceback although both workers ended cleanly (exit status 0). Only
    the agent's own lines go, and only when it logged that barrier."""
    if "_exit_barrier" not in stderr:
        return stderr
    return "\n".join(line for line in stderr.splitlines() if "elastic/agent/server/api.py" not in line)


ACCELERATE_DIR = os.path.join(REPO_ROOT, "configs", "accelerate")


NUM_QUESTIONS = 8


# ---------------------------------------------------------------------------
# Training: `accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml`
# ---------------------------------------------------------------------------


# run_qa_lora.py run as __main__ (cli.run and all), recording per rank what a file count cannot show:
# the answers each rank got back from the evaluation's gather, and which rank wrote which output.
RANK_RECORDING_LAUNCHER = """
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
    launcher.write_text(RANK_RECORDING_LAUNCHER.format(repo=REPO_ROOT, record_dir=str(record_dir)), encoding="utf-8")
    # 220 examples in batches of 5: 44 batches, 22 per rank; with an odd count accelerate would repeat a batch
    # on one rank (even_batches) and the token count below would include it twice. Batches of single examples
    # (--share_context false): tests/test_shared_context.py trains two ranks on batches of whole contexts.
    num_questions, batch_size = 5, 5
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        os.path.join(REPO_ROOT, "configs", "accelerate", "cpu_multiprocess.yaml"),
        "--main_process_port",
        str(free_port()),
        str(launcher),
        "configs/smoke.yaml",
        "--output_dir",
        str(out),
        "--num_train_epochs",
        "1",
        "--per_device_train_batch_size",
        str(batch_size),
        "--logging_steps",
        "1",
        "--eval_generation_samples",
        str(num_questions),
        "--max_eval_samples",
        "8",
        "--disable_tqdm",
        "true",
        "--share_context",
        "false",
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
        tiny_tokenizer,
        max_seq_length=512,
    )
    assert summary["num_input_tokens_seen"] == sum(len(ids) for ids in features["input_ids"])

    # Outputs: one writer, one adapter, one TensorBoard run, one configuration line
    assert (proc.stdout + proc.stderr).count("configuration: ") == 1
    assert glob.glob(str(out / "**" / "adapter_model.safetensors"), recursive=True) == [
        str(out / "adapter_model.safetensors")
    ]
    assert len(event_dirs(out)) == 1
    records = {}
    for path in sorted(record_dir.glob("rank*.jsonl")):
        records[path.stem] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert set(records) == {"rank0", "rank1"}
    writes = {rank: sorted(e["path"] for e in events if e["event"] == "write") for rank, events in records.items()}
    assert {"run_config.yaml", "run_summary.json"} <= set(writes["rank0"]) and writes["rank1"] == []

    # Evaluation: one evaluation, each rank answered its share and got back every question exactly once
    ids = [row["id"] for row in load_squad_file(DEV_FILE)[0][:num_questions]]
    for events in records.values():
        (answers,) = [e for e in events if e["event"] == "answers"]
        assert answers["asked"] == ids
        assert [row["id"] for row in answers["rows"]] == ids
    assert records["rank0"][0]["rows"] == records["rank1"][0]["rows"]

    # ... and they are the answers (and scores) one process gets from the saved adapter
    single = generate.main(
        ["--adapter", str(out), "--validation_file", DEV_FILE, "--max_eval_samples", str(num_questions),
         "--output_dir", str(tmp_path / "single")]
    )  # fmt: skip
    # the same answers; the probabilities to float precision (the ranks' shards batch the questions otherwise)
    assert [{**row, "confidence": pytest.approx(row["confidence"], rel=1e-5),
             "no_answer_probability": pytest.approx(row["no_answer_probability"], rel=1e-5)}
            for row in single["greedy"]] == records["rank0"][0]["rows"]  # fmt: skip
    examples = load_squad_file(DEV_FILE)[0][:num_questions]
    scores = score_predictions(examples, {row["id"]: row["prediction"] for row in single["greedy"]})
    assert summary["eval_metrics"]["eval_exact_match"] == pytest.approx(scores["exact_match"])
    assert summary["eval_metrics"]["eval_f1"] == pytest.approx(scores["f1"])


# ---------------------------------------------------------------------------
# Generation: torchrun
# ---------------------------------------------------------------------------


# generate.py run as __main__ (cli.run and all), recording the questions each rank was given: the ranks
# other than the main one log only warnings, so their shard is not in the output
SHARD_RECORDING_LAUNCHER = """
import json, os, runpy, sys
sys.path.insert(0, {repo!r})
from squad_lora import decoding

encode_questions = decoding.encode_questions
def recording_encode_questions(examples, *args, **kwargs):
    with open(os.path.join({record_dir!r}, "rank" + os.environ["RANK"] + ".json"), "w", encoding="utf-8") as f:
        json.dump([ex["id"] for ex in examples], f)
    return encode_questions(examples, *args, **kwargs)
decoding.encode_questions = recording_encode_questions

sys.argv[0] = os.path.join({repo!r}, "generate.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_two_processes_write_every_id_once(adapter_dir, tmp_path):
    """torchrun starts two ranks; with no GPU visible, cli.run puts them on CPU over gloo.

    (`accelerate launch --cpu --num_processes 2` starts one process on this machine, and --cpu cannot
    be combined with --multi_gpu; configs/accelerate/cpu_multiprocess.yaml launches the same two ranks.)
    """
    out, record_dir = tmp_path / "out", tmp_path / "record"
    record_dir.mkdir()
    launcher = tmp_path / "launch_generate.py"
    launcher.write_text(SHARD_RECORDING_LAUNCHER.format(repo=REPO_ROOT, record_dir=str(record_dir)), encoding="utf-8")
    argv = [
        "--adapter", adapter_dir, "--validation_file", DEV_FILE, "--max_eval_samples", "7", "--output_dir", str(out),
        "--strategies", "greedy,top_k", "--num_samples", "2", "--max_new_tokens", "4", "--generation_batch_size", "2",
    ]  # fmt: skip
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(launcher), *argv,
    ]  # fmt: skip
    proc = subprocess.run(
        command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = [row["id"] for row in load_squad_file(DEV_FILE)[0][:7]]
    shards = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in record_dir.glob("rank*.json")}
    # sharded, not every rank doing all: two non-empty, disjoint runs of the questions, in order
    assert set(shards) == {"rank0", "rank1"} and shards["rank0"] and shards["rank1"]
    assert shards["rank0"] + shards["rank1"] == ids
    assert f"process 0 of 2 answers {len(shards['rank0'])} of 7 questions" in proc.stderr

    for strategy, num_samples in (("greedy", 1), ("top_k", 2)):
        with open(out / f"predictions_{strategy}.json", encoding="utf-8") as f:
            assert list(json.load(f)) == ids
        with open(out / f"predictions_{strategy}.jsonl", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        assert [(row["id"], row["sample"]) for row in rows] == [(i, k) for i in ids for k in range(num_samples)]
    # greedy does not depend on the sharding: one process gives the same answers
    single = generate.main(
        ["--adapter", adapter_dir, "--validation_file", DEV_FILE, "--max_eval_samples", "7",
         "--max_new_tokens", "4", "--output_dir", str(tmp_path / "single")]
    )  # fmt: skip
    with open(out / "predictions_greedy.json", encoding="utf-8") as f:
        assert json.load(f) == {row["id"]: row["prediction"] for row in single["greedy"]}


# ---------------------------------------------------------------------------
# Two machines: `accelerate launch --config_file configs/accelerate/multi_node.yaml` on one host
# ---------------------------------------------------------------------------


def launch_machines(script: str, *args, port: int) -> list[subprocess.CompletedProcess]:
    """`accelerate launch` with the multi-node config on two "machines" (ranks 0 and 1, one process each) at
    127.0.0.1, both started here; their results once both have finished."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ACCELERATE_DIR, "multi_node.yaml"),
        "--num_machines", "2", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(port), "--mixed_precision", "no",
    ]  # fmt: skip
    machines = [
        subprocess.Popen(
            [*command, "--machine_rank", str(rank), script, *map(str, args)],
            cwd=REPO_ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    results = []
    for machine in machines:
        stdout, stderr = machine.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(machine.args, machine.returncode, stdout, stderr))
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"machine {rank}:\n{result.stderr[-3000:]}"
        for message in GLOO_ABORTS:
            assert message not in without_exit_barrier_noise(result.stderr), f"machine {rank}: {message}"
    return results


# run_qa_lora.py as __main__, recording per rank: its LoRA weights once trained (bytes, to compare exactly), the
# questions it answered itself and the answers it got back at evaluation, and the files it wrote
MACHINE_RECORDING_LAUNCHER = """
import hashlib, json, os, runpy, sys
sys.path.insert(0, {repo!r})
from squad_lora import decoding, outputs, trainer

record = os.path.join({record_dir!r}, "rank" + os.environ["RANK"] + ".jsonl")

def log(**event):
    with open(record, "a", encoding="utf-8") as f:
        f.write(json.dumps(event) + "\\n")

train = trainer.QATrainer.train
def recording_train(self, *args, **kwargs):
    result = train(self, *args, **kwargs)
    lora = [p.detach().numpy().tobytes() for n, p in sorted(self.model.named_parameters()) if "lora_" in n]
    log(event="trained", world_size=self.args.world_size, lora=hashlib.sha256(b"".join(lora)).hexdigest())
    return result
trainer.QATrainer.train = recording_train

generate_answers, answer_questions = decoding.generate_answers, decoding.answer_questions
def recording_generate_answers(model, tokenizer, questions, *args, **kwargs):
    log(event="generated", prompts=len(questions.prompts))
    return generate_answers(model, tokenizer, questions, *args, **kwargs)
def recording_answer_questions(model, tokenizer, examples, *args, **kwargs):
    results = answer_questions(model, tokenizer, examples, *args, **kwargs)
    log(event="answers", asked=[ex["id"] for ex in examples], rows=results["greedy"])
    return results
decoding.generate_answers, decoding.answer_questions = recording_generate_answers, recording_answer_questions

for name in ("write_json", "write_yaml"):
    def recording_write(path, obj, _write=getattr(outputs, name)):
        log(event="write", path=os.path.basename(path))
        return _write(path, obj)
    setattr(outputs, name, recording_write)

sys.argv[0] = os.path.join({repo!r}, "run_qa_lora.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def read_records(record_dir) -> dict:
    return {
        path.stem: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for path in sorted(record_dir.glob("rank*.jsonl"))
    }


@pytest.mark.slow
def test_two_machines_train_evaluate_and_generate(tmp_path, base_dir):
    out, record_dir, launcher = tmp_path / "run", tmp_path / "record", tmp_path / "launch_run_qa_lora.py"
    record_dir.mkdir()
    launcher.write_text(MACHINE_RECORDING_LAUNCHER.format(repo=REPO_ROOT, record_dir=str(record_dir)), encoding="utf-8")
    launch_machines(
        launcher, *tiny_run_args(
            base_dir, out, "--max_train_samples", "32", "--max_steps", "3", "--eval_strategy", "steps",
            "--eval_steps", "3", "--max_eval_samples", NUM_QUESTIONS, "--eval_generation_samples", NUM_QUESTIONS,
        ),
        port=free_port(),
    )  # fmt: skip
    records = read_records(record_dir)
    assert set(records) == {"rank0", "rank1"}
    ids = [row["id"] for row in load_squad_file(DEV_FILE)[0][:NUM_QUESTIONS]]

    # Training: one model across the machines, its gradients averaged between them
    trained = {rank: [e for e in events if e["event"] == "trained"] for rank, events in records.items()}
    assert [e["world_size"] for e in trained["rank0"] + trained["rank1"]] == [2, 2]
    assert trained["rank0"][0]["lora"] == trained["rank1"][0]["lora"]

    # Evaluation: each machine answered its own share, and both got back every question once, in order
    generated = {
        rank: sum(e["prompts"] for e in events if e["event"] == "generated") for rank, events in records.items()
    }
    assert generated["rank0"] > 0 and generated["rank1"] > 0 and sum(generated.values()) == NUM_QUESTIONS
    answers = {rank: next(e for e in events if e["event"] == "answers") for rank, events in records.items()}
    for event in answers.values():
        assert event["asked"] == ids and [row["id"] for row in event["rows"]] == ids
    assert answers["rank0"]["rows"] == answers["rank1"]["rows"]

    # Outputs: written once, on the main machine
    writes = {rank: sorted(e["path"] for e in events if e["event"] == "write") for rank, events in records.items()}
    assert "run_summary.json" in writes["rank0"] and writes["rank1"] == []

    # Generation on two machines: every id answered once, the answers the trained adapter gives on one process
    preds = tmp_path / "preds"
    launch_machines(
        "generate.py", "--adapter", out, "--validation_file", DEV_FILE, "--max_eval_samples", NUM_QUESTIONS,
        "--output_dir", preds, "--disable_tqdm", "--log_level", "warning", port=free_port(),
    )  # fmt: skip
    rows = [json.loads(line) for line in (preds / "predictions_greedy.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in rows] == ids
    single = generate.main(
        ["--adapter", str(out), "--validation_file", DEV_FILE, "--max_eval_samples", str(NUM_QUESTIONS),
         "--output_dir", str(tmp_path / "single"), "--disable_tqdm"]
    )  # fmt: skip
    assert_same_answers(single["greedy"], rows, answers["rank0"]["rows"])


# ---------------------------------------------------------------------------
# FSDP: refused on CPUs by the scripts; its settings shown to work with our loss, saving and answering
# ---------------------------------------------------------------------------


def launch_environment(config: str) -> dict:
    """The environment `accelerate launch --config_file configs/accelerate/CONFIG --num_processes 2` gives the
    processes it starts, computed by accelerate's own launcher code (without starting them)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    argv = ["--config_file", os.path.join(ACCELERATE_DIR, config), "--num_processes", "2", "--main_process_port", "1"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args([*argv, "run_qa_lora.py"]))
    if not args.use_deepspeed:
        return prepare_multi_gpu_env(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    return prepare_deepspeed_cmd_env(args)[1]


@pytest.mark.parametrize(
    "config, engine",
    [("fsdp.yaml", "FSDP"), ("deepspeed_zero2.yaml", "DeepSpeed"), ("deepspeed_zero3.yaml", "DeepSpeed")],
)
def test_sharding_configs_are_refused_on_cpus_before_anything_loads(config, engine, monkeypatch):
    environment = launch_environment(config)
    for key, value in environment.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=f"{engine} needs GPUs: .* use configs/accelerate/cpu_multiprocess.yaml"):
        parse_training_args([SMOKE_CONFIG])
    if engine == "DeepSpeed":  # accelerate takes precision from the Trainer's flags via the JSON, nothing twice
        assert environment["ACCELERATE_CONFIG_DS_FIELDS"] == "deepspeed_config_file,zero3_init_flag"
        assert os.path.isfile(os.path.join(REPO_ROOT, environment["ACCELERATE_DEEPSPEED_CONFIG_FILE"]))


# Two processes under torchrun, torch's FSDP (version 1, as accelerate applies it) with fsdp.yaml's settings on
# a LoRA GPT-2: each trains on its own batch with the labelled-positions loss; a reference trains one unsharded
# copy on both batches; the full state dict is gathered and saved as the Trainer does, and both processes
# answer under answering_state, as QATrainer's evaluation does with sharded weights.
FSDP_SCRIPT = """
import copy, functools, json, os, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import torch, yaml
from squad_lora import cli

def main():
    from accelerate import PartialState
    from accelerate.utils.dataclasses import get_module_class_from_name
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel as FSDP, ShardingStrategy
    from torch.distributed.fsdp import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from squad_lora.args import DecodingArguments, LoraArguments, ModelArguments, PromptArguments
    from squad_lora.data import load_squad_file
    from squad_lora.plan import resolve_answer_plan
    from squad_lora.decoding import answer_questions
    from squad_lora.modeling import apply_lora, load_base_model, load_tokenizer
    from peft import get_peft_model_state_dict
    from squad_lora.loss import labelled_positions_loss
    from squad_lora.sharded import answering_state, rewrite_fsdp_adapter
    from builders import padded_batch

    with open({config!r}, encoding="utf-8") as f:
        fsdp = yaml.safe_load(f)["fsdp_config"]
    state = PartialState(cpu=True)
    tokenizer = load_tokenizer({base!r})
    torch.manual_seed(0)
    model = apply_lora(load_base_model(ModelArguments(model_name_or_path={base!r})), LoraArguments(lora_dropout=0.0))
    model.eval()  # no dropout, so that the reference computes the same function
    reference = copy.deepcopy(model)
    block = get_module_class_from_name(model, fsdp["fsdp_transformer_layer_cls_to_wrap"])
    wrapped = FSDP(
        model,
        auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={{block}}),
        sharding_strategy=ShardingStrategy[fsdp["fsdp_sharding_strategy"]],
        use_orig_params=fsdp["fsdp_use_orig_params"],
        device_id=torch.device("cpu"),
    )
    batches = [padded_batch(tokenizer, 4, 4 * rank) for rank in range(2)]
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=0.5)
    reference_optimizer = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        labelled_positions_loss(wrapped, batches[state.process_index]).backward()
        optimizer.step()
        reference_optimizer.zero_grad()  # FSDP averages the processes' gradients: the mean of their losses here
        (sum(labelled_positions_loss(reference, batch) for batch in batches) / 2).backward()
        reference_optimizer.step()
    with FSDP.state_dict_type(
        # offload_to_cpu=False: accelerate's True (for GPUs) crashes torch's gathering on CPU processes (SIGSEGV)
        wrapped, StateDictType[fsdp["fsdp_state_dict_type"]], FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    ):
        state_dict = wrapped.state_dict()  # every process joins, as in Trainer.save_model under FSDP
    examples = load_squad_file({data!r})[0][:{num_questions}]
    with answering_state(wrapped, sharded=True) as answering:
        results = answer_questions(model, tokenizer, examples, resolve_answer_plan(DecodingArguments(), PromptArguments(), tokenizer, model.config), answering, progress=False)
    record = {{
        "local_params": sum(p.numel() for p in wrapped.parameters()),
        "full_params": sum(p.numel() for p in reference.parameters()),
        "answers": results["greedy"],
    }}
    if state.is_main_process:
        expected = {{k: v for k, v in reference.state_dict().items() if "lora_" in k}}
        record["lora_keys_match"] = sorted(k for k in state_dict if "lora_" in k) == sorted(expected)
        record["lora_difference"] = max(float((state_dict[k] - v).abs().max()) for k, v in expected.items())
        record["peft_alone"] = len(get_peft_model_state_dict(model, state_dict=state_dict))
        model.save_pretrained({out!r}, state_dict=state_dict)  # QATrainer._save: the Trainer's call, then ours
        record["rewritten"] = rewrite_fsdp_adapter(model, {out!r}, state_dict)
    with open(os.path.join({record_dir!r}, f"rank{{state.process_index}}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f)

cli.run(main)
"""


@pytest.mark.slow
def test_fsdp_settings_train_save_and_answer_on_cpu_processes(tmp_path, base_dir):
    out, record_dir, script = tmp_path / "adapter", tmp_path / "record", tmp_path / "fsdp_run.py"
    record_dir.mkdir()
    script.write_text(
        FSDP_SCRIPT.format(
            repo=REPO_ROOT, tests=os.path.join(REPO_ROOT, "tests"), config=os.path.join(ACCELERATE_DIR, "fsdp.yaml"),
            base=base_dir, data=DEV_FILE, num_questions=NUM_QUESTIONS, out=str(out), record_dir=str(record_dir),
        ),
        encoding="utf-8",
    )  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(script)]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads((record_dir / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]

    # the weights were sharded, and training through the shards equals training the whole model on both batches
    assert all(record["local_params"] < 0.6 * record["full_params"] for record in records)
    assert records[0]["lora_keys_match"] and records[0]["lora_difference"] < 1e-5
    # peft 0.21 alone finds no adapter weights under FSDP's module names (when this fails, peft handles them and
    # squad_lora.sharded.rewrite_fsdp_adapter can go)
    assert records[0]["peft_alone"] == 0 and records[0]["rewritten"]

    # both processes answered every question alike, and the saved adapter answers the same on one process
    assert records[0]["answers"] == records[1]["answers"]
    ids = [row["id"] for row in load_squad_file(DEV_FILE)[0][:NUM_QUESTIONS]]
    assert [row["id"] for row in records[0]["answers"]] == ids
    model, tokenizer = load_for_inference(str(out), ModelArguments(model_name_or_path=base_dir))
    examples = load_squad_file(DEV_FILE)[0][:NUM_QUESTIONS]
    single = answer_questions(model, tokenizer, examples, answer_plan(tokenizer, model), PartialState(), progress=False)
    assert_same_answers(single["greedy"], records[0]["answers"])


# ---------------------------------------------------------------------------
# DeepSpeed: the configs' form (running them needs GPUs and deepspeed)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_name_their_zero_stage_and_leave_the_rest_to_the_trainer(stage):
    with open(os.path.join(ACCELERATE_DIR, f"deepspeed_zero{stage}.yaml"), encoding="utf-8") as f:
        launch = yaml.safe_load(f)
    assert launch["distributed_type"] == "DEEPSPEED"
    # accelerate refuses values its config and a DeepSpeed file both set: precision comes from --bf16/--fp16
    assert "mixed_precision" not in launch and set(launch["deepspeed_config"]) == {
        "deepspeed_config_file",
        "zero3_init_flag",
    }
    with open(os.path.join(REPO_ROOT, launch["deepspeed_config"]["deepspeed_config_file"]), encoding="utf-8") as f:
        deepspeed = json.load(f)
    assert deepspeed["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert deepspeed[key] == "auto", key  # filled in from the Trainer's flags
    if stage == 3:  # one adapter_model.safetensors gathered at saving
        assert deepspeed["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
