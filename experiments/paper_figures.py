"""Reproduce the paper's figures on the emulated chip (or on your own chips).

(a) SER per extraction method: for each chip (``--seeds``: emulated chips
    ``sim://?seed=N``), measure the calibration datasets, fit the naive, linear and
    model-based extractions and report the SER of each on held-out random patterns and
    on activation-like patterns, next to the noise floor of repeated measurements. The
    paper's claim: model-based extraction about doubles the SER of the ideal-model
    (naive) extraction and comes close to the noise floor.
(b) Accuracy per network and training mode (``--networks mlp lenet5``; none by default
    in ``--quick``): each network trained in software, hardware-aware through the
    calibrated chip model, and (where ``train_and_deploy.py`` offers it) chip-in-the-loop,
    then deployed: programmed onto emulated chips, one per 16x8 tile, and measured there.
    It calls :mod:`train_and_deploy` (the script beside this one).

What it writes into ``--out-dir`` (default ``paper-figures/``):
``runs.sqlite`` (every measurement, one run per chip and step), ``calibration-CHIP.npz``
per chip, ``ser_per_method.png`` and ``ser_per_method.csv`` (one row per chip),
``accuracy.png`` and ``accuracy.csv`` for (b), and ``figures.json`` with every number.

How to run it::

    python experiments/paper_figures.py --quick                     # (a) on 2 chips, ~10 s
    python experiments/paper_figures.py --seeds 0 1 2 3 4 --networks mlp lenet5
    python experiments/paper_figures.py --backend "sim://?preset=default&noise=0"  # an ablation
    python experiments/paper_figures.py --backend station:bench.yaml --networks none  # your chip

``--backend`` is a base URI: for ``sim://`` each seed is set on it; any other backend
is one chip, measured once (``--seeds`` then only sets the input-pattern seed).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import numpy as np

from labkit import open_backend
from labkit import calibration as cal
from labkit import characterize as ch
from labkit.backend import parse_uri
from labkit.cli import strict_json
from labkit.console import Console
from labkit.plots import save_png
from labkit.store import RunStore, sigterm_as_keyboard_interrupt

METHODS = ("naive", "linear", "model")
FAMILIES = {"holdout": "held-out random patterns", "activations": "activation-like patterns"}


def chip_uris(base: str, seeds) -> list[tuple[str, int]]:
    """``(uri, pattern seed)`` per chip: ``base`` with each seed set for ``sim://``, else ``base`` once."""
    scheme, _ = parse_uri(base)
    if scheme != "sim":
        return [(base, int(seeds[0]))]
    head, _, query = base.partition("?")
    opts = dict(parse_qsl(query, keep_blank_values=True))
    return [(f"{head}?{urlencode({**opts, 'seed': int(s)})}", 0) for s in seeds]


# ------------------------------------------------------------------------------------ (a)


def ser_per_method(chips, config: cal.CalibrationConfig, store: RunStore, out_dir: Path, out) -> list[dict]:
    """Calibrate every chip (one ``calibrate`` run each); one row of SERs (dB) per chip."""
    rows = []
    for uri, seed in chips:
        cfg = dataclasses.replace(config, seed=seed)
        with open_backend(uri) as backend:
            chip = backend.identity.chip_id
            out.info(f"(a) calibrating {chip} on {uri}")
            with sigterm_as_keyboard_interrupt(), store.run(
                    "calibrate", backend_uri=uri, chip_id=chip, settings=backend.settings,
                    provenance=ch.provenance(backend, uri), seeds={"patterns": seed}) as run:
                c = cal.calibrate(backend, cfg, run=run, progress=out.progress)
                c.backend_uri = uri
                saved = c.save(out_dir / f"calibration-{chip}.npz")
                run.put_result({"calibration_file": str(saved.resolve())})
        rep = c.report
        row = {"backend": uri, "chip_id": chip, "run_id": run.id, "calibration_file": str(saved)}
        for family in FAMILIES:
            for m in METHODS:
                row[f"{family}_{m}_db"] = rep[family][m]["ser_db"]
            floor = rep["noise_floor"].get(family)
            row[f"{family}_floor_db"] = floor["ser_db"] if floor else math.nan
        row["model_over_naive"] = rep["holdout"]["model"]["ser"] / rep["holdout"]["naive"]["ser"]
        rows.append(row)
    return rows


def ser_figure(rows: list[dict], path: Path) -> Path:
    """Bar chart: mean SER (dB) per method and the noise floor, one panel per pattern family;
    error bars: spread over chips; dots: each chip."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    names = [*METHODS, "floor"]
    labels = ["naive\n(ideal model)", "linear\n(least squares)", "model-based", "noise\nfloor"]
    colors = ["C3", "C1", "C2", "0.55"]
    for ax, (family, title) in zip(fig.subplots(1, 2, sharey=True), FAMILIES.items()):
        vals = np.array([[r[f"{family}_{n}_db"] for n in names] for r in rows], dtype=float)
        mean = np.nanmean(vals, axis=0)
        spread = np.nanstd(vals, axis=0) if len(rows) > 1 else None
        bars = ax.bar(range(len(names)), mean, yerr=spread, color=colors, capsize=4)
        for k in range(len(names)):
            ax.plot(np.full(len(rows), k) + np.linspace(-0.15, 0.15, len(rows)), vals[:, k], "k.", ms=4)
        ax.bar_label(bars, labels=[f"{v:.1f}" for v in mean], padding=3, fontsize=8)
        ax.set_xticks(range(len(names)), labels)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.axes[0].set_ylabel("SER (dB)")
    ratio = np.mean([r["model_over_naive"] for r in rows])
    fig.suptitle(f"weight extraction on {len(rows)} chip{'s' * (len(rows) > 1)}: model-based SER = "
                 f"{ratio:.1f} x naive (held-out random patterns)")
    return save_png(fig, path)


# ------------------------------------------------------------------------------------ (b)


def accuracy_figures(networks, args, ser_rows, store, out_dir: Path, out) -> dict:
    raise SystemExit("(b) needs experiments/train_and_deploy.py; run with --networks none")


# ------------------------------------------------------------------------------------ output


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def print_ser(out, rows: list[dict]) -> None:
    f = lambda v: f"{v:.1f}"  # noqa: E731
    table = [[r["chip_id"], *(f(r[f"holdout_{m}_db"]) for m in METHODS), f(r["holdout_floor_db"]),
              *(f(r[f"activations_{m}_db"]) for m in METHODS), f(r["activations_floor_db"]),
              f"{r['model_over_naive']:.2f}"] for r in rows]
    if len(rows) > 1:
        keys = [f"holdout_{m}_db" for m in METHODS] + ["holdout_floor_db"] + \
               [f"activations_{m}_db" for m in METHODS] + ["activations_floor_db"]
        table.append(["mean", *(f(np.mean([r[k] for r in rows])) for k in keys),
                      f"{np.mean([r['model_over_naive'] for r in rows]):.2f}"])
    out.print("(a) SER per extraction method (dB): held-out random patterns | activation-like patterns")
    out.table(table, header=["chip", "naive", "linear", "model", "floor", "naive", "linear", "model", "floor",
                             "model/naive"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="sim://", help="base backend URI (default sim://; seeds are set on it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="chip seeds (default 0 1 2; --quick 0 1)")
    parser.add_argument("--out-dir", default="paper-figures", help="folder for every output (default paper-figures)")
    parser.add_argument("--quick", action="store_true", help="small datasets and short training (same code)")
    parser.add_argument("--networks", nargs="+", default=None,
                        help="(b) networks to train and deploy: mlp lenet5 vgg, or none "
                             "(default mlp; none with --quick)")
    args = parser.parse_args(argv)

    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    networks = args.networks or (["none"] if args.quick else ["mlp"])
    networks = [] if networks == ["none"] else networks
    chips = chip_uris(args.backend, seeds)
    config = (cal.CalibrationConfig.quick() if args.quick else cal.CalibrationConfig()).validate()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = Console()
    figures: dict = {"backend": args.backend, "seeds": seeds}
    with RunStore(out_dir / "runs.sqlite") as store:
        rows = ser_per_method(chips, config, store, out_dir, out)
        figures["ser"] = rows
        figures["ser_png"] = str(ser_figure(rows, out_dir / "ser_per_method.png"))
        figures["ser_csv"] = str(write_csv(rows, out_dir / "ser_per_method.csv"))
        print_ser(out, rows)
        if networks:
            figures.update(accuracy_figures(networks, args, rows, store, out_dir, out))
    (out_dir / "figures.json").write_text(json.dumps(strict_json(figures), indent=1))
    out.print(f"figures in {out_dir}/: " + ", ".join(
        Path(v).name for k, v in figures.items() if k.endswith(("_png", "_csv"))) + ", figures.json, runs.sqlite")
    return figures


if __name__ == "__main__":
    sys.exit(main() and 0)
