"""ArrayModel: the learned, differentiable model of one array or of many tiles (see the
package docstring for the equations)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from labkit.backend import Datasheet, Geometry, VmmSettings
from labkit.model import second_order as so
from labkit.model.kernels import (ChargeFn, Crossing, InputQuantize, Readout, StraightThrough, fine_step_charge,
                                  per_cell_charge)
from labkit.model.units import FC, FF, NA, US

__all__ = ["ArrayModel", "FORMAT"]

FORMAT = "labkit.ArrayModel/2"
FORMATS = ("labkit.ArrayModel/1", FORMAT)  # /1: no second-order terms (they read as zero)
SECOND_ORDER = ("mix", "width_loss_s", "source_per_a", "tdc_bow_lsb")


def _as_tensor(value, shape, name: str) -> np.ndarray:
    a = np.asarray(value, dtype=float)
    try:
        a = np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(f"{name} has shape {a.shape}; expected {shape} (or broadcastable)") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values; expected finite numbers")
    return np.array(a)


# ---------------------------------------------------------------- the model


class ArrayModel(nn.Module):
    """Differentiable hardware-aware model of one array, or of ``n_tiles`` arrays at once.

    Parameters (internal scaled units; shapes get a leading ``n_tiles`` dim when tiled):

    * ``log_i0`` (rows, cols): ln of the effective cell current in nA.
    * ``eta`` (cols,) or (rows, cols) with ``eta_per_cell``: drain coefficient, 1/V.
    * ``k_xt`` (rows, cols): crosstalk charge per falling edge, fC.
    * ``t0`` (cols,): crossing time at zero charge, us.
    * ``gain`` (cols,): readout gain relative to the nominal ``1/I_ref``.
    * second-order terms (:mod:`labkit.model.second_order`, used when ``second_order``):
      ``mix`` (cols - 1,) bit-line coupling fraction per adjacent pair, ``wloss`` (rows,)
      pulse width lost per row (us), ``beta`` (1,) source-line factor (1/nA), ``bow`` (1,)
      TDC INL bow (LSB).

    Constructor values are SI (``currents_a`` A, ``eta_per_v`` 1/V, ``crosstalk_c`` C per
    edge, ``offset_s`` s, ``gain_s_per_c`` s/C, ``mix`` fraction, ``width_loss_s`` s,
    ``source_per_a`` 1/A, ``tdc_bow_lsb`` LSB), broadcast to the shapes above; defaults:
    half of full scale at all-ones input, eta 0.5/V, no crosstalk, nominal readout.
    The operating point (T, C, I_ref, input bits, TDC) comes from ``datasheet`` and
    ``settings`` and is fixed; the model is fitted per operating point.

    Switches (attributes, changeable at any time): ``droop``, ``crosstalk``,
    ``edge_timing`` (crosstalk steps at their edge times through the adaptive slots;
    False adds them after the integration: no slots, cheaper, misses only the
    droop-crosstalk interaction, ~3e-4 rms / 1e-3 max of full scale on the emulated chip),
    ``quantize`` (inputs to ``2**input_bits`` steps of T, outputs to the TDC LSB, both
    straight-through), ``noise_std_s`` (Gaussian output noise in s, only in training
    mode), ``clip`` (``"ste"``: clip to [0, t_fs] with straight-through gradient,
    ``"hard"``: plain clamp, ``None``: no clip). ``eta_per_cell`` (constructor) selects
    a drain coefficient per cell, integrated by ``substeps`` RK4 steps per slot (slower).

    ``forward(x)``: ``x`` (..., rows) for one array or (..., n_tiles, rows) when tiled,
    in [0, 1] (clamped, zero gradient outside) -> crossing times in s, same leading
    shape with ``cols`` last. Runs on any device/dtype of its parameters (``.to()``).
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
        mix=0.0,
        width_loss_s=0.0,
        source_per_a=0.0,
        tdc_bow_lsb=0.0,
        second_order: bool | None = None,
        eta_per_cell: bool = False,
        droop: bool = True,
        crosstalk: bool = True,
        edge_timing: bool = True,
        quantize: bool = True,
        noise_std_s: float = 0.0,
        clip: str | None = "ste",
        substeps: int = 1,
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
        self.edge_timing = bool(edge_timing)
        self.noise_std_s, self.clip, self.substeps = float(noise_std_s), clip, substeps

        R, C = self.rows, self.cols
        ds, st = self.datasheet, self.settings
        # fixed operating point, in scaled units (python floats: device-agnostic)
        self.T_us = st.integration_time_s / US
        self.C_ff = ds.bitline_capacitance_f / FF
        self.iref_na = ds.reference_current_a / NA
        self.lsb_us = st.tdc_lsb_s / US
        self.tfs_us = st.tdc_full_scale_s / US
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
        self.log_i0 = nn.Parameter(torch.tensor(np.log(i0 / NA), **kw))
        self.eta = nn.Parameter(torch.tensor(_as_tensor(eta_per_v, eta_shape, "eta_per_v"), **kw))
        self.k_xt = nn.Parameter(torch.tensor(_as_tensor(crosstalk_c, lead + (R, C), "crosstalk_c") / FC, **kw))
        self.t0 = nn.Parameter(torch.tensor(_as_tensor(offset_s, lead + (C,), "offset_s") / US, **kw))
        self.gain = nn.Parameter(
            torch.tensor(_as_tensor(gain_s_per_c, lead + (C,), "gain_s_per_c") * ds.reference_current_a, **kw)
        )
        self.mix = nn.Parameter(torch.tensor(_as_tensor(mix, lead + (C - 1,), "mix"), **kw))
        self.wloss = nn.Parameter(torch.tensor(_as_tensor(width_loss_s, lead + (R,), "width_loss_s") / US, **kw))
        self.beta = nn.Parameter(torch.tensor(_as_tensor(source_per_a, lead + (1,), "source_per_a") * NA, **kw))
        self.bow = nn.Parameter(torch.tensor(_as_tensor(tdc_bow_lsb, lead + (1,), "tdc_bow_lsb"), **kw))
        if second_order is None:  # on when any term is given
            second_order = any(bool(np.any(np.asarray(v) != 0)) for v in (mix, width_loss_s, source_per_a, tdc_bow_lsb))
        self.second_order = bool(second_order)

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
        return self.log_i0.detach().exp().cpu().double().numpy() * NA

    def eta_per_v(self) -> np.ndarray:
        """Drain coefficients (1/V): per column, or per cell with ``eta_per_cell``."""
        return self.eta.detach().cpu().double().numpy().copy()

    def crosstalk_c(self) -> np.ndarray:
        """Crosstalk charge per falling edge (C), (rows, cols)."""
        return self.k_xt.detach().cpu().double().numpy() * FC

    def offset_s(self) -> np.ndarray:
        """Crossing time at zero removed charge (s), per column."""
        return self.t0.detach().cpu().double().numpy() * US

    def gain_s_per_c(self) -> np.ndarray:
        """Readout gain dt/dq (s/C) per column (nominally 1/I_ref)."""
        return self._gain_us_per_fc().detach().cpu().double().numpy() * (US / FC)

    def second_order_si(self) -> dict[str, np.ndarray]:
        """The second-order terms (SI): ``mix``, ``width_loss_s`` (s), ``source_per_a``
        (1/A), ``tdc_bow_lsb``; zeros when ``second_order`` is off."""
        on = 1.0 if self.second_order else 0.0
        val = lambda p, f: on * p.detach().cpu().double().numpy() * f  # noqa: E731
        return {"mix": val(self.mix, 1.0), "width_loss_s": val(self.wloss, US),
                "source_per_a": val(self.beta, 1.0 / NA), "tdc_bow_lsb": val(self.bow, 1.0)}

    def set_si(self, **values) -> None:
        """Overwrite parameters from SI arrays: ``currents_a``, ``eta_per_v``,
        ``crosstalk_c``, ``offset_s``, ``gain_s_per_c``, ``mix``, ``width_loss_s``,
        ``source_per_a``, ``tdc_bow_lsb`` (any subset)."""
        conv = {
            "currents_a": ("log_i0", lambda a: np.log(a / NA)),
            "eta_per_v": ("eta", lambda a: a),
            "crosstalk_c": ("k_xt", lambda a: a / FC),
            "offset_s": ("t0", lambda a: a / US),
            "gain_s_per_c": ("gain", lambda a: a * self.datasheet.reference_current_a),
            "mix": ("mix", lambda a: a),
            "width_loss_s": ("wloss", lambda a: a / US),
            "source_per_a": ("beta", lambda a: a * NA),
            "tdc_bow_lsb": ("bow", lambda a: a),
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
        return InputQuantize.apply(x, self.input_levels if self.quantize else 0), lead

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
    def _second_order(self, x, log_i0, kxt):
        """Effective pulse widths, and currents and crosstalk seen through the bit-line
        coupling (:mod:`labkit.model.second_order`)."""
        i0 = log_i0.exp()
        loss = self._tiled(self.wloss, 1).unsqueeze(1) / self.T_us
        edge = so.edge_fraction(x, loss)
        x = so.effective_inputs(x, loss, self._tiled(self.beta, 1).unsqueeze(1), i0.sum(-1).unsqueeze(1))
        mix = self._tiled(self.mix, 1).unsqueeze(1)  # (n, 1, C-1)
        zero = torch.zeros_like(mix[..., :1])
        lw, rw = torch.cat([zero, mix], -1), torch.cat([mix, zero], -1)
        C = self.cols
        li = torch.tensor([0] + list(range(C - 1)), device=x.device)
        ri = torch.tensor(list(range(1, C)) + [C - 1], device=x.device)
        log_i0 = so.mix_columns(i0, 1.0 - lw - rw, li, lw, ri, rw).clamp_min(1e-30).log()
        if kxt is not None:
            kxt = so.mix_columns(kxt, 1.0 - lw - rw, li, lw, ri, rw)
        return x, log_i0, kxt, edge

    def _charge_fc(self, x: torch.Tensor) -> torch.Tensor:
        """Removed charge q(T) in fC, (n, B, cols), for prepared inputs (n, B, rows)."""
        # rows with an edge (before the second-order widths); None: ChargeFn takes x > 0 itself
        pulsed = x > 0 if (self.second_order or (self.droop and self.eta_per_cell)) else None
        log_i0 = self._tiled(self.log_i0, 2)
        kxt = self._tiled(self.k_xt, 2) if self.crosstalk else None
        edge = None
        if self.second_order:
            x, log_i0, kxt, edge = self._second_order(x, log_i0, kxt)
        if self.droop and self.eta_per_cell:
            q = per_cell_charge(x, pulsed, log_i0.exp(), kxt, self._eta_prime(), self.T_us, self.substeps)
        else:
            eta = self._tiled(self.eta, 1).unsqueeze(1)
            q = ChargeFn.apply(x, pulsed, log_i0, kxt, eta, self.T_us, self.C_ff, self.droop, self.edge_timing)
        if edge is not None and kxt is not None:  # the edges of pulses shorter than the rise couple less
            q = q + torch.bmm(edge - pulsed.to(edge.dtype), kxt)
        return q

    # ------------------------------------------------------------ readout
    def _readout_us(self, q: torch.Tensor) -> torch.Tensor:
        """Crossing times (us) from charge (fC), with noise, TDC quantization and clip."""
        noise = self.noise_std_s / US if (self.training and self.noise_std_s > 0) else 0.0
        if self.second_order:  # the TDC bow, as the charge that moves the time by as much
            t0, g = self._tiled(self.t0, 1).unsqueeze(1), self._tiled(self._gain_us_per_fc(), 1).unsqueeze(1)
            t = t0 - g * q
            q = q + (t - so.tdc_bow(t, self._tiled(self.bow, 1).unsqueeze(1), self.lsb_us, 2**self.settings.tdc_bits)) / g
        return Readout.apply(q, self._tiled(self.t0, 1).unsqueeze(1), self._tiled(self.gain, 1).unsqueeze(1),
                             self.iref_na, self.lsb_us, self.tfs_us, self.quantize, self.clip, noise)

    def _crossing_cfg(self) -> tuple:
        """The switches and operating point of :class:`labkit.model.kernels.Crossing`."""
        noise = self.noise_std_s / US if (self.training and self.noise_std_s > 0) else 0.0
        return (self._n, self.rows, self.cols, self.input_levels, self.T_us, self.C_ff, self.iref_na, self.lsb_us,
                self.tfs_us, self.quantize, self.clip, noise, self.droop, self.crosstalk, self.edge_timing)

    # ------------------------------------------------------------ public outputs
    def forward(self, x) -> torch.Tensor:
        """Crossing times (s) for inputs ``x`` in [0, 1] (what the backend measures)."""
        return self.crossing_us(x) * US

    def crossing_us(self, x) -> torch.Tensor:
        """Crossing times in us (the well-scaled quantity for fitting)."""
        if not self.second_order and not (self.droop and self.eta_per_cell):  # one graph node
            # the parameters from their dict: nn.Module's attribute lookup costs ~1 us each,
            # a tenth of this call's Python time at a batch of 1024
            P = self._parameters
            params = (P["log_i0"], P["k_xt"], P["eta"], P["t0"], P["gain"])
            p = params[0]
            x = torch.as_tensor(x, dtype=p.dtype, device=p.device)
            tail = (self.rows,) if self.n_tiles is None else (self.n_tiles, self.rows)
            if x.dim() < len(tail) or tuple(x.shape[-len(tail):]) != tail:
                raise ValueError(f"x has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, tail))})")
            cfg = self._crossing_cfg()
            if self.n_tiles is None:  # (..., R) as it is: no views in the graph
                return Crossing.apply(x, *params, cfg)
            lead = tuple(x.shape[: x.dim() - len(tail)])
            x = x.reshape(-1, self._n, self.rows).transpose(0, 1).contiguous()
            return self._finish(Crossing.apply(x, *params, cfg), lead)
        xp, lead = self._prepare(x)
        return self._finish(self._readout_us(self._charge_fc(xp)), lead)

    def charge_fc(self, x) -> torch.Tensor:
        """Removed charge q(T) per column in fC (no readout, quantized inputs if enabled)."""
        xp, lead = self._prepare(x)
        return self._finish(self._charge_fc(xp), lead)

    def charge(self, x) -> torch.Tensor:
        """Removed charge q(T) per column in C."""
        return self.charge_fc(x) * FC

    def signed(self, x, i_scale_a: float | None = None) -> torch.Tensor:
        """Dual-branch outputs ``q_plus - q_minus`` per column pair (C), as read back
        through the readout (quantization, noise, clip as switched); with ``i_scale_a``
        normalized to ``(q+ - q-) / (I_scale T)``, i.e. ``w x`` for ``w = (I+ - I-)/I_scale``."""
        xp, lead = self._prepare(x)
        q = self._charge_fc(xp)
        noisy = self.training and self.noise_std_s > 0
        if self.quantize or self.clip is not None or noisy:  # read back through the TDC
            with torch.no_grad():
                t0 = self._tiled(self.t0, 1).unsqueeze(1)
                g = self._tiled(self._gain_us_per_fc(), 1).unsqueeze(1)
                t = self._readout_us(q)
                q_read = (t0 - t) / g
            q_st = StraightThrough.apply(q, lambda v: q_read)
            q = torch.where((t > 0) & (t < self.tfs_us), q_st, q_st.detach()) if self.clip == "hard" else q_st
        pairs = self.geometry.pairs
        if pairs == tuple((2 * k, 2 * k + 1) for k in range(len(pairs))):
            y = q[..., 0 : 2 * len(pairs) : 2] - q[..., 1 : 2 * len(pairs) : 2]
        else:
            y = q[..., [p for p, _ in pairs]] - q[..., [m for _, m in pairs]]
        if i_scale_a is None:
            return self._finish(y, lead) * FC
        return self._finish(y / ((i_scale_a / NA) * self.T_us), lead)

    def linear_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ideal linear model ``t = W x + b`` from these parameters: W (s per unit
        input), (cols, rows) or (n_tiles, cols, rows); b (s), (cols,) or (n_tiles, cols)."""
        g = self._gain_us_per_fc()
        w = -(g.unsqueeze(-1) * self.log_i0.exp().transpose(-1, -2)) * self.T_us * US
        return w, self.t0 * US

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

        Same equations and switches as ``forward`` (noise and the second-order terms
        excluded); returns crossing
        times (s), or the removed charge (C) with ``charge=True``.
        """
        xp, lead = self._prepare(x, dtype=torch.float64)
        i0 = self._tiled(self.log_i0, 2).double().exp()
        ep = self._eta_prime().double()
        ep = ep if self.eta_per_cell else ep.unsqueeze(-2).expand_as(i0)
        if not self.droop:
            ep = torch.zeros_like(ep)
        kxt = self._tiled(self.k_xt, 2).double() if self.crosstalk else torch.zeros_like(i0)
        q = fine_step_charge(xp, xp > 0, i0, kxt, ep, self.T_us, steps)
        if charge:
            return self._finish(q, lead) * FC
        t0 = self._tiled(self.t0, 1).double().unsqueeze(1)
        g = self._tiled(self._gain_us_per_fc(), 1).double().unsqueeze(1)
        t = t0 - g * q
        if self.quantize:
            t = torch.floor(t / self.lsb_us) * self.lsb_us
        if self.clip is not None:
            t = t.clamp(0.0, self.tfs_us)
        return self._finish(t, lead) * US

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
            **self.second_order_si(),
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
        if fmt not in FORMATS:
            raise ValueError(f"model format {fmt!r}; expected one of {FORMATS!r}")

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
            offset_s=d["offset_s"], gain_s_per_c=d["gain_s_per_c"],
            **{k: d[k] for k in SECOND_ORDER if k in d}, **switches,
        )

    def extra_repr(self) -> str:
        return (f"rows={self.rows}, cols={self.cols}, n_tiles={self.n_tiles}, droop={self.droop}, "
                f"crosstalk={self.crosstalk}, edge_timing={self.edge_timing}, quantize={self.quantize}, "
                f"eta_per_cell={self.eta_per_cell}, "
                f"noise_std_s={self.noise_std_s:g}, clip={self.clip!r}")
