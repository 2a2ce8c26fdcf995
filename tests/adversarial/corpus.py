"""The bad-input corpus: every command, every option with a bound, every file format.

:func:`build` writes the hostile files into a folder and returns the cases. Each case
must be refused with one line and exit 2 before the chip is touched (``Case.touch``
marks the few that are refused only after measuring, by design: a result error).
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from tests.adversarial.harness import Case

BACKENDS_BAD = [
    "sim://3", "sim://?seed=1&seed=2", "sim://?bogus=1", "sim://?seed=abc", "sim://?seed=-1",
    "sim://?noise=2", "sim://?preset=zzz", "sim://?seed=1&&x", "gpib://x", "", "sim",
    "station:/dev/zero", "station:/nonexistent/bench.yaml", "station:", "station:{dir}",
    "station:{dupkeys}", "station:{deep}", "station:{big}", "station:{notyaml}",
    "station:{looser}", "station:{badport}",
]
INTS_BAD = ["-1", "0", "10000000000", "abc", "1.5", "nan"]
FLOATS_BAD = ["-1", "nan", "inf", "abc", "1e400"]


def _write_files(d: Path) -> dict[str, Path]:
    f: dict[str, Path] = {"dir": d}
    (d / "sub").mkdir(exist_ok=True)
    f["sub"] = d / "sub"

    def put(name: str, data: bytes | str) -> Path:
        p = d / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        f[name.rsplit(".", 1)[0]] = p
        return p

    # station YAML
    put("dupkeys.yaml", "name: a\nname: b\nboard:\n  url: loop://\n")
    put("deep.yaml", "name: x\nboard: " + "[" * 5000 + "]" * 5000 + "\n")
    put("big.yaml", "name: x\n# " + "x" * (64 << 20) + "\n")
    put("notyaml.yaml", "name: [unclosed\n  - : :\n")
    put("looser.yaml", "name: l\nboard:\n  url: socket://127.0.0.1:9\nlimits:\n  max_program_voltage_v: 99\n")
    put("badport.yaml", "name: p\nboard:\n  url: socket://127.0.0.1:1\n  timeout_s: 0.2\n")
    put("lowlimit.yaml", "name: low\nboard:\n  url: socket://127.0.0.1:9\nlimits:\n  max_program_voltage_v: 0.5\n")
    # weights npz
    rng = np.random.default_rng(0)
    good = rng.uniform(-1, 1, (16, 8))
    np.savez(d / "w_ok.npz", weights=good)
    f["w_ok"] = d / "w_ok.npz"
    variants = {
        "w_complex": good.astype(complex) + 1j, "w_timedelta": good.astype("m8[ns]"),
        "w_bool": good > 0, "w_str": good.astype(str), "w_nan": np.where(good > 0.9, np.nan, good),
        "w_inf": np.where(good > 0.9, np.inf, good), "w_1x1": np.array([[0.5]]), "w_3d": good[None],
        "w_1d": good.ravel(), "w_empty": np.zeros((0, 8)), "w_wide": rng.uniform(-1, 1, (16, 40)),
        "w_tall": rng.uniform(-1, 1, (17, 8)), "w_scalar": np.array(0.5), "w_big": good * 50,
        "w_u64": np.ones((16, 8), dtype=np.uint64) * (2**63),
    }
    for name, arr in variants.items():
        np.savez(d / f"{name}.npz", weights=arr)
        f[name] = d / f"{name}.npz"
    np.savez(d / "w_wrongkey.npz", w=good)
    f["w_wrongkey"] = d / "w_wrongkey.npz"
    np.save(d / "w_single.npy", good)
    f["w_single"] = d / "w_single.npy"
    obj = np.empty(2, dtype=object)
    obj[:] = [1, "x"]
    np.savez(d / "w_object.npz", weights=obj)
    f["w_object"] = d / "w_object.npz"
    put("w_garbage.npz", os.urandom(2048))
    put("w_empty_file.npz", b"")
    raw = (d / "w_ok.npz").read_bytes()
    put("w_truncated.npz", raw[: len(raw) // 2])
    # an npy header declaring a huge array inside a tiny zip
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (400000, 400000), }"
    header = header + " " * (118 - len(header)) + "\n"
    npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64
    with zipfile.ZipFile(d / "w_hugeheader.npz", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("weights.npy", npy)
    f["w_hugeheader"] = d / "w_hugeheader.npz"
    with zipfile.ZipFile(d / "w_bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as z:
        hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (16, 8000000), }"
        hdr = hdr + " " * (118 - len(hdr)) + "\n"
        z.writestr("weights.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode()
                   + bytes(16 * 8_000_000 * 8))
    f["w_bomb"] = d / "w_bomb.npz"
    # chip-state JSON
    put("cs_garbage.json", "{not json")
    put("cs_empty.json", "")
    put("cs_list.json", "[1, 2, 3]")
    put("cs_deep.json", "[" * 100000 + "]" * 100000)
    put("cs_wrongformat.json", json.dumps({"format": "something/9", "chip_id": "EMU-0000"}))
    put("cs_incomplete.json", json.dumps({"format": "labkit.chipstate/1", "chip_id": "EMU-0000"}))
    put("cs_big.json", json.dumps({"format": "labkit.chipstate/1", "pad": "x" * (80 << 20)}))
    # checkpoints
    put("ck_garbage.pt", os.urandom(4096))
    put("ck_empty.pt", b"")
    put("ck_text.pt", "hello")
    # calibration npz
    np.savez(d / "cal_wrong.npz", format=np.array("labkit.Calibration/1"), chip_id=np.array("EMU-0000"))
    f["cal_wrong"] = d / "cal_wrong.npz"
    np.savez(d / "cal_other.npz", something=np.zeros(3))
    f["cal_other"] = d / "cal_other.npz"
    put("cal_garbage.npz", os.urandom(1024))
    # data sets
    (d / "mnist_bad").mkdir(exist_ok=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (d / "mnist_bad" / name).write_bytes(b"\x00\x00\x08\x03" + struct.pack(">III", 2**31 - 1, 28, 28) + b"\0" * 64)
    f["mnist_bad"] = d / "mnist_bad"
    (d / "cifar_bad" / "cifar-10-batches-py").mkdir(parents=True, exist_ok=True)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (d / "cifar_bad" / "cifar-10-batches-py" / name).write_bytes(os.urandom(2500))
    f["cifar_bad"] = d / "cifar_bad"
    # stores
    put("store_garbage.sqlite", os.urandom(8192))
    return f


def _checkpoints(d: Path, f: dict[str, Path]) -> None:
    """Checkpoints with a real structure but hostile content (needs torch)."""
    import torch

    try:
        from labkit.train.networks import build
    except ImportError:  # the layout before the Seams issue
        from labkit.networks import build

    net = build("mlp")
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    base = {"format": "labkit-checkpoint", "version": 1, "model_name": "mlp", "state_dict": sd, "meta": {}}
    bad = {
        "ck_nokeys": {"format": "labkit-checkpoint", "version": 1},
        "ck_noname": {k: v for k, v in base.items() if k != "model_name"},
        "ck_unknownnet": {**base, "model_name": "resnet9000"},
        "ck_version": {**base, "version": 99},
        "ck_nan": {**base, "state_dict": {k: torch.full_like(v, float("nan")) for k, v in sd.items()}},
        "ck_shapes": {**base, "state_dict": {k: torch.zeros(3, 3) for k in sd}},
        "ck_missing": {**base, "state_dict": dict(list(sd.items())[:1])},
        "ck_meta": {**base, "meta": {"analog": {"config": {"bogus": 1}}}},
        "ck_list": [1, 2, 3],
    }
    for name, payload in bad.items():
        torch.save(payload, d / f"{name}.pt")
        f[name] = d / f"{name}.pt"

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(d / "PWNED"),))

    torch.save({"format": "labkit-checkpoint", "version": 1, "x": Evil()}, d / "ck_pickle.pt")
    f["ck_pickle"] = d / "ck_pickle.pt"


def build(d: Path) -> list[Case]:
    """Write the hostile files into ``d`` and return every case."""
    f = _write_files(d)
    _checkpoints(d, f)
    cases: list[Case] = []

    def add(kind: str, name: str, argv: list[str], **kw) -> None:
        cases.append(Case(f"{kind}: {name}", [str(a) for a in argv], kind=kind, **kw))

    store = ["--out", d / "runs.sqlite"]
    uris = [u.format(**{k: str(v) for k, v in f.items()}) for u in BACKENDS_BAD]
    for cmd, extra in (("info", []), ("characterize", ["--quick", *store]), ("calibrate", ["--quick", *store]),
                       ("program", [f["w_ok"], "--state", d / "cs.json"]), ("live", ["--frames", "1"]),
                       ("deploy", [f["ck_nan"]])):
        for u in uris:
            link_fault = u.endswith("badport.yaml") and cmd != "deploy"  # nothing listens: exit 4 (deploy
            # refuses its hostile checkpoint first)
            add(cmd, f"--backend {u!r}", [cmd, *extra, "--backend", u], codes=(4,) if link_fault else (2,))
    # characterize options
    for opt in ("--patterns", "--repeats", "--crosstalk-repeats", "--droop-levels", "--vg-points", "--seed"):
        for v in INTS_BAD:
            if opt == "--seed" and v in ("0", "10000000000"):
                continue
            add("characterize", f"{opt} {v}", ["characterize", "--quick", *store, opt, v])
    for v in ("abc", "-1e-6", "1", "0", "nan", "1 parsec"):
        add("characterize", f"--compliance {v}", ["characterize", "--quick", *store, "--compliance", v])
    for a, b in (("3", "1"), ("0", "50"), ("-5", "1"), ("nan", "1"), ("1", "1")):
        add("characterize", f"--vg {a} {b}", ["characterize", "--quick", *store, "--vg", a, b])
    for p in (d / "sub", d / "nope" / "r.png", "/proc/version"):
        add("characterize", f"--report {p}", ["characterize", "--quick", *store, "--report", p])
    for db in (d / "sub", d / "nope" / "x.sqlite", f["store_garbage"]):
        add("characterize", f"--out {db}", ["characterize", "--quick", "--out", db])
    # calibrate options
    for opt in ("--patterns", "--holdout", "--iterations", "--seed"):
        for v in INTS_BAD:
            if opt == "--seed" and v in ("0", "10000000000"):
                continue
            add("calibrate", f"{opt} {v}", ["calibrate", "--quick", *store, opt, v])
    for p in (d / "sub", d / "nope" / "c.npz"):
        add("calibrate", f"--file {p}", ["calibrate", "--quick", *store, "--file", p])
    # program: weights files, options, chip-state files
    for key in [k for k in f if k.startswith("w_") and k != "w_ok"]:
        add("weights npz", key, ["program", f[key], "--state", d / "cs.json"])
    add("weights npz", "missing file", ["program", d / "nope.npz", "--state", d / "cs.json"])
    add("weights npz", "a directory", ["program", d / "sub", "--state", d / "cs.json"])
    for v in ("1e-300", "0", "-0.01", "nan", "inf", "2", "abc"):
        add("program", f"--tolerance {v}", ["program", f["w_ok"], "--state", d / "cs.json", "--tolerance", v])
    for v in ("0", "1.5", "nan", "-1", "abc"):
        add("program", f"--headroom {v}", ["program", f["w_ok"], "--state", d / "cs.json", "--headroom", v])
    for v in INTS_BAD:
        add("program", f"--max-pulses {v}", ["program", f["w_ok"], "--state", d / "cs.json", "--max-pulses", v])
    for p in (d / "sub", d / "nope" / "cs.json", "/proc/version"):
        add("program", f"--state {p}", ["program", f["w_ok"], "--state", p])
    add("program", "--backend station with a voltage limit below the planner (its board unreachable)",
        ["program", f["w_ok"], "--state", d / "cs.json", "--backend", f"station:{f['lowlimit']}"], codes=(2, 4))
    add("program", "--refresh with weights", ["program", f["w_ok"], "--refresh", "--state", d / "cs.json"])
    add("program", "--refresh without a state file", ["program", "--refresh", "--state", d / "nope.json"])
    add("program", "neither weights nor --refresh", ["program"])
    add("program", "--algorithm bogus", ["program", f["w_ok"], "--algorithm", "bogus"])
    add("program", "--scheme bogus", ["program", f["w_ok"], "--scheme", "bogus"])
    for key in [k for k in f if k.startswith("cs_")]:
        add("chip-state JSON", key, ["program", "--refresh", "--state", f[key]])
    # train
    for opt, vals in (("--epochs", INTS_BAD), ("--batch-size", INTS_BAD), ("--subset", ["-1", "0", "abc"]),
                      ("--lr", FLOATS_BAD + ["0"]), ("--noise-std", FLOATS_BAD),
                      ("--noise-relative", FLOATS_BAD), ("--seed", ["-1", "abc"])):
        for v in vals:
            add("train", f"{opt} {v}", ["train", "--model", "mlp", "--epochs", "1", opt, v,
                                        "--save", d / "t.pt"])
    for key in [k for k in f if k.startswith("cal_")] + ["w_ok", "ck_garbage"]:
        add("calibration npz", key, ["train", "--model", "mlp", "--mode", "hw", "--calibration", f[key],
                                     "--epochs", "1", "--save", d / "t.pt"])
    add("calibration npz", "missing", ["train", "--model", "mlp", "--mode", "hw", "--calibration",
                                       d / "nope.npz", "--save", d / "t.pt"])
    add("train", "--model bogus", ["train", "--model", "bogus"])
    for p in (d / "sub", d / "nope" / "t.pt"):
        add("train", f"--out {p}", ["train", "--model", "mlp", "--epochs", "1", "--save", p])
    for key in [k for k in f if k.startswith("ck_")]:
        add("checkpoint", f"train --from {key}", ["train", "--model", "mlp", "--from", f[key], "--epochs", "1",
                                                  "--save", d / "t.pt"])
        add("checkpoint", f"deploy {key}", ["deploy", f[key]])
    add("checkpoint", "deploy missing", ["deploy", d / "nope.pt"])
    add("checkpoint", "deploy a directory", ["deploy", d / "sub"])
    for key in ("mnist_bad", "cifar_bad", "sub"):
        add("dataset", f"train --data {key}", ["train", "--model", "lenet5" if key != "cifar_bad" else "vgg",
                                              "--data", f[key], "--epochs", "1", "--save", d / "t.pt"])
    add("dataset", "train --data missing", ["train", "--model", "lenet5", "--data", d / "nope", "--save", d / "t.pt"])
    # deploy options (with a checkpoint that is itself fine would need training: use the bad one
    # so that option checks must come first or the file check refuses)
    for opt, vals in (("--batch-size", INTS_BAD), ("--passes", INTS_BAD), ("--reads", INTS_BAD),
                      ("--subset", ["-1", "0", "abc"]), ("--tolerance", ["1e-300", "0", "-1", "nan"]),
                      ("--seed", ["-1", "abc"])):
        for v in vals:
            add("deploy", f"{opt} {v}", ["deploy", f["ck_unknownnet"], opt, v])
    # demo
    for v in ("sim://?bogus=1", "gpib://x", "sim://3", "station:/dev/zero"):
        add("demo", f"--backend {v}", ["demo", "--quick", *store, "--backend", v])
    for v in ("-1", "abc"):
        add("demo", f"--seed {v}", ["demo", "--quick", *store, "--seed", v])
    add("demo", "--out a directory", ["demo", "--quick", "--out", d / "sub"])
    # runs
    for sub, args in (("show", ["999999"]), ("show", ["-1"]), ("show", ["abc"]), ("list", ["--limit", "-1"]),
                      ("list", ["--limit", "abc"]), ("export", ["1", "--hdf5", d / "nope" / "x.h5"])):
        add("runs", f"{sub} {' '.join(map(str, args))}", ["runs", sub, *args, "--out", d / "runs.sqlite"])
    for db in (f["store_garbage"], d / "sub", d / "nope" / "x.sqlite"):
        add("runs", f"list --out {db}", ["runs", "list", "--out", db])
    # live
    for opt, vals in (("--frames", ["0", "-1", "abc"]), ("--seconds", ["-1", "nan", "abc"]),
                      ("--interval", ["0", "-1"]), ("--sweep-levels", ["1", "-1", "10000000"]),
                      ("--repeats", ["0", "-1"])):
        for v in vals:
            add("live", f"{opt} {v}", ["live", "--frames", "1", opt, v])
    for a, b in (("0", "0"), ("100000", "100000"), ("-5", "10")):
        add("live", f"--size {a} {b}", ["live", "--frames", "1", "--size", a, b])
    for a, b in (("1", "0"), ("nan", "1"), ("abc", "1")):
        add("live", f"--levels {a} {b}", ["live", "--frames", "1", "--levels", a, b])
    add("live", "--screenshot into a missing folder", ["live", "--frames", "1", "--screenshot", d / "nope" / "s.png"])
    # sim serve
    for args in (["--chip", "bogus=1"], ["--chip", "seed=1"], ["--chip", "noise"], ["--faults", "bogus=1"],
                 ["--faults", "drop=2"], ["--baud", "-1"], ["--duration", "-1"], ["--seed", "-1"],
                 ["--station-out", d / "nope" / "b.yaml"], ["--station-out", d / "sub"]):
        add("sim serve", " ".join(map(str, args)), ["sim", "serve", "--duration", "0", *args])
    return cases
