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
    is_messages,
)
from swiftmesh.jobkit.data.kto import UNPAIRED_FORMATS
from swiftmesh.jobkit.data.preference import PAIRED_FORMATS, reward_margin
from swiftmesh.jobkit.data.prompts import PROMPT_FORMATS
from swiftmesh.jobkit.data.reading import read_source
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
    if "instruction" in keys or "output" in keys:
        hints.append("Alpaca rows (instruction/input/output) are SFT data; alignment needs the fields listed above")
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


@dataclass
class ConvertedFile:
    """The rows of one dataset converted to TRL's columns."""

    name: str
    rows: list[dict]
    # Format name -> number of source rows read with it.
    formats: dict[str, int] = field(default_factory=dict)
    style: Style | None = None
    # A source row of each style, for "mixed styles" messages.
    example_rows: dict[str, int] = field(default_factory=dict)


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


def convert_records(
    records: Sequence[tuple[int, dict]],
    method: str,
    name: str,
    *,
    field_prefix: str = "",
) -> ConvertedFile:
    """Detect the format of every row and convert it to TRL's columns for ``method``.

    Raises:
        InvalidArgument: a row fits none of the method's formats, or one of its values is wrong
            (naming the row and field), or the file mixes plain-text and conversational rows.
    """
    fmts = formats_for(method)
    out = ConvertedFile(name=name, rows=[])
    for row_number, row in records:
        row = _decode_json_cells(row)
        fmt = next((f for f in fmts if f.matches(row)), None)
        if fmt is None:
            raise no_format_error(method, name, row_number, row, field_prefix=field_prefix,
                                  earlier_format=next(iter(out.formats), None))
        try:
            converted = fmt.convert(row)
        except RowError as e:
            raise bad_value_error(method, name, row_number, fmt, e, field_prefix=field_prefix) from None
        if method == "rm":
            try:
                margin = reward_margin(row)
            except RowError as e:
                raise bad_value_error(method, name, row_number, fmt, e, field_prefix=field_prefix) from None
            if margin is not None:
                for c in converted:
                    c["margin"] = margin
        out.formats[fmt.name] = out.formats.get(fmt.name, 0) + 1
        for c in converted:
            st = _style_of(c)
            out.example_rows.setdefault(st, row_number)
            if out.style is None:
                out.style = st
            elif out.style != st:
                a, b = out.example_rows["standard"], out.example_rows["conversational"]
                raise InvalidArgument(
                    f"dataset {name!r} mixes plain-text rows (e.g. row {a}) and conversational rows "
                    f"(lists of messages, e.g. row {b}); make every row one or the other",
                    reason="MIXED_DATASET_STYLES",
                    field_violations=[(f"{field_prefix}{name}:{row_number}", "plain text and messages mixed")],
                )
            out.rows.append(c)
    return out


@dataclass
class AlignmentData:
    """Datasets converted for one alignment method, ready for TRL (``to_dataset``)."""

    method: str
    rows: list[dict]
    style: Style
    # Dataset name -> {format name: rows}.
    formats: dict[str, dict[str, int]]

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
        return f"{len(self.rows)} {self.style} rows for {self.method} ({'; '.join(parts)})"


def load_alignment_data(
    specs: Sequence[str],
    method: str,
    *,
    seed: int = 42,
    models=None,
    field: str = "spec.datasets",
) -> AlignmentData:
    """Read, sample (``#N``), validate and convert the datasets of an alignment job.

    Args:
        specs: dataset sources (see :func:`read_source`), each optionally with ``#N``.
        method: ``dpo``, ``kto``, ``orpo``, ``cpo``, ``simpo``, ``rm``, ``ppo`` or ``grpo``.
        seed: seed of the ``#N`` sampling (default 42).
        models: the model source, for ``models/{name}`` datasets in the hub.
        field: the request field the specs came from, for field violations.

    Raises:
        InvalidArgument: no datasets; a file is missing or unreadable; a row fits no format of
            ``method`` or has a bad value (the message names dataset, row, the fields expected and a
            hint); the datasets mix plain-text and conversational rows.
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
    style: Style | None = None
    style_source = ""
    for i, spec in enumerate(specs):
        files = read_source(spec, i, models=models, seed=seed, field=field)
        for name, records in files.items():
            try:
                conv = convert_records(records, method, name)
            except InvalidArgument as e:
                e.field_violations.insert(0, FieldViolation(f"{field}[{i}]", e.message.split("\n", 1)[0]))
                raise
            if style is None:
                style, style_source = conv.style, name
            elif conv.style != style:
                raise InvalidArgument(
                    f"dataset {name!r} is {conv.style} but {style_source!r} is {style}; "
                    "all datasets of a job must be plain text, or all conversational (lists of messages)",
                    reason="MIXED_DATASET_STYLES",
                    field_violations=[(f"{field}[{i}]", f"{conv.style} rows after {style} rows")],
                )
            rows.extend(conv.rows)
            formats[name] = conv.formats
    assert style is not None
    return AlignmentData(method=method, rows=rows, style=style, formats=formats)
