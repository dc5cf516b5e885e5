"""The paper's recipe as one sequence of steps: file -> repo -> SFT -> DPO -> evaluate -> export.

Each training stage is an ordinary `launch/pretrain.py` run in its own run directory (PIPELINE_DIR/STAGE) that
starts from the previous stage's run directory (`checkpoint.load=`: its newest checkpoint's weights, a fresh
optimizer and schedule; the repo stage switches the RoPE base there, as the stage's recipe says). A step is
skipped when its output is complete (a training stage: its `latest` checkpoint is the step train.train_iters
saves; evaluation: its rows file; export: the HF directory's config.json) and otherwise simply run again: the
training loop resumes its own run directory, so a pipeline killed mid-stage continues where the stage stopped.
Everything here is plain data (commands and paths), so `--plan` can show it without importing torch.

Arguments: Hydra overrides for every stage (`+recipe=7b parallel.tp=2`), or for one step with its name as a
prefix: `sft:data.sources=[...]`, `repo:train.train_iters=100`, `evaluate:--tasks=humaneval`,
`export:--tokenizer=qwen2.5` (evaluate and export take their own command-line options).
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

TRAINING_STAGES = ("file", "repo", "sft", "dpo")
"""The paper's order; `long` (128K) may be added after repo with --stages."""
AFTER_TRAINING = ("evaluate", "export")
EVALUATE_DEFAULTS = ["--tasks=humaneval"]


class PipelineError(ValueError):
    """A pipeline command line that cannot be planned; the message names the argument and the fix."""


@dataclass
class Step:
    name: str
    command: List[str]
    output: Path  # what exists once the step is complete
    overrides: List[str] = field(default_factory=list)  # training stages: the recipe's Hydra overrides
    train_iters: Optional[int] = None  # training stages: the step whose checkpoint completes the stage

    def done(self) -> bool:
        if self.train_iters is None:
            return self.output.exists()
        return self.saved_step() == self.train_iters

    def saved_step(self) -> Optional[int]:
        """The step of the run's newest complete checkpoint (its `latest` pointer), None before the first save."""
        pointer = self.output / "checkpoints" / "latest"
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        return int(name.split("_")[-1]) if name.startswith("step_") else None

    def status(self) -> str:
        if self.done():
            return "complete"
        step = self.saved_step() if self.train_iters is not None else None
        return f"resumes at step {step} of {self.train_iters}" if step else "to run"

    def shell(self) -> str:
        """The command as a person would type it (torchrun / python for this interpreter)."""
        shown = " ".join(shlex.quote(part) for part in self.command)
        return shown.replace(f"{sys.executable} -m torch.distributed.run", "torchrun").replace(sys.executable, "python")


def split_arguments(arguments: Sequence[str], steps: Sequence[str]) -> Dict[str, List[str]]:
    """{"": arguments for every training stage, step: arguments for that step only}."""
    split: Dict[str, List[str]] = {"": [], **{step: [] for step in steps}}
    for argument in arguments:
        prefix, colon, rest = argument.partition(":")
        if colon and "=" not in prefix and not prefix.startswith(("+", "~")):
            if prefix not in split:
                raise PipelineError(f"{argument!r} names step {prefix!r}, which this pipeline does not run; "
                                    f"steps: {', '.join(steps)} (choose them with --stages)")
            split[prefix].append(rest)
        else:
            split[""].append(argument)
    return split


def plan_steps(arguments: Sequence[str], stages: Sequence[str], pipeline_dir: Path, nproc: int, compose,
               scripts: Path = Path("launch")) -> List[Step]:
    """The steps, in order. `compose(overrides)` returns the stage's typed recipe (recipes.compose), used for
    its train_iters; `scripts` is the launch/ directory as the commands should name it."""
    unknown = [stage for stage in stages if stage in AFTER_TRAINING]
    if unknown or not stages:
        raise PipelineError(f"--stages lists training stages only (got {', '.join(stages) or 'none'}); "
                            "evaluation and export always follow the last one")
    split = split_arguments(arguments, [*stages, *AFTER_TRAINING])
    if not any(a.startswith("+recipe=") for a in split[""]):
        raise PipelineError("name the size for every stage: +recipe=SIZE (e.g. +recipe=tiny, +recipe=7b)")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    group = f"logging.wandb_group={pipeline_dir.name}"
    steps, previous = [], None
    for stage in stages:
        run_dir = pipeline_dir / stage
        overrides = [*split[""], f"stage={stage}", f"run.dir={run_dir}", group, *split[stage]]
        if previous is not None:
            overrides.append(f"checkpoint.load={previous}")
        recipe = compose(overrides)
        steps.append(Step(stage, [*torchrun, str(scripts / "pretrain.py"), *overrides], run_dir, overrides,
                          recipe.train.train_iters))
        previous = run_dir
    rows = pipeline_dir / "evaluation.jsonl"
    evaluate = split["evaluate"] or EVALUATE_DEFAULTS
    steps.append(Step("evaluate", [*torchrun, str(scripts / "evaluate.py"), f"--checkpoint={previous}",
                                   f"--output={rows}", *evaluate], rows))
    hf_dir = pipeline_dir / "hf"
    steps.append(Step("export", [sys.executable, str(scripts / "convert.py"), "export", f"--mcore={previous}",
                                 f"--out={hf_dir}", *split["export"]], hf_dir / "config.json"))
    return steps
