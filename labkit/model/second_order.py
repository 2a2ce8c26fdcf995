"""The model's second-order array terms: the ones that transfer from one programmed state
of a chip to another (docs/physics.md, section 3.2). One definition, used by the array
model (:class:`labkit.model.ArrayModel`, calibration) and by the tiles of network layers
(:mod:`labkit.nn.layers`, training and evaluation). Scaled units (:mod:`labkit.model.units`).

* **Bit-line coupling** (``mix``, per pair of adjacent columns, a fraction): charge
  integrated on column ``j`` shows up on its neighbours through the coupling capacitance,
  ``q'_j = (1 - m_{j-1} - m_j) q_j + m_{j-1} q_{j-1} + m_j q_{j+1}``. It is applied to the
  cell currents and crosstalk charges (linear, so it commutes with the integration; its
  interaction with the drain droop is second order in both).
* **Effective pulse width** (``width_loss``, per row, in units of T): a word line with
  finite rise and fall times conducts like a full pulse ``d - delta`` long,
  ``x' = max(x - delta, 0)`` (0 stays 0), separate from the crosstalk charge of its falling edge.
  A pulse shorter than the rise (``x < delta``, as ``delta`` is nearly the rise time)
  turns round below the full level, and its falling edge couples ``x / delta`` of the
  crosstalk charge (:func:`edge_fraction`).
* **Source line** (``beta``, 1/nA, shared by all columns): the total current ``I_tot``
  of all active cells raises the common source; every cell's current falls by the
  factor ``s = exp(-beta I_tot s)``. Between falling edges the active rows are fixed, so
  row ``i`` integrates ``sum_{slots before its edge} s_k dt_k`` instead of ``d_i``.
* **TDC bow** (``bow``, LSB): the converter's code edges sit ``bow sin(pi k / N)`` LSB
  late, so a time ``t`` reads ``t - bow lsb sin(pi t / (N lsb))``; :func:`tdc_linearize`
  undoes it on measured times.

All four are zero in a model that has not been fitted with them: it is then exactly the
first-order model.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["coupling_gather", "mix_columns", "source_factor", "effective_inputs", "edge_fraction", "Widths", "tile_terms", "tdc_bow",
           "tdc_linearize"]


def coupling_gather(mix: np.ndarray, cols: np.ndarray, group: np.ndarray | None = None) -> tuple:
    """The bit-line coupling of the columns ``cols`` (K,) (physical indices) of a
    computation, in the gather form of :func:`mix_columns`: ``(keep, li, lw, ri, rw)``,
    weights (..., K) float32, indices (K,) long.

    ``mix``: (C-1,) for one array, or (..., K, C-1), the coupling per adjacent pair of
    the array each column is on (leading dims, e.g. one per row tile). ``group`` (K,):
    which array each column is on (columns of different arrays never couple; default
    one). A neighbour that is not among ``cols`` gets weight 0; its share of the
    coupling still leaves the column."""
    cols = np.asarray(cols)
    K = len(cols)
    mix = np.asarray(mix, dtype=float)
    if mix.ndim == 1:
        mix = np.broadcast_to(mix, (K, mix.shape[0]))
    group = np.zeros(K, int) if group is None else np.asarray(group)
    where = {(int(g), int(c)): k for k, (g, c) in enumerate(zip(group, cols))}
    li = np.array([where.get((int(g), int(c) - 1), k) for k, (g, c) in enumerate(zip(group, cols))])
    ri = np.array([where.get((int(g), int(c) + 1), k) for k, (g, c) in enumerate(zip(group, cols))])
    pad = np.zeros(mix.shape[:-1] + (1,))
    idx = np.broadcast_to(cols[:, None], mix.shape[:-1] + (1,))
    m_left = np.take_along_axis(np.concatenate([pad, mix], -1), idx, -1)[..., 0]  # to column - 1
    m_right = np.take_along_axis(np.concatenate([mix, pad], -1), idx, -1)[..., 0]  # to column + 1
    own = np.arange(K)
    f = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return (f(1.0 - m_left - m_right), torch.tensor(li), f(np.where(li != own, m_left, 0.0)), torch.tensor(ri),
            f(np.where(ri != own, m_right, 0.0)))


def mix_columns(a: torch.Tensor, keep, li, lw, ri, rw) -> torch.Tensor:
    """Bit-line coupling on the last dim of ``a`` (currents or charges per column), in
    gather form: ``a * keep + a[li] * lw + a[ri] * rw``.

    ``keep`` is ``1 - m_left - m_right`` of each column, ``lw`` / ``rw`` the coupling to the
    columns at indices ``li`` / ``ri`` (weight 0 where a neighbour is absent); the weights
    broadcast against ``a``; ``li``, ``ri`` are long tensors of its last-dim size (or
    broadcastable index tensors for per-tile maps)."""
    li = li.expand(a.shape) if li.dim() > 1 else li
    ri = ri.expand(a.shape) if ri.dim() > 1 else ri
    left = a.gather(-1, li) if li.dim() > 1 else a.index_select(-1, li)
    right = a.gather(-1, ri) if ri.dim() > 1 else a.index_select(-1, ri)
    return a * keep + left * lw + right * rw


def source_factor(y: torch.Tensor) -> torch.Tensor:
    """The root ``s`` of ``s = exp(-y s)`` (two Newton steps from ``1 / (1 + y)``;
    error < 1e-9 for ``0 <= y < 0.5``)."""
    y = y.clamp_min(-0.25)  # (a fit may pass through 0; the root exists for y > -1/e)
    s = 1.0 / (1.0 + y)
    for _ in range(2):
        e = torch.exp(-y * s)
        s = s - (s - e) / (1.0 + y * e)
    return s


def effective_inputs(x: torch.Tensor, width_loss: torch.Tensor | None, beta: torch.Tensor | None,
                     row_current: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Full-current-equivalent pulse widths (units of T) of inputs ``x`` in [0, 1].

    ``dim``: the rows' dim of ``x``. ``width_loss`` (units of T) broadcasts against ``x``;
    ``beta`` (1/nA) against ``x`` with the rows' dim of size 1; ``row_current`` (nA, the
    summed cell current of each row) against ``x``. None (or all zero) skips a term."""
    g = x if width_loss is None else torch.relu(x - width_loss) * (x > 0)
    if beta is None or row_current is None:
        return g
    d, order = torch.sort(g, dim=dim)  # slot k ends at the k-th falling edge
    i_sorted = torch.broadcast_to(row_current, g.shape).gather(dim, order)
    active = i_sorted.flip(dim).cumsum(dim).flip(dim)  # current of the rows still on in slot k
    dt = torch.diff(d, dim=dim, prepend=torch.zeros_like(d.narrow(dim, 0, 1)))
    g_sorted = (source_factor(beta * active) * dt).cumsum(dim)
    return torch.empty_like(g_sorted).scatter_(dim, order, g_sorted)


def edge_fraction(x: torch.Tensor, width_loss: torch.Tensor) -> torch.Tensor:
    """Part of its crosstalk charge the falling edge of a pulse ``x`` (units of T)
    couples: ``min(x / delta, 1)`` (1 where ``delta <= 0``); 0 for ``x = 0``."""
    return torch.where(width_loss > 0, (x / width_loss.clamp_min(1e-9)).clamp(0.0, 1.0), (x > 0).to(x.dtype))


class Widths(torch.autograd.Function):
    """:func:`effective_inputs` of batched tile inputs ``xt`` (rt, R, N), units of T,
    with the edge rule of :func:`tile_terms`; straight-through (the ideal pulse's
    gradient). In C where the library is built (no sort;
    :func:`labkit.model.tiles_native.widths`), else in torch."""

    @staticmethod
    def forward(ctx, xt, loss, beta, row_na):
        from labkit.model import tile_physics, tiles_native

        if tile_physics.NATIVE["on"] and tiles_native.widths_apply(xt):
            return tiles_native.widths(xt, loss, beta, row_na)
        xe = effective_inputs(xt, loss, beta, row_na, dim=1)
        return torch.where((xe <= 0) & (edge_fraction(xt, loss) >= 0.5), torch.full_like(xe, 1e-6), xe)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None


def tile_terms(xt: torch.Tensor, i0t: torch.Tensor, kx: torch.Tensor, coupling: tuple, width_loss: torch.Tensor,
               beta: torch.Tensor | None, row_na: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The terms on the batched tiles of :class:`labkit.model.tile_physics.TileBmm`:
    inputs ``xt`` (rt, R, N) in [0, 1], currents times T ``i0t`` and crosstalk ``kx``
    (rt, R, K). Widths (``width_loss`` (rt, R, 1) in T, ``beta`` (rt, 1, 1) 1/nA or None,
    the rows' currents ``row_na`` (rt, R, 1) nA) pass straight through (:class:`Widths`);
    a pulse shorter than the rise keeps its edge's crosstalk when it couples half or more
    (the tile physics has no partial edges); the coupling is exact."""
    return Widths.apply(xt, width_loss, beta, row_na), mix_columns(i0t, *coupling), mix_columns(kx, *coupling)


def tdc_bow(t: torch.Tensor, bow_lsb, lsb: float, levels: int) -> torch.Tensor:
    """Times (any unit, ``lsb`` in the same) as a TDC with an INL bow of ``bow_lsb``
    reads them (before the floor): ``t - bow lsb sin(pi t / (levels lsb))``."""
    return t - bow_lsb * lsb * torch.sin(t * (math.pi / (levels * lsb)))


def tdc_linearize(t_s: np.ndarray, bow_lsb: float, lsb_s: float, levels: int) -> np.ndarray:
    """Measured crossing times (s) with the bow taken out (first order: the bow's slope
    is ``pi bow / levels``, ~0.3 % at 1 LSB on 1024 codes)."""
    if not bow_lsb:
        return t_s
    return t_s + bow_lsb * lsb_s * np.sin(np.asarray(t_s) * (math.pi / (levels * lsb_s)))
