"""The main job for real: launch/pretrain.py on 2 CPU ranks (TP2) trains the tiny Qwen2.5-Coder shape on real
code and its loss falls; metrics land in metrics.jsonl, W&B (offline) and PNG plots with the same steps."""
from __future__ import annotations

import json

import pytest

from tests.run_helpers import FAST, prepare_code_dataset, run_pretrain, train_losses

STEPS = 30


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("train_run")
    prefix = prepare_code_dataset(work)
    run_dir = work / "run"
    completed = run_pretrain(2, ["+recipe=tiny", *FAST, f"train.train_iters={STEPS}", "train.eval_interval=10",
                                 "checkpoint.save_interval=0", f"run.dir={run_dir}",
                                 f"data.sources=[{{name: code, prefix: {prefix}, weight: 1.0}}]"])
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return run_dir, completed


def test_loss_falls_on_real_code(finished_run):
    run_dir, completed = finished_run
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = losses[1], sum(losses[s] for s in range(STEPS - 4, STEPS + 1)) / 5
    assert first > 11.0  # ~ln(151,680) at random init
    assert last < first - 1.5, f"loss did not fall enough: {first:.3f} -> {last:.3f}"
    assert "loss" in completed.stdout


def test_metrics_jsonl_wandb_and_plots_agree(finished_run):
    run_dir, _ = finished_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_gpu", "step_time_s", "memory_gib",
                "consumed_tokens"):
        assert all(r.get(key) is not None for r in train), key
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20, 30]
    assert (run_dir / "loss.png").stat().st_size > 1000 and (run_dir / "throughput.png").stat().st_size > 1000

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    from wandb.proto import wandb_internal_pb2

    logged_steps, logged_keys = set(), set()
    for data in _wandb_records(next(offline_runs[0].glob("*.wandb")).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            logged_keys |= set(items)
            if "loss" in items:
                logged_steps.add(int(json.loads(items["_step"])))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "memory_gib"} <= logged_keys
    assert logged_steps == {r["step"] for r in train}


def _wandb_records(blob: bytes):
    """Records of a .wandb file: a 7-byte ':W&B' header, then LevelDB-log framing in 32 KiB blocks
    (crc32c:4, length:2 little-endian, type:1 = full/first/middle/last) around protobuf Records."""
    assert blob[:4] == b":W&B", "not a W&B datastore file"
    block, position, pending = 32768, 7, b""
    while position + 7 <= len(blob):
        if block - position % block < 7:  # block trailer too short for a header: zero padding
            position += block - position % block
            continue
        length = int.from_bytes(blob[position + 4:position + 6], "little")
        kind = blob[position + 6]
        payload = blob[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            yield pending
