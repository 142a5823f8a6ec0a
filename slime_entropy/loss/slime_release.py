"""Which slime release is calling the loss, found by probing slime's own loss module (never a version string).

slime calls ``policy_loss_function`` / ``loss_function`` from ``slime.backends.megatron_utils.loss``, so when the
loss runs inside slime that module is already imported. Its features are read from what it defines:

- ``loss_function`` takes ``step_global_batch_size`` (slime >= 0.3): loss scaled by that step size and metrics
  divided by it (``values[0]`` is a 0 placeholder in per-sample mode);
- ``get_sum_of_sample_mean`` takes ``sample_denoms`` (>= 0.3): per-rollout denominators ``rollout_mask_sums``;
- ``vanilla_tis_function`` exists (>= 0.3): TIS (and ``--get-mismatch-metrics``) go through slime's TIS function
  hook, which also reports ``tis_abs``; before that, TIS is inline with metrics ``tis``, ``ois``, ``tis_clipfrac``.

Releases this project is tested against (``tests/slime_compat``): v0.1.0 (family ``v0.1``), v0.3.1 and main
624b824a8 (family ``v0.3``). A module with some other combination of features is refused by name.
Without slime's loss module (``train.py``, the demo, direct calls) there is no release: the loss is standalone.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from types import ModuleType

__all__ = ["SlimeRelease", "detect_slime_release", "SLIME_LOSS_MODULE"]

SLIME_LOSS_MODULE = "slime.backends.megatron_utils.loss"
_CP_UTILS_MODULE = "slime.backends.megatron_utils.cp_utils"


@dataclass(frozen=True)
class SlimeRelease:
    """Features of the slime release in this process.

    family: 'v0.1' (v0.1.0 contract) or 'v0.3' (v0.3.x and main). loss_module: slime's own loss module, whose
    ``policy_loss_function`` the loss delegates to with the filter off. step_scaled: loss_function takes
    step_global_batch_size. rollout_denominators: the reducer takes per-rollout denominators. tis_hook: TIS runs
    through a TIS function (slime's ``vanilla_tis_function`` or ``--custom-tis-function-path``). dual_clip: slime's
    policy loss applies ``--eps-clip-c`` (main; v0.3.1 registers the flag but its policy loss never reads it).
    """

    family: str
    loss_module: ModuleType
    step_scaled: bool
    rollout_denominators: bool
    tis_hook: bool
    dual_clip: bool

    def vanilla_tis_function(self):
        return self.loss_module.vanilla_tis_function


def _has_parameter(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def detect_slime_release() -> SlimeRelease | None:
    """The slime release whose loss module is imported in this process, or None (standalone)."""
    module = sys.modules.get(SLIME_LOSS_MODULE)
    if module is None or not hasattr(module, "policy_loss_function"):
        return None
    cp_utils = sys.modules.get(_CP_UTILS_MODULE)
    step_scaled = _has_parameter(getattr(module, "loss_function", None), "step_global_batch_size")
    rollout_denominators = cp_utils is not None and _has_parameter(
        getattr(cp_utils, "get_sum_of_sample_mean", None), "sample_denoms"
    )
    tis_hook = hasattr(module, "vanilla_tis_function")
    features = (step_scaled, rollout_denominators, tis_hook)
    if features == (False, False, False):
        family = "v0.1"
    elif features == (True, True, True):
        family = "v0.3"
    else:
        raise RuntimeError(
            f"slime_entropy does not know this slime release ({module.__file__}: loss_function takes "
            f"step_global_batch_size={step_scaled}, get_sum_of_sample_mean takes sample_denoms="
            f"{rollout_denominators}, vanilla_tis_function={tis_hook}); supported: slime v0.1.0, v0.3.1 and main "
            "624b824a8. Use one of those, or the standalone trainer (train.py)"
        )
    try:
        dual_clip = "eps_clip_c" in inspect.getsource(module.policy_loss_function)
    except (OSError, TypeError):
        dual_clip = False
    return SlimeRelease(family, module, step_scaled, rollout_denominators, tis_hook, dual_clip)
