"""Every command of README.md and of the user guides it links (DOCUMENTS) that can run on a CPU machine runs,
exactly as printed, in a scratch copy of the repository (small inputs where a page names the user's data).
Commands are read from the ```bash blocks, so a command added there is run here, unless it is listed in EXCLUDED
with the reason it cannot run on a CPU machine in a test; an exclusion that no longer matches a command fails too.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# README first, then the guides in the order a reader meets them (later commands may use earlier outputs)
DOCUMENTS = ("README.md", "docs/recipes.md", "docs/data-preparation.md", "docs/kubernetes.md", "docs/testing.md")

# pattern (matched at the start of a command) -> why this test does not run it
EXCLUDED = {
    "python3 -m venv .venv": "the first-run command: creates a venv, installs from PyPI (minutes) and trains 100 steps "
                             "(~5 min); .ci/run installs the same way and tests/test_train_run.py trains that command",
    ". .venv/bin/activate && OMP_NUM_THREADS=1 python -m pytest": "the test suite itself",
    "torchrun --nnodes=2 --nproc_per_node=8": "a 16-GPU, 2-node launch",
    "torchrun --nproc_per_node=8": "an 8-GPU launch",
    "python launch/convert.py import --hf Qwen2.5-Coder-7B": "needs the released 7B weights (15 GB, no hub here); "
                                                             "tests/test_hf_interop.py imports small HF checkpoints",
    "python launch/convert.py export --mcore runs/7b-file": "needs a trained 7B run; tests/test_hf_interop.py exports",
    "torchrun --nproc_per_node=2 launch/pretrain.py +recipe=tiny stage=dpo": "trains ~2 minutes; tests/test_dpo.py "
                                                                            "trains stage=dpo on 2 CPU ranks",
    "docker build": "no Docker engine on these machines; tests/test_container.py lints the Dockerfile and "
                    "resolves its install step on Python 3.12",
    "kubectl": "needs a Kubernetes cluster; tests/test_k8s_pod.py runs the generated pods' command",
    "python bench/gpu_acceptance.py  ": "GPU only (exits 3 without one)",
    "torchrun --nproc_per_node=2 launch/evaluate.py --checkpoint runs/tiny-file": "needs the first-run command's "
                                                                                  "trained run (~5 min of training)",
    "python launch/evaluate.py --hf hf/7b-file": "needs a 7B export (a trained 7B run)",
}
# the user's data the README names, made small: path in the scratch dir -> content
INPUTS = {
    "home/repos/toy/pkg/util.py": "def add(a, b):\n    return a + b\n",
    "home/repos/toy/main.py": "from pkg.util import add\n\nprint(add(1, 2))\n",
    "stack.jsonl": "".join(json.dumps({"content": f"def f{i}(x):\n    return x * {i}\n", "lang": "python"}) + "\n"
                           for i in range(20)),
    "math.jsonl": "".join(json.dumps({"text": f"{i} squared is {i * i}."}) + "\n" for i in range(20)),
}
KEEP_OUT = {".git", "runs", "data_cache", "job.yaml", "ckpt", "hf", "outputs", "wandb"}


def readme_commands() -> list[str]:
    text = "\n".join((REPO / page).read_text() for page in DOCUMENTS)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # continuation lines make one command, as bash reads them
        commands += [line.strip() for line in joined.splitlines() if line.strip()]
    return commands


def excluded(command: str):
    return next((reason for prefix, reason in EXCLUDED.items() if command.startswith(prefix)), None)


COMMANDS = readme_commands()
RUN = [c for c in COMMANDS if excluded(c) is None]


def test_every_readme_command_is_run_or_excluded_with_a_reason():
    assert len(RUN) >= 6, RUN
    stale = [prefix for prefix in EXCLUDED if not any(c.startswith(prefix) for c in COMMANDS)]
    assert stale == [], f"exclusions that match no README command any more: {stale}"
    assert excluded("python launch/k8s.py +recipe=7b") is None  # negative control: CPU commands are run


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The repository's code by symlink (data/ and bench/ as real folders, since commands write below them), plus
    the small inputs; outputs land here, never in the repository."""
    root = tmp_path_factory.mktemp("readme")
    for entry in REPO.iterdir():
        if entry.name in KEEP_OUT:
            continue
        if entry.name in ("data", "bench") and entry.is_dir():
            (root / entry.name).mkdir()
            for child in entry.iterdir():
                if child.name not in ("out", "results"):
                    (root / entry.name / child.name).symlink_to(child)
        else:
            (root / entry.name).symlink_to(entry)
    for relative, content in INPUTS.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content)
    return root


@pytest.mark.parametrize("command", RUN)
def test_readme_command_runs_as_printed(command, scratch):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if "~/" in command:  # the user's files (~/repos): the scratch home; others keep the real home, where the
        env["HOME"] = str(scratch / "home")  # interpreter may live (the evaluator's sandbox binds it back)
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(["bash", "-c", f"set -eo pipefail; {command}"], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    if "> job.yaml" in command:
        assert "kind: PyTorchJob" in (scratch / "job.yaml").read_text()
