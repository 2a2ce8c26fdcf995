"""Optional fused tile kernels of the analog layers (``analog_tiles.c``, through ctypes).

:class:`labkit.model.tile_physics.TileBmm` computes, for all row tiles of a layer, the products
(cell currents and crosstalk), the readout (droop, edge order, noise, TDC, clip) and the
signed row-tile sums; in torch that is four batched matrix products and about fifteen
passes over a (tiles, columns, samples) tensor several times larger than the network's
activations. The C kernels do it on blocks of samples held in the CPU cache, so none of
those tensors is written to memory (same equations, float32; tests/test_analog.py
checks them against the torch path). Long batches are split across torch's CPU threads
(ctypes releases the GIL).

Whole layers (:class:`labkit.model.tile_physics.FusedLayer`, where a layer runs on its
model tiles with non-negative inputs): the same kernels also read a convolution's
patches in place from its input map (:class:`Patches`; no patch matrix is written, and
the input gradient is added back into the map, threads taking whole images), skip the
zero-padded rows of a last row tile, run the second-order effective widths per block
(:func:`widths` without its output array, the widths kept only for the weight
gradient), and apply the digital gains, bias and ReLU in the output's own layout
(:func:`epilogue`; its adjoint :func:`epilogue_backward`). tests/test_analog_fused.py
holds this path to the composed one.

Built, verified and loaded at first use by :mod:`labkit.model.native`; without a compiler, or with
``LABKIT_NATIVE=0``, the torch path runs. Where both can run, a timed race at first use
(:func:`chosen`, ``tile_physics.race_paths``: 4 row tiles x 16 x 16, 4096 samples, full
physics) decides, cached with the build; ``LABKIT_NATIVE=1`` forces the kernels.

Second-order pulse widths (:func:`widths`, ``tiles_widths``; the layers' width loss and
source line, :mod:`labkit.model.second_order`): the torch definition sorts every
sample's 16 widths (a strided sort along the rows: 26x plain torch for a LeNet-5
training step with chip-sized terms, against 3.7x first order). The kernel needs no
sort: one compare per pair of rows ranks them (ties by row, as a stable sort), the slot
sums are taken by parts (each row adds ``(s(beta A) - s(beta (A - I))) g`` to the rows
after it), the source-line root is a series for ``|beta I_tot| <= 0.1`` (Newton beyond),
and rows without a pulse in a block of samples (the padding of a last row tile) are left
out of the pairs. Same results to float rounding (tests/test_analog_widths.py). LeNet-5
step, batch 128, one run: 26.3x plain torch with the sort, 4.4x with the kernel, 3.5x
first order. Not fused into the tile kernels' input pass: their backward needs the
widths too (the weight gradient), so the pairs would run twice; of the 3.6 ms the widths
take for LeNet-5's first layer, the separate pass's memory traffic is 1.5 ms (measured
with the source line off).

What made the kernels slow on an AVX2 CPU (the Speed issue; measured on an AMD EPYC
with AVX-512, 1 MiB L2 per core, building for ``-march=x86-64-v3`` to run the AVX2
code; LeNet-5 training step, batch 128, 1 thread, one run):

* Vector width (the cause). The kernel used 64-byte GCC vector types (16 floats)
  whatever the target; on a 256-bit machine the compiler splits each into two
  registers, so the 16 accumulators of a register block need 32 ymm registers of 16 and
  spill: 329 ms per step (33.6x plain torch; the torch path 9.3x). The width and the
  register blocking now follow the target (``VL``, ``UNROLL``, ``GK`` in the C source):
  48 ms (4.9x), with AVX-512 unchanged (3.4x; identical code and results there).
  Without ``-march`` (SSE2 only) the kernel stays slower than the torch path
  (``floorf`` does not vectorize there): the race picks the torch path.
* Noise-bank gathers at hashed offsets: not a cost. Each block reads a contiguous
  window of 128 values; kernel time with the bank, without noise, and with a 16 kB bank
  agree within 5-10 %; a 4 MB bank (beyond L2) costs 12-25 %. The 256 kB bank is kept
  (fewer distinct windows would correlate the noise).
* Working sets: one block (16 rows x 128 samples, its products and readout) is under
  32 kB, L1-resident on any of these CPUs; the whole activations stream from L3.
* The polynomial log: 5 % faster than glibc's vectorized ``logf``; kept.
* Denormals: ``torch.set_flush_denormal(True)`` changes nothing (none arise).
* Division and square root of the readout (``-mrecip=all``, no noise-floor sqrt): no
  gain. On AVX-512 the forward splits about evenly between the products and the
  readout, at roughly 1.5 cycles per column and sample each.

What made the LeNet-5 step slow on an Intel Xeon (AVX-512, 48 kB L1d, 2 MB L2 per core,
a shared 2-core VM; ``perf record -e cpu-clock``, sampled instructions; timings from
alternating builds in one process, min of 15-40 calls):

* Memory traffic, not arithmetic (the cause). A single core of this machine streams
  about 6-10 GB/s. The patch matrices (12.8 MB for the first convolution, 8 MB for the
  second) were written by ``patches_fwd``, read by the forward, read again by the
  backward, and the patch gradient written and folded back: a third of the backward's
  samples sat on the ``rep movsq`` of those copies. Reading the patches in place from
  the map (L2-resident: 0.4 and 0.6 MB) removed 1.4-2 ms of unfolding per convolution
  and the backward's copies. The first version of the in-place loader held 10.5 % of
  the step's samples, mostly integer divisions (the sample and row coordinates, per row
  and block); with the row table and the block's runs set up once per call and block,
  3 %.
* The glue around the kernels: the ReLU's backward on a (samples, outputs) tensor whose
  gradient arrived in NCHW strides took 2.1 ms (0.37 ms in plain torch on the same
  size), plus the copies, scales and bias: about 5 ms per step, now one C pass each way.
* The readout's op count: about 80 vector instructions per 16 values, with spills. The
  droop's log as its series on ``u = e' z m1`` (no exponent split; ``u`` < 0.08 on these
  chips, the full log where any ``u`` of a column reaches 0.414), the noise rms a constant
  when there is no relative part (the default), and clip-then-truncate for the TDC
  floor: 11-25 % of the forward of each layer.
* Writing dq/dz (16 bit, 8 MB for the second convolution): non-temporal stores where the
  destination is aligned (only the backward reads it again): 13 % of that layer's
  forward.
* Not a cost here: the noise bank (the second convolution's forward 7.17 ms with
  noise, 7.09 ms without), ``-mrecip=all`` (no change), denormals (none arise). The
  AVX2 build (``LABKIT_MARCH=x86-64-v3``) is about 1.3x slower than the AVX-512 one
  overall on this CPU.
"""

from __future__ import annotations

import ctypes
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from labkit.model import native

__all__ = ["available", "applies", "chosen", "forcing", "forward", "backward", "Patches", "quantize",
           "quantize_backward", "epilogue",
           "epilogue_backward", "widths", "widths_apply", "patches", "patches_backward"]

SOURCE = Path(__file__).with_name("analog_tiles.c")
_p, _i64, _f32, _i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
SIGNATURES = {
    "tiles_fwd": ([_i64] * 5 + [_p] + [_i64] * 2 + [_p] * 8 + [_i64, ctypes.c_ulonglong] + [_f32] * 5 + [_i32]
                  + [_p] * 6, ctypes.c_int),
    "tiles_bwd": ([_i64] * 5 + [_p] + [_i64] * 2 + [_p] * 7, ctypes.c_int),
    "tiles_epilogue": ([_i64] * 3 + [_p] * 3 + [_i32, _p], None),
    "tiles_quantize": ([_i64, _p, _i64, _p], _f32),
    "tiles_quantize_bwd": ([_i64, _p, _p, _p], None),
    "tiles_epilogue_bwd": ([_i64] * 3 + [_p] * 3 + [_i32, _p, _p], None),
    "tiles_widths": ([_i64] * 5 + [_p] * 5, ctypes.c_int),
    "patches_fwd": ([_i64] * 4 + [_p, _i64, _p, _p], None),
    "patches_bwd": ([_i64] * 4 + [_p, _i64, _p, _p], None),
}
_R_MAX = 64  # rows per tile the kernel takes (R_MAX in analog_tiles.c)
_MIN_SPLIT = 4096  # samples per thread below which one thread does the whole call
_POOL: list = []


def _lib():
    return native.load(SOURCE, fast_math=True, signatures=SIGNATURES)


PROBE = "tiles-v1"  # names the race: a new probe discards the cached verdicts
#: True if the kernels are to run: forced (``LABKIT_NATIVE``), or faster than the torch
#: path in the race at first use (``tile_physics.race_paths``); ``forcing(on)`` while racing.
chosen = native.Choice(SOURCE, True, PROBE, lambda: _lib(), "labkit.model.tile_physics:race_paths")
forcing = chosen.forcing


def available() -> bool:
    """True when the compiled kernels can be used on this machine."""
    return _lib() is not None


def applies(*tensors: torch.Tensor) -> bool:
    """True when the kernels serve these tensors (float32 on the CPU; tile inputs (RT, R,
    S) with R <= 64) and are chosen on this machine (:func:`chosen`)."""
    return (_lib() is not None and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
            and (tensors[0].dim() != 3 or tensors[0].shape[1] <= _R_MAX) and chosen())


def widths_apply(xt: torch.Tensor) -> bool:
    """True when :func:`widths` serves ``xt`` (float32 on the CPU, (RT, R, S) with R <= 64,
    the library built). Not subject to the race of the tile kernels: against the sort of
    the torch definition it was 45x faster here (LeNet-5's first layer, AVX-512 build; the
    AVX2 build of the kernel ran 1.5x slower than that one)."""
    return (_lib() is not None and xt.dtype == torch.float32 and xt.device.type == "cpu" and xt.dim() == 3
            and xt.shape[1] <= _R_MAX)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _chunks(S: int, unit: int = 128) -> list[tuple[int, int]]:
    """Sample ranges, one per CPU thread (torch.get_num_threads()), starting at multiples
    of ``unit`` (a multiple of the kernels' 128-sample blocks, so the noise does not
    depend on the split)."""
    k = max(1, min(torch.get_num_threads(), S // max(_MIN_SPLIT, unit)))
    if k == 1:
        return [(0, S)]
    per = -(-S // k)
    step = -(-per // unit) * unit
    return [(s, min(S, s + step)) for s in range(0, S, step)]


class Patches:
    """Convolution patches read in place from an input map (B, C, H, W) by the kernels
    (never written out): row k = (channel, ki, kj) as ``F.unfold``, sample (b, ho, wo).
    ``geo`` = (kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)."""

    def __init__(self, shape: tuple, geo: tuple):
        self.shape, self.geo = tuple(shape), tuple(geo)
        B, C, H, W = self.shape
        self.samples = B * geo[8] * geo[9]
        self.rows = C * geo[0] * geo[1]
        self._geo = torch.tensor(self.geo + self.shape, dtype=torch.int64)
        self.unit = math.lcm(128, geo[8] * geo[9])  # threads take whole images (the adjoint adds into them)

    def pointer(self) -> int:
        return self._geo.data_ptr()


def _layout(xt: torch.Tensor, RT: int, R: int, patches: Patches | None) -> tuple[int, int, int]:
    """(S, K, geo pointer) of tile inputs: rows (RT, R, S) or ``patches`` of the map xt."""
    if patches is None:
        return xt.shape[-1], RT * R, None
    if tuple(xt.shape) != patches.shape:
        raise ValueError(f"input map has shape {tuple(xt.shape)}; the patches expect {patches.shape}")
    return patches.samples, patches.rows, patches.pointer()


def _run(calls) -> None:
    """Run the kernel calls (thunks returning a status), in parallel when more than one."""
    if len(calls) == 1:
        codes = [calls[0]()]
    else:
        if not _POOL or _POOL[0]._max_workers < len(calls):
            _POOL[:] = [ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="labkit-tiles")]
        codes = list(_POOL[0].map(lambda f: f(), calls))
    if any(codes):
        raise RuntimeError(f"analog tile kernel failed (codes {codes})")


def forward(xt, i0t, kx, e, t0c, gc, kbar, bank, noise, cmax, droop, quantize, crosstalk, edge, edge_a, edge_b,
            keep_m: bool = True, rows: int | None = None, patches: Patches | None = None, widths_of=None):
    """``(y, m)``: y (n, S) the row-tile sums of the signed read-back charge (fC), m
    (RT, 2n, S) dq/dz for :func:`backward` (16-bit fixed point; None without droop or
    ``keep_m``). xt (RT, R, S), or with ``patches`` the map they are read from; i0t, kx
    (RT, R, 2n); e, t0c, gc, kbar (RT, 2n); bank: standard normal values (at least 128)
    the readout noise is drawn from (windows at random offsets; a new seed per call), or
    None; noise: (floor in TDC counts, part relative to the output). ``rows``: how many
    of the RT R rows hold inputs (the rest are zero padding and are skipped).
    ``widths_of``: (loss, beta, cur) as :func:`widths` takes them: the kernel runs on the
    effective widths of the inputs (computed per block), and returns them as a third
    value (RT, R, S) for :func:`backward` when ``keep_m`` (else None)."""
    xt, i0t, kx = xt.contiguous(), i0t.contiguous(), kx.contiguous()
    RT, R, N2 = i0t.shape
    S, K, geo = _layout(xt, RT, R, patches)
    K = K if rows is None else min(K, int(rows))
    e, t0c, gc, kbar = (v.reshape(RT, N2).contiguous() for v in (e, t0c, gc, kbar))
    bank = None if bank is None else bank.contiguous()
    seed = int(torch.randint(0, 2**62, ())) if bank is not None else 0
    y = torch.empty(N2 // 2, S, dtype=torch.float32)
    lib = _lib()
    m = torch.empty(RT, N2, S, dtype=torch.int16) if droop and keep_m else None  # 16-bit fixed point, for backward
    flags = int(bool(droop)) | 2 * bool(quantize) | 4 * bool(crosstalk) | 8 * bool(edge)
    wl = wb = wc = xe = None
    if widths_of is not None:
        wl, wb, wc = _widths_args(RT, *widths_of)
        xe = torch.empty(RT, R, S, dtype=torch.float32) if keep_m else None
    args = (_ptr(xt), _ptr(i0t), _ptr(kx), _ptr(e), _ptr(t0c), _ptr(gc), _ptr(kbar), _ptr(bank),
            0 if bank is None else bank.numel(), seed, float(noise[0]), float(noise[1]), float(edge_a),
            float(edge_b), float(cmax), flags, _ptr(wl), _ptr(wb), _ptr(wc), _ptr(xe), _ptr(y), _ptr(m))
    unit = 128 if patches is None else patches.unit
    _run([lambda sb=sb, se=se: lib.tiles_fwd(RT, R, N2, S, K, geo, sb, se, *args) for sb, se in _chunks(S, unit)])
    return (y, m) if widths_of is None else (y, m, xe)


def _widths_args(RT: int, loss: torch.Tensor, beta: torch.Tensor | None, cur: torch.Tensor | None) -> tuple:
    """loss (RT, R), beta (RT) or None, cur (RT, R) (None: no source line, not read):
    float32, contiguous."""
    f32 = lambda v: v.reshape(RT, -1).to(torch.float32).contiguous()  # noqa: E731
    loss = f32(loss)
    return loss, None if beta is None else f32(beta), torch.zeros_like(loss) if cur is None else f32(cur)


def backward(xt, i0t, m, gy, need_x: bool, need_i: bool, rows: int | None = None, patches: Patches | None = None,
             xe: torch.Tensor | None = None):
    """``(gx, gi)``: gradients for xt (RT, R, S) (with ``patches``: for the map) and i0t
    (RT, R, 2n) (None where not needed) from gy (n, S), the gradient of the forward's y,
    and its m; ``rows``, ``patches`` and the effective widths ``xe`` as the forward had
    and returned them (the widths pass the gradient straight through)."""
    xt, i0t, gy = xt.contiguous(), i0t.contiguous(), gy.contiguous()
    RT, R, N2 = i0t.shape
    S, K, geo = _layout(xt, RT, R, patches)
    K = K if rows is None else min(K, int(rows))
    if not need_x:
        gx = None
    elif patches is None:
        gx = torch.empty(RT, R, S, dtype=torch.float32)
    else:
        gx = torch.zeros(patches.shape, dtype=torch.float32)
    chunks = _chunks(S, 128 if patches is None else patches.unit)
    gis = [torch.empty(RT, R, N2, dtype=torch.float32) if need_i else None for _ in chunks]
    lib = _lib()
    _run([lambda sb=sb, se=se, gi=gi: lib.tiles_bwd(RT, R, N2, S, K, geo, sb, se, _ptr(xt), _ptr(xe), _ptr(i0t),
                                                    _ptr(m), _ptr(gy), _ptr(gx), _ptr(gi))
          for (sb, se), gi in zip(chunks, gis)])
    gi = gis[0]
    for part in gis[1:]:
        gi += part
    return gx, gi


def quantize(v: torch.Tensor, levels: int) -> tuple[torch.Tensor, float]:
    """``(x, least)``: pulse inputs ``x`` = scaled activations ``v`` clipped to [0, 1] and
    rounded to ``levels`` steps (a power of two, or 0: not rounded), as
    :class:`labkit.model.kernels.InputQuantize`; and the least of ``v``."""
    if levels & (levels - 1):
        raise ValueError(f"levels={levels}; expected a power of two or 0 (others: InputQuantize)")
    v = v.contiguous()
    x = torch.empty_like(v)
    least = _lib().tiles_quantize(v.numel(), _ptr(v), int(levels), _ptr(x))
    return x, float(least) if v.numel() else 0.0


def quantize_backward(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`quantize` for scaled activations ``v``: ``g`` inside [0, 1]."""
    g = g.reshape(v.shape).contiguous()
    gv = torch.empty_like(v)
    _lib().tiles_quantize_bwd(v.numel(), _ptr(g), _ptr(v), _ptr(gv))
    return gv


def epilogue(y: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, relu: bool, hw: int) -> torch.Tensor:
    """A layer's outputs (B, n, hw) from the row-tile sums y (n, B hw): ``y scale + bias``
    per output, then the ReLU when ``relu``."""
    n, S = y.shape
    out = torch.empty(S // hw, n, hw, dtype=torch.float32)
    y, scale = y.contiguous(), scale.to(torch.float32).contiguous()  # (held: the kernel reads them)
    bias = None if bias is None else bias.detach().to(torch.float32).contiguous()
    _lib().tiles_epilogue(n, S // hw, hw, _ptr(y), _ptr(scale), _ptr(bias), int(relu), _ptr(out))
    return out


def epilogue_backward(g: torch.Tensor, out: torch.Tensor, scale: torch.Tensor, relu: bool,
                      need_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(gy, gb)``: the gradients of :func:`epilogue`'s y (n, S) and bias (n,) (None
    unless ``need_bias``) from g, the gradient of its output ``out`` (B, n, hw)."""
    B, n, hw = out.shape
    gy = torch.empty(n, B * hw, dtype=torch.float32)
    gb = torch.empty(n, dtype=torch.float32) if need_bias else None
    g, scale = g.reshape(out.shape).contiguous(), scale.to(torch.float32).contiguous()  # (held while it runs)
    _lib().tiles_epilogue_bwd(n, B, hw, _ptr(g), _ptr(out), _ptr(scale), int(relu), _ptr(gy), _ptr(gb))
    return gy, gb


def widths(xt: torch.Tensor, loss: torch.Tensor, beta: torch.Tensor | None, cur: torch.Tensor) -> torch.Tensor:
    """Effective pulse widths (RT, R, S), units of T, of inputs xt (RT, R, S): width loss
    ``loss`` (RT, R) units of T, source-line factor ``beta`` (RT,) 1/nA (None: none), row
    currents ``cur`` (RT, R) nA; the edge rule of ``AnalogLayer._second_order`` included
    (``second_order.effective_inputs`` without its sort)."""
    xt = xt.contiguous()
    RT, R, S = xt.shape
    loss, beta, cur = _widths_args(RT, loss, beta, cur)
    out = torch.empty_like(xt)
    lib = _lib()
    _run([lambda sb=sb, se=se: lib.tiles_widths(RT, R, S, sb, se, _ptr(xt), _ptr(loss), _ptr(beta), _ptr(cur),
                                                _ptr(out)) for sb, se in _chunks(S)])
    return out


def patches(x: torch.Tensor, geo: tuple, rows: int) -> torch.Tensor:
    """Transposed convolution patches (rows, B*Ho*Wo) of x (B, C, H, W); geo = (kh, kw,
    sh, sw, ph, pw, dh, dw, Ho, Wo)."""
    x = x.contiguous()
    B, C, H, W = x.shape
    out = torch.empty(rows, B * geo[-2] * geo[-1], dtype=torch.float32)
    g = torch.tensor(geo, dtype=torch.int64)
    _lib().patches_fwd(B, C, H, W, g.data_ptr(), rows, x.data_ptr(), out.data_ptr())
    return out


def patches_backward(g: torch.Tensor, shape: tuple, geo: tuple, rows: int) -> torch.Tensor:
    """The gradient (B, C, H, W) of :func:`patches` for its output's gradient g."""
    g = g.contiguous()
    gx = torch.empty(shape, dtype=torch.float32)
    gg = torch.tensor(geo, dtype=torch.int64)
    _lib().patches_bwd(*shape, gg.data_ptr(), rows, g.data_ptr(), gx.data_ptr())
    return gx
