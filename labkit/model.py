"""The hardware-aware model of a 16x16 time-domain array (PHYSICS.md section 4).

:class:`ArrayModel` predicts the comparator crossing times of one array (or of many
arrays, "tiles", at once) from normalized inputs ``x`` in [0, 1] with a few learned,
physically meaningful parameters, and is differentiable in PyTorch so networks can
train through it and calibration can fit it to measurements.

Equations (all tiles and samples in one batched computation):

* Row ``i`` is active while ``t < d_i = x_i T`` (all pulses start at ``t = 0``).
* Removed bit-line charge ``q_j = C (V_D0 - V_j)`` obeys
  ``dq_j/dt = sum_{i active} I0_ij exp(-eta'_j q_j)`` with ``eta'_j = eta_j / C``
  (drain droop, eta in 1/V).
* Each falling word-line edge of a pulsed row (``x_i > 0``) at ``t = d_i`` steps
  ``q_j += k_ij`` (crosstalk, charge per edge, sign free); later current sees the step.
* Readout: ``t_j = t0_j - g_j q_j(T)`` (offset and gain per column, ``g ~ 1/I_ref``),
  TDC quantization (floor to the LSB, straight-through gradient) and clip to
  ``[0, t_fs]``.

With a common eta per column ``w = (exp(eta' q) - 1)/eta'`` grows linearly in time
(``dw/dt = S``, the summed active current) and a crosstalk step ``K`` maps
``w -> w exp(eta' K) + (exp(eta' K) - 1)/eta'``. Over the adaptive time slots between
sorted falling edges this affine recurrence has the closed form

    q(T) = K_tot + ln(1 + eta' Z) / eta',   Z = sum_k S_k dt_k exp(-eta' K_before,k)

where the slot currents ``S`` (and the crosstalk charge ``K_before`` fallen before each
slot) are one batched matrix product of the thermometer-coded active masks with
``I0`` (and ``k``). No Python loop over samples, tiles or slots. Without crosstalk the
slot structure drops out: ``Z = I0^T d``. With per-cell eta (option) a few RK4 substeps
per slot integrate the same ODE (loop over the 16 slots, batched over everything else).

Internal units keep gradient-based fits well conditioned: currents nA, time us,
charge fC (= nA us), capacitance fF. Getters return SI values.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .backend import Datasheet, Geometry, VmmSettings

__all__ = ["ArrayModel", "FORMAT"]

FORMAT = "labkit.ArrayModel/1"

# scaled internal units
_NA, _US, _FC, _FF = 1e-9, 1e-6, 1e-15, 1e-15

_TAYLOR_ORDER = 4  # per-cell eta: exp(-delta q) expanded to this order around the column mean


# ---------------------------------------------------------------- small differentiable helpers


def _log1p_over(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``ln(1 + e z) / e``, smooth through ``e -> 0`` (limit ``z``); argument floored at 1e-6."""
    ez = e * z
    small = ez.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(ez), ez)
    big = torch.log1p(safe.clamp_min(-1.0 + 1e-6)) / safe * z
    series = z * (1.0 - ez * (0.5 - ez * (1.0 / 3.0 - ez * 0.25)))
    return torch.where(small, series, big)


def _expm1_over(q: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``(exp(e q) - 1) / e``, smooth through ``e -> 0`` (limit ``q``)."""
    eq = e * q
    small = eq.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(eq), eq)
    big = torch.expm1(safe) / safe * q
    series = q * (1.0 + eq * (0.5 + eq * (1.0 / 6.0 + eq / 24.0)))
    return torch.where(small, series, big)


def _ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y`` forward, identity gradient with respect to ``x`` (straight-through)."""
    return x + (y - x).detach()


class _StraightThrough(torch.autograd.Function):
    """``fn(x)`` forward, identity gradient (one graph node for quantize + clip)."""

    @staticmethod
    def forward(ctx, x, fn):
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        return g, None


def _series_or(y: torch.Tensor, direct, coeffs, cut: float) -> torch.Tensor:
    """``direct(y)`` where ``|y| >= cut``, else the power series ``sum c_k y^k``."""
    small = y.abs() < cut
    safe = torch.where(small, torch.full_like(y, cut), y)
    acc = torch.full_like(y, coeffs[-1])
    for c in coeffs[-2::-1]:
        acc = acc * y + c
    return torch.where(small, acc, direct(safe))


def _log1p_curv(y):  # (log1p(y) - y / (1 + y)) / y^2, series where the difference cancels
    return _series_or(y, lambda v: (torch.log1p(v) - v / (1.0 + v)) / (v * v),
                      tuple((-1) ** k * (k + 1) / (k + 2) for k in range(6)), 0.05)


class _LogCompress(torch.autograd.Function):
    """Droop compression ``q = ln(1 + e z) / e`` (limit ``z`` as e -> 0), with a
    numerically stable hand-written gradient. z (n, B, C), e (n, 1, C); the argument
    ``1 + e z`` is floored at 1e-6 (a fully discharged line)."""

    @staticmethod
    def forward(ctx, z, e):
        y = (e * z).clamp_min(-1.0 + 1e-6)
        ctx.save_for_backward(z, y)
        ratio = torch.log1p(y) / y  # log1p is accurate for small y; only y == 0 needs care
        return z * torch.where(y == 0, 1.0, ratio)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        z, y = ctx.saved_tensors
        g_z = g / (1.0 + y) if ctx.needs_input_grad[0] else None
        g_e = None
        if ctx.needs_input_grad[1]:
            g_e = -(g * z * z * _log1p_curv(y)).sum(-2, keepdim=True)
        return g_z, g_e


def _as_tensor(value, shape, name: str) -> np.ndarray:
    a = np.asarray(value, dtype=float)
    try:
        a = np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(f"{name} has shape {a.shape}; expected {shape} (or broadcastable)") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values; expected finite numbers")
    return np.array(a)


def _slot_masks(d: torch.Tensor, pulsed: torch.Tensor):
    """Thermometer masks of the adaptive slots for widths ``d`` (n, B, R).

    Slot k ends at the k-th smallest width ``s_k``. Returns float masks
    ``active`` (n, B*K, R) (row i on during slot k: ``d_i >= s_k``) and ``fallen``
    (n, B*K, R) (pulsed row i fell before slot k: ``d_i < s_k``), the slot lengths
    ``dt`` (n, B, K) and the sort indices (n, B, K). K = R; ties give empty slots.
    """
    n, B, R = d.shape
    with torch.no_grad():
        s, idx = torch.sort(d.detach(), dim=-1)
        a = torch.empty(n, B, R, R, dtype=d.dtype, device=d.device)
        torch.ge(d.detach().unsqueeze(-2), s.unsqueeze(-1), out=a)
        f = torch.empty_like(a)
        d_fall = torch.where(pulsed, d.detach(), torch.full_like(d, math.inf))
        torch.lt(d_fall.unsqueeze(-2), s.unsqueeze(-1), out=f)
    s = torch.gather(d, -1, idx)  # differentiable when d requires grad (per-cell path)
    dt = torch.diff(s, dim=-1, prepend=torch.zeros_like(s[..., :1]))
    return a.reshape(n, B * R, R), f.reshape(n, B * R, R), dt, idx


class _SlotIntegral(torch.autograd.Function):
    """``Z = sum_k dt_k S_k E_k`` over the adaptive slots, (n, B, C), with the slot
    currents ``S = active @ I0`` (one batched matrix product of the thermometer masks)
    and the droop factor of the crosstalk fallen before slot k,
    ``E_k = exp(-e K_before,k) = prod_{rows fallen before k} exp(-e k_row)`` (a cumulative
    product over the sorted edges). Hand-written backward: two matrix products and a
    few elementwise passes, no autograd graph over the (n, B, K, C) intermediates.

    Inputs: widths d (n, B, R), pulsed (n, B, R) bool, i0 and kxt (n, R, C), e (n, 1, C).
    """

    @staticmethod
    def forward(ctx, d, pulsed, i0, kxt, e):
        n, B, R = d.shape
        C = i0.shape[-1]
        s, idx = torch.sort(d, dim=-1)
        dt = torch.diff(s, dim=-1, prepend=torch.zeros_like(s[..., :1]))
        a = torch.empty(n, B * R, R, dtype=d.dtype, device=d.device)
        torch.ge(d.unsqueeze(-2), s.unsqueeze(-1), out=a.view(n, B, R, R))  # row i on in slot k
        w = torch.bmm(a, i0).view(n, B, R, C)  # slot currents S
        # factor entering slot k: exp(-e k) of the pulsed row that fell at the end of slot k-1
        rho = torch.cat([torch.ones_like(e), torch.exp(-e * kxt)], dim=1)  # (n, R+1, C); 0: none
        enter = torch.nn.functional.pad((idx[..., :-1] + 1) * (s[..., :-1] > 0), (1, 0))
        if n > 1:
            enter = enter + (torch.arange(n, device=d.device) * (R + 1)).view(n, 1, 1)
        ex = rho.view(n * (R + 1), C).index_select(0, enter.reshape(-1)).view(n, B, R, C)
        ex = torch.cumprod(ex, dim=2)  # E
        w.mul_(ex)  # W = S E
        z = (w * dt.unsqueeze(-1)).sum(-2)
        ctx.save_for_backward(a, pulsed, dt, idx, w, ex, z, kxt, e)
        return z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gz):
        a, pulsed, dt, idx, w, ex, z, kxt, e = ctx.saved_tensors
        n, B, R, C = w.shape
        g_d = g_i0 = g_kxt = g_e = None
        gz = gz.contiguous()
        if ctx.needs_input_grad[0]:
            g_dt = torch.bmm(w.view(n * B, R, C), gz.view(n * B, C, 1)).view(n, B, R)
            g_s = g_dt - torch.nn.functional.pad(g_dt[..., 1:], (0, 1))
            g_d = torch.zeros_like(g_s).scatter_(-1, idx, g_s)
        need_i0, need_k = ctx.needs_input_grad[2], ctx.needs_input_grad[3] or ctx.needs_input_grad[4]
        if need_i0 or need_k:
            gw = (dt.unsqueeze(-1) * gz.unsqueeze(-2)).view(n, B * R, C)  # dZ/dW
            rhs = torch.empty(n, B * R, 2 * C, dtype=w.dtype, device=w.device)
            torch.mul(gw, ex.view(n, B * R, C), out=rhs[..., :C])  # dZ/dS
            torch.mul(gw, w.view(n, B * R, C), out=rhs[..., C:])  # -dZ/d(e K_before)
            m = torch.bmm(a.transpose(1, 2), rhs)  # (n, R, 2C)
            g_i0 = m[..., :C]
        if need_k:
            # fallen = pulsed and not active (zero-width rows only meet empty slots, where gw = 0)
            h = torch.bmm(pulsed.to(w.dtype).transpose(1, 2), gz * z) - m[..., C:]
            g_kxt = -e * h if ctx.needs_input_grad[3] else None
            g_e = -(kxt * h).sum(-2, keepdim=True) if ctx.needs_input_grad[4] else None
        return g_d, None, g_i0 if need_i0 else None, g_kxt, g_e


# ---------------------------------------------------------------- the model


class ArrayModel(nn.Module):
    """Differentiable hardware-aware model of one array, or of ``n_tiles`` arrays at once.

    Parameters (internal scaled units; shapes get a leading ``n_tiles`` dim when tiled):

    * ``log_i0`` (rows, cols): ln of the effective cell current in nA.
    * ``eta`` (cols,) or (rows, cols) with ``eta_per_cell``: drain coefficient, 1/V.
    * ``k_xt`` (rows, cols): crosstalk charge per falling edge, fC.
    * ``t0`` (cols,): crossing time at zero charge, us.
    * ``gain`` (cols,): readout gain relative to the nominal ``1/I_ref``.

    Switches (attributes, changeable at any time): ``droop``, ``crosstalk``,
    ``quantize`` (inputs to ``2**input_bits`` steps of T, outputs to the TDC LSB, both
    straight-through), ``noise_std_s`` (Gaussian output noise in s, only in training
    mode), ``clip`` (``"ste"``: clip to [0, t_fs] with straight-through gradient,
    ``"hard"``: plain clamp, ``None``: no clip).

    ``forward(x)``: ``x`` (..., rows) for one array or (..., n_tiles, rows) when tiled,
    in [0, 1] (clamped) -> crossing times in s, same leading shape with ``cols`` last.
    """

    def __init__(
        self,
        datasheet: Datasheet | None = None,
        settings: VmmSettings | None = None,
        geometry: Geometry | None = None,
        *,
        n_tiles: int | None = None,
        currents_a=None,
        eta_per_v=0.5,
        crosstalk_c=0.0,
        offset_s=None,
        gain_s_per_c=None,
        eta_per_cell: bool = False,
        droop: bool = True,
        crosstalk: bool = True,
        quantize: bool = True,
        noise_std_s: float = 0.0,
        clip: str | None = "ste",
        substeps: int = 2,
        dtype: torch.dtype | None = None,
        device=None,
    ):
        super().__init__()
        self.datasheet = datasheet or Datasheet()
        self.settings = settings or VmmSettings()
        self.geometry = geometry or Geometry()
        if n_tiles is not None and (not isinstance(n_tiles, int) or n_tiles < 1):
            raise ValueError(f"n_tiles={n_tiles!r}; expected None or a positive integer")
        if clip not in ("ste", "hard", None):
            raise ValueError(f"clip={clip!r}; expected 'ste', 'hard' or None")
        if not isinstance(substeps, int) or substeps < 1:
            raise ValueError(f"substeps={substeps!r}; expected a positive integer")
        self.n_tiles = n_tiles
        self.eta_per_cell = bool(eta_per_cell)
        self.droop, self.crosstalk, self.quantize = bool(droop), bool(crosstalk), bool(quantize)
        self.noise_std_s, self.clip, self.substeps = float(noise_std_s), clip, substeps

        R, C = self.rows, self.cols
        ds, st = self.datasheet, self.settings
        # fixed operating point, in scaled units (python floats: device-agnostic)
        self.T_us = st.integration_time_s / _US
        self.C_ff = ds.bitline_capacitance_f / _FF
        self.iref_na = ds.reference_current_a / _NA
        self.lsb_us = st.tdc_lsb_s / _US
        self.tfs_us = st.tdc_full_scale_s / _US
        self.input_levels = 2**st.input_bits

        lead = () if n_tiles is None else (n_tiles,)
        q_fs = ds.full_scale_charge_c
        if currents_a is None:  # half of full scale with every input at 1
            currents_a = 0.5 * q_fs / (R * st.integration_time_s)
        if offset_s is None:  # charge-free crossing: the full-scale charge at I_ref
            offset_s = q_fs / ds.reference_current_a
        if gain_s_per_c is None:
            gain_s_per_c = 1.0 / ds.reference_current_a
        i0 = _as_tensor(currents_a, lead + (R, C), "currents_a")
        if np.any(i0 <= 0):
            raise ValueError("currents_a must be > 0 A (the model stores their logarithm)")
        eta_shape = lead + ((R, C) if self.eta_per_cell else (C,))
        kw = dict(dtype=dtype or torch.get_default_dtype(), device=device)
        self.log_i0 = nn.Parameter(torch.tensor(np.log(i0 / _NA), **kw))
        self.eta = nn.Parameter(torch.tensor(_as_tensor(eta_per_v, eta_shape, "eta_per_v"), **kw))
        self.k_xt = nn.Parameter(torch.tensor(_as_tensor(crosstalk_c, lead + (R, C), "crosstalk_c") / _FC, **kw))
        self.t0 = nn.Parameter(torch.tensor(_as_tensor(offset_s, lead + (C,), "offset_s") / _US, **kw))
        self.gain = nn.Parameter(
            torch.tensor(_as_tensor(gain_s_per_c, lead + (C,), "gain_s_per_c") * ds.reference_current_a, **kw)
        )

    # ------------------------------------------------------------ shapes and getters
    @property
    def rows(self) -> int:
        return self.geometry.rows

    @property
    def cols(self) -> int:
        return self.geometry.cols

    @property
    def _n(self) -> int:
        return self.n_tiles or 1

    def _gain_us_per_fc(self) -> torch.Tensor:
        return self.gain / self.iref_na

    def currents_a(self) -> np.ndarray:
        """Effective cell currents I0 (A), (rows, cols) or (n_tiles, rows, cols)."""
        return self.log_i0.detach().exp().cpu().double().numpy() * _NA

    def eta_per_v(self) -> np.ndarray:
        """Drain coefficients (1/V): per column, or per cell with ``eta_per_cell``."""
        return self.eta.detach().cpu().double().numpy().copy()

    def crosstalk_c(self) -> np.ndarray:
        """Crosstalk charge per falling edge (C), (rows, cols)."""
        return self.k_xt.detach().cpu().double().numpy() * _FC

    def offset_s(self) -> np.ndarray:
        """Crossing time at zero removed charge (s), per column."""
        return self.t0.detach().cpu().double().numpy() * _US

    def gain_s_per_c(self) -> np.ndarray:
        """Readout gain dt/dq (s/C) per column (nominally 1/I_ref)."""
        return self._gain_us_per_fc().detach().cpu().double().numpy() * (_US / _FC)

    def set_si(self, **values) -> None:
        """Overwrite parameters from SI arrays: ``currents_a``, ``eta_per_v``,
        ``crosstalk_c``, ``offset_s``, ``gain_s_per_c`` (any subset)."""
        conv = {
            "currents_a": ("log_i0", lambda a: np.log(a / _NA)),
            "eta_per_v": ("eta", lambda a: a),
            "crosstalk_c": ("k_xt", lambda a: a / _FC),
            "offset_s": ("t0", lambda a: a / _US),
            "gain_s_per_c": ("gain", lambda a: a * self.datasheet.reference_current_a),
        }
        for key, value in values.items():
            if key not in conv:
                raise ValueError(f"unknown parameter {key!r}; expected one of {sorted(conv)}")
            name, f = conv[key]
            p = getattr(self, name)
            a = _as_tensor(value, tuple(p.shape), key)
            if key == "currents_a" and np.any(a <= 0):
                raise ValueError("currents_a must be > 0 A")
            with torch.no_grad():
                p.copy_(torch.as_tensor(f(a), dtype=p.dtype, device=p.device))

    # ------------------------------------------------------------ input handling
    def _prepare(self, x, dtype=None) -> tuple[torch.Tensor, tuple[int, ...]]:
        """``x`` -> (n, B, rows) in [0, 1], quantized if enabled, and the leading shape."""
        p = self.log_i0
        x = torch.as_tensor(x, dtype=dtype or p.dtype, device=p.device)
        tail = (self.rows,) if self.n_tiles is None else (self.n_tiles, self.rows)
        if x.dim() < len(tail) or tuple(x.shape[-len(tail):]) != tail:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, tail))})")
        lead = tuple(x.shape[: x.dim() - len(tail)])
        x = x.reshape(-1, self._n, self.rows).transpose(0, 1).contiguous()  # (n, B, R)
        x = x.clamp(0.0, 1.0)
        if self.quantize:
            levels = self.input_levels
            x = _StraightThrough.apply(x, lambda v: torch.round(v * levels) / levels)
        return x, lead

    def _finish(self, y: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
        """(n, B, k) -> (*lead, [n,] k)."""
        y = y.transpose(0, 1)
        tail = (y.shape[-1],) if self.n_tiles is None else (self._n, y.shape[-1])
        return y.reshape(lead + tail)

    def _tiled(self, p: torch.Tensor, per: int) -> torch.Tensor:
        """Parameter as (n, *per-array shape) with ``per`` trailing dims."""
        return p.reshape((self._n,) + tuple(p.shape[p.dim() - per:]))

    def _eta_prime(self) -> torch.Tensor:
        """eta / C in 1/fC, (n, cols) or (n, rows, cols)."""
        return self._tiled(self.eta, 2 if self.eta_per_cell else 1) / self.C_ff

    # ------------------------------------------------------------ integration
    def _charge_fc(self, x: torch.Tensor) -> torch.Tensor:
        """Removed charge q(T) in fC, (n, B, cols), for prepared inputs (n, B, rows)."""
        n, B, R = x.shape
        Ccols = self.cols
        i0 = self._tiled(self.log_i0, 2).exp()
        d = x * self.T_us
        per_cell = self.droop and self.eta_per_cell
        kxt = k_tot = None
        if self.crosstalk:
            kxt = self._tiled(self.k_xt, 2)
            k_tot = torch.bmm((x > 0).to(x.dtype), kxt)  # (n, B, C)
        if not self.droop:
            q = torch.bmm(d, i0)
            return q + k_tot if self.crosstalk else q
        pulsed = x > 0
        if not per_cell:
            e = self._eta_prime().unsqueeze(1)  # (n, 1, C)
            if not self.crosstalk:  # droop alone: a per-column compression of I0^T d
                return _LogCompress.apply(torch.bmm(d, i0), e)
            z = _SlotIntegral.apply(d, pulsed, i0, kxt, e)  # closed form over the slots
            return k_tot + _LogCompress.apply(z, e)
        a, fallen, dt, _ = _slot_masks(d, pulsed)
        k_before = torch.bmm(fallen, kxt).reshape(n, B, R, Ccols) if self.crosstalk else None
        return self._per_cell_slots(a, i0, dt, k_before, k_tot if self.crosstalk else None, (n, B, R, Ccols))

    def _per_cell_slots(self, a, i0, dt, k_before, k_tot, dims):
        """Per-cell eta: RK4 per slot in ``w = expm1(e q)/e`` (e = column mean of eta')."""
        n, B, R, C = dims
        ep = self._eta_prime()  # (n, R, C)
        e = ep.mean(-2, keepdim=True)  # (n, 1, C)
        delta = ep - e
        # slot moments S_m = sum_i a_i I0_ij delta_ij^m / m!  (one matmul for all m)
        mom = torch.cat([i0 * delta**m / math.factorial(m) for m in range(_TAYLOR_ORDER + 1)], dim=-1)
        S = torch.bmm(a, mom).reshape(n, B, R, _TAYLOR_ORDER + 1, C)
        if k_before is not None:
            k_next = torch.cat([k_before[:, :, 1:], k_tot.unsqueeze(2)], dim=2)
            steps = k_next - k_before  # (n, B, K, C) crosstalk at the end of slot k
        q = torch.zeros(n, B, C, dtype=dt.dtype, device=dt.device)
        w = torch.zeros_like(q)

        def rate(w, Sk):  # dw/dt = sum_i a_i I0_ij exp(-delta_ij q)
            q = _log1p_over(w, e)
            acc = Sk[..., _TAYLOR_ORDER, :]
            for m in range(_TAYLOR_ORDER - 1, -1, -1):
                acc = Sk[..., m, :] - q * acc
            return acc

        for k in range(R):
            Sk = S[:, :, k]
            h = (dt[:, :, k] / self.substeps).unsqueeze(-1)
            for _ in range(self.substeps):
                k1 = rate(w, Sk)
                k2 = rate(w + 0.5 * h * k1, Sk)
                k3 = rate(w + 0.5 * h * k2, Sk)
                k4 = rate(w + h * k3, Sk)
                w = w + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            if k_before is not None:
                w = _expm1_over(_log1p_over(w, e) + steps[:, :, k], e)
        return _log1p_over(w, e)

    # ------------------------------------------------------------ readout
    def _readout_us(self, q: torch.Tensor) -> torch.Tensor:
        """Crossing times (us) from charge (fC), with noise, TDC quantization and clip."""
        t = self._tiled(self.t0, 1).unsqueeze(1) - self._tiled(self._gain_us_per_fc(), 1).unsqueeze(1) * q
        if self.training and self.noise_std_s > 0:
            t = t + torch.randn_like(t) * (self.noise_std_s / _US)
        lsb, tfs, quantize, clip = self.lsb_us, self.tfs_us, self.quantize, self.clip

        def tdc(v):
            v = torch.floor(v / lsb) * lsb if quantize else v
            return v.clamp(0.0, tfs) if clip == "ste" else v

        if quantize or clip == "ste":
            t = _StraightThrough.apply(t, tdc)
        if clip == "hard":
            t = t.clamp(0.0, tfs)
        return t

    # ------------------------------------------------------------ public outputs
    def forward(self, x) -> torch.Tensor:
        """Crossing times (s) for inputs ``x`` in [0, 1] (what the backend measures)."""
        return self.crossing_us(x) * _US

    def crossing_us(self, x) -> torch.Tensor:
        """Crossing times in us (the well-scaled quantity for fitting)."""
        xp, lead = self._prepare(x)
        return self._finish(self._readout_us(self._charge_fc(xp)), lead)

    def charge_fc(self, x) -> torch.Tensor:
        """Removed charge q(T) per column in fC (no readout, quantized inputs if enabled)."""
        xp, lead = self._prepare(x)
        return self._finish(self._charge_fc(xp), lead)

    def charge(self, x) -> torch.Tensor:
        """Removed charge q(T) per column in C."""
        return self.charge_fc(x) * _FC

    def signed(self, x, i_scale_a: float | None = None) -> torch.Tensor:
        """Dual-branch outputs ``q_plus - q_minus`` per column pair (C), as read back
        through the readout (quantization, noise, clip as switched); with ``i_scale_a``
        normalized to ``(q+ - q-) / (I_scale T)``, i.e. ``w x`` for ``w = (I+ - I-)/I_scale``."""
        xp, lead = self._prepare(x)
        q = self._charge_fc(xp)
        t = self._readout_us(q)
        g = self._tiled(self._gain_us_per_fc(), 1).unsqueeze(1)
        q_read = (self._tiled(self.t0, 1).unsqueeze(1) - t) / g
        plus = [p for p, _ in self.geometry.pairs]
        minus = [m for _, m in self.geometry.pairs]
        y = q_read[..., plus] - q_read[..., minus]
        if i_scale_a is None:
            return self._finish(y, lead) * _FC
        return self._finish(y / ((i_scale_a / _NA) * self.T_us), lead)

    def linear_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ideal linear model ``t = W x + b`` from these parameters: W (s per unit
        input), (cols, rows) or (n_tiles, cols, rows); b (s), (cols,) or (n_tiles, cols)."""
        g = self._gain_us_per_fc()
        w = -(g.unsqueeze(-1) * self.log_i0.exp().transpose(-1, -2)) * self.T_us * _US
        return w, self.t0 * _US

    def ideal(self, x) -> torch.Tensor:
        """Ideal linear prediction ``W x + b`` (s): no droop, crosstalk, quantization or clip."""
        p = self.log_i0
        x = torch.as_tensor(x, dtype=p.dtype, device=p.device)
        w, b = self.linear_weights()
        return torch.einsum("...r,...cr->...c", x, w) + b

    # ------------------------------------------------------------ reference integrator
    @torch.no_grad()
    def fine_step_reference(self, x, steps: int = 1000, charge: bool = False) -> torch.Tensor:
        """Slow reference: explicit RK4 on a uniform grid of ``steps`` intervals over T
        with every falling edge inserted, exact per-cell exponentials, float64.

        Same equations and switches as ``forward`` (noise excluded); returns crossing
        times (s), or the removed charge (C) with ``charge=True``.
        """
        xp, lead = self._prepare(x, dtype=torch.float64)
        n, B, R = xp.shape
        dev = xp.device
        i0 = self._tiled(self.log_i0, 2).double().exp()  # (n, R, C)
        ep = self._eta_prime().double()
        ep = ep if self.eta_per_cell else ep.unsqueeze(-2).expand_as(i0)
        if not self.droop:
            ep = torch.zeros_like(ep)
        kxt = self._tiled(self.k_xt, 2).double() if self.crosstalk else torch.zeros_like(i0)
        d = xp * self.T_us
        grid = torch.linspace(0.0, self.T_us, steps + 1, dtype=torch.float64, device=dev)
        times, _ = torch.sort(torch.cat([grid.expand(n, B, -1), d], dim=-1), dim=-1)  # (n, B, N)
        pulsed = xp > 0
        q = torch.zeros(n, B, self.cols, dtype=torch.float64, device=dev)

        def rate(q, on):  # on (n, B, R)
            cur = i0.unsqueeze(1) * torch.exp(-ep.unsqueeze(1) * q.unsqueeze(-2))  # (n, B, R, C)
            return (on.unsqueeze(-1) * cur).sum(-2)

        for j in range(times.shape[-1] - 1):
            t_a, t_b = times[..., j], times[..., j + 1]
            h = (t_b - t_a).unsqueeze(-1)
            on = (d > (0.5 * (t_a + t_b)).unsqueeze(-1)).double()
            k1 = rate(q, on)
            k2 = rate(q + 0.5 * h * k1, on)
            k3 = rate(q + 0.5 * h * k2, on)
            k4 = rate(q + h * k3, on)
            q = q + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
            falls = pulsed & (d > t_a.unsqueeze(-1)) & (d <= t_b.unsqueeze(-1))
            q = q + torch.bmm(falls.double(), kxt)
        if charge:
            return self._finish(q, lead) * _FC
        t0 = self._tiled(self.t0, 1).double().unsqueeze(1)
        g = self._tiled(self._gain_us_per_fc(), 1).double().unsqueeze(1)
        t = t0 - g * q
        if self.quantize:
            t = torch.floor(t / self.lsb_us) * self.lsb_us
        if self.clip is not None:
            t = t.clamp(0.0, self.tfs_us)
        return self._finish(t, lead) * _US

    # ------------------------------------------------------------ plain-array persistence
    def to_dict(self) -> dict[str, np.ndarray]:
        """Parameters (SI) and operating point as plain numpy arrays (``np.savez``-able
        without pickle)."""
        ds, st = self.datasheet, self.settings
        return {
            "format": np.array(FORMAT),
            "currents_a": self.currents_a(),
            "eta_per_v": self.eta_per_v(),
            "crosstalk_c": self.crosstalk_c(),
            "offset_s": self.offset_s(),
            "gain_s_per_c": self.gain_s_per_c(),
            "n_tiles": np.array(0 if self.n_tiles is None else self.n_tiles),
            "rows": np.array(self.rows),
            "cols": np.array(self.cols),
            "pairs": np.array(self.geometry.pairs, dtype=np.int64).reshape(-1, 2),
            "eta_per_cell": np.array(self.eta_per_cell),
            "precharge_v": np.array(ds.precharge_v),
            "threshold_v": np.array(ds.threshold_v),
            "bitline_capacitance_f": np.array(ds.bitline_capacitance_f),
            "reference_current_a": np.array(ds.reference_current_a),
            "integration_time_s": np.array(st.integration_time_s),
            "read_voltage_v": np.array(st.read_voltage_v),
            "input_bits": np.array(st.input_bits),
            "tdc_bits": np.array(st.tdc_bits),
            "tdc_lsb_s": np.array(st.tdc_lsb_s),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, np.ndarray], **switches) -> "ArrayModel":
        """Rebuild from :meth:`to_dict` output (e.g. an ``np.load`` result); ``switches``
        (droop, crosstalk, quantize, noise_std_s, clip, dtype, device, ...) pass through."""
        fmt = str(np.asarray(d.get("format", "")))
        if fmt != FORMAT:
            raise ValueError(f"model format {fmt!r}; expected {FORMAT!r}")

        def num(key, kind=float):
            return kind(np.asarray(d[key]).item())

        defaults = Datasheet()
        sheet = Datasheet(
            precharge_v=num("precharge_v"), threshold_v=num("threshold_v"),
            bitline_capacitance_f=num("bitline_capacitance_f"),
            reference_current_a=num("reference_current_a"),
            cell_current_range_a=defaults.cell_current_range_a, erased_current_a=defaults.erased_current_a,
        )
        settings = VmmSettings(
            integration_time_s=num("integration_time_s"), read_voltage_v=num("read_voltage_v"),
            input_bits=num("input_bits", int), tdc_bits=num("tdc_bits", int), tdc_lsb_s=num("tdc_lsb_s"),
        )
        pairs = tuple(tuple(int(v) for v in p) for p in np.asarray(d["pairs"]).reshape(-1, 2))
        geometry = Geometry(rows=num("rows", int), cols=num("cols", int), pairs=pairs)
        n = num("n_tiles", int)
        return cls(
            sheet, settings, geometry, n_tiles=n or None, eta_per_cell=num("eta_per_cell", bool),
            currents_a=d["currents_a"], eta_per_v=d["eta_per_v"], crosstalk_c=d["crosstalk_c"],
            offset_s=d["offset_s"], gain_s_per_c=d["gain_s_per_c"], **switches,
        )

    def extra_repr(self) -> str:
        return (f"rows={self.rows}, cols={self.cols}, n_tiles={self.n_tiles}, droop={self.droop}, "
                f"crosstalk={self.crosstalk}, quantize={self.quantize}, eta_per_cell={self.eta_per_cell}, "
                f"noise_std_s={self.noise_std_s:g}, clip={self.clip!r}")
