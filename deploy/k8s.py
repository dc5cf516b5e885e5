"""Turn a composed recipe into a Kubeflow PyTorchJob (training operator v1) and check it as the cluster would.

Why a generator and not a hand-written YAML: the world size the recipe is tuned for (run.nodes x
run.gpus_per_node) must equal what the job asks Kubernetes for (pods x GPUs per pod x nprocPerNode), and the
run directory must be stable per job so a restarted pod resumes from its checkpoint. Deriving both from the
recipe, after recipes.validate has accepted the layout on that world size, makes a broken layout fail here,
before a manifest exists, instead of minutes into a multi-node job. A layout the planner (recipes.planner, as
launch/plan.py prints it) says does not fit the GPU's memory fails here too: its pods would be OOM-killed and,
under the ExitCode restart policy, restarted backoff_limit times. JobOptions.allow_unfit (--allow-unfit)
writes it anyway, for when the planner's estimate is known to be pessimistic for a setup.

What the operator provides (docs/kubernetes.md): MASTER_ADDR/PORT, WORLD_SIZE, RANK (the node index),
PET_NNODES, PET_NODE_RANK and PET_NPROC_PER_NODE. torchrun reads the PET_* variables as its own flags, so the
container runs `torchrun launch/pretrain.py +recipe=SIZE stage=STAGE ...` as a user types it on a node, plus
the master address (see training_command).
Under that static rendezvous TORCHELASTIC_RUN_ID is literally `none`, so the run directory comes from the job
name (`run.dir=/runs/<job name>`), never from the rendezvous id.

Checks, without an API server:
  * `schema_errors`: the CRD's own openAPIV3Schema (the operator's kubeflow.org_pytorchjobs.yaml, e.g. from
    `kubectl get crd pytorchjobs.kubeflow.org -o yaml`), closed against unknown fields as `kubectl apply` (strict field validation) would report them;
  * `webhook_errors`: the operator's admission webhook rules (DNS-1035 name, Master/Worker only, one Master,
    a container named `pytorch` with an image), plus the name length the operator's per-pod Services need.
"""
from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the webhook (and the operator's env injection) look for this exact container name
RUN_ROOT = "/runs"  # default mount point of the persistent run volume; run.dir = <mount>/<job name>
REPLICA_TYPES = ("Master", "Worker")
IMAGE_GID = 1000  # the Dockerfile's non-root user and group: fsGroup makes the run volume writable for it
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
NAME_PREFIX = "qwen-"  # shipped run names start with a digit (7b-repo); DNS-1035 labels must start with a letter
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_MAX = 63


class ManifestError(ValueError):
    """The recipe or the options cannot become a valid PyTorchJob; the message says which and how to fix it."""


@dataclass
class JobOptions:
    """What the recipe cannot know: where the image, the run directory and the secrets live on this cluster."""

    image: str
    """Container image holding this repository at its working directory (no default registry on purpose)."""
    pvc: Optional[str] = None
    """PersistentVolumeClaim mounted at /runs. Multi-node jobs need ReadWriteMany: every node writes its
    shards of each distributed checkpoint into the same step directory."""
    host_path: Optional[str] = None
    """Node directory mounted at /runs instead of a PVC; for nodes > 1 it must be the same shared filesystem
    (NFS, Lustre, ...) on every node, or checkpoints end up split across local disks and cannot resume."""
    name: Optional[str] = None
    """Job name; default: run.name made DNS-1035."""
    namespace: Optional[str] = None
    wandb_secret: Optional[str] = None
    """Secret holding the W&B API key: W&B goes online only when this is given (offline otherwise)."""
    wandb_secret_key: str = "api-key"
    working_dir: Optional[str] = None
    """Repository root inside the image, when the image's WORKDIR is not already it."""
    omp_num_threads: int = 1
    restart_policy: str = "ExitCode"
    """ExitCode: the operator restarts pods killed by signals/OOM (exit >= 128) and fails on Python errors."""
    backoff_limit: int = 3
    data_pvc: Optional[str] = None
    """Optional PVC with prepared data (.bin/.idx), mounted read-only at data_mount."""
    data_mount: str = "/data"
    run_mount: str = RUN_ROOT
    """Where the run volume is mounted in the pod; run.dir is <run_mount>/<job name>."""
    extra_env: dict = field(default_factory=dict)
    """Cluster-specific variables added after the defaults (and winning over them)."""
    wandb_entity: Optional[str] = None
    """W&B entity (user or team) the runs go to; default: the API key's own entity."""
    rdma: dict = field(default_factory=dict)
    """RDMA device-plugin resources per pod, e.g. {"rdma/ib": 1} (Mellanox k8s-rdma-shared-dev-plugin) or
    {"nvidia.com/hostdev": 8} (SR-IOV): without one the pod sees no InfiniBand device and NCCL silently falls
    back to TCP sockets, ~10x slower for the gradient all-reduce."""
    nccl_ib_hca: Optional[str] = None
    """NCCL_IB_HCA: which HCAs NCCL uses (e.g. "mlx5" or "=mlx5_0,mlx5_1"); unset, NCCL uses every one it finds."""
    allow_unfit: bool = False
    """Write the manifest even when the planner says the layout does not fit the GPU's memory."""
    nccl_socket_ifname: Optional[str] = None
    """NCCL_SOCKET_IFNAME: the interface for NCCL's bootstrap and socket transport (e.g. "eth0"); unset, NCCL
    may pick a docker/loopback-like interface that other nodes cannot reach."""
    host_ipc: bool = False
    """Share the node's IPC namespace (hostIPC): NCCL's intra-node shared-memory transport then uses the node's
    whole /dev/shm, instead of the pod's memory-backed emptyDir (bounded by shm_size or the pod memory limit)."""
    shm_size: Optional[str] = None
    """sizeLimit of the /dev/shm emptyDir (e.g. "64Gi"); unset, the pod's memory limit bounds it. Docker's
    default of 64 MiB is what makes NCCL and DataLoader workers fail with "Bus error" without this volume."""


def is_dns1035(name: str) -> bool:
    return len(name) <= _DNS1035_MAX and bool(_DNS1035.match(name))


def dns1035_name(run_name: str, nodes: int = 1) -> str:
    """run.name as a DNS-1035 label: lower case, runs of other characters become '-', NAME_PREFIX when it does
    not start with a letter (0.5b-file -> qwen-0-5b-file). Errors instead of truncating, since two runs cut to
    the same name would share (and resume from) one run directory."""
    label = re.sub(r"[^a-z0-9]+", "-", run_name.lower()).strip("-")
    if not label:
        raise ManifestError(f"run.name {run_name!r} has no letters or digits to build a Kubernetes job name from; "
                            f"set run.name=my-job or pass --name")
    if not label[0].isalpha():
        label = NAME_PREFIX + label
    check_name(label, nodes, source=f"run.name {run_name!r} -> {label!r}")
    return label


def check_name(name: str, nodes: int, source: str = "--name") -> None:
    """DNS-1035 and short enough for the operator's per-pod names (<job>-worker-<i>, also Service names)."""
    if not is_dns1035(name):
        raise ManifestError(f"{source}: job name {name!r} is not a DNS-1035 label (lower-case letters, digits "
                            f"and '-', starting with a letter, ending alphanumeric, at most 63 characters)")
    longest = f"{name}-worker-{max(nodes - 2, 0)}" if nodes > 1 else f"{name}-master-0"
    if len(longest) > _DNS1035_MAX:
        raise ManifestError(f"{source}: job name {name!r} is too long: the operator names a pod and its Service "
                            f"{longest!r} ({len(longest)} > 63 characters); pass a shorter --name")


def split_overrides(overrides: Sequence[str]) -> tuple[str, Optional[str], list[str]]:
    """(SIZE, STAGE or None, the other overrides) from launch/pretrain.py-style arguments."""
    size, stage, rest = None, None, []
    for arg in overrides:
        key, _, value = arg.partition("=")
        if key == "+recipe":
            size = value
        elif key == "stage":
            stage = value
        elif key in ("run.dir", "hydra.run.dir"):
            raise ManifestError(f"{arg!r}: the run directory is set by the manifest (<run mount>/<job name>, on the "
                                f"volume from --pvc/--host-path) so a restarted pod finds its checkpoints; "
                                f"choose it with --name or run.name instead")
        else:
            rest.append(arg)
    if size is None:
        raise ManifestError("no recipe: pass +recipe=SIZE (0.5b, 1.5b, 3b, 7b, 14b, 32b), as for launch/pretrain.py")
    return size, stage, rest


ENTRY = "launch/pretrain.py"


def training_command(size: str, stage: str, rest: Sequence[str], job_name: str,
                     run_mount: str = RUN_ROOT) -> list[str]:
    """What every pod runs: torchrun takes nodes, node rank and processes per node from the operator's PET_*
    environment. The master is passed explicitly: torchrun reads only --master_addr or PET_MASTER_ADDR
    (default 127.0.0.1), while the operator documents MASTER_ADDR/MASTER_PORT, which Kubernetes substitutes
    into `$(VAR)` arguments because the operator puts them in the container's env. run.name is the job name,
    so the W&B run is named after the job (and grouped by recipe and stage, train.metrics)."""
    return ["torchrun", "--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)",
            ENTRY, f"+recipe={size}", f"stage={stage}", *rest,
            f"run.name={job_name}", f"run.dir={run_mount}/{job_name}"]


def hydra_overrides(command: Sequence[str]) -> list[str]:
    """The Hydra overrides of a pod command: everything after the entry script."""
    return list(command[list(command).index(ENTRY) + 1:])


def compose_recipe(overrides: Sequence[str]):
    """Compose and validate a recipe on its own world size (run.nodes x run.gpus_per_node).
    Raises recipes.validate.RecipeError listing every broken layout rule."""
    from recipes.compose import compose_config, to_recipe
    from recipes.world import recipe_world_size

    cfg = compose_config(list(overrides))
    nodes, gpus = int(cfg.run.nodes), int(cfg.run.gpus_per_node)
    recipe = to_recipe(cfg, nodes * gpus)
    if recipe_world_size(recipe) != nodes * gpus:
        raise ManifestError(f"the layout needs {recipe_world_size(recipe)} ranks but run.nodes x run.gpus_per_node "
                            f"= {nodes} x {gpus}; set run.nodes/run.gpus_per_node to match the layout")
    return recipe


def check_fits(recipe) -> None:
    """ManifestError with the plan's numbers when the planner says a GPU's memory is too small for the layout."""
    from recipes.planner import make_plan

    plan = make_plan(recipe)
    if not plan.fits:
        lay = plan.layout
        raise ManifestError(
            f"{plan.recipe_name} does not fit: the planner puts pp stage {plan.busiest.stage} at "
            f"{plan.memory_gib_per_gpu:.1f} of {plan.gpu_memory_gib:.1f} GiB per {plan.gpu} (tp={lay.tp} pp={lay.pp} "
            f"cp={lay.cp} dp={lay.dp}, micro batch {lay.micro_batch_size}, seq {lay.seq_length}); raise tp/pp/cp, "
            "lower train.micro_batch_size or enable recompute (launch/plan.py shows the breakdown), or pass "
            "--allow-unfit to write it anyway"
        )


def _env(opts: JobOptions) -> list[dict]:
    env = {
        "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # Megatron's TP/SP comm-compute overlap relies on in-order launches
        "OMP_NUM_THREADS": str(opts.omp_num_threads),
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a dead peer aborts the job (operator restarts) instead of hanging
        "NCCL_DEBUG": "WARN",
        "WANDB_MODE": "online" if opts.wandb_secret else "offline",
    }
    if opts.wandb_entity:
        env["WANDB_ENTITY"] = opts.wandb_entity
    if opts.rdma:
        env["NCCL_IB_DISABLE"] = "0"  # use the InfiniBand/RoCE devices the resources below expose
    if opts.nccl_ib_hca:
        env["NCCL_IB_HCA"] = opts.nccl_ib_hca
    if opts.nccl_socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = opts.nccl_socket_ifname
    env.update({str(k): str(v) for k, v in opts.extra_env.items()})
    out = [{"name": k, "value": v} for k, v in env.items()]
    if opts.wandb_secret:
        out.append({"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": opts.wandb_secret,
                                                                            "key": opts.wandb_secret_key}}})
    return out


def _volumes(opts: JobOptions) -> tuple[list[dict], list[dict]]:
    if (opts.pvc is None) == (opts.host_path is None):
        raise ManifestError("give exactly one of --pvc CLAIM or --host-path DIR for the run directory: checkpoints "
                            "(and so resume after a pod restart) need storage that outlives the pod")
    runs = ({"persistentVolumeClaim": {"claimName": opts.pvc}} if opts.pvc
            else {"hostPath": {"path": opts.host_path, "type": "DirectoryOrCreate"}})
    volumes, mounts = [{"name": "runs", **runs}], [{"name": "runs", "mountPath": opts.run_mount}]
    if not opts.host_ipc:  # with hostIPC the node's /dev/shm is used as is
        shm = {"medium": "Memory", **({"sizeLimit": opts.shm_size} if opts.shm_size else {})}
        volumes.append({"name": "dshm", "emptyDir": shm})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if opts.data_pvc:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": opts.data_pvc, "readOnly": True}})
        mounts.append({"name": "data", "mountPath": opts.data_mount, "readOnly": True})
    return volumes, mounts


def job_command(overrides: Sequence[str], opts: JobOptions) -> tuple[str, list[str]]:
    """(job name, the command every pod runs) for launch/pretrain.py-style overrides; the recipe is composed and
    validated on its own world size first, so a bad recipe fails here."""
    size, stage, rest = split_overrides(overrides)
    first = compose_recipe([f"+recipe={size}", *([f"stage={stage}"] if stage else []), *rest])
    if opts.name:
        check_name(opts.name, first.run.nodes)
        name = opts.name
    else:
        name = dns1035_name(first.run.name, first.run.nodes)
    rest = [arg for arg in rest if arg.partition("=")[0] != "run.name"]  # the job name replaces it
    return name, training_command(size, first.stage.name, rest, name, opts.run_mount)


def pod_recipe_yaml(overrides: Sequence[str], opts: JobOptions) -> str:
    """The recipe every pod composes, as `launch/pretrain.py ... --cfg job` prints it (run.dir and run.name
    as the manifest sets them)."""
    from omegaconf import OmegaConf

    from recipes.compose import compose_config

    return OmegaConf.to_yaml(compose_config(hydra_overrides(job_command(overrides, opts)[1])))


def build_manifest(overrides: Sequence[str], opts: JobOptions) -> dict:
    """PyTorchJob for `launch/pretrain.py <overrides>`: Master (1 pod) + Worker (nodes - 1 pods, omitted for
    one node), one torchrun per pod with gpus_per_node processes, each pod asking for gpus_per_node GPUs."""
    if not opts.image:
        raise ManifestError("--image is required (the image with this repository; there is no default registry)")
    if opts.host_ipc and opts.shm_size:
        raise ManifestError("--shm-size sizes the pod's own /dev/shm volume, which --host-ipc replaces by the "
                            "node's; pass one of them")
    if opts.restart_policy not in RESTART_POLICIES:
        raise ManifestError(f"restart policy {opts.restart_policy!r} is not one of {', '.join(RESTART_POLICIES)}")
    name, command = job_command(overrides, opts)
    recipe = compose_recipe(hydra_overrides(command))  # exactly what the pods will compose, run.dir included
    nodes, gpus = recipe.run.nodes, recipe.run.gpus_per_node
    if not opts.allow_unfit:
        check_fits(recipe)
    volumes, mounts = _volumes(opts)

    container = {
        "name": CONTAINER,
        "image": opts.image,
        "command": command,
        "env": _env(opts),
        "resources": {"limits": {"nvidia.com/gpu": gpus, **{k: int(v) for k, v in opts.rdma.items()}}},
        "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}},  # pinned memory registration for RDMA
        "volumeMounts": mounts,
    }
    if opts.working_dir:
        container["workingDir"] = opts.working_dir

    def replica(count: int) -> dict:
        return {"replicas": count, "restartPolicy": opts.restart_policy,
                "template": {"spec": {"containers": [copy.deepcopy(container)], "volumes": copy.deepcopy(volumes),
                                      "securityContext": {"fsGroup": IMAGE_GID},
                                      **({"hostIPC": True} if opts.host_ipc else {})}}}

    specs = {"Master": replica(1)}
    if nodes > 1:
        specs["Worker"] = replica(nodes - 1)
    labels = {"app.kubernetes.io/name": "qwen-coder", "qwen-coder/size": split_overrides(overrides)[0],
              "qwen-coder/stage": recipe.stage.name}
    metadata = {"name": name, "labels": labels}
    if opts.namespace:
        metadata["namespace"] = opts.namespace
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
                "spec": {"nprocPerNode": str(gpus), "runPolicy": {"backoffLimit": opts.backoff_limit},
                         "pytorchReplicaSpecs": specs}}
    if recipe.run.dir != f"{opts.run_mount}/{name}" or recipe.run.name != name:
        raise ManifestError(f"run.dir={recipe.run.dir} / run.name={recipe.run.name} must be {opts.run_mount}/{name} "
                            f"and {name} so a restarted pod finds its checkpoints; drop those overrides")
    if manifest_world_size(manifest) != nodes * gpus:
        raise ManifestError(f"the job starts {manifest_world_size(manifest)} processes, the recipe needs "
                            f"{nodes * gpus}")
    return manifest


def manifest_world_size(manifest: dict) -> int:
    """Processes the job will start: pods x nprocPerNode."""
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    return sum(int(s.get("replicas", 1)) for s in specs.values()) * int(manifest["spec"]["nprocPerNode"])


def pod_command(manifest: dict) -> list[str]:
    """The `pytorch` container's command of the Master replica."""
    containers = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    return next(c for c in containers if c.get("name") == CONTAINER)["command"]


def webhook_errors(manifest: dict) -> list[str]:
    """The training operator's (v1.9) admission rules for a PyTorchJob, each broken one as a message."""
    errors = []
    name = (manifest.get("metadata") or {}).get("name", "")
    if not is_dns1035(name):
        errors.append(f"metadata.name {name!r} is not a DNS-1035 label")
    specs = (manifest.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    if not specs:
        errors.append("spec.pytorchReplicaSpecs is empty")
    for rtype, spec in specs.items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in REPLICA_TYPES:
            errors.append(f"{where}: replica type {rtype!r} is not one of {', '.join(REPLICA_TYPES)}")
        if rtype == "Master" and spec.get("replicas", 1) != 1:
            errors.append(f"{where}.replicas must be 1, got {spec.get('replicas')!r}")
        containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            errors.append(f"{where}: the pod template has no containers")
        for c in containers:
            if not c.get("image"):
                errors.append(f"{where}: container {c.get('name')!r} has no image")
        if containers and not any(c.get("name") == CONTAINER for c in containers):
            errors.append(f"{where}: no container named {CONTAINER!r}")
    return errors


def load_crd_schema(crd_path: Path, version: str = "v1") -> dict:
    """openAPIV3Schema of `version` from the CRD file; a clear error when the file is not there."""
    import yaml

    crd_path = Path(crd_path)
    if not crd_path.is_file():
        raise FileNotFoundError(f"PyTorchJob CRD not found at {crd_path}; save the cluster's with "
                                f"`kubectl get crd pytorchjobs.kubeflow.org -o yaml > {crd_path.name}`")
    crd = yaml.safe_load(crd_path.read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise ManifestError(f"{crd_path} has no version {version!r}")


def _closed(schema):
    """Copy of a structural schema where objects with listed properties reject unknown fields, as kubectl's
    strict field validation reports them (the API server would otherwise prune them silently: a typo such as
    `nprocsPerNode` would vanish). Objects with additionalProperties or preserve-unknown-fields stay open."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def schema_errors(manifest: dict, schema: dict, strict: bool = True) -> list[str]:
    """Violations of the CRD schema (OpenAPI v3.0 is JSON Schema draft 4 for these keywords; the x-kubernetes-*
    extensions, including CEL x-kubernetes-validations, are not evaluated)."""
    from jsonschema import Draft4Validator

    validator = Draft4Validator(_closed(schema) if strict else schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path)))]


def publish(text: str, errors: Sequence[str], output: Optional[Path], what: str, summary: str) -> int:
    """A command line's ending: one error listing `errors` (exit status 1), or the manifest written to `output`
    with a one-line summary on stderr, or to stdout (0)."""
    if errors:
        print(f"error: {what} would be rejected:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 1
    if output:
        Path(output).write_text(text)
        print(f"wrote {output} ({summary})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def render(manifest: dict) -> str:
    import yaml

    return yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False, width=120)
