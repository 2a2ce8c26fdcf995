"""The whole workflow on emulated chips, from nothing to a measured network.

1. characterize one chip (the standard suite, PNG report);
2. open one chip per tile of the low-resolution MLP and calibrate each (naive, linear
   and model-based extraction; SER against the noise floor);
3. train the MLP ideally (software accuracy), deploy it onto the chips;
4. fine-tune it hardware-aware through each tile's calibrated model, deploy it onto the
   same chips (program-and-verify), evaluate it there;
5. report: SER per method, programming precision and pulses, accuracies; a PNG summary.

Everything measured goes to the run store (one run per step, plus a ``demo`` run holding
the summary). ``DemoConfig.quick()`` is the reduced mode CI runs: fewer samples and
epochs, the same code path.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labkit import measure as ch
from labkit.nn import AnalogConfig, TrainingNoise, tile_plan
from labkit.backend import open_backend
from labkit.calibrate import CalibrationConfig
from labkit.deploy.deployment import calibrate_tile, deploy, open_chips
from labkit.train.networks import DEFAULTS, build, dataset_for
from labkit.store import RunStore
from labkit.train.training import evaluate, hardware_aware, train


@dataclass(frozen=True)
class DemoConfig:
    chips: str = "sim://?seed=100"  # one emulated chip per tile: seeds 100, 101, ...
    seed: int = 0
    subset: int | None = None  # at most N train and test examples
    ideal_epochs: int = 60
    hw_epochs: int = 100
    hw_lr: float = 1e-3
    hw_percentile: float = 95.0  # input scales: longer pulses for the MLP's small margins
    # on programmed states: the chips are reprogrammed with the network anyway, and the
    # model then predicts programmed tiles (docs/physics.md, section 3.2)
    calibration: CalibrationConfig = CalibrationConfig.quick(fit_iterations=60, programmed_states=2)
    characterization: ch.SuiteConfig = ch.SuiteConfig()
    passes: int = 3  # test-set measurements averaged per deployment

    @classmethod
    def quick(cls, **changes) -> "DemoConfig":
        base = cls(subset=400, ideal_epochs=30, hw_epochs=10, passes=1,
                   calibration=CalibrationConfig.quick(fit_iterations=30, programmed_states=2),
                   characterization=ch.SuiteConfig.quick())
        return dataclasses.replace(base, **changes)


def _programming(summaries: list[dict]) -> dict:
    """The ``labkit program`` fields over all tiles (pulse median and p95: cell-weighted
    median of the tiles' medians and worst tile p95)."""
    cells = np.array([s["cells"] for s in summaries], dtype=float)
    rms = np.array([s["rms_rel_error"] or 0.0 for s in summaries])
    total = cells.sum()
    order = np.argsort([s["pulses_median"] for s in summaries])
    cum = np.cumsum(cells[order])
    median_tile = summaries[order[np.searchsorted(cum, total / 2)]]
    return {
        "cells": int(total),
        "rms_rel_error": float(np.sqrt((cells * rms**2).sum() / total)),
        "max_rel_error": float(max(s["max_rel_error"] or 0.0 for s in summaries)),
        "within_tolerance_fraction": float((cells * [s["within_tolerance_fraction"] for s in summaries]).sum() / total),
        "pulses_median": float(median_tile["pulses_median"]),
        "pulses_p95": float(max(s["pulses_p95"] for s in summaries)),
        "pulses_max": int(max(s["pulses_max"] for s in summaries)),
        "failed_cells": int(sum(s["failed_cells"] for s in summaries)),
        "tiles": len(summaries),
    }


def run_demo(store: RunStore, config: DemoConfig = DemoConfig(), out=None, report_dir: Path | None = None) -> dict:
    """Run the whole workflow; returns the demo's JSON object."""
    info = out.info if out is not None else (lambda *_: None)
    progress = out.progress if out is not None else ch.no_progress
    t_start = time.monotonic()
    torch.manual_seed(config.seed)
    report_dir = Path(report_dir or store.path.parent).resolve()
    result: dict = {"chips": config.chips}

    # 1. characterize one chip
    first_chip = _first_uri(config.chips)
    with open_backend(first_chip) as b:
        with store.run("characterize", backend_uri=first_chip, chip_id=b.identity.chip_id,
                       settings=b.settings, provenance=b.provenance()) as run:
            info(f"[1/4] characterizing {b.identity.chip_id}")
            char = ch.run_standard(b, config.characterization, run=run, progress=progress)
            summary = char.summary()
            from labkit.ui.plots import characterization_report

            char_png = characterization_report(char, report_dir / f"demo-characterization-run{run.id}.png")
    result["characterization"] = {"run_id": run.id, "report": str(char_png),
                                  "noise_floor_ser_db": summary["noise_floor_ser_db"],
                                  "crosstalk_mean_v": summary["crosstalk_mean_v"],
                                  "droop_fraction": summary["droop_fraction"]}

    # 2. data, ideal network, one chip per tile
    split = dataset_for("mlp", seed=config.seed, subset=config.subset)
    d = DEFAULTS["mlp"]
    net = build("mlp")
    info(f"[2/4] training the MLP ideally on {len(split.train)} images ({split.source})")
    train(net, split.train, split.test, config.ideal_epochs, lr=d["lr"], batch_size=d["batch_size"], seed=config.seed)
    software = evaluate(net, split.test)
    n_tiles = sum(k for _, k in tile_plan(net))
    with open_chips(config.chips, n_tiles) as chips:
        info(f"[3/4] calibrating {n_tiles} chips (one per tile)")
        tiles, reports = [], []
        with progress("calibrating chips", n_tiles) as bar:
            for b in chips:
                tile, report = calibrate_tile(b, config.calibration, store=store, uri=config.chips)
                tiles.append(tile)
                reports.append(report)
                bar.advance()
        ser_db = {k: float(np.median([r["ser_db"][k] for r in reports])) for k in ("naive", "linear", "model")}
        floor_db = float(np.median([r["noise_floor_ser_db"] for r in reports]))
        # hw training noise as the chips measured it: a floor plus a part growing with the output
        noise = AnalogConfig(noise=TrainingNoise(noise_std_s=float(np.median([r["noise_floor_s"] for r in reports])),
                                                 noise_relative=float(np.median([r["noise_relative"] for r in reports]))))

        info("[4/4] deploying the ideal and the hardware-aware network")
        ideal_analog = hardware_aware(net, split.train, None, AnalogConfig(), seed=config.seed)
        dep_ideal = deploy(ideal_analog, chips)
        ideal_deployed = float(np.mean([dep_ideal.evaluate(split.test) for _ in range(config.passes)]))
        hw = hardware_aware(net, split.train, tiles, noise, config.hw_percentile, seed=config.seed)
        with progress("hw-aware training", config.hw_epochs) as bar:
            train(hw, split.train, split.test, config.hw_epochs, lr=config.hw_lr, batch_size=d["batch_size"],
                  seed=config.seed, progress=lambda *_: bar.advance())
        dep_hw = deploy(hw, chips)
        hw_deployed = float(np.mean([dep_hw.evaluate(split.test) for _ in range(config.passes)]))
        programming = _programming([t.summary for t in dep_hw.tiles])

    result.update(
        ser_db=ser_db,
        noise_floor_ser_db=floor_db,
        programming=programming,
        accuracy={"software": software, "ideal_deployed": ideal_deployed, "hw_deployed": hw_deployed},
        samples=len(split.test),
        tiles=n_tiles,
        seconds=time.monotonic() - t_start,
    )
    with store.run("demo", backend_uri=config.chips, settings={"config": repr(config)}) as run:
        png = summary_figure(result, report_dir / f"demo-summary-run{run.id}.png")
        result.update(run_id=run.id, report=str(png))
        run.put_result(result)
    return result


def _first_uri(spec: str) -> str:
    return spec.split(",")[0].strip()


def summary_figure(result: dict, path: Path) -> Path:
    """PNG: SER per extraction method against the noise floor, and the accuracies."""
    from labkit.ui.plots import _figure, save_png

    fig = _figure(9, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    names = ["naive", "linear", "model"]
    ax1.bar(names, [result["ser_db"][k] for k in names], color=["#999", "#69c", "#2a7"])
    ax1.axhline(result["noise_floor_ser_db"], color="k", ls="--", label="noise floor")
    ax1.set_ylabel("SER (dB)")
    ax1.set_title("weight extraction (median over chips)")
    ax1.legend(loc="lower right")
    acc = result["accuracy"]
    keys = ["software", "ideal_deployed", "hw_deployed"]
    ax2.bar(["software\n(ideal)", "ideal net\non chips", "hw-aware net\non chips"], [100 * acc[k] for k in keys],
            color=["#999", "#c66", "#2a7"])
    ax2.set_ylim(max(0, 100 * min(acc.values()) - 10), 100)
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title(f"MLP, 4x4 digits, {result['tiles']} chips")
    return save_png(fig, path)
