"""What went wrong, as types: the CLI maps each to an exit code and one line.

- :class:`UsageError` (a ``ValueError``): the user asked for something invalid; nothing
  was applied to a chip. Exit code 2. :class:`SafetyError` is the kind that would have
  left the :class:`~labkit.backend.SafetyEnvelope`.
- :class:`ResultError`: the work ran but its result is outside tolerance (failed cells,
  a fit that did not converge). Exit code 3. :class:`FitDivergedError` is the only
  error a calibration retries.
- :class:`BackendError`: the link, an instrument or the chip failed. Exit code 4.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A user mistake, found before anything reached a chip."""


class SafetyError(UsageError):
    """A request outside the SafetyEnvelope; nothing was applied."""


class ResultError(RuntimeError):
    """The work ran, but its result is outside tolerance."""


class FitDivergedError(ResultError):
    """A model fit did not converge (non-finite loss or parameters)."""


class BackendError(RuntimeError):
    """The backend could not do what was asked (link, instrument or chip fault)."""


class LinkError(BackendError):
    """The link to the board failed: no reply, a corrupt frame, a lost connection."""


class InstrumentError(BackendError):
    """A bench instrument reported an error or stopped answering."""


# first match wins: a board's refusal of an out-of-envelope value is still a SafetyError
# (2); any other ValueError is taken as a user mistake too.
EXIT_CODES = ((ResultError, 3), (UsageError, 2), (BackendError, 4), (ValueError, 2))


def exit_code(exc: BaseException) -> int | None:
    """The CLI exit code of ``exc``, or None for an error that is a bug (a traceback)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return None
