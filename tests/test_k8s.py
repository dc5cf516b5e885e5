"""Kubernetes manifests (deploy/k8s.py, launch/k8s.py): every shipped recipe becomes a PyTorchJob that the real
Kubeflow CRD schema and the operator's webhook rules accept, whose pod command composes back to the same recipe
on the same world size; manifests the cluster would reject are caught by those same checks."""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import yaml

from deploy import k8s
from recipes.stages import BUILTIN_STAGES as STAGES
from recipes.validate import RecipeError
from recipes.world import recipe_world_size

CRD = Path(__file__).resolve().parents[2] / "shared" / "k8s" / "kubeflow.org_pytorchjobs.yaml"
SIZES = ("0.5b", "1.5b", "3b", "7b", "14b", "32b")
OPTS = k8s.JobOptions(image="registry.example/qwen-coder:test", pvc="qwen-runs")


@pytest.fixture(scope="module")
def crd_schema():
    if not CRD.is_file():
        pytest.fail(f"the PyTorchJob CRD is missing: expected {CRD} (shared/ beside the repository clone); "
                    f"these tests validate against the real schema and cannot run without it")
    return k8s.load_crd_schema(CRD)


@functools.lru_cache(maxsize=None)
def _manifest(size: str, stage: str) -> dict:
    return k8s.build_manifest([f"+recipe={size}", f"stage={stage}"], OPTS)


def manifest(size: str, stage: str) -> dict:
    return copy.deepcopy(_manifest(size, stage))


def containers(m: dict):
    for rtype, spec in m["spec"]["pytorchReplicaSpecs"].items():
        for c in spec["template"]["spec"]["containers"]:
            yield rtype, spec, c


def rejected(m: dict, schema: dict) -> list[str]:
    return k8s.webhook_errors(m) + k8s.schema_errors(m, schema)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("size", SIZES)
def test_every_recipe_renders_an_accepted_job(size, stage, crd_schema):
    m = manifest(size, stage)
    # through YAML and back: what `kubectl apply -f` would send
    m = yaml.safe_load(k8s.render(m))
    assert k8s.schema_errors(m, crd_schema) == []
    assert k8s.webhook_errors(m) == []

    command = k8s.pod_command(m)
    recipe = k8s.compose_recipe([f"+recipe={size}", f"stage={stage}"])
    nodes, gpus = recipe.run.nodes, recipe.run.gpus_per_node
    specs = m["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1
    assert ("Worker" in specs) == (nodes > 1) and specs.get("Worker", {}).get("replicas", 0) == nodes - 1
    assert m["spec"]["nprocPerNode"] == str(gpus)
    assert k8s.manifest_world_size(m) == recipe_world_size(recipe)
    name = m["metadata"]["name"]
    assert name == f"qwen-{size.replace('.', '-')}-{stage}"

    for _, _, c in containers(m):
        assert c["name"] == "pytorch" and c["image"] == OPTS.image and c["command"] == command
        assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["WANDB_MODE"] == "offline"
        assert "WANDB_API_KEY" not in env and "OMP_NUM_THREADS" in env
        assert {v["mountPath"] for v in c["volumeMounts"]} >= {"/runs", "/dev/shm"}
    for spec in specs.values():
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}
        assert volumes["runs"]["persistentVolumeClaim"] == {"claimName": "qwen-runs"}

    # round trip: the pods' command composes the same recipe, with the job's run dir, on the job's world size
    assert command[:6] == ["torchrun", "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)",
                           "launch/pretrain.py", f"+recipe={size}", f"stage={stage}"]
    pod_recipe = k8s.compose_recipe(k8s.hydra_overrides(command))
    assert (pod_recipe.run.dir, pod_recipe.run.name) == (f"/runs/{name}", name)  # W&B run named after the job
    assert recipe_world_size(pod_recipe) == k8s.manifest_world_size(m)
    recipe.run.dir, recipe.run.name = pod_recipe.run.dir, pod_recipe.run.name
    assert pod_recipe == recipe  # layout, batch, precision, data, ...: everything but the run dir/name is unchanged


def test_overrides_round_trip_and_resize_the_job(crd_schema):
    sources = ("data.sources=[{name: code, prefix: /data/code, weight: 0.7}, "
               "{name: math, prefix: /data/math, weight: 0.3}]")
    overrides = ["+recipe=7b", "stage=repo", "run.nodes=4", "optimizer.lr=1e-4", sources]
    m = k8s.build_manifest(overrides, OPTS)
    assert rejected(m, crd_schema) == []
    assert m["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3 and k8s.manifest_world_size(m) == 32
    command = k8s.pod_command(yaml.safe_load(k8s.render(m)))
    assert sources in command  # one argv element, no shell quoting needed
    pod_recipe = k8s.compose_recipe(k8s.hydra_overrides(command))
    assert (pod_recipe.run.nodes, pod_recipe.optimizer.lr, pod_recipe.parallel.cp) == (4, 1e-4, 4)
    assert [s.prefix for s in pod_recipe.data.sources] == ["/data/code", "/data/math"]


def test_broken_layout_fails_before_a_manifest_exists():
    with pytest.raises(RecipeError, match=r"\[tp-heads\]"):
        k8s.build_manifest(["+recipe=7b", "parallel.tp=3"], OPTS)
    with pytest.raises(RecipeError, match=r"\[world-size\]"):
        k8s.build_manifest(["+recipe=32b", "run.nodes=1", "run.gpus_per_node=4"], OPTS)


def test_wandb_online_only_with_a_secret(crd_schema):
    opts = k8s.JobOptions(image="img", host_path="/mnt/shared/runs", wandb_secret="wandb", wandb_secret_key="key")
    m = k8s.build_manifest(["+recipe=0.5b"], opts)
    assert rejected(m, crd_schema) == []
    (_, _, c), = containers(m)  # one node: Master only
    env = {e["name"]: e for e in c["env"]}
    assert env["WANDB_MODE"]["value"] == "online"
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "key"}}
    runs = next(v for v in m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"]
                if v["name"] == "runs")
    assert runs["hostPath"]["path"] == "/mnt/shared/runs"


def test_job_names():
    assert k8s.dns1035_name("0.5b-file") == "qwen-0-5b-file"
    assert k8s.dns1035_name("My_Run.v2") == "my-run-v2"
    with pytest.raises(k8s.ManifestError, match="no letters or digits"):
        k8s.dns1035_name("__--")
    with pytest.raises(k8s.ManifestError, match="too long"):
        k8s.dns1035_name("a" * 60, nodes=4)  # a...a-worker-2 would pass 63 characters
    with pytest.raises(k8s.ManifestError, match="not a DNS-1035 label"):
        k8s.build_manifest(["+recipe=0.5b"], k8s.JobOptions(image="img", pvc="r", name="7b-job"))
    m = k8s.build_manifest(["+recipe=0.5b", "run.name=nightly"], OPTS)
    assert m["metadata"]["name"] == "nightly" and k8s.pod_command(m)[-1] == "run.dir=/runs/nightly"


@pytest.mark.parametrize("overrides, opts, match", [
    (["stage=file"], OPTS, r"\+recipe=SIZE"),
    (["+recipe=7b", "run.dir=/tmp/x"], OPTS, "run directory is set by the manifest"),
    (["+recipe=7b"], k8s.JobOptions(image="img"), "exactly one of --pvc"),
    (["+recipe=7b"], k8s.JobOptions(image="img", pvc="a", host_path="/b"), "exactly one of --pvc"),
    (["+recipe=7b"], k8s.JobOptions(image="", pvc="a"), "--image is required"),
])
def test_bad_options_are_clear_errors(overrides, opts, match):
    with pytest.raises(k8s.ManifestError, match=match):
        k8s.build_manifest(overrides, opts)


def _bad_name(m):
    m["metadata"]["name"] = "7b-repo"


def _two_masters(m):
    m["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2


def _renamed_container(m):
    m["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = "trainer"


def _int_nproc(m):
    m["spec"]["nprocPerNode"] = 8


def _launcher_replica(m):
    m["spec"]["pytorchReplicaSpecs"]["Launcher"] = copy.deepcopy(m["spec"]["pytorchReplicaSpecs"]["Worker"])


def _no_image(m):
    del m["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"]


def _typo_field(m):
    m["spec"]["nprocsPerNode"] = m["spec"].pop("nprocPerNode")


def _string_replicas(m):
    m["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "1"


@pytest.mark.parametrize("mutate, check, match", [
    (_bad_name, "webhook", "DNS-1035"),
    (_two_masters, "webhook", "Master.replicas must be 1"),
    (_renamed_container, "webhook", "no container named 'pytorch'"),
    (_launcher_replica, "webhook", "not one of Master, Worker"),
    (_no_image, "webhook", "has no image"),
    (_int_nproc, "schema", "spec.nprocPerNode: 8 is not of type 'string'"),
    (_typo_field, "schema", "'nprocsPerNode' was unexpected"),
    (_string_replicas, "schema", "replicas: '1' is not of type 'integer'"),
])
def test_negative_controls_are_rejected(mutate, check, match, crd_schema):
    m = manifest("7b", "repo")  # two nodes: Master + Worker
    assert rejected(m, crd_schema) == []
    mutate(m)
    errors = k8s.webhook_errors(m) if check == "webhook" else k8s.schema_errors(m, crd_schema)
    assert any(match in e for e in errors), errors


def test_cli_writes_a_manifest_or_fails_without_one(tmp_path, capsys):
    from launch.k8s import main

    out = tmp_path / "job.yaml"
    assert main(["+recipe=14b", "stage=repo", "--image", "img", "--pvc", "runs", "--crd", str(CRD),
                 "--env", "NCCL_SOCKET_IFNAME=eth0", "-o", str(out)]) == 0
    m = yaml.safe_load(out.read_text())
    assert m["metadata"]["name"] == "qwen-14b-repo" and k8s.manifest_world_size(m) == 16
    env = {e["name"]: e.get("value") for e in m["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["NCCL_SOCKET_IFNAME"] == "eth0"

    bad = tmp_path / "bad.yaml"
    assert main(["+recipe=14b", "parallel.tp=3", "--image", "img", "--pvc", "runs", "-o", str(bad)]) == 1
    assert not bad.exists() and "[tp-heads]" in capsys.readouterr().err


def test_layout_the_planner_says_does_not_fit_is_refused(tmp_path, capsys):
    from launch.k8s import main
    from recipes.planner import make_plan

    out = tmp_path / "job.yaml"
    args = ["+recipe=32b", "--image", "img", "--pvc", "runs", "parallel.tp=2", "-o", str(out)]
    plan = make_plan(k8s.compose_recipe(["+recipe=32b", "parallel.tp=2"]))  # what launch/plan.py prints
    assert not plan.fits and (round(plan.memory_gib_per_gpu, 1), plan.gpu_memory_gib) == (141.7, 79.2)
    assert main(args) == 1 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: qwen-32b-file does not fit: the planner puts pp stage 0 at 141.7 of 79.2 GiB per "
                          "h100 (tp=2 pp=2 cp=1 dp=4") and "--allow-unfit" in err and len(err.splitlines()) == 1, err
    assert main([*args, "--allow-unfit"]) == 0 and k8s.manifest_world_size(yaml.safe_load(out.read_text())) == 16
    assert make_plan(k8s.compose_recipe(["+recipe=32b"])).fits  # negative control: the shipped layout is written


def test_cli_mixes_options_and_overrides_in_any_order(tmp_path):
    """docs/kubernetes.md's command: an override (data.sources=...) between options, and an option after it."""
    from launch.k8s import main

    sources = "data.sources=[{name: code, prefix: /data/code, weight: 1.0}]"
    out = tmp_path / "job.yaml"
    assert main(["+recipe=7b", "stage=repo", "--image", "REGISTRY/qwen-coder:TAG", "--pvc", "qwen-runs",
                 "--wandb-secret", "wandb", sources, "--data-pvc", "qwen-data", "-o", str(out)]) == 0
    m = yaml.safe_load(out.read_text())
    assert sources in k8s.pod_command(m) and m["metadata"]["name"] == "qwen-7b-repo"
    volumes = {v["name"]: v for v in m["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "qwen-data", "readOnly": True}


def test_cluster_networking_options(crd_schema):
    """RDMA resources + NCCL settings, hostIPC instead of the /dev/shm volume, a sized /dev/shm, W&B entity."""
    rdma = k8s.JobOptions(image="img", pvc="runs", rdma={"rdma/ib": 1}, nccl_ib_hca="mlx5",
                          nccl_socket_ifname="eth0", shm_size="64Gi", wandb_entity="team")
    m = k8s.build_manifest(["+recipe=7b", "stage=repo"], rdma)
    assert rejected(m, crd_schema) == []
    for _, spec, c in containers(m):
        assert c["resources"]["limits"] == {"nvidia.com/gpu": 8, "rdma/ib": 1}
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert (env["NCCL_IB_DISABLE"], env["NCCL_IB_HCA"], env["NCCL_SOCKET_IFNAME"]) == ("0", "mlx5", "eth0")
        assert env["WANDB_ENTITY"] == "team"
        dshm = next(v for v in spec["template"]["spec"]["volumes"] if v["name"] == "dshm")
        assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"} and "hostIPC" not in spec["template"]["spec"]

    ipc = k8s.build_manifest(["+recipe=7b", "stage=repo"], k8s.JobOptions(image="img", pvc="runs", host_ipc=True))
    assert rejected(ipc, crd_schema) == []
    for _, spec, c in containers(ipc):
        assert spec["template"]["spec"]["hostIPC"] is True
        assert "dshm" not in {v["name"] for v in spec["template"]["spec"]["volumes"]}
        assert "/dev/shm" not in {v["mountPath"] for v in c["volumeMounts"]}
        assert "NCCL_IB_DISABLE" not in {e["name"] for e in c["env"]}
    with pytest.raises(k8s.ManifestError, match="--shm-size"):
        k8s.build_manifest(["+recipe=7b"], k8s.JobOptions(image="img", pvc="r", host_ipc=True, shm_size="1Gi"))
    ipc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["hostIPC"] = "yes"  # negative control
    assert any("hostIPC" in e for e in k8s.schema_errors(ipc, crd_schema))
