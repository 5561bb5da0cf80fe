"""Training curves of one or several runs as a PNG: loss, learning rate, images/s and kNN accuracy.

    python -m eval.plot runs/simclr                         # -> runs/simclr/curves.png
    python -m eval.plot runs/simclr runs/simclr_bsim --out compare.png     # several runs, one figure
    python -m eval.plot --embedding runs/simclr/last.pt      # the test set's features in 2-D (eval/embedding.py)
"""
from __future__ import annotations

import os
import sys

from engine.errors import UsageError, cli_main
from eval.runs import num, parse_runs

PANELS = (("loss", "train loss"), ("lr", "learning rate"), ("img_s", "images/s"), ("knn", "kNN top-1 (%)"))


def plot_runs(runs: list, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for run in runs:
        label = f"{run['name']} ({run['config'].get('method', '?')})"
        steps = [num(r["step"]) for r in run["train"]]
        for ax, (key, title) in zip(axes.flat, PANELS):
            if key == "knn":
                rows = [r for r in run["knn"] if num(r.get("knn_top1")) is not None]
                trained = sorted((num(r["epoch"]), num(r["knn_top1"])) for r in rows if r.get("what") != "random-init")
                init = [(num(r["epoch"]), num(r["knn_top1"])) for r in rows if r.get("what") == "random-init"]
                if trained:
                    line, = ax.plot(*zip(*trained), marker="o", label=label)
                    if init:
                        ax.plot(*zip(*init), marker="x", ls="", color=line.get_color(),
                                label=f"{run['name']} random init")
                ax.set_xlabel("epoch")
            else:
                ys = [num(r.get(key)) for r in run["train"]]
                xy = [(x, y) for x, y in zip(steps, ys) if x is not None and y is not None]
                if xy:
                    ax.plot(*zip(*xy), label=label, lw=1)
                ax.set_xlabel("step")
            ax.set_title(title, fontsize=10)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@cli_main
def main(argv=None):
    if any(x.startswith("--embedding") for x in (sys.argv[1:] if argv is None else argv)):   # the embedding's picture (eval/embedding.py)
        from eval.embedding import main as embedding_main
        return embedding_main(argv)
    a, runs = parse_runs(argv, __doc__, "PNG path (default: RUN/curves.png for one run, compare.png)")
    if not any(r["train"] for r in runs):
        raise UsageError("no train.csv rows in " + ", ".join(a.runs) + ": nothing to plot")
    out = a.out or (os.path.join(runs[0]["dir"], "curves.png") if len(runs) == 1 else "compare.png")
    plot_runs(runs, out)
    print(f"curves: {out}")
    return out


if __name__ == "__main__":
    main()
