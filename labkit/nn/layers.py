"""Analog neural-network layers on 16-row x 8-signed-output tiles of time-domain arrays.

A weight matrix ``W`` (outputs x inputs) is cut into tiles of 16 rows (inputs) by 8
signed outputs; output ``o`` of a tile is the dual-branch column pair
``Geometry.pairs[o % 8] = (plus, minus)`` and ``w = (I+ - I-) / I_scale`` with the
currents of :class:`labkit.program.mapping.WeightWindow` (offset scheme). Per layer:

* **Inputs -> pulse widths.** Activations ``a`` are divided by the layer's
  ``input_scale`` (a buffer, set from data by :func:`labkit.nn.conversion.input_scales`),
  clipped to [0, 1] (a pulse cannot be longer than T) and quantized to the input clock
  (``2**input_bits`` steps of T, straight-through gradient): ``d_i = x_i T``. Signed
  inputs (a first layer fed standardized data, or a layer not preceded by a ReLU) are
  split into their positive and negative parts, run as two VMMs on the same tiles
  (time-multiplexed) and subtracted digitally; ``WeightMapping(signed_inputs="error")``
  refuses them instead.
* **Weights -> currents.** Each output row of ``W`` is divided by its own scale
  ``s_o = max_i |W_oi|`` (a digital gain, so every output uses the full current window).
* **Outputs.** The layer's tiles (:mod:`labkit.nn.tiles`: the hardware-aware model of
  :mod:`labkit.model.tile_physics` by default, or chips) give each tile's signed outputs
  ``q+ - q-`` in units of ``I_scale T``, i.e. ``sum_i w_i x_i`` of that tile. Partial
  sums of the row tiles of a layer are added digitally, scaled back by
  ``s_o * input_scale``, the digital bias is added, and (``relu=True``, fused by
  :func:`labkit.nn.conversion.convert` when a ReLU follows) the ReLU is taken on the
  resulting time difference: the next layer's pulse is the interval between the minus
  and plus crossings when the plus column crosses first, none otherwise.

Units inside: nA, us, fC (:mod:`labkit.model.units`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.model import second_order as so
from labkit.model import tile_physics, tiles_native
from labkit.model.kernels import InputQuantize
from labkit.model.units import FC, FF, NA, US
from labkit.nn.config import AnalogConfig
from labkit.nn.tileparams import TileParams, tile_sources
from labkit.nn.tiles import LayerTiles, ModelTile, ModelTiles

__all__ = ["AnalogLayer", "AnalogLinear", "AnalogConv2d"]


class _UnfoldT(torch.autograd.Function):
    """Transposed patches (rows, B*Ho*Wo) of ``x`` (B, C, H, W), channel-major like
    ``F.unfold``, zero-padded around ``x`` by ``padding`` and to ``rows`` rows. In C where
    the kernels apply (runs of input rows copied), else one strided torch copy; backward
    by the adjoint (one shifted add per kernel position in torch)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, out_hw, rows):
        ctx.args = (kernel, stride, padding, dilation, tuple(x.shape), out_hw, rows)
        if tile_physics.NATIVE["on"] and tiles_native.applies(x):
            return tiles_native.patches(x, kernel + stride + padding + dilation + out_hw, rows)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = kernel, stride, padding, dilation, out_hw
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        B, C, H, W = x.shape
        s = x.stride()
        v = x.as_strided((C, kh, kw, B, Ho, Wo), (s[1], s[2] * dh, s[3] * dw, s[0], s[2] * sh, s[3] * sw))
        K = C * kh * kw
        out = torch.empty(rows, B * Ho * Wo, dtype=x.dtype, device=x.device)
        out[:K].view(C, kh, kw, B, Ho, Wo).copy_(v)
        if rows > K:
            out[K:] = 0.0
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), (B, C, H, W), (Ho, Wo), rows = ctx.args
        if tile_physics.NATIVE["on"] and tiles_native.applies(g):
            return (tiles_native.patches_backward(g, (B, C, H, W), (kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo), rows),
                    None, None, None, None, None, None)
        K = C * kh * kw
        gp = g[:K].reshape(C, kh, kw, B, Ho, Wo)
        gx = torch.zeros(B, C, H + 2 * ph, W + 2 * pw, dtype=g.dtype, device=g.device)
        gxc = gx.transpose(0, 1)  # (C, B, H, W) view
        for i in range(kh):
            for j in range(kw):
                gxc[:, :, i * dh: i * dh + sh * (Ho - 1) + 1: sh, j * dw: j * dw + sw * (Wo - 1) + 1: sw] += gp[:, i, j]
        return gx[:, :, ph: ph + H, pw: pw + W], None, None, None, None, None, None


# ----------------------------------------------------------------------------- layers

class AnalogLayer(nn.Module):
    """Common part of :class:`AnalogLinear` and :class:`AnalogConv2d`: ``K`` inputs
    (rows) by ``n`` outputs on ``rt x ct`` tiles; tile ``(r, c)`` has index ``r*ct + c``.

    Buffers (saved in state dicts): ``input_scale`` (activation that maps to a full
    pulse, T); ``tile_eta`` (tiles, cols) 1/V; ``tile_kxt`` (tiles, rows, cols) fC;
    ``tile_t0`` (tiles, cols) us; ``tile_gain`` (tiles, cols) us/fC.
    ``tiles``: the :class:`~labkit.nn.tiles.LayerTiles` its outputs come from
    (:class:`~labkit.nn.tiles.ModelTiles` unless the network was built with others by
    :func:`labkit.nn.conversion.with_tiles`).
    """

    def _setup(self, in_rows: int, out: int, relu: bool, config: AnalogConfig, tiles) -> None:
        self.config = config
        self.in_rows, self.out_features_, self.relu = int(in_rows), int(out), bool(relu)
        op = config.operating
        R, P = op.rows, op.outputs_per_tile
        self.row_tiles = -(-self.in_rows // R)
        self.col_tiles = -(-self.out_features_ // P)
        n = self.row_tiles * self.col_tiles
        params = tile_sources(tiles, n, config.operating)
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("tile_eta", torch.tensor(np.stack([p.eta_per_v for p in params]), dtype=torch.float32))
        self.register_buffer("tile_kxt", torch.tensor(np.stack([p.crosstalk_c for p in params]) / FC,
                                                      dtype=torch.float32))
        self.register_buffer("tile_t0", torch.tensor(np.stack([p.offset_s for p in params]) / US, dtype=torch.float32))
        self.register_buffer("tile_gain", torch.tensor(np.stack([p.gain_s_per_c for p in params]) * (FC / US),
                                                       dtype=torch.float32))
        self.register_buffer("tile_so", torch.tensor(np.stack([self._so_row(p) for p in params]), dtype=torch.float32))
        self.tile_chips = [p.chip_id for p in params]
        self.tiles: LayerTiles = ModelTiles()
        o = np.arange(self.out_features_)
        tidx = np.arange(self.row_tiles)[:, None] * self.col_tiles + (o // P)[None, :]
        pairs = np.asarray(op.pairs)
        self.register_buffer("_tidx", torch.tensor(np.concatenate([tidx, tidx], 1)), persistent=False)
        self.register_buffer("_cols", torch.tensor(np.concatenate([pairs[o % P, 0], pairs[o % P, 1]])),
                             persistent=False)
        w = config.window()
        self._i_min_na, self._i_scale_na = w.i_min_a / NA, w.i_scale_a / NA
        self._T_us = op.integration_time_s / US
        self._lsb_us = op.tdc_lsb_s / US
        self._cmax = float(2**op.tdc_bits - 1)
        self._levels = int(2**op.input_bits)
        self._c_ff = op.bitline_capacitance_f / FF

    # -------------------------------------------------------------- tiles
    @property
    def n_tiles(self) -> int:
        return self.row_tiles * self.col_tiles

    def _so_row(self, p: TileParams) -> np.ndarray:
        """A tile's second-order terms as one row of ``tile_so``: mix (cols - 1), width
        loss per row (us), source-line factor (1/nA), TDC bow (LSB)."""
        op = self.config.operating
        mix, loss, beta, bow = p.second_order(op.rows, op.cols)
        return np.concatenate([mix, loss / US, [beta * NA, bow]])

    def _so_split(self, index: int) -> tuple:
        op = self.config.operating
        v = self.tile_so[index].double().numpy()
        C, R = op.cols, op.rows
        return v[:C - 1].copy(), v[C - 1:C - 1 + R] * US, float(v[-2]) / NA, float(v[-1])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "tile_so" not in state_dict:  # saved before the second-order terms: none
            state_dict[prefix + "tile_so"] = torch.zeros_like(self.tile_so)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def tile_params(self, index: int) -> TileParams:
        """Chip parameters (SI) of tile ``index``."""
        return TileParams(self.tile_eta[index].double().numpy().copy(),
                          self.tile_kxt[index].double().numpy() * FC,
                          self.tile_t0[index].double().numpy() * US,
                          self.tile_gain[index].double().numpy() * (US / FC),
                          self.tile_chips[index] if index < len(self.tile_chips) else "",
                          *self._so_split(index))

    def set_tiles(self, tiles) -> None:
        """Replace every tile's chip parameters (same sources as :func:`convert`)."""
        params = tile_sources(tiles, self.n_tiles, self.config.operating)
        with torch.no_grad():
            self.tile_eta.copy_(torch.tensor(np.stack([p.eta_per_v for p in params])))
            self.tile_kxt.copy_(torch.tensor(np.stack([p.crosstalk_c for p in params]) / FC))
            self.tile_t0.copy_(torch.tensor(np.stack([p.offset_s for p in params]) / US))
            self.tile_gain.copy_(torch.tensor(np.stack([p.gain_s_per_c for p in params]) * (FC / US)))
            self.tile_so.copy_(torch.tensor(np.stack([self._so_row(p) for p in params])))
        self.tile_chips = [p.chip_id for p in params]

    def weight_matrix(self) -> torch.Tensor:
        """The weights as (outputs, K)."""
        return self.weight.reshape(self.out_features_, -1)

    def output_scales(self) -> torch.Tensor:
        """Digital gain per output: ``max_i |W_oi|`` (detached)."""
        return self.weight_matrix().detach().abs().amax(dim=1).clamp_min(1e-12)

    def normalized_weights(self) -> torch.Tensor:
        """``W / s_o`` in [-1, 1], (outputs, K)."""
        return self.weight_matrix() / self.output_scales()[:, None]

    def tile_weights(self, pad: float = 0.0) -> np.ndarray:
        """Normalized weights per tile, ``(rt, ct, rows, outputs_per_tile)``; cells the
        layer does not use hold ``pad`` (NaN: leave them alone on a chip)."""
        R, P = self.config.operating.rows, self.config.operating.outputs_per_tile
        w = np.full((self.row_tiles * R, self.col_tiles * P), float(pad))
        w[: self.in_rows, : self.out_features_] = self.normalized_weights().detach().double().numpy().T
        return w.reshape(self.row_tiles, R, self.col_tiles, P).transpose(0, 2, 1, 3)

    def model_tile(self, index: int) -> ModelTile:
        """Tile ``index`` (``r * col_tiles + c``) as a standalone :class:`ModelTile`
        (its chip parameters and normalized weights)."""
        r, c = divmod(int(index), self.col_tiles)
        return ModelTile(self.tile_params(index), self.config, self.tile_weights()[r, c])

    def _currents_t(self) -> torch.Tensor:
        """Cell currents times T (fC per unit input), (rt, rows, 2n): plus, then minus."""
        R = self.config.operating.rows
        w = self.normalized_weights().t()  # (K, n)
        w = F.pad(w, (0, 0, 0, self.row_tiles * R - self.in_rows)).reshape(self.row_tiles, R, -1)
        return tile_physics.branch_charges(w, self._i_min_na, self._i_scale_na, self._T_us)

    def _wide(self):
        """Per row tile, the used columns' parameters: kx (rt, R, 2n), e', t0 (counts),
        gain (counts/fC) (rt, 1, 2n). Cached until a tile buffer changes."""
        bufs = (self.tile_kxt, self.tile_eta, self.tile_t0, self.tile_gain)
        key = tuple((b.data_ptr(), b._version) for b in bufs)
        cached = getattr(self, "_wide_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        t, c = self._tidx, self._cols  # (rt, 2n), (2n,)
        with torch.no_grad():
            kx = self.tile_kxt.transpose(1, 2)[t, c].transpose(1, 2).contiguous()
            e = (self.tile_eta[t, c] / self._c_ff).unsqueeze(1)
            t0c = (self.tile_t0[t, c] / self._lsb_us).unsqueeze(1)
            gc = (self.tile_gain[t, c] / self._lsb_us).unsqueeze(1)
        self._wide_cache = (key, (kx, e, t0c, gc))
        return kx, e, t0c, gc

    def _second_wide(self):
        """Per row tile the second-order terms of the used columns, or None without any:
        coupling in gather form (keep, li, lw, ri, rw: (rt, 1, 2n) weights, (2n,)
        indices), width loss (rt, R, 1) in units of T, beta (rt, 1, 1) 1/nA (None where
        every tile's is 0). Cached."""
        key = (self.tile_so.data_ptr(), self.tile_so._version)
        cached = getattr(self, "_so_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        op = self.config.operating
        R, C, P = op.rows, op.cols, op.outputs_per_tile
        out = None
        if bool(self.tile_so.abs().max() > 0):
            t = self._tidx.numpy()  # (rt, 2n) tile of each used column
            so_t = self.tile_so.double().numpy()[t]  # (rt, 2n, terms)
            keep, li, lw, ri, rw = so.coupling_gather(so_t[..., :C - 1], self._cols.numpy(), t[0] - t[0].min())
            coupling = (keep.unsqueeze(1), li, lw.unsqueeze(1), ri, rw.unsqueeze(1))  # weights (rt, 1, 2n)
            per_tile = so_t.mean(1)  # width loss and source line: the mean of the row tile's chips
            loss = torch.tensor(per_tile[:, C - 1:C - 1 + R] / self._T_us, dtype=torch.float32).unsqueeze(-1)
            beta = torch.tensor(per_tile[:, -2], dtype=torch.float32).view(-1, 1, 1)
            beta = beta if bool(beta.abs().max() > 0) else None  # no source line: no ordering of the pulses
            unused = (C * self.col_tiles - t.shape[1]) / self.col_tiles  # columns per chip the layer leaves at I_min
            out = (coupling, loss, beta, unused)
        self._so_cache = (key, out)
        return out

    def _second_terms(self, i0t: torch.Tensor):
        """The second-order terms for currents ``i0t``: (coupling, (width loss, beta, row
        currents nA)), or None without any. The source line sees each row's current
        averaged over the layer's column tiles (chips) plus its unused columns."""
        terms = self._second_wide()
        if terms is None:
            return None
        coupling, loss, beta, unused = terms
        row_na = None
        if beta is not None:
            with torch.no_grad():
                row_na = (i0t.sum(-1, keepdim=True) / self.col_tiles + unused * self._i_min_na * self._T_us) / self._T_us
        return coupling, (loss, beta, row_na)

    def _second_order(self, xt: torch.Tensor, i0t: torch.Tensor, kx: torch.Tensor):
        """Inputs, currents and crosstalk through the second-order terms
        (:func:`labkit.model.second_order.tile_terms`)."""
        terms = self._second_terms(i0t)
        if terms is None:
            return xt, i0t, kx
        coupling, widths = terms
        return so.tile_terms(xt, i0t, kx, coupling, *widths)

    def _jittered(self, wide):
        """The wide parameters, perturbed in training when ``config.noise.jitter`` > 0."""
        j = self.config.noise.jitter
        if not (self.training and j > 0):
            return wide
        kx, e, t0c, gc = wide
        return (kx * (1 + j * torch.randn_like(kx)), e * (1 + j * torch.randn_like(e)), t0c,
                gc * (1 + 0.2 * j * torch.randn_like(gc)))

    def _jitter_currents(self, i0t: torch.Tensor) -> torch.Tensor:
        j = self.config.noise.jitter
        if not (self.training and j > 0):
            return i0t
        return i0t * (1 + 0.1 * j * torch.randn_like(i0t))

    # -------------------------------------------------------------- forward pieces
    def pulse_inputs(self, a: torch.Tensor) -> torch.Tensor:
        """Activations -> inputs in [0, 1] on the input clock (the array model's
        :class:`~labkit.model.kernels.InputQuantize`: straight-through inside [0, 1])."""
        return InputQuantize.apply(a / self.input_scale, self._levels if self.config.quantize else 0)

    def _opts(self, col: int) -> tuple:
        cfg = self.config
        tn = cfg.noise
        noise = (tn.noise_std_s / cfg.operating.tdc_lsb_s, tn.noise_relative) if self.training else (0.0, 0.0)
        return (cfg.droop, cfg.quantize, noise, self._cmax, col)

    def tile_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The summed signed tile outputs for inputs ``x`` (N, K) in [0, 1], from the
        layer's tiles (model or chips): ``(N, n)`` in units of ``I_scale T``
        (``sum_i w_i x_i`` ideally)."""
        return self.tiles.outputs(self, self._transposed(x))

    def _transposed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) pulse inputs -> (rt*rows, N), zero-padded."""
        pad = self.row_tiles * self.config.operating.rows - x.shape[1]
        return F.pad(x.t(), (0, 0, 0, pad)) if pad else x.t().contiguous()

    def _tile_parameters(self) -> tuple:
        """The model tiles' crosstalk, eta/C, offsets and gains as the tile physics takes
        them (jittered in training when configured), and its switches."""
        cfg = self.config
        return (*self._jittered(self._wide()), self._opts(2) + (cfg.crosstalk, cfg.edge_order))

    def model_outputs(self, xt: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`tile_outputs` of the model tiles from transposed inputs (rt*rows, N),
        zero-padded: every tile of the layer in one batched computation; times ``scale``
        (n,) when given (one pass over the outputs for both factors)."""
        R = self.config.operating.rows
        kx, e, t0c, gc, opts = self._tile_parameters()
        xt, i0t, kx = self._second_order(xt.view(self.row_tiles, R, -1), self._jitter_currents(self._currents_t()), kx)
        y = tile_physics.TileBmm.apply(xt, i0t, kx, e, t0c, gc, opts)
        if scale is not None:
            return y * (scale / (self._i_scale_na * self._T_us))
        return y / (self._i_scale_na * self._T_us)

    def _fused(self, x: torch.Tensor, neg: bool) -> bool:
        """True where the whole layer (tiles, second-order terms, digital gains, bias,
        ReLU) runs in the fused C kernels (:class:`~labkit.model.tile_physics.FusedLayer`):
        model tiles, no split inputs, and the kernels apply (float32 on the CPU, chosen on
        this machine)."""
        return (type(self.tiles) is ModelTiles and not neg and tile_physics.NATIVE["on"]
                and tile_physics.NATIVE["fused"] and tiles_native.applies(x, self.tile_kxt))

    def _fused_outputs(self, x: torch.Tensor, hw: int, patches=None) -> torch.Tensor:
        """The layer's outputs (B, n, hw) from pulse inputs x (rows (rt*rows, N), or the
        map ``patches`` are read from) through :class:`~labkit.model.tile_physics.FusedLayer`."""
        R = self.config.operating.rows
        kx, e, t0c, gc, opts = self._tile_parameters()
        scale = self.output_scales() * (self.input_scale / (self._i_scale_na * self._T_us))
        x = x if patches is not None else x.view(self.row_tiles, R, -1)
        i0t = self._jitter_currents(self._currents_t())
        terms, widths = self._second_terms(i0t), None
        if terms is not None:  # the coupling on the currents here, the widths in the kernel's blocks
            coupling, widths = terms
            i0t, kx = so.mix_columns(i0t, *coupling), so.mix_columns(kx, *coupling)
        return tile_physics.FusedLayer.apply(x, i0t, kx, e, t0c, gc, self.bias, opts, scale, self.relu, hw,
                                             self.in_rows, patches, widths)

    def _inputs(self, a: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Activations (any shape) -> pulse inputs; negative ones split (stacked on dim 0).
        One C pass each way where the kernels apply (:class:`~labkit.model.tile_physics.PulseInputs`)."""
        levels = self._levels if self.config.quantize else 0
        if (tile_physics.NATIVE["on"] and tile_physics.NATIVE["fused"] and not levels & (levels - 1)
                and tiles_native.applies(a)):
            x, least = tile_physics.PulseInputs.apply(a / self.input_scale, levels)
            if not float(least) < 0:
                return x, False
        neg = a.numel() > 0 and float(a.detach().amin()) < 0  # (a reduction: cheaper than a bool mask on a CPU)
        if neg:
            if self.config.mapping.signed_inputs == "error":
                raise ValueError(f"{type(self).__name__} got negative inputs (min {float(a.min()):g}); "
                                 "expected non-negative activations (or signed_inputs='split')")
            a = torch.cat([a.clamp_min(0.0), (-a).clamp_min(0.0)], dim=0)
        return self.pulse_inputs(a), neg

    def _outputs(self, x: torch.Tensor, neg: bool, transposed: bool = False) -> torch.Tensor:
        """(N, K) pulse inputs (or (rt*rows, N) with ``transposed``) -> (N, n) layer
        outputs before bias and ReLU, scaled back."""
        xt = x if transposed else self._transposed(x)
        if type(self.tiles) is ModelTiles and not neg:  # the digital gains in the same pass
            return self.model_outputs(xt, self.output_scales() * self.input_scale)
        y = self.tiles.outputs(self, xt)
        if neg:
            half = y.shape[0] // 2
            y = y[:half] - y[half:]
        return y * (self.output_scales() * self.input_scale)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        return torch.relu(y) if self.relu else y


class AnalogLinear(AnalogLayer):
    """``nn.Linear`` on analog tiles (same ``weight`` / ``bias`` parameters)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, relu: bool = False,
                 config: AnalogConfig = AnalogConfig(), tiles=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.Linear.reset_parameters(self)
        self._setup(in_features, out_features, relu, config, tiles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xq, neg = self._inputs(x.reshape(-1, self.in_features))
        if self._fused(xq, neg):
            return self._fused_outputs(self._transposed(xq), 1).reshape(*lead, self.out_features)
        return self._finish(self._outputs(xq, neg)).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, relu={self.relu}, "
                f"tiles={self.row_tiles}x{self.col_tiles}")


class AnalogConv2d(AnalogLayer):
    """``nn.Conv2d`` (groups=1) on analog tiles: the input is unfolded into patches of
    ``in_channels * kh * kw`` rows (channel-major, as ``F.unfold``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, *, relu: bool = False, config: AnalogConfig = AnalogConfig(), tiles=None):
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        if isinstance(padding, str):
            raise ValueError(f"padding={padding!r}; AnalogConv2d expects numeric padding")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.Conv2d.reset_parameters(self)
        k = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._setup(k, out_channels, relu, config, tiles)

    # nn.Conv2d.reset_parameters reads these
    groups = 1
    transposed = False

    def _geometry(self, x: torch.Tensor) -> tuple:
        """((kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo)) for an input map x."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        H, W = x.shape[-2:]
        Ho, Wo = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo)

    def unfold(self, x: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C, H, W) -> patches (B*Ho*Wo, C*kh*kw) (channel-major like ``F.unfold``), or
        with ``rows`` transposed and zero-padded: (rows, B*Ho*Wo); and (B, Ho, Wo)."""
        args = self._geometry(x)
        B, (Ho, Wo) = x.shape[0], args[-1]
        if rows is None:  # (N, K), as F.unfold's columns
            return _UnfoldT.apply(x, *args, self.in_rows).t(), (B, Ho, Wo)
        return _UnfoldT.apply(x, *args, rows), (B, Ho, Wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input has shape {tuple(x.shape)}; expected (B, {self.in_channels}, H, W)")
        xq, neg = self._inputs(x)  # quantize the map, not the (larger) patches
        if self._fused(xq, neg):  # the kernels read the patches from the map
            geo = self._geometry(xq)
            (Ho, Wo) = geo[-1]
            patches = tiles_native.Patches(xq.shape, sum(geo, ()))
            return self._fused_outputs(xq, Ho * Wo, patches).view(-1, self.out_channels, Ho, Wo)
        patches_t, (B, Ho, Wo) = self.unfold(xq, self.row_tiles * self.config.operating.rows)  # (rt*rows, N)
        y = self._finish(self._outputs(patches_t, neg, transposed=True))
        return y.reshape(-1, Ho, Wo, self.out_channels).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, relu={self.relu}, tiles={self.row_tiles}x{self.col_tiles}")
