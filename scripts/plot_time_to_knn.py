"""kNN accuracy against wall-clock minutes, our runs and lightly's (scripts/lightly_simclr.py) on one axis.

    .venv/bin/python scripts/plot_time_to_knn.py --ours runs/inette --lightly runs/lightly_inette --out knn_minutes.png

Ours: knn.csv's `minutes` (the training clock from the first step, the monitor's passes included); a run written
before that column existed is placed from train.csv instead (each logging window's images / img/s, which spans the
monitor at an epoch's end), and its legend says so. lightly: log.csv's train_s + knn_s, summed over the epochs.
"""
from __future__ import annotations

import argparse
import csv
import os


def rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ours(folder: str) -> tuple[list, list, bool]:
    """(minutes, kNN, placed from train.csv) at each trained kNN row."""
    knn = [r for r in rows(os.path.join(folder, "knn.csv")) if r.get("what", "trained") == "trained"]
    if knn and knn[0].get("minutes"):
        return [float(r["minutes"]) for r in knn], [float(r["knn_top1"]) for r in knn], False
    import json
    batch = json.load(open(os.path.join(folder, "config.json")))["batch_size"]
    ends, t, prev = {}, 0.0, None
    for r in rows(os.path.join(folder, "train.csv")):
        step, rate = int(r["step"]), float(r["img_s"])
        if prev is not None and rate > 0:
            t += (step - prev) * batch / rate
        prev, ends[int(r["epoch"])] = step, t
    return [ends[int(r["epoch"]) - 1] / 60 for r in knn], [float(r["knn_top1"]) for r in knn], True


def lightly(folder: str) -> tuple[list, list]:
    t, xs, ys = 0.0, [], []
    for r in rows(os.path.join(folder, "log.csv")):
        t += float(r["train_s"]) + float(r["knn_s"])
        xs.append(t / 60)
        ys.append(float(r["knn_top1"]))
    return xs, ys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ours", nargs="+", default=[], help="train.py run folders")
    p.add_argument("--lightly", nargs="+", default=[], help="scripts/lightly_simclr.py output folders")
    p.add_argument("--title", default="kNN top-1 against training minutes")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for folder in a.ours:
        x, y, placed = ours(folder)
        ax.plot(x, y, marker="o", label=f"ours: {os.path.basename(folder.rstrip('/'))}"
                + (" (from train.csv, before each monitor)" if placed else ""))
    for folder in a.lightly:
        ax.plot(*lightly(folder), marker="s", ls="--", label=f"lightly: {os.path.basename(folder.rstrip('/'))}")
    ax.set_xlabel("wall-clock minutes from the first step (kNN monitor included)")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title(a.title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(a.out)


if __name__ == "__main__":
    main()
