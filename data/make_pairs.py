"""Build a DPO preference set from real code: each Python function against a copy of it with one injected bug.

    python data/make_pairs.py --input DIR_OR_FILE [...] --output pairs.jsonl [--limit N] [--max-chars C] [--seed S]

For every top-level function of the .py files under the inputs (sorted paths, so the set is reproducible)
whose source is at most --max-chars characters: prompt = "Write the Python function `SIGNATURE` (module M).",
chosen = the function, rejected = the same function with one bug, each in a ```python block. Both replies are
ast.unparse'd from the same parse, so the only difference between them is the bug (not comments, quoting or
layout, which a model could learn to tell apart instead). Bugs, one per pair, picked with a seeded RNG among
those the function admits: a comparison inverted (== / !=, < / >=, > / <=, in / not in, is / is not),
`and` / `or` swapped, True / False swapped, an integer constant off by one, a returned value replaced by None.
Files that do not parse (other Python versions' test data) and functions that admit no bug are skipped.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import random
import sys
from pathlib import Path

COMPARE_FLIPS = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
                 ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _sites(function: ast.FunctionDef) -> list[tuple[str, ast.AST]]:
    """Every (bug kind, node) the function admits, in walk order."""
    sites = []
    for node in ast.walk(function):
        if isinstance(node, ast.Compare) and type(node.ops[0]) in COMPARE_FLIPS:
            sites.append(("compare", node))
        elif isinstance(node, ast.BoolOp):
            sites.append(("boolop", node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            sites.append(("bool", node))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append(("off_by_one", node))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            sites.append(("return_none", node))
    return sites


def _inject(kind: str, node: ast.AST) -> None:
    if kind == "compare":
        node.ops[0] = COMPARE_FLIPS[type(node.ops[0])]()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "bool":
        node.value = not node.value
    elif kind == "off_by_one":
        node.value += 1
    else:
        node.value = ast.Constant(None)


def broken_copy(function: ast.FunctionDef, rng: random.Random):
    """(source with one bug, bug kind), or None when the function admits none."""
    sites = _sites(function)
    if not sites:
        return None
    index = rng.randrange(len(sites))
    mutant = copy.deepcopy(function)
    kind, node = _sites(mutant)[index]  # the same walk order on the copy
    _inject(kind, node)
    return ast.unparse(mutant), kind


def pairs_from_file(path: Path, module: str, rng: random.Random, max_chars: int):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef):
            continue
        source = ast.unparse(function)
        if len(source) > max_chars:
            continue
        broken = broken_copy(function, rng)
        if broken is None or broken[0] == source:
            continue
        signature = f"{function.name}({ast.unparse(function.args)})"
        yield {"prompt": f"Write the Python function `{signature}` (module {module}).",
               "chosen": f"```python\n{source}\n```", "rejected": f"```python\n{broken[0]}\n```", "bug": broken[1]}


def python_files(inputs: list[Path]):
    for root in inputs:
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            base = root.parent if root.is_file() else root
            yield path, ".".join(path.relative_to(base).with_suffix("").parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", type=Path, required=True, help=".py files or directories")
    parser.add_argument("--output", type=Path, required=True, help="JSONL file to write")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many pairs (0: all)")
    parser.add_argument("--max-chars", type=int, default=400, help="longest function source kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    count = 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as sink:
        for path, module in python_files(args.input):
            for pair in pairs_from_file(path, module, rng, args.max_chars):
                sink.write(json.dumps(pair) + "\n")
                count += 1
                if count == args.limit:
                    break
            if count == args.limit:
                break
    print(f"wrote {count} pairs to {args.output}", file=sys.stderr)
    return 0 if count else 1


if __name__ == "__main__":
    sys.exit(main())
