"""The aligner's domain description of a job.

* :class:`AlignmentSpec`: what a job asks for, ``swiftmesh.aligner.v1.AlignmentSpec`` field for
  field (the servicer translates the proto into it, filling the proto's "0 means the default");
  the shared :class:`~swiftmesh.jobkit.settings.TuningSpec` (model, tuner, LoRA, training,
  distribution) plus the method and its settings.
* :class:`AlignmentConfig`: what :func:`methods.build_trainer` consumes in a worker, with local
  paths, so the domain code and its tests need neither gRPC nor the hub.

Names follow TRL, PEFT and ``transformers.TrainingArguments``; the LoRA and training settings
are jobkit's (:mod:`swiftmesh.jobkit.settings`), shared with the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from swiftmesh.jobkit.settings import LoraSettings, TrainingSettings, Tuner, TuningSpec
from swiftmesh.runtime.errors import InvalidArgument

RLHF_TYPES = ("dpo", "kto", "orpo", "cpo", "simpo", "rm", "ppo", "grpo")


@dataclass
class DpoSettings:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290), ``trl.DPOConfig`` names."""

    # TRL loss types: "sigmoid" (DPO), "ipo" (arXiv:2310.12036), "hinge" (SLiC), "robust"
    # (arXiv:2403.00409), "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero",
    # "apo_down", "discopop", "sigmoid_norm", "sft"; several combine (default ["sigmoid"]).
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    # Temperature of the implicit reward (IPO: tau) (default 0.1).
    beta: float = 0.1
    # Conservative DPO / Robust DPO label-flip probability in [0, 0.5) (default 0).
    label_smoothing: float = 0.0
    # RPO (Pang et al. 2024, arXiv:2404.19733): weight of an NLL term on the chosen replies,
    # TRL's "sft" loss type added with this weight (default 0: off).
    rpo_alpha: float = 0.0


@dataclass
class KtoSettings:
    """KTO (Ethayarajh et al. 2024, arXiv:2402.01306), ``trl.KTOConfig`` names."""

    # Default 0.1.
    beta: float = 0.1
    # Loss weight of desirable rows (default 1.0).
    desirable_weight: float = 1.0
    # Loss weight of undesirable rows (default 1.0).
    undesirable_weight: float = 1.0


@dataclass
class CpoSettings:
    """ORPO (Hong et al. 2024, arXiv:2403.07691), CPO (Xu et al. 2024, arXiv:2401.08417) and
    SimPO (Meng et al. 2024, arXiv:2405.14734); ``ORPOConfig`` / ``CPOConfig`` names.
    ``None`` takes the method's default."""

    # ORPO: lambda (default 0.1); CPO: default 0.1; SimPO: default 2.0.
    beta: float | None = None
    # CPO: "sigmoid", "hinge", "ipo", "simpo", "alphapo" (default "sigmoid"; "simpo" for SimPO).
    loss_type: str | None = None
    # SimPO target reward margin gamma / beta (default 0.5).
    simpo_gamma: float = 0.5
    # Weight of the behaviour-cloning NLL term (default 1.0 for CPO, 0.0 for SimPO).
    cpo_alpha: float | None = None
    # Default 0.
    label_smoothing: float = 0.0


@dataclass
class RewardSettings:
    """Reward model training: Bradley-Terry pairwise loss ``-log sigmoid(r_chosen - r_rejected -
    margin)`` on a one-label sequence-classification head (Ouyang et al. 2022, arXiv:2203.02155;
    margin as in Llama 2, Touvron et al. 2023, arXiv:2307.09288)."""

    # Pushes the mean reward towards 0 (Eisenstein et al. 2023, arXiv:2312.09244) (default None: off).
    center_rewards_coefficient: float | None = None
    # Use the dataset's "margin" column when present (default True).
    use_margin: bool = True


@dataclass
class RewardSource:
    """Where the rewards of an online method (PPO, GRPO) come from."""

    # Reward model directory (a sequence classifier with one label, or a PEFT adapter of one);
    # or reward_funcs.
    reward_model: str | None = None
    reward_funcs: list[str] = field(default_factory=list)
    # Base model directory when reward_model is a PEFT adapter (default: its recorded base).
    reward_model_base: str | None = None


@dataclass
class PpoSettings(RewardSource):
    """PPO for RLHF (see :class:`swiftmesh.services.aligner.ppo.PPOConfig` for the details)."""

    # Rollouts per PPO update, per worker (default 8).
    rollout_batch_size: int = 8
    num_ppo_epochs: int = 4
    num_mini_batches: int = 1
    kl_coef: float = 0.05
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    response_length: int = 53
    temperature: float = 0.7
    missing_eos_penalty: float | None = None
    # Total PPO updates (sets max_steps when > 0) (default 0: from epochs / max_steps); the
    # proto's ``total_episodes``.
    total_updates: int = field(default=0, metadata={"proto": "total_episodes"})


@dataclass
class GrpoSettings(RewardSource):
    """GRPO (Shao et al. 2024, arXiv:2402.03300), ``trl.GRPOConfig`` names."""

    # Completions per prompt (default 4).
    num_generations: int = 4
    # KL coefficient (default 0.04; TRL's default is 0.0).
    beta: float = 0.04
    # Default 64.
    max_completion_length: int = 64
    # Default 0.9.
    temperature: float = 0.9
    # Clip epsilon (default 0.2).
    epsilon: float = 0.2
    # "grpo", "bnpo", "dr_grpo", "dapo", ... (default "dapo").
    loss_type: str = "dapo"


# The method settings field each rlhf_type reads.
METHOD_FIELD = {"dpo": "dpo", "kto": "kto", "orpo": "cpo", "cpo": "cpo", "simpo": "cpo", "rm": "rm", "ppo": "ppo",
                "grpo": "grpo"}
_METHOD_TYPES = {"dpo": DpoSettings, "kto": KtoSettings, "cpo": CpoSettings, "rm": RewardSettings,
                 "ppo": PpoSettings, "grpo": GrpoSettings}


@dataclass
class AlignmentSpec(TuningSpec):
    """A preference or RL alignment job: the shared tuning settings plus the method."""

    rlhf_type: str = ""
    """The method: one of :data:`RLHF_TYPES` (ms-swift's ``--rlhf_type``)."""
    ref_model: str = ""
    """Reference model "models/{id}" for full fine-tuning (default "": a frozen copy of the policy)."""
    dpo: DpoSettings | None = None
    """DPO settings (None: the defaults)."""
    kto: KtoSettings | None = None
    """KTO settings."""
    cpo: CpoSettings | None = None
    """ORPO / CPO / SimPO settings."""
    rm: RewardSettings | None = None
    """Reward model settings."""
    ppo: PpoSettings | None = None
    """PPO settings."""
    grpo: GrpoSettings | None = None
    """GRPO settings."""
    max_prompt_length: int = 512
    """Prompts are truncated to this many tokens, keeping their end (default 512)."""

    @property
    def method_config(self) -> str | None:
        """The name of the method settings given ("dpo", "cpo", ...), None when none is."""
        given = [f for f in _METHOD_TYPES if getattr(self, f) is not None]
        return given[0] if given else None

    def method(self, rlhf_type: str | None = None):
        """The settings ``rlhf_type`` (default: the spec's) reads: the given ones or the defaults."""
        f = METHOD_FIELD[rlhf_type or self.rlhf_type]
        return getattr(self, f) or _METHOD_TYPES[f]()


@dataclass
class AlignmentConfig:
    """Everything :func:`~swiftmesh.services.aligner.methods.build_trainer` needs for one job.

    Paths are local directories (the service resolves ``models/{id}`` through the hub first).
    """

    rlhf_type: str
    # Base model directory (Hugging Face layout).
    model: str
    # Dataset specs (local files, "#N" sampling).
    datasets: list[str] = field(default_factory=list)
    # Drop dataset columns no format reads (counted in the data's ``ignored``) instead of failing.
    ignore_columns: bool = False
    # A PEFT adapter (e.g. from an SFT job) to start from; trained further with PEFT tuners,
    # merged into the model first with tuner "full".
    adapter: str | None = None
    # A Tuner, or its label ("lora", "qlora", "lora+", ...).
    tuner: Tuner | str = Tuner.LORA
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    dpo: DpoSettings = field(default_factory=DpoSettings)
    kto: KtoSettings = field(default_factory=KtoSettings)
    cpo: CpoSettings = field(default_factory=CpoSettings)
    rm: RewardSettings = field(default_factory=RewardSettings)
    ppo: PpoSettings = field(default_factory=PpoSettings)
    grpo: GrpoSettings = field(default_factory=GrpoSettings)
    # Reference model directory for full fine-tuning (default: a frozen copy of the policy).
    ref_model: str | None = None
    # Prompts are truncated to this many tokens, keeping their end (default 512).
    max_prompt_length: int = 512
    # A Jinja chat template replacing the tokenizer's.
    chat_template: str | None = None
    # Where checkpoints, logs and the final model go.
    output_dir: str = "output"
    # A DeepSpeed config (dict or JSON path), e.g. from jobkit's ZeRO presets; None: no DeepSpeed.
    deepspeed: dict | str | None = None
    # transformers report_to integrations (default none; jobkit adds "tensorboard").
    report_to: list[str] = field(default_factory=list)
    # TrainingArguments keyword arguments from the job machinery
    # (swiftmesh.jobkit.hf.training_arguments_kwargs); when set they replace the ones derived
    # from ``training`` (report_to and deepspeed above are then ignored).
    hf_args: dict[str, Any] | None = None
    # Extra TrainingArguments / TRL config fields (expert overrides).
    extra_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.tuner, str):
            try:
                self.tuner = Tuner.parse(self.tuner)
            except InvalidArgument:
                pass  # validate() names it

    def validate(self) -> None:
        """Raises InvalidArgument naming the bad field."""
        if self.rlhf_type not in RLHF_TYPES:
            raise InvalidArgument(
                f"unknown rlhf_type {self.rlhf_type!r}; choose one of {', '.join(RLHF_TYPES)}",
                reason="BAD_RLHF_TYPE", field_violations=[("spec.rlhf_type", "unknown")],
            )
        if not isinstance(self.tuner, Tuner) or self.tuner == Tuner.UNSPECIFIED:
            raise InvalidArgument(
                f"unknown tuner {self.tuner!r}; choose one of full, lora, qlora, dora, rslora, lora+",
                reason="BAD_TUNER", field_violations=[("spec.tuner", "unknown")],
            )
        if self.rlhf_type in ("ppo", "grpo"):
            s = self.ppo if self.rlhf_type == "ppo" else self.grpo
            if not s.reward_model and not s.reward_funcs:
                raise InvalidArgument(
                    f"{self.rlhf_type} needs a reward: a reward model (spec.{self.rlhf_type}.reward_model, e.g. the "
                    "output of an rm job) or built-in reward functions (spec."
                    f"{self.rlhf_type}.reward_funcs, e.g. \"contains:Paris\")",
                    reason="NO_REWARD",
                    field_violations=[(f"spec.{self.rlhf_type}.reward_model", "neither reward_model nor reward_funcs")],
                )
        if self.rlhf_type == "ppo":
            p = self.ppo
            if p.rollout_batch_size % max(p.num_mini_batches, 1):
                raise InvalidArgument(
                    f"ppo.rollout_batch_size ({p.rollout_batch_size}) must be a multiple of ppo.num_mini_batches "
                    f"({p.num_mini_batches})",
                    reason="BAD_PPO_BATCH", field_violations=[("spec.ppo.num_mini_batches", "does not divide")],
                )
        if self.rlhf_type == "dpo" and "robust" in self.dpo.loss_type and not 0 <= self.dpo.label_smoothing < 0.5:
            raise InvalidArgument("dpo.label_smoothing must lie in [0, 0.5) for the robust loss",
                                  reason="BAD_LABEL_SMOOTHING",
                                  field_violations=[("spec.dpo.label_smoothing", "outside [0, 0.5)")])
        if self.max_prompt_length <= 0:
            raise InvalidArgument("max_prompt_length must be positive", reason="BAD_LENGTH",
                                  field_violations=[("spec.max_prompt_length", "not positive")])
        if self.training.split_dataset_ratio and not 0 < self.training.split_dataset_ratio < 1:
            raise InvalidArgument("split_dataset_ratio must lie in (0, 1)", reason="BAD_SPLIT",
                                  field_violations=[("spec.args.split_dataset_ratio", "outside (0, 1)")])

    @property
    def is_peft(self) -> bool:
        """True for the LoRA-family tuners."""
        return isinstance(self.tuner, Tuner) and self.tuner.is_adapter
