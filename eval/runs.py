"""Reading a train.py run folder (--out): its config, CSV logs, summary and the eval_*.json results that
eval.knn / eval.linear / eval.semisup write next to the checkpoint."""
from __future__ import annotations

import csv
import glob
import json
import os

from engine.errors import UsageError


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _csv(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def read_run(path: str) -> dict:
    """{'name', 'dir', 'config', 'train', 'epoch', 'knn', 'summary', 'evals'} of one run folder."""
    d = os.path.dirname(path) if path.endswith(".pt") else path
    if not os.path.isdir(d):
        raise UsageError(f"{path}: no such run folder")
    config = read_json(os.path.join(d, "config.json"))
    train = _csv(os.path.join(d, "train.csv"))
    if config is None and not train:
        raise UsageError(f"{path}: neither config.json nor train.csv; is it a train.py --out folder?")
    evals = {os.path.basename(p)[5:-5]: read_json(p) for p in sorted(glob.glob(os.path.join(d, "eval_*.json")))}
    return {"name": os.path.basename(os.path.normpath(d)), "dir": d, "config": config or {}, "train": train,
            "epoch": _csv(os.path.join(d, "epoch.csv")), "knn": _csv(os.path.join(d, "knn.csv")),
            "summary": read_json(os.path.join(d, "summary.json")) or {},
            "evals": {k: v for k, v in evals.items() if v is not None}}


def parse_runs(argv, doc: str, out_help: str):
    """The command line of eval.plot / eval.report: run folders and --out -> (args, [read_run(...)])."""
    import argparse
    from engine.errors import parser_error_one_line
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("runs", nargs="+", help="train.py --out folders")
    p.add_argument("--out", default=None, help=out_help)
    a = p.parse_args(argv)
    return a, [read_run(r) for r in a.runs]
