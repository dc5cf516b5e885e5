"""Acceptance 3: FIM properties. Every FIM document holds each sentinel once, in the order
prefix < suffix < middle; removing the sentinels and re-ordering gives back the original document (tokens
and text); the rate and PSM/SPM share match over 10k documents; same seed and index give the same sample;
windows keep their exact length; repo-level documents get FIM in the last file only."""
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from data.config import DataConfig, DataSource
from data.documents import repo_documents
from data.fim import FIMSpec, apply_fim, sample_rng
from data.tokenizer import EOD, FILE_SEP, FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, SPECIAL_TOKENS, load_tokenizer, newline_token_mask

P, M, S, PAD, E = (SPECIAL_TOKENS[k] for k in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, EOD))
SENTINELS = (P, M, S)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(backend="tiktoken")


def undo(segment):
    """Independent inverse: (original tokens, 'psm'|'spm'|None) from one output segment."""
    segment = list(segment)
    counts = [segment.count(x) for x in SENTINELS]
    if counts == [0, 0, 0]:
        return segment, None
    assert counts == [1, 1, 1], f"each sentinel exactly once, got {counts}"
    p, s, m = segment.index(P), segment.index(S), segment.index(M)
    assert p < s < m, "sentinel order prefix < suffix < middle"
    head = segment[:p]
    if s == p + 1:  # SPM: P S suf M pre+mid (PSM with an empty prefix reads the same and inverts the same)
        return head + segment[m + 1:] + segment[s + 1:m], "spm"
    return head + segment[p + 1:s] + segment[m + 1:] + segment[s + 1:m], "psm"


def segments_of(window):
    body = list(window)
    while body and body[-1] == PAD:
        body.pop()
    out, current = [], []
    for t in body:
        if t == E:
            out.append(current)
            current = []
        else:
            current.append(t)
    return out + [current]


def random_window(rng, length):
    """A packed window: documents of 20..400 tokens from a 1000-id vocab, separated by eod."""
    parts = []
    while sum(map(len, parts)) < length:
        parts.append(list(rng.integers(0, 1000, rng.integers(20, 400))) + [E])
    return np.array(sum(parts, [])[:length], dtype=np.int64)


def test_properties_rate_and_share_over_10k_documents():
    spec = FIMSpec(rate=0.5, spm_rate=0.3)
    data_rng = np.random.default_rng(0)
    complete = fim = spm = 0
    for index in range(2500):
        window = random_window(data_rng, 1025)
        out, done = apply_fim(window, spec, sample_rng(7, 0, index))
        assert len(out) == len(window) and out.dtype == window.dtype
        original = segments_of(window)
        produced = segments_of(out)
        assert len(produced) <= len(original)
        for k, segment in enumerate(produced):
            tokens, kind = undo(segment)
            if k < len(produced) - 1:  # complete documents: exact inverse
                assert tokens == original[k]
                complete += 1
                fim += kind is not None
                spm += kind == "spm"
            else:  # the tail paid for the sentinels: a prefix of the original
                assert tokens == original[k][: len(tokens)]
        assert done == sum(undo(s)[1] is not None for s in produced)
    assert complete >= 10_000
    assert abs(fim / complete - 0.5) < 0.02, fim / complete
    assert abs(spm / fim - 0.3) < 0.03, spm / fim


def test_same_seed_same_sample_other_index_other_sample():
    window = random_window(np.random.default_rng(1), 2049)
    spec = FIMSpec(rate=0.9)
    a = apply_fim(window, spec, sample_rng(1234, 0, 42))[0]
    assert np.array_equal(a, apply_fim(window, spec, sample_rng(1234, 0, 42))[0])
    assert not np.array_equal(a, apply_fim(window, spec, sample_rng(1234, 0, 43))[0])
    assert not np.array_equal(a, apply_fim(window, spec, sample_rng(1235, 0, 42))[0])


def test_rate_zero_and_padding_when_tail_cannot_pay():
    window = np.array([5, 6, 7, E, 8, 9], dtype=np.int64)
    assert np.array_equal(apply_fim(window, FIMSpec(rate=0.0), sample_rng(0, 0, 0))[0], window)
    # Rate 1: both documents want FIM (6 tokens) but the window has 6 tokens: the tail is dropped and what
    # cannot be shown is <|fim_pad|>. Length is kept and every sentinel group stays whole.
    out, _ = apply_fim(window, FIMSpec(rate=1.0), sample_rng(0, 0, 0))
    assert len(out) == 6
    for segment in segments_of(out):
        undo(segment)


def test_text_roundtrip_on_real_code(tok):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    spec = FIMSpec(rate=1.0, spm_rate=0.5)
    for i, path in enumerate(sorted((stdlib / "json").glob("*.py"))):
        text = path.read_text(encoding="utf-8")
        ids = np.array(tok.encode(text) + [E] + [E] * 3, dtype=np.int64)  # 3 spare tokens pay for the sentinels
        out, done = apply_fim(ids, spec, sample_rng(3, 0, i))
        assert done == 1
        first = segments_of(out)[0]
        tokens, kind = undo(first)
        assert kind in ("psm", "spm")
        assert tok.decode_bytes(tokens) == text.encode("utf-8")
        # The sentinels are real special ids: decoding shows them as the format's text.
        decoded = tok.decode(first)
        assert decoded.index(FIM_PREFIX) < decoded.index(FIM_SUFFIX) < decoded.index(FIM_MIDDLE)


def test_repo_level_fim_only_in_last_file(tok):
    files = [("a.py", "import os\n", "python", "a"), ("pkg/b.py", "def b():\n    return 2\n", "python", "b"),
             ("pkg/c.py", "def c(x):\n    return x + 1\n\n\nprint(c(1))\n", "python", "c")]
    doc = repo_documents(tok, "demo", files, seq_length=0)[0].tokens.astype(np.int64)
    last_sep = int(np.flatnonzero(doc == SPECIAL_TOKENS[FILE_SEP])[-1])
    header_text = tok.decode(doc[: last_sep + 1]) + "pkg/c.py\n"
    spec = FIMSpec(rate=1.0, repo_level=True)
    mask = newline_token_mask(tok)
    window = np.concatenate([doc, tok.encode("no file separator here"), [E], [7] * 10])  # the tail pays
    for index in range(50):
        out, done = apply_fim(window, spec, sample_rng(0, 0, index), mask)
        first, second = segments_of(out)[:2]
        assert done == 1
        p = first.index(P)
        assert tok.decode(first[:p]) == header_text  # FIM starts after the last file's path line
        assert undo(first)[0] == list(doc[:-1])
        assert second == tok.encode("no file separator here")  # no <|file_sep|>: never rearranged



def test_fim_dataset_through_megatron(tmp_path, gloo):
    """FIMGPTDataset from build_pretrain_datasets: exact lengths, pads masked, identical after a rebuild."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from data.datasets import build_pretrain_datasets
    from data.fim import FIMGPTDataset

    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(str(tmp_path / "code.bin"), dtype=np.int32)
    for _ in range(300):
        doc = np.append(rng.integers(0, 1000, rng.integers(5, 120)), E)
        builder.add_document(doc, [len(doc)])
    builder.finalize(str(tmp_path / "code.idx"))
    cfg = DataConfig(sources=[DataSource("code", str(tmp_path / "code"), 1.0)], split="90,10,0",
                     fim_rate=0.5, cache_dir=str(tmp_path / "cache"))
    tok = load_tokenizer("qwen2.5", backend="tiktoken")
    build = lambda: build_pretrain_datasets(cfg, 64, 400, 40, seed=5, tokenizer=tok)  # noqa: E731
    train, valid = build()
    assert isinstance(train.datasets[0], FIMGPTDataset) and valid is not None
    fim_samples = 0
    for i in range(len(train)):
        item = train[i]
        assert all(item[k].shape == (64,) for k in ("tokens", "labels", "loss_mask", "position_ids"))
        assert bool((item["loss_mask"][item["labels"] == PAD] == 0).all())
        fim_samples += int((item["tokens"] == P).any())
    assert 0.3 < fim_samples / len(train) < 0.95
    again, _ = build()
    for i in range(0, len(train), 7):
        assert all(np.array_equal(train[i][k], again[i][k]) for k in ("tokens", "labels", "loss_mask"))
