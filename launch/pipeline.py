"""The whole Qwen2.5-Coder recipe as one resumable command: file -> repo -> SFT -> DPO -> evaluate -> HF export.

    python launch/pipeline.py +recipe=7b --plan                   # the steps, their commands, the planner's verdict
    python launch/pipeline.py +recipe=7b file:data.sources=[...] repo:data.sources=[...] \
        sft:data.sources=[...] dpo:data.sources=[...] evaluate:--tasks=paper export:--tokenizer=qwen2.5

Overrides without a prefix apply to every training stage; `STEP:` gives one step its own (recipes.pipeline
says how). Run the same command again after an interruption: complete steps are skipped and the interrupted
stage resumes from its last checkpoint. Every stage logs to one W&B group named after the pipeline directory.
Runs the stages on this node (torchrun --standalone); on a cluster, launch the commands `--plan` prints.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arguments", nargs="*", help="+recipe=SIZE, overrides, STEP:override")
    parser.add_argument("--stages", default="file,repo,sft,dpo", help="training stages in order (default: %(default)s)")
    parser.add_argument("--dir", type=Path, help="pipeline directory (default: runs/SIZE-pipeline)")
    parser.add_argument("--nproc-per-node", type=int, help="ranks per stage (default: the recipe's run.gpus_per_node)")
    parser.add_argument("--plan", action="store_true", help="print the steps and the planner's verdict; run nothing")
    parser.add_argument("--cfg", choices=["job"], help="print each training stage's composed recipe (YAML documents, "
                        "as launch/pretrain.py --cfg job prints them); run nothing")
    return parser.parse_intermixed_args(argv)


def _composer():
    from recipes.compose import build_recipe, compose_config

    return lambda overrides: build_recipe(compose_config(overrides))


def _verdict(recipe) -> str:
    from recipes.planner import make_plan
    from recipes.validate import RecipeError

    try:
        plan = make_plan(recipe)
    except RecipeError as error:
        return f"does not validate: {error}"
    return f"{plan.memory_gib_per_gpu} of {plan.gpu_memory_gib} GiB per GPU: {'fits' if plan.fits else 'DOES NOT FIT'}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from recipes.pipeline import plan_steps

    compose = _composer()
    size = next((a.split("=", 1)[1] for a in args.arguments if a.startswith("+recipe=")), "")
    pipeline_dir = args.dir or Path("runs") / f"{size}-pipeline"
    try:
        first = compose([a for a in args.arguments if ":" not in a.split("=", 1)[0]]) if size else None
        nproc = args.nproc_per_node or (first.run.gpus_per_node if first else 1)
        steps = plan_steps(args.arguments, [s for s in args.stages.split(",") if s], pipeline_dir, nproc,
                           compose, scripts=Path(os.path.relpath(REPO / "launch")))
    except (HydraException, OmegaConfBaseException, ValueError) as error:  # RecipeError, PipelineError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.cfg:
        from omegaconf import OmegaConf

        from recipes.compose import compose_config

        print("\n---\n".join(f"# {step.name}\n{OmegaConf.to_yaml(compose_config(step.overrides))}"
                            for step in steps if step.overrides), end="")
        return 0
    for step in steps:
        print(f"[{step.name}] {step.status()}: {step.shell()}", flush=True)
        if args.plan and step.overrides:
            print(f"    plan: {_verdict(compose(step.overrides))}", flush=True)
    if args.plan:
        return 0
    for step in steps:
        if step.done():
            print(f"[{step.name}] complete, skipped", flush=True)
            continue
        print(f"[{step.name}] running", flush=True)
        returncode = subprocess.run(step.command).returncode
        if returncode != 0 or not step.done():
            print(f"error: step {step.name} exited with status {returncode} before completing; fix the cause and "
                  "run the same command again (complete steps are skipped, this one resumes)", file=sys.stderr)
            return 1
    print(f"pipeline complete: {pipeline_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
