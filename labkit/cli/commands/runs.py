"""``labkit runs list|show|export``: browse the run store and export a run to HDF5."""

from __future__ import annotations

import argparse
import datetime as _dt

from labkit.store import LoadedRun, RunStore, default_store_path
from labkit.units import fmt

HELP = "list, show and export stored runs (the run store, --out FILE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="runs_command", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        # SUPPRESS: absent here must not overwrite what the parent parser already set.
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                       help="print one JSON object on stdout")
        p.add_argument("--out", metavar="DB", default=argparse.SUPPRESS,
                       help=f"run store file (default ${'{'}LABKIT_STORE{'}'} or ./labkit-runs.sqlite)")
        return p

    p = action("list", "list stored runs, oldest first")
    p.add_argument("--kind", help="only runs of this kind (e.g. characterize)")
    p.add_argument("--limit", type=int, default=None, help="only the last N runs")
    p = action("show", "metadata, data tables and result of one run")
    p.add_argument("run_id", metavar="ID", help="run id number, uid, or 'latest'")
    p = action("export", "write one run to an HDF5 file")
    p.add_argument("run_id", metavar="ID", help="run id number, uid, or 'latest'")
    p.add_argument("--hdf5", metavar="FILE", required=True, help="HDF5 file to write")
    parser.add_argument("--out", metavar="DB", default=None, help=argparse.SUPPRESS)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _duration(run: LoadedRun) -> str:
    d = run.duration_s
    return "-" if d is None else fmt(d, "s", 3)


def run(args, out) -> dict:
    if args.runs_command == "list" and args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit} must be >= 1")
    path = args.out or default_store_path()
    with RunStore(path, create=False) as store:
        if args.runs_command == "list":
            runs = store.list_runs(kind=args.kind, limit=args.limit)
            out.table([[r.id, r.kind, r.status, _when(r.started_at), _duration(r), r.chip_id,
                        r.backend_uri, sum(r.tables.values())] for r in runs],
                      header=["id", "kind", "status", "started", "duration", "chip", "backend", "points"])
            if not runs:
                out.print(f"no runs in {store.path}")
            return {"store": str(store.path), "runs": [_summary(r) for r in runs]}
        if args.runs_command == "show":
            r = store.load(args.run_id)
            rows = [["id", f"{r.id} ({r.uid})"], ["kind", r.kind], ["status", r.status + (
                f" ({r.reason})" if r.reason else "")], ["backend", r.backend_uri], ["chip", r.chip_id],
                ["started", _when(r.started_at)], ["finished", _when(r.finished_at)],
                ["duration", _duration(r)], ["host / pid", f"{r.host} / {r.pid}"],
                ["labkit", r.versions.get("labkit", "?")], ["seeds", r.seeds]]
            rows += [[f"settings.{k}", v] for k, v in r.settings.items()]
            rows += [[f"points.{t}", n] for t, n in r.tables.items()]
            rows += [[f"array.{name}", f"{a.dtype} {a.shape}"] for name, a in r.arrays.items()]
            rows += [[f"result.{k}", v] for k, v in r.result.items()]
            rows += [[f"provenance.{k}", _short(v)] for k, v in r.provenance.items()]
            out.table(rows, header=["field", "value"])
            d = r.to_dict()
            d["arrays"] = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in r.arrays.items()}
            return {"store": str(store.path), "run": d}
        # export
        r = store.load(args.run_id)
        written = store.export_hdf5(r.id, args.hdf5)
        out.print(f"run {r.id} ({r.kind}, {sum(r.tables.values())} points) -> {written}")
        return {"store": str(store.path), "run_id": r.id, "hdf5": str(written),
                "points": r.tables, "arrays": r.array_names}


def _summary(r: LoadedRun) -> dict:
    return {"id": r.id, "uid": r.uid, "kind": r.kind, "status": r.status, "reason": r.reason,
            "started_at": r.started_at, "finished_at": r.finished_at, "chip_id": r.chip_id,
            "backend_uri": r.backend_uri, "points": r.tables, "arrays": r.array_names}


def _short(value, width: int = 60) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."
