"""Create the project's W&B workspace: loss and per-source validation loss, lr, grad norm, tokens/s, TFLOP/s
per GPU, MFU, step time, memory and evaluation scores, runs grouped by recipe and stage (deploy/wandb_dashboard.py).

    python launch/wandb_dashboard.py --entity E --project P            # saves it (needs WANDB_API_KEY, network)
    python launch/wandb_dashboard.py --entity E --project P --print    # builds and prints it, offline

Runs logged offline upload with `wandb sync RUN_DIR/wandb/offline-run-*`; the workspace then shows them.
"""
import argparse
import sys

from deploy.wandb_dashboard import build_workspace, describe, spec_json


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--entity", required=True, help="W&B user or team")
    p.add_argument("--project", required=True, help="W&B project (logging.wandb_project, default qwen2.5-coder)")
    p.add_argument("--name", default="Qwen2.5-Coder training", help="workspace (view) name")
    p.add_argument("--print", action="store_true", help="print the panels and the spec instead of saving")
    args = p.parse_args(argv)
    workspace = build_workspace(args.entity, args.project, args.name)
    print(describe(workspace))
    if args.print:
        print(spec_json(workspace))
        return 0
    workspace.save()
    print(f"saved: {workspace.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
