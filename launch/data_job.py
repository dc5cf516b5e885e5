"""Write the Kubernetes Jobs that prepare a corpus in shards (python -m data.shards sign, plan, write).

    python launch/data_job.py --num-shards 8 --image REGISTRY/qwen-coder:TAG --pvc corpus -o prepare.yaml \
        --input /data/raw --output-prefix /data/out/code --workers 16

Options other than this tool's are data/prepare.py's and go to every step unchanged. Then, in order (a phase
needs the previous one's files):

    for phase in sign plan write; do
        kubectl apply -f prepare.yaml -l qwen-coder/phase=$phase
        kubectl wait --for=condition=complete --timeout=24h job/qwen-prepare-$phase
    done

Training then reads `data.sources=[{name: code, prefix: '/data/out/code-*'}]`. Exit status 1 and one message on
any error. Details: deploy/data_job.py.
"""
import argparse
import sys
from pathlib import Path

from deploy import data_job
from deploy.k8s import ManifestError, publish


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--num-shards", type=int, required=True, help="shards = pods of the sign and write Jobs")
    p.add_argument("--image", required=True, help="image with this repository (no default registry)")
    p.add_argument("--pvc", required=True, help="ReadWriteMany PVC holding the inputs and the outputs")
    p.add_argument("--mount", default="/data", help="where the PVC is mounted in every pod (default: /data)")
    p.add_argument("--parallelism", type=int, help="shard pods at once (default: all)")
    p.add_argument("--name", default="qwen-prepare", help="Job name prefix: NAME-sign, NAME-plan, NAME-write")
    p.add_argument("--namespace")
    p.add_argument("--cpu", type=int, help="CPU request per shard pod (default: prepare's --workers)")
    p.add_argument("--memory", help="memory request per shard pod, e.g. 16Gi")
    p.add_argument("--plan-memory", help="memory request of the plan pod (~1 GiB per million documents)")
    p.add_argument("--backoff-limit", type=int, default=3)
    p.add_argument("--workdir", help="repository root in the image, if not the image's WORKDIR")
    p.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    return p.parse_known_args(argv)  # the rest: data/prepare.py's flags


def main(argv=None) -> int:
    args, flags = parse(sys.argv[1:] if argv is None else argv)
    opts = data_job.DataJobOptions(
        image=args.image, pvc=args.pvc, num_shards=args.num_shards, parallelism=args.parallelism, name=args.name,
        namespace=args.namespace, mount=args.mount, cpu=args.cpu, memory=args.memory, plan_memory=args.plan_memory,
        backoff_limit=args.backoff_limit, working_dir=args.workdir)
    try:
        jobs = data_job.build_jobs(flags, opts)
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    errors = [error for job in jobs for error in data_job.job_errors(job)]
    return publish(data_job.render_all(jobs), errors, args.output, "the Jobs",
                   ", ".join(job["metadata"]["name"] for job in jobs))


if __name__ == "__main__":
    sys.exit(main())
