"""The FR3E rollout mode's flags and their frozen, self-validating config (see :mod:`slime_entropy.rollout.fr3e` and
``docs/fr3e.md``).

    add_fr3e_arguments(parser)
    config = Fr3eConfig.from_args(args)        # None without --fr3e; ValueError naming the flag otherwise
    samples_per_prompt(args)                   # n + B x K x M with --fr3e, n without: the batch arithmetic's unit
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["add_fr3e_arguments", "Fr3eConfig", "samples_per_prompt", "ANCHOR_SCORES", "FR3E_FLAGS"]

ANCHOR_SCORES = ("entropy", "surprisal")
MODULATIONS = ("exp", "none")
NORMALIZATION_SCOPES = ("state", "prompt")
DEFAULTS = {
    "fr3e_num_anchors": 4,
    "fr3e_rollouts_per_anchor": 4,
    "fr3e_base_per_prompt": 1,
    "fr3e_anchor_score": "entropy",
    "fr3e_modulation": "exp",
    "fr3e_sharpen_power": None,
    "fr3e_normalization_scope": "state",
    "fr3e_correct_threshold": 0.0,
}
FR3E_FLAGS = tuple("--" + key.replace("_", "-") for key in DEFAULTS)


def add_fr3e_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("FR3E: entropy-anchored partial rollouts (arXiv 2507.07017; docs/fr3e.md)")
    g.add_argument(
        "--fr3e",
        action="store_true",
        help="(ours) After the base rollout, continue each explored base trajectory from its K most uncertain "
        "positions with M partial rollouts each; V(S_j) = fraction correct; per-state group-relative advantages "
        "modulated by exp(-dV). The partial rollouts join the training batch.",
    )
    g.add_argument("--fr3e-num-anchors", type=int, default=None, help="K anchors (states) per explored trajectory "
                   f"(default {DEFAULTS['fr3e_num_anchors']}).")  # fmt: skip
    g.add_argument("--fr3e-rollouts-per-anchor", type=int, default=None, help="M partial rollouts from each state "
                   f"(default {DEFAULTS['fr3e_rollouts_per_anchor']}).")  # fmt: skip
    g.add_argument(
        "--fr3e-base-per-prompt",
        type=int,
        default=None,
        help="B base trajectories explored per prompt, correct and wrong ones alternately (default 1; the released "
        "code explores one correct and one wrong: 2).",
    )
    g.add_argument(
        "--fr3e-anchor-score",
        choices=ANCHOR_SCORES,
        default=None,
        help="entropy (default): the full-distribution entropy from the trainer's old-policy pass; surprisal: -log p "
        "of the sampled token from the engine (the released code's proxy, no extra pass).",
    )
    g.add_argument("--fr3e-modulation", choices=MODULATIONS, default=None,
                   help="exp (default): advantages of state j times exp(-dV_j); none: unmodulated.")  # fmt: skip
    g.add_argument(
        "--fr3e-sharpen-power",
        type=float,
        default=None,
        help="Sharpen dV before the exponential: sign(d)|d|^p / sum|d|^p (the released code's option, p = 1.5). "
        "Default: off.",
    )
    g.add_argument(
        "--fr3e-normalization-scope",
        choices=NORMALIZATION_SCOPES,
        default=None,
        help="state (default): rewards normalised within each state's group; prompt: over all of the prompt's "
        "samples at once (the released code). The normalisation itself follows the group options (GRPO std or "
        "mean only).",
    )
    g.add_argument("--fr3e-correct-threshold", type=float, default=None,
                   help="A rollout counts as correct for V(S) when its reward exceeds this (default 0).")  # fmt: skip
    return parser


@dataclass(frozen=True, kw_only=True)
class Fr3eConfig:
    num_anchors: int = DEFAULTS["fr3e_num_anchors"]
    rollouts_per_anchor: int = DEFAULTS["fr3e_rollouts_per_anchor"]
    base_per_prompt: int = DEFAULTS["fr3e_base_per_prompt"]
    anchor_score: str = DEFAULTS["fr3e_anchor_score"]
    modulation: str = DEFAULTS["fr3e_modulation"]
    sharpen_power: float | None = DEFAULTS["fr3e_sharpen_power"]
    normalization_scope: str = DEFAULTS["fr3e_normalization_scope"]
    correct_threshold: float = DEFAULTS["fr3e_correct_threshold"]
    n_samples_per_prompt: int = 1
    """The base group size (``--n-samples-per-prompt``)."""

    def __post_init__(self):
        problems = []
        if self.num_anchors < 1:
            problems.append(f"--fr3e-num-anchors must be >= 1, got {self.num_anchors}")
        if self.rollouts_per_anchor < 1:
            problems.append(f"--fr3e-rollouts-per-anchor must be >= 1, got {self.rollouts_per_anchor}")
        if not 1 <= self.base_per_prompt <= self.n_samples_per_prompt:
            problems.append(
                f"--fr3e-base-per-prompt {self.base_per_prompt} must lie in [1, --n-samples-per-prompt "
                f"{self.n_samples_per_prompt}]"
            )
        if self.anchor_score not in ANCHOR_SCORES:
            problems.append(f"--fr3e-anchor-score must be one of {ANCHOR_SCORES}, got {self.anchor_score!r}")
        if self.modulation not in MODULATIONS:
            problems.append(f"--fr3e-modulation must be one of {MODULATIONS}, got {self.modulation!r}")
        if self.sharpen_power is not None:
            if not self.sharpen_power > 0:
                problems.append(f"--fr3e-sharpen-power must be > 0, got {self.sharpen_power}")
            if self.modulation == "none":
                problems.append("--fr3e-sharpen-power sharpens the modulation; it has no effect with "
                                "--fr3e-modulation none")  # fmt: skip
        if self.normalization_scope not in NORMALIZATION_SCOPES:
            problems.append(
                f"--fr3e-normalization-scope must be one of {NORMALIZATION_SCOPES}, got {self.normalization_scope!r}"
            )
        if problems:
            raise ValueError("\n".join(problems))

    @property
    def extra_samples_per_prompt(self) -> int:
        """B x K x M partial rollouts per prompt."""
        return self.base_per_prompt * self.num_anchors * self.rollouts_per_anchor

    @property
    def samples_per_prompt(self) -> int:
        return self.n_samples_per_prompt + self.extra_samples_per_prompt

    def summary(self) -> str:
        """One line for ``--dry-run``'s plan."""
        modulation = (
            "off"
            if self.modulation == "none"
            else "exp(-dV)" + (f", sharpened p={self.sharpen_power:g}" if self.sharpen_power is not None else "")
        )
        return (
            f"ON: {self.base_per_prompt} base trajectory(ies)/prompt x {self.num_anchors} anchors "
            f"({self.anchor_score}) x {self.rollouts_per_anchor} partial rollouts = "
            f"{self.extra_samples_per_prompt} extra samples/prompt "
            f"(+ {self.n_samples_per_prompt} base = {self.samples_per_prompt}); modulation {modulation}; "
            f"normalisation per {self.normalization_scope}"
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Fr3eConfig | None:
        """None without ``--fr3e`` (and then no ``--fr3e-*`` option may be given); else the validated config,
        including the checks against other flags."""
        given = [flag for flag, key in zip(FR3E_FLAGS, DEFAULTS, strict=True) if getattr(args, key, None) is not None]
        if not getattr(args, "fr3e", False):
            if given:
                raise ValueError(f"{', '.join(given)} only apply with --fr3e; add --fr3e or drop them")
            return None
        problems = []
        if getattr(args, "rollout_stop", None):
            problems.append(
                "--fr3e continues trajectories from token prefixes, and an engine matches --rollout-stop strings "
                "only in the text it generated itself (a stop string straddling the anchor would be missed); use "
                "--rollout-stop-token-ids with --fr3e"
            )
        values = {key: getattr(args, key) if getattr(args, key) is not None else d for key, d in DEFAULTS.items()}
        if (
            values["fr3e_rollouts_per_anchor"] == 1
            and values["fr3e_normalization_scope"] == "state"
            and getattr(args, "rewards_normalization", True)
        ):
            problems.append(
                "--fr3e-rollouts-per-anchor 1 with per-state normalisation makes every partial rollout's advantage 0; "
                "use M >= 2 or --fr3e-normalization-scope prompt"
            )
        try:
            config = cls(
                **{key.removeprefix("fr3e_"): value for key, value in values.items()},
                n_samples_per_prompt=args.n_samples_per_prompt,
            )
        except ValueError as e:
            problems.append(str(e))
            config = None
        if problems:
            raise ValueError("\n".join(problems))
        return config


def samples_per_prompt(args: argparse.Namespace) -> int:
    """Samples per prompt in the training batch: ``--n-samples-per-prompt`` plus, with ``--fr3e``, B x K x M partial
    rollouts. Invalid FR3E flags count as plain ``n`` here (``Fr3eConfig.from_args`` reports them)."""
    try:
        config = Fr3eConfig.from_args(args)
    except ValueError:
        config = None
    return config.samples_per_prompt if config is not None else args.n_samples_per_prompt
