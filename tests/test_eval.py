"""Evaluation suite: linear probe, kNN, semi-supervised subsets, the benchmark suite, plots and the report."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval.knn import knn_predict
from eval.linear import Probe, probe_features
from eval.semisup import balanced_subset
from tests.helpers import TINY, run, run_here


def _clusters(n, d, classes, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + spread * torch.randn(n, d, generator=g), y


def test_linear_probe_separates_separable_features_and_is_at_chance_on_random_ones():
    train, test = _clusters(2000, 32, 10, 0.5, 0), _clusters(1000, 32, 10, 0.5, 1)
    sep = probe_features(train, test, 10, Probe(epochs=10, batch=128, lr=0.1))
    assert sep["top1"] >= 99.0 and sep["n"] == 1000, sep
    assert sep["losses"][-1] < sep["losses"][0]
    g = torch.Generator().manual_seed(2)
    noise = lambda n: (torch.randn(n, 32, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    rnd = probe_features(noise(2000), noise(2000), 10, Probe(epochs=10, batch=128, lr=0.1))
    assert 5.0 < rnd["top1"] < 15.0, rnd        # chance is 10% (std of the estimate: 0.7 points)
    assert 40.0 < rnd["top5"] < 60.0, rnd       # chance is 50%


def _knn_reference(train_f, train_y, test_f, classes, k, t):
    """Naive float64 weighted kNN: every test row against every training row."""
    tr, te = train_f.double(), test_f.double()
    out = torch.zeros(len(te), classes, dtype=torch.float64)
    for i, q in enumerate(te):
        sims = tr @ q
        top = sims.argsort(descending=True)[:k]
        for j in top:
            out[i, train_y[j]] += math.exp(sims[j].item() / t)
    return out


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_knn_matches_brute_force_reference(backend):
    g = torch.Generator().manual_seed(0)
    train_f = F.normalize(torch.randn(600, 16, generator=g), dim=1)
    train_y = torch.randint(0, 7, (600,), generator=g)
    test_f = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    got = knn_predict(train_f, train_y, test_f, 7, k=(20, 200), temperature=0.07, backend=backend)
    for k in (20, 200):
        ref = _knn_reference(train_f, train_y, test_f, 7, k, 0.07)
        torch.testing.assert_close(got[k].double(), ref, rtol=1e-4, atol=1e-6)
        assert (got[k].argmax(1) == ref.argmax(1)).all()


def test_semisup_subset_is_class_balanced_and_reproducible():
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=5000, p=[0.4, 0.3, 0.15, 0.1, 0.05])   # imbalanced on purpose
    a = balanced_subset(labels, 0.1, seed=3)
    counts = np.bincount(labels[a], minlength=5)
    assert (counts == 100).all(), counts                 # round(0.1 * 5000 / 5) from every class
    assert len(np.unique(a)) == len(a) and (np.diff(a) > 0).all()
    assert np.array_equal(a, balanced_subset(labels, 0.1, seed=3))
    assert not np.array_equal(a, balanced_subset(labels, 0.1, seed=4))
    small = balanced_subset(labels, 0.001, seed=0)        # at least one image per class
    assert (np.bincount(labels[small], minlength=5) == 1).all()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "simclr"
    r = run_here(["train.py", "--method", "simclr", "--subset", "1024", "--epochs", "2", "--batch-size",
                  "128", "--lr", "0.3", "--out", str(out)] + TINY + ["--knn-every", "1", "--knn-train", "1000",
                                                                     "--knn-test", "500", "--knn-random-init"])
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.slow
def test_eval_commands_on_a_tiny_run(tiny_run, tmp_path):
    ck = str(tiny_run / "last.pt")
    r = run_here(["-m", "eval.knn", "--checkpoint", ck, "--n-train", "3000", "--n-test", "500", "--workers", "1",
             "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    knn = json.loads((tiny_run / "eval_knn.json").read_text())
    assert set(knn["trained"]) == {"k20", "k200"} and knn["n_test"] == 500
    assert all(15 < v <= 100 for v in knn["trained"].values()), knn      # 10 classes: chance is 10%
    r = run_here(["-m", "eval.semisup", "--checkpoint", ck, "--fraction", "0.01", "--epochs", "2", "--batch-size", "64",
             "--n-test", "500", "--workers", "1", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    semi = json.loads((tiny_run / "eval_semisup_0.01.json").read_text())
    assert semi["labelled"] == 600 and semi["per_class"] == [60, 60] and semi["trained"]["n"] == 500
    assert "600 labelled images (60-60 per class)" in r.stdout
    r = run_here(["-m", "eval.plot", str(tiny_run)])
    assert r.returncode == 0, r.stderr[-2000:]
    png = (tiny_run / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    r = run_here(["-m", "eval.report", str(tiny_run), "--out", str(tmp_path / "RESULTS.md")])
    assert r.returncode == 0, r.stderr[-2000:]
    md = (tmp_path / "RESULTS.md").read_text().splitlines()
    rows = [x for x in md if x.startswith("| simclr")]
    assert len(rows) == 1, md
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "simclr" and cells[3] == "2"
    assert float(cells[4]) == pytest.approx(knn["trained"]["k20"], abs=0.01)
    assert "0.01: " in cells[7] and float(cells[8]) > 0
    for args, expect in [(["-m", "eval.knn", "--checkpoint", str(tmp_path / "no.pt")], "no such file"),
                         (["-m", "eval.knn", "--checkpoint", ck, "--k", "x"], "comma-separated integers"),
                         (["-m", "eval.semisup", "--checkpoint", ck, "--fraction", "2"], "must be in (0, 1]"),
                         (["-m", "eval.linear", "--checkpoint", ck, "--mode", "nope"], "--mode nope"),
                         (["-m", "eval.linear", "--checkpoint", ck, "--amp", "fp16", "--device", "cpu"],
                          "--amp fp16 needs a GPU"),
                         (["-m", "eval.plot", str(tmp_path / "none")], "no such run folder"),
                         (["-m", "eval.bench", "--loader", "nope"], "--loader nope: unknown")]:
        r = run_here(args)
        assert r.returncode == 2 and "Traceback" not in r.stderr and expect in r.stderr, (args, r.stderr[-1500:])


@pytest.mark.slow
def test_knn_and_linear_probe_score_the_same_test_images(tiny_run, tmp_path):
    """--n-test N: both evaluations score eval/subset.py's N images (they once drew them with different seeds,
    so a study's kNN and linear columns scored different images), whatever the probe's --seed."""
    from eval.subset import digest, pick
    ck, got = str(tiny_run / "last.pt"), {}
    for name, args in [("knn", ["-m", "eval.knn", "--n-train", "2000"]),
                       ("linear", ["-m", "eval.linear", "--epochs", "1", "--n-train", "2000", "--seed", "5",
                                   "--amp", "bf16"])]:   # bf16 on a CPU, as train.py allows (issue 47)
        r = run_here(args + ["--checkpoint", ck, "--n-test", "300", "--workers", "1", "--no-progress",
                        "--json", str(tmp_path / f"{name}.json")])
        assert r.returncode == 0, r.stderr[-2000:]
        got[name] = json.loads((tmp_path / f"{name}.json").read_text())["test_subset"]
    assert got["knn"] == got["linear"] == digest(pick(300, 10000), 10000), got
    assert digest(None, 10000) == "all 10000" and pick(300, 10000, seed=1).tolist() != pick(300, 10000).tolist()


@pytest.mark.slow
def test_linear_probe_under_torchrun_equals_one_process(tiny_run, tmp_path):
    """Features mode: sharded extraction + DDP over 2 gloo ranks must train the same classifier as one
    process (fixed feature statistics, the same global batches)."""
    common = ["-m", "eval.linear", "--checkpoint", str(tiny_run / "last.pt"), "--epochs", "3", "--n-train", "2048",
              "--n-test", "500", "--workers", "1", "--no-progress"]
    one = run_here(common + ["--json", str(tmp_path / "one.json")])
    two = run(common + ["--json", str(tmp_path / "two.json")], torchrun=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-1500:], two.stderr[-1500:])
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert b["world"] == 2 and a["trained"]["n"] == b["trained"]["n"] == 500
    np.testing.assert_allclose(a["trained"]["losses"], b["trained"]["losses"], rtol=1e-4)
    assert abs(a["trained"]["top1"] - b["trained"]["top1"]) <= 0.4
    assert a["trained"]["top1"] > 40, a     # a 2-epoch encoder: well above chance (10%)
    assert a["trained"]["losses"][-1] < a["trained"]["losses"][0]


@pytest.mark.slow
def test_linear_probe_on_images_trains_through_the_frozen_backbone(tiny_run, tmp_path):
    before = torch.load(tiny_run / "last.pt", weights_only=False)["model"]
    r = run_here(["-m", "eval.linear", "--checkpoint", str(tiny_run / "last.pt"), "--mode", "images", "--epochs",
                  "2", "--n-train", "1024", "--n-test", "500", "--batch-size", "128", "--workers", "1", "--no-progress",
                  "--json", str(tmp_path / "img.json")])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "img.json").read_text())
    assert res["mode"] == "images" and res["aug"] == "crop" and res["trained"]["n"] == 500
    assert res["trained"]["top1"] > 20 and res["trained"]["losses"][-1] < res["trained"]["losses"][0], res
    after = torch.load(tiny_run / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)   # the checkpoint is never written


def test_frozen_classifier_keeps_backbone_and_batchnorm_statistics():
    from eval.classify import Classifier, Sgd, TensorBatches, fit
    from models.backbones import build_backbone
    bb, dim = build_backbone("resnet10", small_stem=True)
    ref = {k: v.clone() for k, v in bb.state_dict().items()}
    clf = Classifier(bb, dim, 3, frozen=True)
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 3, (64,))
    fit(clf, TensorBatches(x, y, 16), Sgd(2, lr=0.5), device=torch.device("cpu"))
    assert all(torch.equal(ref[k], v) for k, v in bb.state_dict().items())     # weights and running stats
    assert not torch.equal(clf.fc.weight, torch.zeros_like(clf.fc.weight))


def test_bench_builds_the_model_train_py_trains_from_a_config():
    """eval.bench --config FILE: the model (heads included: the demo's 512-wide projector, not the method's
    default 2048), batch, precision, optimizer, recipe and loader that train.py --config FILE trains; flags
    given to the bench still win."""
    import flags
    from models.methods import build_model_from_config
    from eval.bench import bench_model, build_parser, train_args
    for cfg in ("configs/fashion_demo.yaml", "configs/fashion_study.yaml"):
        for extra in ([], ["--method", "moco"]):
            a = build_parser().parse_args(["--config", cfg] + extra)
            t = flags.parse(["--config", cfg] + extra)
            flags.resolve_device(t)
            torch.manual_seed(0)
            trained = build_model_from_config(vars(t))
            torch.manual_seed(0)
            tb, benched, recipe = bench_model(a, t.arch, t.res, torch.device("cpu"))
            want, got = trained.state_dict(), benched.state_dict()
            assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want), (cfg, extra)
            for k in ("batch_size", "amp", "optimizer", "lr", "res", "proj_hidden", "proj_dim", "loader",
                      "compile_augment", "subset"):
                assert getattr(tb, k) == getattr(t, k), (cfg, extra, k)
            assert recipe == (t.recipe or ("byol" if t.method == "byol" else "simclr"))
    demo = train_args(build_parser().parse_args(["--config", "configs/fashion_demo.yaml"]))
    assert (demo.proj_hidden, demo.batch_size, demo.subset) == (512, 256, 8192)
    mine = train_args(build_parser().parse_args(["--config", "configs/fashion_demo.yaml", "--batch-size", "64",
                                                 "--no-small-stem"]))
    assert (mine.batch_size, mine.small_stem, mine.proj_hidden) == (64, False, 512)


@pytest.mark.slow
def test_bench_suite_covers_every_combination_and_draws_a_chart(tmp_path):
    out = tmp_path / "suite.json"
    r = run_here(["-m", "eval.bench", "--loader", "torch,synthetic", "--arch", "resnet10", "--stem-stride", "2",
                  "--res", "28", "--variants", "plain,bsim+sepp", "--method", "byol", "--batch-size", "16",
                  "--steps", "2", "--repeats", "2", "--warmup", "1", "--workers", "1", "--json", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    combos = {(x["res"], x["variant"]) for x in res["results"]}
    assert combos == {(28, "plain"), (28, "bsim+sepp")}
    for x in res["results"]:
        assert set(x["loaders"]) == {"torch", "synthetic", "synthetic-noaug"}
        for name, m in x["loaders"].items():
            assert m["end_to_end_img_s"] > 0 and 0 <= m["data_wait"] < 1 and m["peak_host_mb"] > 100
            assert (m["loader_img_s"] is None) == (name == "synthetic-noaug")
            # every loader timed on the same work: 2 windows of 2 batches each (no budget cut at this size)
            assert m["loader_batches"] == m["end_to_end_batches"] == [2, 2], (name, m)
            lo, hi = m["end_to_end_range"]
            assert lo <= m["end_to_end_img_s"] <= hi
        assert x["train"]["proj_hidden"] == 4096 and x["train"]["method"] == "byol"   # BYOL's own heads
        assert x["loaders"]["synthetic"]["ratio_to_ceiling"] == 1.0
        if x["variant"] != "plain":
            assert "step_overhead_vs_plain" in x
    png = (tmp_path / "suite.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
