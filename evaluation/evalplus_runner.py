"""The test driver of an EvalPlus program: its source is put in front of every humaneval_plus / mbpp / mbpp_plus
program and runs inside the sandbox (the standard library only: no numpy there), ending with one `main(...)` call.

It applies EvalPlus's rules (evalplus/eval/__init__.py, evalplus/evaluate.py, evalplus/config.py, v0.3):
- expected outputs are the canonical solution's on a deep copy of each input (its time is recorded); for the
  three MBPP tasks whose outputs are not comparable only "is not None" is expected;
- the candidate is exec'd in a fresh namespace ({}: no __name__) in a temporary working directory, with its
  stdout/stderr swallowed and stdin unreadable, after the destructive os/shutil/subprocess/builtins functions
  are disabled, once for the base inputs and once more (fresh namespace) for the plus inputs;
- each input gets max(4 s, 4 x the canonical time) (SIGALRM), the whole test set min(60 s, their sum) + 2 s;
  the first failing input ends the set (EvalPlus's default fast check);
- an output passes when equal; else, with the problem's atol (1e-6 once any expected output was a float, for
  the rest of the set), when of the same type and length and within atol + 1e-7 x |expected| elementwise
  (numpy.allclose's rule); special oracles for HumanEval/32 (find_zero: |poly(x)| <= atol) and MBPP tasks
  164, 295, 558, 581 and the set- and not-None-compared ones.
The last stdout line says `evalplus base=<status> plus=<status>`; the program exits 0 only when every set
passed.
"""
import base64
import builtins
import contextlib
import copy
import io
import math
import os
import pickle
import signal
import sys
import tempfile
import time

PER_INPUT_FLOOR_S = 4.0  # evalplus DEFAULT_MIN_TIME_LIMIT
PER_INPUT_FACTOR = 4.0  # evalplus DEFAULT_GT_TIME_LIMIT_FACTOR
SET_CAP_S = 60.0  # EVALPLUS_TIMEOUT_PER_TASK
SET_SLACK_S = 2.0  # the +1 of the timeout and the +1 of the join
FLOAT_ATOL = 1e-6
RTOL = 1e-7
MBPP_SET_EQUAL = {"similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly", "larg_nnum",
                  "intersection_array", "find_dissimilar", "Diff"}
MBPP_NOT_NONE = {"check_str", "text_match_three", "text_starta_endb"}
DISABLED = {"os": ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                   "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                   "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"),
            "shutil": ("rmtree", "move", "chown"), "subprocess": ("Popen",), "builtins": ("exit", "quit", "open")}
BLOCKED_MODULES = ("ipdb", "joblib", "resource", "psutil", "tkinter")


class OutOfTime(Exception):
    pass


def polynomial(xs, x):
    return sum(coefficient * math.pow(x, power) for power, coefficient in enumerate(xs))


def pyramid_surface(base_edge, height):  # Mbpp/581's intended reading: height is the apex's distance
    slant = math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 2 * base_edge * slant)


def digit_distance(first, second):  # Mbpp/558: the shorter number padded with leading zeros
    a, b = str(first), str(second)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))


def all_floats(value) -> bool:
    if isinstance(value, float):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, float) for v in value)


def close(out, expected, atol) -> bool:
    """numpy.allclose(out, expected, rtol=1e-7, atol) for numbers and equally shaped nested sequences."""
    if isinstance(expected, (list, tuple)) or isinstance(out, (list, tuple)):
        return (isinstance(out, (list, tuple)) and isinstance(expected, (list, tuple)) and len(out) == len(expected)
                and all(close(o, e, atol) for o, e in zip(out, expected)))
    numbers = (int, float, complex)
    if not (isinstance(out, numbers) and isinstance(expected, numbers)):
        raise TypeError("not numbers")
    if out == expected:
        return True  # also equal infinities
    if any(isinstance(v, float) and (math.isnan(v) or math.isinf(v)) for v in (out, expected)):
        return False
    return abs(out - expected) <= atol + RTOL * abs(expected)


def timed(function, seconds):
    def alarm(signum, frame):
        raise OutOfTime()

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        return function()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def canonical(code, entry_point, inputs, not_none):
    namespace = {}
    exec(code, namespace)
    function, outputs, seconds = namespace[entry_point], [], []
    for arguments in inputs:
        arguments = copy.deepcopy(arguments)
        started = time.time()
        outputs.append(function(*arguments))
        seconds.append(time.time() - started)
    return ([o is not None for o in outputs] if not_none else outputs), seconds


class Unreadable(io.StringIO):
    def read(self, *args, **kwargs):
        raise IOError

    readline = readlines = read

    def readable(self, *args, **kwargs):
        return False


@contextlib.contextmanager
def swallowed():
    sink = Unreadable()
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = sys.stdout = sys.stderr = sink
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved


def disable_destructive():
    import shutil
    import subprocess

    os.environ["OMP_NUM_THREADS"] = "1"  # before os.putenv goes
    modules = {"os": os, "shutil": shutil, "subprocess": subprocess, "builtins": builtins}
    for module, names in DISABLED.items():
        for name in names:
            setattr(modules[module], name, None)
    for name in BLOCKED_MODULES:
        sys.modules[name] = None


def matches(dataset, entry_point, arguments, out, expected, atol):
    """(passed, atol for the next inputs)."""
    exact = out == expected
    if dataset == "mbpp":
        if entry_point == "are_equivalent":
            exact = True
        elif entry_point == "sum_div":
            exact = exact or out == 0
        elif entry_point == "surface_Area":
            exact = exact or abs(out - pyramid_surface(*arguments)) <= atol
        elif entry_point == "digit_distance_nums":
            exact = exact or out == digit_distance(*arguments)
        elif entry_point in MBPP_SET_EQUAL:
            exact = set(out) == set(expected)
        elif entry_point in MBPP_NOT_NONE:
            exact = out == expected if isinstance(out, bool) else expected == (out is not None)
    if dataset == "humaneval" and entry_point == "find_zero":
        return abs(polynomial(*arguments, out)) <= atol, atol
    if atol == 0 and all_floats(expected):
        atol = FLOAT_ATOL
    if exact or atol == 0:
        return bool(exact), atol
    if type(out) is not type(expected):
        return False, atol
    return close(out, expected, atol), atol


def test_set(dataset, solution, entry_point, inputs, expected, reference_seconds, atol):
    """"pass", "fail" or "timeout" for one set of inputs, as evalplus.eval.untrusted_check decides it."""
    limits = [max(PER_INPUT_FLOOR_S, PER_INPUT_FACTOR * t) for t in reference_seconds]
    deadline = time.time() + min(SET_CAP_S, sum(limits)) + SET_SLACK_S
    try:
        with swallowed():
            namespace = {}
            timed(lambda: exec(solution, namespace), deadline - time.time())
            function = namespace[entry_point]
        for arguments, wanted, limit in zip(inputs, expected, limits):
            if time.time() >= deadline:
                return "timeout"
            with swallowed():
                out = timed(lambda: function(*arguments), min(limit, deadline - time.time()))
            passed, atol = matches(dataset, entry_point, arguments, out, wanted, atol)
            if not passed:
                return "fail"
    except OutOfTime:
        return "timeout" if time.time() >= deadline else "fail"
    except BaseException:
        return "fail"
    return "pass"


def main(dataset, solution, reference, entry_point, atol, payload, not_none=False):
    sets = pickle.loads(base64.b64decode(payload))  # {"base": inputs, "plus": inputs}: plus only for the + tasks
    expected = {name: canonical(reference, entry_point, copy.deepcopy(inputs), not_none)
                for name, inputs in sets.items()}
    stdout, workdir = sys.stdout, tempfile.mkdtemp()
    os.chdir(workdir)
    disable_destructive()
    statuses = {}
    for name, inputs in sets.items():
        outputs, seconds = expected[name]
        statuses[name] = test_set(dataset, solution, entry_point, inputs, outputs, seconds, atol)
        if statuses[name] != "pass":
            break  # the verdict needs every set: the rest is not run
    stdout.write("\nevalplus " + " ".join(f"{name}={statuses.get(name, 'skipped')}" for name in sets) + "\n")
    stdout.flush()
    if any(status != "pass" for status in statuses.values()):
        raise SystemExit(1)
