"""One run per run directory: a live run holds RUN_DIR/run.lock; a second run on it stops with one line.

Two runs on one directory would both resume from the same checkpoint, interleave metrics.jsonl, write the same
step directories and the same W&B run id. So global rank 0 creates run.lock (O_CREAT | O_EXCL: of two starts,
one wins) holding {host, pid, started, boot_id, pid_namespace}, refreshes its mtime every HEARTBEAT_SECONDS
from a daemon thread, and removes it at exit. All ranks learn the outcome from rank 0 and raise the same error.

A lock already there belongs to a live run or to a killed one (kill -9, OOM, node loss, pod deletion leave it):
- Same machine and PID namespace (host name, kernel boot id and /proc/self/ns/pid all equal): the holder is
  alive iff its pid exists with the recorded start time (pids are reused). Dead: taken over with a notice,
  so kill -9 + the same command resumes at once.
- Otherwise the pid cannot be checked. A Kubernetes restart is this case: the new pod has a new PID namespace
  (often the same pod name, and pids like the old pod's, so a pid check would be wrong) or another node. The
  rule is the heartbeat: a live holder refreshes the mtime every HEARTBEAT_SECONDS. The new run watches the
  mtime for up to STALE_SECONDS: a change means a live run (refused); none means the holder is gone (taken
  over, with a notice). Watching for a change needs no clock agreement between nodes of a shared volume; an
  mtime older than STALE_SECONDS x 10 by this clock is taken over at once. So a restarted pod starts at most
  STALE_SECONDS (30 s) late, and the operator's retries keep working (a refusal would be a permanent exit 2).
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

LOCK_NAME = "run.lock"
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 30.0


class RunLockedError(RuntimeError):
    """Another live run holds the run directory; the message names it and the fix."""


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _process_start(pid: int) -> Optional[str]:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None when the pid does not exist."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def _machine() -> dict:
    """Where a pid means something: host name, kernel boot and PID namespace."""
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "pid_namespace": os.readlink("/proc/self/ns/pid") if os.path.exists("/proc/self/ns/pid") else None}


def describe(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return f"host {holder.get('host')} pid {holder.get('pid')} (started {started})"


class RunLock:
    """The lock this process holds; released (file removed) at interpreter exit."""

    def __init__(self, path: Path, record: dict, heartbeat_seconds: float) -> None:
        self.path, self.record = path, record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_seconds,), name="run-lock-heartbeat",
                                        daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _beat(self, seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            if json.loads(self.path.read_text()) == self.record:  # not a lock another run took over
                self.path.unlink()
        except (OSError, ValueError):
            pass


def _create(path: Path) -> Optional[dict]:
    """The record written into a new lock file; None when the file exists."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    record = {**_machine(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()), "started": time.time()}
    with os.fdopen(descriptor, "w") as handle:
        json.dump(record, handle)
    return record


def _holder_alive(path: Path, holder: dict, stale_seconds: float) -> bool:
    """See the module docstring: a pid check on the same machine, else watch the heartbeat."""
    if all(holder.get(key) == value for key, value in _machine().items()):
        return _process_start(int(holder.get("pid", -1))) == holder.get("pid_start")
    try:
        seen = path.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    if time.time() - seen / 1e9 > 10 * stale_seconds:
        return False
    deadline = time.monotonic() + stale_seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, stale_seconds / 10))
        try:
            if path.stat().st_mtime_ns != seen:
                return True
        except FileNotFoundError:
            return False
    return False


def acquire(run_dir: Path, stale_seconds: float = STALE_SECONDS,
            heartbeat_seconds: float = HEARTBEAT_SECONDS) -> RunLock:
    """Take RUN_DIR/run.lock for this process or raise RunLockedError naming the live holder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    for _ in range(3):  # a holder may exit, or another start take over, between the reads below
        record = _create(path)
        if record is not None:
            return RunLock(path, record, heartbeat_seconds)
        try:
            holder = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except ValueError:
            holder = {}  # a start killed between creating and writing the file
        if holder and _holder_alive(path, holder, stale_seconds):
            raise RunLockedError(
                f"run.dir {run_dir} is in use by {describe(holder)}: one run per directory. Wait for it to end or "
                f"stop it, or pick another run.dir; if that process is gone, delete {path}"
            )
        warnings.warn(f"{path}: taking over from {describe(holder)}, which is gone (killed or its pod replaced)",
                      stacklevel=2)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    raise RunLockedError(f"{path} keeps changing hands: another run is starting on run.dir {run_dir}")


def acquire_on_rank0(run_dir: Path) -> Optional[RunLock]:
    """Global rank 0 takes the lock; every rank raises the same RunLockedError if it could not."""
    import torch

    lock, problem = None, None
    if torch.distributed.get_rank() == 0:
        try:
            lock = acquire(run_dir)
        except RunLockedError as error:
            problem = str(error)
    outcome = [problem]
    torch.distributed.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise RunLockedError(outcome[0])
    return lock
