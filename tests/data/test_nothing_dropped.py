"""Nothing is dropped silently: unused columns, mixed formats, empty replies, a conversation that
does not end with the reply, tools a template ignores: each an error naming the row (and the
column), the same from the trainer's and aligner's loaders and from `data preview`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from swiftmesh.cli.main import app
from swiftmesh.jobkit.data import EncodeError, encode_row, load_alignment_data, load_source
from swiftmesh.jobkit.data.preview import preview_dataset
from swiftmesh.runtime.errors import InvalidArgument

U = {"role": "user", "content": "2+2?"}
A = {"role": "assistant", "content": "4"}
GOOD_SFT = {"messages": [U, A]}
GOOD_DPO = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}


def _write(tmp_path, rows, name="d.jsonl") -> str:
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(p)


def _load(method, path, **kw):
    if method in ("sft", "pt"):
        return load_source(path, 0, task=method, **kw)
    return load_alignment_data([path], method, **kw)


@pytest.mark.parametrize("method,rows,row,words", [
    ("sft", [GOOD_SFT, {**GOOD_SFT, "source_notes": "copied from the web"}], 2, ["'source_notes'", "--ignore_columns"]),
    ("sft", [{"instruction": "Say hi", "output": "hi"}, {"instruction": "Say yo", "output": "yo", "answer": "YO"}],
     2, ["'answer'"]),
    ("dpo", [GOOD_DPO, {**GOOD_DPO, "explanation": "4 is right"}], 2, ["'explanation'", "--ignore_columns"]),
    ("kto", [{"messages": [U, A], "label": True, "critique": "fine"}], 1, ["'critique'"]),
    ("grpo", [{"prompt": "2+2?", "examples": ["1+1=2"]}], 1, ["'examples'"]),
    ("sft", [GOOD_SFT, {"query": "q", "response": "r"}], 2, ["query_response", "messages (row 1)", "one format"]),
    ("dpo", [GOOD_DPO, {"messages": [U, A], "rejected_response": "5"}], 2, ["messages+rejected_response", "one format"]),
    ("sft", [GOOD_SFT, {"messages": [U, {"role": "assistant", "content": "  "}, U, A]}], 2, ["reply is empty"]),
    ("sft", [{"messages": [U, A, {"role": "user", "content": "and 3+3?"}]}], 1, ["must end with the assistant"]),
    ("dpo", [{"messages": [U, {"role": "assistant", "content": ""}], "rejected_response": "5"}], 1, ["is empty"]),
    ("kto", [{"messages": [U, A, U], "label": True}], 1, ["must be the assistant's reply"]),
    ("sft", [{"system": "Be brief.", "messages": [{"role": "system", "content": "Be long."}, U, A]}], 1,
     ["'system' column and a different system message"]),
])
def test_errors_name_the_row(tmp_path, method, rows, row, words):
    path = _write(tmp_path, rows)
    with pytest.raises(InvalidArgument) as e:
        _load(method, path)
    text = e.value.message + " ".join(fv.description for fv in e.value.field_violations)
    assert f"row {row}" in text, text
    for w in words:
        assert w in text, text
    # data preview fails on the same row with the same words
    with pytest.raises(InvalidArgument) as e2:
        preview_dataset([path], method)
    text2 = e2.value.message + " ".join(fv.description for fv in e2.value.field_violations)
    assert f"row {row}" in text2 and all(w in text2 for w in words)


@pytest.mark.parametrize("method,rows", [
    ("sft", [GOOD_SFT, {**GOOD_SFT, "source_notes": "web"}, {**GOOD_SFT, "source_notes": "book", "id_text": "x7"}]),
    ("dpo", [GOOD_DPO, {**GOOD_DPO, "source_notes": "web"}, {**GOOD_DPO, "source_notes": "book", "id_text": "x7"}]),
])
def test_ignore_columns_drops_with_a_count(tmp_path, method, rows):
    path = _write(tmp_path, rows)
    loaded = _load(method, path, ignore_columns=True)
    assert loaded.ignored == {"source_notes": 2, "id_text": 1}
    assert len(loaded.rows) == 3
    assert preview_dataset([path], method, ignore_columns=True).ignored == {"source_notes": 2, "id_text": 1}


def test_metadata_columns_without_content_are_not_errors(tmp_path):
    path = _write(tmp_path, [{**GOOD_DPO, "id": 7, "score": 0.5, "flag": True, "empty": "", "none": None}])
    assert len(load_alignment_data([path], "dpo").rows) == 1


def test_tools_a_template_ignores_are_an_error(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))  # its ChatML template renders no tools
    row = {"messages": [U, A], "tools": [{"type": "function", "function": {"name": "add", "parameters": {}}}]}
    with pytest.raises(EncodeError, match="does not render 'tools'"):
        encode_row(tok, row, task="sft", max_length=256, assistant_only=True)
    call = {"messages": [U, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": "{}"}}]}, {"role": "tool", "content": "4"}, A]}
    with pytest.raises(EncodeError, match="does not render 'tool_calls'"):
        encode_row(tok, call, task="sft", max_length=256, assistant_only=True)


def test_cli_preview_shows_format_rows_and_lengths(tmp_path, tiny_model_dir):
    path = _write(tmp_path, [{"instruction": "What is 2+2?", "chosen": "4", "rejected": "5"}] * 3)
    r = CliRunner().invoke(app, ["data", "preview", "--dataset", path, "--method", "dpo", "--model", str(tiny_model_dir),
                                 "--max_length", "10", "--rows", "1"])
    assert r.exit_code == 0, r.output
    assert "3 rows as instruction/chosen/rejected" in r.output
    assert "What is 2+2?" in r.output and "⟦4" in r.output and "⟦5" in r.output
    assert "--max_length 10 would cut 3 of 3 rows" in r.output
    bad = _write(tmp_path, [GOOD_DPO, {**GOOD_DPO, "explanation": "x"}], name="bad.jsonl")
    r = CliRunner().invoke(app, ["data", "preview", bad, "--method", "dpo"])
    out = " ".join(r.output.split())  # rich wraps lines at the terminal width
    assert r.exit_code == 1 and "row 2" in out and "'explanation'" in out
