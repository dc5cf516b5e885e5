"""The pods' command runs: a generated PyTorchJob's container command, executed as the training operator and
Kubernetes would execute it (tiny recipe, CPU, 2 processes per node), trains on one node and on two "nodes"
(two process groups on this machine joined through MASTER_ADDR/PORT), and a second start of the same command
resumes from the checkpoint the first left on the run volume, as a restarted pod does.

What the operator provides and this test reproduces: MASTER_ADDR/MASTER_PORT, WORLD_SIZE (nodes), RANK (node
index), PET_NNODES, PET_NODE_RANK, PET_NPROC_PER_NODE; Kubernetes expands `$(VAR)` in the command from the
container's env; the working directory is the image's WORKDIR (the repository root, here REPO). The run volume
is a temporary directory mounted, as in the manifest, at the job's run mount.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy import k8s
from tests.run_helpers import FAST, REPO, kill_group, prepare_code_dataset, train_losses, wait_for


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return prepare_code_dataset(tmp_path_factory.mktemp("pod_data"), packages=("json",))


def job(tmp_path: Path, dataset: Path, *overrides: str) -> dict:
    opts = k8s.JobOptions(image="registry.example/qwen-coder:test", host_path=str(tmp_path / "node-disk"),
                          run_mount=str(tmp_path / "runs"), name="pod-test")
    manifest = k8s.build_manifest(["+recipe=tiny", *FAST, "logging.plots=false", "train.eval_interval=0",
                                   "data.split='100,0,0'", f"data.sources=[{{name: code, prefix: {dataset}, weight: 1.0}}]",
                                   *overrides], opts)
    return yaml.safe_load(k8s.render(manifest))  # what `kubectl apply -f` sends


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pod(manifest: dict, replica: str, node_rank: int, port: int, log: Path) -> subprocess.Popen:
    """One pod of `replica`: its container's env plus the operator's, `$(VAR)` expanded, in its own group."""
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    container = specs[replica]["template"]["spec"]["containers"][0]
    nodes = sum(spec["replicas"] for spec in specs.values())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(nodes), RANK=str(node_rank),
               PET_NNODES=str(nodes), PET_NODE_RANK=str(node_rank), PET_NPROC_PER_NODE=manifest["spec"]["nprocPerNode"],
               WANDB_SILENT="true")
    command = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["command"]]
    assert command[0] == "torchrun" and "$(" not in " ".join(command)
    return subprocess.Popen(command, cwd=container.get("workingDir", REPO), env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def run_dir(manifest: dict) -> Path:
    return Path(next(a for a in k8s.pod_command(manifest) if a.startswith("run.dir=")).split("=", 1)[1])


def test_one_node_pod_trains_and_a_restarted_pod_resumes(tmp_path, dataset):
    manifest = job(tmp_path, dataset, "train.train_iters=12", "checkpoint.save_interval=2")
    assert "Worker" not in manifest["spec"]["pytorchReplicaSpecs"] and manifest["spec"]["nprocPerNode"] == "2"
    runs = run_dir(manifest)
    assert runs == tmp_path / "runs" / "pod-test"

    first = start_pod(manifest, "Master", 0, free_port(), tmp_path / "first.log")
    try:
        wait_for(lambda: (runs / "checkpoints" / "latest").exists() or first.poll() is not None, 600,
                 "the first checkpoint")
    finally:
        kill_group(first)  # the pod is killed (node drain, preemption): SIGKILL to every process in it
    assert 12 not in train_losses(runs), "the first start finished before it could be killed"
    saved = (runs / "checkpoints" / "latest").read_text().strip()
    saved_step = int(saved.split("_")[1])
    assert saved_step >= 2, (tmp_path / "first.log").read_text()[-3000:]

    second = start_pod(manifest, "Master", 0, free_port(), tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log = (tmp_path / "second.log").read_text()
    assert f"resumed from {runs / 'checkpoints' / saved} at step {saved_step}" in log
    # a CPU run says once which layer spec it uses, instead of megatron's 6 TE/apex fallback warnings per rank
    assert log.count("local spec (Transformer Engine unavailable: no CUDA device)") == 1
    assert "not installed. Falling back" not in log
    losses = train_losses(runs)
    assert sorted(losses) == list(range(1, 13))  # the restart continued where the checkpoint left off
    assert (runs / "checkpoints" / "latest").read_text().strip() == "step_00000012"
    assert all(0 < loss < 12.5 for loss in losses.values())


def test_two_node_job_trains_as_one_world(tmp_path, dataset):
    manifest = job(tmp_path, dataset, "run.nodes=2", "train.train_iters=2", "checkpoint.save_interval=2")
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert specs["Worker"]["replicas"] == 1 and k8s.manifest_world_size(manifest) == 4
    port = free_port()
    pods = [start_pod(manifest, "Master", 0, port, tmp_path / "master.log"),
            start_pod(manifest, "Worker", 1, port, tmp_path / "worker.log")]
    try:
        codes = [pod.wait(timeout=600) for pod in pods]
    finally:
        for pod in pods:
            if pod.poll() is None:
                kill_group(pod)
    assert codes == [0, 0], (tmp_path / "master.log").read_text()[-3000:] + (tmp_path / "worker.log").read_text()[-3000:]
    runs = run_dir(manifest)
    assert sorted(p.name for p in (runs / "logs").glob("rank*.log")) == [f"rank{r}.log" for r in range(4)]
    assert sorted(train_losses(runs)) == [1, 2]
    assert (runs / "checkpoints" / "latest").read_text().strip() == "step_00000002"
