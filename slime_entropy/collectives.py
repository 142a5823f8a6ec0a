"""Every torch.distributed call of slime_entropy lives here.

Each function takes its process group as an explicit argument. ``group=None`` means *local scope*: the caller
is alone and nothing is communicated. (This differs from torch.distributed, where ``None`` means the default
world group; a loss that silently reduced over the whole world would mix tensor-, data- and pipeline-parallel
ranks.) Callers obtain real groups once, at the Megatron boundary (``slime_entropy.parallel``), and pass them
down.

Every function here is a collective: all ranks of ``group`` must call it, in the same order, with tensors of the
documented shapes, including ranks that have no tokens (they pass empty or zero tensors). Skipping a call on one
rank hangs the others.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

# torch >= 2.13 renamed all_gather_into_tensor (the old name warns); GPU users may run older torch.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

__all__ = [
    "group_rank",
    "group_size",
    "all_reduce_sum_",
    "all_reduce_max_",
    "broadcast_",
    "all_gather_stacked",
    "all_gather_variable",
    "differentiable_all_reduce_sum",
]


def group_size(group: ProcessGroup | None) -> int:
    """Number of ranks in ``group``; 1 for local scope (``None``)."""
    if group is None:
        return 1
    return dist.get_world_size(group)


def group_rank(group: ProcessGroup | None) -> int:
    """This process's rank inside ``group``; 0 for local scope (``None``)."""
    if group is None:
        return 0
    return dist.get_rank(group)


def all_reduce_sum_(tensor: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """In-place SUM over ``group``; returns ``tensor``. No gradient tracking."""
    if group_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_reduce_max_(tensor: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """In-place MAX over ``group``; returns ``tensor``. No gradient tracking."""
    if group_size(group) > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int, group: ProcessGroup | None) -> torch.Tensor:
    """In-place broadcast of ``tensor`` from rank ``src`` of ``group`` (as ``torch.distributed`` numbers it for
    that group); returns ``tensor``. No gradient tracking."""
    if group_size(group) > 1:
        dist.broadcast(tensor, src=src, group=group)
    return tensor


def all_gather_stacked(tensor: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Gather equally shaped tensors: returns ``[W, *tensor.shape]`` ordered by group rank. No gradient."""
    world = group_size(group)
    if world == 1:
        return tensor.unsqueeze(0)
    tensor = tensor.contiguous()
    out = tensor.new_empty((world * tensor.shape[0], *tensor.shape[1:]) if tensor.dim() else (world,))
    _all_gather_single(out, tensor if tensor.dim() else tensor.reshape(1), group=group)
    return out.view(world, *tensor.shape)


def all_gather_variable(tensor: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Concatenate 1-D tensors of different lengths from every rank, in rank order. Two collectives.

    The lengths are exchanged first, then every rank pads to the longest and one all-gather moves the data
    (gloo and NCCL need equal shapes). Empty inputs are fine.
    """
    if tensor.dim() != 1:
        raise ValueError(f"all_gather_variable expects a 1-D tensor, got shape {tuple(tensor.shape)}")
    world = group_size(group)
    if world == 1:
        return tensor
    lengths = all_gather_stacked(torch.tensor([tensor.numel()], dtype=torch.int64, device=tensor.device), group)
    lengths = lengths.view(-1).tolist()
    longest = max(lengths)
    padded = tensor.new_zeros(longest)
    padded[: tensor.numel()] = tensor
    gathered = all_gather_stacked(padded, group)
    return torch.cat([gathered[r, :n] for r, n in enumerate(lengths)])


class _AllReduceSum(torch.autograd.Function):
    """SUM whose backward is again a SUM of the incoming gradients over the group.

    This is the right adjoint when every rank's loss depends on the reduced value: the gradient w.r.t. a rank's
    input is the sum over ranks of d(loss_r)/d(reduced).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        return all_reduce_sum_(out, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        return all_reduce_sum_(grad, ctx.group), None


def differentiable_all_reduce_sum(tensor: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Out-of-place SUM over ``group`` that gradients flow through (backward: SUM of gradients)."""
    if group_size(group) == 1:
        return tensor
    return _AllReduceSum.apply(tensor, group)
