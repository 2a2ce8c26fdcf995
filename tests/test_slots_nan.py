"""The slot kernel on NaN widths (a diverging fit): a valid order and NaN charge, no
wild index (the rank-by-counting sort once left idx entries unset, and the kernel read
through them: a general protection fault in the middle of a calibration)."""

import pytest
import torch

from labkit.model import slots_native


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_widths_keep_the_order_a_permutation(dtype):
    if slots_native.library() is None:
        pytest.skip("no C compiler: the torch path sorts with torch.sort")
    torch.manual_seed(0)
    n, B, R, C = 2, 9, 16, 16
    d = torch.rand(n, B, R, dtype=dtype)
    d[0, 1, 3] = d[0, 1, 7] = d[1, 4, 0] = float("nan")
    d[1, 5] = float("nan")  # every row of one sample
    i0 = torch.rand(n, R, C, dtype=dtype)
    rho = torch.rand(n, R, C, dtype=dtype) * 0.1 + 0.9
    for _ in range(20):  # fresh (uninitialized) index buffers each time
        z, idx = slots_native.slots_forward(d, i0, rho)
        assert torch.equal(idx.sort(-1).values, torch.arange(R).expand(n, B, R))
        bad = torch.isnan(d).any(-1)
        assert torch.isnan(z[bad]).all(-1).all()
        assert torch.isfinite(z[~bad]).all()
    # finite rows sort as before: NaN rows last
    order = d[0, 1].nan_to_num(float("inf")).sort(stable=True).indices
    assert torch.equal(idx[0, 1], order)
