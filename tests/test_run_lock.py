"""One run per run directory (train.run_lock): a live holder on this machine is refused at once with one line
naming it; a killed holder's lock is taken over with a notice; a holder the pid cannot be checked for (another
pod or node) is judged by its heartbeat; and launch/pretrain.py on a directory another run holds stops with one
`error:` line while the first run goes on. kill -9 + restart taking the lock over is checked by
tests/test_checkpoint_resume.py and the Kubernetes restart by tests/test_k8s_pod.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.run_helpers import FAST, REPO, prepare_code_dataset, wait_for
from train.run_lock import LOCK_NAME, RunLockedError, acquire

HOLD = "import sys, time; from pathlib import Path; from train.run_lock import acquire; " \
       "acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
ENV.pop("HYDRA_FULL_ERROR", None)


def hold(run_dir) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_live_holder_is_refused_and_a_killed_one_taken_over(tmp_path):
    holder = hold(tmp_path)
    try:
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["host"] and record["started"] <= time.time()
        started = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"run.dir {tmp_path} is in use by host {record['host']} pid "
                                                 rf"{holder.pid} \(started .* UTC\): one run per directory"):
            acquire(tmp_path)
        assert time.monotonic() - started < 2  # same machine: decided by the pid, no waiting
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with pytest.warns(UserWarning, match=rf"taking over from host .* pid {holder.pid} .*which is gone"):
        lock = acquire(tmp_path)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def _as_if_from_another_pod(run_dir) -> None:
    """A pod's lock: the pid means nothing here (another PID namespace: a replaced pod, another node)."""
    path = run_dir / LOCK_NAME
    record = json.loads(path.read_text())
    record.update(host="qwen-7b-master-0", pid_namespace="pid:[1]")
    path.write_text(json.dumps(record))


def test_lock_of_another_pod_is_judged_by_its_heartbeat(tmp_path):
    acquire(tmp_path, heartbeat_seconds=0.2)  # a live run elsewhere: its heartbeat keeps the mtime moving
    _as_if_from_another_pod(tmp_path)
    with pytest.raises(RunLockedError, match="in use by host qwen-7b-master-0"):
        acquire(tmp_path, stale_seconds=2.0)

    stale = tmp_path / "stale"
    lock = acquire(stale, heartbeat_seconds=600)  # killed: no heartbeat any more
    _as_if_from_another_pod(stale)
    started = time.monotonic()
    with pytest.warns(UserWarning, match="taking over from host qwen-7b-master-0"):
        acquire(stale, stale_seconds=1.0)
    assert time.monotonic() - started >= 1.0  # it watched the heartbeat for stale_seconds first
    lock.release()  # the old holder's release leaves the new holder's lock alone
    assert json.loads((stale / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_second_run_on_a_live_run_dir_is_one_line(tmp_path):
    prefix = prepare_code_dataset(tmp_path, packages=("json",))
    run_dir = tmp_path / "run"
    args = ["launch/pretrain.py", "+recipe=tiny", "parallel.tp=1", *FAST, "train.train_iters=100000",
            "checkpoint.save_interval=0", "data.split='100,0,0'", "train.eval_interval=0", f"run.dir={run_dir}",
            f"data.sources=[{{name: code, prefix: {prefix}}}]"]
    first = subprocess.Popen([sys.executable, *args], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run_dir / LOCK_NAME).exists() or first.poll() is not None, timeout=300,
                 what="the first run's lock")
        assert first.poll() is None, "the first run ended"
        second = subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                                timeout=300)
        out = (second.stdout + second.stderr).strip()
        assert second.returncode == 2, out
        assert out.startswith(f"error: run.dir {run_dir} is in use by host ") and f"pid {first.pid} " in out, out
        assert len(out.splitlines()) == 1, out
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
