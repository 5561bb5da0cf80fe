"""SePP mining pieces: every index back end equals brute force; threshold and k hold; the pair plan keeps
each pair in one batch on one rank and covers every sample once per epoch."""
import numpy as np
import pytest
import torch

from tests.helpers import TINY, read_csv, run

from loaders.order import rank_batches
from mining.index import recall, search
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
    sims, ids = search(x, k=5, threshold=0.3, backend=backend, exclude_self=True, chunk=128, nprobe=10 ** 6)
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
    _, ivf = search(x, k=10, backend="faiss-ivf", exclude_self=True, nprobe=4)
    r = recall(ivf, exact)
    assert 0.3 < r <= 1.0  # approximate: measured, not equal
    s, i = search(x, k=3, threshold=0.99, backend="faiss", exclude_self=True)
    assert i.shape == (2000, 3) and (i == -1).float().mean() > 0.9 and (s[i >= 0] >= 0.99).all()
    s, i = search(x[:7], x, k=2, backend="torch")
    assert (i[:, 0] == torch.arange(7)).all() and torch.allclose(s[:, 0], torch.ones(7), atol=1e-5)


def test_pair_plan_keeps_pairs_in_one_batch_and_covers_every_sample():
    x = data(1001, 16, seed=2)
    _, nb = search(x, k=4, threshold=0.5, backend="torch", exclude_self=True)
    nb = nb.numpy()
    plan = PairPlan(nb, seed=0)
    for epoch in range(2):
        order = plan(epoch)
        partner = plan.partner
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


@pytest.mark.slow
def test_sepp_training_mines_same_label_positives_on_fashion_mnist(tmp_path):
    """After one short epoch of MoCo v2 (torch loader), the mined positives share their anchor's label far more
    often than chance (10%); the queue's ids let earlier positives count too."""
    r = run(["train.py", *TINY, "--method", "moco", "--subset", "1024", "--epochs", "2", "--batch-size", "128",
             "--lr", "0.1", "--sepp", "--sepp-warmup", "1", "--sepp-k", "3", "--out", str(tmp_path)], timeout=400)
    assert r.returncode == 0 and "SePP refresh" in r.stdout, r.stderr[-2000:]
    info = read_csv(tmp_path / "sepp.csv")[0]
    assert float(info["paired"]) > 0.5 and float(info["label_agreement"]) > 0.3, info
    rows = read_csv(tmp_path / "epoch.csv")
    assert len(rows) == 2 and all(np.isfinite(float(x["loss"])) for x in rows)


def test_sepp_flag_errors(tmp_path):
    r = run(["train.py", *TINY, "--sepp", "--batch-size", "7", "--subset", "64", "--epochs", "1", "--out",
             str(tmp_path)])
    assert r.returncode == 2 and "must be even" in r.stderr and "Traceback" not in r.stderr
    r = run(["train.py", *TINY, "--sepp", "--sepp-k", "0", "--out", str(tmp_path)])
    assert r.returncode == 2 and "--sepp-k" in r.stderr and "Traceback" not in r.stderr


def test_block_topk_is_exact():
    from mining.index import block_topk
    g = torch.Generator().manual_seed(3)
    for n in (5000, 4096, 700):
        s = torch.randn(33, n, generator=g)
        s[:, 17] += 10  # a clear winner, and ties between blocks elsewhere
        v, i = block_topk(s, 7, block=256)
        rv, ri = s.topk(7, dim=1)
        assert torch.equal(v, rv) and torch.equal(i, ri)
