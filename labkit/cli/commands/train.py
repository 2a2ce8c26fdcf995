"""``labkit train``: train a network ideally, hardware-aware, or with the chip in the loop.

- ``--mode ideal``: plain floating-point training.
- ``--mode hw``: the network (trained ideally first, or ``--from`` a checkpoint) is
  converted to analog tiles whose chip parameters come from ``--calibration`` files (one
  file for every tile, or one file per tile in tile order), or are sampled from the
  datasheet spread of a chip; then it is fine-tuned through the tile physics.
- ``--mode in-loop``: the network (``--from`` a checkpoint, else trained ideally) is
  programmed onto chips of ``--backend`` (one per tile) and fine-tuned with forward
  passes measured there; the reported accuracy is measured on the chips.

Run it under ``torchrun --nproc_per_node=N -m labkit.cli train ...`` for data-parallel
training (gloo); rank 0 writes the checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from labkit.cli import options
from labkit.train.networks import DEFAULTS, NETWORKS, build, dataset_for

HELP = "train a network: ideal, hardware-aware (hw) or chip-in-the-loop (in-loop); writes a checkpoint"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, choices=sorted(NETWORKS), help="network to train")
    parser.add_argument("--mode", default="ideal", choices=("ideal", "hw", "in-loop"), help="training mode")
    parser.add_argument("--calibration", action="append", metavar="FILE", default=None,
                        help="calibration file of a chip (hw, in-loop): once for every tile, or repeated once per "
                             "chip the network will run on (tile j on chip j mod K, as labkit deploy --chips K "
                             "places it; K = the number of tiles: one per tile in tile order)")
    parser.add_argument("--from", dest="start", metavar="CHECKPOINT", default=None,
                        help="start from this checkpoint instead of training ideally first")
    options.add(parser, "backend", backend="chips for in-loop: sim://?seed=N (one emulated chip per tile) or "
                                           "comma-separated URIs (default sim://)")
    parser.add_argument("--epochs", type=options.count(1, 100_000), default=None, help="epochs of this mode's training")
    parser.add_argument("--lr", type=options.number(0, 10, "a learning rate", open_low=True), default=None,
                        help="learning rate")
    parser.add_argument("--batch-size", type=options.count(1, 1_000_000), default=None,
                        help="examples per step (per process)")
    options.add(parser, "data", "subset", "seed", subset="use at most N train and N test examples",
                seed="seed (initialization, shuffling, tile sampling; default 0)")
    parser.add_argument("--noise-std", type=float, default=None, metavar="S",
                        help="readout noise per column in hw training, s (default 4e-9)")
    parser.add_argument("--noise-relative", type=float, default=None, metavar="FRACTION",
                        help="hw training: a further readout noise proportional to each column's output "
                             "(a calibration's noise_relative, e.g. 0.014; default 0)")
    parser.add_argument("--save", metavar="CHECKPOINT", default=None, type=options.output_file("checkpoint"),
                        help="checkpoint to write (default MODEL-MODE.pt)")


def _positive(name: str, value, integer: bool = True):
    if value is None:
        return None
    ok = math.isfinite(value) and value > 0 and (not integer or int(value) == value)
    if not ok:
        raise ValueError(f"{name}={value!r}: expected a positive {'whole ' if integer else ''}number")
    return value


def _read_calibrations(args) -> list:
    """The TileParams of every ``--calibration`` file, read (and checked) before any training."""
    from labkit.nn import TileParams

    for f in args.calibration or []:
        if not Path(f).is_file():
            raise FileNotFoundError(f"calibration file {f} does not exist")
    return [TileParams.from_calibration(f) for f in args.calibration or []]


def _tiles(args, network, config, params):
    """Tile parameters for hw / in-loop: from the calibrations read, else the datasheet spread."""
    from labkit.nn import tile_plan

    n = sum(k for _, k in tile_plan(network, config))
    if not params:
        return _spread(n, config, args.seed)
    if len(params) == 1:
        return params[0]
    if len(params) > n:
        raise ValueError(f"{len(params)} calibration files for a network of {n} tiles; give at most one per tile")
    ids = [q.chip_id for q in params]
    twice = next((c for c in ids if ids.count(c) > 1), None)
    if twice is not None and len(params) < n:
        raise ValueError(f"the calibration files name chip {twice} twice; give one file per chip the network runs on")
    # K chips: tile j runs on chip j mod K (labkit deploy --chips K places tiles so)
    return [params[j % len(params)] for j in range(n)]


def _spread(n, config, seed):
    from labkit.nn import ChipSpread

    spread = ChipSpread()
    return [spread.sample(config.operating, seed=seed * 100_003 + i) for i in range(n)]


def run(args, out) -> dict:
    from labkit.nn import AnalogConfig, TrainingNoise, analog_layers
    from labkit.train.checkpoint import load_checkpoint, save_checkpoint
    from labkit.train.training import evaluate, hardware_aware, init_distributed, is_main_process, train, train_in_loop

    for name in ("epochs", "batch_size", "subset"):
        _positive(f"--{name.replace('_', '-')}", getattr(args, name))
    _positive("--lr", args.lr, integer=False)
    if args.noise_std is not None and not (math.isfinite(args.noise_std) and args.noise_std >= 0):
        raise ValueError(f"--noise-std={args.noise_std!r}: expected a number >= 0 (s)")
    if args.noise_relative is not None and not (0 <= args.noise_relative < 1):
        raise ValueError(f"--noise-relative={args.noise_relative!r}: expected a fraction in [0, 1)")
    if args.calibration and args.mode == "ideal":
        raise ValueError("--calibration applies to --mode hw or in-loop, not ideal")
    calibrations = _read_calibrations(args)
    distributed = init_distributed()
    t_start = time.monotonic()
    torch.manual_seed(args.seed)
    defaults = DEFAULTS[args.model]
    split = dataset_for(args.model, args.data, subset=args.subset, seed=args.seed)
    batch = args.batch_size or defaults["batch_size"]

    def progress(label):
        def report(epoch, epochs, entry):
            acc = entry.get("test_accuracy")
            out.info(f"{label} epoch {epoch}/{epochs}: loss {entry['loss']:.4f}"
                     + (f", test accuracy {acc:.4f}" if acc is not None else ""))
        return report

    # ------------------------------------------------------------ the starting network
    net, start_mode, history = None, None, []
    if args.start:
        ck = load_checkpoint(args.start)
        if ck.model_name != args.model:
            raise ValueError(f"checkpoint {args.start} holds a {ck.model_name!r} network, not {args.model!r}")
        net, start_mode = ck.build(), ck.mode
    noise = {k: v for k, v in (("noise_std_s", args.noise_std), ("noise_relative", args.noise_relative)) if v is not None}
    config = AnalogConfig(noise=TrainingNoise(**noise))
    if net is None:
        net = build(args.model)
        epochs = args.epochs if (args.mode == "ideal" and args.epochs) else defaults["epochs"]
        lr = args.lr if (args.mode == "ideal" and args.lr) else defaults["lr"]
        res = train(net, split.train, split.test, epochs, lr=lr, batch_size=batch, seed=args.seed,
                    progress=progress("ideal"))
        history += [dict(h, mode="ideal") for h in res["history"]]
        start_mode = "ideal"
    result: dict
    mode = args.mode
    if mode == "ideal":
        if args.start:  # continue training the checkpoint
            res = train(net, split.train, split.test, args.epochs or defaults["epochs"],
                        lr=args.lr or defaults["lr"], batch_size=batch, seed=args.seed, progress=progress("ideal"))
            history += [dict(h, mode="ideal") for h in res["history"]]
        accuracy = evaluate(net, split.test)
        extra = {}
    elif mode == "hw":
        spread = False
        if analog_layers(net) and args.calibration:
            raise ValueError("--calibration with an analog checkpoint: start --from an ideal checkpoint")
        if not analog_layers(net):
            spread = not args.calibration
            net = hardware_aware(net, split.train, _tiles(args, net, config, calibrations), config, seed=args.seed)
        epochs = args.epochs or max(1, defaults["epochs"] // 2)
        hook = None
        if spread:  # no chip known: a new draw of the spread every epoch
            from labkit.nn import ChipSpread, resample_tiles

            def hook(epoch):
                resample_tiles(net, ChipSpread(), seed=args.seed * 1000 + epoch)
        res = train(net, split.train, split.test, epochs, lr=args.lr or defaults["lr"] / 3, batch_size=batch,
                    seed=args.seed, progress=progress("hw"), epoch_hook=hook, lr_schedule="cosine")
        history += [dict(h, mode="hw") for h in res["history"]]
        accuracy = evaluate(net, split.test)
        extra = {"tiles": sum(m.n_tiles for _, m in analog_layers(net)),
                 "calibrations": len(args.calibration or [])}
    else:  # in-loop
        from labkit.deploy.deployment import deploy, open_chips

        if distributed:
            raise ValueError("--mode in-loop runs in one process (the chips are one set); drop torchrun")
        if not analog_layers(net):
            tiles = _tiles(args, net, config, calibrations) if calibrations else None
            net = hardware_aware(net, split.train, tiles, config, seed=args.seed)
        n = sum(m.n_tiles for _, m in analog_layers(net))
        epochs = args.epochs or 1
        with open_chips(args.backend, n) as chips:
            with out.progress("programming tiles", n) as bar:
                dep = deploy(net, chips, progress=lambda i, total, chip: bar.advance(1, chip))
            before = dep.evaluate(split.test)
            out.info(f"deployed: accuracy on chips {before:.4f} before in-loop fine-tuning")
            res = train_in_loop(dep, split.train, split.test, epochs, lr=args.lr or defaults["lr"] / 10,
                                batch_size=batch, seed=args.seed, progress=progress("in-loop"))
            accuracy = res["accuracy"]
            extra = {"tiles": n, "accuracy_before": before, "backend": args.backend,
                     "chips": [t.chip_id for t in dep.tiles], "programming": dep.summary(),
                     "vmms": dep.vmm_count}
            extra["programming"].pop("chips", None)
        history += [dict(h, mode="in-loop") for h in res["history"]]
    path = Path(args.save or f"{args.model}-{mode}.pt")
    meta = {"mode": mode, "start_mode": start_mode, "accuracy": accuracy, "samples": len(split.test),
            "dataset": split.source, "seed": args.seed}
    if is_main_process():
        save_checkpoint(path, args.model, net, meta)
    result = {"model": args.model, "mode": mode, "accuracy": accuracy, "samples": len(split.test),
              "train_samples": len(split.train), "checkpoint": str(path), "start": start_mode,
              "seconds": time.monotonic() - t_start, "distributed": distributed,
              "history": history, **extra}
    out.table([("model", args.model), ("mode", mode), ("accuracy", f"{accuracy:.4f}"),
               ("test samples", len(split.test)), ("checkpoint", str(path))], header=("", ""))
    return result
