"""Sharded data preparation (data.shards) as Kubernetes Jobs: the cluster runs the shard tasks, no scheduler of ours.

Three batch/v1 Jobs in one file, each labelled with its phase, applied in order (docs/data-preparation.md):
  NAME-sign   Indexed Job, completions N: pod I runs `python -m data.shards sign --num-shards N FLAGS`;
              Kubernetes sets JOB_COMPLETION_INDEX=I in every pod of an Indexed Job, which data.shards takes as
              its --shard-index, so all pods share one template;
  NAME-plan   one pod: `python -m data.shards plan --num-shards N FLAGS` (duplicates decided over all shards);
  NAME-write  as sign, with `write`: PREFIX-0000I-of-0000N.bin/.idx/.report.json, which training reads as the
              glob PREFIX-* (data.datasets.blend_sources).
plan reads every sign pod's output and write reads the plan, so a phase starts once the previous one completed
(`kubectl wait --for=condition=complete`); a Job has no ordering of its own. FLAGS are data/prepare.py's,
checked here before a manifest exists; the output prefix must lie on the volume every pod mounts (a
ReadWriteMany PVC: inputs and outputs), or the pods' results would vanish with them. restartPolicy Never with
backoffLimit: a failed pod is replaced, and each step rewrites its own files (prepare publishes atomically).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import List, Optional, Sequence

from deploy.k8s import ManifestError, is_dns1035

PHASES = ("sign", "plan", "write")
PHASE_LABEL = "qwen-coder/phase"
CONTAINER = "prepare"
MAX_INDEXED_COMPLETIONS = 100_000  # batch/v1: completions (and parallelism) of an Indexed Job are at most 10^5


@dataclass
class DataJobOptions:
    image: str
    """Container image holding this repository at its working directory."""
    pvc: str
    """PersistentVolumeClaim with the inputs and the output directory (ReadWriteMany: every pod writes to it)."""
    num_shards: int
    parallelism: Optional[int] = None
    """Shard pods running at once; default: all of them."""
    name: str = "qwen-prepare"
    namespace: Optional[str] = None
    mount: str = "/data"
    cpu: Optional[int] = None
    """CPU request per shard pod; default: prepare's --workers."""
    memory: Optional[str] = None
    """Memory request per shard pod (e.g. 16Gi)."""
    plan_memory: Optional[str] = None
    """Memory request of the plan pod: ~1 KiB per document (1 GB per million documents)."""
    backoff_limit: int = 3
    working_dir: Optional[str] = None


def shard_command(phase: str, num_shards: int, flags: Sequence[str]) -> List[str]:
    """What a pod of `phase` runs; the shard index comes from JOB_COMPLETION_INDEX."""
    return ["python", "-m", "data.shards", phase, "--num-shards", str(num_shards), *flags]


def _check(opts: DataJobOptions, flags: Sequence[str]):
    from data.prepare import parse_args

    if not 1 <= opts.num_shards <= MAX_INDEXED_COMPLETIONS:
        raise ManifestError(f"--num-shards must be in [1, {MAX_INDEXED_COMPLETIONS}], got {opts.num_shards}")
    if opts.parallelism is not None and not 1 <= opts.parallelism <= opts.num_shards:
        raise ManifestError(f"--parallelism must be in [1, --num-shards {opts.num_shards}], got {opts.parallelism}")
    if not is_dns1035(f"{opts.name}-write"):
        raise ManifestError(f"--name {opts.name!r}: {opts.name}-write must be a DNS-1035 label (lower-case letters, "
                            "digits and '-', starting with a letter, at most 63 characters)")
    if any(flag.startswith("--shard-index") for flag in flags):
        raise ManifestError("--shard-index is the pod's JOB_COMPLETION_INDEX in an Indexed Job; drop it")
    options = parse_args(list(flags))  # prepare's own errors, before a manifest exists
    if not PurePosixPath(options.output_prefix).is_relative_to(opts.mount):
        raise ManifestError(f"--output-prefix {options.output_prefix} is not under the volume's mount {opts.mount}: "
                            "the pods' outputs would be lost with them; put it under --mount")
    return options


def build_jobs(flags: Sequence[str], opts: DataJobOptions) -> List[dict]:
    """The sign, plan and write Jobs for `python -m data.shards STEP --num-shards N FLAGS`."""
    options = _check(opts, flags)
    cpu = opts.cpu or options.workers
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": opts.pvc}}

    def job(phase: str) -> dict:
        sharded = phase != "plan"
        memory = opts.memory if sharded else opts.plan_memory
        container = {"name": CONTAINER, "image": opts.image,
                     "command": shard_command(phase, opts.num_shards, flags),
                     "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
                     "resources": {"requests": {"cpu": str(cpu if sharded else 1),
                                                **({"memory": memory} if memory else {})}},
                     "volumeMounts": [{"name": "data", "mountPath": opts.mount}]}
        if opts.working_dir:
            container["workingDir"] = opts.working_dir
        count = opts.num_shards if sharded else 1
        spec = {"completions": count, "parallelism": (opts.parallelism or count) if sharded else 1,
                "backoffLimit": opts.backoff_limit,
                "template": {"metadata": {"labels": {PHASE_LABEL: phase}},
                             "spec": {"restartPolicy": "Never", "containers": [container],
                                      "volumes": [copy.deepcopy(volume)]}}}
        if sharded:
            spec = {"completionMode": "Indexed", **spec}
        metadata = {"name": f"{opts.name}-{phase}",
                    "labels": {"app.kubernetes.io/name": "qwen-coder", PHASE_LABEL: phase}}
        if opts.namespace:
            metadata["namespace"] = opts.namespace
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}

    return [job(phase) for phase in PHASES]


def job_errors(job: dict) -> List[str]:
    """The batch/v1 API server's rules for these fields (its Job validation), each broken one as a message."""
    spec, errors = job.get("spec") or {}, []
    name = (job.get("metadata") or {}).get("name", "")
    if not is_dns1035(name):
        errors.append(f"metadata.name {name!r} is not a DNS-1035 label")
    restart = (((spec.get("template") or {}).get("spec") or {}).get("restartPolicy"))
    if restart not in ("Never", "OnFailure"):
        errors.append(f"spec.template.spec.restartPolicy must be Never or OnFailure for a Job, got {restart!r}")
    if spec.get("completionMode", "NonIndexed") not in ("NonIndexed", "Indexed"):
        errors.append(f"spec.completionMode {spec.get('completionMode')!r} is not NonIndexed or Indexed")
    if spec.get("completionMode") == "Indexed":
        completions = spec.get("completions")
        if not isinstance(completions, int) or not 0 <= completions <= MAX_INDEXED_COMPLETIONS:
            errors.append(f"spec.completions must be set in [0, {MAX_INDEXED_COMPLETIONS}] for an Indexed Job, "
                          f"got {completions!r}")
        if not 0 <= spec.get("parallelism", 1) <= MAX_INDEXED_COMPLETIONS:
            errors.append(f"spec.parallelism must be in [0, {MAX_INDEXED_COMPLETIONS}] for an Indexed Job")
    return errors


def render_all(jobs: Sequence[dict]) -> str:
    import yaml

    return yaml.safe_dump_all(list(jobs), sort_keys=False, default_flow_style=False, width=120)
