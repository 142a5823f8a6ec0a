"""Frozen, validated rollout configuration, built once from the argparse namespace.

    config = RolloutConfig.from_args(args)     # ValueError listing every problem, each naming its flag and fix

Each concern owns a small dataclass whose ``__post_init__`` validates its own fields: :class:`EngineConfig`,
:class:`SamplingConfig`, :class:`DataConfig`, :class:`RewardConfig`, :class:`GroupConfig`, and the FR3E mode's
:class:`Fr3eConfig` (:attr:`RolloutConfig.samples_per_prompt` is the batch arithmetic's unit). They can be built
directly (tests, benchmarks, library use) without argparse. How many GPUs the launched SGLang engines take is one
rule, :func:`engine_gpu_count`, which the trainer's layout asks too (with ``--colocate`` the engines take the
training GPUs); the trainer hands :meth:`RolloutConfig.from_args` its resolved backend and engine GPUs.
"""

from __future__ import annotations

import importlib.util
import logging
from argparse import Namespace
from dataclasses import dataclass, field, fields
from typing import Any

from slime_entropy.problems import Problems

__all__ = [
    "EngineConfig",
    "SamplingConfig",
    "DataConfig",
    "RewardConfig",
    "GroupConfig",
    "RolloutConfig",
    "resolve_backend",
    "sglang_problem",
    "engine_gpu_count",
    "external_engine_addrs",
    "Fr3eConfig",
]

logger = logging.getLogger(__name__)


def resolve_backend(requested: str, *, on_gpu: bool | None = None, sglang_installed: bool | None = None) -> str:
    """``auto`` -> ``sglang`` where SGLang is installed and a CUDA GPU is, else ``builtin``. ``on_gpu`` /
    ``sglang_installed``: facts about the machines the run is planned for (None: this machine's)."""
    if requested != "auto":
        return requested
    if on_gpu is None:
        import torch

        on_gpu = torch.cuda.is_available()
    if sglang_installed is None:
        sglang_installed = importlib.util.find_spec("sglang") is not None
    return "sglang" if on_gpu and sglang_installed else "builtin"


def sglang_problem(requested: str) -> str | None:
    """Why ``--rollout-backend`` cannot be served on this machine (SGLang asked for but not installed), or None."""
    if requested == "sglang" and importlib.util.find_spec("sglang") is None:
        return "--rollout-backend sglang: SGLang is not installed here; use auto or builtin on CPU"
    return None


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Where generation runs and how the client talks to it."""

    backend: str
    """``sglang`` or ``builtin`` (``auto`` is resolved by :meth:`RolloutConfig.from_args`)."""
    hf_checkpoint: str
    num_engines: int = 1
    num_gpus_per_engine: int = 1
    num_gpus_per_node: int = 8
    external_engine_addrs: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    server_concurrency: int = 512
    request_timeout: float = 14400.0
    health_check_interval: float = 30.0
    health_check_timeout: float = 30.0
    startup_timeout: float = 900.0
    max_request_retries: int = 3
    builtin_max_batch_size: int = 64
    builtin_num_threads: int | None = None
    seed: int = 42
    seeded_sampling: bool = False
    """Send every sample its own ``sampling_seed`` (derived from ``seed`` and the sample's index), so a sample's
    response does not depend on batching, retries or restarts: a resumed run regenerates exactly what the
    uninterrupted run would have. On for the built-in engine (SGLang samples deterministically only with
    ``--enable-deterministic-inference``)."""
    gpu_ids: tuple[int, ...] = ()
    """Physical GPU ids of this node that launched SGLang engines may use, in order (engine ``i`` takes the ``i``-th
    run of ``num_gpus_per_engine`` consecutive ids). Empty: ``0 .. num_gpus_per_node - 1``."""
    sglang_options: tuple[tuple[str, Any], ...] = ()
    """SGLang server options given as ``--sglang-<name>``, as ``(name, value)`` pairs."""

    def __post_init__(self):
        if self.backend not in ("sglang", "builtin"):
            raise ValueError(f"--rollout-backend {self.backend!r}: choose auto, sglang or builtin")
        if not self.hf_checkpoint:
            raise ValueError("--hf-checkpoint is required: the engines load it and the tokenizer comes from it")
        if self.num_engines < 1:
            raise ValueError(f"--rollout-num-engines must be >= 1, got {self.num_engines}")
        if self.num_gpus_per_engine < 1:
            raise ValueError(f"--rollout-num-gpus-per-engine must be >= 1, got {self.num_gpus_per_engine}")
        num_gpus = self.num_engines * self.num_gpus_per_engine
        if self.backend == "sglang" and not self.external_engine_addrs and num_gpus > self.num_gpus_per_node:
            raise ValueError(
                f"the engines' {num_gpus} GPUs ({self.num_engines} x --rollout-num-gpus-per-engine "
                f"{self.num_gpus_per_engine}) exceed one node (--num-gpus-per-node {self.num_gpus_per_node}): "
                "multi-node engines are not launched by slime_entropy; start them yourself and pass "
                "--rollout-external-engine-addrs"
            )
        for addr in self.external_engine_addrs:
            host, _, port = addr.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--rollout-external-engine-addrs {addr!r}: expected host:port")
        if self.server_concurrency < 1:
            raise ValueError(f"--sglang-server-concurrency must be >= 1, got {self.server_concurrency}")
        for name, value in (
            ("--sglang-router-request-timeout-secs", self.request_timeout),
            ("--rollout-health-check-interval", self.health_check_interval),
            ("--rollout-health-check-timeout", self.health_check_timeout),
            ("--rollout-engine-startup-timeout", self.startup_timeout),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.max_request_retries < 0:
            raise ValueError(f"--rollout-max-request-retries must be >= 0, got {self.max_request_retries}")
        if self.builtin_max_batch_size < 1:
            raise ValueError(f"--builtin-engine-max-batch-size must be >= 1, got {self.builtin_max_batch_size}")
        if self.builtin_num_threads is not None and self.builtin_num_threads < 1:
            raise ValueError(f"--builtin-engine-num-threads must be >= 1, got {self.builtin_num_threads}")

    @property
    def total_concurrency(self) -> int:
        num = len(self.external_engine_addrs) or self.num_engines
        return self.server_concurrency * num


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Per-request sampling parameters, sent to the engines in SGLang's ``sampling_params`` format."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_response_len: int
    max_context_len: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    skip_special_tokens: bool = False

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(
                f"--rollout-temperature must be > 0, got {self.temperature}: the trainer divides logits by it "
                "(for near-greedy sampling use a small value such as 1e-3)"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--rollout-top-p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"--rollout-top-k must be -1 (off) or >= 1, got {self.top_k}")
        if self.max_response_len < 1:
            raise ValueError(f"--rollout-max-response-len must be >= 1, got {self.max_response_len}")
        if self.max_context_len is not None and self.max_context_len < 2:
            raise ValueError(f"--rollout-max-context-len must be >= 2, got {self.max_context_len}")
        if any(not s for s in self.stop):
            raise ValueError("--rollout-stop: stop strings must be non-empty")
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(f"--rollout-stop-token-ids must be >= 0, got {list(self.stop_token_ids)}")

    @classmethod
    def from_args(cls, args: Namespace) -> SamplingConfig:
        """slime's ``--rollout-*`` sampling flags (``--rollout-max-response-len`` must be set)."""
        return cls(
            temperature=args.rollout_temperature,
            top_p=args.rollout_top_p,
            top_k=args.rollout_top_k,
            max_response_len=args.rollout_max_response_len,
            max_context_len=args.rollout_max_context_len,
            stop=tuple(args.rollout_stop or ()),
            stop_token_ids=tuple(args.rollout_stop_token_ids or ()),
            skip_special_tokens=args.rollout_skip_special_tokens,
        )

    def max_new_tokens(self, prompt_length: int) -> int:
        """``max_response_len``, shrunk so that prompt + response fits ``max_context_len`` (may be <= 0)."""
        if self.max_context_len is None:
            return self.max_response_len
        return min(self.max_response_len, self.max_context_len - prompt_length)

    def to_sglang(self, max_new_tokens: int) -> dict[str, Any]:
        """SGLang ``sampling_params``. ``no_stop_trim`` keeps the stop string and EOS in the text (as slime)."""
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": max_new_tokens,
            "skip_special_tokens": self.skip_special_tokens,
            "no_stop_trim": True,
            "spaces_between_special_tokens": False,
        }
        if self.stop:
            params["stop"] = list(self.stop)
        if self.stop_token_ids:
            params["stop_token_ids"] = list(self.stop_token_ids)
        return params


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    prompt_data: str
    input_key: str = "input"
    label_key: str | None = None
    metadata_key: str | None = "metadata"
    apply_chat_template: bool = False
    apply_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    shuffle: bool = False
    seed: int = 42
    max_prompt_len: int | None = None
    num_rollout: int | None = None
    num_epoch: int | None = None

    def __post_init__(self):
        if not self.prompt_data:
            raise ValueError("--prompt-data is required: a .jsonl, .json or .parquet file of prompts")
        if not self.input_key:
            raise ValueError("--input-key must be a non-empty field name")
        if self.max_prompt_len is not None and self.max_prompt_len < 1:
            raise ValueError(f"--rollout-max-prompt-len must be >= 1, got {self.max_prompt_len}")
        if self.num_rollout is not None and self.num_rollout < 1:
            raise ValueError(f"--num-rollout must be >= 1, got {self.num_rollout}")
        if self.num_epoch is not None and self.num_epoch < 1:
            raise ValueError(f"--num-epoch must be >= 1, got {self.num_epoch}")

    def resolve_num_rollout(self, num_prompts: int, rollout_batch_size: int) -> int:
        """slime's rule: ``--num-rollout`` if set, else ``num_epoch * num_prompts // rollout_batch_size``."""
        if self.num_rollout is not None:
            return self.num_rollout
        if self.num_epoch is None:
            raise ValueError("set --num-rollout or --num-epoch")
        num = self.num_epoch * num_prompts // rollout_batch_size
        if num < 1:
            raise ValueError(
                f"--num-epoch {self.num_epoch} with {num_prompts} prompts and --rollout-batch-size "
                f"{rollout_batch_size} gives no rollout; raise --num-epoch or set --num-rollout"
            )
        return num


@dataclass(frozen=True, kw_only=True)
class RewardConfig:
    rm_type: str | None = None
    custom_rm_path: str | None = None
    group_rm: bool = False
    reward_key: str | None = None
    timeout: float = 10.0
    num_workers: int = 2

    def __post_init__(self):
        if self.custom_rm_path is None:
            if self.rm_type is None:
                raise ValueError("set --rm-type (deepscaler, math, dapo, boxed_<type>) or --custom-rm-path")
            from slime_entropy.rollout.rewards.grading import parse_rm_type

            parse_rm_type(self.rm_type)
        else:
            _check_importable(self.custom_rm_path, "--custom-rm-path")
        if self.group_rm and self.custom_rm_path is None:
            raise ValueError("--group-rm needs --custom-rm-path (a function scoring a whole group)")
        if not self.timeout > 0:
            raise ValueError(f"--reward-timeout must be > 0 seconds, got {self.timeout}")
        if self.num_workers < 1:
            raise ValueError(f"--reward-num-workers must be >= 1, got {self.num_workers}")


@dataclass(frozen=True, kw_only=True)
class GroupConfig:
    """Group sampling, reward normalisation, DAPO dynamic sampling / overlong shaping, and DP splitting."""

    rollout_batch_size: int
    n_samples_per_prompt: int = 1
    normalization: str = "grpo"
    """``grpo``: (r - mean) / (std + 1e-6) per group; ``mean``: r - mean (Dr. GRPO); ``none``: raw rewards."""
    over_sampling_batch_size: int | None = None
    dynamic_sampling_filter_path: str | None = None
    dynamic_sampling_max_rounds: int = 10
    overlong_buffer_len: int = 0
    overlong_penalty_factor: float = 1.0
    balance_data: bool = False

    def __post_init__(self):
        if self.rollout_batch_size is None or self.rollout_batch_size < 1:
            raise ValueError(f"--rollout-batch-size is required and must be >= 1, got {self.rollout_batch_size}")
        if self.n_samples_per_prompt < 1:
            raise ValueError(f"--n-samples-per-prompt must be >= 1, got {self.n_samples_per_prompt}")
        if self.normalization not in ("grpo", "mean", "none"):
            raise ValueError(f"normalization must be grpo, mean or none, got {self.normalization!r}")
        if self.over_sampling_batch_size is not None and self.over_sampling_batch_size < 1:
            raise ValueError(f"--over-sampling-batch-size must be >= 1, got {self.over_sampling_batch_size}")
        if self.dynamic_sampling_filter_path is not None:
            _check_importable(self.dynamic_sampling_filter_path, "--dynamic-sampling-filter-path")
        if self.dynamic_sampling_max_rounds < 1:
            raise ValueError(f"--dynamic-sampling-max-rounds must be >= 1, got {self.dynamic_sampling_max_rounds}")
        if self.overlong_buffer_len < 0:
            raise ValueError(f"--overlong-buffer-len must be >= 0, got {self.overlong_buffer_len}")
        if self.overlong_penalty_factor < 0:
            raise ValueError(f"--overlong-penalty-factor must be >= 0, got {self.overlong_penalty_factor}")
        if self.n_samples_per_prompt == 1 and self.normalization != "none":
            logger.warning(
                "--n-samples-per-prompt 1 with group normalisation makes every reward 0 after the group mean is "
                "subtracted; pass --disable-rewards-normalization for single-sample rollouts"
            )

    @property
    def sampling_batch_size(self) -> int:
        return self.over_sampling_batch_size or self.rollout_batch_size


def _check_importable(path: str, flag: str) -> None:
    from slime_entropy.rollout.rewards.pool import load_function

    try:
        fn = load_function(path)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(
            f"{flag} {path!r} cannot be imported ({e}); give an importable package.module.function"
        ) from None
    if not callable(fn):
        raise ValueError(f"{flag} {path!r} is not callable")


@dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    engine: EngineConfig
    sampling: SamplingConfig
    data: DataConfig
    reward: RewardConfig
    groups: GroupConfig
    fr3e: Fr3eConfig | None = None
    """FR3E partial rollouts (``--fr3e``), see :class:`Fr3eConfig`."""

    def __post_init__(self):
        if self.groups.overlong_buffer_len >= self.sampling.max_response_len:
            raise ValueError(
                f"--overlong-buffer-len {self.groups.overlong_buffer_len} must be < --rollout-max-response-len "
                f"{self.sampling.max_response_len}"
            )

    @property
    def user_hooks(self) -> tuple[str, ...]:
        """The user functions this rollout calls with slime's ``args`` (their flags): only for them does slime's
        namespace travel to the rollout side."""
        paths = (("--custom-rm-path", self.reward.custom_rm_path),
                 ("--dynamic-sampling-filter-path", self.groups.dynamic_sampling_filter_path))  # fmt: skip
        return tuple(flag for flag, path in paths if path is not None)

    @property
    def samples_per_prompt(self) -> int:
        """Samples per prompt in the training batch: the group, plus FR3E's partial rollouts (``--fr3e``)."""
        return self.fr3e.samples_per_prompt if self.fr3e is not None else self.groups.n_samples_per_prompt

    @classmethod
    def from_args(
        cls, args: Namespace, *, backend: str | None = None, engine_gpus: int | None = None
    ) -> RolloutConfig:
        """Build and validate every sub-config; raise one ``ValueError`` listing all problems.

        ``backend``: the engine backend as the caller resolved it for the machines it plans for (``--rollout-backend
        auto`` resolved once, and whether SGLang is installed there checked by the caller); None: resolved here, for
        this machine (:func:`resolve_backend`, :func:`sglang_problem`). ``engine_gpus``: the GPUs of the engines the
        caller launches as it resolved them (the trainer's layout: ``--rollout-num-gpus``, or the training GPUs with
        ``--colocate``); None: :func:`engine_gpu_count` of ``--rollout-num-gpus``.
        """
        from slime_entropy.rollout.sglang_options import collect_passthrough

        problems = Problems()
        if backend is None:
            backend = resolve_backend(args.rollout_backend)
            problems.extend(filter(None, [sglang_problem(args.rollout_backend)]))
        num_engines = args.rollout_num_engines
        problems.check(
            (args.sglang_router_ip is None) == (args.sglang_router_port is None),
            "--sglang-router-ip and --sglang-router-port go together; give both or neither",
        )
        problems.check(
            args.sglang_router_ip is None or not args.rollout_external_engine_addrs,
            "give either --sglang-router-ip/--sglang-router-port or --rollout-external-engine-addrs",
        )
        external = external_engine_addrs(args)
        if backend == "sglang" and not external:
            if engine_gpus is None:
                engine_gpus = problems.collect(
                    lambda: engine_gpu_count(
                        rollout_num_gpus=args.rollout_num_gpus, num_gpus_per_engine=args.rollout_num_gpus_per_engine
                    )
                )
            if engine_gpus and args.rollout_num_gpus_per_engine >= 1:
                num_engines = engine_gpus // args.rollout_num_gpus_per_engine
        logger.info("rollout backend: %s (requested %s)", backend, args.rollout_backend)
        engine = problems.collect(
            lambda: EngineConfig(
                backend=backend,
                hf_checkpoint=args.hf_checkpoint,
                num_engines=num_engines,
                num_gpus_per_engine=args.rollout_num_gpus_per_engine,
                num_gpus_per_node=args.num_gpus_per_node,
                external_engine_addrs=external,
                host=args.rollout_engine_host,
                server_concurrency=args.sglang_server_concurrency,
                request_timeout=float(args.sglang_router_request_timeout_secs),
                health_check_interval=args.rollout_health_check_interval,
                health_check_timeout=args.rollout_health_check_timeout,
                startup_timeout=args.rollout_engine_startup_timeout,
                max_request_retries=args.rollout_max_request_retries,
                builtin_max_batch_size=args.builtin_engine_max_batch_size,
                builtin_num_threads=args.builtin_engine_num_threads,
                seed=args.rollout_seed,
                seeded_sampling=backend == "builtin",
                sglang_options=collect_passthrough(args),
            )
        )
        problems.check(
            args.rollout_max_response_len is not None,
            "--rollout-max-response-len is required (max new tokens per response)",
        )
        sampling = (
            None if args.rollout_max_response_len is None else problems.collect(lambda: SamplingConfig.from_args(args))
        )
        data = problems.collect(
            lambda: DataConfig(
                prompt_data=args.prompt_data,
                input_key=args.input_key,
                label_key=args.label_key,
                metadata_key=args.metadata_key,
                apply_chat_template=args.apply_chat_template,
                apply_chat_template_kwargs=dict(args.apply_chat_template_kwargs),
                shuffle=args.rollout_shuffle,
                seed=args.rollout_seed,
                max_prompt_len=args.rollout_max_prompt_len,
                num_rollout=args.num_rollout,
                num_epoch=args.num_epoch,
            )
        )
        reward = problems.collect(
            lambda: RewardConfig(
                rm_type=args.rm_type,
                custom_rm_path=args.custom_rm_path,
                group_rm=args.group_rm,
                reward_key=args.reward_key,
                timeout=args.reward_timeout,
                num_workers=args.reward_num_workers,
            )
        )
        normalization = (
            "none" if not args.rewards_normalization else ("grpo" if args.grpo_std_normalization else "mean")
        )
        groups = problems.collect(
            lambda: GroupConfig(
                rollout_batch_size=args.rollout_batch_size,
                n_samples_per_prompt=args.n_samples_per_prompt,
                normalization=normalization,
                over_sampling_batch_size=args.over_sampling_batch_size,
                dynamic_sampling_filter_path=args.dynamic_sampling_filter_path,
                dynamic_sampling_max_rounds=args.dynamic_sampling_max_rounds,
                overlong_buffer_len=args.overlong_buffer_len,
                overlong_penalty_factor=args.overlong_penalty_factor,
                balance_data=args.balance_data,
            )
        )
        fr3e = problems.collect(lambda: Fr3eConfig.from_args(args))
        config = None
        if not problems:
            config = problems.collect(
                lambda: cls(engine=engine, sampling=sampling, data=data, reward=reward, groups=groups, fr3e=fr3e)
            )
        problems.raise_if_any("rollout arguments")
        return config


def external_engine_addrs(args: Namespace) -> tuple[str, ...]:
    """The engines slime_entropy does not launch: ``--rollout-external-engine-addrs``, or the one address an external
    router gives (``--sglang-router-ip``/``--sglang-router-port``, which take precedence)."""
    if args.sglang_router_ip is not None and args.sglang_router_port is not None:
        return (f"{args.sglang_router_ip}:{args.sglang_router_port}",)
    return tuple(args.rollout_external_engine_addrs or ())


def engine_gpu_count(
    *, rollout_num_gpus: int | None, num_gpus_per_engine: int, colocated_gpus: int | None = None
) -> int:
    """GPUs of the SGLang engines slime_entropy launches: ``--rollout-num-gpus``, or with ``--colocate``
    (``colocated_gpus``: the training GPUs the engines share) those GPUs; always whole engines of
    ``--rollout-num-gpus-per-engine`` GPUs. The rollout config and the trainer's layout both ask this function.
    Raises ``ValueError``, one line per problem, each naming the flag and the fix."""
    problems = Problems()
    if colocated_gpus is not None:
        problems.check(
            rollout_num_gpus in (None, colocated_gpus),
            f"--colocate shares the training GPUs with the engines: --rollout-num-gpus {rollout_num_gpus} must equal "
            f"the {colocated_gpus} training GPUs (or be left out)",
        )
        num_gpus = colocated_gpus
    else:
        problems.check(
            bool(rollout_num_gpus),
            "--rollout-num-gpus is required with the SGLang backend: disaggregated GPU runs need --rollout-num-gpus "
            "(GPUs for the SGLang engines, beside the training GPUs); or pass --colocate to share the training GPUs",
        )
        num_gpus = rollout_num_gpus or 0
    problems.check(
        not num_gpus or num_gpus_per_engine < 1 or num_gpus % num_gpus_per_engine == 0,  # < 1: EngineConfig's
        f"--rollout-num-gpus {num_gpus} is not a multiple of --rollout-num-gpus-per-engine {num_gpus_per_engine}",
    )
    problems.raise_if_any()
    return num_gpus


# FR3E: entropy-anchored partial rollouts (slime_entropy.rollout.fr3e, docs/fr3e.md) ---------------------------------

ANCHOR_SCORES = ("entropy", "surprisal")
MODULATIONS = ("exp", "none")
NORMALIZATION_SCOPES = ("state", "prompt")


@dataclass(frozen=True, kw_only=True)
class Fr3eConfig:
    """The FR3E mode, validated; ``Fr3eConfig.from_args(args)`` is None without ``--fr3e``.

    Each ``--fr3e-<name>`` flag defaults to ``None`` (so that it can be refused without ``--fr3e``) and resolves to
    the field ``<name>``'s default below, the one place it is written."""

    num_anchors: int = 4
    rollouts_per_anchor: int = 4
    base_per_prompt: int = 1
    anchor_score: str = "entropy"
    modulation: str = "exp"
    sharpen_power: float | None = None
    normalization_scope: str = "state"
    correct_threshold: float = 0.0
    n_samples_per_prompt: int = 1
    """The base group size (``--n-samples-per-prompt``)."""

    def __post_init__(self):
        problems = Problems()
        problems.check(self.num_anchors >= 1, f"--fr3e-num-anchors must be >= 1, got {self.num_anchors}")
        problems.check(
            self.rollouts_per_anchor >= 1, f"--fr3e-rollouts-per-anchor must be >= 1, got {self.rollouts_per_anchor}"
        )
        problems.check(
            1 <= self.base_per_prompt <= self.n_samples_per_prompt,
            f"--fr3e-base-per-prompt {self.base_per_prompt} must lie in [1, --n-samples-per-prompt "
            f"{self.n_samples_per_prompt}]",
        )
        problems.check(
            self.anchor_score in ANCHOR_SCORES,
            f"--fr3e-anchor-score must be one of {ANCHOR_SCORES}, got {self.anchor_score!r}",
        )
        problems.check(
            self.modulation in MODULATIONS, f"--fr3e-modulation must be one of {MODULATIONS}, got {self.modulation!r}"
        )
        if self.sharpen_power is not None:
            problems.check(self.sharpen_power > 0, f"--fr3e-sharpen-power must be > 0, got {self.sharpen_power}")
            problems.check(
                self.modulation != "none",
                "--fr3e-sharpen-power sharpens the modulation; it has no effect with --fr3e-modulation none",
            )
        problems.check(
            self.normalization_scope in NORMALIZATION_SCOPES,
            f"--fr3e-normalization-scope must be one of {NORMALIZATION_SCOPES}, got {self.normalization_scope!r}",
        )
        problems.raise_if_any()

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
    def from_args(cls, args: Namespace) -> Fr3eConfig | None:
        """None without ``--fr3e`` (and then no ``--fr3e-*`` option may be given); else the validated config,
        including the checks against other flags."""
        given = {name: getattr(args, f"fr3e_{name}", None) for name in FR3E_FLAGS}
        given = {name: value for name, value in given.items() if value is not None}
        if not getattr(args, "fr3e", False):
            if given:
                raise ValueError(f"{', '.join(FR3E_FLAGS[name] for name in given)} only apply with --fr3e; add --fr3e "
                                 "or drop them")  # fmt: skip
            return None
        problems = Problems()
        problems.check(
            not getattr(args, "rollout_stop", None),
            "--fr3e continues trajectories from token prefixes, and an engine matches --rollout-stop strings "
            "only in the text it generated itself (a stop string straddling the anchor would be missed); use "
            "--rollout-stop-token-ids with --fr3e",
        )
        problems.check(
            not (
                given.get("rollouts_per_anchor", cls.rollouts_per_anchor) == 1
                and given.get("normalization_scope", cls.normalization_scope) == "state"
                and getattr(args, "rewards_normalization", True)
            ),
            "--fr3e-rollouts-per-anchor 1 with per-state normalisation makes every partial rollout's advantage 0; "
            "use M >= 2 or --fr3e-normalization-scope prompt",
        )
        config = problems.collect(lambda: cls(**given, n_samples_per_prompt=args.n_samples_per_prompt))
        problems.raise_if_any()
        return config


# Field -> its flag, for the fields a --fr3e-<name> flag sets (all but the base group size).
FR3E_FLAGS = {
    f.name: "--fr3e-" + f.name.replace("_", "-") for f in fields(Fr3eConfig) if f.name != "n_samples_per_prompt"
}
