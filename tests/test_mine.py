"""python -m mining.mine and train.py --sepp-pairs: neighbours equal brute force, the mining quality is right
on clustered data, a 2-rank mine equals a 1-rank mine, a pairs file of other samples is refused, and each
method trains with mined pairs."""
import math

import numpy as np
import pytest
import torch

from mining.index import center
from mining.mine import by_threshold, quality
from tests.helpers import TINY, read_csv, run, run_here


def test_mining_quality_on_clustered_labels():
    labels = np.repeat(np.arange(4), 50)                     # 4 balanced classes: chance = 1/4
    same = np.stack([np.roll(np.flatnonzero(labels == labels[i]), -1)[:3] for i in range(200)])
    q = quality(labels, same)
    assert q["precision_at_1"] == q["precision_at_k"] == 1.0 and math.isclose(q["chance"], 0.25)
    rand = np.random.default_rng(0).integers(0, 200, (200, 50))
    rand[:, -1] = -1                                         # a missing neighbour is not counted
    assert abs(quality(labels, rand)["precision_at_k"] - 0.25) < 0.02


def test_centred_cosines_equal_a_float64_reference_and_spread_below_zero():
    x = torch.rand(500, 32, generator=torch.Generator().manual_seed(0)) + 0.5   # post-ReLU-like: all cosines > 0
    ref = x.double() / x.double().norm(dim=1, keepdim=True)
    ref = ref - ref.mean(0)
    ref = ref / ref.norm(dim=1, keepdim=True)
    torch.testing.assert_close(center(x).double(), ref, rtol=0, atol=1e-6)
    assert (x @ x.T).min() > 0 and (center(x) @ center(x).T).min() < -0.5
    rows = torch.arange(500) < 100                           # the mean of some rows only (a part-filled bank)
    unit = x.double() / x.double().norm(dim=1, keepdim=True)
    want = torch.nn.functional.normalize(unit - unit[:100].mean(0), dim=1)
    torch.testing.assert_close(center(x, rows).double(), want, rtol=0, atol=1e-6)
    assert center(x.half()).dtype == torch.float16


def test_threshold_table_counts_kept_candidates_by_hand():
    labels = np.array([0, 0, 1, 1])
    ids = np.array([[1, 2], [0, 3], [3, 0], [2, -1]])
    sims = np.array([[0.9, 0.1], [0.9, 0.2], [0.5, 0.4], [0.5, -np.inf]], dtype=np.float32)
    rows = by_threshold(labels, ids, sims, k=2)
    assert rows[0] == {"threshold": 0.5, "paired": 1.0, "precision": 1.0}       # 0th percentile: 0.5 keeps 4 of 4
    top = [r for r in rows if r["threshold"] == pytest.approx(0.9)]
    assert top and top[-1]["paired"] == 0.5 and top[-1]["precision"] == 1.0     # only the 0.9 pairs


@pytest.fixture(scope="module")
def encoder_and_pairs(tmp_path_factory):
    from models.backbones import build_backbone
    d = tmp_path_factory.mktemp("mine")
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet10", True, 2)
    torch.save(backbone.state_dict(), d / "enc.pth")
    args = ["-m", "mining.mine", "--encoder", str(d / "enc.pth"), "--arch", "resnet10", "--stem-stride", "2",
            "--subset", "300", "--seed", "1", "--k", "6", "--no-progress", "--workers", "1"]
    r = run_here(args + ["--out", str(d / "pairs.pt")])
    assert r.returncode == 0, r.stderr[-2000:]
    return d, args


@pytest.mark.slow
def test_mined_neighbours_equal_brute_force(encoder_and_pairs):
    from loaders.embed import Images, extract_sharded
    from loaders.augment import DeviceAugment
    from loaders.datasets import fingerprint, open_source
    from mining.encoders import load_encoder
    d, _ = encoder_and_pairs
    pairs = torch.load(d / "pairs.pt", weights_only=False)
    src = open_source("fashion-mnist", None, True, 300, 1)
    enc, _ = load_encoder(str(d / "enc.pth"), "resnet10", True, 2)
    f, y = extract_sharded(enc, Images(src, 28, DeviceAugment([], src.mean, src.std).plain), "cpu")
    sim = f.double() @ f.double().T
    sim.fill_diagonal_(-math.inf)
    ref_s, ref_i = sim.topk(6, dim=1)
    torch.testing.assert_close(pairs["sims"].double(), ref_s, rtol=0, atol=1e-4)
    agree = (pairs["ids"].long() == ref_i).float().mean()
    assert agree > 0.98, agree                               # ties aside, the same neighbours
    meta = pairs["meta"]
    assert meta["n"] == 300 and meta["fingerprint"] == fingerprint(src) and meta["k"] == 6
    q = quality(y.numpy(), pairs["ids"].numpy())
    assert {k: meta["quality"][k] for k in q} == pytest.approx(q) and q["precision_at_1"] > q["chance"]
    assert (d / "pairs_sims.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_centred_mining_searches_centred_features(encoder_and_pairs, tmp_path):
    from loaders.embed import Images, extract_sharded
    from loaders.augment import DeviceAugment
    from loaders.datasets import open_source
    from mining.encoders import load_encoder
    d, args = encoder_and_pairs
    r = run_here(args + ["--center", "--out", str(tmp_path / "c.pt")])
    assert r.returncode == 0 and "--sepp-threshold T keeps" in r.stdout, r.stderr[-2000:]
    pairs = torch.load(tmp_path / "c.pt", weights_only=False)
    src = open_source("fashion-mnist", None, True, 300, 1)
    enc, _ = load_encoder(str(d / "enc.pth"), "resnet10", True, 2)
    f, y = extract_sharded(enc, Images(src, 28, DeviceAugment([], src.mean, src.std).plain), "cpu")
    c = center(f).double()
    sim = c @ c.T
    sim.fill_diagonal_(-math.inf)
    ref_s, ref_i = sim.topk(6, dim=1)
    torch.testing.assert_close(pairs["sims"].double(), ref_s, rtol=0, atol=1e-4)
    assert (pairs["ids"].long() == ref_i).float().mean() > 0.98
    assert pairs["meta"]["centered"] and pairs["sims"][:, -1].min() < 0.9     # spread below the raw 0.93-1.0
    assert pairs["meta"]["quality"]["by_threshold"] == by_threshold(y.numpy(), pairs["ids"].numpy(),
                                                                    pairs["sims"].numpy())


@pytest.mark.slow
def test_two_rank_mine_equals_one_rank_mine(encoder_and_pairs, tmp_path):
    d, args = encoder_and_pairs
    r = run(args + ["--out", str(tmp_path / "two.pt")], torchrun=2)
    assert r.returncode == 0, r.stderr[-2000:]
    one, two = (torch.load(p, weights_only=False) for p in (d / "pairs.pt", tmp_path / "two.pt"))
    assert torch.equal(one["ids"], two["ids"])
    torch.testing.assert_close(one["sims"], two["sims"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_each_method_trains_with_mined_pairs_and_other_samples_are_refused(encoder_and_pairs, tmp_path):
    d, _ = encoder_and_pairs
    quick = TINY + ["--subset", "300", "--seed", "1", "--epochs", "1", "--batch-size", "64", "--sepp-threshold", "-1"]
    for method in ("simclr", "moco", "byol", "simsiam"):
        out = tmp_path / method
        r = run_here(["train.py", *quick, "--method", method, "--sepp-pairs", str(d / "pairs.pt"), "--out", str(out)])
        assert r.returncode == 0, r.stderr[-2000:]
        assert "SePP pairs from" in r.stdout and "SePP refresh" not in r.stdout
        rows = read_csv(out / "train.csv")
        assert all(math.isfinite(float(x["loss"])) for x in rows)
        if method in ("byol", "simsiam"):   # their SePP term is logged: the pairs reached the step
            assert all(x["loss_sepp"] != "" and math.isfinite(float(x["loss_sepp"])) for x in rows)
        else:   # SimCLR and MoCo: positives in the loss's mask, no term of their own: no empty loss_sepp column
            assert "loss_sepp" not in rows[0], rows[0]
        assert all(0 < float(x["sepp_paired"]) <= 1 for x in rows), rows[:2]   # the pairs reached every step
    r = run_here(["train.py", *TINY, "--subset", "256", "--seed", "1", "--epochs", "1", "--batch-size", "64",
                  "--sepp-pairs", str(d / "pairs.pt"), "--out", str(tmp_path / "x")])
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "mine again" in lines[0] and "Traceback" not in r.stderr
