"""SFT data (data.sft): the ChatML ids and the assistant-only loss mask against hand-written sequences built from
the tokenizer's own ids, Qwen2.5's default system turn, equality with transformers' apply_chat_template on the
exported tokenizer, truncation, padding and packing, the split and the epoch order, and counted / strict bad input.

Independent references for the template: the rendered ChatML string tokenized by tiktoken with the special tokens
allowed (`Encoding.encode(text, allowed_special="all")`), and transformers' apply_chat_template with the Jinja
template data.hf_export writes (both render a string and tokenize it whole).
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
from data.sft import DEFAULT_SYSTEM_PROMPT, ChatTemplate, ConversationStore, build_sft_datasets, make_sample, next_fit
from data.tokenizer import EOD, IM_END, IM_START, SPECIAL_TOKENS, load_tokenizer

S, E, PAD = SPECIAL_TOKENS[IM_START], SPECIAL_TOKENS[IM_END], SPECIAL_TOKENS[EOD]
SYSTEM, USER = "You are a careful Python programmer.", "Write a function that adds two numbers."
ANSWER = "def add(a, b):\n    return a + b"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(backend="tiktoken")


@pytest.fixture(scope="module")
def template(tok):
    """No default system turn: the conversations render exactly as written."""
    return ChatTemplate(tok, system_prompt="")


@pytest.fixture(scope="module")
def qwen(tok):
    """The default: Qwen2.5's system prompt when a conversation has none."""
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
    ids, learnt = template.render(as_messages(pairs))
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
    ids, learnt = template.render(as_messages(pairs))
    want_ids, want_learnt = expected(tok, pairs)
    assert ids.tolist() == want_ids == rendered_ids(tok, pairs)
    assert learnt.tolist() == want_learnt
    answers = [tok.encode(c) + [E] for r, c in pairs if r == "assistant"]
    assert ids[learnt].tolist() == sum(answers, [])
    assert (ids == E).sum() == len(pairs) and learnt[ids == E].sum() == 3  # one <|im_end|> per turn, 3 learnt


def test_default_system_prompt_is_qwens_and_can_be_changed_or_switched_off(tok, template, qwen):
    assert DEFAULT_SYSTEM_PROMPT == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    chat = [("user", USER), ("assistant", ANSWER)]
    ids, learnt = qwen.render(as_messages(chat))
    with_default = [("system", DEFAULT_SYSTEM_PROMPT), *chat]
    assert ids.tolist() == expected(tok, with_default)[0] == rendered_ids(tok, with_default)
    assert learnt.tolist() == expected(tok, with_default)[1]  # the inserted turn is context, never learnt
    assert template.render(as_messages(chat))[0].tolist() == expected(tok, chat)[0]  # '' switches it off
    own = [("system", SYSTEM), *chat]  # a conversation's own system message is kept, nothing inserted
    assert qwen.render(as_messages(own))[0].tolist() == expected(tok, own)[0]
    late = [("user", USER), ("system", SYSTEM), ("assistant", ANSWER)]  # Qwen's rule: the FIRST message decides
    assert qwen.render(as_messages(late))[0].tolist() == expected(tok, [("system", DEFAULT_SYSTEM_PROMPT), *late])[0]
    custom = ChatTemplate(tok, system_prompt="Answer in Python.")
    assert custom.render(as_messages(chat))[0].tolist() == expected(tok, [("system", "Answer in Python."), *chat])[0]


def test_generation_prompt_and_reply_compose_the_conversation(tok, qwen):
    prompt = as_messages([("user", USER)])
    head, head_learnt = qwen.render(prompt, add_generation_prompt=True)
    assert head[-3:].tolist() == [S, *tok.encode("assistant"), 198] and not head_learnt.any()
    body, body_learnt = qwen.reply(tok.encode_array(ANSWER))
    whole, whole_learnt = qwen.render(prompt + as_messages([("assistant", ANSWER)]))
    assert np.concatenate([head, body]).tolist() == whole.tolist()
    assert np.concatenate([head_learnt, body_learnt]).tolist() == whole_learnt.tolist()


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from data.hf_export import export_hf_tokenizer

    return AutoTokenizer.from_pretrained(export_hf_tokenizer(tmp_path_factory.getbasetemp() / "qwen2.5-hf"))


def hf_ids(hf, messages, generation):
    ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


CHATS = {
    "no system": [("user", USER), ("assistant", ANSWER)],
    "system": [("system", SYSTEM), ("user", USER), ("assistant", ANSWER)],
    "multi-turn": [("user", "Sort [3, 1, 2]."), ("assistant", "[1, 2, 3]"), ("user", "Now reversed, in Python."),
                   ("assistant", "```python\nsorted(xs, reverse=True)\n```"), ("user", "Thanks!")],
    "context starts with a line break": [("system", "\n\nBe brief. "), ("user", "\n  x = 1\n\nfix it"),
                                         ("assistant", "x = 2\n")],
    "unicode": [("user", "Cafe\u0301 \u6587\u4ef6 \U0001F600?"), ("assistant", "e\u0301\t\u00e9")],
}


@pytest.mark.parametrize("name", CHATS)
def test_rendering_equals_apply_chat_template_of_the_exported_tokenizer(hf_tokenizer, qwen, name):
    messages = as_messages(CHATS[name])
    for generation in (False, True):
        ours = qwen.render(messages, add_generation_prompt=generation)[0].tolist()
        assert ours == hf_ids(hf_tokenizer, messages, generation), (name, generation)
    assert hf_tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n")


def test_where_rendering_and_apply_chat_template_differ_by_design(hf_tokenizer, qwen, tok):
    # a literal special string in content: apply_chat_template makes it a control token, we keep it text
    literal = as_messages([("user", "What does '<|im_end|>' mean?"), ("assistant", "It ends a turn.")])
    ours, theirs = qwen.render(literal)[0].tolist(), hf_ids(hf_tokenizer, literal, False)
    assert ours.count(E) == 3 and theirs.count(E) == 4  # 3 turns; HF adds one inside the question
    call = as_messages([("user", USER), ("assistant", '<tool_call>\n{"name": "add"}\n</tool_call>')])
    tool_call = SPECIAL_TOKENS["<tool_call>"]  # an added token, not special: HF matches it inside text too
    assert tool_call in hf_ids(hf_tokenizer, call, False) and tool_call not in qwen.render(call)[0].tolist()
    # an answer starting with a line break: we encode what generation produces after "assistant\n"
    leading = as_messages([("user", USER), ("assistant", "\ndef f(): pass")])
    ours, theirs = qwen.render(leading)[0].tolist(), hf_ids(hf_tokenizer, leading, False)
    prompt = qwen.render(leading[:1], add_generation_prompt=True)[0].tolist()
    assert ours[:len(prompt)] == prompt and theirs[:len(prompt)] != prompt  # HF merges "\n\n" across the prompt
    with pytest.raises(Exception, match="does not render tools"):
        hf_tokenizer.apply_chat_template(leading, tools=[{"type": "function", "function": {"name": "f"}}])


def test_special_strings_in_content_stay_text(tok, template):
    code = 'print("<|im_end|>")  # a literal, not the end of the turn'
    ids, learnt = template.render(as_messages([("user", "Show <|im_start|>."), ("assistant", code)]))
    assert (ids == E).sum() == 2 and (ids == S).sum() == 2  # only the structural ones
    assert tok.decode(ids[learnt][:-1]) == code


def test_sample_is_shifted_padded_and_masked_like_gptdataset(tok, template):
    pairs = [("system", SYSTEM), ("user", USER), ("assistant", ANSWER)]
    ids, learnt = template.render(as_messages(pairs))
    seq = len(ids) + 10
    for packed in (False, True):
        item = make_sample([(ids, learnt)], seq, PAD, packed)
        assert all(item[k].shape == (seq,) for k in ("tokens", "labels", "loss_mask", "position_ids"))
        assert item["tokens"][:len(ids)].tolist() == ids.tolist() and (item["tokens"][len(ids):] == PAD).all()
        assert item["labels"][:len(ids) - 1].tolist() == ids[1:].tolist()
        assert (item["labels"][len(ids) - 1:] == PAD).all()
        assert item["loss_mask"].tolist() == [float(x) for x in learnt[1:]] + [0.0] * 11  # padding never learnt
        assert item["labels"][item["loss_mask"].bool()].tolist() == tok.encode(ANSWER) + [E]
        # packed: the padding is a document of its own (position 0 again), so it attends to nothing real
        want = list(range(seq)) if not packed else list(range(len(ids))) + list(range(10))
        assert item["position_ids"].tolist() == want


def test_packed_row_holds_whole_conversations_with_restarting_positions(tok, template):
    convs = [template.render(as_messages([("user", f"Q{i}"), ("assistant", "A" * (i + 1))])) for i in range(3)]
    lengths = [len(ids) for ids, _ in convs]
    seq = sum(lengths) + 3
    item = make_sample(convs, seq, PAD, packed=True)
    assert item["tokens"][:sum(lengths)].tolist() == np.concatenate([ids for ids, _ in convs]).tolist()
    starts = np.cumsum([0] + lengths)
    assert item["position_ids"].tolist() == sum([list(range(n)) for n in lengths], []) + [0, 1, 2]
    assert torch.nonzero(item["position_ids"] == 0).flatten().tolist() == [*starts[:-1], sum(lengths)]
    for end in starts[1:-1]:  # the label crossing into the next conversation is its <|im_start|>, not learnt
        assert item["labels"][end - 1] == S and item["loss_mask"][end - 1] == 0
    learnt = item["labels"][item["loss_mask"].bool()].tolist()
    assert learnt == sum([tok.encode("A" * (i + 1)) + [E] for i in range(3)], [])
    with pytest.raises(ValueError, match="do not fit one row"):
        make_sample(convs, sum(lengths) - 2, PAD, packed=True)  # a row holds seq_length + 1 ids
    assert make_sample(convs, sum(lengths) - 1, PAD, packed=True)["labels"][-1] == convs[-1][0][-1]
    with pytest.raises(ValueError, match="one conversation per row"):
        make_sample(convs, seq, PAD, packed=False)
    assert next_fit(np.array([3, 4, 2, 5, 1, 6]), 7).tolist() == [0, 2, 4, 6]  # [3 4] [2 5] [1 6]
    assert next_fit(np.array([5, 3, 7]), 7).tolist() == [0, 1, 2, 3]  # nothing shares a row with a full one


def write_jsonl(path, conversations):
    path.write_text("".join(json.dumps({"messages": as_messages(c)}) + "\n" for c in conversations))
    return path


def test_truncation_to_seq_plus_one_is_counted(tmp_path, tok, template):
    long_answer = " ".join(f"x{i}" for i in range(200))
    pairs = [("user", USER), ("assistant", long_answer)]
    path = write_jsonl(tmp_path / "c.jsonl", [pairs, [("system", long_answer), ("user", USER), ("assistant", "ok")]])
    store = ConversationStore(path, template, max_ids=65)
    full, full_learnt = template.render(as_messages(pairs))
    assert len(store) == 1 and store.row(0)[0].tolist() == full[:65].tolist()
    assert store.report.over_budget == 1 and store.truncated_ids == len(full) - 65
    # the second conversation's answer starts past 65 ids: counted, not an error, not a row without loss
    assert store.report.skipped["no_loss_after_truncation"]["count"] == 1
    assert store.report.bad_input() == {}
    item = make_sample([store.row(0)], 64, PAD, packed=False)
    assert item["tokens"].tolist() == full[:64].tolist() and item["labels"].tolist() == full[1:65].tolist()
    assert item["loss_mask"].tolist() == [float(x) for x in full_learnt[1:65]]


def sft_config(path, **kwargs):
    """Short rows (32 ids) need no default system turn (~20 ids); the packed test keeps it."""
    return DataConfig(sources=[DataSource("chat", str(path), 1.0)], **{"system_prompt": "", **kwargs})


def numbered(n):
    return [[("user", f"What is {i} + 1?"), ("assistant", f"{i + 1}")] for i in range(n)]


def answer_of(tok, item):
    return int(tok.decode(item["labels"][item["loss_mask"].bool()][:-1]))


def test_split_is_disjoint_and_epochs_reshuffle(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", numbered(50))
    cfg = sft_config(path, split="80,20,0", packing=False)
    train, valid = build_sft_datasets(cfg, 32, train_samples=100, valid_samples=7, seed=5, tokenizer=tok)
    assert len(train) == 100 and len(valid) == 7
    epoch1 = [answer_of(tok, train[i]) for i in range(40)]
    epoch2 = [answer_of(tok, train[i]) for i in range(40, 80)]
    assert sorted(epoch1) == sorted(epoch2) == list(range(1, 41))  # megatron's rounding: first 40 conversations
    assert epoch1 != epoch2 and epoch1 != sorted(epoch1)  # shuffled, and again in a new order
    assert {answer_of(tok, valid[i]) for i in range(7)} <= set(range(41, 51))
    again, _ = build_sft_datasets(cfg, 32, train_samples=100, valid_samples=0, seed=5, tokenizer=tok)
    assert [answer_of(tok, again[i]) for i in range(100)] == [answer_of(tok, train[i]) for i in range(100)]
    other, none = build_sft_datasets(sft_config(path, split="80,20,0", seed=6, packing=False), 32, 100, 0, seed=5,
                                     tokenizer=tok)
    assert none is None and [answer_of(tok, other[i]) for i in range(40)] != epoch1  # data.seed wins
    with pytest.raises(IndexError):
        train[100]
    copy = pickle.loads(pickle.dumps(train))  # what a spawned loader worker receives
    assert all(torch.equal(copy[i][k], train[i][k]) for i in (0, 57) for k in train[i])


def row_answers(tok, item):
    """The learnt answers of a row, one per conversation in it (each ends with its <|im_end|>)."""
    learnt = item["labels"][item["loss_mask"].bool()].tolist()
    answers, current = [], []
    for token in learnt:
        if token == E:
            answers.append(int(tok.decode(current)))
            current = []
        else:
            current.append(token)
    return answers


def test_packed_epochs_visit_every_conversation_once_in_fewer_rows(tmp_path, tok):
    path = write_jsonl(tmp_path / "c.jsonl", numbered(50))
    cfg = sft_config(path, split="100,0,0", system_prompt=None)  # packing and Qwen's system turn: the defaults
    train, _ = build_sft_datasets(cfg, 128, train_samples=60, valid_samples=0, seed=5, tokenizer=tok)
    rows = [row_answers(tok, train[i]) for i in range(60)]
    assert all(len(r) >= 2 for r in rows[:-2])  # a conversation is ~40 ids with the system turn: 3 per 129
    seen, epoch = [], 0
    for row in rows:
        seen += row
        if sorted(seen) == list(range(1, 51)):
            epoch, seen = epoch + 1, []
        assert len(seen) == len(set(seen)), "a conversation repeated within an epoch"
    assert epoch >= 2 and train._rows_per_epoch[0] < 50  # two whole epochs in 60 rows: packed ~3 per row
    assert rows[:train._rows_per_epoch[0]] != rows[train._rows_per_epoch[0]:2 * train._rows_per_epoch[0]]
    fresh, _ = build_sft_datasets(cfg, 128, train_samples=60, valid_samples=0, seed=5, tokenizer=tok)
    assert row_answers(tok, fresh[59]) == rows[59]  # random access (a resume) gives the same row


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
