"""The analysis report's settings, frozen and validated (its flags: ``slime_entropy.analysis.arguments``).

    options = ReportOptions.from_args(args)    # ValueError naming the flag

The other flags of ``python -m slime_entropy.analysis`` pick inputs and models and are read where they are used
(``cli.run_analysis``); the rollout flags resolve into :class:`~slime_entropy.rollout.config.SamplingConfig` and the
engine configs as in training.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["ReportOptions"]


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """What the report computes and shows: the top-``rho`` selection over ``scope`` ('all' analysed tokens or each
    'response'), the token tables' length, and how much of the responses the HTML page shows."""

    rho: float = 0.2
    scope: str = "all"
    num_top_tokens: int = 40
    html_max_responses: int = 20
    html_max_tokens_per_response: int = 3000
    title: str = "Token entropy analysis"

    def __post_init__(self):
        from slime_entropy.ops.selection import num_kept_for

        num_kept_for(1, self.rho)  # validates rho in (0, 1]
        if self.num_top_tokens < 1:
            raise ValueError(f"--num-top-tokens must be >= 1, got {self.num_top_tokens}")
        if self.html_max_responses < 0 or self.html_max_tokens_per_response < 1:
            raise ValueError("--html-max-responses must be >= 0 and --html-max-tokens-per-response >= 1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReportOptions:
        """The options from ``add_analysis_arguments``'s flags; ``--title`` unset keeps the default title."""
        return cls(
            rho=args.rho,
            scope=args.scope,
            num_top_tokens=args.num_top_tokens,
            html_max_responses=args.html_max_responses,
            html_max_tokens_per_response=args.html_max_tokens_per_response,
            **({"title": args.title} if args.title else {}),
        )
