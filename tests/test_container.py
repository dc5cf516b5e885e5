"""The training image (Dockerfile, deploy/container_install.sh) without Docker: linted, never installs torch,
and its install step resolves on the container's Python (3.12) around a preinstalled torch.

No Docker engine and no CUDA torch for Python 3.12 are here (a CUDA torch wheel from PyPI is ~4.7 GB, ~3 min),
so the container's torch is stood in for by an installed distribution record `torch 2.13.0` in a fresh
Python 3.12 venv: pip's resolver sees what it would see in the container. The install step then runs exactly
as the Dockerfile runs it, with `--dry-run --report`: every requirement must resolve for cp312 and the plan must
not touch torch; a requirement that asks for another torch must make the step fail (negative control).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY312 = Path.home() / ".pyenv" / "versions" / "3.12.1" / "bin" / "python"


def test_dockerfile_lints_clean_and_never_installs_torch():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    lint = subprocess.run([hadolint, "--failure-threshold", "info", str(REPO / "Dockerfile")],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    bad = REPO / "tests" / "_bad.Dockerfile"  # negative control: the linter does flag problems
    try:
        bad.write_text("FROM ubuntu\nRUN pip install torch\nRUN cd /x && make\n")
        flagged = subprocess.run([hadolint, str(bad)], capture_output=True, text=True)
    finally:
        bad.unlink()
    assert flagged.returncode != 0 and "DL3013" in flagged.stdout and "DL3006" in flagged.stdout

    docker = (REPO / "Dockerfile").read_text()
    code = "\n".join(line for line in docker.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"^FROM nvcr\.io/nvidia/pytorch:25\.11-py3$", code, re.M)
    assert re.search(r"^WORKDIR /workspace/qwen-coder$", code, re.M)
    assert re.search(r"^USER 1000:1000$", code, re.M)  # non-root
    assert not re.search(r"\btorch\b", code.replace("requirements", ""))
    installs = [line for line in code.splitlines() if "pip install" in line]
    assert installs == ["RUN pip install --no-deps -e ."]  # the project itself, nothing else
    script = (REPO / "deploy" / "container_install.sh").read_text()
    assert "-r requirements-common.txt -r requirements-gpu.txt" in script and "requirements.txt" not in script.split(
        "elsewhere")[0].replace("requirements-common.txt", "").replace("requirements-gpu.txt", "")
    for requirements in ("requirements-common.txt", "requirements-gpu.txt"):
        names = [re.split(r"[<>=\[ ;]", line.strip())[0].lower() for line in (REPO / requirements).read_text()
                 .splitlines() if line.strip() and not line.startswith(("#", "-r"))]
        assert not {"torch", "transformer-engine", "transformer_engine", "apex"} & set(names), requirements

    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"runs", "data_cache", ".venv", ".git", "ckpt", "wandb"} <= set(ignored)


@pytest.fixture(scope="module")
def py312_with_torch(tmp_path_factory):
    """A Python 3.12 venv where pip sees an installed torch 2.13.0 (the container's, stood in by its record)."""
    if not PY312.is_file():
        pytest.fail(f"Python 3.12 is needed at {PY312} (pyenv ships it on these machines)")
    venv = tmp_path_factory.mktemp("py312") / "venv"
    subprocess.run([str(PY312), "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    record = Path(purelib) / "torch-2.13.0.dist-info"
    record.mkdir()
    (record / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0\n")
    (record / "INSTALLER").write_text("pip\n")
    (record / "RECORD").write_text("")
    return venv


def _install_step(venv: Path, *pip_args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("PIP_CONSTRAINT", None)
    return subprocess.run(["bash", str(REPO / "deploy" / "container_install.sh"), *pip_args], env=env,
                          capture_output=True, text=True, timeout=480)


def test_install_step_resolves_on_python312_around_the_containers_torch(py312_with_torch, tmp_path):
    report = tmp_path / "report.json"
    step = _install_step(py312_with_torch, "--dry-run", "--quiet", "--report", str(report))
    assert step.returncode == 0, step.stderr[-3000:]
    assert "keeping the image's torch==2.13.0" in step.stderr
    plan = {item["metadata"]["name"].lower(): item for item in json.loads(report.read_text())["install"]}
    assert "torch" not in plan and not any(name.startswith("nvidia-cu") for name in plan)  # no CUDA torch pulled
    megatron = plan["megatron-core"]
    assert megatron["metadata"]["version"] == "0.16.1" and "cp312" in megatron["download_info"]["url"]
    assert {"hydra-core", "wandb", "transformers", "nvidia-dali-cuda130"} <= set(plan)

    # negative control: a requirement asking for another torch makes the step fail instead of replacing it
    other = _install_step(py312_with_torch, "--dry-run", "--quiet", "torch==2.12.0")
    assert other.returncode != 0 and "torch" in other.stderr

    # the project installs on 3.12 and its packages import from anywhere (deploy.k8s needs no dependencies)
    python = py312_with_torch / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(REPO)], check=True,
                   capture_output=True, timeout=300)
    probe = subprocess.run([str(python), "-c", "import sys, deploy.k8s; print(sys.version_info[:2], deploy.k8s.KIND)"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert probe.stdout.strip() == "(3, 12) PyTorchJob", probe.stderr


def test_install_step_refuses_an_image_without_torch(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)  # no torch in it
    env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    step = subprocess.run(["bash", str(REPO / "deploy" / "container_install.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True)
    assert step.returncode == 1 and "has no torch" in step.stderr
