"""Shared by the end-to-end tests: a small real-code dataset and a torchrun launcher for launch/pretrain.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Small, fast settings for the tiny shape: 64-token samples, 4 per global batch, one log line per step.
FAST = ["train.seq_length=64", "train.micro_batch_size=2", "train.global_batch_size=4", "train.log_interval=1",
        "optimizer.warmup_iters=2", "data.num_workers=0", "logging.progress_bar=false"]


def prepare_code_dataset(out_dir: Path, packages=("json", "email", "asyncio")) -> Path:
    """Tokenize a few standard-library packages (real code, ~5 MB) into PREFIX.bin/.idx; returns PREFIX."""
    prefix = out_dir / "stdlib_subset"
    inputs = [str(STDLIB / name) for name in packages]
    subprocess.run([sys.executable, str(REPO / "data" / "prepare.py"), "--input", *inputs,
                    "--output-prefix", str(prefix), "--workers", "1", "--no-progress"],
                   check=True, cwd=REPO, capture_output=True, text=True)
    return prefix


def pretrain_command(nproc: int, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(REPO / "launch" / "pretrain.py"), *overrides]


def environment() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="1")


def run_pretrain(nproc: int, overrides: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """`env`: variables set for this run only (e.g. PYTHONPATH for a plugin module outside the installed packages)."""
    completed = subprocess.run(pretrain_command(nproc, overrides), cwd=REPO, env=dict(environment(), **env),
                               capture_output=True, text=True, timeout=timeout)
    return completed


def start_pretrain(nproc: int, overrides: list[str], log_path: Path) -> subprocess.Popen:
    """Start in its own process group so a test can SIGKILL torchrun and every rank at once."""
    log = log_path.open("w")
    return subprocess.Popen(pretrain_command(nproc, overrides), cwd=REPO, env=environment(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL torchrun and every rank at once. torchrun starts each rank in a session of its own
    (start_new_session), so killing torchrun's process group alone would leave the ranks training on."""
    import psutil

    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in tree:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)
    psutil.wait_procs(tree, timeout=60)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"gave up waiting for {what} after {timeout} s")


def train_losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """`key` (training loss by default) by step from metrics.jsonl; a step re-run after a resume keeps its
    last record."""
    losses = {}
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return losses
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if key in record:
            losses[record["step"]] = record[key]
    return losses


def wandb_history(run_dir: Path) -> list[dict[str, str]]:
    """The history records (key -> JSON value) of the run's one offline W&B run, read from its .wandb file."""
    from wandb.proto import wandb_internal_pb2

    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, offline_runs
    history = []
    for data in _wandb_records(next(offline_runs[0].glob("*.wandb")).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return history


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
