"""One small file per documented dataset format and method (ms-swift's and TRL's): every field
that carries content must reach the text the model trains on, through the trainer's conversion
(load_source + encode_row, decoded), the aligner's (load_alignment_data, rendered by TRL's own
maybe_apply_chat_template as its trainers do) and `data preview`'s rendering, and the three agree."""

from __future__ import annotations

import csv
import json

import pytest

from swiftmesh.jobkit.data import EncodeError, encode_row, load_alignment_data, load_source
from swiftmesh.jobkit.data.preview import preview_dataset

U = {"role": "user", "content": "Quokka question?"}
A = {"role": "assistant", "content": "Wombat answer."}
B = {"role": "assistant", "content": "Badger wrong."}
SYS = {"role": "system", "content": "Sysprompt brief."}

# (method, case, row, texts that must reach the training text)
CASES = [
    # ---- SFT (ms-swift's four conversation formats, TRL's prompt/completion) and pt
    ("sft", "messages", {"messages": [SYS, U, A]}, ["Sysprompt brief.", "Quokka question?", "Wombat answer."]),
    ("sft", "messages+system column", {"system": "Sysprompt brief.", "messages": [U, A]},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer."]),
    ("sft", "messages multi-turn", {"messages": [U, A, {"role": "user", "content": "Emu again?"},
                                                 {"role": "assistant", "content": "Koala reply."}]},
     ["Quokka question?", "Wombat answer.", "Emu again?", "Koala reply."]),
    ("sft", "agent tool_call/tool_response", {"messages": [
        U, {"role": "tool_call", "content": '{"name": "lookup", "arguments": {"q": "platypus"}}'},
        {"role": "tool_response", "content": "Echidna result."}, A]},
     ['"name": "lookup"', "platypus", "Echidna result.", "Wombat answer."]),
    ("sft", "sharegpt conversations", {"system": "Sysprompt brief.", "conversations": [
        {"from": "human", "value": "Quokka question?"}, {"from": "gpt", "value": "Wombat answer."}]},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer."]),
    ("sft", "ms-swift conversation", {"system": "Sysprompt brief.", "conversation": [
        {"human": "Quokka question?", "assistant": "Wombat answer."}, {"human": "Emu again?", "assistant": "Koala."}]},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer.", "Emu again?", "Koala."]),
    ("sft", "alpaca", {"system": "Sysprompt brief.", "instruction": "Quokka question?", "input": "Dingo input",
                       "output": "Wombat answer.", "history": [["Emu before?", "Koala before."]]},
     ["Sysprompt brief.", "Quokka question?", "Dingo input", "Wombat answer.", "Emu before?", "Koala before."]),
    ("sft", "query/response", {"system": "Sysprompt brief.", "query": "Quokka question?", "response": "Wombat answer.",
                               "history": [["Emu before?", "Koala before."]]},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer.", "Emu before?", "Koala before."]),
    ("sft", "TRL prompt/completion", {"prompt": "Quokka question?", "completion": "Wombat answer."},
     ["Quokka question?", "Wombat answer."]),
    ("sft", "TRL conversational prompt/completion", {"prompt": [SYS, U], "completion": [A]},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer."]),
    ("pt", "text", {"text": "Platypus plain text."}, ["Platypus plain text."]),
    ("pt", "messages (ms-swift pt)", {"messages": [{"role": "assistant", "content": "Platypus plain text."}]},
     ["Platypus plain text."]),
    # ---- preference pairs: ms-swift's and TRL's
    ("dpo", "messages+rejected_response", {"messages": [SYS, U, A], "rejected_response": "Badger wrong."},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer.", "Badger wrong."]),
    ("dpo", "messages+rejected_messages", {"messages": [U, A], "rejected_messages": [U, B], "system": "Sysprompt brief."},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer.", "Badger wrong."]),
    ("orpo", "TRL conversational explicit prompt", {"prompt": [SYS, U], "chosen": [A], "rejected": [B]},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer.", "Badger wrong."]),
    ("cpo", "TRL standard explicit prompt", {"prompt": "Quokka question?", "chosen": " Wombat answer.",
                                             "rejected": " Badger wrong."},
     ["Quokka question?", "Wombat answer.", "Badger wrong."]),
    ("simpo", "TRL conversational implicit prompt", {"chosen": [U, A], "rejected": [U, B]},
     ["Quokka question?", "Wombat answer.", "Badger wrong."]),
    ("dpo", "TRL standard implicit prompt", {"chosen": "Quokka question? Wombat answer.",
                                             "rejected": "Quokka question? Badger wrong."},
     ["Quokka question?", "Wombat answer.", "Badger wrong."]),
    ("dpo", "instruction/chosen/rejected (issue 19)", {"instruction": "Quokka question?", "input": "Dingo input",
                                                       "chosen": "Wombat answer.", "rejected": "Badger wrong."},
     ["Quokka question?", "Dingo input", "Wombat answer.", "Badger wrong."]),
    ("rm", "query/chosen/rejected + margin", {"query": "Quokka question?", "chosen": "Wombat answer.",
                                              "rejected": "Badger wrong.", "margin": 1.5},
     ["Quokka question?", "Wombat answer.", "Badger wrong."]),
    ("dpo", "alpaca + rejected_response", {"instruction": "Quokka question?", "output": "Wombat answer.",
                                           "rejected_response": "Badger wrong.", "system": "Sysprompt brief."},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer.", "Badger wrong."]),
    ("dpo", "query/response/rejected_response", {"query": "Quokka question?", "response": "Wombat answer.",
                                                 "rejected_response": "Badger wrong.",
                                                 "history": [["Emu before?", "Koala before."]]},
     ["Quokka question?", "Wombat answer.", "Badger wrong.", "Emu before?", "Koala before."]),
    # ---- unpaired (KTO)
    ("kto", "messages+label", {"messages": [SYS, U, A], "label": True},
     ["Sysprompt brief.", "Quokka question?", "Wombat answer."]),
    ("kto", "TRL prompt/completion/label", {"prompt": [U], "completion": [A], "label": False},
     ["Quokka question?", "Wombat answer."]),
    ("kto", "alpaca + label", {"instruction": "Quokka question?", "output": "Wombat answer.", "label": "true"},
     ["Quokka question?", "Wombat answer."]),
    ("kto", "pairs unpaired", {"messages": [U, A], "rejected_response": "Badger wrong."},
     ["Quokka question?", "Wombat answer.", "Badger wrong."]),
    # ---- prompt only (PPO, GRPO)
    ("grpo", "messages (+ solution column)", {"messages": [SYS, U], "solution": "42"},
     ["Sysprompt brief.", "Quokka question?"]),
    ("ppo", "TRL prompt", {"prompt": [U]}, ["Quokka question?"]),
    ("grpo", "query + history", {"query": "Quokka question?", "history": [["Emu before?", "Koala before."]]},
     ["Quokka question?", "Emu before?", "Koala before."]),
    ("grpo", "alpaca instruction", {"instruction": "Quokka question?", "input": "Dingo input", "output": "7"},
     ["Quokka question?", "Dingo input"]),
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _trained_text(tok, method, path) -> str:
    """The text as the trainer or the aligner trains on it."""
    if method in ("sft", "pt"):
        ds = load_source(path, 0, task=method)
        return "".join(tok.decode(encode_row(tok, r, task=method, max_length=4096, assistant_only=True)["input_ids"])
                       for r in ds.rows)
    from trl.data_utils import maybe_apply_chat_template

    data = load_alignment_data([path], method)
    out = []
    for row in data.to_dataset():
        rendered = maybe_apply_chat_template({k: v for k, v in row.items() if k in ("prompt", "chosen", "rejected",
                                                                                   "completion")}, tok)
        out += [v for v in rendered.values() if isinstance(v, str)]
    return "\n".join(out)


@pytest.mark.parametrize("method,case,row,texts", CASES, ids=[f"{m}-{c}" for m, c, _, _ in CASES])
def test_every_content_field_reaches_the_training_text(tmp_path, tok, method, case, row, texts):
    path = _write(tmp_path / "d.jsonl", [row])
    trained = _trained_text(tok, method, path)
    p = preview_dataset([path], method, tokenizer=tok)
    previewed = "\n".join(s for r in p.first for side in r.rendered.values() for s, _ in side)
    assert p.rows_read == 1 and p.lengths is not None and p.lengths.max > 0
    for t in texts:
        assert t in trained, f"{t!r} missing from the {method} training text:\n{trained}"
        assert t in previewed, f"{t!r} missing from the preview:\n{previewed}"
    if method not in ("sft", "pt", "ppo", "grpo"):  # the replies are what is trained: marked so
        trained_segments = "".join(s for r in p.first for side in r.rendered.values() for s, on in side if on)
        assert texts[-1] in trained_segments or "Badger wrong." in trained_segments


def _write_as(kind, tmp_path, rows) -> str:
    if kind == "jsonl":
        return _write(tmp_path / "d.jsonl", rows)
    if kind == "json":
        (tmp_path / "d.json").write_text(json.dumps(rows))
        return str(tmp_path / "d.json")
    if kind == "csv":
        with open(tmp_path / "d.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
        return str(tmp_path / "d.csv")
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if kind == "parquet":
        ds.to_parquet(str(tmp_path / "d.parquet"))
        return str(tmp_path / "d.parquet")
    ds.save_to_disk(str(tmp_path / "saved"))  # Hugging Face datasets' own directory
    return str(tmp_path / "saved")


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet", "hf_saved"])
@pytest.mark.parametrize("method,row", [
    ("sft", {"messages": [SYS, U, A]}),
    ("sft", {"instruction": "Quokka question?", "input": "", "output": "Wombat answer."}),
    ("dpo", {"instruction": "Quokka question?", "chosen": "Wombat answer.", "rejected": "Badger wrong."}),
    ("kto", {"messages": [U, A], "label": True}),
])
def test_every_file_type(tmp_path, tok, kind, method, row):
    rows = [row, row]
    path = _write_as(kind, tmp_path, rows)
    trained = _trained_text(tok, method, path)
    assert "Quokka question?" in trained and "Wombat answer." in trained
    assert preview_dataset([path], method).rows_read == 2


def test_several_sources_mixed_and_sampled(tmp_path, tok):
    a = _write(tmp_path / "a.jsonl", [{"messages": [U, {"role": "assistant", "content": f"a{i}"}]} for i in range(10)])
    b = _write(tmp_path / "b.jsonl", [{"query": f"q{i}", "response": f"r{i}"} for i in range(4)])
    ds = [load_source(s, i, task="sft", seed=7) for i, s in enumerate([a + "#3", b + "#6"])]
    assert [len(d.rows) for d in ds] == [3, 6]
    p = preview_dataset([a + "#3", b + "#6"], "sft", seed=7, show=20)
    assert p.rows_read == 14 and p.rows_kept == 9
    # the preview shows exactly the rows the job keeps (same sampler, same seed)
    assert [r.converted for r in p.first] == ds[0].rows + ds[1].rows


def test_multimodal_columns_are_carried_and_never_dropped(tmp_path, tok):
    mm = {"images": ["cat.png"], "audios": ["meow.wav"]}
    sft = _write(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "<image><audio>What is it?"}, A], **mm}])
    row = load_source(sft, 0, task="sft").rows[0]
    assert row["images"] == ["cat.png"] and row["audios"] == ["meow.wav"]
    assert preview_dataset([sft], "sft").first[0].converted["images"] == ["cat.png"]
    with pytest.raises(EncodeError, match="'images', 'audios'"):  # a text-only encoder refuses, never drops them
        encode_row(tok, row, task="sft", max_length=256, assistant_only=True)
    dpo = _write(tmp_path / "d.jsonl", [{"messages": [U, A], "rejected_response": "no", **mm}])
    for method in ("dpo", "kto", "grpo"):
        assert all(r["images"] == ["cat.png"] for r in load_alignment_data([dpo], method).rows)


def test_a_dataset_repository_directory_gives_its_train_split(tmp_path):
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "train-00000-of-00001.jsonl", [{"text": "train row"}] * 3)
    _write(tmp_path / "data" / "test-00000-of-00001.jsonl", [{"text": "test row"}])
    (tmp_path / "README.md").write_text("# a dataset card\n")
    ds = load_source(str(tmp_path), 0, task="pt")
    assert ds.rows == [{"text": "train row"}] * 3
    assert {f for f, _ in ds.origins} == {f"{tmp_path}/data/train-00000-of-00001.jsonl"}
