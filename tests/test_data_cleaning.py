"""Cleaning in data/prepare.py: decontamination (planted HumanEval solutions in real files are dropped, near-misses
kept, against a brute-force 10-gram reference), near-duplicate removal (MinHash estimates against exact Jaccard,
recall/precision on the bench corpus, first copy kept for any worker count) and the quality rules (each rule on
both sides of its threshold, per-language counts)."""
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from bench.near_dedup import build_corpus, jaccard, measure, shingle_set
from data.decontaminate import NGRAM, BenchmarkIndex, default_index
from data.filters import FilterConfig
from data.languages import language_of
from data.near_dedup import Deduplicator, NearDedupConfig, signature
from data.pipeline import PrepareOptions, prepare, read_back
from data.prepare import parse_args
from data.quality import QualityConfig, check_quality
from data.shards import merge, plan, shard_prefix
from data.tokenizer import load_tokenizer
from evaluation.contamination import benchmark_documents
from evaluation.tasks import load_tasks

STDLIB = Path(sysconfig.get_paths()["stdlib"])
REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_FILES = ["textwrap.py", "json/decoder.py", "json/encoder.py", "shlex.py", "fnmatch.py", "colorsys.py",
              "bisect.py", "heapq.py"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(backend="tiktoken")


def run(inputs, prefix, workers=1, **filter_settings):
    options = PrepareOptions(inputs=inputs, output_prefix=prefix, workers=workers, progress=False,
                             filters=FilterConfig(**filter_settings))
    return prepare(options), json.loads(Path(f"{prefix}.report.json").read_text())


def expected_tokens(tok, texts):
    return [np.array(list(tok.encode(text)) + [tok.eod]) for text in texts]


def solutions():
    """HumanEval problems with a reference of 10+ words: (task id, the function's def line, full text, body)."""
    found = []
    for problem in load_tasks(["humaneval"])["humaneval"]:
        def_line = re.findall(r"^def \w+.*$", problem.prompt, re.M)[-1]
        if len(problem.reference.split()) >= 2 * NGRAM:
            found.append((problem.task_id, def_line, problem.prompt + problem.reference, problem.reference))
    return found


def plant_directory(root: Path):
    """Real files; three carry a HumanEval solution (whole problem, body only, problem in the middle), one a
    GSM8K test problem in a comment, two a near-miss (the same def line with another body). Returns
    {name: text}, contaminated names -> task id."""
    chosen = solutions()[:6]
    files, contaminated = {}, {}
    for index, relative in enumerate(REAL_FILES):
        text = (STDLIB / relative).read_text(encoding="utf-8")
        name = relative.replace("/", "_")
        if index < 3:
            task_id, def_line, problem, body = chosen[index]
            planted = [problem, f"{def_line}\n{body}", problem][index]
            cut = len(text) // 2 if index == 2 else len(text)
            text = text[:cut] + "\n\n" + planted + "\n" + text[cut:]
            contaminated[name] = task_id
        elif index == 3:
            _, task_id, problem = next(document for document in benchmark_documents() if document[0] == "gsm8k")
            text += "\n" + "".join(f"# {line}\n" for line in problem.splitlines())
            contaminated[name] = task_id
        elif index < 6:
            _, def_line, _, _ = chosen[index]
            text += f"\n\n{def_line}\n    # another body: same name, unrelated code\n    return sorted(set(locals()))\n"
        files[name] = text
        (root / name).write_text(text, encoding="utf-8")
    return files, contaminated


def test_index_equals_brute_force_ngrams():
    """find() agrees with a set of 10-word tuples over every benchmark text, on real files and planted ones."""
    reference = set()
    for _, _, text in benchmark_documents():
        words = text.split()
        reference.update(tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1))
    index = default_index()
    assert (index.tasks["humaneval"], index.tasks["mbpp"], index.tasks["gsm8k"]) == (164, 378, 1319)
    documents = [p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("*.py"))[:150]]
    documents += [f"x = 1\n{text}\n" for _, _, text, _ in solutions()[:20]]
    documents += [f"{body}\n" for _, _, _, body in solutions()[:20]]
    hits = 0
    for text in documents:
        words = text.split()
        overlaps = any(tuple(words[i:i + NGRAM]) in reference for i in range(len(words) - NGRAM + 1))
        found = index.find(text)
        assert (found is not None) == overlaps, text[:200]
        hits += overlaps
    assert hits >= 40  # the planted 40 at least: the comparison is not vacuous
    assert BenchmarkIndex([]).find(documents[-1]) is None


def test_planted_solutions_dropped_near_misses_kept(tmp_path, tok):
    root = tmp_path / "src"
    root.mkdir()
    files, contaminated = plant_directory(root)
    report, data = run([root], tmp_path / "clean", workers=2)
    entry = data["skipped"]["contaminated"]
    # A HumanEval solution is in every task built on HumanEval; the first registered one is named.
    per_benchmark = entry["per_benchmark"]
    assert entry["count"] == 4 and sum(per_benchmark.values()) == 4 and per_benchmark["gsm8k"] == 1, per_benchmark
    assert set(per_benchmark) - {"gsm8k"} <= {"humaneval", "humaneval_plus", "fim_singleline"}, per_benchmark
    for name, task_id in contaminated.items():
        assert any(e.startswith(f"{name}: ") and task_id in e for e in entry["examples"]), entry
    kept = [text for name, text in sorted(files.items()) if name not in contaminated]
    assert len(kept) == 4  # the two near-misses among them
    got = read_back(tmp_path / "clean")
    assert len(got) == len(kept) and all(np.array_equal(a, b) for a, b in zip(got, expected_tokens(tok, kept)))

    _, off = run([root], tmp_path / "off", decontaminate=False)  # negative control: every file stays
    assert off["documents"] == len(files) and "contaminated" not in off["skipped"]


def test_minhash_estimates_exact_jaccard():
    """datasketch's estimate from our signatures is within 0.1 (> 3 sigma at 256 permutations) of the exact
    Jaccard of the shingle sets, from near-identical to unrelated pairs."""
    config = NearDedupConfig()
    texts = [(STDLIB / name).read_text(encoding="utf-8") for name in REAL_FILES]
    pairs = [(t, t[: len(t) * k // 10] + texts[(i + 1) % len(texts)][: len(t) * (10 - k) // 10])
             for i, t in enumerate(texts) for k in (3, 6, 9)]
    pairs += [(texts[0], texts[1]), (texts[2], texts[3])]
    exact = [jaccard(shingle_set(a, 5), shingle_set(b, 5)) for a, b in pairs]
    estimate = [float(np.mean(signature(a, config) == signature(b, config))) for a, b in pairs]
    assert max(abs(x - y) for x, y in zip(exact, estimate)) < 0.1, list(zip(exact, estimate))
    assert min(exact) < 0.2 and max(exact) > 0.8  # the pairs span the range


def test_near_dedup_bench_recall_and_precision():
    corpus, similarity = build_corpus(150, 5)
    result = measure(corpus, similarity, NearDedupConfig())
    assert result["recall"] >= 0.95 and result["precision"] >= 0.99, result
    assert result["copies"] == 150 and result["removed"] >= 143


def test_near_copies_first_kept_for_any_worker_count(tmp_path, tok):
    """A renamed copy sorted before its original is the one kept; 1 and 2 workers write identical outputs."""
    root = tmp_path / "src"
    root.mkdir()
    original = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    copy = original.replace("TextWrapper", "LineWrapper")
    texts = {"a_copy.py": copy, "b_original.py": original, "c_other.py": (STDLIB / "shlex.py").read_text()}
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")
    assert 0.7 <= jaccard(shingle_set(copy, 5), shingle_set(original, 5)) < 1.0
    _, one = run([root], tmp_path / "one", workers=1)
    _, two = run([root], tmp_path / "two", workers=2)
    assert one["skipped"]["near_duplicate"] == {"count": 1, "examples": ["b_original.py: near copy of a_copy.py (kept)"]}
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"one{suffix}").read_bytes() == (tmp_path / f"two{suffix}").read_bytes()
    got = read_back(tmp_path / "one")
    assert all(np.array_equal(a, b) for a, b in zip(got, expected_tokens(tok, [copy, texts["c_other.py"]])))
    _, off = run([root], tmp_path / "off", near_dedup=NearDedupConfig(enabled=False))
    assert off["documents"] == 3


PYTHON = "import os\n\n\ndef main():\n    return os.getcwd()\n"


@pytest.mark.parametrize("text, language, reason", [
    ("# x\n# y\n# Code generated by protoc. DO NOT EDIT.\n" + PYTHON, "python", "auto_generated"),
    ("\n" * 5 + "# generated by hand, once\n" + PYTHON, "python", None),  # marker below the 5-line header
    ('{"k": [\n' + '  "word",\n' * 600 + '  "end"]}\n', "json", "data_file"),  # 6,018 characters
    ('{"k": [\n' + '  "word",\n' * 450 + '  "end"]}\n', "json", None),  # 4,518
    ('x = """' + "word\n" * 1200 + '"""\n', "python", None),  # the size cap is for data formats only
    (PYTHON + "BLOB = '" + "QUJD" * 300 + "'\n", "python", "encoded_data"),  # 1,200 base64 characters
    (PYTHON + "BLOB = '" + "QUJD" * 200 + "'\n" + PYTHON * 40, "python", None),  # 800: under both limits
    (PYTHON + "T = [" + ", ".join(str(i) for i in range(400)) + "]\n", "python", "encoded_data"),
    (PYTHON + "T = [" + ", ".join(str(i) for i in range(20)) + "]\n", "python", None),
    ("-- ;; ** //\n" * 20 + "a = 1\n", "python", "low_alphanumeric"),
    (("x = 1; " * 17 + "\n") * 10, "python", "long_mean_line"),  # 120 characters a line
    (("x = 1; " * 13 + "\n") * 10, "python", None),  # 92
])
def test_quality_rules(text, language, reason):
    assert check_quality(text, language, QualityConfig())[0] == reason
    assert check_quality(text, language, QualityConfig(enabled=False)) == (None, "")


def test_quality_in_report_per_language(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    files = {
        "gen.go": "// Code generated by stringer; DO NOT EDIT.\n\npackage main\n",
        "data.json": json.dumps({"rows": [{"id": i, "name": f"row {i}"} for i in range(400)]}, indent=1),
        "ok.zig": "const std = @import(\"std\");\npub fn main() void {}\n",
        "Makefile": "all:\n\tcc -o app main.c\n",
        "keep.sol": "pragma solidity ^0.8.0;\ncontract A { uint x; }\n",
        "ascii.py": "#" * 40 + "\n" + "# -- == -- == --\n" * 10 + "x = 1\n",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    _, data = run([root], tmp_path / "q")
    assert data["skipped"]["auto_generated"]["per_language"] == {"go": 1}
    assert data["skipped"]["data_file"]["per_language"] == {"json": 1}
    assert data["skipped"]["low_alphanumeric"]["per_language"] == {"python": 1}
    assert sorted(data["languages"]) == ["makefile", "solidity", "zig"]
    assert [language_of(p) for p in ("a.ZIG", "x/Dockerfile", "k.kt", "m.ml", "z.unknown")] == [
        "zig", "dockerfile", "kotlin", "ocaml", "other"]


def test_sharded_run_equals_one_machine(tmp_path):
    """Two shard processes at a time stand in for nodes (sign, then write); a near-copy whose original is in the
    other shard is still removed; the shards in order, and their merge, are the one-machine run token for token."""

    root = tmp_path / "src"
    root.mkdir()
    original = (STDLIB / "textwrap.py").read_text(encoding="utf-8")
    files = {"a_textwrap.py": original, "zz_copy.py": original.replace("TextWrapper", "LineWrapper")}
    files.update({name.replace("/", "_"): (STDLIB / name).read_text(encoding="utf-8") for name in REAL_FILES[1:]})
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    prefix = tmp_path / "out" / "code"
    flags = ["--input", str(root), "--output-prefix", str(prefix), "--no-progress"]

    def both_shards(step):
        processes = [subprocess.Popen([sys.executable, "-m", "data.shards", step, "--num-shards", "2", *flags],
                                      cwd=REPO_ROOT, env={**os.environ, "JOB_COMPLETION_INDEX": str(index)})
                     for index in range(2)]
        assert [p.wait(timeout=600) for p in processes] == [0, 0]

    both_shards("sign")
    plan(prefix, 2, parse_args(flags))
    both_shards("write")
    merge(prefix, 2)
    _, single = run([root], tmp_path / "single")

    shards = [json.loads(Path(f"{shard_prefix(prefix, i, 2)}.report.json").read_text()) for i in range(2)]
    assert shards[0]["documents"] > 0 and "near_duplicate" not in shards[0]["skipped"]
    assert shards[1]["skipped"]["near_duplicate"]["examples"] == ["zz_copy.py: near copy of a_textwrap.py (kept)"]
    assert sum(s["documents"] for s in shards) == single["documents"] == len(files) - 1
    sharded = read_back(shard_prefix(prefix, 0, 2)) + read_back(shard_prefix(prefix, 1, 2))
    expected = read_back(tmp_path / "single")
    assert len(sharded) == len(expected) and all(np.array_equal(a, b) for a, b in zip(sharded, expected))
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == (tmp_path / f"single{suffix}").read_bytes()


def test_documents_without_words_are_not_near_duplicates():
    """The empty shingle set has no signature: punctuation-only documents are not all one cluster, and prose in
    another script has shingles of its own."""
    config = NearDedupConfig()
    assert signature("!!! ??? ...\n", config) is None
    deduplicator = Deduplicator(config)
    first = "".join(f"第{n}句：数据清洗很重要，训练集里不能有评测题目。" for n in range(40))
    second = "".join(f"第{n}句：今天天气很好，我们去公园散步吧，然后回家做饭。" for n in range(40))
    documents = ["!!!\n", "???\n", first, second, first.replace("重要", "关键", 1)]
    decisions = [deduplicator.check(None, signature(text, config), str(n)) for n, text in enumerate(documents)]
    assert decisions[:4] == [None] * 4 and decisions[4] == ("near_duplicate", "near copy of 2 (kept)")
