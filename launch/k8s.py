"""Write a Kubeflow PyTorchJob for a recipe: `kubectl apply -f` runs launch/pretrain.py on run.nodes pods.

    python launch/k8s.py +recipe=7b stage=repo --image REGISTRY/qwen-coder:TAG --pvc qwen-runs > job.yaml
    python launch/k8s.py +recipe=32b train.train_iters=1000 --image IMG --host-path /mnt/lustre/runs \
        --wandb-secret wandb --rdma rdma/ib=1 --nccl-socket-ifname eth0 -o job.yaml

Hydra overrides are the same ones launch/pretrain.py takes; options and overrides mix in any order. The recipe is
composed and validated on its own world size (run.nodes x run.gpus_per_node) before anything is written, and its
layout must fit GPU memory as launch/plan.py computes it (--allow-unfit overrides); the manifest is then checked
against the operator's webhook rules and, with --crd FILE (the cluster's
`kubectl get crd pytorchjobs.kubeflow.org -o yaml`), its CRD schema. Exit status 1 and a message on any error.
Details and the reasons behind each field: deploy/k8s.py.
"""
import argparse
import sys
from pathlib import Path

from deploy import k8s


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("overrides", nargs="*", help="+recipe=SIZE [stage=STAGE] [key=value ...]")
    p.add_argument("--cfg", choices=["job"], help="print the recipe the pods will compose (Hydra's --cfg job); "
                   "no manifest, so --image and --pvc/--host-path may be left out")
    p.add_argument("--image", help="image with this repository (no default registry; required)")
    store = p.add_mutually_exclusive_group()
    store.add_argument("--pvc", help="PersistentVolumeClaim for /runs (ReadWriteMany when nodes > 1)")
    store.add_argument("--host-path", help="node directory for /runs (a shared filesystem when nodes > 1)")
    p.add_argument("--name", help="job name (DNS-1035); default: run.name, e.g. 7b-repo -> qwen-7b-repo")
    p.add_argument("--namespace")
    p.add_argument("--wandb-secret", help="Secret with the W&B API key; W&B runs online only with it")
    p.add_argument("--wandb-secret-key", default="api-key", help="key inside that Secret (default: api-key)")
    p.add_argument("--workdir", help="repository root in the image, if not the image's WORKDIR")
    p.add_argument("--data-pvc", help="PVC with prepared data, mounted read-only at --data-mount")
    p.add_argument("--data-mount", default="/data")
    p.add_argument("--omp-num-threads", type=int, default=1)
    p.add_argument("--restart-policy", default="ExitCode", choices=k8s.RESTART_POLICIES)
    p.add_argument("--backoff-limit", type=int, default=3)
    p.add_argument("--wandb-entity", help="W&B user or team for the runs (default: the key's own)")
    p.add_argument("--rdma", action="append", default=[], metavar="RESOURCE=COUNT",
                   help="RDMA device-plugin resource per pod, e.g. rdma/ib=1 (repeatable); sets NCCL_IB_DISABLE=0")
    p.add_argument("--nccl-ib-hca", help="NCCL_IB_HCA, e.g. mlx5")
    p.add_argument("--nccl-socket-ifname", help="NCCL_SOCKET_IFNAME, e.g. eth0")
    p.add_argument("--host-ipc", action="store_true", help="use the node's IPC namespace and /dev/shm")
    p.add_argument("--shm-size", help="size limit of the pod's memory-backed /dev/shm, e.g. 64Gi")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env (repeatable)")
    p.add_argument("--allow-unfit", action="store_true",
                   help="write the manifest even when the planner says the layout does not fit GPU memory")
    p.add_argument("--crd", type=Path, help="the PyTorchJob CRD to validate the schema against")
    p.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    return p.parse_intermixed_args(argv)  # recipe overrides may come before, between or after options


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    bad = [e for e in args.env if "=" not in e] + [r for r in args.rdma if not r.partition("=")[2].isdigit()]
    if bad:
        print(f"error: --env takes KEY=VALUE and --rdma RESOURCE=COUNT, got {bad}", file=sys.stderr)
        return 1
    opts = k8s.JobOptions(
        image=args.image, pvc=args.pvc, host_path=args.host_path, name=args.name, namespace=args.namespace,
        wandb_secret=args.wandb_secret, wandb_secret_key=args.wandb_secret_key, working_dir=args.workdir,
        omp_num_threads=args.omp_num_threads, restart_policy=args.restart_policy, backoff_limit=args.backoff_limit,
        data_pvc=args.data_pvc, data_mount=args.data_mount, extra_env=dict(e.split("=", 1) for e in args.env),
        wandb_entity=args.wandb_entity, rdma={k: int(v) for k, v in (r.split("=", 1) for r in args.rdma)},
        nccl_ib_hca=args.nccl_ib_hca, nccl_socket_ifname=args.nccl_socket_ifname, host_ipc=args.host_ipc,
        shm_size=args.shm_size, allow_unfit=args.allow_unfit)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from recipes.validate import RecipeError

    try:
        if args.cfg:
            print(k8s.pod_recipe_yaml(args.overrides, opts), end="")
            return 0
        manifest = k8s.build_manifest(args.overrides, opts)
    except (k8s.ManifestError, RecipeError, HydraException, OmegaConfBaseException) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    errors = k8s.webhook_errors(manifest)
    if args.crd is not None:
        errors += k8s.schema_errors(manifest, k8s.load_crd_schema(args.crd))
    else:
        print("note: checked the webhook rules only (pass --crd FILE to validate the CRD schema too)", file=sys.stderr)
    return k8s.publish(k8s.render(manifest), errors, args.output, "the manifest",
                       f"{manifest['metadata']['name']}: {k8s.manifest_world_size(manifest)} ranks")


if __name__ == "__main__":
    sys.exit(main())
