"""PPO for RLHF (TRL no longer ships it): :class:`PPOConfig` + :class:`PPOTrainer`.

See :mod:`.trainer` for the algorithm and :mod:`.core` for the tensor math (GAE, clipped
losses, masking after EOS, whitening), each citing the paper it follows.
"""

from .config import PPOConfig
from .model import PolicyAndValue
from .trainer import PPOTrainer

__all__ = ["PPOConfig", "PPOTrainer", "PolicyAndValue"]
