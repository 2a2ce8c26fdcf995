"""``labkit deploy``: program a trained network onto chips (one per tile) and measure its accuracy.

An ideal checkpoint is converted to analog tiles first (nominal chip parameters, input
scales from the training data); a hardware-aware checkpoint brings its own tiles. Every
tile is written by program-and-verify onto its own chip of ``--backend``
(``sim://?seed=N``: emulated chips N, N+1, ...; or comma-separated URIs, as many as
tiles), then the test set runs through the chips' VMMs with the digital glue.
"""

from __future__ import annotations

import time

HELP = "program a checkpoint onto chips (one per tile) and measure its accuracy there"


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint written by labkit train")
    parser.add_argument("--backend", default="sim://", help="chips: sim://?seed=N (one emulated chip per tile) "
                        "or comma-separated URIs (default: sim://)")
    parser.add_argument("--data", metavar="DIR", default=None, help="data set directory (MNIST IDX / CIFAR-10)")
    parser.add_argument("--subset", type=int, default=None, help="evaluate at most N test examples")
    parser.add_argument("--seed", type=int, default=0, help="seed of data splits and subsets (default 0)")
    parser.add_argument("--batch-size", type=int, default=256, help="test examples per inference batch")
    parser.add_argument("--passes", type=int, default=1,
                        help="measure the test set this many times and report the mean accuracy")
    parser.add_argument("--tolerance", type=float, default=None, help="program-and-verify tolerance (0.01)")
    parser.add_argument("--reads", type=int, default=1,
                        help="VMMs per input, crossing times averaged (readout noise / sqrt(N); default 1)")


def run(args, out) -> dict:
    from labkit.nn.analog import analog_layers
    from labkit.deploy.deployment import chip_uris, deploy, open_chips
    from labkit.train.networks import dataset_for
    from labkit.program.programming import ProgramConfig
    from labkit.train.checkpoint import load_checkpoint
    from labkit.train.training import hardware_aware

    for name in ("subset", "batch_size", "passes", "reads"):
        v = getattr(args, name)
        if v is not None and (int(v) != v or v < 1):
            raise ValueError(f"--{name.replace('_', '-')}={v!r}: expected a positive whole number")
    program = ProgramConfig() if args.tolerance is None else ProgramConfig(tolerance=args.tolerance)
    t0 = time.monotonic()
    ck = load_checkpoint(args.checkpoint)
    split = dataset_for(ck.model_name, args.data, subset=args.subset, seed=args.seed)
    model = ck.build()
    if not analog_layers(model):
        model = hardware_aware(model, split.train, None, seed=args.seed)
    layers = analog_layers(model)
    n = sum(m.n_tiles for _, m in layers)
    chip_uris(args.backend, n)  # too few chips: error before anything is opened
    recorded = [c for _, m in layers for c in m.tile_chips]
    with open_chips(args.backend, n) as chips:
        ids = [b.identity.chip_id for b in chips]
        trained_on = [c for c in recorded if c and c not in ("nominal",) and not c.startswith("spread-")]
        if trained_on and trained_on != ids[: len(trained_on)]:
            out.info("note: the network was trained on the calibrations of other chips "
                     f"({trained_on[0]}, ...) than these ({ids[0]}, ...)")
        with out.progress("programming tiles", n) as bar:
            dep = deploy(model, chips, program, progress=lambda i, total, chip: bar.advance(1, chip), reads=args.reads)
        t_prog = time.monotonic() - t0
        accs = []
        for p in range(args.passes):
            with out.progress(f"inference pass {p + 1}", len(split.test)) as bar:
                last = [0]

                def report(done, total, text, bar=bar, last=last):
                    bar.advance(done - last[0], text)
                    last[0] = done
                accs.append(dep.evaluate(split.test, args.batch_size, progress=report))
        summary = dep.summary()
    accuracy = sum(accs) / len(accs)
    result = {
        "model": ck.model_name, "mode": ck.mode, "accuracy": accuracy, "samples": len(split.test),
        "passes": accs, "reads": args.reads, "backend": args.backend, "checkpoint": args.checkpoint, "tiles": n,
        "chips": summary.pop("chips"), "programming": summary, "vmms": dep.vmm_count,
        "software_accuracy": ck.meta.get("accuracy"), "program_seconds": t_prog,
        "seconds": time.monotonic() - t0,
    }
    out.table([("model", ck.model_name), ("mode", ck.mode), ("tiles (chips)", n),
               ("accuracy on chips", f"{accuracy:.4f}"), ("test samples", len(split.test)),
               ("programming rms error", f"{summary['rms_rel_error']:.4f}" if summary["rms_rel_error"] else "-")],
              header=("", ""))
    return result
