"""Two processes: run_qa_lora.py under `accelerate launch` (training and evaluation sharded, one writer) and
generate.py under torchrun (questions sharded, every answer written once), both on the CPU over gloo."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest

import generate
from conftest import DEV_FILE, REPO_ROOT, TRAIN_FILE, event_dirs, free_port, subprocess_env
from squad_lora.data import build_train_features, load_squad_file
from squad_lora.scoring import score_predictions

GLOO_ABORTS = ("terminate called", "Aborted", "ProcessGroupGloo", "Traceback")

# ---------------------------------------------------------------------------
# Training: `accelerate launch --config_file configs/accelerate/cpu_multiprocess.yaml`
# ---------------------------------------------------------------------------

# run_qa_lora.py run as __main__ (cli.run and all), recording per rank what a file count cannot show:
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
    assert single["greedy"] == records["rank0"][0]["rows"]
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

build_prompts = decoding.build_prompts
def recording_build_prompts(examples, *args, **kwargs):
    with open(os.path.join({record_dir!r}, "rank" + os.environ["RANK"] + ".json"), "w", encoding="utf-8") as f:
        json.dump([ex["id"] for ex in examples], f)
    return build_prompts(examples, *args, **kwargs)
decoding.build_prompts = recording_build_prompts

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
