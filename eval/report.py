"""A Markdown table of runs for docs/RESULTS.md: method, flags, epochs, kNN, linear probe, semi-supervised
and training images/s, from each run folder's config, logs and eval_*.json files.

    python -m eval.report runs/simclr runs/simclr_bsim [--out docs/RESULTS.md]
"""
from __future__ import annotations

import datetime
import os

from engine.errors import cli_main
from eval.runs import num, parse_runs

COLUMNS = ("run", "method", "flags", "epochs", "kNN k=20", "kNN k=200", "linear top-1", "semi-sup", "img/s")


def flags(cfg: dict) -> str:
    """The settings that tell runs apart."""
    out = [f"{cfg.get('arch', '?')} {cfg.get('res', '?')}px", f"{cfg.get('loader', '?')}",
           f"batch {cfg.get('batch_size', '?')}"]
    if cfg.get("bsim"):
        out.append(f"bsim {cfg.get('bsim_mode')} w={cfg.get('bsim_weight')}")
    if cfg.get("sepp"):
        out.append(f"sepp k={cfg.get('sepp_k')} t={cfg.get('sepp_threshold')}")
    if cfg.get("subset"):
        out.append(f"subset {cfg['subset']}")
    if (cfg.get("world") or 1) > 1:
        out.append(f"{cfg['world']} procs")
    return ", ".join(out)


def pct(x) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "-"


def row(run: dict) -> list[str]:
    cfg, ev, summ = run["config"], run["evals"], run["summary"]
    knn = ev.get("knn", {}).get("trained", {})
    k200 = knn.get("k200")
    if k200 is None:   # the training run's own monitor (k = --knn-k, on its subsets)
        last = [num(r["knn_top1"]) for r in run["knn"] if r.get("what") != "random-init" and num(r["knn_top1"])]
        k200 = last[-1] if last else None
    lin = ev.get("linear", {}).get("trained", {}).get("top1")
    semi = ", ".join(f"{v['fraction']:g}: {pct(v.get('trained', {}).get('top1'))}"
                     for k, v in sorted(ev.items()) if k.startswith("semisup_"))
    epochs = summ.get("epochs") or (len(run["epoch"]) or cfg.get("epochs"))
    img_s = summ.get("img_s")
    if img_s is None:
        xs = [num(r.get("img_s")) for r in run["train"][1:]]
        xs = [x for x in xs if x]
        img_s = sum(xs) / len(xs) if xs else None
    return [run["name"], cfg.get("method", "?"), flags(cfg), str(epochs), pct(knn.get("k20")), pct(k200), pct(lin),
            semi or "-", f"{img_s:.0f}" if img_s else "-"]


def table(runs: list) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    lines += ["| " + " | ".join(row(r)) + " |" for r in runs]
    return "\n".join(lines) + "\n"


@cli_main
def main(argv=None):
    a, runs = parse_runs(argv, __doc__, "write the table here (default: print it)")
    md = table(runs)
    if a.out:
        head = (f"<!-- python -m eval.report {' '.join(a.runs)} ({datetime.date.today()}) -->\n"
                "Accuracies in % on the test split; kNN weighted (T=0.07); img/s: training images per second "
                "(each as 2 views).\n\n")
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(head + md)
        print(f"table: {a.out}")
    else:
        print(md, end="")
    return md


if __name__ == "__main__":
    main()
