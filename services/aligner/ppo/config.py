"""``PPOConfig``: the settings of :class:`~swiftmesh.services.aligner.ppo.PPOTrainer`.

Field names and defaults follow TRL's former ``PPOConfig`` (trl <= 1.12), which implemented
"The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024, arXiv:2403.17031), where
the defaults not listed in the proto come from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PPOConfig(TrainingArguments):
    r"""Configuration of :class:`PPOTrainer` (a ``transformers.TrainingArguments`` subclass).

    One *update* (one ``global_step``) = generate ``rollout_batch_size`` responses per worker,
    score them, then ``num_ppo_epochs`` passes over them in ``num_mini_batches`` minibatches (one
    optimizer step per minibatch, accumulated over micro-batches of
    ``per_device_train_batch_size``). ``max_steps`` counts updates; without it, one epoch is
    ``ceil(len(dataset) / (rollout_batch_size * world_size))`` updates. The learning-rate
    schedule steps once per update. ``gradient_accumulation_steps`` is not used.

    Parameters:
        rollout_batch_size (`int`, defaults to 8):
            Prompts (rollouts) per update, per worker.
        num_ppo_epochs (`int`, defaults to 4):
            Optimisation epochs over each batch of rollouts (Schulman et al. 2017, "K epochs").
        num_mini_batches (`int`, defaults to 1):
            Minibatches per PPO epoch; must divide ``rollout_batch_size``.
        local_rollout_forward_batch_size (`int`, defaults to 16):
            Sequences per no-grad forward pass while scoring rollouts (memory knob only).
        response_length (`int`, defaults to 53):
            Tokens generated per response (at most).
        temperature (`float`, defaults to 0.7):
            Sampling temperature; log-probabilities in training use the same temperature
            (N+ detail: the policy being optimised is the temperature-scaled one).
        max_prompt_length (`int`, defaults to 512):
            Prompts are truncated to this many tokens, keeping their end.
        stop_token_ids (`list[int]`, *optional*):
            Tokens that end a response; default: the tokenizer's and generation config's EOS.
        missing_eos_penalty (`float`, *optional*):
            Subtracted from the score of responses that hit ``response_length`` without a stop
            token (N+ detail: "penalise responses without EOS"). Default: no penalty.
        kl_coef (`float`, defaults to 0.05):
            Coefficient of the per-token KL penalty against the reference policy.
        kl_estimator (`str`, defaults to ``"k1"``):
            ``"k1"`` (``log pi - log pi_ref``) or ``"k3"`` (see :func:`core.per_token_kl`).
        whiten_rewards (`bool`, defaults to False):
            Whiten the shaped per-token rewards (without shifting their mean) before GAE.
        whiten_advantages (`bool`, defaults to True):
            Whiten advantages over the batch (standard in PPO implementations).
        cliprange (`float`, defaults to 0.2):
            Clip range epsilon of the policy ratio.
        cliprange_value (`float`, defaults to 0.2):
            Clip range of the value prediction around the rollout's value.
        vf_coef (`float`, defaults to 0.1):
            Weight of the value loss in the total loss (the value head shares the policy's trunk).
        gamma (`float`, defaults to 1.0):
            Discount factor.
        lam (`float`, defaults to 0.95):
            GAE lambda (Schulman et al. 2016, arXiv:1506.02438).
        total_episodes (`int`, *optional*):
            Total rollouts (TRL's meaning); sets the number of updates when ``max_steps`` is unset.
        value_head_init_std (`float`, *optional*):
            Std of the value head's initial weights (default ``1 / sqrt(hidden_size + 1)``, as in
            the N+ paper); its bias starts at 0.
    """

    rollout_batch_size: int = field(default=8, metadata={"help": "Rollouts per update, per worker."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Optimisation epochs over each rollout batch."})
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches per PPO epoch."})
    local_rollout_forward_batch_size: int = field(default=16, metadata={"help": "No-grad forward batch size."})
    response_length: int = field(default=53, metadata={"help": "Tokens generated per response."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    max_prompt_length: int = field(default=512, metadata={"help": "Prompt truncation length (tokens)."})
    stop_token_ids: list[int] | None = field(default=None, metadata={"help": "Tokens that end a response."})
    missing_eos_penalty: float | None = field(default=None, metadata={"help": "Penalty for responses without EOS."})
    kl_coef: float = field(default=0.05, metadata={"help": "KL penalty coefficient."})
    kl_estimator: str = field(default="k1", metadata={"help": "'k1' or 'k3'."})
    whiten_rewards: bool = field(default=False, metadata={"help": "Whiten shaped rewards."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Value loss coefficient."})
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    total_episodes: int | None = field(default=None, metadata={"help": "Total rollouts."})
    value_head_init_std: float | None = field(default=None, metadata={"help": "Value head init std."})
    # TrainingArguments defaults changed for PPO.
    learning_rate: float = field(default=3e-6, metadata={"help": "Peak learning rate (AdamW)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every N updates."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the dataset's extra columns."})

    def __post_init__(self):
        super().__post_init__()
        if self.rollout_batch_size < 1:
            raise ValueError("rollout_batch_size must be at least 1")
        if self.num_mini_batches < 1 or self.rollout_batch_size % self.num_mini_batches:
            raise ValueError(
                f"num_mini_batches ({self.num_mini_batches}) must divide rollout_batch_size ({self.rollout_batch_size})"
            )
        mini = self.rollout_batch_size // self.num_mini_batches
        if mini % min(self.per_device_train_batch_size, mini):
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must divide the minibatch size "
                f"rollout_batch_size / num_mini_batches ({mini})"
            )
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be 'k1' or 'k3'")
        if self.response_length < 1:
            raise ValueError("response_length must be at least 1")
