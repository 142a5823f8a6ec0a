"""The loss: slime's contract on top, pure math below.

Public entry points (slime v0.1.0 signatures): ``policy_loss_function``, ``loss_function``,
``get_log_probs_and_entropy``. ``BoundLoss`` is the same computation bound once to a config and process groups
(slime_entropy's own actor); ``compute_policy_loss`` the unscaled policy loss with explicit config and groups.
The flags (``arguments``) and their frozen configs (``config``) import without torch; the rest is imported on first
use.
"""

from slime_entropy._lazy import lazy_exports

_HOMES = {
    "policy_loss_function": "slime_api",
    "loss_function": "slime_api",
    "get_log_probs_and_entropy": "slime_api",
    "BoundLoss": "bound",
    "compute_policy_loss": "policy_loss",
    "PolicyLossResult": "policy_loss",
    "STEP_THRESHOLD_KEY": "policy_loss",
}
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
__all__ = list(_HOMES)
