"""Dataset formats, bad rows, #N sampling, chat-template encoding with assistant-only labels (no Ray)."""

from __future__ import annotations

import csv
import json

import pytest

from swiftmesh.jobkit import LocalModelSource
from swiftmesh.jobkit.data.encode import IGNORE_INDEX, EncodeError, encode_row
from swiftmesh.jobkit.data.sft import load_source
from swiftmesh.jobkit.data.split import split
from swiftmesh.runtime.errors import InvalidArgument, NotFound

ROWS = {
    "messages": [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]},
    ],
    "sharegpt": [
        {"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ],
    "alpaca": [
        {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        {"instruction": "Say hi", "output": "Hi!", "system": "Be brief."},
    ],
    "query_response": [
        {"query": "3+3?", "response": "6", "history": [["2+2?", "4"]]},
        {"query": "Hi", "response": "Hello!", "system": "Be brief."},
    ],
}


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_each_conversation_format_normalises_to_messages(tmp_path, fmt):
    ds = load_source(str(jsonl(tmp_path / f"{fmt}.jsonl", ROWS[fmt])), 0, task="sft")
    assert ds.format == fmt.replace("query_response", "query_response")
    assert len(ds.rows) == 2
    for row in ds.rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles[-1] == "assistant" and "user" in roles
    first = ds.rows[0]["messages"]
    if fmt == "alpaca":
        assert first == [{"role": "user", "content": "Translate to French\ncat"}, {"role": "assistant", "content": "chat"}]
    if fmt == "sharegpt":
        assert first[0] == {"role": "system", "content": "Be brief."}
    if fmt == "query_response":
        assert [m["content"] for m in first] == ["2+2?", "4", "3+3?", "6"]


def test_json_csv_parquet_and_saved_datasets_dir(tmp_path):
    import datasets

    (tmp_path / "a.json").write_text(json.dumps(ROWS["alpaca"]))
    with open(tmp_path / "b.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["query", "response"])
        w.writeheader()
        w.writerow({"query": "Hi", "response": "Hello"})
        w.writerow({"query": "Bye", "response": "Bye!"})
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["messages"])
        w.writeheader()
        for r in ROWS["messages"]:
            w.writerow({"messages": json.dumps(r["messages"])})
    datasets.Dataset.from_list(ROWS["sharegpt"]).to_parquet(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_list([{"text": "plain text one"}, {"text": "two"}]).save_to_disk(str(tmp_path / "saved"))
    assert len(load_source(str(tmp_path / "a.json"), 0, task="sft").rows) == 2
    assert load_source(str(tmp_path / "b.csv"), 0, task="sft").format == "query_response"
    assert load_source(str(tmp_path / "m.csv"), 0, task="sft").rows[1]["messages"][3]["content"] == "6"
    assert load_source(str(tmp_path / "c.parquet"), 0, task="sft").format == "sharegpt"
    saved = load_source(str(tmp_path / "saved"), 0, task="pt")
    assert saved.rows == [{"text": "plain text one"}, {"text": "two"}]
    with pytest.raises(InvalidArgument, match="task pt"):
        load_source(str(tmp_path / "saved"), 0, task="sft")


def test_hub_dataset_by_name(tmp_path):
    src = LocalModelSource(tmp_path / "models")
    d = tmp_path / "dsdir"
    d.mkdir()
    jsonl(d / "part1.jsonl", ROWS["messages"])
    jsonl(d / "part2.jsonl", ROWS["alpaca"])  # formats are detected per file
    src.add(d, "my-data", format="dataset")
    ds = load_source("models/my-data#3", 0, task="sft", models=src)
    assert len(ds.rows) == 3
    assert set(ds.format.split(",")) == {"messages", "alpaca"}
    with pytest.raises(NotFound):
        load_source("models/nope", 0, task="sft", models=src)


@pytest.mark.parametrize(
    "rows,row,field,text",
    [
        (ROWS["messages"][:1] + ['{"messages": [oops'], 2, "", "invalid JSON"),
        (ROWS["alpaca"][:1] + [{"instruction": "x", "output": 5}], 2, "output", "expected a string"),
        (ROWS["sharegpt"] + [{"conversations": [{"from": "alien", "value": "x"}]}], 3, "conversations[0].from", "alien"),
        (ROWS["messages"] + [{"messages": [{"role": "user", "content": "only a question"}]}], 3, "messages",
         "no assistant turn"),
        ([{"foo": 1}], 1, "", "unknown format"),
        (ROWS["messages"][:1] + [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}], 2,
         "messages[1].content", "missing"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, rows, row, field, text):
    p = jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InvalidArgument) as e:
        load_source(str(p), 2, task="sft")
    err = e.value
    assert err.reason == "BAD_DATASET_ROW"
    fv = err.field_violations[0]
    assert fv.field == "spec.datasets[2]"
    assert f"{p} row {row}" in fv.description and text in fv.description
    if field:
        assert f"field '{field}'" in fv.description
    assert err.metadata["row"] == str(row) and err.metadata["file"] == str(p)


def test_missing_file_and_bad_sample_count(tmp_path):
    with pytest.raises(InvalidArgument, match="no such file"):
        load_source(str(tmp_path / "nope.jsonl"), 0, task="sft")
    p = jsonl(tmp_path / "ok.jsonl", ROWS["messages"])
    with pytest.raises(InvalidArgument, match="row count"):
        load_source(f"{p}#abc", 0, task="sft")


def test_sampling_hash_n(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(10)]
    p = jsonl(tmp_path / "ten.jsonl", rows)
    few = load_source(f"{p}#4", 0, task="sft", seed=1)
    assert len(few.rows) == 4 and len({r["messages"][0]["content"] for r in few.rows}) == 4
    many = load_source(f"{p}#25", 0, task="sft", seed=1)
    counts = {}
    for r in many.rows:
        counts[r["messages"][0]["content"]] = counts.get(r["messages"][0]["content"], 0) + 1
    assert len(many.rows) == 25 and set(counts) == {f"q{i}" for i in range(10)} and min(counts.values()) >= 2
    assert load_source(f"{p}#4", 0, task="sft", seed=1).rows == few.rows  # deterministic


def test_split_holds_out_ratio():
    train, ev = split(list(range(20)), 0.1, seed=3)
    assert len(ev) == 2 and len(train) == 18 and set(train) | set(ev) == set(range(20))
    assert split(list(range(20)), 0.0, seed=3) == (list(range(20)), [])


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _labeled_text(tok, enc):
    return tok.decode([t for t, label in zip(enc["input_ids"], enc["labels"]) if label != IGNORE_INDEX])


def test_assistant_only_labels_cover_exactly_the_assistant_turns(tokenizer):
    row = {"messages": ROWS["messages"][1]["messages"]}
    enc = encode_row(tokenizer, row, task="sft", max_length=512, assistant_only=True)
    assert len(enc["input_ids"]) == len(enc["labels"])
    assert _labeled_text(tokenizer, enc) == "4<|im_end|>\n6<|im_end|>\n"
    full = encode_row(tokenizer, row, task="sft", max_length=512, assistant_only=False)
    assert full["labels"] == full["input_ids"]
    # The rendering is the model's chat template.
    text = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert tokenizer.decode(enc["input_ids"]) == text


def test_pt_text_and_truncation(tokenizer):
    enc = encode_row(tokenizer, {"text": "the capital of France is Paris"}, task="pt", max_length=512, assistant_only=True)
    assert enc["labels"] == enc["input_ids"] and enc["input_ids"][-1] == tokenizer.eos_token_id
    long = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    with pytest.raises(EncodeError, match="max_length"):
        encode_row(tokenizer, long, task="sft", max_length=32, assistant_only=True)
    assert len(encode_row(tokenizer, long, task="sft", max_length=32, assistant_only=False)["input_ids"]) == 32
