"""The hardware-aware model of a 16x16 time-domain array (docs/physics.md, section 3).

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

where the slot currents ``S`` are one batched matrix product of the thermometer-coded
active masks with ``I0``, and ``exp(-eta' K_before,k)`` is a cumulative product over
the sorted edges. No Python loop over samples or tiles; the whole charge computation
is one autograd node with a hand-written backward (``kernels.ChargeFn``). Without
crosstalk the slot structure drops out: ``Z = I0^T d`` (droop alone is a per-column
compression of the ideal dot product); ``edge_timing=False`` uses that cheap form with
all crosstalk steps added after the integration. On CPU the slot part runs in a small
C kernel (``slots.c``, built at first use with the system compiler and cached under
``$LABKIT_CACHE`` or ``~/.cache/labkit``, where a timed race at first use found it faster
than torch; ``LABKIT_NATIVE=0`` or no compiler: the same closed form in torch). With per-cell eta (option) RK4
substeps per slot integrate the same ODE (a loop over the 16 slots).

Outputs: ``forward`` (crossing times, s), ``crossing_us``, ``charge`` / ``charge_fc``,
``signed`` (dual-branch ``q+ - q-``, or normalized ``w x``), ``ideal`` (``W x + b``),
``fine_step_reference`` (slow RK4 check of the same equations). Persistence:
``to_dict`` / ``from_dict`` with plain numpy arrays. For CPU training,
:func:`keep_freed_memory` avoids re-faulting the MB-sized intermediates every step.

Internal units keep gradient-based fits well conditioned: currents nA, time us,
charge fC (= nA us), capacitance fF (:mod:`labkit.model.units`, the one definition).
Getters return SI values.

Modules: ``equations`` (the droop closed form and the readout: one definition for the
array model and the tile physics), ``array`` (ArrayModel), ``kernels`` (its autograd
kernels; ``slots_native`` binds ``slots.c`` and ``crossing.c``, one library),
``tile_physics`` (the same equations for the many tiles of a network layer at once, to
first order in the crosstalk droop; ``tiles_native`` binds ``analog_tiles.c``), ``native`` (the one builder and verified cache of the C kernels),
``units``, ``memory``.
"""

from labkit.model.array import FORMAT, ArrayModel
from labkit.model.memory import keep_freed_memory

__all__ = ["ArrayModel", "FORMAT", "keep_freed_memory"]
