"""Issue 19's example: an ms-swift preference row with an ``instruction`` keeps it as the prompt."""

from __future__ import annotations

import json

import pytest

from swiftmesh.jobkit.data import load_alignment_data
from swiftmesh.runtime.errors import InvalidArgument

ROW = {"instruction": "What is 2+2?", "chosen": "4", "rejected": "5"}


@pytest.mark.parametrize("method", ["dpo", "orpo", "cpo", "simpo", "rm"])
def test_dpo_instruction_row_keeps_its_instruction_as_the_prompt(tmp_path, method):
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps(ROW) + "\n")
    data = load_alignment_data([str(f)], method)
    assert data.rows == [{"prompt": [{"role": "user", "content": "What is 2+2?"}],
                          "chosen": [{"role": "assistant", "content": "4"}],
                          "rejected": [{"role": "assistant", "content": "5"}]}]


def test_kto_and_grpo_keep_the_instruction_too(tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps(ROW) + "\n")
    kto = load_alignment_data([str(f)], "kto")
    assert [r["prompt"] for r in kto.rows] == [[{"role": "user", "content": "What is 2+2?"}]] * 2
    grpo = load_alignment_data([str(f)], "grpo")
    assert grpo.rows[0]["prompt"] == [{"role": "user", "content": "What is 2+2?"}]


def test_an_unused_content_column_is_an_error_naming_row_and_column(tmp_path):
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n"
                 + json.dumps({"prompt": "3+3?", "chosen": "6", "rejected": "7", "notes": "from the web"}) + "\n")
    with pytest.raises(InvalidArgument) as e:
        load_alignment_data([str(f)], "dpo")
    assert "row 2" in e.value.message and "'notes'" in e.value.message
