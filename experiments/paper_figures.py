"""Reproduce the paper's figures on the emulated chip (or on your own chips).

(a) SER per extraction method: for each chip (``--seeds``: emulated chips
    ``sim://?seed=N``), measure the calibration datasets, fit the naive, linear and
    model-based extractions and report the SER of each on held-out random patterns and
    on activation-like patterns, next to the noise floor of repeated measurements. The
    paper's claim: model-based extraction about doubles the SER of the ideal-model
    (naive) extraction and comes close to the noise floor.
(b) Accuracy per network and training mode (only with ``--networks mlp lenet5 ...``:
    minutes): each network trained in software (ideal), then deployed onto chips, one per
    16x8 tile (programmed by program-and-verify, the test set run through their VMMs);
    fine-tuned hardware-aware through each chip's calibrated model and deployed again;
    then fine-tuned ``--in-loop`` epochs with the chips in the loop. It calls
    ``main()`` of ``train_and_deploy.py`` (the script beside this one), on emulated chips
    ``sim://?seed=100, 101, ...`` or the chips of ``--deploy-backend``.

What it writes into ``--out-dir`` (default ``paper-figures/``):
``runs.sqlite`` (every measurement, one run per chip and step), ``calibration-CHIP.npz``
per chip, ``ser_per_method.png`` and ``ser_per_method.csv`` (one row per chip),
``accuracy.png`` and ``accuracy.csv`` for (b), and ``figures.json`` with every number.

How to run it::

    python experiments/paper_figures.py --quick                     # (a) on 2 chips, ~10 s
    python experiments/paper_figures.py --quick --networks mlp      # and (b) for the MLP, ~30 s
    python experiments/paper_figures.py --seeds 0 1 2 3 4 --networks mlp lenet5
    python experiments/paper_figures.py --backend "sim://?crosstalk=0"          # an ablation
    python experiments/paper_figures.py --backend station:bench.yaml            # (a) on your chip

``--backend`` is a base URI: for ``sim://`` each seed is set on it; any other backend
is one chip, measured once (``--seeds`` then only sets the input-pattern seed). (b) on
real chips: ``--deploy-backend station:a.yaml,station:b.yaml,...`` (one chip per tile).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import numpy as np

from labkit import open_backend
from labkit import calibrate as cal
from labkit.backend import parse_uri
from labkit.cli import strict_json
from labkit.ui.console import Console
from labkit.ui.plots import save_png
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
                    provenance=backend.provenance(), seeds={"patterns": seed}) as run:
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
        vals[np.isinf(vals)] = np.nan  # no noise (noise=0): the floor is unbounded, not drawn
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


MODES = {  # column -> (label, key in train_and_deploy's result)
    "software": ("software\n(ideal training)", "ideal_software"),
    "ideal_deployed": ("ideal training\non chips", "ideal_deployed"),
    "hw_model": ("hardware-aware\n(model)", "hw_software"),
    "hw_deployed": ("hardware-aware\non chips", "hw_deployed"),
    "in_loop_deployed": ("chip-in-the-loop\non chips", "in_loop_deployed"),
}
DEPLOY_SEED = 100  # (b) deploys onto emulated chips 100, 101, ... (one per tile), apart from (a)'s chips
QUICK_TRAINING = ["--subset", "300", "--ideal-epochs", "30", "--hw-epochs", "5", "--passes", "1",
                  "--cal-iterations", "20", "--threads", "1"]


def accuracy_per_network(networks, chips: str, in_loop: int, quick: bool, out) -> list[dict]:
    """Train, calibrate the chips, deploy and measure each network through
    ``train_and_deploy.py`` (beside this script); one row of accuracies per network.
    ``chips``: ``sim://?seed=N`` (chips N, N+1, ...) or comma-separated URIs, one per tile."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import train_and_deploy  # noqa: E402  (the script beside this one)

    argv = ["--backend", chips, "--models", *networks, "--in-loop", str(in_loop)] + (QUICK_TRAINING if quick else [])
    out.info(f"(b) train_and_deploy.py {' '.join(argv)}")
    with contextlib.redirect_stdout(sys.stderr):  # its own table goes with its log lines
        results = train_and_deploy.main(argv)
    rows = []
    for r in results:
        if "skipped" in r:
            out.info(f"(b) {r['model']} skipped: {r['skipped']}")
            continue
        row = {"network": r["model"], "dataset": r["dataset"], "tiles": r["tiles"], "test_samples": r["samples"]}
        row.update({col: float(r.get(key, math.nan)) for col, (_, key) in MODES.items()})
        rows.append(row)
    return rows


def accuracy_figure(rows: list[dict], path: Path) -> Path:
    """Grouped bars: test accuracy of each network in each training mode (software and on chips)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modes = [m for m in MODES if any(math.isfinite(r[m]) for r in rows)]
    fig = Figure(figsize=(max(7.0, 1.5 + 0.9 * len(rows) * len(modes)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(modes)
    for k, m in enumerate(modes):
        acc = [100 * r[m] for r in rows]
        bars = ax.bar(np.arange(len(rows)) + (k - (len(modes) - 1) / 2) * width, acc, width,
                      label=MODES[m][0].replace("\n", " "), color=f"C{k}")
        ax.bar_label(bars, labels=[f"{a:.1f}" for a in acc], padding=2, fontsize=7)
    ax.set_xticks(range(len(rows)), [f"{r['network']}\n({r['tiles']} tiles)" for r in rows])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("accuracy per network and training mode\n(deployed: one chip per 16x8 tile)")
    return save_png(fig, path)


def print_accuracy(out, rows: list[dict]) -> None:
    out.print("(b) test accuracy per network and training mode (%)")
    out.table([[r["network"], r["tiles"], r["test_samples"],
                *("-" if math.isnan(r[m]) else f"{100 * r[m]:.1f}" for m in MODES)] for r in rows],
              header=["network", "tiles", "samples", *(MODES[m][0].replace("\n", " ") for m in MODES)])


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
    parser.add_argument("--networks", nargs="+", default=[], choices=["mlp", "lenet5", "vgg"],
                        help="(b) networks to train and deploy (default: none, (a) only)")
    parser.add_argument("--deploy-backend", default=None,
                        help="(b) chips, one per tile: URI,URI,... (default: --backend with seeds 100, 101, ...)")
    parser.add_argument("--in-loop", type=int, default=1, help="(b) epochs of chip-in-the-loop fine-tuning (0: none)")
    args = parser.parse_args(argv)

    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
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
    if args.networks:
        deploy_chips = args.deploy_backend or (chip_uris(args.backend, [DEPLOY_SEED])[0][0]
                                               if parse_uri(args.backend)[0] == "sim" else None)
        if deploy_chips is None:
            parser.error("(b) on a non-sim backend needs --deploy-backend URI,URI,... (one chip per tile)")
        acc = accuracy_per_network(args.networks, deploy_chips, args.in_loop, args.quick, out)
        figures["accuracy"] = acc
        if acc:
            figures["accuracy_png"] = str(accuracy_figure(acc, out_dir / "accuracy.png"))
            figures["accuracy_csv"] = str(write_csv(acc, out_dir / "accuracy.csv"))
            print_accuracy(out, acc)
    else:
        out.info("(b) skipped: add --networks mlp lenet5 for accuracy per network and training mode")
    (out_dir / "figures.json").write_text(json.dumps(strict_json(figures), indent=1))
    out.print(f"figures in {out_dir}/: " + ", ".join(
        Path(v).name for k, v in figures.items() if k.endswith(("_png", "_csv"))) + ", figures.json, runs.sqlite")
    return figures


if __name__ == "__main__":
    sys.exit(main() and 0)
