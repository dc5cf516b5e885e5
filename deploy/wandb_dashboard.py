"""The W&B workspace a user watches, as code: one table of sections and panels over the keys the run writes.

Keys come from train.metrics (loss, lr, grad_norm, tokens_per_s, tflops_per_gpu, mfu, step_time_s, memory_gib,
val_loss and val_loss/<source> for each data source; each stage's own metrics in training and validation, val_
prefixed, with the panels its StageSpec lists: recipes.stages) and evaluation.run_log (eval/<task>/<metric>, every
metric of a task's summary, per language where the task reports one: launch/evaluate.py and train.eval_tasks),
all logged at the optimizer step. Runs are grouped as train.metrics groups them: by recipe and stage (W&B
"Group", e.g. 7b-repo), each run named after its job (run.name; launch/k8s.py sets it to the PyTorchJob's name),
so the runs of one recipe's restarts and variants sit together.
Per-source validation losses and evaluation scores are matched by regular expression: the sources and tasks
differ per run, and a new one appears without editing this file.
Saving needs the W&B API (network and WANDB_API_KEY); building the spec does not, so it is checked offline.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional, Sequence

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

from recipes.stages import STAGE_SPECS


class Panel(NamedTuple):
    title: str
    keys: Sequence[str] = ()
    regex: Optional[str] = None  # a metric_regex instead of fixed keys
    log_y: bool = False


RUN_SECTIONS = {  # what every run logs
    "Training": (
        Panel("loss", ["loss", "val_loss"]),
        Panel("validation loss per source", regex=r"^val_loss/.*"),
        Panel("learning rate", ["lr"]),
        Panel("grad norm", ["grad_norm"], log_y=True),
    ),
    "Throughput": (
        Panel("tokens/s", ["tokens_per_s"]),
        Panel("TFLOP/s per GPU", ["tflops_per_gpu"]),
        Panel("MFU", ["mfu"]),
        Panel("step time (s)", ["step_time_s"]),
    ),
    "Memory": (Panel("peak memory per rank (GiB)", ["memory_gib"]),),
    "Evaluation": (  # evaluation.run_log.run_values: launch/evaluate.py and train.eval_tasks, one line per task
        Panel("evaluation pass@1", regex=r"^eval/[^/]+/pass@1$"),
        Panel("evaluation exact match", regex=r"^eval/[^/]+/exact_match$"),
        Panel("evaluation exact match per language", regex=r"^eval/[^/]+/exact_match/[^/]+$"),  # hm_fim's
    ),
}


def sections() -> dict[str, tuple[Panel, ...]]:
    """RUN_SECTIONS, then a section per registered stage with metrics (its StageSpec's panels; a plugin's stage
    too once its module is imported)."""
    stages = filter(None, (spec.panels() for spec in STAGE_SPECS.values()))
    return {**RUN_SECTIONS, **{section: tuple(Panel(title, keys) for title, keys in panels)
                               for section, panels in stages}}


GROUP_BY = "Group"  # the W&B run group: <size>-<stage>


def _line_plot(panel: Panel) -> wr.LinePlot:
    if panel.regex:
        return wr.LinePlot(title=panel.title, metric_regex=panel.regex, log_y=panel.log_y or None)
    return wr.LinePlot(title=panel.title, y=list(panel.keys), log_y=panel.log_y or None)


def build_workspace(entity: str, project: str, name: str = "Qwen2.5-Coder training") -> ws.Workspace:
    """The workspace (not saved): sections open in sections()' order, runs grouped by recipe and stage."""
    built = [ws.Section(name=section, panels=[_line_plot(p) for p in panels], is_open=True)
             for section, panels in sections().items()]
    return ws.Workspace(entity=entity, project=project, name=name, sections=built,
                        runset_settings=ws.RunsetSettings(groupby=[ws.Metric(GROUP_BY)]))


def shown(key: str) -> bool:
    """Whether some panel plots metric `key`."""
    return any(key in p.keys or (p.regex and re.match(p.regex, key)) for ps in sections().values() for p in ps)


def describe(workspace: ws.Workspace) -> str:
    """What the workspace shows, one line per panel, read back from the built objects."""
    lines = [f"workspace {workspace.name!r} in {workspace.entity}/{workspace.project}, runs grouped by "
             f"{', '.join(g.name for g in workspace.runset_settings.groupby)}"]
    for section in workspace.sections:
        lines.append(f"[{section.name}]")
        for plot in section.panels:
            metrics = plot.metric_regex and f"/{plot.metric_regex}/" or ", ".join(plot.y)
            lines.append(f"  {plot.title}: {metrics}{' (log y)' if plot.log_y else ''}")
    return "\n".join(lines)


def spec_json(workspace: ws.Workspace) -> str:
    """The view spec that Workspace.save() would send, built offline."""
    return workspace._to_model().model_dump_json(indent=1)  # the library's own serialisation (0.4.x)
