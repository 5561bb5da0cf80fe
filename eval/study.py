"""A comparison study: methods x variants x seeds, each run trained and then evaluated (weighted kNN at
k = 20 and 200, linear probe), summarised as mean +- std per (method, variant), the difference to that
method's baseline with the paired t-test over shared seeds (Holm-corrected) and a plain verdict, the per-run
rows, and a bar chart.

    python -m eval.study --config configs/fashion_study.yaml --methods simclr,moco \
        --variants base,bsim,sepp,bsim+sepp --seeds 0,1,2 --out runs/study --parallel 3
    python -m eval.study --config configs/fashion_demo.yaml --variants base,sepp \
        --variant "keep0.7=--sepp --sepp-keep 0.7" --extra "--val-split 10000"

Variants: base (the method alone), bsim (+ --bsim), sepp (+ semantic positives mined once, before training,
with the encoder of the base run of the same method and seed: a pre-trained encoder, as the SePP paper
mines; its training time is the pre-training cost the table reports), bsim+sepp (both), and any
--variant NAME="TRAIN FLAGS" (an ablation: its flags added to the method's; with --sepp it mines with the
base run's encoder unless the flags name --sepp-encoder or --sepp-pairs). The base run is
always part of the grid. A run whose two evaluations are written is skipped, so a study continues where it
stopped, in a later session or on another machine (copy the output folder); --summarise writes the tables
of the runs evaluated so far and trains nothing. A variant that mines with the base run is held against
base2x as well as base (where base2x is in the grid): twice the base's epochs, about what the variant and its
miner train together. Runs of a study trained with --val-split (in the config or --extra) are scored on that
validation split, never on the test split.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engine.errors import parser_error_one_line
from engine.errors import UsageError, cli_main
from eval.runs import read_json
from eval.stats import holm, mean_std, paired, verdict, welch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("base", "base2x", "bsim", "sepp", "bsim+sepp")
METRICS = (("knn20", "kNN k=20"), ("knn200", "kNN k=200"), ("linear", "linear top-1"))


@dataclass
class Run:
    method: str
    variant: str
    seed: int
    folder: str
    base: "Run | None" = None          # the run whose encoder mines this run's semantic positives
    result: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}-{self.variant}-s{self.seed}"


def plan(a) -> list[Run]:
    """Every run of the grid, base runs first (a sepp run waits for its base run's checkpoint)."""
    runs = {}
    for v in ("base",) + tuple(x for x in a.variants if x != "base"):
        for m in a.methods:
            for s in a.seeds:
                r = Run(m, v, s, os.path.join(a.out, "runs", f"{m}-{v}-s{s}"))
                r.base = runs.get((m, "base", s)) if mines_with_base(a, v) else None
                runs[(m, v, s)] = r
    return list(runs.values())


def variant_flags(a, variant: str) -> list[str]:
    """train.py flags of a variant: the built-in ones, or those of --variant NAME=FLAGS. base2x: the base method
    at twice the epochs (the compute-fair control for sepp, whose miner is a base run)."""
    if variant in a.custom:
        return shlex.split(a.custom[variant])
    if variant == "base2x":
        return ["--epochs", str(2 * a.epochs)]
    return (["--bsim"] if "bsim" in variant else []) + (["--sepp"] if "sepp" in variant else [])


def units(a, variant: str) -> float:
    """A run's training in base runs' epochs (the ETA's and the compute column's unit)."""
    return 2.0 if variant == "base2x" else 1.0


def mines_with_base(a, variant: str) -> bool:
    f = variant_flags(a, variant)
    return "--sepp" in f and not {"--sepp-encoder", "--sepp-pairs"} & set(f)


def train_cmd(a, r: Run) -> list[str]:
    cmd = [sys.executable, os.path.join(ROOT, "train.py")] + (["--config", a.config] if a.config else [])
    cmd += ["--method", r.method, "--seed", str(r.seed), "--out", r.folder, "--resume", "auto", "--no-progress",
            "--knn-every", str(a.curve_every or -1)]
    flags = variant_flags(a, r.variant)
    if r.base is not None:   # a fixed encoder (the base run's) mines once, at the start of the run
        flags += ["--sepp-encoder", os.path.join(r.base.folder, "last.pt")]
    # --extra wins over a variant's flags, except base2x's epochs (twice those of --extra's or the config's)
    return cmd + (flags + shlex.split(a.extra) if r.variant != "base2x" else shlex.split(a.extra) + flags)


def eval_cmds(a, r: Run) -> list[list[str]]:
    ck = os.path.join(r.folder, "last.pt")
    n = ["--n-test", str(a.eval_test)] if a.eval_test else []
    return [[sys.executable, "-m", "eval.knn", "--checkpoint", ck, "--k", "20,200", "--no-progress",
             "--json", os.path.join(r.folder, "eval_knn.json")] + n
            + (["--n-train", str(a.eval_train)] if a.eval_train else []),
            [sys.executable, "-m", "eval.linear", "--checkpoint", ck, "--epochs", str(a.linear_epochs),
             "--batch-size", str(a.linear_batch_size), "--no-progress",
             "--json", os.path.join(r.folder, "eval_linear.json")] + n
            + (["--n-train", str(a.eval_train)] if a.eval_train else [])]


EVALS = ("eval_knn.json", "eval_linear.json")


def done(r: Run) -> bool:
    return all(os.path.isfile(os.path.join(r.folder, f)) for f in EVALS)


def execute(a, r: Run, env: dict) -> dict:
    """Train and evaluate one run, skipping what is done: training that finished (summary.json; otherwise
    train.py --resume auto goes on from its last checkpoint, mid-epoch included) and each evaluation whose
    result is written. Its output goes to RUN/study.log; the seconds spent, to RUN/study_run.json."""
    if done(r):
        return {"skipped": True, **(read_json(os.path.join(r.folder, "study_run.json")) or {})}
    if r.base is not None and not os.path.isfile(os.path.join(r.base.folder, "last.pt")):
        return {"error": f"its base run {r.base.name} has no checkpoint"}
    os.makedirs(r.folder, exist_ok=True)
    times = read_json(os.path.join(r.folder, "study_run.json")) or {}   # what earlier attempts spent
    steps = [("train_s", train_cmd(a, r), "summary.json")] + [
        (f"eval{k}_s", c, f) for k, (c, f) in enumerate(zip(eval_cmds(a, r), EVALS))]
    with open(os.path.join(r.folder, "study.log"), "a") as log:
        for what, cmd, result in steps:
            if os.path.isfile(os.path.join(r.folder, result)):
                continue
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            t = time.perf_counter()
            p = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
            times[what] = times.get(what, 0.0) + time.perf_counter() - t
            with open(os.path.join(r.folder, "study_run.json"), "w") as f:
                json.dump(times, f)
            if p.returncode:
                return {"error": f"{what[:-2]} exited {p.returncode} (see {os.path.join(r.folder, 'study.log')})"}
    out = {"train_s": times.get("train_s"), "eval_s": times.get("eval0_s", 0.0) + times.get("eval1_s", 0.0)}
    with open(os.path.join(r.folder, "study_run.json"), "w") as f:
        json.dump(times | out, f)
    return out


def time_left(a, pending: list[Run], finished: list[Run]) -> float | None:
    """Seconds the pending runs will take, from the runs finished in this session: the same method and variant's
    mean, else the method's per training unit (units()) times the run's units, else all runs'."""
    spent = [(r, r.result["train_s"] + r.result["eval_s"]) for r in finished
             if not r.result.get("skipped") and not r.result.get("error") and r.result.get("train_s")]
    if not spent:
        return None

    def mean(xs):
        return sum(xs) / len(xs) if xs else None
    per_unit = mean([s / units(a, r.variant) for r, s in spent])
    total = 0.0
    for p in pending:
        same = mean([s for r, s in spent if (r.method, r.variant) == (p.method, p.variant)])
        method = mean([s / units(a, r.variant) for r, s in spent if r.method == p.method])
        total += same if same is not None else (method or per_unit) * units(a, p.variant)
    return total


def _hm(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def run_all(a, runs: list[Run]):
    """Up to --parallel runs at a time (one GPU or the CPU shared); a sepp run waits for its base run."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if a.parallel > 1:   # the CPU's threads shared between the runs side by side
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // a.parallel))
    futures = {}

    finished = []

    def job(r: Run):
        if r.base is not None:
            futures[r.base.name].result()
        t = time.perf_counter()
        r.result = execute(a, r, env)
        finished.append(r)
        state = "skipped (evaluated before)" if r.result.get("skipped") else r.result.get("error") or "done"
        left = time_left(a, [x for x in runs if x not in finished], finished)
        eta = f"; about {_hm(left / a.parallel)} left" if left is not None and len(finished) < len(runs) else ""
        print(f"[study] {len(finished)}/{len(runs)} {r.name}: {state} ({time.perf_counter() - t:.0f} s){eta}",
              flush=True)
        return r.result

    with ThreadPoolExecutor(max_workers=a.parallel) as pool:
        for r in runs:   # base runs are submitted first, so a waiting sepp run never holds up its base run
            futures[r.name] = pool.submit(job, r)
        for r in runs:
            r.result = futures[r.name].result()


def scores(r: Run) -> dict:
    knn, lin = read_json(os.path.join(r.folder, "eval_knn.json")), read_json(os.path.join(r.folder, "eval_linear.json"))
    if not knn or not lin:
        return {}
    if knn.get("test_subset", "?") != lin.get("test_subset", "?"):   # both from eval/subset.py since 2026-12-02
        print(f"[study] {r.name}: kNN scored {knn.get('test_subset')}, the probe {lin.get('test_subset')}: "
              "left out; delete its eval_*.json and run again", flush=True)
        return {}
    return {"knn20": knn["trained"]["k20"], "knn200": knn["trained"]["k200"], "linear": lin["trained"]["top1"],
            "n_test": lin["trained"]["n"]}


def summarise(a, runs: list[Run]) -> dict:
    rows = [{"method": r.method, "variant": r.variant, "seed": r.seed, "folder": r.folder, **scores(r),
             "train_s": r.result.get("train_s"), "eval_s": r.result.get("eval_s"), "error": r.result.get("error")}
            for r in runs]
    groups, tests = [], []
    for m in a.methods:
        base = [x for x in rows if x["method"] == m and x["variant"] == "base" and "linear" in x]
        twice = [x for x in rows if x["method"] == m and x["variant"] == "base2x" and "linear" in x]
        for v in ("base",) + tuple(x for x in a.variants if x != "base"):
            got = [x for x in rows if x["method"] == m and x["variant"] == v and "linear" in x]
            if not got:
                continue
            g = {"method": m, "variant": v, "seeds": len(got)}
            # a variant that mines with the base run is also held against base2x: twice the base's epochs, about
            # what the variant and its miner train together
            refs = [] if v == "base" else [(n, ref) for n, ref in (("base", base), ("base2x", twice))
                                           if ref and (n == "base" or mines_with_base(a, v))]
            for key, _ in METRICS:
                g[key] = mean_std([x[key] for x in got])
                for name, ref in refs:   # a variant and its reference share their seeds: paired by seed
                    t = paired({x["seed"]: x[key] for x in ref}, {x["seed"]: x[key] for x in got})
                    tests.append({"method": m, "variant": v, "against": name, "metric": key, **t,
                                  "p_welch": welch([x[key] for x in ref], [x[key] for x in got])["p"]})
            # end-to-end training time (train.py's wall clock, set-up included, evaluations apart); the fastest
            # seed's, since a run that shares its machine or is paused only ever takes longer
            train = [x["train_s"] for x in got if x["train_s"] is not None]
            g["train_s"] = min(train) if train else None
            groups.append(g)
    for t, adjusted in zip(tests, holm([t["p"] for t in tests])):   # the family: every test of the study
        t["p_holm"], t["verdict"] = adjusted, verdict(t | {"p_holm": adjusted}, key="p_holm")
    return {"rows": rows, "groups": groups, "tests": tests}


def _p(p: float) -> str:
    return "-" if p != p else "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(a, s: dict, split: str, sha: str) -> str:
    fmt = lambda ms: f"{ms[0]:.2f} ± {ms[1]:.2f}"   # noqa: E731
    lines = [f"Command: `{a.command}`  ", f"Git SHA: `{sha}`; scored on the {split} split; "
             f"{time.strftime('%Y-%m-%d')}.", "",
             "| method | variant | seeds | " + " | ".join(n for _, n in METRICS)
             + " | train s (fastest seed) | compute s (x base) |",
             "|---|---|---|" + "---|" * len(METRICS) + "---|---|"]
    base_s = {g["method"]: g["train_s"] for g in s["groups"] if g["variant"] == "base"}
    for g in s["groups"]:
        tr = f"{g['train_s']:.0f}" if g["train_s"] is not None else "-"
        miner = base_s.get(g["method"]) if mines_with_base(a, g["variant"]) else 0.0   # SePP's miner: a base run
        base = base_s.get(g["method"])
        total = (f"{g['train_s'] + miner:.0f}" + (f" ({(g['train_s'] + miner) / base:.1f}x)" if base else "")
                 if g["train_s"] is not None and miner is not None else "-")
        lines.append(f"| {g['method']} | {g['variant']} | {g['seeds']} | "
                     + " | ".join(fmt(g[k]) for k, _ in METRICS) + f" | {tr} | {total} |")
    mining = [v for v in a.variants if mines_with_base(a, v)]
    if mining:
        lines += ["", "SePP's positives are mined once, before training, with the base run's encoder of the same "
                  "method and seed: that pre-training is extra compute of "
                  + ", ".join(f"{m} {t:.0f} s" for m, t in base_s.items() if t) + " per seed (one base run), "
                  f"shared by {', '.join(mining)}."]
    if a.custom:
        lines += ["", "Variants: " + "; ".join(f"{n} = `{f}`" for n, f in a.custom.items()) + "."]
    if s.get("left_out"):
        lines += ["", "Summarised from the runs evaluated so far; left out, not evaluated: "
                  f"{', '.join(s['left_out'])}."]
    names = dict(METRICS)
    lines += ["", f"Tests: the paired t-test over the seeds a variant shares with its reference (the mean of the "
              f"per-seed differences); p (Holm): corrected by Holm's method over all {len(s['tests'])} tests of this "
              "table; the verdict is on the corrected p < 0.05. Welch's p (the runs taken as independent) beside."]
    for ref, title in (("base", "Differences to the method's base (variant - base):"),
                       ("base2x", "Against base2x, the compute-fair control of the variants that mine with a base "
                        "run (variant - base2x):")):
        tests = [t for t in s["tests"] if t["against"] == ref]
        if not tests:
            continue
        lines += ["", title, "", "| method | variant (pairs) | metric | difference | p | p (Holm) | p (Welch) | "
                  "verdict |", "|---|---|---|---|---|---|---|---|"]
        for t in tests:
            lines.append(f"| {t['method']} | {t['variant']} ({t['n']} pairs) | {names[t['metric']]} | "
                         f"{t['diff']:+.2f} | {_p(t['p'])} | {_p(t['p_holm'])} | {_p(t['p_welch'])} | "
                         f"{t['verdict']} |")
    lines += ["", "Runs:", "", "| run | " + " | ".join(n for _, n in METRICS) + " | train s | eval s |",
              "|---|" + "---|" * (len(METRICS) + 2)]
    for x in s["rows"]:
        val = " | ".join(f"{x[k]:.2f}" if k in x else "-" for k, _ in METRICS)
        num = lambda v: f"{v:.0f}" if v is not None else "-"   # noqa: E731
        err = f" ({x['error']})" if x["error"] else ""
        lines.append(f"| {x['method']}-{x['variant']}-s{x['seed']}{err} | {val} | {num(x['train_s'])} | "
                     f"{num(x['eval_s'])} |")
    return "\n".join(lines) + "\n"


def curves(a, runs: list[Run], path: str, title: str):
    """The kNN monitor's curves (--curve-every): one panel per method, the mean over seeds per variant."""
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, len(a.methods), figsize=(5 * len(a.methods), 3.4), squeeze=False)
    for ax, m in zip(axes[0], a.methods):
        for v in ("base",) + tuple(x for x in a.variants if x != "base"):
            points = {}
            for r in runs:
                p = os.path.join(r.folder, "knn.csv")
                if (r.method, r.variant) != (m, v) or not os.path.isfile(p):
                    continue
                with open(p) as f:
                    for row in csv.DictReader(f):
                        if row.get("what") == "trained":
                            points.setdefault(int(row["epoch"]), []).append(float(row["knn_top1"]))
            if points:
                ep = sorted(points)
                ax.plot(ep, [np.mean(points[e]) for e in ep], marker=".", label=v)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("kNN top-1 % (monitor subset)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def chart(s: dict, path: str, title: str):
    """One panel per metric: a group of bars per method (one per variant), mean with std error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    methods = list(dict.fromkeys(g["method"] for g in s["groups"]))
    variants = list(dict.fromkeys(g["variant"] for g in s["groups"]))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4), squeeze=False)
    width = 0.8 / max(1, len(variants))
    for ax, (key, label) in zip(axes[0], METRICS):
        for k, v in enumerate(variants):
            got = {g["method"]: g[key] for g in s["groups"] if g["variant"] == v}
            x = np.arange(len(methods)) + (k - (len(variants) - 1) / 2) * width
            ax.bar(x, [got.get(m, (np.nan, 0))[0] for m in methods], width,
                   yerr=[got.get(m, (np.nan, 0))[1] for m in methods], capsize=3, label=v)
        lo = min((g[key][0] - g[key][1] for g in s["groups"]), default=0)
        ax.set_ylim(max(0, lo - 5), None)
        ax.set_xticks(np.arange(len(methods)), methods)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("top-1 %")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embeddings(a, runs: list[Run]) -> list[tuple[str, str]]:
    """Per training method, the test set's embedding of the first seed's base run beside each add-on's
    (eval/embedding.py): study_embedding_<method>.png. -> (path, the projection used) per picture."""
    import torch

    from eval.embedding import embedding_figure
    out, seed = [], min(a.seeds)
    for m in a.methods:
        got = [r for r in runs if (r.method, r.seed) == (m, seed) and os.path.isfile(os.path.join(r.folder, "last.pt"))]
        if len(got) < 2 or got[0].variant != "base":   # the base beside the add-ons, or no picture
            continue
        path = os.path.join(a.out, f"study_embedding_{m}.png")
        try:   # a picture that fails is said, and the study's table still comes
            used = embedding_figure([(f"{m} {r.variant} (seed {seed})", os.path.join(r.folder, "last.pt"))
                                     for r in got], path, n=a.embedding_n, method=a.embedding_method,
                                    device="cuda" if torch.cuda.is_available() else "cpu")
        except Exception as e:
            print(f"[study] embedding of {m} skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        out.append((path, used))
    return out


def csv_list(s: str, flag: str, kind=str, choices=None) -> list:
    try:
        out = [kind(x.strip()) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} {s}: expected a comma-separated list of {kind.__name__}")
    bad = [x for x in out if choices is not None and x not in choices]
    if not out or bad:
        raise UsageError(f"{flag} {s}: {'unknown ' + ', '.join(map(str, bad)) if bad else 'empty'}"
                         + (f" (choose from {', '.join(choices)})" if choices else ""))
    return out


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--config", default=None, help="train.py's YAML preset for every run")
    p.add_argument("--methods", default="simclr,moco")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                   help="an ablation variant: train.py flags added to the method's (repeatable; run with the others)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--extra", default="", help="more train.py flags for every run, one string (they win)")
    p.add_argument("--out", default="runs/study")
    p.add_argument("--parallel", type=int, default=1, help="runs side by side (on one GPU, or the CPU)")
    p.add_argument("--summarise", action="store_true", help="write the tables and charts from the runs already "
                   "evaluated under --out (and the embedding pictures, unless --embedding-n 0); train and evaluate "
                   "nothing (the others are named and left out)")
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--linear-batch-size", type=int, default=256, help="the linear probe's batch (its lr per 256)")
    p.add_argument("--curve-every", type=int, default=0, help="the kNN monitor every N epochs of each run (train.py "
                   "--knn-every, on the config's --knn-train/--knn-test subsets), drawn as curves (0: none)")
    p.add_argument("--eval-train", type=int, default=0, help="training images for kNN/probe (0: all)")
    p.add_argument("--eval-test", type=int, default=0, help="images scored (0: the whole split)")
    p.add_argument("--embedding-n", type=int, default=2000, help="test images in the embedding pictures of the "
                   "first seed's base beside each add-on (0: no picture)")
    p.add_argument("--embedding-method", default="auto", help="the pictures' projection: auto (UMAP where "
                   "umap-learn is installed, else t-SNE, else PCA) | umap | tsne | pca")
    return p


def parse(argv=None):
    """The study's flags, checked (one error line for a bad one)."""
    from models.methods import METHODS
    a = build_parser().parse_args(argv)
    a.command = shlex.join(["python", "-m", "eval.study"] + (sys.argv[1:] if argv is None else list(argv)))
    a.methods = csv_list(a.methods, "--methods", choices=tuple(METHODS))
    a.custom = {}
    for v in a.variant:
        name, eq, flags = v.partition("=")
        if not eq or not name.strip() or "/" in name or name.strip() in VARIANTS or name.strip() in a.custom:
            raise UsageError(f"--variant {v}: expected NAME=TRAIN FLAGS with a new name (no '/', not one of "
                             f"{', '.join(VARIANTS)})")
        a.custom[name.strip()] = flags
    a.variants = csv_list(a.variants, "--variants", choices=VARIANTS + tuple(a.custom))
    a.variants += [v for v in a.custom if v not in a.variants]
    a.seeds = csv_list(a.seeds, "--seeds", int)
    if a.config and not os.path.isfile(a.config):
        raise UsageError(f"--config {a.config}: no such file")
    if a.parallel < 1:
        raise UsageError(f"--parallel {a.parallel}: must be >= 1")
    from eval.embedding import check_method
    check_method(a.embedding_method, "--embedding-method")
    a.config = os.path.abspath(a.config) if a.config else None
    a.out = os.path.abspath(a.out)
    import flags as train_flags   # the runs' epochs: base2x trains twice as many
    a.epochs = train_flags.parse((["--config", a.config] if a.config else []) + shlex.split(a.extra)).epochs
    return a


@cli_main
def main(argv=None):
    from engine.ckpt import git_sha
    a = parse(argv)
    runs, missing = plan(a), []
    if a.summarise:   # the tables of what is evaluated; nothing trains
        missing = [r.name for r in runs if not done(r)]
        runs = [r for r in runs if done(r)]
        if not runs:
            raise UsageError(f"--summarise: no run of this grid (--methods/--variants/--seeds) under "
                             f"{os.path.join(a.out, 'runs')} has {' and '.join(EVALS)}; check --out and the grid, "
                             "or leave --summarise out to train them")
        for r in runs:
            r.result = read_json(os.path.join(r.folder, "study_run.json")) or {}
        print(f"[study] --summarise: {len(runs)} evaluated runs in {a.out}"
              + (f"; left out, not evaluated: {', '.join(missing)}" if missing else ""), flush=True)
    else:
        os.makedirs(a.out, exist_ok=True)
        print(f"[study] {len(runs)} runs in {a.out} ({a.parallel} at a time)", flush=True)
        run_all(a, runs)
    s = summarise(a, runs) | {"left_out": missing}
    cfg = (read_json(os.path.join(runs[0].folder, "config.json")) or {})
    split = "validation" if cfg.get("val_split") else "test"
    sha = git_sha()
    with open(os.path.join(a.out, "study.md"), "w") as f:
        f.write(markdown(a, s, split, sha))
    with open(os.path.join(a.out, "study.json"), "w") as f:
        json.dump({"command": a.command, "git_sha": sha, "split": split} | s, f, indent=1)
    if s["groups"]:
        chart(s, os.path.join(a.out, "study.png"), f"{', '.join(a.methods)}; {split} split; mean ± std over seeds")
    if a.curve_every:
        curves(a, runs, os.path.join(a.out, "study_curves.png"), f"kNN monitor during training, mean over seeds "
               f"({split} split subset)")
    if a.embedding_n:
        for path, used in embeddings(a, runs):
            print(f"[study] embedding ({used}): {path}", flush=True)
    print(open(os.path.join(a.out, "study.md")).read(), flush=True)
    failed = [r.name for r in runs if r.result.get("error")]
    if failed:
        raise UsageError(f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed)}): see their study.log; "
                         "run the same command again to retry them")
    return s


if __name__ == "__main__":
    main()
