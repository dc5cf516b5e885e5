"""Runs model-written programs, which are untrusted, each in its own sandboxed process; workers in parallel.

Isolation (Linux namespaces through util-linux `unshare`; evaluation/jail.py documents each step):
- its own network namespace: no interface is up, so every connection fails (even to 127.0.0.1);
- its own mount namespace: every mount read-only, a private size-limited tmpfs on /tmp as the only writable
  place (gone when the program ends), the run directory and the evaluator's home hidden under empty mounts;
- its own PID / IPC / UTS namespaces: no other process (nor its /proc/PID/environ) is visible or signalable;
- uid 65534 with no_new_privs, an environment holding only PATH/HOME/TMPDIR/LANG (no WANDB_API_KEY or any
  other secret of the evaluator);
- limits: wall clock (the parent kills the whole process group, and with it the namespace), RLIMIT_AS memory,
  RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NPROC; output kept to its last 64 KiB.
Creating namespaces needs root or unprivileged user namespaces plus CAP_SYS_ADMIN inside them; the sandbox is
probed once before any program runs and, if the kernel refuses, SandboxUnavailable says how to allow it.
`unsafe=True` (launch/evaluate.py --unsafe-no-sandbox) is the one explicit way to run without namespaces: same
limits, environment and temp dir, but the program can reach the network and every file the user can.
Cost (bench/eval_oracle.py, the 1,197 oracle programs, 2 workers on a shared 2-core machine): 146 s with the
namespaces, 124 s for the same programs without them (1.18x): the interpreter start dominates, not unshare.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

JAIL = Path(__file__).with_name("jail.py")
NAMESPACES = ("--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child")
KEEP = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)})  # the stdlib
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
OUTPUT_TAIL = 64 * 1024
# Status of one program, in the JSONL rows: passed, failed (wrong answer / exception), timeout, memory_limit,
# killed (by a signal, e.g. RLIMIT_CPU or a crash), sandbox_error (the jail could not be set up: not run).
EXIT_STATUS = {1: "failed", 2: "failed", 3: "memory_limit", 70: "sandbox_error"}
ALLOW_HINT = (
    "Run the evaluator as root (a container needs CAP_SYS_ADMIN, e.g. docker --privileged or "
    "--cap-add SYS_ADMIN --security-opt seccomp=unconfined), with util-linux `unshare` installed; or accept "
    "the risk of running model-written code without isolation with --unsafe-no-sandbox.")


class SandboxUnavailable(RuntimeError):
    """The kernel or the environment refuses the namespaces: nothing was executed."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock per program (HumanEval solutions finish in well under 1 s)
    memory_mb: int = 1024  # RLIMIT_AS of the program's interpreter (~30 MB at start)
    tmp_mb: int = 64  # size of its private /tmp
    processes: int = 512  # RLIMIT_NPROC for uid 65534 (shared by all sandboxed programs of this machine)


@dataclass
class Outcome:
    status: str
    output: str = ""  # tail of stdout + stderr
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = self.status == "passed"


class Sandbox:
    def __init__(self, limits: Limits = Limits(), hide: Iterable[Path] = (), workers: Optional[int] = None,
                 unsafe: bool = False):
        self.limits, self.unsafe = limits, unsafe
        self.workers = workers or os.cpu_count() or 1
        home = Path.home()
        self.hide = sorted({str(Path(p).resolve()) for p in [*hide, home]} - {"/"})  # "/" holds the interpreter
        if not unsafe:
            self.probe()

    def probe(self) -> None:
        """One harmless program through the full sandbox; raises SandboxUnavailable if it cannot run."""
        self.unshare = shutil.which("unshare")  # found on the evaluator's PATH; programs get CLEAN_ENV's
        if self.unshare is None:
            raise SandboxUnavailable("util-linux `unshare` is not installed (apt-get install util-linux). "
                                     + ALLOW_HINT)
        outcome = self.run("import socket\nassert open('/tmp/x', 'w').write('x') == 1\n")
        if outcome.status != "passed":
            raise SandboxUnavailable(f"the kernel refused to set up the sandbox ({outcome.status}): "
                                     f"{outcome.output.strip()[-800:]}\n{ALLOW_HINT}")

    def _command(self) -> List[str]:
        jail = [sys.executable, "-I", "-S", str(JAIL)]
        return jail if self.unsafe else [self.unshare, *NAMESPACES, "--", *jail]

    def _job(self, code: str, nonce: str) -> str:
        limits = self.limits
        return json.dumps({
            "code": code, "nonce": nonce, "hide": self.hide, "keep": KEEP, "unsafe": self.unsafe,
            "tmp_bytes": limits.tmp_mb << 20, "memory_bytes": limits.memory_mb << 20,
            "cpu_seconds": int(limits.timeout_s) + 1, "file_bytes": limits.tmp_mb << 20,
            "processes": limits.processes})

    def run(self, code: str) -> Outcome:
        nonce = secrets.token_hex(16)
        with tempfile.TemporaryDirectory(prefix="evalbox-") as scratch, tempfile.TemporaryFile() as output:
            env = dict(CLEAN_ENV, HOME=scratch, TMPDIR=scratch) if self.unsafe else CLEAN_ENV
            process = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=output, stderr=output,
                                       env=env, cwd=scratch if self.unsafe else "/", start_new_session=True)
            try:
                process.communicate(self._job(code, nonce).encode(), timeout=self.limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
            output.seek(max(0, output.seek(0, os.SEEK_END) - OUTPUT_TAIL))
            text = output.read().decode(errors="replace")
        if timed_out:
            return Outcome("timeout", text)
        code_ = process.returncode
        if code_ == 0:
            finished = text.rstrip().endswith(nonce)
            return Outcome("passed" if finished else "failed", text.replace(nonce, "").rstrip())
        if code_ < 0:
            return Outcome("killed", f"{text}\n[signal {-code_}]")
        return Outcome(EXIT_STATUS.get(code_, "failed"), text)

    def run_all(self, programs: Sequence[str]) -> List[Outcome]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(self.run, programs))


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, 9)
    except ProcessLookupError:
        pass
    process.wait()
