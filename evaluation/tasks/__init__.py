"""The evaluation tasks by name: every module in this package that defines `TASKS` (a list of Task instances,
evaluation.tasks.base) is found here, so a new benchmark is one new file and no list to edit.

`paper` names every task with a paper column (Task.column): the columns of the Qwen2.5-Coder base-model table
that run offline. fim_heldout (the user's own data) is in no group. A task the group brings in that cannot be
scored in this run (Task.unavailable: MultiPL-E under --oracle, hm_fim without its file) is skipped with its
reason; named on its own, it stops the run with that reason.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Dict, List, Tuple

from evaluation.problem import Problem
from evaluation.tasks.base import Task, TaskContext, TaskError

PAPER = "paper"


@functools.lru_cache(maxsize=1)
def _registry() -> Dict[str, Task]:
    found: Dict[str, Task] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        for task in getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASKS", ()):
            if task.name in found:
                raise RuntimeError(f"evaluation task {task.name!r} is defined twice ({module.name})")
            found[task.name] = task
    return dict(sorted(found.items()))


def names() -> List[str]:
    return list(_registry())


def get(name: str) -> Task:
    try:
        return _registry()[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}: choose from {', '.join(names())} or {PAPER}") from None


def paper() -> List[str]:
    return [name for name, task in _registry().items() if task.column]


def _chosen(spec: str) -> List[Tuple[str, bool]]:
    """`--tasks` text ("a,b" or "paper", mixed freely) -> (task name, named on its own), in order, no repeats."""
    chosen: Dict[str, bool] = {}
    for item in (s.strip() for s in spec.split(",")):
        for name in (paper() if item == PAPER else [get(item).name] if item else []):
            chosen[name] = chosen.get(name, False) or item != PAPER
    if not chosen:
        raise TaskError(f"no task named in --tasks {spec!r}: choose from {', '.join(names())} or {PAPER}")
    return list(chosen.items())


def expand(spec: str) -> List[str]:
    """`--tasks` text -> task names in order, without repeats."""
    return [name for name, _ in _chosen(spec)]


def select(spec: str, oracle: bool = False) -> Tuple[List[str], Dict[str, str]]:
    """`--tasks` text -> (the task names to run, {task the `paper` group brought in but cannot be scored here:
    why}). A task named on its own that cannot be scored raises TaskError with the reason."""
    run: List[str] = []
    skipped: Dict[str, str] = {}
    for name, named in _chosen(spec):
        reason = get(name).unavailable(oracle)
        if reason and named:
            raise TaskError(f"{name}: {reason}")
        if reason:
            skipped[name] = reason
        else:
            run.append(name)
    if not run:
        raise TaskError(f"no task of --tasks {spec!r} can be scored here: {skip_notice(skipped)}")
    return run, skipped


def skip_notice(skipped: Dict[str, str]) -> str:
    """One line naming the skipped tasks grouped by their reason."""
    by_reason: Dict[str, List[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    return "; ".join(f"{', '.join(group)}: {reason}" for reason, group in by_reason.items())


def load_tasks(task_names: List[str], limit: int = 0, context: TaskContext = TaskContext()
               ) -> Dict[str, List[Problem]]:
    """Problems per task name; `limit` keeps the first N of each (deterministic order)."""
    if limit < 0:
        raise TaskError(f"--limit {limit}: give N >= 1 (the first N problems of each task), or leave it out")
    tasks = [get(name) for name in task_names]
    return {task.name: task.problems(limit, context) for task in tasks}


def describe() -> str:
    """One line per task for the command line's help."""
    return "\n".join(f"  {t.name:<20} {t.column or '-':<24} {t.language}" for t in _registry().values())
