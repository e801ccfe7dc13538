"""The model PPO trains: a causal LM (optionally PEFT) with a scalar value head on its last hidden
state (TRL's former ``ValueHead`` design), so one forward pass gives logits and values."""

from __future__ import annotations

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


class PolicyAndValue(nn.Module):
    """A causal LM plus a scalar value head on its last hidden state.

    ``forward(input_ids, attention_mask)`` returns ``(logits, values)``; position ids are derived
    from the attention mask so left-padded prompts get the positions they had alone.
    """

    def __init__(self, policy: nn.Module, value_head: nn.Linear) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.config = policy.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True, use_cache=False)
        hidden = out.hidden_states[-1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits, values


def is_peft(model) -> bool:
    """Whether ``model`` is a PEFT model (False when peft is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)
