"""Weight mapping: signed weight matrices onto dual-branch column pairs.

A signed weight is the difference of two cell currents in the column pair
``(plus, minus)`` of :attr:`Geometry.pairs`::

    w = (I+ - I-) / I_scale            (dimensionless, -1 <= w <= 1)

**The current window.** Cells are programmable over ``Datasheet.cell_current_range_a``
(1 nA - 1 uA), but a VMM only stays linear while the charge a column removes during the
integration window ``T`` stays below the bit line's full-scale charge
``Q_fs = C (V_D0 - V_th)`` (~0.2 pC): with every input at ``x = 1`` a column of ``rows``
cells all at ``I_max`` removes ``rows * I_max * T``. So::

    I_max = headroom * Q_fs / (rows * T)      (~11 nA with headroom 0.9, 16 rows, T = 1 us)
    I_min = the datasheet's lowest programmable current (1 nA)
    I_scale = I_max - I_min

``headroom`` (default 0.9) keeps ~10 % of the swing for crosstalk steps (~4 % at 16
edges), comparator offsets and noise. A longer ``T`` shrinks the window; a window
with ``I_max < 2 I_min`` is an error (its weights would drown in the error at zero).

**Schemes.** ``offset`` (default): zero is both branches at ``I_min`` and a weight only
raises one branch, ``I+ = I_min + max(w, 0) I_scale``, ``I- = I_min + max(-w, 0) I_scale``.
Zero then sits where the absolute current error is smallest (a relative tolerance
``tol`` gives ``2 tol I_min / I_scale`` ~ 0.002 of full scale at w = 0).
``balanced``: ``I+- = I_mid +- w I_scale / 2`` keeps each pair's sum constant (the same
column load for every weight) at the price of a larger error around zero.

**Zero and the smallest weights.** Zero is never "cell off": currents far below the
window cannot be verified to a tolerance (leakage is pA, read noise grows at low
current). A weight smaller than the resolution (see :func:`precision`) is programmed
as asked, but its sign is not guaranteed; ``snap_below`` rounds such weights to
exactly zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SCHEMES = ("offset", "balanced")
MIN_RANGE = 2.0  # I_max must be at least this many times I_min (else weights drown in the zero error)


class WeightRangeError(ValueError):
    """Weights outside what the current window can represent (use clip=True to clip)."""


@dataclass(frozen=True)
class WeightWindow:
    """Currents (A) used for weights: ``I_min`` (zero) to ``I_max`` (full scale)."""

    i_min_a: float
    i_max_a: float
    scheme: str = "offset"

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"weight scheme {self.scheme!r}; expected one of {SCHEMES}")
        if not (np.isfinite(self.i_min_a) and np.isfinite(self.i_max_a) and 0 < self.i_min_a < self.i_max_a):
            raise ValueError(f"weight window [{self.i_min_a:g}, {self.i_max_a:g}] A; expected 0 < I_min < I_max")

    @property
    def i_scale_a(self) -> float:
        """Current (A) of one unit of weight: I+ - I- for w = 1."""
        return self.i_max_a - self.i_min_a

    @classmethod
    def for_backend(cls, backend, headroom: float = 0.9, i_min_a: float | None = None,
                    scheme: str = "offset") -> "WeightWindow":
        """The window of ``backend`` at its current integration time (see module docs)."""
        return cls.from_datasheet(backend.datasheet, backend.settings.integration_time_s,
                                  backend.geometry.rows, headroom, i_min_a, scheme)

    @classmethod
    def from_datasheet(cls, datasheet, integration_time_s: float, rows: int, headroom: float = 0.9,
                       i_min_a: float | None = None, scheme: str = "offset") -> "WeightWindow":
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom={headroom}; expected 0 < headroom <= 1")
        lo, hi = datasheet.cell_current_range_a
        i_min = lo if i_min_a is None else float(i_min_a)
        if not lo <= i_min <= hi:
            raise ValueError(f"i_min_a={i_min:g} A is outside the programmable [{lo:g}, {hi:g}] A")
        i_max = min(hi, headroom * datasheet.full_scale_charge_c / (rows * integration_time_s))
        if i_max < MIN_RANGE * i_min:
            raise ValueError(
                f"no weight window: full scale {datasheet.full_scale_charge_c:g} C over {rows} rows and "
                f"T = {integration_time_s:g} s allows at most {i_max:g} A per cell, less than {MIN_RANGE:g} x "
                f"I_min = {i_min:g} A; shorten the integration time")
        return cls(i_min, i_max, scheme)

    def currents(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(I+, I-) in A for weights ``w`` in [-1, 1] (no range check)."""
        w = np.asarray(w, dtype=float)
        if self.scheme == "offset":
            return self.i_min_a + np.maximum(w, 0) * self.i_scale_a, self.i_min_a + np.maximum(-w, 0) * self.i_scale_a
        mid = 0.5 * (self.i_min_a + self.i_max_a)
        return mid + 0.5 * w * self.i_scale_a, mid - 0.5 * w * self.i_scale_a

    def weights(self, i_plus: np.ndarray, i_minus: np.ndarray) -> np.ndarray:
        """Weights represented by branch currents (A): ``(I+ - I-) / I_scale``."""
        return (np.asarray(i_plus, dtype=float) - np.asarray(i_minus, dtype=float)) / self.i_scale_a

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WeightWindow":
        return cls(float(d["i_min_a"]), float(d["i_max_a"]), str(d.get("scheme", "offset")))


def check_weights(weights, geometry, *, clip: bool = False, pad: bool = False) -> np.ndarray:
    """Validated float copy of a ``(rows, signed outputs)`` weight matrix.

    ValueError for the wrong shape (``pad=True`` accepts smaller tiles, padded with
    zeros), NaN or infinite entries; :class:`WeightRangeError` for ``|w| > 1`` unless
    ``clip``.
    """
    w = np.asarray(weights)
    want = (geometry.rows, geometry.signed_outputs)
    if w.dtype == object or not (np.issubdtype(w.dtype, np.number) or w.dtype == bool):
        raise ValueError(f"weights have dtype {w.dtype}; expected a numeric {want[0]}x{want[1]} array")
    w = w.astype(float)
    fits = w.ndim == 2 and (w.shape == want or (pad and w.shape[0] <= want[0] and w.shape[1] <= want[1]))
    if not fits:
        raise ValueError(f"weights have shape {w.shape}; expected {want} (rows x signed outputs)"
                         + (" or smaller" if pad else ""))
    if not np.all(np.isfinite(w)):
        r, c = np.argwhere(~np.isfinite(w))[0]
        raise ValueError(f"weights[{r}, {c}] = {w[r, c]}; expected finite values")
    if w.shape != want:
        full = np.zeros(want)
        full[: w.shape[0], : w.shape[1]] = w
        w = full
    big = np.abs(w) > 1.0
    if np.any(big):
        if not clip:
            r, c = np.argwhere(big)[0]
            raise WeightRangeError(
                f"weights[{r}, {c}] = {w[r, c]:g} is outside [-1, 1], the range the current window "
                f"represents ({int(big.sum())} entries); rescale the weights or clip them (--clip)")
        w = np.clip(w, -1.0, 1.0)
    return w


def map_weights(weights, window: WeightWindow, geometry, *, clip: bool = False, pad: bool = False,
                snap_below: float | None = None) -> np.ndarray:
    """Target currents (A), ``(rows, cols)``, for a signed weight matrix ``(rows, pairs)``.

    Pair ``k = (plus, minus)`` of ``geometry.pairs`` holds output ``k``. Columns not in
    any pair get ``I_min``. ``snap_below``: weights with ``|w|`` below it become 0.
    """
    w = check_weights(weights, geometry, clip=clip, pad=pad)
    if snap_below is not None:
        w = np.where(np.abs(w) < snap_below, 0.0, w)
    targets = np.full((geometry.rows, geometry.cols), window.i_min_a)
    i_plus, i_minus = window.currents(w)
    for k, (p, m) in enumerate(geometry.pairs):
        targets[:, p] = i_plus[:, k]
        targets[:, m] = i_minus[:, k]
    return targets


def unmap_currents(currents, window: WeightWindow, geometry) -> np.ndarray:
    """Weights ``(rows, pairs)`` that cell currents ``(rows, cols)`` in A represent."""
    i = np.asarray(currents, dtype=float)
    if i.shape != (geometry.rows, geometry.cols):
        raise ValueError(f"currents have shape {i.shape}; expected {(geometry.rows, geometry.cols)}")
    return np.stack([window.weights(i[:, p], i[:, m]) for p, m in geometry.pairs], axis=1)


def precision(window: WeightWindow, tolerance: float) -> dict:
    """What a relative current tolerance means in weight units (worst case, both branches off by tol).

    ``zero_error``: |error| of a weight at 0; ``full_scale_error`` at |w| = 1;
    ``resolution``: the smallest |w| whose sign is guaranteed (= zero_error);
    ``bits_full_scale`` / ``bits_zero``: log2 of the number of distinguishable levels
    over [-1, 1] at that error.
    """
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance}; expected a fraction in (0, 1)")

    def err(w):
        ip, im = window.currents(np.asarray(w))
        return float(tolerance * (ip + im) / window.i_scale_a)

    e0, e1 = err(0.0), err(1.0)
    return {"i_min_a": window.i_min_a, "i_max_a": window.i_max_a, "i_scale_a": window.i_scale_a,
            "scheme": window.scheme, "tolerance": tolerance, "zero_error": e0, "full_scale_error": e1,
            "resolution": e0, "bits_zero": float(np.log2(2.0 / (2 * e0))),
            "bits_full_scale": float(np.log2(2.0 / (2 * e1)))}
