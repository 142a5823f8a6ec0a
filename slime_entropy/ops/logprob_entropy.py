"""Fused, chunked, vocab-parallel log-prob + entropy of tempered logits.

``vocab_parallel_logprob_entropy`` returns, for selected rows of a tensor-parallel (TP) logits shard, the
log-probability of a target token and the entropy of the full tempered softmax distribution, in one pass over
the local vocabulary shard, with at most one collective per call and O(N) state saved for backward.

Algorithm (per row, ``z = logits[row, :num_valid] * inv_temperature`` in fp32):

* **Local statistics, one read of the shard.** ``m = max_j z_j``, ``S = sum_j e^{z_j - m}``,
  ``B = sum_j (z_j - m) e^{z_j - m}`` (accumulated in the shifted form, so the large common offset ``m`` never
  enters the sum and nothing cancels) and ``z_y`` (the target's tempered logit if this shard holds the target,
  else 0). Columns whose global id is ``>= vocab_size`` (Megatron's padding) count nowhere: they are masked to
  ``-inf`` (the Triton kernels do not even load them) and get a zero gradient.
* **TP merge, one collective.** The ``[N, 4]`` statistics are all-gathered (``[W, N, 4]``, 16·W bytes per row)
  and merged locally, identically on every rank: ``M = max_r m_r``, ``S = sum_r e^{m_r - M} S_r``,
  ``B = sum_r e^{m_r - M} (B_r + (m_r - M) S_r)``, ``z_y = sum_r z_y,r``. A shard with no finite logit
  (``m_r = -inf``) contributes nothing.
* **Results.** ``lse = M + log S``, ``E_p[z] = M + B/S``, ``log_prob = z_y - lse``,
  ``entropy = log S - B/S`` (= ``lse - E_p[z]`` without the cancellation of ``M``).
* **Backward, no collective.** Only ``lse`` (and ``E_p[z]`` when the entropy carries gradient) are saved, plus
  the row and local target indices as int32: at most 16 bytes per row; the logits are saved by reference.
  ``p = exp(z - lse)`` is recomputed chunkwise and
  ``d/dlogits_j = inv_temperature * (g_lp * (1[j = y] - p_j) + g_H * p_j * (E_p[z] - z_j))`` is written into a
  fresh gradient in the logits' dtype; unselected rows and padded columns get 0. All statistics are global
  already, so backward needs no communication, and the explicit backward avoids the identity-backward pitfall of
  Megatron's reduce mappings.

Backends:

* ``"eager"``: plain torch over row chunks (the readable reference of the algorithm).
* ``"compiled"``: the same per-chunk functions through ``torch.compile`` (inductor, ``dynamic=True``: one graph per
  function and logits dtype serves every chunk size, row subset, padding and temperature; compiled lazily on first
  use and cached); on CPU this fuses each chunk into one vectorised loop per row (sums accumulated in fp64).
* ``"triton"``: hand-written Triton kernels for CUDA tensors (``_logprob_entropy_triton``): forward reads the
  logits once, backward reads them once and writes the gradient once; no chunking is needed.
* ``"auto"``: ``"triton"`` for CUDA tensors when Triton imports, else ``"compiled"``; if compilation fails, one
  warning is logged and ``"eager"`` is used from then on.

Chunk rule (``chunk_rows=None``): ``max(2, 2**22 // V_local)`` rows, i.e. each fp32 ``[chunk, V_local]``
temporary of the eager path is at most 16 MiB (a compiled chunk fuses into one loop and creates no such
temporary; a row subset gathers one chunk of logits rows, and backward writes through one chunk buffer). The
Triton path does not chunk: its kernels keep O(1) state per row.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
from torch.distributed import ProcessGroup

from slime_entropy import collectives

__all__ = ["vocab_parallel_logprob_entropy", "BACKENDS", "default_chunk_rows"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "compiled", "triton")

#: Elements of one fp32 ``[chunk_rows, V]`` temporary in the eager path (2**22 elements = 16 MiB).
CHUNK_ELEMENTS = 1 << 22

_NEG_INF = float("-inf")


def default_chunk_rows(num_columns: int) -> int:
    """Rows per chunk when ``chunk_rows=None``: keeps each fp32 chunk temporary at ``CHUNK_ELEMENTS`` or less."""
    return max(2, CHUNK_ELEMENTS // max(1, num_columns))


# ----------------------------------------------------------------------------------------------------------------
# Per-chunk math (shared by the eager and the compiled backends; no communication, no autograd)
# ----------------------------------------------------------------------------------------------------------------


def _chunk_stats(x_CV: torch.Tensor, target_C: torch.Tensor, num_valid: int, inv_temp: torch.Tensor) -> torch.Tensor:
    """Local one-pass statistics of ``C`` rows. Returns ``[C, 4]`` fp32 ``(m, S, B, z_y)``.

    ``x_CV``: ``[C, V_local]`` logits rows (fp32/bf16/fp16); only columns ``< num_valid`` are real vocabulary
    (the rest is Megatron padding and is masked to ``-inf``, i.e. probability 0). ``target_C``: ``[C]`` local
    target column; values outside ``[0, num_valid)`` give ``z_y = 0``. ``inv_temp``: 0-d fp32 tensor.
    """
    cols = torch.arange(x_CV.shape[1], device=x_CV.device)
    z = torch.where(cols < num_valid, x_CV.float() * inv_temp, _NEG_INF)
    m = z.amax(dim=1)
    m_safe = torch.where(m == _NEG_INF, 0.0, m)  # a row of -inf logits: S = B = 0 instead of NaN
    d = z - m_safe[:, None]
    e = torch.exp(d)
    # fp64 accumulation: a plain fp32 running sum over ~1e5 columns drifts by ~4e-5 (relative) on CPU, while the
    # in-loop upcast costs ~15% and keeps the sums exact to ~1e-8.
    s = e.sum(dim=1, dtype=torch.float64).float()
    b = (torch.where(e > 0, d, 0.0) * e).sum(dim=1, dtype=torch.float64).float()  # -inf logits add 0, not -inf*0
    in_shard = (target_C >= 0) & (target_C < num_valid)
    z_y = z.gather(1, torch.where(in_shard, target_C, 0).long()[:, None]).squeeze(1)
    z_y = torch.where(in_shard, z_y, 0.0)
    return torch.stack([m, s, b, z_y], dim=1)


def _chunk_grad_lp(
    out_CV: torch.Tensor,
    x_CV: torch.Tensor,
    target_C: torch.Tensor,
    lse_C: torch.Tensor,
    g_lp_C: torch.Tensor,
    num_valid: int,
    inv_temp: torch.Tensor,
) -> None:
    """Write ``d(sum g_lp * log_prob)/dx`` of ``C`` full rows into ``out_CV`` (logits' dtype; padding gets 0)."""
    cols = torch.arange(x_CV.shape[1], device=x_CV.device)
    z = x_CV.float() * inv_temp
    p = torch.exp(z - lse_C[:, None])
    g = torch.where(cols[None, :] == target_C[:, None], 1.0 - p, -p) * g_lp_C[:, None]
    out_CV.copy_(torch.where(cols < num_valid, g * inv_temp, 0.0))


def _chunk_grad_lp_entropy(
    out_CV: torch.Tensor,
    x_CV: torch.Tensor,
    target_C: torch.Tensor,
    lse_C: torch.Tensor,
    mean_z_C: torch.Tensor,
    g_lp_C: torch.Tensor,
    g_h_C: torch.Tensor,
    num_valid: int,
    inv_temp: torch.Tensor,
) -> None:
    """Write ``d(sum g_lp * log_prob + g_h * entropy)/dx`` of ``C`` full rows into ``out_CV``."""
    cols = torch.arange(x_CV.shape[1], device=x_CV.device)
    z = x_CV.float() * inv_temp
    p = torch.exp(z - lse_C[:, None])
    g = p * (g_h_C[:, None] * (mean_z_C[:, None] - z) - g_lp_C[:, None])
    g = torch.where(cols[None, :] == target_C[:, None], g + g_lp_C[:, None], g)
    out_CV.copy_(torch.where(cols < num_valid, g * inv_temp, 0.0))


def _merge_stats(stats_WN4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge per-shard statistics ``[W, N, 4]`` into ``(lse, mean_z, entropy, z_y)``, each ``[N]`` fp32.

    Pure local math; every TP rank gets bit-identical results from the same gathered tensor. NaN propagates.
    """
    m, s, b, z_y = stats_WN4.unbind(dim=-1)
    big_m = m.amax(dim=0)
    big_m = torch.where(big_m == _NEG_INF, 0.0, big_m)
    live = m != _NEG_INF  # a shard without finite logits (NaN stays "live" so it propagates)
    dm = torch.where(live, m - big_m, 0.0)
    w = torch.where(live, torch.exp(dm), 0.0)
    s_tot = (w * s).sum(dim=0)
    b_tot = (w * (b + dm * s)).sum(dim=0)
    log_s = torch.log(s_tot)
    b_over_s = b_tot / s_tot
    lse = big_m + log_s
    mean_z = big_m + b_over_s
    entropy = log_s - b_over_s
    return lse, mean_z, entropy, z_y.sum(dim=0)


# ----------------------------------------------------------------------------------------------------------------
# Backend selection and the compiled-function cache
# ----------------------------------------------------------------------------------------------------------------

_compiled_cache: dict[str, object] = {}
_compile_failed = False


def _compiled(fn):
    compiled = _compiled_cache.get(fn.__name__)
    if compiled is None:
        compiled = torch.compile(fn, dynamic=True)
        _compiled_cache[fn.__name__] = compiled
    return compiled


def _triton_module():
    """The Triton kernels module, or None when Triton (or a CUDA driver for it) is unavailable."""
    try:
        from slime_entropy.ops import _logprob_entropy_triton
    except Exception:  # ImportError, or a broken triton install: treated as "no triton"
        return None
    return _logprob_entropy_triton if _logprob_entropy_triton.AVAILABLE else None


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        if device.type == "cuda" and _triton_module() is not None:
            return "triton"
        return "eager" if _compile_failed else "auto-compiled"
    if backend == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError(f"backend='triton' needs CUDA logits, got device {device}; use backend='auto'")
        if _triton_module() is None:
            raise ValueError("backend='triton' needs the optional package triton; install it or use backend='auto'")
    return backend


def _run_chunk_fn(fn, backend: str, *args):
    """Call ``fn`` eagerly or compiled; ``auto-compiled`` falls back to eager (one warning) if compiling fails."""
    global _compile_failed
    if backend == "eager" or (backend == "auto-compiled" and _compile_failed):
        return fn(*args)
    # detach(): storage-sharing tensors that are not views (and never require grad), so dynamo adds no guards on
    # a view's base (e.g. "chunk rows == T") and one graph per dtype serves every chunk, subset and layout.
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    if backend == "compiled":
        return _compiled(fn)(*args)
    try:
        return _compiled(fn)(*args)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # compiler missing or broken: degrade once, loudly, and keep working
        _compile_failed = True
        logger.warning(
            "torch.compile of the log-prob/entropy kernels failed (%s: %s); using the slower eager backend from "
            "now on. Pass backend='compiled' to see the full error.",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "",
        )
        return fn(*args)


def _chunks(num_rows: int, chunk_rows: int):
    """Split ``range(num_rows)`` into near-equal contiguous chunks of at most ``chunk_rows`` rows."""
    if num_rows == 0:
        return
    num_chunks = -(-num_rows // chunk_rows)
    base, extra = divmod(num_rows, num_chunks)
    start = 0
    for i in range(num_chunks):
        stop = start + base + (1 if i < extra else 0)
        yield start, stop
        start = stop


# ----------------------------------------------------------------------------------------------------------------
# Local statistics and gradient drivers (chunk loops)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    tp_group: ProcessGroup | None
    vocab_start: int
    num_valid: int  # real vocabulary columns of this shard (a prefix of the shard)
    global_vocab: int  # targets outside [0, global_vocab) get a NaN log-prob
    inv_temperature: float
    entropy_grad: bool
    chunk_rows: int
    backend: str  # resolved: "eager" | "compiled" | "auto-compiled" | "triton"


def _local_stats(logits, rows, target_local, plan: _Plan) -> torch.Tensor:
    num = target_local.numel()
    stats = torch.empty((num, 4), dtype=torch.float32, device=logits.device)
    if num == 0:
        return stats
    if plan.num_valid == 0:  # this shard is all padding: it contributes nothing to the merge
        stats.zero_()
        stats[:, 0] = _NEG_INF
        return stats
    inv_temp = torch.tensor(plan.inv_temperature, dtype=torch.float32, device=logits.device)
    for start, stop in _chunks(num, plan.chunk_rows):
        # rows=None: a view, no copy. A row subset gathers one chunk ([C, V_local] in the logits' dtype).
        x_chunk = logits[start:stop] if rows is None else logits.index_select(0, rows[start:stop])
        backend = plan.backend if stop - start >= 2 else "eager"  # a 1-row chunk would cost a recompile
        stats[start:stop] = _run_chunk_fn(
            _chunk_stats, backend, x_chunk, target_local[start:stop], plan.num_valid, inv_temp
        )
    return stats


def _logits_grad(logits, rows, target_local, lse, mean_z, g_lp, g_h, plan: _Plan) -> torch.Tensor:
    num = target_local.numel()
    num_rows, num_cols = logits.shape
    if plan.backend == "triton" and num > 0 and plan.num_valid > 0:
        return _triton_module().backward_grad(
            logits, rows, target_local, lse, mean_z, g_lp, g_h, plan.num_valid, plan.inv_temperature
        )
    # rows=None: every row is written below (padding columns included), so no zero fill is needed.
    alloc = torch.empty if rows is None and num > 0 and plan.num_valid > 0 else torch.zeros
    grad = alloc((num_rows, num_cols), dtype=logits.dtype, device=logits.device)
    if num == 0 or plan.num_valid == 0:
        return grad
    if g_lp is None:
        g_lp = torch.zeros_like(lse)
    inv_temp = torch.tensor(plan.inv_temperature, dtype=torch.float32, device=logits.device)
    buffer = None
    for start, stop in _chunks(num, plan.chunk_rows):
        if rows is None:
            x_chunk, out = logits[start:stop], grad[start:stop]
        else:
            row_idx = rows[start:stop]
            x_chunk = logits.index_select(0, row_idx)
            if buffer is None:
                buffer = torch.empty((min(num, plan.chunk_rows), num_cols), dtype=grad.dtype, device=grad.device)
            out = buffer[: stop - start]
        backend = plan.backend if stop - start >= 2 else "eager"
        sl = slice(start, stop)
        if g_h is None:
            _run_chunk_fn(
                _chunk_grad_lp, backend, out, x_chunk, target_local[sl], lse[sl], g_lp[sl], plan.num_valid, inv_temp
            )
        else:
            _run_chunk_fn(
                _chunk_grad_lp_entropy,
                backend,
                out,
                x_chunk,
                target_local[sl],
                lse[sl],
                mean_z[sl],
                g_lp[sl],
                g_h[sl],
                plan.num_valid,
                inv_temp,
            )
        if rows is not None:
            grad.index_copy_(0, row_idx, out)
    return grad


# ----------------------------------------------------------------------------------------------------------------
# Autograd function and public entry point
# ----------------------------------------------------------------------------------------------------------------


class _VocabParallelLogProbEntropy(torch.autograd.Function):
    """Explicit forward/backward; saves ``lse`` (+ ``E_p[z]``) and int32 row/target indices, never ``[T, V]``."""

    @staticmethod
    def forward(ctx, logits, targets, rows, plan: _Plan):
        rows32 = None if rows is None else rows.to(torch.int32)
        if plan.backend == "triton":
            tk = _triton_module()
            stats, target_local = tk.forward_stats(
                logits, rows, targets, plan.vocab_start, plan.num_valid, plan.inv_temperature
            )
            # The only collective: every rank calls it, also with N = 0 (an empty [W, 0, 4] gather).
            gathered = collectives.all_gather_stacked(stats, plan.tp_group)
            log_prob, entropy, lse, mean_z = tk.merge_stats(gathered, targets, plan.global_vocab)
        else:
            # Local target column as int32 (4 B/row saved); out-of-shard targets fall outside [0, num_valid).
            target_local = (targets - plan.vocab_start).clamp_(-1, plan.num_valid).to(torch.int32)
            stats = _local_stats(logits, rows, target_local, plan)
            # The only collective: every rank calls it, also with N = 0 (an empty [W, 0, 4] gather).
            gathered = collectives.all_gather_stacked(stats, plan.tp_group)
            lse, mean_z, entropy, z_y = _merge_stats(gathered)
            valid_target = (targets >= 0) & (targets < plan.global_vocab)
            log_prob = torch.where(valid_target, z_y - lse, float("nan"))

        ctx.plan = plan
        ctx.has_rows = rows is not None
        ctx.set_materialize_grads(False)
        saved = [logits, target_local, lse]
        if plan.entropy_grad:
            saved.append(mean_z)
        if rows32 is not None:
            saved.append(rows32)
        ctx.save_for_backward(*saved)
        if not plan.entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return log_prob, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_h):
        plan: _Plan = ctx.plan
        saved = list(ctx.saved_tensors)
        logits, target_local, lse = saved[:3]
        mean_z = saved[3] if plan.entropy_grad else None
        rows = saved[-1].long() if ctx.has_rows else None
        if not plan.entropy_grad:
            g_h = None
        if g_lp is None and g_h is None:
            return None, None, None, None
        g_lp = None if g_lp is None else g_lp.float()
        g_h = None if g_h is None else g_h.float()
        grad = _logits_grad(logits, rows, target_local, lse, mean_z, g_lp, g_h, plan)
        return grad, None, None, None


def vocab_parallel_logprob_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    tp_group: ProcessGroup | None = None,
    vocab_start: int = 0,
    vocab_size: int | None = None,
    inv_temperature: float = 1.0,
    entropy_grad: bool = False,
    chunk_rows: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``targets`` and entropy of the tempered softmax, from this rank's vocabulary shard.

    Args:
        logits: ``[T, V_local]`` fp32/bf16/fp16 logits of this TP rank's vocabulary shard (columns are global ids
            ``vocab_start .. vocab_start + V_local - 1``); may require grad. Only its last dim must be dense for
            the Triton backend (it is made contiguous otherwise).
        targets: ``[N]`` int64 *global* token ids whose log-prob is wanted (must be ``< vocab_size``; a target
            outside the real vocabulary gets a NaN log-prob).
        rows: ``[N]`` int64 distinct row indices into ``logits``; ``None`` means all rows (then ``N == T``).
        tp_group: the tensor-parallel group that holds the other shards; ``None``: the shard is the whole
            vocabulary and nothing is communicated.
        vocab_start: global id of ``logits[:, 0]`` (Megatron: ``tp_rank * V_local``).
        vocab_size: the real vocabulary size; global ids ``>= vocab_size`` (Megatron padding) count nowhere.
            ``None``: every column of every shard is real.
        inv_temperature: the distribution is ``softmax(logits * inv_temperature)``.
        entropy_grad: if True, gradient also flows through the returned entropy; otherwise the entropy does not
            require grad and backward spends no work on it.
        chunk_rows: rows per chunk for the eager/compiled backends; ``None``: ``default_chunk_rows``.
        backend: ``"auto"``, ``"eager"``, ``"compiled"`` or ``"triton"`` (see the module docstring).

    Returns:
        ``(log_prob, entropy)``, each ``[N]`` fp32 and identical on every rank of ``tp_group``. ``log_prob``
        carries gradient into ``logits`` whenever ``logits`` requires grad; ``entropy`` only if ``entropy_grad``.

    Communication: exactly one all-gather of ``[N, 4]`` fp32 over ``tp_group`` per call (every rank must call,
    also with ``N == 0``); none in backward. NaN logits give NaN results.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [T, V_local], got shape {tuple(logits.shape)}")
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"logits must be fp32, bf16 or fp16, got {logits.dtype}")
    if targets.dim() != 1 or targets.dtype != torch.int64:
        raise ValueError(f"targets must be a 1-D int64 tensor, got {targets.dtype} of shape {tuple(targets.shape)}")
    num_rows, num_cols = logits.shape
    if rows is None:
        if targets.numel() != num_rows:
            raise ValueError(f"rows=None needs one target per logits row: {targets.numel()} targets, {num_rows} rows")
    else:
        if rows.dim() != 1 or rows.dtype != torch.int64 or rows.numel() != targets.numel():
            raise ValueError(
                f"rows must be a 1-D int64 tensor as long as targets ({targets.numel()}), got {rows.dtype} of shape "
                f"{tuple(rows.shape)}"
            )
    if targets.device != logits.device or (rows is not None and rows.device != logits.device):
        raise ValueError("logits, targets and rows must be on the same device")
    if not (math.isfinite(inv_temperature) and inv_temperature > 0):
        raise ValueError(
            f"inv_temperature must be a positive finite number (1/--rollout-temperature), got {inv_temperature}"
        )
    if vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0, got {vocab_start}")
    if vocab_size is not None and vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1 (or None for the default rule), got {chunk_rows}")

    world = collectives.group_size(tp_group)
    if vocab_size is None:
        num_valid = num_cols
        global_vocab = num_cols * world
    else:
        num_valid = max(0, min(num_cols, vocab_size - vocab_start))
        global_vocab = vocab_size
    plan = _Plan(
        tp_group=tp_group,
        vocab_start=vocab_start,
        num_valid=num_valid,
        global_vocab=global_vocab,
        inv_temperature=float(inv_temperature),
        entropy_grad=bool(entropy_grad),
        chunk_rows=chunk_rows if chunk_rows is not None else default_chunk_rows(num_cols),
        backend=_resolve_backend(backend, logits.device),
    )
    return _VocabParallelLogProbEntropy.apply(logits, targets, rows, plan)
