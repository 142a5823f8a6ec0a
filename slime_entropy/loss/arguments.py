"""Command-line flags of the loss (their frozen configs: ``slime_entropy.loss.config``).

``add_arguments(parser)`` registers the flags this project adds to slime's loss. It follows slime's
``parse_args(add_custom_arguments=...)`` contract: it takes the parser and returns it, and it never registers a
flag slime already owns (argparse would reject the duplicate). Inside a slime install::

    from slime.utils.arguments import parse_args
    import slime_entropy
    args = parse_args(add_custom_arguments=slime_entropy.add_arguments)

``add_slime_loss_arguments(parser)`` registers the subset of slime's own loss flags (same names, same defaults)
for use *without* slime: our trainer and the tests. Never call it on a slime parser. The loss also reads
``--rollout-temperature``, which the rollout package owns (the engines sample with it): a parser without the
rollout flags adds it with ``slime_entropy.rollout.arguments.add_rollout_temperature_argument``.

Flags whose meaning depends on another flag default to ``None`` so that ``config.py`` can reject them when they
would silently do nothing (e.g. ``--entropy-percentile`` without ``--high-entropy-token-filter``); their help text
quotes the default from the config's dataclass, the one place it is written.
"""

from __future__ import annotations

import argparse

from .config import (
    DENOMINATORS,
    KL_LOSS_TYPES,
    LOGPROB_ENTROPY_BACKENDS,
    POLICY_LOSS_MODES,
    SELECTION_METHODS,
    THRESHOLD_SCOPES,
    EntropyFilterConfig,
    PolicyLossConfig,
)

__all__ = ["add_arguments", "add_slime_loss_arguments", "DEFAULT_ENTROPY_PERCENTILE"]


# A dataclass field's default is also its class attribute: the help text reads it from the config.
DEFAULT_ENTROPY_PERCENTILE = EntropyFilterConfig.keep_fraction


def _fraction_in_unit_interval(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} expects a number in (0, 1], got {text!r}") from None
        if not 0.0 < value <= 1.0:
            raise argparse.ArgumentTypeError(
                f"{flag} is the fraction of valid response tokens to KEEP and must lie in (0, 1] "
                f"(0.2 keeps the top 20% by entropy); got {text}"
            )
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register slime_entropy's loss flags on ``parser`` and return it (slime's add_custom_arguments contract)."""
    group = parser.add_argument_group("slime_entropy: high-entropy token filter")
    group.add_argument(
        "--high-entropy-token-filter",
        action="store_true",
        help="Apply the policy gradient only to the top-rho fraction of valid response tokens by entropy "
        "('forking tokens', arXiv 2506.01939). Off by default.",
    )
    group.add_argument(
        "--entropy-percentile",
        type=_fraction_in_unit_interval("--entropy-percentile"),
        default=None,
        metavar="RHO",
        help=f"Fraction of valid response tokens KEPT, in (0, 1] (default {DEFAULT_ENTROPY_PERCENTILE:g}: the top "
        f"{DEFAULT_ENTROPY_PERCENTILE * 100:g}%% by entropy, i.e. the threshold sits at the "
        f"{(1 - DEFAULT_ENTROPY_PERCENTILE) * 100:g}th percentile). With N valid tokens in the population, "
        "k = ceil(rho*N) and the threshold is the k-th largest entropy; ties at the threshold are kept. "
        "Needs --high-entropy-token-filter.",
    )
    group.add_argument(
        "--entropy-threshold-scope",
        choices=THRESHOLD_SCOPES,
        default=None,
        help="Population the threshold is taken over: 'dp' = this micro-batch's valid tokens on all data- and "
        "context-parallel ranks; 'local' = this data-parallel rank's micro-batch only (context-parallel ranks of one "
        "replica still agree), as in the paper's code; 'step' = the whole global batch, from the old-policy "
        "entropies, computed once per optimizer step by slime_entropy's trainer (one threshold per batch, "
        "independent of micro-batching and layout; not available through slime's custom-loss hook). "
        f"Default: {EntropyFilterConfig.threshold_scope!r}.",
    )
    group.add_argument(
        "--entropy-filter-denominator",
        choices=DENOMINATORS,
        default=None,
        help="'kept': per-sample means run over the kept tokens (sum_of_sample_mean rebuilt from the filtered mask; "
        "a sample with no kept token contributes 0). 'all': keep the original denominators, so the policy-gradient "
        f"term shrinks by about rho (the paper's Eq. 6, TRL). Default: {EntropyFilterConfig.denominator!r}.",
    )
    group.add_argument(
        "--entropy-filter-mask-entropy-loss",
        action="store_true",
        help="Also restrict the entropy bonus (--entropy-coef) to the kept tokens. Default: all valid tokens, as in "
        "the paper's code.",
    )
    group.add_argument(
        "--entropy-filter-mask-kl-loss",
        action="store_true",
        help="Also restrict the KL loss (--use-kl-loss) to the kept tokens. Default: all valid tokens.",
    )
    group.add_argument(
        "--entropy-selection-method",
        choices=SELECTION_METHODS,
        default=None,
        help="How the threshold is found across ranks: 'radix' (exact, 3 small all-reduces of histogram counts) or "
        f"'allgather' (gathers every entropy; baseline). Default: {EntropyFilterConfig.selection_method!r}.",
    )

    group = parser.add_argument_group("slime_entropy: policy loss")
    group.add_argument(
        "--policy-loss-mode",
        choices=POLICY_LOSS_MODES,
        default="auto",
        help="Surrogate objective. 'auto' follows slime: gspo when --advantage-estimator gspo, cispo when "
        "--advantage-estimator cispo, otherwise ppo (clipped, with --eps-clip/--eps-clip-high and optional "
        "--dual-clip-c). Also: gpg (-A*logp), clip_cov, kl_cov (Cui et al. 2505.22617), gmpo (geometric mean, "
        "sequence level), cispo (-sg(clip(r))*A*logp).",
    )
    group.add_argument(
        "--dual-clip-c",
        type=float,
        default=None,
        help="Dual-clip PPO lower bound c > 1 for negative advantages (DAPO scripts use 10). slime's --eps-clip-c, "
        "where slime defines it, is honoured too.",
    )
    group.add_argument(
        "--clip-cov-ratio",
        type=float,
        default=None,
        help="clip_cov: fraction of tokens whose gradient is detached "
        f"(default {PolicyLossConfig.clip_cov_ratio:g}).",
    )
    group.add_argument(
        "--clip-cov-lb",
        type=float,
        default=None,
        help=f"clip_cov: covariance lower bound (default {PolicyLossConfig.clip_cov_lb:g}).",
    )
    group.add_argument(
        "--clip-cov-ub",
        type=float,
        default=None,
        help=f"clip_cov: covariance upper bound (default {PolicyLossConfig.clip_cov_ub:g}).",
    )
    group.add_argument(
        "--kl-cov-ratio",
        type=float,
        default=None,
        help=f"kl_cov: fraction of tokens with the KL penalty (default {PolicyLossConfig.kl_cov_ratio:g}).",
    )
    group.add_argument(
        "--kl-cov-coef",
        type=float,
        default=None,
        help=f"kl_cov: coefficient of |logp - old| (default {PolicyLossConfig.kl_cov_coef:g}).",
    )
    group.add_argument(
        "--entropy-advantage-alpha",
        type=float,
        default=0.0,
        help="Entropy advantage shaping (arXiv 2506.14758): A + min(alpha*H.detach(), |A|/kappa). "
        "%(default)g (default) = off.",
    )
    group.add_argument(
        "--entropy-advantage-kappa",
        type=float,
        default=None,
        help=f"Shaping cap divisor kappa >= 1 (default {PolicyLossConfig.advantage_kappa:g}); the sign of A never "
        "flips. Needs --entropy-advantage-alpha.",
    )

    group = parser.add_argument_group("slime_entropy: kernels")
    group.add_argument(
        "--logprob-entropy-backend",
        choices=LOGPROB_ENTROPY_BACKENDS,
        default="auto",
        help="Fused log-prob + entropy kernel: auto (Triton on CUDA, torch.compile on CPU), eager, compiled, triton.",
    )
    group.add_argument(
        "--logprob-entropy-chunk-rows",
        type=int,
        default=None,
        help="Rows per chunk of the fused log-prob + entropy kernel (default: sized to keep temporaries small).",
    )
    return parser


def add_slime_loss_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register slime's own loss flags (slime's names and defaults) for use without slime. Returns ``parser``."""
    group = parser.add_argument_group("slime loss (slime-compatible flags)")
    group.add_argument("--loss-type", choices=("policy_loss", "custom_loss"), default="policy_loss")
    group.add_argument("--custom-loss-function-path", default=None)
    group.add_argument(
        "--advantage-estimator",
        choices=("grpo", "gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "cispo"),
        default="grpo",
    )
    group.add_argument("--eps-clip", type=float, default=0.2)
    group.add_argument("--eps-clip-high", type=float, default=None, help="Defaults to --eps-clip.")
    group.add_argument("--entropy-coef", type=float, default=0.0)
    group.add_argument("--use-kl-loss", action="store_true")
    group.add_argument("--kl-loss-coef", type=float, default=0.0)
    group.add_argument("--kl-loss-type", choices=KL_LOSS_TYPES, default="kl")
    group.add_argument("--use-tis", action="store_true")
    group.add_argument("--tis-clip", type=float, default=2.0)
    group.add_argument("--tis-clip-low", type=float, default=0.0)
    group.add_argument("--calculate-per-token-loss", action="store_true")
    return parser
