"""FIM properties. Every FIM document holds each sentinel once, in the order prefix < suffix < middle; the
pieces are cut at character positions and tokenized separately (prefix + middle give back the original text,
the suffix is the original continuation, cut at its end to pay for the sentinels); every segment keeps its
length and place, so windows keep their exact length (property test over thousands of repo-level windows);
PSM is the default; rate and SPM share match; same seed and index give the same sample; repo-level documents
get FIM in the last file only; through megatron: loss masks do not depend on read order, the dataset-level
rate matches data.fim_rate for code and text sources get none."""
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from data.config import DataConfig, DataSource
from data.documents import repo_documents
from data.fim import FIMSpec, apply_fim, sample_rng
from data.pipeline import PrepareOptions, prepare
from data.tokenizer import (
    EOD, FILE_SEP, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS, load_tokenizer, newline_token_mask,
)

P, M, S, PAD, E, SEP = (SPECIAL_TOKENS[k] for k in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, EOD, FILE_SEP))
STDLIB = Path(sysconfig.get_paths()["stdlib"])
MIN_DOCUMENT = 16  # tokens; rates count documents that can hold the 3 sentinels and some text


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(backend="tiktoken")


@pytest.fixture(scope="module")
def newline_mask(tok):
    return newline_token_mask(tok)


@pytest.fixture(scope="module")
def snippets(tok):
    """~2,500 canonical documents: random 3-40 line spans of stdlib modules, tokenized whole."""
    rng = np.random.default_rng(0)
    lines = []
    for path in sorted((STDLIB / "json").glob("*.py")) + sorted((STDLIB / "email").glob("*.py")):
        lines += path.read_text(encoding="utf-8").splitlines(keepends=True)
    texts = []
    for _ in range(2500):
        start = int(rng.integers(0, len(lines) - 40))
        text = "".join(lines[start:start + int(rng.integers(3, 40))])
        if text.strip():
            texts.append(text)
    return texts, [ids.astype(np.int64) for ids in tok.encode_batch(texts)]


def split_fim(segment):
    """Independent inverse of one output segment: (kind, pre, mid, suf ids) or (None, segment)."""
    segment = [t for t in segment if t != PAD]
    counts = [segment.count(x) for x in (P, M, S)]
    if counts == [0, 0, 0]:
        return None, segment, [], []
    assert counts == [1, 1, 1], f"each sentinel exactly once, got {counts}"
    p, s, m = segment.index(P), segment.index(S), segment.index(M)
    assert p < s < m, "sentinel order prefix < suffix < middle"
    if s == p + 1:  # SPM: P S suf M pre+mid (the split of pre+mid is not visible: report it as the middle)
        return "spm", segment[m + 1:], [], segment[s + 1:m]
    return "psm", segment[p + 1:s], segment[m + 1:], segment[s + 1:m]


def check_segment(tok, original, produced):
    """Same length; a FIM segment's prefix+middle is original text (its prefix may have paid tokens from its
    start) directly followed by the suffix (which may have paid tokens from its end)."""
    assert len(produced) == len(original)
    kind, pre, mid, suf = split_fim(list(produced))
    if kind is None:
        assert list(produced) == list(original)
        return None
    data = tok.decode_bytes(original)
    head, tail = tok.decode_bytes(pre) + tok.decode_bytes(mid), tok.decode_bytes(suf)
    at = data.find(head)
    while at >= 0 and not data.startswith(tail, at + len(head)):
        at = data.find(head, at + 1)
    assert at >= 0, "pieces are not the original text in order"
    pads = list(produced).count(PAD)
    assert pads == 0 or list(produced[-pads:]) == [PAD] * pads, "pads only at the segment's end"
    return kind


def pack(docs, rng, length):
    """A packed window from random documents (eod-separated), like GPTDataset's."""
    parts = []
    while sum(map(len, parts)) < length:
        parts.append(np.append(docs[int(rng.integers(len(docs)))], E))
    return np.concatenate(parts)[:length]


def segments(window):
    eods = np.flatnonzero(window == E)
    return np.split(window, eods)


def test_psm_default_character_cuts_rate_and_share(tok, snippets):
    assert FIMSpec().spm_rate == 0.0 and DataConfig().fim_spm_rate == 0.0  # Qwen prompts PSM only
    texts, docs = snippets
    spec = FIMSpec(rate=0.5, spm_rate=0.3)
    data_rng = np.random.default_rng(1)
    kinds = {"psm": 0, "spm": 0, None: 0}
    inside_token = 0
    for index in range(600):
        window = pack(docs, data_rng, 1025)
        out, done = apply_fim(window, spec, sample_rng(7, 0, index), tok)
        assert len(out) == len(window) and out.dtype == window.dtype
        assert np.array_equal(np.flatnonzero(out == E), np.flatnonzero(window == E)), "segments keep their place"
        found = 0
        for original, produced in zip(segments(window), segments(out)):
            kind = check_segment(tok, original[original != E], produced[produced != E])
            found += kind is not None
            if len(original) > MIN_DOCUMENT:
                kinds[kind] += 1
            if kind == "psm":
                _, pre, _, _ = split_fim(list(produced[produced != E]))
                inside_token += pre != list(original[original != E][: len(pre)])
        assert found == done
    total = sum(kinds.values())
    fim = kinds["psm"] + kinds["spm"]
    assert total > 3000
    assert abs(fim / total - 0.5) < 0.02, kinds
    assert abs(kinds["spm"] / fim - 0.3) < 0.03, kinds
    # Character cuts: many prefixes end inside what was one token of the whole document.
    assert inside_token > 0.2 * kinds["psm"], (inside_token, kinds)


def test_same_seed_same_sample_other_index_other_sample(tok, snippets):
    window = pack(snippets[1], np.random.default_rng(1), 2049)
    spec = FIMSpec(rate=0.9)
    a = apply_fim(window, spec, sample_rng(1234, 0, 42), tok)[0]
    assert np.array_equal(a, apply_fim(window, spec, sample_rng(1234, 0, 42), tok)[0])
    assert not np.array_equal(a, apply_fim(window, spec, sample_rng(1234, 0, 43), tok)[0])
    assert not np.array_equal(a, apply_fim(window, spec, sample_rng(1235, 0, 42), tok)[0])


def test_rate_zero_pads_and_text_round_trip(tok):
    window = np.array(tok.encode("x = 1\n") + [E] + tok.encode("y = 2\n"), dtype=np.int64)
    assert np.array_equal(apply_fim(window, FIMSpec(rate=0.0), sample_rng(0, 0, 0), tok)[0], window)
    # A document tokenized character by character re-tokenizes shorter: the saving becomes <|fim_pad|>.
    text = "def add(a, b):\n    return a + b\n"
    chars = np.array([t for c in text for t in tok.encode(c)], dtype=np.int64)
    out, done = apply_fim(chars, FIMSpec(rate=1.0), sample_rng(0, 0, 0), tok)
    assert done == 1 and len(out) == len(chars) and out[-1] == PAD
    kind, pre, mid, suf = split_fim(list(out))
    assert kind is not None and tok.decode(pre + mid + suf) == text  # nothing lost when nothing is paid
    for i, path in enumerate(sorted((STDLIB / "json").glob("*.py"))):
        source = path.read_text(encoding="utf-8")
        ids = np.array(tok.encode(source), dtype=np.int64)
        out, done = apply_fim(ids, FIMSpec(rate=1.0), sample_rng(3, 0, i), tok)
        assert done == 1
        decoded = tok.decode(out)  # the sentinels are real special ids: they decode as the format's text
        assert decoded.startswith(FIM_PREFIX) and decoded.index(FIM_SUFFIX) < decoded.index(FIM_MIDDLE)
        kind, pre, mid, suf = split_fim(list(out))
        assert source.startswith(tok.decode(pre) + tok.decode(mid))
        assert pre == tok.encode(tok.decode(pre)), "each piece is tokenized on its own"


def test_repo_level_fim_only_in_last_file(tok, newline_mask):
    files = [("a.py", "import os\n", "python", "a"), ("pkg/b.py", "def b():\n    return 2\n", "python", "b"),
             ("pkg/c.py", "def c(x):\n    return x + 1\n\n\n" + "print(c(1))\n" * 20, "python", "c")]
    doc = repo_documents(tok, "demo", files, seq_length=0)[0].tokens.astype(np.int64)
    last_sep = int(np.flatnonzero(doc == SEP)[-1])
    header_text = tok.decode(doc[: last_sep + 1]) + "pkg/c.py\n"
    spec = FIMSpec(rate=1.0, repo_level=True)
    window = np.concatenate([doc, tok.encode("no file separator here\n"), [E], tok.encode("tail\n")])
    for index in range(30):
        out, done = apply_fim(window, spec, sample_rng(0, 0, index), tok, newline_mask)
        first, second = segments(out)[:2]
        assert done == 1
        p = list(first).index(P)
        assert tok.decode(first[:p]) == header_text  # FIM starts after the last file's path line
        check_segment(tok, doc[:-1], first)
        assert second[1:].tolist() == tok.encode("no file separator here\n")  # no <|file_sep|>: never FIM


def test_repo_windows_exact_length_property(tok, newline_mask):
    """Thousands of 2,048-token windows over repo-format documents (1-30 files each), rate 0.5: every window
    keeps its exact length and every eod and <|file_sep|> its position."""
    rng = np.random.default_rng(0)
    words = "def class return import self x y value data for in if else while print None True".split()
    stream = []
    for repo in range(80):
        files = []
        for i in range(int(rng.integers(1, 31))):
            body = "\n".join("    " * int(rng.integers(0, 3)) + " ".join(rng.choice(words, int(rng.integers(1, 8))))
                             for _ in range(int(rng.integers(1, 40))))
            files.append((f"pkg/m{i}.py", body, "python", "o"))
        stream += [d.tokens for d in repo_documents(tok, f"repo{repo}", files, seq_length=0)]
    stream = np.concatenate(stream).astype(np.int64)
    spec = FIMSpec(rate=0.5, repo_level=True)
    fim = 0
    for index in range(2000):
        offset = int(rng.integers(0, len(stream) - 2049))
        window = stream[offset:offset + 2049]
        out, done = apply_fim(window, spec, sample_rng(1, 0, index), tok, newline_mask)
        assert len(out) == 2049, index
        for special in (E, SEP):
            assert np.array_equal(np.flatnonzero(out == special), np.flatnonzero(window == special)), index
        fim += done
    assert fim > 700  # not vacuous: most windows hold a FIM document


def _write_sources(tmp_path, tok):
    """code: stdlib modules prepared as code; text: prose prepared with --mode text; chars: code tokenized
    character by character (FIM re-tokenizes it shorter, so its samples carry <|fim_pad|>)."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    common = dict(workers=1, progress=False)
    prepare(PrepareOptions(inputs=[STDLIB / "json", STDLIB / "email"], output_prefix=tmp_path / "code", **common))
    prose = [{"text": f"Paragraph {i}: the quick brown fox jumps over the lazy dog. " * (1 + i % 7)}
             for i in range(300)]
    (tmp_path / "prose.jsonl").write_text("\n".join(json.dumps(p) for p in prose) + "\n")
    prepare(PrepareOptions(inputs=[tmp_path / "prose.jsonl"], output_prefix=tmp_path / "text", mode="text", **common))
    builder = IndexedDatasetBuilder(str(tmp_path / "chars.bin"), dtype=np.int32)
    for path in sorted((STDLIB / "json").glob("*.py")) * 4:
        text = path.read_text(encoding="utf-8")[:3000]
        doc = np.array([t for c in text for t in tok.encode(c)] + [E], dtype=np.int32)
        builder.add_document(doc, [len(doc)])
    builder.finalize(str(tmp_path / "chars.idx"))


def test_fim_dataset_through_megatron(tmp_path, gloo, tok):
    """FIMGPTDataset from build_pretrain_datasets: exact lengths, pads masked whatever the read order, the
    dataset-level FIM rate of code within 0.05 of data.fim_rate, none for text, identical after a rebuild."""
    from data.datasets import build_pretrain_datasets, source_fim_rate
    from data.fim import FIMGPTDataset

    _write_sources(tmp_path, tok)
    sources = [DataSource("code", str(tmp_path / "code"), 0.6), DataSource("text", str(tmp_path / "text"), 0.2),
               DataSource("chars", str(tmp_path / "chars"), 0.2)]
    cfg = DataConfig(sources=sources, split="90,10,0", fim_rate=0.5, cache_dir=str(tmp_path / "cache"))
    assert [source_fim_rate(s, cfg) for s in sources] == [0.5, 0.0, 0.5]
    assert source_fim_rate(DataSource("text", str(tmp_path / "text"), 1.0, fim_rate=0.25), cfg) == 0.25
    build = lambda: build_pretrain_datasets(cfg, 256, 600, 40, seed=5, tokenizer=tok)  # noqa: E731
    train, valid = build()
    assert all(isinstance(d, FIMGPTDataset) for d in train.datasets) and valid is not None
    names = [s.name for s in sources]
    documents = dict.fromkeys(names, 0)
    fim_documents = dict.fromkeys(names, 0)
    padded = []
    masks = []
    for i in range(len(train)):
        item = train[i]
        assert all(item[k].shape == (256,) for k in ("tokens", "labels", "loss_mask", "position_ids"))
        masked = (item["labels"] == PAD) | (item["tokens"] == PAD)
        assert bool((item["loss_mask"][masked] == 0).all())
        name = names[int(item["dataset_id"])]
        text = np.append(item["tokens"].numpy(), item["labels"][-1].item())
        for segment in segments(text):
            body = segment[segment != E]
            if len(body) > MIN_DOCUMENT:
                documents[name] += 1
                fim_documents[name] += int((body == P).any())
        if bool(masked.any()):
            padded.append(i)
        masks.append(item["loss_mask"])
    rates = {name: fim_documents[name] / documents[name] for name in names}
    assert documents["code"] > 300 and abs(rates["code"] - cfg.fim_rate) < 0.05, (rates, documents)
    assert rates["text"] == 0.0, rates  # prepared with --mode text: plain next-token prediction
    # Read order: a fresh dataset whose first sample carries <|fim_pad|> gives every sample the same mask.
    assert padded, "no sample with <|fim_pad|>: the read-order check would be vacuous"
    again, _ = build()
    order = [padded[0]] + [i for i in range(len(train)) if i != padded[0]]
    for i in order:
        item = again[i]
        assert np.array_equal(item["loss_mask"], masks[i]), f"sample {i}'s loss mask depends on the read order"
    for i in range(0, len(train), 7):
        assert all(np.array_equal(train[i][k], again[i][k]) for k in ("tokens", "labels"))
