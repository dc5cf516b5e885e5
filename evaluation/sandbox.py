"""Runs model-written programs, which are untrusted, each in its own sandboxed process; workers in parallel.

Isolation (Linux namespaces through util-linux `unshare`; evaluation/jail.py documents each step):
- its own network namespace: no interface is up, so every connection fails (even to 127.0.0.1);
- its own mount namespace: every mount read-only, a private size-limited tmpfs on /tmp as the only writable
  place (gone when the program ends), the run directory and the evaluator's home hidden under empty mounts;
- its own PID / IPC / UTS namespaces: no other process (nor its /proc/PID/environ) is visible or signalable;
- uid 65534 with no_new_privs, an environment holding only PATH/HOME/TMPDIR/LANG (no WANDB_API_KEY or any
  other secret of the evaluator);
- one budget for the whole program (evaluation/cgroup.py): a cgroup per program caps the memory (1 GiB) and
  the processes + threads (256) of the program and everything it starts, compilers included. Where the host
  allows no cgroup, a warning says so once and the limits fall back to per-process RLIMIT_AS and the uid-wide
  RLIMIT_NPROC (64 per worker, shared by all programs running at once);
- wall clock: when it runs out, or when the program ends, the evaluator SIGKILLs the namespace's PID 1 through a
  pidfd (the kernel then kills every process of the namespace: setsid() or a double fork does not escape) and
  every process left in the program's cgroup; RLIMIT_CPU and RLIMIT_FSIZE too;
- output: read through a pipe, at most `Limits.output_mb` (then the program is killed: status output_limit);
  its first 16 KiB and last 48 KiB are kept, so neither the evaluator's memory nor its disk fills.
A verdict is only as trustworthy as the interpreter it runs in: Python programs run their tests in the jail's
own interpreter (as every HumanEval harness does), so a program can forge "passed" (by redefining what its tests
call, or by finding the jail's nonce in the caller's frame and printing it before exiting 0); a compiled
program is its own test runner. The sandbox protects the machine, not the score: pass@1 is a benchmark, not a
reward for untrusted optimisation.
Creating namespaces needs root or unprivileged user namespaces plus CAP_SYS_ADMIN inside them; the sandbox is
probed once before any program runs and, if the kernel refuses, SandboxUnavailable says how to allow it.
`unsafe=True` (launch/evaluate.py --unsafe-no-sandbox) is the one explicit way to run without namespaces: same
limits, environment and temp dir, but the program can reach the network and every file the user can.
Cost (bench/eval_oracle.py, the 1,197 oracle programs, 2 workers on a shared 2-core machine): 146 s with the
namespaces, 124 s for the same programs without them (1.18x): the interpreter start dominates, not unshare.
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from evaluation.cgroup import Budget, Group
from evaluation.languages import LANGUAGES, PROGRAM_PATH, Language

JAIL = Path(__file__).with_name("jail.py")
NAMESPACES = ("--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child")
KEEP = sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)})  # the stdlib
CLEAN_ENV = {"PATH": PROGRAM_PATH, "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
FALLBACK_PROCESSES = 64  # per worker, RLIMIT_NPROC when no cgroup can be made
HEAD, TAIL = 16 * 1024, 48 * 1024  # bytes of output kept: its start (the first error) and its end (the nonce)
# Status of one program, in the JSONL rows: passed, failed (wrong answer / exception / a failing run command),
# compile_error, timeout, memory_limit, output_limit, killed (by a signal, e.g. RLIMIT_CPU or a crash),
# sandbox_error (the jail could not be set up: not run).
EXIT_STATUS = {1: "failed", 2: "failed", 3: "memory_limit", 4: "compile_error", 70: "sandbox_error"}
ALLOW_HINT = (
    "Run the evaluator as root (a container needs CAP_SYS_ADMIN, e.g. docker --privileged or "
    "--cap-add SYS_ADMIN --security-opt seccomp=unconfined), with util-linux `unshare` installed; or accept "
    "the risk of running model-written code without isolation with --unsafe-no-sandbox.")
_NO_CGROUP_WARNED = threading.Event()

class SandboxUnavailable(RuntimeError):
    """The kernel or the environment refuses the namespaces: nothing was executed."""


class LanguageUnavailable(SandboxUnavailable):
    """A language's compiler or runtime is not installed: nothing of that language was run."""


@functools.lru_cache(maxsize=None)
def language_spec(name: str) -> Language:
    """The language's spec, once its commands are found on the programs' PATH."""
    if name not in LANGUAGES:
        raise LanguageUnavailable(f"unknown language {name!r}: choose from {', '.join(LANGUAGES)}")
    spec = LANGUAGES[name]
    absent = spec.missing()
    if absent:
        raise LanguageUnavailable(f"{absent!r} (for {name} programs) is not installed: as root, "
                                  f"bash deploy/install_languages.sh (or apt-get install {' '.join(spec.packages)})")
    return spec


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock per program (HumanEval solutions finish in well under 1 s)
    memory_mb: int = 1024  # the whole program's memory (cgroup), also RLIMIT_AS of a Python interpreter
    tmp_mb: int = 64  # size of its private /tmp
    processes: int = 256  # processes + threads of the whole program (a JVM runs ~30 threads)
    output_mb: int = 4  # stdout + stderr read from the program before it is stopped


@dataclass
class Outcome:
    status: str
    output: str = ""  # start and end of stdout + stderr
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = self.status == "passed"


class Output:
    """Bounded capture of a program's output: counts every byte, keeps the first HEAD and last TAIL bytes and
    notices failure markers anywhere in the stream (also across read boundaries)."""

    def __init__(self, limit: int, markers: Sequence[str]):
        self.limit, self.size, self.head, self.tail = limit, 0, b"", b""
        self.markers, self.seen = [m.encode() for m in markers], False
        self.overlap = max((len(m) for m in self.markers), default=1) - 1

    def add(self, chunk: bytes) -> None:
        window = self.tail[-self.overlap:] + chunk if self.overlap else chunk
        self.seen = self.seen or any(m in window for m in self.markers)
        self.size += len(chunk)
        if len(self.head) < HEAD:
            self.head += chunk[:HEAD - len(self.head)]
        self.tail = (self.tail + chunk)[-TAIL:]

    @property
    def over(self) -> bool:
        return self.size > self.limit

    def text(self) -> str:
        cut = self.size - HEAD - TAIL
        if cut > 0:
            data = self.head + f"\n[... {cut} bytes cut ...]\n".encode() + self.tail
        else:  # the tail's bytes after the head's
            data = self.head + self.tail[len(self.tail) - (self.size - len(self.head)):]
        return data.decode(errors="replace")


class Sandbox:
    def __init__(self, limits: Limits = Limits(), hide: Iterable[Path] = (), workers: Optional[int] = None,
                 unsafe: bool = False, cgroups: bool = True):
        self.limits, self.unsafe = limits, unsafe
        self.workers = workers or os.cpu_count() or 1
        home = Path.home()
        self.hide = sorted({str(Path(p).resolve()) for p in [*hide, home]} - {"/"})  # "/" holds the interpreter
        self.budget, reason = Budget.detect() if cgroups else (None, "disabled (cgroups=False)")
        # without a cgroup, RLIMIT_NPROC is the only process bound, and it counts uid 65534's processes and threads
        # machine-wide: a small share per parallel worker (a JVM runs ~30 threads)
        self.uid_processes = min(limits.processes, FALLBACK_PROCESSES) * self.workers
        if self.budget is None and cgroups and not _NO_CGROUP_WARNED.is_set():
            _NO_CGROUP_WARNED.set()  # once per evaluator process
            print(f"WARNING: no cgroup for sandboxed programs ({reason}): memory is limited per process "
                  f"(RLIMIT_AS, none for the JVM, node, mono and rustc), processes per uid (RLIMIT_NPROC "
                  f"{self.uid_processes}, shared by the programs running at once)",
                  file=sys.stderr, flush=True)
        self.unshare = shutil.which("unshare")  # found on the evaluator's PATH; programs get CLEAN_ENV's
        if not unsafe:
            self.probe()

    def probe(self) -> None:
        """One harmless program through the full sandbox; raises SandboxUnavailable if it cannot run."""
        if self.unshare is None:
            raise SandboxUnavailable("util-linux `unshare` is not installed (apt-get install util-linux). "
                                     + ALLOW_HINT)
        outcome = self.run("import socket\nassert open('/tmp/x', 'w').write('x') == 1\n")
        if outcome.status != "passed":
            raise SandboxUnavailable(f"the kernel refused to set up the sandbox ({outcome.status}): "
                                     f"{outcome.output.strip()[-800:]}\n{ALLOW_HINT}")

    def _command(self, report_fd: int) -> List[str]:
        jail = [sys.executable, "-I", "-S", str(JAIL), str(report_fd)]
        return jail if self.unsafe else [self.unshare, *NAMESPACES, "--", *jail]

    def _job(self, code: str, nonce: str, spec: Language) -> bytes:
        limits = self.limits
        # Python is one interpreter: RLIMIT_AS gives a clean MemoryError. Managed runtimes reserve far more
        # address space than they use: only the cgroup limits them (and nothing does without one).
        address_space = 0 if spec.managed_runtime else limits.memory_mb << 20
        # with a cgroup its pids limit bounds the program; RLIMIT_NPROC (uid-wide) would count the other
        # programs running in parallel against it
        processes = 0 if self.budget else self.uid_processes
        return json.dumps({
            "code": code, "nonce": nonce, "hide": self.hide, "keep": KEEP, "unsafe": self.unsafe,
            "tmp_bytes": limits.tmp_mb << 20, "address_space_bytes": address_space,
            "cpu_seconds": int(limits.timeout_s + spec.compile_seconds) + 1, "file_bytes": limits.tmp_mb << 20,
            "processes": processes, "source": spec.source, "compile": list(spec.compile), "run": list(spec.run),
            "env": spec.env}).encode()

    def run(self, code: str, language: str = "python") -> Outcome:
        spec = language_spec(language)
        nonce = secrets.token_hex(16)
        group = self.budget.create(self.limits.memory_mb << 20, self.limits.processes) if self.budget else None
        output = Output(self.limits.output_mb << 20, spec.failure_markers)
        report, report_writer = os.pipe()
        with tempfile.TemporaryDirectory(prefix="evalbox-") as scratch:
            env = dict(CLEAN_ENV, HOME=scratch, TMPDIR=scratch) if self.unsafe else CLEAN_ENV
            process = subprocess.Popen(self._command(report_writer), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, env=env, cwd=scratch if self.unsafe else "/",
                                       start_new_session=True, pass_fds=(report_writer,))
            os.close(report_writer)
            deadline = time.monotonic() + self.limits.timeout_s + spec.compile_seconds
            jail = None
            try:
                jail = _jail_pidfd(report, group, deadline)
                try:
                    process.stdin.write(self._job(code, nonce, spec))
                    process.stdin.close()
                except BrokenPipeError:  # the jail died before reading its job: its output says why
                    pass
                timed_out = _collect(process, jail, output, deadline)
                if not (timed_out or output.over):  # unshare passes on the jail's exit status once it is gone
                    process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                os.close(report)
                _kill(process, jail, group)
                oom = group is not None and group.oom_killed()
                if group is not None:
                    group.remove()
        return _verdict(process.returncode, output, nonce, timed_out, oom)

    def run_all(self, sources: Sequence[str], language: str = "python") -> List[Outcome]:
        language_spec(language)  # an absent toolchain fails once, before anything runs
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(lambda source: self.run(source, language), sources))


def _readable(fds: Sequence[int], timeout_s: float) -> List[int]:
    """The descriptors of `fds` that can be read (or are at EOF / hung up) within timeout_s seconds. poll, not
    select: select() refuses any descriptor numbered 1024 or more, and a training process (data files, sockets,
    pipes to its workers) can hold that many before train.eval_tasks runs its first program."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(max(0, int(timeout_s * 1000)))]


def _jail_pidfd(report: int, group: Optional[Group], deadline: float) -> Optional[int]:
    """A pidfd on the jail (PID 1 of the program's namespace), moved into the program's cgroup before it reads its
    job; None if the jail never reported (unshare failed: its output says why)."""
    text = b""
    while time.monotonic() < deadline and _readable([report], deadline - time.monotonic()):
        chunk = os.read(report, 32)
        text += chunk
        if not chunk or text.endswith(b"\n"):  # unshare holds the pipe open too: no EOF to wait for
            break
    if not text.endswith(b"\n"):
        return None
    pidfd = os.pidfd_open(int(text))  # the jail is alive: it blocks on its job until we send it
    if group:
        group.attach(int(text))
    return pidfd


def _collect(process: subprocess.Popen, jail: Optional[int], output: Output, deadline: float) -> bool:
    """Reads output until the jail has exited and the pipe is drained, the output limit, or the deadline
    (returns True for the deadline)."""
    stream = process.stdout.fileno()
    watched = [stream] + ([jail] if jail is not None else [])
    while watched:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        ready = _readable(watched, remaining)
        if stream in ready:
            chunk = os.read(stream, 65536)
            if not chunk:
                watched.remove(stream)
            output.add(chunk)
            if output.over:
                return False
        if jail in ready:  # the jail ended: what is still in the pipe belongs to it, orphans are killed next
            watched.remove(jail)
            while _readable([stream], 0) and (chunk := os.read(stream, 65536)):
                output.add(chunk)
                if output.over:
                    return False
            break
    return False


def _kill(process: subprocess.Popen, jail: Optional[int], group: Optional[Group]) -> None:
    """SIGKILL to the namespace's PID 1 (the kernel kills the rest of the namespace), to unshare's process group
    and to every process left in the program's cgroup; then reaps unshare."""
    if jail is not None:
        try:
            signal.pidfd_send_signal(jail, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(jail)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if group:
        group.kill()
    process.wait()
    process.stdout.close()


def _verdict(code: int, output: Output, nonce: str, timed_out: bool, oom: bool) -> Outcome:
    text = output.text()
    if timed_out:
        return Outcome("timeout", text)
    if output.over:
        return Outcome("output_limit", text + f"\n[output limit: more than {output.limit} bytes]")
    finished = code == 0 and text.rstrip().endswith(nonce)
    text = text.replace(nonce, "").rstrip()
    if finished and not output.seen:
        return Outcome("passed", text)
    if oom:
        return Outcome("memory_limit", text)
    if finished or code in (1, 2, 128 + signal.SIGABRT):  # abort(): a failed C/C++ assert()
        return Outcome("failed", text)
    if code < 0 or code > 128:
        return Outcome("killed", f"{text}\n[signal {-code if code < 0 else code - 128}]")
    return Outcome(EXIT_STATUS.get(code, "failed"), text)
