"""SePP mining pieces: every index back end equals brute force; threshold and k hold; the pair plan keeps
each pair in one batch on one rank and covers every sample once per epoch."""
import math

import numpy as np
import pytest
import torch

from tests.helpers import TINY, read_csv, run, run_here

from loaders.order import rank_batches
from mining.index import Backend, recall, search
from mining.sampler import PairPlan, pair_order


def data(n=600, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    h = n // 2
    x[h:2 * h] = x[:h] + 0.3 * torch.randn(h, d, generator=g)  # near-duplicates: real neighbours
    return torch.nn.functional.normalize(x, dim=1)


def brute(x, k, threshold, exclude_self):
    s = x.double().numpy() @ x.double().numpy().T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    sims = np.take_along_axis(s, ids, 1)
    ids[sims < threshold] = -1
    return ids


@pytest.mark.parametrize("backend", ["torch", "faiss", "faiss-ivf"])
def test_backends_match_brute_force(backend):
    x = data()
    ref = brute(x, 5, 0.3, True)
    sims, ids = search(x, k=5, threshold=0.3, backend=Backend(backend, chunk=128, nprobe=10 ** 6), exclude_self=True)
    assert ids.shape == (600, 5) and ids.dtype == torch.int64
    assert (ids.numpy() == ref).mean() > 0.999  # float32 vs float64 may swap near-ties
    ok = ids >= 0
    assert (sims[ok] >= 0.3).all() and torch.isinf(sims[~ok]).all()
    assert not (ids == torch.arange(600)[:, None]).any()
    expect = (x @ x.T).gather(1, ids.clamp(min=0))
    assert torch.allclose(sims[ok], expect[ok], atol=1e-5)


def test_threshold_k_and_ivf_recall():
    x = data(2000, 16, seed=1)
    _, exact = search(x, k=10, backend="torch", exclude_self=True)
    _, ivf = search(x, k=10, backend=Backend("faiss-ivf", nprobe=4), exclude_self=True)
    r = recall(ivf, exact)
    assert 0.3 < r <= 1.0  # approximate: measured, not equal
    s, i = search(x, k=3, threshold=0.99, backend="faiss", exclude_self=True)
    assert i.shape == (2000, 3) and (i == -1).float().mean() > 0.9 and (s[i >= 0] >= 0.99).all()
    s, i = search(x[:7], x, k=2, backend="torch")
    assert (i[:, 0] == torch.arange(7)).all() and torch.allclose(s[:, 0], torch.ones(7), atol=1e-5)


def test_keep_top_drops_candidates_below_the_quantile_of_the_rank_1_similarities():
    from mining.sepp import keep_top
    sims = torch.tensor([[0.9, 0.5], [0.8, 0.75], [0.6, 0.55], [0.4, 0.3], [-math.inf, -math.inf]])
    ids = torch.tensor([[1, 2], [0, 3], [3, 1], [2, 0], [-1, -1]])
    s, i, t = keep_top(sims, ids, 0.5)                        # rank-1 of the valid rows: 0.9 0.8 0.6 0.4
    assert t == pytest.approx(0.7)                            # their median
    assert i.tolist() == [[1, -1], [0, 3], [-1, -1], [-1, -1], [-1, -1]]
    assert torch.equal(s[0], torch.tensor([0.9, -math.inf])) and t == pytest.approx(0.7)
    s, i, t = keep_top(sims, ids, 1.0)
    assert torch.equal(i, ids) and t == -math.inf


def test_pair_plan_keeps_pairs_in_one_batch_and_covers_every_sample():
    x = data(1001, 16, seed=2)
    _, nb = search(x, k=4, threshold=0.5, backend="torch", exclude_self=True)
    nb = nb.numpy()
    plan = PairPlan(nb, seed=0)
    for epoch in range(2):
        order = plan(epoch)
        partner = plan.plan(epoch)[1]
        assert sorted(order.tolist()) == list(range(1001))
        has = partner >= 0
        assert has.mean() > 0.4 and (partner[partner[has]] == np.nonzero(has)[0]).all()  # symmetric
        assert all(partner[a] in nb[a] or a in nb[partner[a]] for a in np.nonzero(has)[0])
        seen = []
        for rank in range(2):
            for b in rank_batches(order, 16, rank, 2, drop_last=True):
                s = set(b.tolist())
                assert all(partner[a] in s for a in b if partner[a] >= 0)
                seen += b.tolist()
        assert len(seen) == len(set(seen)) == (1001 // 32) * 32
    assert not np.array_equal(pair_order(nb, 0, 0)[0], pair_order(nb, 0, 1)[0])


def test_pair_plan_keeps_its_guarantees_at_100k_samples():
    """Every sample once; each pair at an even position next to its partner, so every pair lands in one batch on
    one rank; partners symmetric and taken from the candidates; out-of-range ids refused (compiled code)."""
    n = 100_000
    nb = np.random.default_rng(3).integers(-1, n, (n, 5))
    order, partner = pair_order(nb, 7, 2)
    assert np.array_equal(np.sort(order), np.arange(n))
    has = partner >= 0
    assert has.mean() > 0.8 and np.array_equal(partner[partner[has]], np.flatnonzero(has))
    a, b = order[0::2], order[1::2]
    paired = partner[a] >= 0
    assert np.array_equal(partner[a[paired]], b[paired])    # pairs sit at (2i, 2i+1)
    anchor_of = np.where((nb[a[paired]] == b[paired, None]).any(1), a[paired], b[paired])
    other = np.where(anchor_of == a[paired], b[paired], a[paired])
    assert (nb[anchor_of] == other[:, None]).any(1).all()   # the partner is one of the anchor's candidates
    seen = np.concatenate([np.concatenate(rank_batches(order, 64, r, 2, drop_last=True)) for r in range(2)])
    assert len(np.unique(seen)) == len(seen) == (n // 128) * 128
    with pytest.raises(ValueError, match="neighbour ids"):
        pair_order(np.full((4, 2), 4), 0, 0)


@pytest.mark.slow
def test_sepp_training_mines_same_label_positives_on_fashion_mnist(tmp_path):
    """After one short epoch of MoCo v2 (torch loader), the mined positives share their anchor's label far more
    often than chance (10%); the queue's ids let earlier positives count too."""
    r = run_here(["train.py", *TINY, "--method", "moco", "--subset", "1024", "--epochs", "2", "--batch-size", "128",
                  "--lr", "0.1", "--sepp", "--sepp-warmup", "1", "--sepp-k", "3", "--out", str(tmp_path)])
    assert r.returncode == 0 and "SePP refresh" in r.stdout, r.stderr[-2000:]
    info = read_csv(tmp_path / "sepp.csv")[0]
    assert float(info["paired"]) > 0.5 and float(info["label_agreement"]) > 0.3, info
    rows = read_csv(tmp_path / "epoch.csv")
    assert len(rows) == 2 and all(np.isfinite(float(x["loss"])) for x in rows)


def test_sepp_flag_errors(tmp_path):
    r = run_here(["train.py", *TINY, "--sepp", "--batch-size", "7", "--subset", "64", "--epochs", "1", "--out",
                  str(tmp_path)])
    assert r.returncode == 2 and "must be even" in r.stderr and "Traceback" not in r.stderr
    r = run_here(["train.py", *TINY, "--sepp", "--sepp-k", "0", "--out", str(tmp_path)])
    assert r.returncode == 2 and "--sepp-k" in r.stderr and "Traceback" not in r.stderr
    r = run_here(["train.py", *TINY, "--sepp", "--loader", "synthetic", "--out", str(tmp_path)])   # refused at once
    assert r.returncode == 2 and "not synthetic" in r.stderr and "SePP bank" not in r.stderr + r.stdout


def test_block_topk_is_exact():
    from mining.index import block_topk
    g = torch.Generator().manual_seed(3)
    for n in (5000, 4096, 700):
        s = torch.randn(33, n, generator=g)
        s[:, 17] += 10  # a clear winner, and ties between blocks elsewhere
        v, i = block_topk(s, 7, block=256)
        rv, ri = s.topk(7, dim=1)
        assert torch.equal(v, rv) and torch.equal(i, ri)


def test_search_of_some_rows_equals_those_rows_of_the_whole_search():
    x = data()
    rows = torch.tensor([5, 0, 599, 300, 17])
    for backend in ("torch", "faiss"):
        s, i = search(x, k=4, threshold=0.1, backend=backend, exclude_self=True)
        rs, ri = search(x, k=4, threshold=0.1, backend=backend, exclude_self=True, rows=rows)
        assert torch.equal(ri, i[rows]) and torch.allclose(rs, s[rows], atol=1e-6), backend
    with pytest.raises(ValueError, match="no keys"):
        search(x, x, k=1, rows=rows)


@pytest.mark.slow
def test_sepp_mines_in_the_projector_space(tmp_path):
    """--sepp-space projector: the bank is the (momentum) projector's output, proj-dim wide; refreshes log
    their cost against the epoch before them."""
    r = run_here(["train.py", *TINY, "--method", "byol", "--subset", "512", "--epochs", "2", "--batch-size", "128",
                  "--lr", "0.1", "--sepp", "--sepp-warmup", "1", "--sepp-space", "projector", "--out", str(tmp_path)])
    assert r.returncode == 0 and "of an epoch" in r.stdout, r.stderr[-2000:]
    info = read_csv(tmp_path / "sepp.csv")[0]
    assert info["dim"] == "32" and 0 < float(info["search_s"]) <= float(info["refresh_s"]), info
    assert 0 < float(info["of_epoch"]) and float(info["paired"]) > 0.5, info
    r = run_here(["train.py", *TINY, "--sepp", "--sepp-space", "pixels", "--out", str(tmp_path / "x")])
    assert r.returncode == 2 and "--sepp-space pixels: unknown" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_sepp_train_bank_fills_from_the_training_passes_over_two_ranks(tmp_path):
    """--sepp-bank train under 2 gloo ranks: the first refresh embeds (empty bank), later ones reuse the
    embeddings all-gathered from the training steps, with no pass, and still mine same-label positives."""
    r = run(["train.py", *TINY, "--method", "simsiam", "--subset", "512", "--epochs", "3", "--batch-size", "128",
             "--lr", "0.1", "--sepp", "--sepp-warmup", "0", "--sepp-bank", "train", "--sepp-threshold", "0.3",
             "--out", str(tmp_path)], torchrun=2, timeout=500)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_csv(tmp_path / "sepp.csv")
    assert [x["bank"] for x in rows] == ["pass", "train", "train"], rows
    for x in rows[1:]:   # chance is 0.1; at this size train-bank refreshes measured 0.17-0.26 over seeds 0-2
        assert float(x["paired"]) > 0.5 and float(x["label_agreement"]) > 0.15, x
    r = run_here(["train.py", *TINY, "--sepp", "--sepp-bank", "train", "--sepp-encoder", str(tmp_path / "last.pt"),
                  "--out", str(tmp_path / "x")])
    assert r.returncode == 2 and "drop --sepp-encoder" in r.stderr and "Traceback" not in r.stderr


def test_train_bank_keeps_the_first_view_of_each_step():
    from mining.sepp import TrainBank
    from models.methods import build_method
    from loaders.batch import Batch
    for method in ("byol", "simclr"):    # a target network; concatenated views through the online one
        m = build_method(method, arch="resnet10", small_stem=True, stem_stride=2, proj_hidden=32, proj_dim=16,
                         pred_hidden=16)
        module = m.target[0] if m.momentum_encoder else m.backbone
        tb = TrainBank(40, module, "cpu")
        views, index = torch.randn(2, 8, 3, 16, 16), torch.tensor([3, 39, 0, 7, 8, 9, 10, 11])
        tb.arm()
        m(Batch(views, index, torch.zeros(8, dtype=torch.long)))
        tb.collect(index)
        with torch.no_grad():
            x = views.flatten(0, 1) if m.concat_views else views[0]
            ref = torch.nn.functional.normalize(module(x)[:8], dim=1).half()
        assert torch.allclose(tb.bank[index].float(), ref.float(), atol=2e-3), method
        assert tb.fraction() == pytest.approx(8 / 40) and not tb.bank[1].any()


@pytest.mark.slow
def test_whole_set_search_sharded_over_two_ranks_equals_one_process(tmp_path):
    """SePP's refresh: each rank searches 1/world of the queries; the gathered answer is the whole one
    (n = 1001: the last rank's share is short)."""
    for backend in ("torch", "faiss"):
        one, two = tmp_path / f"one_{backend}.npy", tmp_path / f"two_{backend}.npy"
        r1 = run(["tests/dist_search.py", "--backend", backend, "--out", str(one)])
        r2 = run(["tests/dist_search.py", "--backend", backend, "--out", str(two)], torchrun=2, timeout=300)
        assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr[-1500:], r2.stderr[-1500:])
        a, b = np.load(one), np.load(two)
        x = torch.nn.functional.normalize(torch.randn(1001, 24, generator=torch.Generator().manual_seed(0)), dim=1)
        assert (a == brute(x, 4, 0.2, True)).mean() > 0.999
        assert np.array_equal(a, b), backend


FUSED_CHECK = """
import sys, torch
sys.path.insert(0, ".")
from mining import fused
from mining.index import search_torch
assert fused.available(torch.zeros(1, 8)), "interpreter mode expected"
g = torch.Generator().manual_seed(0)
for n, d, k, bn in [(300, 16, 10, 128), (200, 40, 3, 16), (37, 8, 5, 16), (150, 300, 4, 32)]:   # ragged, D swept
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    x[n // 2:] = torch.nn.functional.normalize(x[:n - n // 2] + 0.2 * torch.randn(n - n // 2, d, generator=g), dim=1)
    s, i = fused.topk_ip(x, x, k, chunk=128, bn=bn)
    rs, ri = (x.double() @ x.double().T).topk(k, dim=1)
    assert (i == ri).float().mean() > 0.999, (n, d, k)
    assert (s.double() - rs).abs().max() < 1e-5
    fs, fi = search_torch(x, x, k)                  # the index's torch back end: fused here, as on a GPU
    us, ui = search_torch(x, x, k, fused=False)
    assert (fi == ui).float().mean() > 0.999 and torch.allclose(fs, us, atol=1e-6)
print("ok")
"""


def test_fused_search_matches_brute_force_in_the_triton_interpreter():
    """The Triton kernels of mining/fused.py (the GPU's whole-set search) run on the CPU through Triton's
    interpreter: same neighbours and similarities as a float64 brute force."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("a CPU check (the GPU host's triton 3.6 interpreter fails on it); the gpu tests run there")
    r = run(["-c", FUSED_CHECK], env={"TRITON_INTERPRET": "1"}, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_search_on_the_gpu_matches_brute_force(dtype):
    from mining import fused
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(50_000, 128, generator=g), dim=1).cuda()
    keys = x.to(dtype)
    assert fused.available(keys)
    s, i = fused.topk_ip(keys[:4096], keys, 6)
    ref = keys[:4096].float() @ keys.float().T           # the same (rounded) inputs, fp32 products
    rs, ri = ref.topk(6, dim=1)
    assert (i == ri).float().mean() > 0.999
    assert (s - rs).abs().max() < 1e-4
    ws, wi = search(x[:4096].to(dtype), x.to(dtype), k=6, backend="torch")     # the index's torch back end
    assert (wi == ri).float().mean() > 0.999 and (ws - rs).abs().max() < 1e-4


@pytest.mark.slow
def test_a_fixed_encoder_of_foreign_weights_mines_once(tmp_path):
    """--sepp-encoder with torchvision-format ResNet weights: the set is embedded and searched at the start of
    the run (the warm-up is for a training network), and only then (--sepp-every 1 would refresh a training
    network every epoch)."""
    from models.backbones import build_backbone
    torch.manual_seed(0)
    backbone, _ = build_backbone("resnet10", True, 2)
    torch.save(backbone.state_dict(), tmp_path / "resnet10.pth")
    r = run_here(["train.py", *TINY, "--method", "simsiam", "--subset", "256", "--epochs", "3", "--batch-size", "64",
                  "--sepp", "--sepp-warmup", "2", "--sepp-every", "1", "--sepp-encoder", str(tmp_path / "resnet10.pth"),
                  "--out", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_csv(tmp_path / "run" / "sepp.csv")
    assert [x["epoch"] for x in rows] == ["0"] and float(rows[0]["paired"]) > 0.5, rows
    # --sepp-center: the run's bank is searched in centred cosines, as python -m mining.mine --center mines
    r = run_here(["train.py", *TINY, "--method", "simsiam", "--subset", "256", "--epochs", "1", "--batch-size", "64",
                  "--sepp", "--sepp-k", "3", "--sepp-center", "--sepp-threshold", "0.85",
                  "--sepp-encoder", str(tmp_path / "resnet10.pth"), "--out", str(tmp_path / "centred")])
    assert r.returncode == 0, r.stderr[-2000:]
    got = read_csv(tmp_path / "centred" / "sepp.csv")[0]
    r = run_here(["-m", "mining.mine", "--encoder", str(tmp_path / "resnet10.pth"), "--arch", "resnet10",
                  "--stem-stride", "2", "--subset", "256", "--k", "3", "--center", "--no-progress", "--workers", "1",
                  "--out", str(tmp_path / "c.pt")])
    assert r.returncode == 0, r.stderr[-2000:]
    sims = torch.load(tmp_path / "c.pt", weights_only=False)["sims"]
    kept = sims[sims >= 0.85]
    assert 0.05 < kept.numel() / sims.numel() < 0.95      # a threshold that filters part
    assert float(got["candidates_above_threshold"]) == pytest.approx(kept.numel() / sims.numel(), abs=0.01)
    assert float(got["mean_sim"]) == pytest.approx(kept.mean().item(), abs=2e-3)
    # --sepp-keep 0.5: the threshold is the median of the rank-1 similarities, whatever their scale
    r = run_here(["train.py", *TINY, "--method", "simsiam", "--subset", "256", "--epochs", "1", "--batch-size", "64",
                  "--sepp", "--sepp-k", "3", "--sepp-keep", "0.5", "--sepp-threshold", "-1",
                  "--sepp-encoder", str(tmp_path / "resnet10.pth"), "--out", str(tmp_path / "keep")])
    assert r.returncode == 0, r.stderr[-2000:]
    got = read_csv(tmp_path / "keep" / "sepp.csv")[0]
    assert float(got["threshold_used"]) > 0.5 and float(got["candidates_above_threshold"]) <= 0.5 + 1e-6
