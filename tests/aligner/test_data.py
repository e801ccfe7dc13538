"""Dataset formats of the alignment methods: detection, conversion, sampling and the errors."""

from __future__ import annotations

import csv
import json

import pytest

from swiftmesh.jobkit.data.alignment import load_alignment_data
from swiftmesh.jobkit.data.reading import sample_rows
from swiftmesh.runtime.errors import InvalidArgument
from tests.aligner.conftest import write_jsonl

U = {"role": "user", "content": "What is 2+2?"}
A_GOOD = {"role": "assistant", "content": "4"}
A_BAD = {"role": "assistant", "content": "5"}
SYS = {"role": "system", "content": "Be brief."}


def _one(tmp_path, method, row, name="d.jsonl"):
    return load_alignment_data([str(write_jsonl(tmp_path / name, [row]))], method)


def _error(tmp_path, method, rows, name="bad.jsonl") -> InvalidArgument:
    f = write_jsonl(tmp_path / name, rows)
    with pytest.raises(InvalidArgument) as e:
        load_alignment_data([str(f)], method)
    return e.value


PAIR_ROWS = {
    "messages+rejected_response": {"messages": [SYS, U, A_GOOD], "rejected_response": "5"},
    "messages+rejected_messages": {"messages": [U, A_GOOD], "rejected_messages": [U, A_BAD], "system": "Be brief."},
    "prompt/chosen/rejected": {"prompt": [SYS, U], "chosen": [A_GOOD], "rejected": [A_BAD]},
    "chosen/rejected": {"chosen": [SYS, U, A_GOOD], "rejected": [SYS, U, A_BAD]},
    "query/response/rejected_response": {"query": "What is 2+2?", "response": "4", "rejected_response": "5",
                                         "system": "Be brief."},
}


@pytest.mark.parametrize("fmt", list(PAIR_ROWS))
def test_every_conversational_pair_format_converts_to_trl_columns(tmp_path, fmt):
    data = _one(tmp_path, "dpo", PAIR_ROWS[fmt])
    assert data.style == "conversational"
    assert data.formats == {str(tmp_path / "d.jsonl"): {fmt: 1}}
    assert data.rows == [{"prompt": [SYS, U], "chosen": [A_GOOD], "rejected": [A_BAD]}]


def test_plain_text_pairs_and_implicit_prompt(tmp_path):
    data = _one(tmp_path, "orpo", {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"})
    assert data.style == "standard" and data.rows == [{"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}]
    data = _one(tmp_path, "simpo", {"chosen": "Q: 2+2? A: four", "rejected": "Q: 2+2? A: five"})
    assert data.rows == [{"prompt": "Q: 2+2? A: ", "chosen": "four", "rejected": "five"}]


def test_reward_model_keeps_the_margin(tmp_path):
    f = write_jsonl(tmp_path / "rm.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2},
                                            {"prompt": "q", "chosen": "a", "rejected": "c"}])
    data = load_alignment_data([str(f)], "rm")
    assert [r.get("margin") for r in data.rows] == [2.0, None]
    assert data.to_dataset()["margin"] == [2.0, 0.0]


@pytest.mark.parametrize("row,label", [
    ({"messages": [U, A_GOOD], "label": True}, True),
    ({"prompt": [U], "completion": [A_BAD], "label": 0}, False),
    ({"prompt": "2+2=", "completion": "5", "label": "false"}, False),
    ({"query": "What is 2+2?", "response": "4", "label": "yes"}, True),
])
def test_unpaired_formats(tmp_path, row, label):
    data = _one(tmp_path, "kto", row)
    assert len(data.rows) == 1 and data.rows[0]["label"] is label
    assert set(data.rows[0]) == {"prompt", "completion", "label"}


def test_kto_unpairs_preference_pairs(tmp_path):
    data = _one(tmp_path, "kto", PAIR_ROWS["messages+rejected_response"])
    assert data.rows == [
        {"prompt": [SYS, U], "completion": [A_GOOD], "label": True},
        {"prompt": [SYS, U], "completion": [A_BAD], "label": False},
    ]


@pytest.mark.parametrize("row,prompt,extra", [
    ({"prompt": "2+2="}, "2+2=", {}),
    ({"prompt": [U], "solution": "4"}, [U], {"solution": "4"}),
    ({"messages": [SYS, U]}, [SYS, U], {}),
    ({"messages": [U, A_GOOD]}, [U], {"solution": "4"}),  # ms-swift GRPO: final assistant turn -> solution
    ({"query": "What is 2+2?", "system": "Be brief."}, [SYS, U], {}),
    (PAIR_ROWS["prompt/chosen/rejected"], [SYS, U], {}),
])
def test_prompt_only_formats(tmp_path, row, prompt, extra):
    for method in ("ppo", "grpo"):
        data = _one(tmp_path, method, row)
        assert data.rows == [{"prompt": prompt, **extra}]


def test_file_types_and_sampling(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(10)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["messages", "rejected_response"])
        w.writeheader()
        w.writerow({"messages": json.dumps([U, A_GOOD]), "rejected_response": "5"})
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerow({"prompt": json.dumps([U]), "chosen": json.dumps([A_GOOD]), "rejected": json.dumps([A_BAD])})
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert len(load_alignment_data([str(tmp_path / "d.json")], "dpo")) == 10
    assert load_alignment_data([str(tmp_path / "d.csv")], "dpo").rows[0]["chosen"] == [A_GOOD]
    assert load_alignment_data([str(tmp_path / "c.csv")], "dpo").rows == [{"prompt": [U], "chosen": [A_GOOD],
                                                                            "rejected": [A_BAD]}]
    assert len(load_alignment_data([str(tmp_path / "d.parquet") + "#4"], "dpo")) == 4
    # #N larger than the file repeats it; sampling is seeded and draws every row once per pass.
    big = load_alignment_data([str(tmp_path / "d.json") + "#25"], "dpo")
    assert len(big) == 25 and len({r["prompt"] for r in big.rows[:10]}) == 10
    assert [r["prompt"] for r in load_alignment_data([str(tmp_path / "d.json#5")], "dpo", seed=1).rows] == \
        [r["prompt"] for r in load_alignment_data([str(tmp_path / "d.json#5")], "dpo", seed=1).rows]
    assert sample_rows(list(range(3)), None) == [0, 1, 2]
    seven = sample_rows(list(range(3)), 7, seed=0)  # two whole passes, then one row drawn
    assert sorted(seven[:3]) == sorted(seven[3:6]) == [0, 1, 2] and seven[6] in (0, 1, 2)
    # A directory of files is read file by file (rows named by their file).
    d = tmp_path / "dir"
    write_jsonl(d / "a.jsonl", rows[:2])
    write_jsonl(d / "b.jsonl", rows[2:5])
    data = load_alignment_data([str(d)], "dpo")
    assert len(data) == 5 and set(data.formats) == {f"{d}/a.jsonl", f"{d}/b.jsonl"}


def test_jsonl_parse_errors_name_the_row(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a", "chosen": \n')
    with pytest.raises(InvalidArgument) as e:
        load_alignment_data([str(f)], "dpo")
    assert "row 3" in e.value.message and "invalid JSON" in e.value.message
    assert e.value.reason == "BAD_DATASET_FILE"
    with pytest.raises(InvalidArgument, match="row 1: a row must be a JSON object"):
        load_alignment_data([str(write_jsonl(tmp_path / "list.jsonl", [[1, 2]]))], "dpo")
    with pytest.raises(InvalidArgument, match="row count must be > 0"):
        load_alignment_data([str(f) + "#0"], "dpo")
    with pytest.raises(InvalidArgument) as e:
        load_alignment_data([str(tmp_path / "missing.jsonl")], "dpo")
    assert e.value.reason == "DATASET_NOT_FOUND" and e.value.field_violations[0].field == "spec.datasets[0]"


def test_a_row_fitting_no_format_gets_an_excellent_error(tmp_path):
    good = PAIR_ROWS["messages+rejected_response"]
    err = _error(tmp_path, "dpo", [good, good, {"messages": [U, A_GOOD], "rejected": "5"}])
    msg = err.message
    assert err.reason == "BAD_DATASET_ROW"
    assert f"'{tmp_path / 'bad.jsonl'}', row 3" in msg
    assert "does not fit any DPO dataset format" in msg and "'messages', 'rejected'" in msg
    # Lists what DPO accepts, with an example of each format.
    for fields in ("messages + rejected_response", "prompt + chosen + rejected", "chosen + rejected",
                   "query + response + rejected_response"):
        assert fields in msg
    assert '"rejected_response": "I don\'t know."' in msg
    assert "names the dispreferred reply 'rejected_response', not 'rejected'" in msg
    assert "The rows before it were read as messages+rejected_response" in msg
    fields = [fv.field for fv in err.field_violations]
    assert fields == ["spec.datasets[0]", f"{tmp_path / 'bad.jsonl'}:3"]
    assert err.metadata == {"dataset": str(tmp_path / "bad.jsonl"), "row": "3", "rlhf_type": "dpo"}


@pytest.mark.parametrize("method,row,hint", [
    ("dpo", {"messages": [U, A_GOOD]}, "looks like SFT data"),
    ("simpo", {"prompt": "q", "completion": "a", "label": True}, "train it with --rlhf_type kto"),
    ("rm", {"prompt": "q"}, "prompt-only data is for --rlhf_type ppo or grpo"),
    ("kto", {"prompt": "q", "completion": "a"}, "KTO rows need 'label'"),
    ("dpo", {"prompt": "q", "chosen": "a", "rejectd": "b"}, "did you mean 'rejected' instead of 'rejectd'"),
    ("dpo", {"conversations": [{"from": "human", "value": "hi"}]}, "rename the field to 'messages'"),
    ("dpo", {"instruction": "say hi", "output": "hi"}, "Alpaca rows"),
])
def test_near_misses_get_a_hint(tmp_path, method, row, hint):
    err = _error(tmp_path, method, [row])
    assert hint in err.message, err.message
    assert "row 1" in err.message


def test_bad_values_name_the_field(tmp_path):
    err = _error(tmp_path, "dpo", [{"messages": [U, {"role": "robot", "content": "4"}], "rejected_response": "5"}])
    assert err.field_violations[-1].field.endswith(":1.messages[1].role") and "'robot'" in err.message
    err = _error(tmp_path, "dpo", [{"messages": [U], "rejected_response": "5"}])
    assert "last message of 'messages' must be the assistant's reply" in err.message
    err = _error(tmp_path, "kto", [{"prompt": "q", "completion": "a", "label": "maybe"}])
    assert "'label' must be true/false" in err.message and err.field_violations[-1].field.endswith(":1.label")
    err = _error(tmp_path, "dpo", [{"prompt": "q", "chosen": "", "rejected": "b"}])
    assert "'chosen' is empty" in err.message
    err = _error(tmp_path, "rm", [{"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}])
    assert "'margin' must be a number" in err.message


def test_plain_and_conversational_rows_do_not_mix(tmp_path):
    err = _error(tmp_path, "dpo", [{"prompt": "q", "chosen": "a", "rejected": "b"},
                                   PAIR_ROWS["prompt/chosen/rejected"]])
    assert err.reason == "MIXED_DATASET_STYLES" and "row 1" in err.message and "row 2" in err.message
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    b = write_jsonl(tmp_path / "b.jsonl", [PAIR_ROWS["messages+rejected_response"]])
    with pytest.raises(InvalidArgument, match="all datasets of a job must be plain text, or all conversational"):
        load_alignment_data([str(a), str(b)], "dpo")


def test_no_dataset_and_unknown_method(tmp_path):
    with pytest.raises(InvalidArgument, match="no dataset given; KTO needs"):
        load_alignment_data([], "kto")
    with pytest.raises(InvalidArgument, match="unknown rlhf_type 'sft'"):
        load_alignment_data(["x.jsonl"], "sft")
