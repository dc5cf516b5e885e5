"""SFT data (data.sft): the ChatML ids and the assistant-only loss mask against hand-written sequences built from
the tokenizer's own ids, truncation and padding, the split and the epoch order, and counted / strict bad input.

Independent reference for the template: the rendered ChatML string tokenized by tiktoken with the special tokens
allowed (`Encoding.encode(text, allowed_special="all")`), which must give the same ids as our structural
insertion whenever no content starts with whitespace.
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from data.config import DataConfig, DataSource
from data.datasets import DataValidationError
from data.report import BadInputError
from data.sft import ChatTemplate, ConversationStore, build_sft_datasets, make_sample
from data.tokenizer import EOD, IM_END, IM_START, SPECIAL_TOKENS, load_tokenizer

S, E, PAD = SPECIAL_TOKENS[IM_START], SPECIAL_TOKENS[IM_END], SPECIAL_TOKENS[EOD]
SYSTEM, USER = "You are a careful Python programmer.", "Write a function that adds two numbers."
ANSWER = "def add(a, b):\n    return a + b"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(backend="tiktoken")


@pytest.fixture(scope="module")
def template(tok):
    return ChatTemplate(tok)


def turn(tok, role, content):
    """(ids, learnt) of one turn, written out: <|im_start|> role \\n content <|im_end|> \\n."""
    nl = tok.encode("\n")
    ids = [S] + tok.encode(role) + nl + tok.encode(content) + [E] + nl
    learnt = [0] * (1 + len(tok.encode(role)) + len(nl)) + [role == "assistant"] * (len(tok.encode(content)) + 1)
    return ids, learnt + [0] * len(nl)


def expected(tok, messages):
    ids, learnt = [], []
    for role, content in messages:
        i, m = turn(tok, role, content)
        ids += i
        learnt += m
    return ids, [bool(x) for x in learnt]


def as_messages(pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def rendered_ids(tok, pairs):
    text = "".join(f"<|im_start|>{r}\n{c}<|im_end|>\n" for r, c in pairs)
    return tok._tiktoken().encode(text, allowed_special="all")


def test_system_user_assistant_ids_and_mask(tok, template):
    pairs = [("system", SYSTEM), ("user", USER), ("assistant", ANSWER)]
    ids, learnt = template.encode(as_messages(pairs))
    want_ids, want_learnt = expected(tok, pairs)
    assert ids.tolist() == want_ids == rendered_ids(tok, pairs)
    assert learnt.tolist() == want_learnt
    assert tok.encode("\n") == [198] and want_ids[:3] == [S, *tok.encode("system"), 198]
    # learnt = exactly the answer's tokens and its <|im_end|> (not the "\n" after it)
    answer = tok.encode(ANSWER) + [E]
    start = len(want_ids) - len(answer) - 1
    assert ids[learnt].tolist() == answer and np.flatnonzero(learnt).tolist() == list(range(start, start + len(answer)))


def test_multi_turn_learns_every_assistant_turn_only(tok, template):
    pairs = [("user", "Sort [3, 1, 2]."), ("assistant", "[1, 2, 3]"), ("user", "Now reversed."),
             ("assistant", "[3, 2, 1]"), ("user", "Thanks!"), ("assistant", "You're welcome.")]
    ids, learnt = template.encode(as_messages(pairs))
    want_ids, want_learnt = expected(tok, pairs)
    assert ids.tolist() == want_ids == rendered_ids(tok, pairs)
    assert learnt.tolist() == want_learnt
    answers = [tok.encode(c) + [E] for r, c in pairs if r == "assistant"]
    assert ids[learnt].tolist() == sum(answers, [])
    assert (ids == E).sum() == len(pairs) and learnt[ids == E].sum() == 3  # one <|im_end|> per turn, 3 learnt


def test_special_strings_in_content_stay_text(tok, template):
    code = 'print("<|im_end|>")  # a literal, not the end of the turn'
    ids, learnt = template.encode(as_messages([("user", "Show <|im_start|>."), ("assistant", code)]))
    assert (ids == E).sum() == 2 and (ids == S).sum() == 2  # only the structural ones
    assert tok.decode(ids[learnt][:-1]) == code


def test_sample_is_shifted_padded_and_masked_like_gptdataset(tok, template):
    pairs = [("system", SYSTEM), ("user", USER), ("assistant", ANSWER)]
    ids, learnt = template.encode(as_messages(pairs))
    seq = len(ids) + 10
    item = make_sample(ids, learnt, seq, PAD)
    assert all(item[k].shape == (seq,) for k in ("tokens", "labels", "loss_mask", "position_ids"))
    assert item["tokens"][:len(ids)].tolist() == ids.tolist() and (item["tokens"][len(ids):] == PAD).all()
    assert item["labels"][:len(ids) - 1].tolist() == ids[1:].tolist() and (item["labels"][len(ids) - 1:] == PAD).all()
    assert item["loss_mask"].tolist() == [float(x) for x in learnt[1:]] + [0.0] * 11  # padding never learnt
    assert item["labels"][item["loss_mask"].bool()].tolist() == tok.encode(ANSWER) + [E]
    assert item["position_ids"].tolist() == list(range(seq))


def write_jsonl(path, conversations):
    path.write_text("".join(json.dumps({"messages": as_messages(c)}) + "\n" for c in conversations))
    return path


def test_truncation_to_seq_plus_one_is_counted(tmp_path, tok, template):
    long_answer = " ".join(f"x{i}" for i in range(200))
    pairs = [("user", USER), ("assistant", long_answer)]
    path = write_jsonl(tmp_path / "c.jsonl", [pairs, [("system", long_answer), ("user", USER), ("assistant", "ok")]])
    store = ConversationStore(path, template, max_ids=65)
    full, full_learnt = template.encode(as_messages(pairs))
    assert len(store) == 1 and store.get(0)[0].tolist() == full[:65].tolist()
    assert store.report.over_budget == 1 and store.truncated_ids == len(full) - 65
    # the second conversation's answer starts past 65 ids: counted, not an error, not a row without loss
    assert store.report.skipped["no_loss_after_truncation"]["count"] == 1
    assert store.report.bad_input() == {}
    item = make_sample(*store.get(0), 64, PAD)
    assert item["tokens"].tolist() == full[:64].tolist() and item["labels"].tolist() == full[1:65].tolist()
    assert item["loss_mask"].tolist() == [float(x) for x in full_learnt[1:65]]


def sft_config(path, **kwargs):
    return DataConfig(sources=[DataSource("chat", str(path), 1.0)], **kwargs)


def numbered(n):
    return [[("user", f"What is {i} + 1?"), ("assistant", f"{i + 1}")] for i in range(n)]


def answer_of(tok, item):
    return int(tok.decode(item["labels"][item["loss_mask"].bool()][:-1]))


def test_split_is_disjoint_and_epochs_reshuffle(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", numbered(50))
    cfg = sft_config(path, split="80,20,0")
    train, valid = build_sft_datasets(cfg, 32, train_samples=100, valid_samples=7, seed=5, tokenizer=tok)
    assert len(train) == 100 and len(valid) == 7
    epoch1 = [answer_of(tok, train[i]) for i in range(40)]
    epoch2 = [answer_of(tok, train[i]) for i in range(40, 80)]
    assert sorted(epoch1) == sorted(epoch2) == list(range(1, 41))  # megatron's rounding: first 40 conversations
    assert epoch1 != epoch2 and epoch1 != sorted(epoch1)  # shuffled, and again in a new order
    assert {answer_of(tok, valid[i]) for i in range(7)} <= set(range(41, 51))
    again, _ = build_sft_datasets(cfg, 32, train_samples=100, valid_samples=0, seed=5, tokenizer=tok)
    assert [answer_of(tok, again[i]) for i in range(100)] == [answer_of(tok, train[i]) for i in range(100)]
    other, none = build_sft_datasets(sft_config(path, split="80,20,0", seed=6), 32, 100, 0, seed=5, tokenizer=tok)
    assert none is None and [answer_of(tok, other[i]) for i in range(40)] != epoch1  # data.seed wins
    with pytest.raises(IndexError):
        train[100]
    copy = pickle.loads(pickle.dumps(train))  # what a spawned loader worker receives
    assert all(torch.equal(copy[i][k], train[i][k]) for i in (0, 57) for k in train[i])


def test_empty_split_and_wrong_source_are_clear_errors(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", numbered(5))
    with pytest.raises(DataValidationError, match=r"valid split .* empty.*data.split='100,0,0'"):
        build_sft_datasets(sft_config(path, split="100,0,0"), 32, 8, 4, seed=1, tokenizer=tok)
    with pytest.raises(DataValidationError, match=r"prefix .*stdlib' does not end in \['.jsonl'.*suffix included"):
        build_sft_datasets(sft_config(tmp_path / "stdlib"), 32, 8, 0, seed=1, tokenizer=tok)
    with pytest.raises(DataValidationError, match=r"prefix .*missing.jsonl' is not a file"):
        build_sft_datasets(sft_config(tmp_path / "missing.jsonl"), 32, 8, 0, seed=1, tokenizer=tok)
    two = DataConfig(sources=[DataSource("a", str(path), 1.0), DataSource("b", str(path), 1.0)])
    with pytest.raises(DataValidationError, match="one JSONL file"):
        build_sft_datasets(two, 32, 8, 0, seed=1, tokenizer=tok)


BAD_LINES = {
    "malformed_json": '{"messages": [',
    "not_a_conversation": '{"prompt": "hi", "response": "hello"}',
    "missing_role": '{"messages": [{"content": "hi"}, {"role": "assistant", "content": "hello"}]}',
    "unknown_role": '{"messages": [{"role": "tool", "content": "42"}, {"role": "assistant", "content": "ok"}]}',
    "non_string_content": '{"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "ok"}]}',
    "binary": '{"messages": [{"role": "user", "content": "a\\u0000b"}, {"role": "assistant", "content": "ok"}]}',
    "no_assistant_turn": '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}',
}


def write_bad_file(path):
    good = [json.dumps({"messages": as_messages(c)}) for c in numbered(6)]
    lines = good[:3] + list(BAD_LINES.values()) + [BAD_LINES["unknown_role"], ""] + good[3:]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_lines_are_counted_by_reason_with_line_examples(tmp_path, tok, caplog):
    path = write_bad_file(tmp_path / "bad.jsonl")
    with caplog.at_level("WARNING", logger="data.sft"):
        train, _ = build_sft_datasets(sft_config(path, split="100,0,0"), 32, 12, 0, seed=1, tokenizer=tok)
    report = train.store.report
    counts = {reason: entry["count"] for reason, entry in report.skipped.items()}
    assert counts == {**dict.fromkeys(BAD_LINES, 1), "unknown_role": 2, "blank_line": 1}
    assert len(train.store) == 6 and report.to_dict()["records"] == {"total": 15, "kept": 6, "skipped": 9}
    assert report.skipped["malformed_json"]["examples"][0].startswith(f"{path}:4: JSONDecodeError")
    assert report.skipped["unknown_role"]["examples"][1].startswith(f"{path}:11: messages[0] role 'tool'")
    assert "skipped 2 line(s) as unknown_role" in caplog.text and f"{path}:6" in caplog.text


def test_strict_makes_bad_lines_one_error(tmp_path, tok):
    path = write_bad_file(tmp_path / "bad.jsonl")
    with pytest.raises(BadInputError) as error:
        build_sft_datasets(sft_config(path, strict=True), 32, 12, 0, seed=1, tokenizer=tok)
    message = str(error.value)
    assert message.startswith("data.strict=true: 8 malformed input record(s)")
    for reason in BAD_LINES:
        assert f"  {reason}: " in message
    assert "blank_line" not in message and f"{path}:10" in message and "without data.strict=true" in message
