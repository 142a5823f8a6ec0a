"""The loss: slime's contract on top, pure math below.

Public entry points (slime v0.1.0 signatures): ``policy_loss_function``, ``loss_function``,
``get_log_probs_and_entropy``. ``compute_policy_loss`` is the same computation with explicit config and process
groups, for callers outside Megatron.
"""

from .compute import STEP_THRESHOLD_KEY, PolicyLossResult, compute_policy_loss
from .slime_api import get_log_probs_and_entropy, loss_function, policy_loss_function

__all__ = [
    "policy_loss_function",
    "loss_function",
    "get_log_probs_and_entropy",
    "compute_policy_loss",
    "PolicyLossResult",
    "STEP_THRESHOLD_KEY",
]
