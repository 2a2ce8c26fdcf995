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

from .array import FORMAT, ArrayModel
from .memory import keep_freed_memory

__all__ = ["ArrayModel", "FORMAT", "keep_freed_memory"]
