"""One memory and process budget per sandboxed program, and a way to kill all of it: a cgroup per program.

Why: RLIMIT_AS is per process and RLIMIT_NPROC per uid, so four forked children of 200 MB each pass under a
256 MB RLIMIT_AS, and RLIMIT_NPROC counts every uid-65534 process of the machine (all programs running in
parallel share it). A cgroup charges the program with all its descendants (threads, forks, compilers, the
pages of its private /tmp) against one memory limit (swap included, so the limit is not dodged by swapping) and
one pids limit, and lists every process in it, whatever sessions or process groups they made, so the evaluator
can kill them all.

Both kernels' interfaces: cgroup v2 (the unified hierarchy, what current distributions and clusters run) and
cgroup v1's separate memory + pids hierarchies. A program's group is created next to the evaluator's own cgroup
(a child of it); v2 needs the memory and pids controllers enabled for that cgroup's children, which the kernel
refuses while the evaluator's cgroup holds processes itself (its "no internal processes" rule) unless it is the
root: then `detect` names the reason and the sandbox falls back to per-process limits.
"""
from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

_names = itertools.count()


def _mounts() -> Dict[str, Path]:
    """'cgroup2' -> its mount point, and each v1 controller ('memory', 'pids') -> its hierarchy's mount point."""
    found: Dict[str, Path] = {}
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            separator = fields.index("-")
            fstype, options = fields[separator + 1], fields[separator + 3].split(",")
            point = Path(fields[4].encode().decode("unicode_escape"))
            if fstype == "cgroup2":
                found.setdefault("cgroup2", point)
            elif fstype == "cgroup":
                for controller in ("memory", "pids"):
                    if controller in options:
                        found.setdefault(controller, point)
    return found


def _own_paths() -> Dict[str, str]:
    """The evaluator's cgroup per hierarchy: '' for v2, each v1 controller name otherwise."""
    paths = {}
    with open("/proc/self/cgroup") as table:
        for line in table:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


class Group:
    """One program's cgroup (one directory per hierarchy: one for v2, memory + pids for v1)."""

    def __init__(self, directories: List[Path], version: int):
        self.directories, self.version = directories, version

    def attach(self, pid: int) -> None:
        """Moves `pid` in; every process it starts afterwards is born inside."""
        for directory in self.directories:
            _write(directory / "cgroup.procs", str(pid))

    def pids(self) -> List[int]:
        found = set()
        for directory in self.directories:
            try:
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
            except FileNotFoundError:
                pass
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL to every process in the group until it is empty (a fork racing the loop lands in the group
        and is killed on the next pass; the pids limit bounds how many there can be)."""
        kill_file = self.directories[0] / "cgroup.kill"  # v2, Linux 5.14+: atomic
        if self.version == 2 and kill_file.exists():
            _write(kill_file, "1")
        deadline = time.monotonic() + 5
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the group for exceeding its memory limit."""
        events = self.directories[0] / ("memory.events" if self.version == 2 else "memory.oom_control")
        for line in events.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and int(value) > 0:
                return True
        return False

    def remove(self) -> None:
        """Kills what is left, then removes the directories (rmdir fails while a dying process is still in)."""
        self.kill()
        for directory in self.directories:
            for _ in range(200):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


class Budget:
    """Creates per-program cgroups with a memory limit (bytes, swap included) and a pids limit."""

    def __init__(self, parents: List[Path], version: int):
        self.parents, self.version = parents, version

    def create(self, memory_bytes: int, processes: int) -> Group:
        name = f"evalbox-{os.getpid()}-{next(_names)}"
        directories = [parent / name for parent in self.parents]
        group = Group(directories, self.version)
        try:
            for directory in directories:
                directory.mkdir()
            if self.version == 2:
                _write(directories[0] / "memory.max", str(memory_bytes))
                if (directories[0] / "memory.swap.max").exists():
                    _write(directories[0] / "memory.swap.max", "0")
                _write(directories[0] / "pids.max", str(processes))
            else:
                memory, pids = directories
                _write(memory / "memory.limit_in_bytes", str(memory_bytes))
                if (memory / "memory.memsw.limit_in_bytes").exists():  # only with swap accounting on
                    _write(memory / "memory.memsw.limit_in_bytes", str(memory_bytes))
                _write(pids / "pids.max", str(processes))
        except OSError:
            group.remove()
            raise
        return group

    @staticmethod
    def detect() -> Tuple[Optional["Budget"], str]:
        """(budget, "") where a cgroup with memory + pids limits can be created here, else (None, the reason)."""
        try:
            mounts, own = _mounts(), _own_paths()
        except OSError as error:
            return None, f"cannot read the cgroup mounts ({error})"
        reasons = []
        if "cgroup2" in mounts and "" in own:
            parent = mounts["cgroup2"] / own[""].lstrip("/")
            try:
                available = (parent / "cgroup.controllers").read_text().split()
                missing = [c for c in ("memory", "pids") if c not in available]
                if missing:
                    raise OSError(f"controller(s) {', '.join(missing)} not available to {parent}")
                enabled = (parent / "cgroup.subtree_control").read_text().split()
                if not {"memory", "pids"} <= set(enabled):
                    _write(parent / "cgroup.subtree_control", "+memory +pids")
                return _tried(Budget([parent], 2))
            except OSError as error:
                reasons.append(f"cgroup v2: {error}")
        if "memory" in mounts and "pids" in mounts:
            parents = [mounts[c] / own.get(c, "/").lstrip("/") for c in ("memory", "pids")]
            try:
                return _tried(Budget(parents, 1))
            except OSError as error:
                reasons.append(f"cgroup v1: {error}")
        if not reasons:
            reasons.append("no cgroup v2 mount with the memory and pids controllers, no cgroup v1 memory + pids")
        return None, "; ".join(reasons)


def _tried(budget: Budget) -> Tuple[Budget, str]:
    """The budget, once one group could be created, limited and removed (raises OSError otherwise)."""
    budget.create(64 << 20, 8).remove()
    return budget, ""
