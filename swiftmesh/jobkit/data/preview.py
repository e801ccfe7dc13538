"""What a job would train on, before it runs: ``swiftmesh data preview``'s domain.

:func:`preview_dataset` streams each source through the same reading, checking, conversion and
``#N`` sampling as the trainer (:func:`~.sft.load_source`) and the aligner
(:func:`~.alignment.load_alignment_data`) and reports the formats detected, the counts, the
first rows as the trainer will see them (converted, and with a tokenizer rendered by its chat
template with the trained tokens marked), token-length statistics and how many rows
``max_length`` would cut. Memory stays bounded on any file size: the first ``show`` rows, a
seeded reservoir of ``stats_rows`` rows for the statistics, and for a ``#N`` source the ``N``
rows the job would keep.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from swiftmesh.jobkit.data.alignment import RowConverter, formats_for
from swiftmesh.jobkit.data.encode import IGNORE_INDEX, EncodeError, encode_row
from swiftmesh.jobkit.data.fields import METHOD_KIND
from swiftmesh.jobkit.data.reading import raise_violations, reservoir
from swiftmesh.jobkit.data.sft import RowNormaliser
from swiftmesh.jobkit.data.stream import iter_source, open_source
from swiftmesh.runtime.errors import FieldViolation, InvalidArgument

METHODS = ("pt", "sft", *METHOD_KIND)
# Rows measured for the token statistics when a source has more (seeded reservoir).
STATS_ROWS = 2000
# A text segment of a rendered row: (text, trained?).
Segment = tuple[str, bool]


@dataclass
class PreviewRow:
    """One row as the trainer sees it: where it came from, its converted form, and (with a
    tokenizer) each rendered side as segments with the trained ones marked."""

    file: str
    row: int
    converted: dict[str, Any]
    # "text" (sft/pt), "chosen"/"rejected" (pairs), "completion" (kto), "prompt" (ppo/grpo).
    rendered: dict[str, list[Segment]] = field(default_factory=dict)
    tokens: int | None = None


@dataclass
class LengthStats:
    """Token lengths (the longest side of a pair) of the ``count`` rows measured."""

    count: int
    min: int
    mean: float
    p50: float
    p95: float
    max: int
    # Rows measured that are longer than max_length (0 without one).
    over_max: int = 0


@dataclass
class Preview:
    """What :func:`preview_dataset` found."""

    method: str
    # File -> {format: source rows}.
    formats: dict[str, dict[str, int]]
    rows_read: int  # source rows read and checked
    rows_kept: int  # rows the job trains on (after #N; KTO counts each pair twice)
    first: list[PreviewRow]
    lengths: LengthStats | None = None
    max_length: int | None = None
    # Whether the statistics come from a sample of the rows kept.
    sampled: bool = False
    ignored: dict[str, int] = field(default_factory=dict)
    style: str = ""


def _segments(tokenizer, ids: list[int], labels: list[int]) -> list[Segment]:
    out: list[Segment] = []
    start = 0
    for j in range(1, len(ids) + 1):
        if j == len(ids) or (labels[j] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            out.append((tokenizer.decode(ids[start:j]), labels[start] != IGNORE_INDEX))
            start = j
    return out


def _render_prompt(tokenizer, prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def _render_side(tokenizer, prompt, completion) -> tuple[list[Segment], int]:
    """TRL's way: the completion is the text the full conversation adds after the prompt."""
    p = _render_prompt(tokenizer, prompt)
    if isinstance(completion, str):
        c = completion
    else:
        full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        c = full[len(p):] if full.startswith(p) else tokenizer.apply_chat_template(completion, tokenize=False)
    n = len(tokenizer(p, add_special_tokens=False)["input_ids"]) + len(tokenizer(c, add_special_tokens=False)["input_ids"])
    return [(p, False), (c, True)], n


def render_row(tokenizer, method: str, row: dict) -> tuple[dict[str, list[Segment]], int]:
    """``(sides, tokens)``: the converted ``row`` rendered with the tokenizer's chat template,
    each side as segments marked trained or not, and its length in tokens (the longest side).

    Raises:
        EncodeError: the template cannot render the row.
    """
    if method in ("sft", "pt"):
        enc = encode_row(tokenizer, row, task=method, max_length=1 << 30, assistant_only=True)
        return {"text": _segments(tokenizer, enc["input_ids"], enc["labels"])}, len(enc["input_ids"])
    try:
        kind = METHOD_KIND[method]
        if kind == "prompt":
            p = _render_prompt(tokenizer, row["prompt"])
            return {"prompt": [(p, False)]}, len(tokenizer(p, add_special_tokens=False)["input_ids"])
        sides = ("chosen", "rejected") if kind == "paired" else ("completion",)
        out, longest = {}, 0
        for side in sides:
            out[side], n = _render_side(tokenizer, row["prompt"], row[side])
            longest = max(longest, n)
        return out, longest
    except Exception as e:  # noqa: BLE001  (jinja errors of the template)
        raise EncodeError(f"the chat template failed: {e}") from None


def _stats(lengths: list[int], max_length: int | None) -> LengthStats | None:
    if not lengths:
        return None
    s = sorted(lengths)
    return LengthStats(
        count=len(s), min=s[0], mean=statistics.fmean(s), p50=statistics.median(s),
        p95=s[min(len(s) - 1, round(0.95 * (len(s) - 1)))], max=s[-1],
        over_max=sum(1 for n in s if max_length and n > max_length),
    )


class _Source:
    """One source's converter for ``method``: the SFT normaliser or per-file alignment converters."""

    def __init__(self, method: str, idx: int, ignore_columns: bool) -> None:
        self.method, self.idx, self.ignore_columns = method, idx, ignore_columns
        self.sft = RowNormaliser(idx, method, ignore_columns=ignore_columns) if method in ("sft", "pt") else None
        self.files: dict[str, RowConverter] = {}
        self.read = 0

    def convert(self, file: str, n: int, row: dict) -> tuple[str, int, list[dict]] | None:
        self.read += 1
        if self.sft is not None:
            out = self.sft.convert(file, n, row)
            return None if out is None else (file, n, [out[0]])
        conv = self.files.get(file)
        if conv is None:
            conv = self.files[file] = RowConverter(self.method, file, ignore_columns=self.ignore_columns)
        try:
            return file, n, conv.convert(n, row)
        except InvalidArgument as e:
            e.field_violations.insert(0, FieldViolation(f"datasets[{self.idx}]", e.message.split("\n", 1)[0]))
            raise

    def finish(self, preview: Preview) -> None:
        if self.sft is not None:
            raise_violations(self.sft.errors)
            preview.formats.update(self.sft.counts)
            ignored = self.sft.ignored
        else:
            ignored = {}
            for name, conv in self.files.items():
                preview.formats[name] = conv.formats
                preview.style = preview.style or (conv.style or "")
                for k, v in conv.ignored.items():
                    ignored[k] = ignored.get(k, 0) + v
        for k, v in ignored.items():
            preview.ignored[k] = preview.ignored.get(k, 0) + v
        preview.rows_read += self.read


def preview_dataset(
    sources: Sequence[str],
    method: str,
    *,
    tokenizer=None,
    max_length: int | None = None,
    show: int = 3,
    stats_rows: int = STATS_ROWS,
    seed: int = 42,
    models=None,
    ignore_columns: bool = False,
) -> Preview:
    """Stream ``sources`` (paths, directories, ``models/{name}``, each optionally ``#N``) as a
    ``method`` job would read them (``pt``, ``sft`` or an alignment method) and report them.

    ``tokenizer`` (optional) renders the first ``show`` rows and measures token lengths over
    every kept row, or a seeded sample of ``stats_rows`` of them when there are more;
    ``max_length`` counts the rows it would cut. ``seed`` is the job's (it picks ``#N``).

    Raises:
        InvalidArgument: an unknown method, and every error the job's own data loading would
            raise (bad files, rows, formats, unused columns), with the same messages.
        NotFound: a ``models/`` dataset the hub lacks.
    """
    if method not in METHODS:
        raise InvalidArgument(f"unknown method {method!r}; choose one of {', '.join(METHODS)}",
                              reason="BAD_METHOD", field_violations=[("method", f"unknown {method!r}")])
    if method not in ("sft", "pt"):
        formats_for(method)
    if not sources:
        raise InvalidArgument("no dataset given", reason="NO_DATASET", field_violations=[("datasets", "required")])
    preview = Preview(method=method, formats={}, rows_read=0, rows_kept=0, first=[], max_length=max_length)
    measured: list[tuple[str, int, list[dict]]] = []
    kept_total = 0
    for i, spec in enumerate(sources):
        src = _Source(method, i, ignore_columns)
        path_str, count, path = open_source(spec, i, models=models, field="datasets")
        rows = iter_source(path, path_str, i, field="datasets",
                           file_reason="BAD_DATASET_ROW" if method in ("sft", "pt") else "BAD_DATASET_FILE")
        items: Iterator = (item for f, n, r in rows if (item := src.convert(f, n, r)) is not None)
        if count is not None:
            picked = reservoir(items, count, seed)
            kept_total += len(picked)
            preview.rows_kept += sum(len(x[2]) for x in picked)
            preview.first += picked[: max(0, show - len(preview.first))]
            measured += reservoir(picked, stats_rows, seed, repeat=False)
        else:
            def tee(items=items):
                nonlocal kept_total
                for item in items:
                    kept_total += 1
                    preview.rows_kept += len(item[2])
                    if len(preview.first) < show:
                        preview.first.append(item)
                    yield item
            measured += reservoir(tee(), stats_rows, seed + i, repeat=False)
        src.finish(preview)
    preview.sampled = kept_total > len(measured)
    # One preview row per training row (a KTO pair gives a desirable and an undesirable one).
    preview.first = [PreviewRow(f, n, c) for f, n, convs in preview.first for c in convs]
    if tokenizer is not None:
        for pr in preview.first:
            pr.rendered, pr.tokens = render_row(tokenizer, method, pr.converted)
        lengths = [render_row(tokenizer, method, c)[1] for _, _, convs in measured for c in convs]
        preview.lengths = _stats(lengths, max_length)
    return preview
