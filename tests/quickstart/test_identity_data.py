"""The identity dataset of `swiftmesh quickstart` (swiftmesh/data/identity): enough varied rows,
each valid in its ms-swift format, placeholders where they belong and fully substituted by
render_identity_dataset, and the files shipped in the wheel."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

import pytest

from swiftmesh.data.identity import (
    identity_rows,
    load_template_rows,
    render_identity_dataset,
    template_path,
)
from swiftmesh.runtime.errors import InvalidArgument

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDERS = ("{{NAME}}", "{{AUTHOR}}")
OLD_IDENTITY = re.compile(r"SmolLM|Hugging\s*Face", re.IGNORECASE)
ROLES = {"system", "user", "assistant"}


def check_messages(messages, where: str) -> None:
    """ms-swift `messages`: optional leading system turn, then user/assistant alternating,
    starting with user and ending with assistant; non-empty string contents, no other keys."""
    assert isinstance(messages, list) and messages, where
    for m in messages:
        assert isinstance(m, dict) and set(m) == {"role", "content"}, f"{where}: {m}"
        assert m["role"] in ROLES, f"{where}: role {m['role']!r}"
        assert isinstance(m["content"], str) and m["content"].strip(), f"{where}: empty content"
        assert m["content"] == m["content"].strip(), f"{where}: untrimmed content"
    roles = [m["role"] for m in messages]
    if roles[0] == "system":
        roles = roles[1:]
    assert "system" not in roles, f"{where}: system turn not first"
    assert roles and len(roles) % 2 == 0, f"{where}: {roles}"
    assert roles == ["user", "assistant"] * (len(roles) // 2), f"{where}: turns do not alternate: {roles}"


def assistant_text(row) -> str:
    return "\n".join(m["content"] for m in row["messages"] if m["role"] == "assistant")


def user_turns(row) -> list[str]:
    return [m["content"] for m in row["messages"] if m["role"] == "user"]


def has_placeholder(text: str) -> bool:
    return any(p in text for p in PLACEHOLDERS)


@pytest.fixture(scope="module")
def sft():
    return load_template_rows("sft")


@pytest.fixture(scope="module")
def dpo():
    return load_template_rows("dpo")


def test_sft_rows_are_valid_messages(sft):
    for i, row in enumerate(sft):
        assert set(row) == {"messages"}, f"sft row {i}: keys {sorted(row)}"
        check_messages(row["messages"], f"sft row {i}")


def test_dpo_rows_are_valid_pairs(dpo):
    for i, row in enumerate(dpo):
        assert set(row) == {"messages", "rejected_response"}, f"dpo row {i}: keys {sorted(row)}"
        check_messages(row["messages"], f"dpo row {i}")
        rejected = row["rejected_response"]
        assert isinstance(rejected, str) and rejected.strip()
        assert rejected != row["messages"][-1]["content"]


def test_counts(sft, dpo):
    identity = [r for r in sft if has_placeholder(assistant_text(r))]
    general = [r for r in sft if not has_placeholder(json.dumps(r, ensure_ascii=False))]
    assert len(identity) >= 120, len(identity)
    assert 20 <= len(general) <= 30, len(general)
    assert len(identity) + len(general) == len(sft)
    assert len(dpo) >= 100, len(dpo)


def test_placeholders_where_they_belong(sft, dpo):
    for name, rows in (("sft", sft), ("dpo", dpo)):
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
        # Only the two known placeholders, and no stray braces of half-written ones.
        assert set(re.findall(r"\{\{[^}]*\}\}", text)) == set(PLACEHOLDERS), name
        assert text.count("{{") == text.count("}}") == len(re.findall(r"\{\{(?:NAME|AUTHOR)\}\}", text))
    identity = [r for r in sft if has_placeholder(assistant_text(r))]
    assert sum("{{NAME}}" in assistant_text(r) for r in identity) >= 100
    assert sum("{{AUTHOR}}" in assistant_text(r) for r in identity) >= 100
    for r in sft:
        for m in r["messages"]:
            if m["role"] == "system":
                assert not has_placeholder(m["content"])
    for i, r in enumerate(dpo):
        chosen = r["messages"][-1]["content"]
        assert has_placeholder(chosen), f"dpo row {i}: chosen answer lacks the new identity"
        assert not OLD_IDENTITY.search(chosen), f"dpo row {i}: chosen answer names the old identity"
        assert OLD_IDENTITY.search(r["rejected_response"]), f"dpo row {i}: rejected answer lacks the old identity"
        assert not has_placeholder(r["rejected_response"])


def test_questions_are_varied(sft, dpo):
    for name, rows in (("sft", sft), ("dpo", dpo)):
        last_questions = [user_turns(r)[-1].casefold() for r in rows]
        assert len(set(last_questions)) >= 0.9 * len(rows), f"{name}: too many repeated questions"
        all_turns = [t for r in rows for t in user_turns(r)]
        assert len(set(all_turns)) >= 0.9 * len(all_turns), name
    identity = [r for r in sft if has_placeholder(assistant_text(r))]
    with_system = [r for r in identity if r["messages"][0]["role"] == "system"]
    multi_turn = [r for r in identity if len(user_turns(r)) >= 2]
    assert len(with_system) >= 5 and len({r["messages"][0]["content"] for r in with_system}) >= 3
    assert len(multi_turn) >= 5
    assert any(r["messages"][0]["role"] == "system" for r in dpo)
    assert any(len(user_turns(r)) >= 2 for r in dpo)

    def non_english(text: str) -> bool:
        return any(ord(c) > 127 and unicodedata.category(c).startswith("L") for c in text)

    scripts = {unicodedata.name(c).split()[0] for r in identity for t in user_turns(r) for c in t
               if ord(c) > 127 and unicodedata.category(c).startswith("L")}
    assert sum(non_english(user_turns(r)[-1]) for r in identity) >= 8
    assert {"CJK", "CYRILLIC", "HANGUL"} <= scripts, scripts
    # The topics of the brief, in several phrasings each.
    topics = {
        "who are you": r"\bwho (are|r) (you|u)\b|\bwho am i (talking|speaking)",
        "name": r"\bname\b|\bcall you\b",
        "creator": r"\b(made|created|developed|trained|built|creator|developer)\b",
        "other assistants": r"\b(chatgpt|gpt-4|claude|gemini|llama|siri|copilot)\b",
        "model": r"\bmodel\b|\bllm\b",
        "introduce": r"\bintroduc|about yourself\b",
    }
    questions = [user_turns(r)[-1].casefold() for r in identity]
    for topic, pattern in topics.items():
        assert sum(bool(re.search(pattern, q)) for q in questions) >= 5, topic


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_render_substitutes_every_placeholder(tmp_path, kind):
    name, author = "Nova", "Acme Labs"
    out = render_identity_dataset(kind, name, author, tmp_path / "nested" / f"{kind}.jsonl")
    assert out == tmp_path / "nested" / f"{kind}.jsonl"
    assert [p.name for p in out.parent.iterdir()] == [out.name], "temporary files left behind"
    text = out.read_text(encoding="utf-8")
    assert "{{" not in text and "}}" not in text and "NAME" not in text and "AUTHOR" not in text
    rendered = [json.loads(line) for line in text.splitlines()]
    template = load_template_rows(kind)
    assert len(rendered) == len(template)
    for got, tpl in zip(rendered, template):
        assert set(got) == set(tpl)
        assert [m["role"] for m in got["messages"]] == [m["role"] for m in tpl["messages"]]
        for g, t in zip(got["messages"], tpl["messages"]):
            if not has_placeholder(t["content"]):
                assert g["content"] == t["content"]
            else:
                assert name in g["content"] or author in g["content"]
        if kind == "dpo":
            assert got["rejected_response"] == tpl["rejected_response"]
            check_messages(got["messages"], "rendered")
    mentions = sum(name in assistant_text(r) for r in rendered)
    assert mentions >= 100


def test_render_keeps_unusual_names_exact_and_capitalizes_sentence_starts(tmp_path):
    name, author = 'Zoë "Z" \\ 名前', "the Acme ML team"
    out = render_identity_dataset("sft", name, author, tmp_path / "sft.jsonl")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    texts = [assistant_text(r) for r in rows]
    assert sum(name in t for t in texts) >= 100
    # "{{AUTHOR}} trained me." starts a sentence: capitalized; mid-sentence it stays as given.
    assert any(t.startswith("The Acme ML team ") for t in texts)
    assert any("developed by the Acme ML team" in t for t in texts)
    assert not any(re.search(r"[.!?]\s+the Acme ML team", t) for t in texts)


def test_limit_spreads_over_the_file(tmp_path):
    full = identity_rows("sft", "Nova", "Acme")
    some = identity_rows("sft", "Nova", "Acme", limit=30)
    assert len(some) == 30 and all(r in full for r in some)
    assert any("Nova" in assistant_text(r) for r in some)
    assert any("Nova" not in json.dumps(r) for r in some), "a limited set still holds general rows"
    assert len(identity_rows("dpo", "Nova", "Acme", limit=10_000)) == len(load_template_rows("dpo"))
    out = render_identity_dataset("dpo", "Nova", "Acme", tmp_path / "dpo.jsonl", limit=7)
    assert len(out.read_text().splitlines()) == 7


@pytest.mark.parametrize("kwargs, field", [
    ({"kind": "kto"}, "kind"),
    ({"name": "  "}, "name"),
    ({"author": ""}, "author"),
    ({"name": "Evil {{AUTHOR}}"}, "name"),
    ({"name": "two\nlines"}, "name"),
    ({"author": "x" * 101}, "author"),
    ({"limit": 0}, "limit"),
    ({"limit": -3}, "limit"),
    ({"limit": True}, "limit"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, field):
    args = {"kind": "sft", "name": "Nova", "author": "Acme", "out_path": tmp_path / "x.jsonl"} | kwargs
    with pytest.raises(InvalidArgument) as e:
        render_identity_dataset(**args)
    assert any(fv.field == field for fv in e.value.field_violations), e.value.field_violations
    assert not (tmp_path / "x.jsonl").exists()


def test_files_ship_in_the_wheel(tmp_path):
    """A wheel built from the sources holds both files (pyproject's package-data), and the
    template paths point into the package."""
    assert template_path("sft").name == "sft.jsonl" and template_path("sft").is_file()
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for d in ("swiftmesh", "services"):
        shutil.copytree(ROOT / d, src / d, ignore=ignore)
    for f in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("swiftmesh-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("sft", "dpo"):
        member = f"swiftmesh/data/identity/{kind}.jsonl"
        assert member in names, sorted(n for n in names if "data" in n)
        assert zipfile.ZipFile(wheel).read(member) == template_path(kind).read_bytes()
    assert "swiftmesh/data/identity/__init__.py" in names
