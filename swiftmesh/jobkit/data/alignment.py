"""Alignment datasets: format detection, validation and conversion to TRL's columns
(https://huggingface.co/docs/trl/dataset_formats; ms-swift's RLHF dataset formats,
https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html#rlhf).

Each alignment method trains on one *kind* of data:

==========  ===============  =========================================================
kind        methods          accepted row formats (detected per row)
==========  ===============  =========================================================
paired      dpo orpo cpo     ``prompt``/``chosen``/``rejected`` (text, or lists of messages);
            simpo rm         ``messages`` ending in the preferred assistant turn +
                             ``rejected_response`` (ms-swift); ``messages`` +
                             ``rejected_messages``; ``chosen``/``rejected`` as two full
                             conversations (implicit prompt); ``query``/``response``/
                             ``rejected_response`` (ms-swift, optional ``history``, ``system``)
unpaired    kto              ``prompt``/``completion``/``label``; ``messages`` + ``label``
                             (ms-swift); ``query``/``response``/``label``; or any paired
                             format (each pair gives one desirable and one undesirable row)
prompt      ppo grpo         ``prompt`` (text or messages); ``messages`` ending in a user
                             turn (a final assistant turn is dropped and kept as ``solution``
                             for reward functions, as ms-swift does); ``query``; or any
                             paired/unpaired format (its responses are ignored)
==========  ===============  =========================================================

The formats are defined by method family in :mod:`.preference`, :mod:`.kto` and
:mod:`.prompts`; this module detects them, explains misfits and loads a job's datasets. Files
are read by :func:`.reading.read_source` (local ``.jsonl``/``.json``/``.csv``/``.parquet``
files, directories of them, ``save_to_disk`` directories, ``models/{name}`` datasets in the
hub), with ms-swift's ``#N`` sampling.

Rows are converted to the columns TRL's trainers read: ``prompt``/``chosen``/``rejected``
(plus ``margin`` for reward models), ``prompt``/``completion``/``label`` for KTO and
``prompt`` for PPO/GRPO (plus the row's other scalar columns, which GRPO passes to reward
functions). Conversational rows stay conversational (``[{"role", "content"}]`` lists, rendered
by the model's chat template inside TRL); plain-text rows stay plain text. A dataset must be
all one or the other.

Anything that does not fit raises :class:`~swiftmesh.runtime.errors.InvalidArgument`
(reason ``BAD_DATASET_ROW``) naming the dataset, the row, the fields the row has, the
formats the chosen method accepts with an example of each, and a hint when the row is a
near miss (a misspelt field, ms-swift's ``rejected`` vs ``rejected_response``, SFT data
given to a preference method, KTO data given to DPO, ...).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from swiftmesh.jobkit.data.fields import (
    KIND_NEEDS,
    METHOD_KIND,
    METHOD_TITLE,
    Format,
    Kind,
    RowError,
    Style,
    carries_content,
    is_messages,
    unused_columns,
)
from swiftmesh.jobkit.data.kto import UNPAIRED_FORMATS
from swiftmesh.jobkit.data.preference import PAIRED_FORMATS, reward_margin
from swiftmesh.jobkit.data.prompts import PROMPT_FORMATS
from swiftmesh.jobkit.data.stream import collect
from swiftmesh.runtime.errors import FieldViolation, InvalidArgument

FORMATS: dict[Kind, list[Format]] = {"paired": PAIRED_FORMATS, "unpaired": UNPAIRED_FORMATS, "prompt": PROMPT_FORMATS}

# Every field name some format knows, for "did you mean" hints.
KNOWN_FIELDS = sorted({k for fs in FORMATS.values() for f in fs for k in f.required} | {"system", "history", "margin", "tools"})


def formats_for(method: str) -> list[Format]:
    """The row formats a method accepts, in detection order.

    Raises:
        InvalidArgument: unknown method.
    """
    kind = METHOD_KIND.get(method)
    if kind is None:
        raise InvalidArgument(
            f"unknown rlhf_type {method!r}; choose one of {', '.join(METHOD_KIND)}",
            reason="BAD_RLHF_TYPE",
            field_violations=[("spec.rlhf_type", f"unknown method {method!r}")],
        )
    return FORMATS[kind]


# --------------------------------------------------------------------------- messages


def _example_json(d: dict) -> str:
    return json.dumps(d, ensure_ascii=False)


def describe_formats(method: str) -> str:
    """The accepted formats of a method, one per line with an example (for errors and --help)."""
    fmts = formats_for(method)
    seen_names = set()
    lines = []
    for f in fmts:
        if f.name.endswith("(unpaired)") or f.name.endswith("(prompt only)"):
            continue
        seen_names.add(f.name)
        lines.append(f"  - {' + '.join(f.required)}: {f.description}\n      e.g. {_example_json(f.example)}")
    kind = METHOD_KIND[method]
    if kind == "unpaired":
        lines.append("  - or any preference-pair format (prompt/chosen/rejected, messages + rejected_response, ...): "
                     "each pair gives one desirable and one undesirable row")
    elif kind == "prompt":
        lines.append("  - or any preference-pair format (prompt/chosen/rejected, ...): only the prompt is used")
    return "\n".join(lines)


def _hints(method: str, row: dict) -> list[str]:
    kind = METHOD_KIND[method]
    keys = set(row)
    hints = []
    title = METHOD_TITLE[method]
    if "messages" in keys and "rejected" in keys and "rejected_response" not in keys:
        hints.append("ms-swift's pair format names the dispreferred reply 'rejected_response', not 'rejected' "
                     "(or use prompt/chosen/rejected)")
    if "messages" in keys and "rejected_response" not in keys and "label" not in keys and "rejected" not in keys \
            and kind != "prompt":
        if kind == "paired":
            hints.append("this row looks like SFT data (a conversation with one reply); "
                         f"{title} needs a dispreferred reply too: add 'rejected_response' "
                         "(or train it with `swiftmesh sft`)")
        else:
            hints.append("this row has 'messages' but no 'label': add \"label\": true or false")
    if kind == "paired" and "label" in keys and ({"completion", "messages", "response"} & keys):
        hints.append("this row is unpaired data (one reply with a 'label'); train it with --rlhf_type kto, "
                     "or give pairs")
    if kind == "paired" and "prompt" in keys and not ({"chosen", "rejected"} & keys) and "label" not in keys:
        hints.append("this row has only a prompt; prompt-only data is for --rlhf_type ppo or grpo")
    if kind == "unpaired" and {"prompt", "completion"} <= keys and "label" not in keys:
        hints.append("KTO rows need 'label': true (desirable) or false (undesirable)")
    if "conversations" in keys:
        hints.append("ShareGPT 'conversations' rows: rename the field to 'messages' (ShareGPT 'from'/'value' "
                     "entries inside it are understood)")
    if ("instruction" in keys or "output" in keys) and kind != "prompt":
        hints.append("Alpaca rows (instruction/input/output) are SFT data; for alignment add the fields listed above "
                     "(e.g. 'rejected_response' next to 'output' for a preference pair)")
    # misspellings
    for k in sorted(keys):
        if k in KNOWN_FIELDS:
            continue
        close = difflib.get_close_matches(k, KNOWN_FIELDS, n=1, cutoff=0.75)
        if close:
            hints.append(f"did you mean '{close[0]}' instead of '{k}'?")
    return hints


def _fields_of(row: dict) -> str:
    return ", ".join(f"'{k}'" for k in row) or "(none)"


def no_format_error(method: str, name: str, row_number: int, row: dict, *, field_prefix: str = "",
                    earlier_format: str | None = None) -> InvalidArgument:
    """The INVALID_ARGUMENT for a row that fits none of the method's formats."""
    title = METHOD_TITLE[method]
    kind = METHOD_KIND[method]
    hints = _hints(method, row)
    msg = (
        f"dataset {name!r}, row {row_number}: this row does not fit any {title} dataset format. "
        f"It has the fields {_fields_of(row)}.\n"
        f"{title} trains on {KIND_NEEDS[kind]}; each row needs one of these field sets:\n"
        f"{describe_formats(method)}"
    )
    if earlier_format:
        msg += f"\nThe rows before it were read as {earlier_format}."
    if hints:
        msg += "\nHint: " + "\nHint: ".join(hints)
    expected = " | ".join(" + ".join(f.required) for f in formats_for(method) if "(" not in f.name)
    return InvalidArgument(
        msg,
        reason="BAD_DATASET_ROW",
        field_violations=[(f"{field_prefix}{name}:{row_number}", f"fields {_fields_of(row)}; {title} expects {expected}")],
        metadata={"dataset": name, "row": str(row_number), "rlhf_type": method},
    )


def bad_value_error(method: str, name: str, row_number: int, fmt: Format, err: RowError, *,
                    field_prefix: str = "") -> InvalidArgument:
    """The INVALID_ARGUMENT (reason ``BAD_DATASET_ROW``) for a row that was read as ``fmt`` but
    has a bad value: the message names the dataset, the row, the problem and the format with its
    example; the field violation is ``<field_prefix><name>:<row>.<field>``."""
    msg = (
        f"dataset {name!r}, row {row_number}: {err.message}. "
        f"(The row was read as the {fmt.name} format: {fmt.description}; "
        f"e.g. {_example_json(fmt.example)})"
    )
    return InvalidArgument(
        msg,
        reason="BAD_DATASET_ROW",
        field_violations=[(f"{field_prefix}{name}:{row_number}.{err.field}", err.message)],
        metadata={"dataset": name, "row": str(row_number), "rlhf_type": method, "format": fmt.name},
    )


# --------------------------------------------------------------------------- conversion


_MESSAGE_FIELDS = ("messages", "rejected_messages", "prompt", "chosen", "rejected", "completion", "conversations")


def _decode_json_cells(row: dict) -> dict:
    """CSV and some exports store message lists as JSON strings: decode those cells."""
    out = row
    for k in _MESSAGE_FIELDS:
        v = row.get(k)
        if isinstance(v, str) and v.lstrip().startswith("[{"):
            try:
                decoded = json.loads(v)
            except ValueError:
                continue
            if is_messages(decoded):
                out = dict(out) if out is row else out
                out[k] = decoded
    return out


def _style_of(out: dict) -> Style:
    v = out.get("prompt")
    if isinstance(v, list):
        return "conversational"
    for k in ("chosen", "rejected", "completion"):
        if isinstance(out.get(k), list):
            return "conversational"
    return "standard"


class RowConverter:
    """Converts the rows of one dataset file, one at a time, to TRL's columns for ``method``,
    and keeps what the file turned out to be.

    A row is read with the first of the method's formats whose fields it has and that uses
    every column carrying content; when each matching format would leave such a column unused,
    that is an error naming the row and the column (with ``ignore_columns``, the column is
    dropped and counted in ``ignored``). One file holds one format and one style.
    """

    def __init__(self, method: str, name: str, *, ignore_columns: bool = False, field_prefix: str = "") -> None:
        self.method, self.name, self.field_prefix = method, name, field_prefix
        self.fmts = formats_for(method)
        self.ignore_columns = ignore_columns
        # Format name -> number of source rows read with it; the first row of each.
        self.formats: dict[str, int] = {}
        self.first_rows: dict[str, int] = {}
        self.style: Style | None = None
        self.example_rows: dict[str, int] = {}
        # Column -> rows in which it was dropped (ignore_columns only).
        self.ignored: dict[str, int] = {}
        self._picks: dict[tuple, tuple[Format | None, list[str]]] = {}

    def _unused(self, fmt: Format, row: dict) -> list[str]:
        unused = unused_columns(row, fmt.uses() | ({"margin"} if self.method == "rm" else set()))
        if fmt.passes_scalars:  # text columns go on to the reward functions
            unused = [k for k in unused if not isinstance(row[k], str)]
        return unused

    def _pick(self, row: dict) -> tuple[Format | None, list[str]]:
        # The pick depends only on which columns are present, null, or carry content: cached by
        # that shape (a large file has few shapes; this keeps streaming fast).
        shape = tuple((k, v is None, carries_content(v), isinstance(v, str)) for k, v in row.items())
        hit = self._picks.get(shape)
        if hit is None:
            hit = self._picks[shape] = self._pick_uncached(row)
        return hit

    def _pick_uncached(self, row: dict) -> tuple[Format | None, list[str]]:
        matches = [f for f in self.fmts if f.matches(row)]
        for f in matches:
            if not self._unused(f, row):
                return f, []
        return (matches[0], self._unused(matches[0], row)) if matches else (None, [])

    def convert(self, row_number: int, row: dict) -> list[dict]:
        """The TRL rows of one source row (KTO may give two).

        Raises:
            InvalidArgument: the row fits none of the method's formats, has a bad value or an
                unused column with content (naming row and field), is of another format or style
                than the rows before it in the file.
        """
        name, method, prefix = self.name, self.method, self.field_prefix
        row = _decode_json_cells(row)
        fmt, unused = self._pick(row)
        if fmt is None:
            raise no_format_error(method, name, row_number, row, field_prefix=prefix,
                                  earlier_format=next(iter(self.formats), None))
        if self.formats and fmt.name not in self.formats:
            first = next(iter(self.formats))
            raise InvalidArgument(
                f"dataset {name!r}, row {row_number}: the row is in the {fmt.name} format but the rows before it "
                f"are {first} (row {self.first_rows[first]}); one file holds one format",
                reason="MIXED_DATASET_FORMATS",
                field_violations=[(f"{prefix}{name}:{row_number}", f"{fmt.name} after {first}")],
                metadata={"dataset": name, "row": str(row_number), "format": fmt.name})
        if unused and not self.ignore_columns:
            raise bad_value_error(method, name, row_number, fmt, RowError(
                unused[0], f"column '{unused[0]}' carries content that the {fmt.name} format does not use "
                f"(it reads {', '.join(sorted(fmt.uses()))}); rename it to what it means, remove it, "
                "or pass --ignore_columns to drop such columns with a warning"), field_prefix=prefix)
        for k in unused:
            self.ignored[k] = self.ignored.get(k, 0) + 1
        try:
            converted = fmt.convert(row)
            margin = reward_margin(row) if method == "rm" else None
        except RowError as e:
            raise bad_value_error(method, name, row_number, fmt, e, field_prefix=prefix) from None
        if margin is not None:
            for c in converted:
                c["margin"] = margin
        self.formats[fmt.name] = self.formats.get(fmt.name, 0) + 1
        self.first_rows.setdefault(fmt.name, row_number)
        for c in converted:
            st = _style_of(c)
            self.example_rows.setdefault(st, row_number)
            if self.style is None:
                self.style = st
            elif self.style != st:
                a, b = self.example_rows["standard"], self.example_rows["conversational"]
                raise InvalidArgument(
                    f"dataset {name!r} mixes plain-text rows (e.g. row {a}) and conversational rows "
                    f"(lists of messages, e.g. row {b}); make every row one or the other",
                    reason="MIXED_DATASET_STYLES",
                    field_violations=[(f"{prefix}{name}:{row_number}", "plain text and messages mixed")],
                )
        return converted


@dataclass
class AlignmentData:
    """Datasets converted for one alignment method, ready for TRL (``to_dataset``)."""

    method: str
    rows: list[dict]
    style: Style
    # Dataset name -> {format name: rows}.
    formats: dict[str, dict[str, int]]
    # Column -> source rows in which it was dropped (``ignore_columns`` only).
    ignored: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def to_dataset(self):
        """A ``datasets.Dataset`` with TRL's columns.

        Raises:
            InvalidArgument: the extra columns disagree in type between rows.
        """
        import datasets

        rows = self.rows
        if self.method in ("ppo", "grpo"):
            # Keep only the extra columns every row has (Arrow needs one schema).
            common = set(rows[0])
            for r in rows[1:]:
                common &= set(r)
            rows = [{k: v for k, v in r.items() if k in common} for r in rows]
        if self.method == "rm" and any("margin" in r for r in rows) and not all("margin" in r for r in rows):
            rows = [{**r, "margin": r.get("margin", 0.0)} for r in rows]
        try:
            return datasets.Dataset.from_list(rows)
        except Exception as e:  # noqa: BLE001  (pyarrow type errors)
            raise InvalidArgument(
                f"the {self.method} datasets could not be combined into one table: {e}",
                reason="BAD_DATASET_SCHEMA",
            ) from None

    def summary(self) -> str:
        """One line for the job's log, e.g. "12 conversational rows for dpo (d.jsonl: 12 rows as
        prompt/chosen/rejected)"."""
        parts = []
        for name, fm in self.formats.items():
            parts.append(f"{name}: " + ", ".join(f"{n} rows as {f}" for f, n in fm.items()))
        out = f"{len(self.rows)} {self.style} rows for {self.method} ({'; '.join(parts)})"
        if self.ignored:
            out += "; WARNING: ignored columns " + ", ".join(f"'{k}' ({n} rows)" for k, n in self.ignored.items())
        return out


def load_alignment_data(
    specs: Sequence[str],
    method: str,
    *,
    seed: int = 42,
    models=None,
    field: str = "spec.datasets",
    ignore_columns: bool = False,
) -> AlignmentData:
    """Read (streamed), validate, convert and sample (``#N``) the datasets of an alignment job.

    Args:
        specs: dataset sources (see :mod:`.stream`), each optionally with ``#N``.
        method: ``dpo``, ``kto``, ``orpo``, ``cpo``, ``simpo``, ``rm``, ``ppo`` or ``grpo``.
        seed: seed of the ``#N`` sampling (default 42).
        models: the model source, for ``models/{name}`` datasets in the hub.
        field: the request field the specs came from, for field violations.
        ignore_columns: drop columns with content that the row's format does not use, counted
            in ``AlignmentData.ignored`` (default False: such a column is an error).

    Raises:
        InvalidArgument: no datasets; a file is missing or unreadable; a row fits no format of
            ``method``, has a bad value or an unused column with content (the message names
            dataset, row, field and a hint); a file mixes formats; the datasets mix plain-text
            and conversational rows.
        NotFound: a hub dataset that does not exist.
    """
    formats_for(method)  # unknown method -> InvalidArgument
    if not specs:
        raise InvalidArgument(
            f"no dataset given; {METHOD_TITLE[method]} needs {KIND_NEEDS[METHOD_KIND[method]]}. Accepted formats:\n"
            + describe_formats(method),
            reason="NO_DATASET",
            field_violations=[(field, "at least one dataset is required")],
        )
    rows: list[dict] = []
    formats: dict[str, dict[str, int]] = {}
    ignored: dict[str, int] = {}
    style: Style | None = None
    style_source = ""
    for i, spec in enumerate(specs):
        converters: dict[str, RowConverter] = {}

        def convert(file: str, n: int, row: dict, i=i, converters=converters) -> list[dict]:
            conv = converters.get(file)
            if conv is None:
                conv = converters[file] = RowConverter(method, file, ignore_columns=ignore_columns)
            try:
                return conv.convert(n, row)
            except InvalidArgument as e:
                e.field_violations.insert(0, FieldViolation(f"{field}[{i}]", e.message.split("\n", 1)[0]))
                raise

        picked = collect(spec, i, convert, models=models, seed=seed, field=field)
        for name, conv in converters.items():
            if style is None:
                style, style_source = conv.style, name
            elif conv.style != style:
                raise InvalidArgument(
                    f"dataset {name!r} is {conv.style} but {style_source!r} is {style}; "
                    "all datasets of a job must be plain text, or all conversational (lists of messages)",
                    reason="MIXED_DATASET_STYLES",
                    field_violations=[(f"{field}[{i}]", f"{conv.style} rows after {style} rows")],
                )
            formats[name] = conv.formats
            for k, n in conv.ignored.items():
                ignored[k] = ignored.get(k, 0) + n
        for item in picked:
            rows.extend(item)
    assert style is not None
    return AlignmentData(method=method, rows=rows, style=style, formats=formats, ignored=ignored)
