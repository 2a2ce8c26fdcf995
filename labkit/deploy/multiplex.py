"""Time-multiplexed deployment: any analog network on the K >= 1 chips a lab has.

The whole test set passes through the network as one batch, so when an analog layer is
reached every input that any of its tiles needs is known. Each tile of the layer is
programmed once onto a chip, all of its inputs run through it in large VMM batches, and
its partial sums are kept; then that chip takes its next tile. Tile ``j`` in tile-plan
order (:func:`labkit.nn.tile_plan`) goes to chip ``j mod K`` (:func:`placement`: fixed,
so hardware-aware training can target the chip a tile will run on, and a resumed run
places tiles as before); the K chips work in parallel, one thread each. Every tile is programmed exactly once per pass, the fewest
reprogrammings any schedule can have; with K >= the number of tiles use
:func:`labkit.deploy.deploy` (each tile keeps its chip, nothing is reprogrammed).

Crash safety: with a :class:`Journal` (a run of the run store), each tile's partial
sums are committed as soon as they are measured, keyed by layer, tile and a digest of
the tile's inputs. A resumed deployment reuses every finished tile whose inputs are the
same and never programs it again; it never mixes partial sums of two programmings,
because a tile is only recorded complete, with its own outputs.

Endurance: with :meth:`ChipPool.record_in` each chip's programmings go to its
chip-state file, and ``multiplexed(..., endurance=N)`` (or :meth:`ChipPool.check_endurance`
for several passes) refuses up front a pass that would take a chip past N cycles.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from labkit.deploy import endurance as wear
from labkit.nn import ChipTile, analog_layers, with_tiles

ProgressFn = Callable[[int, int, str], None]


def digest(x: np.ndarray) -> str:
    """A short hash of a tile's inputs (shape and values)."""
    a = np.ascontiguousarray(x, dtype=np.float64)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()[:24]


class Journal:
    """Per-tile partial sums of a deployment in a run store ``run`` (tables
    ``partial_sums.LAYER``: ``row_tile``, ``col_tile``, ``inputs_digest``, ``outputs``),
    plus those of an earlier run ``resumed`` (a :class:`labkit.store.LoadedRun`)."""

    def __init__(self, run=None, resumed=None):
        self.run, self._lock = run, threading.Lock()
        self._done: dict[tuple[str, int, int, str], np.ndarray] = {}
        self.reused = 0
        if resumed is not None:
            for table in resumed.tables:
                if table.startswith("partial_sums."):
                    layer = table.split(".", 1)[1]
                    p = resumed.points(table)
                    for r, c, d, y in zip(p["row_tile"], p["col_tile"], p["inputs_digest"], p["outputs"]):
                        self._done[(layer, int(r), int(c), str(d))] = np.asarray(y)

    def lookup(self, layer: str, r: int, c: int, inputs_digest: str) -> np.ndarray | None:
        """Outputs of a finished tile with these very inputs, or None."""
        y = self._done.get((layer, r, c, inputs_digest))
        if y is not None:
            self.reused += 1
            self.record(layer, r, c, inputs_digest, y)  # the new run holds every tile
        return y

    def record(self, layer: str, r: int, c: int, inputs_digest: str, y: np.ndarray) -> None:
        """Commit one finished tile's outputs (N, outputs)."""
        self._done[(layer, r, c, inputs_digest)] = y
        if self.run is None:
            return
        with self._lock:
            self.run.add_points(f"partial_sums.{layer}", row_tile=[r], col_tile=[c], inputs_digest=[inputs_digest],
                                outputs=y[None])
            self.run.store.flush()


@dataclass
class ChipLog:
    """What one chip did: tiles programmed onto it, program pulses, VMMs, seconds busy."""

    chip_id: str
    programmings: int = 0
    pulses: int = 0
    vmms: int = 0
    busy_s: float = 0.0
    tiles: list[str] = field(default_factory=list)


class ChipPool:
    """K chips, each a :class:`ChipTile` that is reprogrammed tile after tile.

    Across processes (emulated chips on many cores, or benches on many hosts) every
    process of a ``torch.distributed`` group holds the pool's chips ``k`` with
    ``k mod world == rank`` (``chips`` maps those indices to their tiles, ``size`` is K)
    and the layer outputs are summed over the group: each process runs its chips'
    tiles, the partial sums are the same as in one process with all K chips.
    """

    def __init__(self, chips: Sequence[ChipTile] | dict[int, ChipTile], size: int | None = None, group=None):
        local = dict(enumerate(chips)) if not isinstance(chips, dict) else dict(chips)
        if not local:
            raise ValueError("a chip pool needs at least one chip")
        self.size = len(local) if size is None else int(size)
        self.local, self.group = local, group
        self.chips = [local[k] for k in sorted(local)]
        self.logs = [ChipLog(c.chip_id) for c in self.chips]
        self._log = {k: log for k, log in zip(sorted(local), self.logs)}

    def __len__(self) -> int:
        return self.size

    @classmethod
    def distributed(cls, make_chip: Callable[[int], ChipTile], size: int) -> "ChipPool":
        """The pool of ``size`` chips of which this process of the default
        ``torch.distributed`` group holds chips ``rank, rank + world, ...``
        (``make_chip(k)`` builds chip ``k``'s tile)."""
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        return cls({k: make_chip(k) for k in range(rank, size, world)}, size, group=dist.group.WORLD)

    def record_in(self, folder) -> None:
        """Every programming of this process's chips goes to the chip's chip-state file
        in ``folder`` (``chipstate-CHIPID.json``; see :mod:`labkit.deploy.endurance`)."""
        for tile in self.chips:
            tile.state_path = wear.state_path(folder, tile.chip_id)

    def check_endurance(self, needs: dict[int, int], budget) -> dict[str, int]:
        """Cycles on record per chip id of this process's chips; EnduranceError if chip
        ``k`` would pass ``budget`` with ``needs[k]`` more cycles. Under a group every
        process raises when any one refuses (so none waits on the others); an unreadable
        or foreign chip-state file is refused the same way."""
        refused: BaseException | None = None
        used: dict[str, int] = {}
        try:
            used = wear.check([(self.local[k].backend, self.local[k].state_path, int(needs.get(k, 0)))
                               for k in sorted(self.local)], budget)
        except ValueError as exc:  # EnduranceError, or a UsageError about a chip-state file
            refused = exc
        if self.group is not None:
            import torch.distributed as dist

            flag = torch.tensor([0 if refused is None else 1])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            if refused is None and int(flag) == 1:
                refused = wear.EnduranceError("another process refused its chips (endurance budget or "
                                              "chip-state file); nothing was programmed")
        if refused is not None:
            raise refused
        return used

    def reduce(self, y: torch.Tensor) -> torch.Tensor:
        """Sum ``y`` over the processes of the group (identity in one process)."""
        if self.group is not None:
            import torch.distributed as dist

            dist.all_reduce(y, op=dist.ReduceOp.SUM, group=self.group)
        return y

    def run(self, jobs: Sequence, work: Callable[[ChipTile, ChipLog, object], object], first: int = 0) -> list:
        """``work(chip, log, job)`` for every job, job ``j`` on chip ``(first + j) mod K``,
        chips in parallel; results in job order. The first error stops the others."""
        out: list = [None] * len(jobs)
        errors: list[BaseException] = []
        K = self.size

        def lane(k: int) -> None:
            for j in range((k - first) % K, len(jobs), K):
                if errors:
                    return
                try:
                    out[j] = work(self.local[k], self._log[k], jobs[j])
                except BaseException as exc:  # re-raised in the caller's thread
                    errors.append(exc)
                    return

        lanes = [threading.Thread(target=lane, args=(k,), daemon=True) for k in sorted(self.local)]
        for t in lanes:
            t.start()
        for t in lanes:
            t.join()
        if errors:
            raise errors[0]
        return out


class MultiplexedTiles:
    """The tiles of one analog layer (``name``) run one after another on a
    :class:`ChipPool` (a ``LayerTiles``: see :mod:`labkit.nn.tiles`)."""

    def __init__(self, name: str, pool: ChipPool, journal: Journal | None = None,
                 progress: Callable[[str], None] | None = None, first: int = 0):
        self.name, self.pool, self.journal, self.progress = name, pool, journal, progress  # None: measure every pass
        self.first = first  # tile-plan index of the layer's first tile

    def outputs(self, layer, xt: torch.Tensor) -> torch.Tensor:
        op = layer.config.operating
        R, P = op.rows, op.outputs_per_tile
        N = xt.shape[1]
        weights = layer.tile_weights(pad=np.nan)
        jobs = [(r, c) for r in range(layer.row_tiles) for c in range(layer.col_tiles)]
        inputs = {r: xt[r * R:(r + 1) * R].t().detach().cpu() for r in range(layer.row_tiles)}
        digests = {r: digest(x.numpy()) for r, x in inputs.items()}

        def work(chip: ChipTile, log: ChipLog, job) -> np.ndarray:
            r, c = job
            done = None if self.journal is None else self.journal.lookup(self.name, r, c, digests[r])
            if done is not None:
                return done
            t0, vmm0 = time.monotonic(), chip.vmm_count
            summary = chip.set_weights(weights[r, c])
            y = chip.forward(inputs[r]).double().numpy()
            log.programmings += 1
            log.pulses += int(summary.get("pulses_total", 0))
            log.vmms += chip.vmm_count - vmm0
            log.busy_s += time.monotonic() - t0
            log.tiles.append(f"{self.name}[{r},{c}]")
            if self.journal is not None:
                self.journal.record(self.name, r, c, digests[r], y)
            if self.progress is not None:
                self.progress(f"{self.name}[{r},{c}] on {chip.chip_id}")
            return y

        y = torch.zeros(N, layer.col_tiles * P, dtype=torch.float64)
        for (r, c), yc in zip(jobs, self.pool.run(jobs, work, self.first)):
            if yc is not None:
                y[:, c * P:(c + 1) * P] += torch.as_tensor(yc)
        return self.pool.reduce(y)[:, : layer.out_features_].to(xt.dtype)


def placement(model: nn.Module, chips: int) -> list[int]:
    """The chip (0 to ``chips - 1``) of every tile of ``model``, in tile-plan order."""
    return [j % chips for j in range(tile_count(model))]


def chip_needs(model: nn.Module, chips: int, passes: int = 1) -> dict[int, int]:
    """Programmings (erase-and-program cycles) per chip ``k`` of ``chips`` for ``passes``
    passes over the network (:func:`placement`)."""
    needs = {k: 0 for k in range(chips)}
    for k in placement(model, chips):
        needs[k] += passes
    return needs


def multiplexed(model: nn.Module, pool: ChipPool, journal: Journal | None = None,
                progress: Callable[[str], None] | None = None, endurance: int | None = None) -> nn.Module:
    """``model`` built on the chips of ``pool``, time-multiplexed (parameters shared).
    ``endurance``: EnduranceError now, before any pulse, if a pass would take a chip past
    that many cycles (its chip-state file's, see :meth:`ChipPool.record_in`, plus its
    tiles of the pass)."""
    if endurance is not None:
        pool.check_endurance(chip_needs(model, pool.size), endurance)
    first, offsets = 0, {}
    for name, layer in analog_layers(model):
        offsets[name], first = first, first + layer.n_tiles
    return with_tiles(model, lambda name, layer: MultiplexedTiles(name, pool, journal, progress, offsets[name]))


def tile_count(model: nn.Module) -> int:
    """Tiles of every analog layer of ``model``."""
    return sum(m.n_tiles for _, m in analog_layers(model))


@torch.no_grad()
def evaluate_multiplexed(network: nn.Module, ds: Dataset) -> tuple[float, torch.Tensor]:
    """Accuracy of a multiplexed ``network`` on ``ds`` in one pass (the whole set as one
    batch, so every tile is programmed once) and its predictions."""
    if len(ds) == 0:
        raise ValueError("evaluate: the data set is empty")
    x, y = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))
    network.eval()
    pred = network(x).argmax(dim=1)
    return float((pred == y).double().mean()), pred


class _CountingTiles:
    """Model tiles that count the input vectors each layer's tiles receive."""

    def __init__(self, counts: dict, name: str):
        self.counts, self.name = counts, name

    def outputs(self, layer, xt: torch.Tensor) -> torch.Tensor:
        self.counts[self.name] = (xt.shape[1], layer.n_tiles)
        return layer.model_outputs(xt)


@torch.no_grad()
def tile_inputs(model: nn.Module, ds: Dataset) -> list[int]:
    """Input vectors per tile (tile-plan order) for one pass over ``ds``: one sample
    through the model tiles, times the samples (an upper bound: all-zero inputs are not
    sent to a chip)."""
    counts: dict = {}
    probe = with_tiles(model, lambda name, layer: _CountingTiles(counts, name))
    probe.eval()
    probe(ds[0][0].unsqueeze(0))
    return [per_sample * len(ds) for name, _ in analog_layers(model) for per_sample in
            [counts[name][0]] * counts[name][1]]


def chip_params(model: nn.Module, chip_ids: dict[int, str], size: int) -> dict[int, "TileParams | None"]:
    """For chip ``k`` of ``size`` (``chip_ids[k]`` its id), the parameters of a tile the
    network trained on that very chip's calibration (tile-plan placement), or None."""
    found: dict = {k: None for k in chip_ids}
    j = 0
    for _, layer in analog_layers(model):
        for t in range(layer.n_tiles):
            k = j % size
            if k in found and found[k] is None:
                tp = layer.tile_params(t)
                if tp.chip_id == chip_ids[k]:
                    found[k] = tp
            j += 1
    return found


def use_chip_readout(pool_tiles: dict, model: nn.Module, chip_ids: dict[int, str], size: int) -> None:
    """Give each chip tile the readout of its chip's calibration (gain per column, TDC
    bow) where the network trained on it; the datasheet's otherwise."""
    for k, tp in chip_params(model, chip_ids, size).items():
        if tp is not None and k in pool_tiles:
            pool_tiles[k].use_readout(tp)
