"""The evaluation sandbox against deliberately bad programs (launch/evaluate.py --completions).

One CLI run scores seven HumanEval/0 .. /6 completions; each bad one does its harm and otherwise computes the
canonical answer, so it would PASS if the sandbox let the harm through (the controls below show that for the
network, the environment and the hidden directory by running the same code without the isolation):
  wrong answer -> failed; infinite loop -> timeout after --timeout; memory bomb (a list growing by 64 MiB)
  -> memory_limit, and the evaluator goes on scoring; TCP connect to a listener on the host's 127.0.0.1 ->
  failed, the listener sees no connection; WANDB_API_KEY set for the evaluator -> invisible; writes into the
  repository (read-only) and into /tmp (private) -> nothing on the host.
Then escapes that per-process limits and process-group kills let through, each with a control that shows the
harm without the fix: setsid() + double fork (no process outlives the program), forked children and spawned
processes (one memory and one process budget per program, cgroup), 1 GiB of output (capped); and the stated
limit that a Python program can forge its verdict. Cost ~25 s on 2 cores.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from evaluation.cgroup import Budget
from evaluation.sandbox import LanguageUnavailable, Limits, Sandbox, SandboxUnavailable
from evaluation.tasks import get, load_tasks
from evaluation.tasks.base import Answer

REPO = Path(__file__).resolve().parents[1]
SECRET = "wandb-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def bad_programs(port: int, repo_file: Path, tmp_file: Path) -> dict:
    """task -> (completion, expected status); each body ends with the canonical solution."""
    problems = load_tasks(["humaneval"], 7)["humaneval"]
    harms = {
        "wrong": ("    return 'not the answer'\n", "failed"),
        "loop": ("    while True:\n        pass\n", "timeout"),
        "memory": ("    hog = []\n    while True:\n        hog.append(bytearray(64 * 2**20))\n", "memory_limit"),
        "network": (f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n",
                    "failed"),
        "secret": (f"    import os\n    assert os.environ.get('WANDB_API_KEY') == '{SECRET}'\n", "failed"),
        "repo_write": (f"    open({str(repo_file)!r}, 'w').write('x')\n", "failed"),
        "tmp_write": (f"    open({str(tmp_file)!r}, 'w').write('x')\n"
                      f"    assert open({str(tmp_file)!r}).read() == 'x'\n", "passed"),
    }
    return {name: (p.task_id, body + p.reference, status) for (name, (body, status)), p in zip(harms.items(), problems)}


@pytest.fixture(scope="module")
def scored(tmp_path_factory, listener):
    work = tmp_path_factory.mktemp("sandbox")
    repo_file, tmp_file = REPO / f"sandbox-escape-{uuid.uuid4().hex}", Path(f"/tmp/sandbox-escape-{uuid.uuid4().hex}")
    cases = bad_programs(listener[0], repo_file, tmp_file)
    samples = work / "samples.jsonl"
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c, _ in cases.values()))
    env = dict(os.environ, WANDB_API_KEY=SECRET, OMP_NUM_THREADS="1")
    completed = subprocess.run([sys.executable, "launch/evaluate.py", "--completions", str(samples), "--tasks",
                                "humaneval", "--timeout", "5", "--memory-mb", "256", "--output",
                                str(work / "rows.jsonl")], cwd=REPO, env=env, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = {r["task_id"]: r for r in map(json.loads, (work / "rows.jsonl").read_text().splitlines())}
    yield cases, rows, completed.stdout, (repo_file, tmp_file)
    for path in (repo_file, tmp_file):
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("case", ["wrong", "loop", "memory", "network", "secret", "repo_write", "tmp_write"])
def test_each_bad_program_gets_its_status(scored, case):
    cases, rows, _, _ = scored
    task_id, _, expected = cases[case]
    row = rows[task_id]
    assert (row["status"], row["passed"]) == (expected, expected == "passed"), row.get("output", "")[-1500:]
    if case == "network":
        assert "Network is unreachable" in row["output"]
    if case == "repo_write":  # read-only, or (a clone under /tmp) covered by the sandbox's private /tmp
        assert "Read-only file system" in row["output"] or "No such file or directory" in row["output"]


def test_the_evaluator_survives_and_reports_every_problem(scored):
    cases, rows, stdout, _ = scored
    assert len(rows) == len(cases) == 7
    assert "humaneval" in stdout and "memory_limit 1" in stdout and "timeout 1" in stdout


def test_nothing_reached_the_host(scored, listener):
    _, _, _, (repo_file, tmp_file) = scored
    assert not repo_file.exists() and not tmp_file.exists()
    assert listener[1] == []  # no connection accepted


def test_controls_without_isolation_do_the_harm(scored, listener):
    """The same network and secret programs pass when run plainly: the sandbox, not the code, stopped them."""
    cases, _, _, _ = scored
    problems, task = {p.task_id: p for p in load_tasks(["humaneval"])["humaneval"]}, get("humaneval")
    before = len(listener[1])
    for case in ("network", "secret"):
        task_id, completion, _ = cases[case]
        program = task.program(problems[task_id], task.head(problems[task_id], Answer(completion))[1])
        plain = subprocess.run([sys.executable, "-c", program], env=dict(os.environ, WANDB_API_KEY=SECRET),
                               capture_output=True, text=True, timeout=60)
        assert plain.returncode == 0, plain.stderr[-1000:]
    assert len(listener[1]) > before  # check() calls the function several times: one connection each


def _visible_parent() -> Path:
    """A writable directory the sandbox shows read-only: the repository, unless it lives under a path the sandbox
    always covers (/tmp, /var/tmp, /run, /dev/shm, HOME), as a CI clone under /tmp does."""
    covered = ("/tmp/", "/var/tmp/", "/run/", "/dev/shm/", str(Path.home()) + "/")
    for parent in (Path(os.path.realpath(REPO)), Path("/srv"), Path("/mnt"), Path("/opt")):
        if parent.is_dir() and os.access(parent, os.W_OK) and not (str(parent) + "/").startswith(covered):
            return parent
    pytest.fail("no writable directory outside /tmp, /run and HOME to test hiding with")


def test_hidden_directory_is_empty_inside(tmp_path):
    hidden = _visible_parent() / f".sandbox-hidden-{uuid.uuid4().hex}"
    hidden.mkdir()
    try:
        (hidden / "checkpoint.txt").write_text("weights")
        code = f"import os\nassert os.listdir({str(hidden)!r}) == [], os.listdir({str(hidden)!r})\n"
        assert Sandbox(hide=[hidden]).run(code).status == "passed"
        assert Sandbox(hide=[]).run(code).status == "failed"  # control: visible (read-only) when not hidden
    finally:
        (hidden / "checkpoint.txt").unlink()
        hidden.rmdir()


def test_refuses_to_run_when_the_kernel_refuses_namespaces(tmp_path, monkeypatch):
    """A `unshare` that fails as util-linux does without the privilege: one clear error, nothing executed."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "unshare").write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    (fake / "unshare").chmod(0o755)
    samples, marker = tmp_path / "s.jsonl", tmp_path / "ran"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": f"    open('{marker}', 'w')\n"}) + "\n")
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    completed = subprocess.run([sys.executable, "launch/evaluate.py", "--completions", str(samples), "--tasks",
                                "humaneval", "--output", str(tmp_path / "rows.jsonl")], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert "Operation not permitted" in completed.stderr and "--unsafe-no-sandbox" in completed.stderr
    assert not marker.exists() and not (tmp_path / "rows.jsonl").exists()
    monkeypatch.setenv("PATH", env["PATH"])
    with pytest.raises(SandboxUnavailable, match="Operation not permitted"):
        Sandbox()


# --- escapes that per-process limits and process-group kills let through (each with its control) ---

ORPHAN = """
import os, time
os.setsid()                 # the program leaves the process group the evaluator kills
if os.fork() == 0:          # then a child in a session of its own, and a grandchild (orphaned)
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/sh", ["/bin/sh", "-c", "while :; do sleep 0.2; done # " + "{backwards}"[::-1]])
    os._exit(0)
time.sleep({sleep})
"""


def _alive_with(marker: str) -> list:
    """PIDs (host view) whose command line holds `marker` (ORPHAN's program text holds it reversed: only the
    grandchild's command line has it)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


def _eventually_none(marker: str, seconds: float = 3.0) -> list:
    deadline = time.monotonic() + seconds
    while (alive := _alive_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


@pytest.mark.parametrize("sleep", [0, 60], ids=["program_returns", "program_times_out"])
def test_setsid_and_double_fork_die_with_the_program(sleep):
    marker = "orphan-" + uuid.uuid4().hex
    outcome = Sandbox(Limits(timeout_s=3)).run(ORPHAN.format(backwards=marker[::-1], sleep=sleep))
    assert outcome.status == ("passed" if sleep == 0 else "timeout"), outcome.output
    assert _eventually_none(marker) == []


def test_control_a_process_group_kill_leaves_the_orphans_running():
    """The old kill (the program's process group, at the timeout) on the same program: both escapees live on."""
    marker = "orphan-" + uuid.uuid4().hex
    # as in the sandbox, the program runs under a group leader (there: unshare; here: sh)
    process = subprocess.Popen(["/bin/sh", "-c", '"$0" -c "$1"; true', sys.executable,
                                ORPHAN.format(backwards=marker[::-1], sleep=60)], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not _alive_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, 9)  # the group it started in: the program already left it
        time.sleep(0.3)
        assert _alive_with(marker) and _alive_with(ORPHAN[:40])  # the grandchild and the program itself
    finally:
        for pid in _alive_with(marker) + _alive_with(ORPHAN[:40]):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        process.wait()


FORKED_MEMORY = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        hold = b"\\x01" * (100 << 20)   # 100 MB written, each child under the 256 MB per-process limit
        time.sleep(2)
        os._exit(0)
    children.append(pid)
assert all(os.waitpid(pid, 0)[1] == 0 for pid in children)
"""


def _budget_or_skip():
    budget, reason = Budget.detect()
    if budget is None:
        pytest.skip(f"no cgroup on this machine: {reason}")


def test_forked_children_share_one_memory_budget():
    _budget_or_skip()
    limits = Limits(timeout_s=20, memory_mb=256)
    assert Sandbox(limits).run(FORKED_MEMORY).status == "memory_limit"
    # control: with per-process limits only, 4 x 100 MB pass under "256 MB"
    assert Sandbox(limits, cgroups=False).run(FORKED_MEMORY).status == "passed"


SPAWN = """
import subprocess
children = [subprocess.Popen(["sleep", "2"]) for _ in range(40)]
assert all(child.wait() == 0 for child in children)
"""


def test_processes_are_counted_per_program():
    _budget_or_skip()
    outcome = Sandbox(Limits(timeout_s=20, processes=16)).run(SPAWN)
    assert outcome.status == "failed" and "Resource temporarily unavailable" in outcome.output
    assert Sandbox(Limits(timeout_s=20, processes=64)).run(SPAWN).status == "passed"  # control: room for 40


LOUD = "import sys\nchunk = 'x' * (1 << 20) + '\\n'\nfor _ in range({mib}):\n    sys.stdout.write(chunk)\n"


def test_output_is_bounded():
    """1 GiB of output: stopped after output_mb, the evaluator keeps 64 KiB of it. Control: 8 MiB under a
    16 MiB cap passes with the same 64 KiB kept, its start and end."""
    started = time.monotonic()
    flood = Sandbox(Limits(timeout_s=30, output_mb=4)).run(LOUD.format(mib=1024))
    assert flood.status == "output_limit" and time.monotonic() - started < 25
    assert len(flood.output) < 70 * 1024
    control = Sandbox(Limits(timeout_s=30, output_mb=16)).run(LOUD.format(mib=8))
    assert control.passed and len(control.output) < 70 * 1024 and "bytes cut" in control.output


def test_runs_when_the_evaluator_holds_over_1024_descriptors():
    """A training process with train.eval_tasks can hold 1,024+ open files (data, sockets, worker pipes) before its
    first program runs; every descriptor the sandbox then makes is numbered 1,024 or more, which select() refuses
    ("filedescriptor out of range"). The same program passes and fails as with few descriptors open."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [os.open(os.devnull, os.O_RDONLY)]
    try:
        while held[-1] < 1100:  # every lower number taken: the sandbox's pipes and pidfd come above 1,024
            held.append(os.open(os.devnull, os.O_RDONLY))
        sandbox = Sandbox(Limits(timeout_s=20))
        assert [sandbox.run(code).status for code in ("print(1)", "assert False")] == ["passed", "failed"]
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


FORGERY = """
import os, sys
nonce = sys._getframe(1).f_locals["nonce"]   # the jail's end-of-program mark, in the caller's frame
os.write(1, ("\\n" + nonce + "\\n").encode())
os._exit(0)
"""


def test_a_python_program_can_forge_its_verdict():
    """The limitation docs/evaluation.md states: code in the test's own interpreter can pass without its tests
    (here the assertion after the forgery never runs). Control: without the forgery the same program fails."""
    sandbox = Sandbox()
    assert sandbox.run(FORGERY + "assert False\n").status == "passed"
    assert sandbox.run("assert False\n").status == "failed"


def test_a_missing_toolchain_stops_before_running(monkeypatch):
    from evaluation import languages, sandbox as sandbox_module

    absent = languages.Language("absent", "x.src", ("no-such-runtime-" + uuid.uuid4().hex, "x.src"),
                                packages=("no-such-package",))
    monkeypatch.setitem(languages.LANGUAGES, "absent", absent)
    sandbox_module.language_spec.cache_clear()
    with pytest.raises(LanguageUnavailable, match="no-such-runtime-.*apt-get install no-such-package"):
        Sandbox().run_all(["anything"], language="absent")
    assert issubclass(LanguageUnavailable, SandboxUnavailable)  # the command line prints it as one error line


def test_without_cgroups_one_warning_names_the_fallback(monkeypatch, capsys):
    from evaluation import sandbox as sandbox_module

    monkeypatch.setattr(Budget, "detect", staticmethod(lambda: (None, "cgroup v2: controller(s) pids not available")))
    monkeypatch.setattr(sandbox_module, "_NO_CGROUP_WARNED", threading.Event())
    first = Sandbox(Limits(processes=32), workers=2)  # the probe runs a program on the fallback limits
    Sandbox(Limits(processes=32), workers=2)
    err = capsys.readouterr().err
    assert err.count("WARNING: no cgroup") == 1 and first.budget is None
    assert "pids not available" in err and "RLIMIT_NPROC 64" in err
