"""The trainer's domain spec of a job: :class:`TrainingSpec`, the shared
:class:`~swiftmesh.jobkit.settings.TuningSpec` plus the task and the merge option.

The servicer translates ``swiftmesh.trainer.v1.TrainingSpec`` into it (field for field, the
proto's "0 / empty means the default" filled in); the job kinds and their tests use only this.
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftmesh.jobkit.settings import TuningSpec

TASKS = ("sft", "pt", "merge")


@dataclass
class TrainingSpec(TuningSpec):
    """A supervised fine-tuning (``sft``), continued pre-training (``pt``) or adapter merge
    (``merge``, ms-swift's ``export --merge_lora``) job."""

    task: str = "sft"
    """The job kind: "sft", "pt" or "merge" (default "sft")."""
    merge_lora: bool = False
    """After an adapter job, also upload base + adapter merged as "<output>-merged" (default False)."""
