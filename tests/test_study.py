"""eval.study: Welch's t-test against hand-computed values, and a tiny grid that trains, evaluates, writes the
table and the chart, and skips its finished runs when called again."""
import json
import math

import numpy as np
import pytest

from eval.stats import holm, mean_std, paired, t_two_sided_p, verdict, welch
from tests.helpers import TINY, run, run_here


def test_welch_t_test_matches_hand_computed_values():
    a, b = [1, 2, 3, 4], [3, 4, 5, 6, 7]
    # by hand: means 2.5 and 5, variances 5/3 and 5/2; se^2 = 5/12 + 1/2 = 11/12; t = 2.5 / sqrt(11/12)
    # df = (11/12)^2 / ((5/12)^2 / 3 + (1/2)^2 / 4) = 6.98077; p = 2 * integral of the t density beyond t
    t = welch(a, b)
    assert t["diff"] == 2.5
    assert math.isclose(t["t"], 2.5 / math.sqrt(11 / 12), rel_tol=1e-12)
    assert math.isclose(t["df"], (11 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 0.25 / 4), rel_tol=1e-12)
    df = t["df"]
    x = np.linspace(t["t"], 400.0, 2_000_001)
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    p_ref = 2 * np.trapezoid(c * (1 + x ** 2 / df) ** (-(df + 1) / 2), x)
    assert abs(t["p"] - p_ref) < 1e-8 and abs(t["p"] - 0.03494) < 1e-4
    assert verdict(t) == "better" and verdict(welch(b, a)) == "worse"
    # tables of Student's t: two-sided 5% critical values; df = 1 is Cauchy: p = 1 - 2 atan(t) / pi
    assert abs(t_two_sided_p(2.776445, 4) - 0.05) < 1e-6 and abs(t_two_sided_p(2.228139, 10) - 0.05) < 1e-6
    assert abs(t_two_sided_p(3.0, 1) - (1 - 2 * math.atan(3.0) / math.pi)) < 1e-12
    assert verdict(welch([70.1, 70.5, 69.9], [70.3, 70.0, 70.6])) == "not significant"
    assert verdict(paired({0: 70.1, 1: 70.5, 2: 69.9}, {0: 70.3, 1: 70.0, 2: 70.6})) == "not significant with 3 seeds"
    assert verdict(welch([1.0], [2.0])) == "too few seeds to tell"
    assert mean_std([1, 2, 3]) == (2.0, 1.0)


def test_paired_t_test_and_holm_match_hand_computed_values():
    # differences 1, 2, 3 over the seeds both share (seed 9 of b has no partner): mean 2, sd 1, t = 2 / (1 / sqrt 3)
    t = paired({0: 10.0, 1: 10.0, 2: 10.0, 5: 1.0}, {0: 11.0, 1: 12.0, 2: 13.0, 9: 0.0})
    assert t["n"] == 3 and t["diff"] == 2.0 and t["df"] == 2
    assert math.isclose(t["t"], 2 * math.sqrt(3), rel_tol=1e-12)
    # df = 2: P(|T| >= t) = 1 - t / sqrt(t^2 + 2), in closed form
    assert math.isclose(t["p"], 1 - t["t"] / math.sqrt(t["t"] ** 2 + 2), rel_tol=1e-10)
    # a constant shift: Welch sees the seeds' spread, the paired test sees none
    a, b = {0: 70.0, 1: 72.0, 2: 74.0}, {0: 70.5, 1: 72.55, 2: 74.45}
    assert paired(a, b)["p"] < 0.01 < welch(list(a.values()), list(b.values()))["p"]
    assert math.isnan(paired({0: 1.0}, {0: 2.0})["p"]) and paired({0: 1.0}, {1: 2.0})["n"] == 0
    # Holm: sorted p 0.01, 0.02, 0.04, 0.30 times 4, 3, 2, 1, kept non-decreasing; back in the input order
    got = holm([0.04, 0.01, float("nan"), 0.30, 0.02])
    assert got[:2] == pytest.approx([0.08, 0.04]) and math.isnan(got[2]) and got[3:] == pytest.approx([0.30, 0.06])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])   # 2 x 0.4 = 0.8, then max(0.8, 1 x 0.5)
    assert verdict({"diff": 1.0, "p": 0.01, "p_holm": 0.08, "n": 3}, key="p_holm") == "not significant with 3 seeds"


@pytest.mark.slow
def test_study_on_a_tiny_grid_writes_table_chart_and_skips_finished_runs(tmp_path):
    out = tmp_path / "study"
    extra = " ".join(TINY + ["--subset", "256", "--epochs", "1", "--batch-size", "64", "--sepp-threshold", "0"])
    args = ["-m", "eval.study", "--methods", "simclr", "--variants", "base,sepp", "--seeds", "0,1",
            "--out", str(out), "--parallel", "2", "--linear-epochs", "2", "--eval-train", "400",
            "--eval-test", "200", "--embedding-n", "200", "--embedding-method", "pca", "--extra", extra]
    r = run_here(args)   # the study in this process; its runs are processes of their own
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count(": done (") == 4
    s = json.loads((out / "study.json").read_text())
    rows = {(x["method"], x["variant"], x["seed"]): x for x in s["rows"]}
    assert len(rows) == 4 and not any(x["error"] for x in rows.values())
    for x in rows.values():   # the table's numbers are the evaluations' own
        knn = json.loads((out / "runs" / f"simclr-{x['variant']}-s{x['seed']}" / "eval_knn.json").read_text())
        assert x["knn200"] == knn["trained"]["k200"] and x["n_test"] == 200
    sepp = [g for g in s["groups"] if g["variant"] == "sepp"][0]
    lin = [rows[("simclr", "sepp", k)]["linear"] for k in (0, 1)]
    assert sepp["linear"] == pytest.approx(list(mean_std(lin)))
    test = [t for t in s["tests"] if t["metric"] == "linear"][0]
    base = [rows[("simclr", "base", k)]["linear"] for k in (0, 1)]
    assert test["p"] == pytest.approx(paired(dict(enumerate(base)), dict(enumerate(lin)))["p"], nan_ok=True)
    assert test["p_welch"] == pytest.approx(welch(base, lin)["p"], nan_ok=True)
    log = (out / "runs" / "simclr-sepp-s0" / "study.log").read_text()   # mined with the base run's encoder
    assert "--sepp-encoder " + str(out / "runs" / "simclr-base-s0" / "last.pt") in log and "SePP refresh" in log
    md = (out / "study.md").read_text()
    assert "| simclr | sepp | 2 |" in md and "paired" in md and "git" in md.lower() and "test split" in md
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "study_embedding_simclr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"   # base beside sepp
    assert f"[study] embedding (PCA): {out / 'study_embedding_simclr.png'}" in r.stdout
    again = run_here(args)   # a second call skips the finished runs
    assert again.returncode == 0 and again.stdout.count("skipped (evaluated before)") == 4, again.stdout[-2000:]
    assert json.loads((out / "study.json").read_text())["rows"] == s["rows"]


def test_study_flag_errors(tmp_path):
    r = run(["-m", "eval.study", "--variants", "base,nope", "--out", str(tmp_path)])
    assert r.returncode == 2 and "--variants base,nope: unknown nope" in r.stderr and "Traceback" not in r.stderr
    r = run_here(["-m", "eval.study", "--embedding-method", "mds", "--out", str(tmp_path)])
    assert r.returncode == 2 and "--embedding-method mds: choose from auto, umap, tsne, pca" in r.stderr
    assert "Traceback" not in r.stderr
    import importlib.util
    if importlib.util.find_spec("umap") is None:   # said before any run trains, not after the study
        r = run_here(["-m", "eval.study", "--embedding-method", "umap", "--out", str(tmp_path)])
        assert r.returncode == 2 and "--embedding-method umap: umap-learn is not installed" in r.stderr, r.stderr
    r = run_here(["-m", "eval.study", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path)])
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_study_config_gives_each_method_its_recipe_and_flags_still_win():
    """configs/fashion_study.yaml's per_method sections (solo-learn's CIFAR-10 settings) apply to the run's
    method only; a flag on the command line wins over them."""
    import flags
    cfg = "configs/fashion_study.yaml"
    got = {m: flags.parse(["--config", cfg, "--method", m]) for m in ("simclr", "moco", "byol", "simsiam")}
    assert (got["simclr"].optimizer, got["simclr"].lr, got["simclr"].proj_dim) == ("lars", 0.4, 256)
    assert (got["moco"].lr, got["moco"].queue_size, got["moco"].ema) == (0.3, 32768, 0.99)
    assert (got["byol"].lr, got["byol"].wd, got["byol"].pred_hidden) == (1.0, 1e-5, 4096)
    assert (got["simsiam"].optimizer, got["simsiam"].proj_dim) == ("sgd", 2048)
    assert all(a.loader == "device" and a.arch == "resnet18" and a.small_stem for a in got.values())
    assert flags.parse(["--config", cfg, "--method", "moco", "--lr", "0.1"]).lr == 0.1


def test_study_ablation_variants_add_their_flags_and_mine_with_the_base_encoder(tmp_path):
    from eval.study import parse, plan, train_cmd
    a = parse(["--methods", "simclr", "--seeds", "0", "--variants", "base", "--out", str(tmp_path),
               "--variant", "c0.3=--sepp --sepp-center --sepp-threshold 0.3", "--variant", "w2=--bsim --bsim-weight 2",
               "--variant", "own=--sepp --sepp-pairs p.pt", "--extra", "--epochs 2"])
    runs = {r.variant: r for r in plan(a)}
    assert list(runs) == ["base", "c0.3", "w2", "own"]
    base = str(tmp_path / "runs" / "simclr-base-s0" / "last.pt")
    cmd = train_cmd(a, runs["c0.3"])
    assert cmd[-8:] == ["--sepp", "--sepp-center", "--sepp-threshold", "0.3", "--sepp-encoder", base, "--epochs", "2"]
    assert runs["w2"].base is None and train_cmd(a, runs["w2"])[-5:] == ["--bsim", "--bsim-weight", "2", "--epochs", "2"]
    assert runs["own"].base is None and "--sepp-encoder" not in train_cmd(a, runs["own"])
    for bad in ("nameless", "sepp=--sepp", "a/b=--bsim"):
        r = run_here(["-m", "eval.study", "--variant", bad, "--out", str(tmp_path)])
        assert r.returncode == 2 and "expected NAME=TRAIN FLAGS" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_an_interrupted_study_goes_on_where_it_stopped(tmp_path):
    """Killed while a run trains: called again, the finished run is not retrained, an evaluation already written
    is not redone (one is deleted here: only it runs again), and the killed run resumes from its checkpoint
    (mid-epoch: --ckpt-every-min). base2x trains twice the epochs; each finished run prints the time left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT
    out = tmp_path / "study"
    extra = " ".join(TINY + ["--subset", "256", "--epochs", "2", "--batch-size", "32", "--ckpt-every-min", "0.002"])
    args = ["-m", "eval.study", "--methods", "simclr", "--variants", "base,base2x", "--seeds", "0", "--out",
            str(out), "--linear-epochs", "2", "--eval-train", "400", "--eval-test", "200", "--embedding-n", "0",
            "--extra", extra]
    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    twice = out / "runs" / "simclr-base2x-s0"
    deadline = time.time() + 600
    while not (twice / "last.pt").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)   # the study and its training process, mid-run
    first = p.communicate()[0]
    assert "1/2 simclr-base-s0: done" in first and "left" in first, first[-2000:]
    base = out / "runs" / "simclr-base-s0"
    (base / "eval_linear.json").unlink()
    r = run_here(args)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = (base / "study.log").read_text()
    assert log.count("train.py") == 1 and log.count("eval.knn") == 1 and log.count("eval.linear") == 2, log
    log = (twice / "study.log").read_text()
    assert log.count("train.py") == 2 and "resumed from" in log, log[-3000:]
    assert json.loads((twice / "config.json").read_text())["epochs"] == 4
    rows = json.loads((out / "study.json").read_text())["rows"]
    assert len(rows) == 2 and not any(x["error"] for x in rows) and all("linear" in x for x in rows)


def test_summarise_tables_the_evaluated_runs_and_holds_sepp_against_base2x(tmp_path, capsys):
    """--summarise trains nothing: the runs with both evaluations make the tables (a run without them is named
    and left out), and a variant that mines with the base run is tested against base2x as well as base."""
    from eval.study import main
    lin = {("base", 0): 80.0, ("base", 1): 81.0, ("base", 2): 80.5, ("base2x", 0): 82.0, ("base2x", 1): 82.6,
           ("sepp", 0): 81.0, ("sepp", 1): 81.4, ("sepp", 2): 80.8, ("bsim", 0): 80.2, ("k5", 0): 81.0,
           ("k5", 1): 81.5, ("own", 0): 80.1, ("own", 1): 80.9}
    for (v, s), top1 in lin.items():
        d = tmp_path / "runs" / f"simclr-{v}-s{s}"
        d.mkdir(parents=True)
        (d / "eval_knn.json").write_text(json.dumps({"trained": {"k20": top1 - 1, "k200": top1 - 2}}))
        (d / "eval_linear.json").write_text(json.dumps({"trained": {"top1": top1, "n": 10000}}))
        (d / "study_run.json").write_text(json.dumps({"train_s": 100.0 * (1 + (v == "base2x")), "eval_s": 5.0}))
    (tmp_path / "runs" / "simclr-bsim-s1").mkdir()   # begun, not evaluated
    s = main(["--methods", "simclr", "--variants", "base,base2x,bsim,sepp", "--seeds", "0,1,2", "--out",
              str(tmp_path), "--embedding-n", "0", "--summarise", "--variant", "k5=--sepp --sepp-k 5",
              "--variant", "own=--sepp --sepp-pairs p.pt"])
    out = capsys.readouterr().out
    left = "left out, not evaluated: simclr-base2x-s2, simclr-bsim-s1, simclr-bsim-s2, simclr-k5-s2, simclr-own-s2"
    assert "13 evaluated runs" in out and left in out and "at a time" not in out
    assert not any((tmp_path / "runs" / n / "summary.json").exists() for n in ("simclr-bsim-s1", "simclr-bsim-s2"))
    assert sorted((x["variant"], x["seed"]) for x in s["rows"]) == sorted(lin)
    got = {(t["variant"], t["against"], t["metric"]): t for t in s["tests"]}
    col = lambda v: [lin[(v, k)] for k in range(3) if (v, k) in lin]   # noqa: E731
    seeded = lambda v: {k: lin[(v, k)] for k in range(3) if (v, k) in lin}   # noqa: E731
    assert got[("sepp", "base", "linear")]["p"] == pytest.approx(paired(seeded("base"), seeded("sepp"))["p"])
    assert got[("sepp", "base", "linear")]["p_welch"] == pytest.approx(welch(col("base"), col("sepp"))["p"])
    twice = got[("sepp", "base2x", "linear")]
    assert twice["diff"] == pytest.approx(np.mean(col("sepp")[:2]) - np.mean(col("base2x")))   # seeds 0 and 1
    assert twice["p"] == pytest.approx(paired(seeded("base2x"), seeded("sepp"))["p"]) and twice["n"] == 2
    ps = [t["p"] for t in s["tests"]]
    assert [t["p_holm"] for t in s["tests"]] == pytest.approx(holm(ps), nan_ok=True)
    assert ("bsim", "base2x", "linear") not in got and ("base2x", "base2x", "linear") not in got
    assert ("k5", "base2x", "linear") in got and ("own", "base2x", "linear") not in got   # own: not mined by base
    assert got[("bsim", "base", "linear")]["verdict"] == "too few seeds to tell"
    md = (tmp_path / "study.md").read_text()
    assert "| simclr | sepp (2 pairs) | linear top-1 | -1.10 |" in md and "Against base2x" in md and left in md
    assert "| simclr | base2x | 2 | 81.30 ± 0.42 | 80.30 ± 0.42 | 82.30 ± 0.42 | 200 | 200 (2.0x) |" in md
    assert "| simclr | sepp | 3 |" in md and "| 100 | 200 (2.0x) |" in md   # its miner: a base run
    r = run_here(["-m", "eval.study", "--methods", "simclr", "--out", str(tmp_path / "none"), "--summarise"])
    assert r.returncode == 2 and "--summarise: no run of this grid" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "none").exists()
