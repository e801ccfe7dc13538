"""The identity dataset of ``swiftmesh quickstart``: teaches a model a new name and author.

Two files, written for SwiftMesh and shipped in the package, in ms-swift's dataset formats:

``sft.jsonl``
    Supervised fine-tuning rows in the ``messages`` format
    (``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``): questions
    about the assistant's identity (who are you, what's your name, who made you, are you
    ChatGPT, what model are you, introduce yourself ...) in many phrasings, a few in other
    languages, some with a system prompt, some multi-turn; plus ordinary-knowledge rows without
    identity, so that the model keeps its other abilities.

``dpo.jsonl``
    Preference pairs in the ``messages`` + ``rejected_response`` format: ``messages`` ends in the
    preferred assistant turn, which names the new identity; ``rejected_response`` is the
    dispreferred reply, which names the base model's old identity (SmolLM, by Hugging Face).

The answers hold the placeholders ``{{NAME}}`` and ``{{AUTHOR}}`` (as ms-swift's
self-cognition data does); :func:`render_identity_dataset` substitutes them and writes a
ready-to-train JSONL file.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from swiftmesh.runtime.errors import InvalidArgument

Kind = Literal["sft", "dpo"]
KINDS: tuple[str, ...] = ("sft", "dpo")
#: The placeholders of the packaged files.
NAME_PLACEHOLDER = "{{NAME}}"
AUTHOR_PLACEHOLDER = "{{AUTHOR}}"
_PLACEHOLDER = re.compile(r"\{\{(NAME|AUTHOR)\}\}")
#: Longest name or author accepted, characters.
MAX_FIELD_CHARS = 100

__all__ = [
    "AUTHOR_PLACEHOLDER",
    "KINDS",
    "NAME_PLACEHOLDER",
    "identity_rows",
    "load_template_rows",
    "render_identity_dataset",
    "template_path",
]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise InvalidArgument(
            f"unknown identity dataset kind {kind!r}; choose one of {', '.join(KINDS)}",
            field_violations=[("kind", f"must be one of {', '.join(KINDS)}")],
        )


def template_path(kind: Kind) -> Path:
    """Path of the packaged template file of ``kind`` ("sft" or "dpo"), placeholders unreplaced."""
    _check_kind(kind)
    return Path(str(importlib.resources.files(__name__).joinpath(f"{kind}.jsonl")))


def load_template_rows(kind: Kind) -> list[dict[str, Any]]:
    """The rows of the packaged template file of ``kind``, placeholders unreplaced."""
    _check_kind(kind)
    text = importlib.resources.files(__name__).joinpath(f"{kind}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _check_value(field: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{field} must be a non-empty string", field_violations=[(field, "empty")])
    value = value.strip()
    problems = []
    if len(value) > MAX_FIELD_CHARS:
        problems.append(f"longer than {MAX_FIELD_CHARS} characters")
    if any(c in value for c in "\r\n\t"):
        problems.append("contains a line break or tab")
    if "{{" in value or "}}" in value:
        problems.append("contains '{{' or '}}'")
    if problems:
        raise InvalidArgument(f"{field} {value!r} is not usable: {', '.join(problems)}",
                              field_violations=[(field, p) for p in problems])
    return value


def _substitute(value: Any, mapping: dict[str, str]) -> Any:
    """Replace the placeholders in every string of ``value``; a value that starts a sentence
    gets a capital first letter ("the Acme team trained me" -> "The Acme team trained me")."""
    if isinstance(value, str):
        def replace(m: re.Match[str]) -> str:
            text = mapping[m.group(1)]
            before = value[: m.start()].rstrip()
            if not before or before[-1] in ".!?":
                text = text[:1].upper() + text[1:]
            return text

        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    return value


def _spread(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """``limit`` rows evenly spread over the file (so a small limit still mixes every kind of
    question), in file order; all rows when ``limit`` is None or not smaller than the file."""
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


def identity_rows(kind: Kind, name: str, author: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The rows of ``kind`` with ``{{NAME}}`` and ``{{AUTHOR}}`` replaced (see
    :func:`render_identity_dataset` for the arguments)."""
    _check_kind(kind)
    mapping = {"NAME": _check_value("name", name), "AUTHOR": _check_value("author", author)}
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidArgument(f"limit must be a positive integer or None (got {limit!r})",
                              field_violations=[("limit", "must be >= 1")])
    return [_substitute(row, mapping) for row in _spread(load_template_rows(kind), limit)]


def render_identity_dataset(kind: Kind, name: str, author: str, out_path: Path | str,
                            limit: int | None = None) -> Path:
    """Write the identity dataset of ``kind`` for a model called ``name`` made by ``author``.

    Args:
        kind: "sft" (``messages`` rows for supervised fine-tuning) or "dpo" (``messages`` +
            ``rejected_response`` preference pairs).
        name: the assistant's new name, replacing ``{{NAME}}`` (e.g. "Nova").
        author: who made it, replacing ``{{AUTHOR}}`` (e.g. "the Acme ML team").
        out_path: the JSONL file to write (parent folders are created). Written to a temporary
            file first and renamed, so a reader never sees half a file.
        limit: at most this many rows, evenly spread over the file so that every kind of question
            stays represented (for quick runs); None: every row.

    Returns:
        ``out_path`` as a Path. One JSON object per line, UTF-8, non-ASCII kept as is.

    Raises:
        InvalidArgument: unknown ``kind``; empty ``name``/``author``, longer than 100 characters,
            with a line break or with ``{{``/``}}``; ``limit`` not a positive integer.
    """
    rows = identity_rows(kind, name, author, limit)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
