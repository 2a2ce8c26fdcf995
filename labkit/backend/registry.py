"""Opening backends by URI: schemes come from ``labkit.backends`` entry points (or
:func:`register_scheme`); labkit itself names no backend.

An opener is ``opener(uri, options) -> ArrayBackend``. It may also offer
``opener.expand(uri, n) -> list[str]``: ``n`` URIs of distinct chips from one URI (the
emulated chip does: successive seeds), which :func:`chip_uris` uses for many-chip specs.
"""

from __future__ import annotations

import contextlib
from importlib.metadata import entry_points
from typing import Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

from labkit.backend.contract import ArrayBackend
from labkit.backend.safety import SafeArray
from labkit.errors import UsageError

Opener = Callable[[str, dict[str, str]], ArrayBackend]
_schemes: dict[str, Opener] = {}


def register_scheme(scheme: str, opener: Opener) -> None:
    """Make ``scheme:`` URIs open with ``opener(uri, options)`` (options from the query)."""
    _schemes[scheme] = opener


def schemes() -> dict[str, Callable[[], Opener]]:
    """Every known URI scheme -> a loader of its opener: registered ones plus the
    ``labkit.backends`` entry points."""
    found = {ep.name: ep for ep in entry_points(group="labkit.backends")}
    return {**{k: (lambda ep=ep: ep.load()) for k, ep in found.items()},
            **{k: (lambda o=o: o) for k, o in _schemes.items()}}


def parse_uri(uri: str) -> tuple[str, dict[str, str]]:
    """Split ``scheme://...?a=1&b=2`` or ``scheme:PATH`` into scheme and query options
    (a repeated option is refused)."""
    if not isinstance(uri, str) or ":" not in uri:
        raise UsageError(f"backend URI {uri!r}; expected e.g. 'sim://' or 'station:bench.yaml'")
    parts = urlsplit(uri)
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise UsageError(f"backend URI {uri!r} has a malformed query {parts.query!r}") from None
    opts = dict(pairs)
    if len(opts) != len(pairs):
        dup = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise UsageError(f"backend URI {uri!r} gives option {dup!r} twice; expected each option once")
    return parts.scheme, opts


def opener(uri: str) -> Opener:
    """The opener of ``uri``'s scheme."""
    scheme, _ = parse_uri(uri)
    known = schemes()
    if scheme not in known:
        raise UsageError(f"unknown backend scheme {scheme!r} in {uri!r}; known: {sorted(known)}")
    return known[scheme]()


def chip_uris(spec: str, n: int) -> list[str]:
    """``n`` backend URIs from ``spec``: ``n`` comma-separated URIs (the first ``n`` are
    used), or one URI whose backend can name many chips (``sim://?seed=N`` gives seeds
    N, N+1, ...)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"backend {spec!r}; expected e.g. 'sim://?seed=100' or 'station:a.yaml,station:b.yaml'")
    if n < 1:
        raise UsageError(f"{n} chips; expected at least one")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    openers = [opener(p) for p in parts]  # validates every URI
    if len(parts) == 1 and hasattr(openers[0], "expand"):
        return list(openers[0].expand(parts[0], n))
    if len(parts) < n:
        raise UsageError(f"the network needs {n} tiles, one chip each, but {spec!r} offers {len(parts)} "
                         f"chip{'s' if len(parts) != 1 else ''}; name {n} backends, comma-separated "
                         "(or use sim:// for emulated chips)")
    return parts[:n]


def chips_named(spec: str) -> int | None:
    """How many chips ``spec`` names: the number of comma-separated URIs, or None for one
    URI whose backend can name any number (``sim://``)."""
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if len(parts) == 1 and hasattr(opener(parts[0]), "expand"):
        return None
    return len(parts)


@contextlib.contextmanager
def open_backend(uri: str) -> Iterator[SafeArray]:
    """Open the backend named by ``uri`` (``sim://?seed=3``, ``station:bench.yaml``)."""
    _, opts = parse_uri(uri)
    with SafeArray(opener(uri)(uri, opts)) as backend:
        yield backend


@contextlib.contextmanager
def open_chips(spec: str, n: int) -> Iterator[list[SafeArray]]:
    """Open ``n`` chips named by ``spec`` (see :func:`chip_uris`), closed on exit."""
    uris = chip_uris(spec, n)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(open_backend(u)) for u in uris]
