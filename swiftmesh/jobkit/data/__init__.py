"""Training data shared by the trainer and the aligner: reading dataset sources, converting
rows to what the trainers consume, encoding them with the model's tokenizer, and splitting.

What it owns, one module per idea:

* :mod:`.reading`: sources (local files ``.jsonl``/``.json``/``.csv``/``.parquet``/``.txt``,
  directories of them, ``save_to_disk`` directories, ``models/{name}`` hub datasets) read as
  streams, the one ``#N`` sampler (:func:`~.reading.reservoir`), and
  :class:`~.reading.Violation` (file, row and field of a problem);
* :mod:`.stream`: one source as a stream of checked rows, converted and sampled while streaming
  (what every method's loader and ``swiftmesh data preview`` share);
* :mod:`.preview`: what a job would train on: formats, counts, rendered rows, token lengths;
* :mod:`.sft`: SFT and pre-training rows, ms-swift's conversation formats (``messages``,
  ShareGPT ``conversations``, Alpaca, ``query``/``response``, ``text``) normalised to
  ``{"messages": [...]}`` / ``{"text": ...}``
  (https://swift.readthedocs.io/en/latest/Customization/Custom-dataset.html);
* :mod:`.encode`: those rows -> ``input_ids``/``labels`` with the chat template, and the collator;
* :mod:`.split`: the held-out evaluation split (``split_dataset_ratio``);
* alignment rows in TRL's columns (https://huggingface.co/docs/trl/dataset_formats), by method
  family: :mod:`.fields` (what every format shares), :mod:`.preference` (DPO, ORPO, CPO,
  SimPO, reward models), :mod:`.kto`, :mod:`.prompts` (PPO, GRPO), and :mod:`.alignment`
  (detection, error messages with hints, :func:`~.alignment.load_alignment_data`).

Nothing is dropped silently: a column with content that the row's format does not read is an
error naming the row and the column (``ignore_columns``: dropped with a count), as are a file
mixing formats, an empty reply and a conversation not ending with the reply.

What it may import: the standard library, ``swiftmesh.runtime.errors``, its own modules, and
lazily (inside functions) ``datasets``, ``pyarrow`` and ``torch``. Never grpc, generated
``*_pb2`` modules, or a service under ``services/``: callers pass plain values (source
strings, seeds, ratios) and a :class:`~swiftmesh.jobkit.models.ModelSource` for hub datasets.
"""

from swiftmesh.jobkit.data.alignment import AlignmentData, load_alignment_data
from swiftmesh.jobkit.data.encode import IGNORE_INDEX, Collator, EncodeError, encode_row
from swiftmesh.jobkit.data.fields import METHOD_KIND
from swiftmesh.jobkit.data.reading import (
    MAX_VIOLATIONS,
    Violation,
    ignored_warning,
    raise_violations,
    reservoir,
    sample_rows,
)
from swiftmesh.jobkit.data.sft import LoadedDataset, load_source
from swiftmesh.jobkit.data.split import split

# The entry points the trainer's and the aligner's job kinds use.
__all__ = [
    "IGNORE_INDEX",
    "MAX_VIOLATIONS",
    "METHOD_KIND",
    "AlignmentData",
    "Collator",
    "EncodeError",
    "LoadedDataset",
    "Violation",
    "encode_row",
    "ignored_warning",
    "load_alignment_data",
    "load_source",
    "raise_violations",
    "reservoir",
    "sample_rows",
    "split",
]
