import pytest
import torch
import torch.distributed as dist

from slime_entropy import collectives as C
from tests.distributed import run_world


def _w(rank, ws):
    g = dist.new_group(list(range(ws)))
    t = torch.arange(rank + 1, dtype=torch.float32)
    v = C.all_gather_variable(t, g)
    x = torch.tensor([float(rank + 1)], requires_grad=True)
    y = C.differentiable_all_reduce_sum(x * (rank + 1), g)
    y.sum().backward()
    return v, x.grad


@pytest.mark.multiprocess
def test_world():
    out = run_world(_w, 3)
    for v, _ in out:
        assert v.tolist() == [0, 0, 1, 0, 1, 2]
    assert [g.item() for _, g in out] == [3.0 * 1, 3.0 * 2, 3.0 * 3]
