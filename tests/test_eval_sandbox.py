"""The evaluation sandbox against deliberately bad programs (launch/evaluate.py --completions).

One CLI run scores seven HumanEval/0 .. /6 completions; each bad one does its harm and otherwise computes the
canonical answer, so it would PASS if the sandbox let the harm through (the controls below show that for the
network, the environment and the hidden directory by running the same code without the isolation):
  wrong answer -> failed; infinite loop -> timeout after --timeout; memory bomb (a list growing by 64 MiB)
  -> memory_limit, and the evaluator goes on scoring; TCP connect to a listener on the host's 127.0.0.1 ->
  failed, the listener sees no connection; WANDB_API_KEY set for the evaluator -> invisible; writes into the
  repository (read-only) and into /tmp (private) -> nothing on the host.
Cost ~15 s on 2 cores (the loop waits out its 5 s limit).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from evaluation.sandbox import Sandbox, SandboxUnavailable
from evaluation.tasks import load_tasks

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
    problems = {p.task_id: p for p in load_tasks(["humaneval"])["humaneval"]}
    before = len(listener[1])
    for case in ("network", "secret"):
        task_id, completion, _ = cases[case]
        program = problems[task_id].program(completion)
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
