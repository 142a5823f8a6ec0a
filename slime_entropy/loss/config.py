"""Validated, frozen configuration built once from slime/Megatron's argparse Namespace.

``LossConfig.from_args(args)`` is the only place that reads loss flags from ``args``. Everything below it (kernels,
masks, policy losses) receives these objects, never ``args``. All problems are reported together in one
``ValueError`` that names each flag and the fix.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields
from typing import Literal

from slime_entropy.problems import Problems

__all__ = [
    "EntropyFilterConfig",
    "PolicyLossConfig",
    "KernelConfig",
    "LossConfig",
    "POLICY_LOSS_MODES",
    "THRESHOLD_SCOPES",
    "DENOMINATORS",
    "SELECTION_METHODS",
    "LOGPROB_ENTROPY_BACKENDS",
    "KL_LOSS_TYPES",
]

logger = logging.getLogger(__name__)

# The choices of the loss flags (``arguments.py`` registers them; the configs below check against them).
POLICY_LOSS_MODES = ("auto", "ppo", "gspo", "gpg", "clip_cov", "kl_cov", "gmpo", "cispo")
THRESHOLD_SCOPES = ("dp", "local", "step")
DENOMINATORS = ("kept", "all")
SELECTION_METHODS = ("radix", "allgather")
LOGPROB_ENTROPY_BACKENDS = ("auto", "eager", "compiled", "triton")
KL_LOSS_TYPES = ("kl", "k1", "k2", "k3", "low_var_kl")

# dest -> flag, for the flags add_arguments() registers; used to explain a Namespace that lacks them.
_OUR_FLAGS = {
    "high_entropy_token_filter": "--high-entropy-token-filter",
    "entropy_percentile": "--entropy-percentile",
    "entropy_threshold_scope": "--entropy-threshold-scope",
    "entropy_filter_denominator": "--entropy-filter-denominator",
    "entropy_filter_mask_entropy_loss": "--entropy-filter-mask-entropy-loss",
    "entropy_filter_mask_kl_loss": "--entropy-filter-mask-kl-loss",
    "entropy_selection_method": "--entropy-selection-method",
    "policy_loss_mode": "--policy-loss-mode",
    "dual_clip_c": "--dual-clip-c",
    "clip_cov_ratio": "--clip-cov-ratio",
    "clip_cov_lb": "--clip-cov-lb",
    "clip_cov_ub": "--clip-cov-ub",
    "kl_cov_ratio": "--kl-cov-ratio",
    "kl_cov_coef": "--kl-cov-coef",
    "entropy_advantage_alpha": "--entropy-advantage-alpha",
    "entropy_advantage_kappa": "--entropy-advantage-kappa",
    "logprob_entropy_backend": "--logprob-entropy-backend",
    "logprob_entropy_chunk_rows": "--logprob-entropy-chunk-rows",
}
# slime's own loss flags that the loss reads.
_SLIME_FLAGS = {
    "advantage_estimator": "--advantage-estimator",
    "rollout_temperature": "--rollout-temperature",
    "eps_clip": "--eps-clip",
    "eps_clip_high": "--eps-clip-high",
    "entropy_coef": "--entropy-coef",
    "use_kl_loss": "--use-kl-loss",
    "kl_loss_coef": "--kl-loss-coef",
    "kl_loss_type": "--kl-loss-type",
    "use_tis": "--use-tis",
    "tis_clip": "--tis-clip",
    "tis_clip_low": "--tis-clip-low",
    "calculate_per_token_loss": "--calculate-per-token-loss",
}


@dataclass(frozen=True, kw_only=True)
class EntropyFilterConfig:
    """The high-entropy ('forking') token filter.

    Attributes:
        enabled: apply the policy gradient only to kept tokens.
        keep_fraction: rho in (0, 1]: the fraction of the population kept (k = ceil(rho*N), ties kept).
        threshold_scope: 'dp' = population over all DP x CP ranks of the micro-batch; 'local' = this replica's
            micro-batch (over its CP ranks only); 'step' = the global batch, with tau precomputed by the trainer
            from old-policy entropies and handed to the loss in ``batch[STEP_THRESHOLD_KEY]``.
        denominator: 'kept' = per-sample means over kept tokens; 'all' = original denominators.
        mask_entropy_loss / mask_kl_loss: also restrict those terms to kept tokens.
        selection_method: 'radix' (histogram select) or 'allgather' (baseline).
    """

    enabled: bool = False
    keep_fraction: float = 0.2
    threshold_scope: Literal["dp", "local", "step"] = "dp"
    denominator: Literal["kept", "all"] = "kept"
    mask_entropy_loss: bool = False
    mask_kl_loss: bool = False
    selection_method: Literal["radix", "allgather"] = "radix"

    def __post_init__(self) -> None:
        problems = Problems()
        problems.check(
            0.0 < self.keep_fraction <= 1.0,
            f"--entropy-percentile must lie in (0, 1] (fraction of tokens kept), got {self.keep_fraction}",
        )
        problems.check(
            self.threshold_scope in THRESHOLD_SCOPES, f"--entropy-threshold-scope: {self.threshold_scope!r}"
        )
        problems.check(self.denominator in DENOMINATORS, f"--entropy-filter-denominator: {self.denominator!r}")
        problems.check(
            self.selection_method in SELECTION_METHODS, f"--entropy-selection-method: {self.selection_method!r}"
        )
        problems.raise_if_any("entropy filter configuration")


@dataclass(frozen=True, kw_only=True)
class PolicyLossConfig:
    """The surrogate objective and the terms added to it (slime semantics unless noted).

    Attributes:
        mode: ppo | gspo | gpg | clip_cov | kl_cov | gmpo | cispo (resolved; never 'auto').
        temperature: logits are divided by it before log-probs and entropies (slime's --rollout-temperature).
        eps_clip, eps_clip_high: PPO clip range [1 - eps_clip, 1 + eps_clip_high].
        dual_clip_c: dual-clip bound for A < 0 (None = off).
        entropy_coef: loss -= entropy_coef * entropy_loss; entropy carries gradient only when non-zero.
        use_kl_loss, kl_loss_coef, kl_loss_type: KL to the reference policy added to the loss.
        use_tis, tis_clip, tis_clip_low: truncated importance sampling against rollout log-probs.
        per_token_loss: slime's --calculate-per-token-loss.
        use_rollout_logprobs: the old policy is the rollout engine's log-probs (slime >= 0.3 --use-rollout-logprobs).
        mismatch_metrics: slime >= 0.3 --get-mismatch-metrics (runs the TIS function, as slime does).
        unbiased_kl: slime >= 0.3 --use-unbiased-kl (KL term weighted by exp(logp - old), gradient through both).
        tis_function_path: slime >= 0.3 --custom-tis-function-path (None: slime's vanilla TIS).
        clip_cov_*, kl_cov_*: parameters of those modes.
        advantage_alpha, advantage_kappa: entropy advantage shaping (alpha = 0: off).
    """

    mode: str = "ppo"
    temperature: float = 1.0
    eps_clip: float = 0.2
    eps_clip_high: float = 0.2
    dual_clip_c: float | None = None
    entropy_coef: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.0
    kl_loss_type: str = "kl"
    use_tis: bool = False
    tis_clip: float = 2.0
    tis_clip_low: float = 0.0
    per_token_loss: bool = False
    use_rollout_logprobs: bool = False
    mismatch_metrics: bool = False
    unbiased_kl: bool = False
    tis_function_path: str | None = None
    clip_cov_ratio: float = 2e-4
    clip_cov_lb: float = 1.0
    clip_cov_ub: float = 5.0
    kl_cov_ratio: float = 2e-4
    kl_cov_coef: float = 1.0
    advantage_alpha: float = 0.0
    advantage_kappa: float = 2.0

    def __post_init__(self) -> None:
        problems = Problems()
        problems.check(
            self.mode in POLICY_LOSS_MODES and self.mode != "auto", f"--policy-loss-mode: unknown mode {self.mode!r}"
        )
        problems.check(self.temperature > 0, f"--rollout-temperature must be > 0, got {self.temperature}")
        # slime accepts any eps_clip >= 0 (CISPO runs use 1.0: no lower clip); 1 - eps_clip <= 0 never binds
        problems.check(self.eps_clip >= 0, f"--eps-clip must be >= 0, got {self.eps_clip}")
        problems.check(self.eps_clip_high >= 0, f"--eps-clip-high must be >= 0, got {self.eps_clip_high}")
        problems.check(
            self.dual_clip_c is None or self.dual_clip_c > 1.0,
            f"--dual-clip-c must be > 1 (it bounds -A*r from above for A < 0), got {self.dual_clip_c}",
        )
        problems.check(
            self.kl_loss_type in KL_LOSS_TYPES,
            f"--kl-loss-type must be one of {', '.join(KL_LOSS_TYPES)}, got {self.kl_loss_type!r}",
        )
        problems.check(
            0 <= self.tis_clip_low <= self.tis_clip,
            f"--tis-clip-low ({self.tis_clip_low}) must lie in [0, --tis-clip ({self.tis_clip})]",
        )
        problems.check(0 < self.clip_cov_ratio <= 1, f"--clip-cov-ratio must lie in (0, 1], got {self.clip_cov_ratio}")
        problems.check(
            self.clip_cov_lb < self.clip_cov_ub,
            f"--clip-cov-lb ({self.clip_cov_lb}) must be below --clip-cov-ub ({self.clip_cov_ub})",
        )
        problems.check(0 < self.kl_cov_ratio <= 1, f"--kl-cov-ratio must lie in (0, 1], got {self.kl_cov_ratio}")
        problems.check(
            self.advantage_alpha >= 0, f"--entropy-advantage-alpha must be >= 0, got {self.advantage_alpha}"
        )
        problems.check(
            self.advantage_kappa >= 1,
            f"--entropy-advantage-kappa must be >= 1 (smaller values can flip the sign of negative advantages), "
            f"got {self.advantage_kappa}",
        )
        problems.raise_if_any("policy loss configuration")

    @property
    def kl_estimator(self) -> str:
        """The KL estimator with slime v0.1.0's 'kl' spelled as HEAD's 'k1'."""
        return "k1" if self.kl_loss_type == "kl" else self.kl_loss_type

    @property
    def is_sequence_level(self) -> bool:
        return self.mode in ("gspo", "gmpo")


@dataclass(frozen=True, kw_only=True)
class KernelConfig:
    """How log-probs and entropies are computed."""

    backend: str = "auto"
    chunk_rows: int | None = None
    vocab_size: int | None = None  # true vocabulary; Megatron's padded entries beyond it are ignored

    def __post_init__(self) -> None:
        problems = Problems()
        problems.check(self.backend in LOGPROB_ENTROPY_BACKENDS, f"--logprob-entropy-backend: {self.backend!r}")
        problems.check(
            self.chunk_rows is None or self.chunk_rows > 0,
            f"--logprob-entropy-chunk-rows must be positive, got {self.chunk_rows}",
        )
        problems.check(
            self.vocab_size is None or self.vocab_size > 0, f"--vocab-size must be positive, got {self.vocab_size}"
        )
        problems.raise_if_any("kernel configuration")


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Everything the loss needs, resolved from ``args`` once."""

    policy: PolicyLossConfig
    entropy_filter: EntropyFilterConfig
    kernel: KernelConfig
    #: slime_entropy's own loss features in use (flags); empty: the loss is slime's policy loss
    own_features: tuple[str, ...] = ()
    #: ``--loss-type custom_loss``: the user's ``--custom-loss-function-path`` (None: ``--loss-type policy_loss``)
    custom_loss_function_path: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LossConfig:
        missing_ours = [flag for dest, flag in _OUR_FLAGS.items() if not hasattr(args, dest)]
        if missing_ours:
            raise ValueError(
                f"args lacks slime_entropy's flags ({', '.join(missing_ours)}). Register them when parsing: "
                "slime.utils.arguments.parse_args(add_custom_arguments=slime_entropy.add_arguments), or "
                "slime_entropy.add_arguments(parser) on your own argparse parser."
            )
        missing_slime = [flag for dest, flag in _SLIME_FLAGS.items() if not hasattr(args, dest)]
        if missing_slime:
            owners = []  # the rollout package owns --rollout-temperature (the engines sample with it)
            if set(missing_slime) - {"--rollout-temperature"}:
                owners.append("slime_entropy.loss.arguments.add_slime_loss_arguments(parser)")
            if "--rollout-temperature" in missing_slime:
                owners.append("slime_entropy.rollout.arguments.add_rollout_temperature_argument(parser)")
            raise ValueError(
                f"args lacks slime's loss flags ({', '.join(missing_slime)}). Outside slime, register them with "
                f"{' and '.join(owners)}."
            )

        problems = Problems()
        filter_on = bool(args.high_entropy_token_filter)
        filter_only = {
            "entropy_percentile": args.entropy_percentile is not None,
            "entropy_threshold_scope": args.entropy_threshold_scope is not None,
            "entropy_filter_denominator": args.entropy_filter_denominator is not None,
            "entropy_filter_mask_entropy_loss": bool(args.entropy_filter_mask_entropy_loss),
            "entropy_filter_mask_kl_loss": bool(args.entropy_filter_mask_kl_loss),
            "entropy_selection_method": args.entropy_selection_method is not None,
        }
        for dest, given in filter_only.items():
            problems.check(
                filter_on or not given,
                f"{_OUR_FLAGS[dest]} has no effect without --high-entropy-token-filter: add the switch or drop it",
            )
        problems.check(
            not (args.entropy_filter_mask_kl_loss and not args.use_kl_loss),
            "--entropy-filter-mask-kl-loss needs --use-kl-loss (there is no KL loss to mask)",
        )

        mode = _resolve_mode(args.policy_loss_mode, args.advantage_estimator, problems)
        for dest in ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub"):
            problems.check(
                getattr(args, dest) is None or mode == "clip_cov",
                f"{_OUR_FLAGS[dest]} only applies to --policy-loss-mode clip_cov (resolved mode: {mode})",
            )
        for dest in ("kl_cov_ratio", "kl_cov_coef"):
            problems.check(
                getattr(args, dest) is None or mode == "kl_cov",
                f"{_OUR_FLAGS[dest]} only applies to --policy-loss-mode kl_cov (resolved mode: {mode})",
            )
        problems.check(
            args.entropy_advantage_kappa is None or args.entropy_advantage_alpha > 0,
            "--entropy-advantage-kappa has no effect without --entropy-advantage-alpha > 0",
        )
        dual_clip_c = _resolve_dual_clip(args, problems)
        problems.check(
            dual_clip_c is None or mode in ("ppo", "gspo"),
            f"--dual-clip-c applies to the clipped PPO/GSPO surrogates, not --policy-loss-mode {mode}",
        )
        problems.check(
            not (args.use_tis and mode in ("gmpo",)),
            "--use-tis is not defined for the sequence-level gmpo objective",
        )
        _refuse_unfiltered_only(args, _own_features(args, filter_on, mode), problems)
        custom_loss_path = getattr(args, "custom_loss_function_path", None)
        problems.check(
            getattr(args, "loss_type", None) != "custom_loss" or bool(custom_loss_path),
            "--loss-type custom_loss needs --custom-loss-function-path package.module.function",
        )
        problems.raise_if_any("loss flags")

        eps_clip_high = args.eps_clip if args.eps_clip_high is None else args.eps_clip_high
        policy = PolicyLossConfig(
            mode=mode,
            temperature=float(args.rollout_temperature),
            eps_clip=float(args.eps_clip),
            eps_clip_high=float(eps_clip_high),
            dual_clip_c=dual_clip_c,
            entropy_coef=float(args.entropy_coef),
            use_kl_loss=bool(args.use_kl_loss),
            kl_loss_coef=float(args.kl_loss_coef),
            kl_loss_type=args.kl_loss_type,
            use_tis=bool(args.use_tis),
            tis_clip=float(args.tis_clip),
            tis_clip_low=float(args.tis_clip_low),
            per_token_loss=bool(args.calculate_per_token_loss),
            use_rollout_logprobs=bool(getattr(args, "use_rollout_logprobs", False)),
            mismatch_metrics=bool(getattr(args, "get_mismatch_metrics", False)),
            unbiased_kl=bool(getattr(args, "use_unbiased_kl", False)),
            tis_function_path=getattr(args, "custom_tis_function_path", None),
            **_given(args, ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio", "kl_cov_coef")),
            advantage_alpha=float(args.entropy_advantage_alpha),
            **({"advantage_kappa": args.entropy_advantage_kappa} if args.entropy_advantage_kappa is not None else {}),
        )
        entropy_filter = EntropyFilterConfig(
            enabled=filter_on,
            **_given(
                args,
                (
                    "entropy_percentile",
                    "entropy_threshold_scope",
                    "entropy_filter_denominator",
                    "entropy_selection_method",
                ),
                rename={
                    "entropy_percentile": "keep_fraction",
                    "entropy_threshold_scope": "threshold_scope",
                    "entropy_filter_denominator": "denominator",
                    "entropy_selection_method": "selection_method",
                },
            ),
            mask_entropy_loss=bool(args.entropy_filter_mask_entropy_loss),
            mask_kl_loss=bool(args.entropy_filter_mask_kl_loss),
        )
        kernel = KernelConfig(
            backend=args.logprob_entropy_backend,
            chunk_rows=args.logprob_entropy_chunk_rows,
            # Megatron's --vocab-size; slime always has it (None when the tokenizer decides).
            vocab_size=getattr(args, "vocab_size", None),
        )
        config = cls(
            policy=policy,
            entropy_filter=entropy_filter,
            kernel=kernel,
            own_features=tuple(_own_features(args, filter_on, mode)),
            custom_loss_function_path=custom_loss_path if getattr(args, "loss_type", None) == "custom_loss" else None,
        )
        _log_once(config)
        return config


# slime (>= 0.3) options that change the policy loss in ways slime_entropy's loss does not reproduce: without our
# loss features slime's own policy loss runs them; with any they are refused here. dest -> (set?, flag, fix).
_UNFILTERED_ONLY = {
    "rollout_top_p": (
        lambda v: v is not None and float(v) != 1.0,
        "--rollout-top-p",
        "sample with --rollout-top-p 1.0 (slime_entropy's loss scores the full vocabulary), or drop {features}",
    ),
    "allgather_cp": (
        bool,
        "--allgather-cp",
        "use slime's default zigzag context parallelism (drop --allgather-cp), or drop {features}",
    ),
    "use_opsm": (bool, "--use-opsm", "drop --use-opsm, or drop {features}"),
    "custom_pg_loss_reducer_function_path": (
        lambda v: v is not None,
        "--custom-pg-loss-reducer-function-path",
        "slime_entropy's loss builds the policy-gradient reducer: drop the custom reducer, or drop {features}",
    ),
}


def _own_features(args, filter_on: bool, mode: str) -> list[str]:
    """slime_entropy's loss features in use. With none, inside slime the loss is slime's own policy loss; with any,
    it is slime_entropy's (``loss.slime_api``), which reproduces slime's options or refuses them."""
    features = ["--high-entropy-token-filter"] if filter_on else []
    if mode in ("gpg", "clip_cov", "kl_cov", "gmpo"):
        features.append(f"--policy-loss-mode {mode}")
    if args.dual_clip_c is not None:
        features.append("--dual-clip-c")
    if args.entropy_advantage_alpha:
        features.append("--entropy-advantage-alpha")
    return features


def _refuse_unfiltered_only(args, features: list[str], problems: Problems) -> None:
    if not features:
        return
    named = ", ".join(features)
    for dest, (is_set, flag, alternative) in _UNFILTERED_ONLY.items():
        problems.check(
            not is_set(getattr(args, dest, None)),
            f"{flag} is not supported with {named}: {alternative.format(features=named)}",
        )


def _given(args, dests, rename=None) -> dict:
    rename = rename or {}
    return {rename.get(d, d): getattr(args, d) for d in dests if getattr(args, d) is not None}


def _resolve_mode(requested: str, advantage_estimator: str, problems: Problems) -> str:
    implied = {"gspo": "gspo", "cispo": "cispo"}.get(advantage_estimator)
    if requested == "auto":
        return implied or "ppo"
    problems.check(
        implied is None or implied == requested,
        f"--policy-loss-mode {requested} contradicts --advantage-estimator {advantage_estimator} (which selects "
        f"{implied}); drop --policy-loss-mode or change the estimator",
    )
    return requested


def _resolve_dual_clip(args, problems: Problems) -> float | None:
    ours = args.dual_clip_c
    # slime HEAD owns --eps-clip-c; when present it means the same thing.
    slimes = getattr(args, "eps_clip_c", None)
    problems.check(
        ours is None or slimes is None or ours == slimes,
        f"--dual-clip-c ({ours}) and slime's --eps-clip-c ({slimes}) disagree; set only one",
    )
    return ours if ours is not None else slimes


_logged: set[LossConfig] = set()


def _log_once(config: LossConfig) -> None:
    if config in _logged:
        return
    _logged.add(config)
    parts = []
    for section in (config.policy, config.entropy_filter, config.kernel):
        parts.append(
            f"{type(section).__name__}("
            + ", ".join(f"{f.name}={getattr(section, f.name)!r}" for f in fields(section))
            + ")"
        )
    logger.info("slime_entropy resolved loss configuration: %s", "; ".join(parts))
