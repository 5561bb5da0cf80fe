"""Each method's loss against a float64 reference written from the paper's formula."""
import math

import torch
import torch.nn.functional as F

from loaders.batch import Batch
from models.losses import info_nce
from models.methods import build_method
from models.methods.moco import moco_contrast
from models.methods.simclr import nt_xent


def ref_nt_xent(z, t):
    """SimCLR eq. 1 with loops: z [2N, D], views (i, i+N) are positive pairs."""
    z = F.normalize(z.double(), dim=1)
    n2, n = z.shape[0], z.shape[0] // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / den)
    return total / n2


def ref_moco(q, k, queue, t):
    """MoCo eq. 1: -log exp(q.k+/t) / (exp(q.k+/t) + sum_queue exp(q.k-/t))."""
    q, k, queue = (F.normalize(x.double(), dim=1) for x in (q, k, queue))
    out = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ c) / t) for c in queue)
        out += -math.log(pos / (pos + neg))
    return out / q.shape[0]


def test_nt_xent_matches_reference():
    z = torch.randn(12, 8)
    ids = torch.arange(6).repeat(2)
    got = nt_xent(F.normalize(z, dim=1), ids, 0.2)
    assert abs(got.item() - ref_nt_xent(z, 0.2)) < 1e-4


def test_nt_xent_identical_embeddings_give_log_2n_minus_1():
    z = F.normalize(torch.ones(10, 4), dim=1)
    got = nt_xent(z, torch.arange(5).repeat(2), 0.5)
    assert abs(got.item() - math.log(2 * 5 - 1)) < 1e-5


def test_moco_contrast_matches_reference():
    q, k, queue = torch.randn(5, 8), torch.randn(5, 8), torch.randn(20, 8)
    n = lambda x: F.normalize(x, dim=1)  # noqa: E731
    got = moco_contrast(n(q), n(k), torch.arange(5), n(queue), 0.2)
    assert abs(got.item() - ref_moco(q, k, queue, 0.2)) < 1e-4


def test_info_nce_several_positives_is_their_mean():
    q, k = F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(7, 4), dim=1)
    pos = torch.zeros(3, 7, dtype=torch.bool)
    pos[0, [1, 2]] = pos[1, 3] = pos[2, [0, 5, 6]] = True
    logp = torch.log_softmax((q.double() @ k.double().T) / 0.1, 1)
    ref = sum(-logp[i][pos[i]].mean() for i in range(3)) / 3
    assert abs(info_nce(q, k, pos, 0.1).item() - ref.item()) < 1e-5


def run_method(name, B=8, **kw):
    torch.manual_seed(0)
    m = build_method(name, arch="resnet10", small_stem=True, proj_hidden=32, proj_dim=16, pred_hidden=16,
                     queue_size=32, temperature=0.2, **kw)
    views = torch.randn(2, B, 3, 16, 16)
    batch = Batch(views=views, index=torch.arange(B) + 100, label=torch.zeros(B).long())
    return m, batch


def test_simclr_module_loss_is_nt_xent_of_its_embeddings():
    m, b = run_method("simclr")
    loss = m(b)["loss"]
    with torch.no_grad():
        z = m.projector(m.backbone(b.views.flatten(0, 1)))   # concatenated: one BN batch
    assert abs(loss.item() - ref_nt_xent(z, 0.2)) < 1e-4


def test_moco_module_loss_is_symmetrized_and_enqueues():
    m, b = run_method("moco")
    queue = m.queue.clone()
    loss = m(b)["loss"]
    with torch.no_grad():
        q = [m.projector(m.backbone(v)) for v in b.views]
        k = [m.target[1](m.target[0](v)) for v in b.views]
    ref = 0.5 * (ref_moco(q[0], k[1], queue, 0.2) + ref_moco(q[1], k[0], queue, 0.2))
    assert abs(loss.item() - ref) < 1e-4
    torch.testing.assert_close(m.queue[:8], F.normalize(k[1], dim=1), atol=1e-5, rtol=0)
    assert m.queue_ids[:8].tolist() == list(range(100, 108)) and int(m.queue_ptr) == 8


def test_byol_module_loss_matches_formula():
    m, b = run_method("byol")
    loss = m(b)["loss"]
    with torch.no_grad():
        p = [m.predictor(m.projector(m.backbone(v))).double() for v in b.views]
        z = [m.target[1](m.target[0](v)).double() for v in b.views]
    reg = lambda a, c: ((F.normalize(a, dim=1) - F.normalize(c, dim=1)) ** 2).sum(1).mean()  # noqa: E731
    assert abs(loss.item() - (reg(p[0], z[1]) + reg(p[1], z[0])).item()) < 1e-4


def test_simsiam_module_loss_matches_formula_and_stops_gradient():
    m, b = run_method("simsiam")
    loss = m(b)["loss"]
    with torch.no_grad():
        z = [m.projector(m.backbone(v)).double() for v in b.views]
        p = [m.predictor(x.float()).double() for x in z]
    d = lambda a, c: -(F.normalize(a, dim=1) * F.normalize(c, dim=1)).sum(1).mean()  # noqa: E731
    assert abs(loss.item() - 0.5 * (d(p[0], z[1]) + d(p[1], z[0])).item()) < 1e-4
    loss.backward()
    assert m.predictor[0].weight.grad is not None


def test_views_forwarded_jointly_or_per_view_as_the_papers():
    """BN statistics: SimCLR forwards 2N views as one batch (1 BN update), the others view by view (2)."""
    for name, updates in (("simclr", 1), ("moco", 2), ("byol", 2), ("simsiam", 2)):
        m, b = run_method(name)
        m(b)
        assert int(m.backbone.bn1.num_batches_tracked) == updates, name


def test_momentum_update_moves_target_towards_online():
    m, b = run_method("byol")
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    t_before = m.target[0].conv1.weight.clone()
    m.momentum_update(0.9)
    expect = 0.9 * t_before + 0.1 * m.backbone.conv1.weight
    torch.testing.assert_close(m.target[0].conv1.weight, expect)


def test_losses_are_float32_under_autocast():
    m, b = run_method("simclr")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(b)
    assert out["loss"].dtype == torch.float32


def ref_nt_xent_sepp(z, ids, partner, t):
    """SimCLR with semantic positives (SupCon's L_out): row i averages -log softmax over every other row
    whose sample is i's own or i's mined positive."""
    z = F.normalize(z.double(), dim=1)
    n2 = z.shape[0]
    total = 0.0
    for i in range(n2):
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        pos = [k for k in range(n2) if k != i and (ids[k] == ids[i] or ids[k] == partner[ids[i]])]
        total += sum(-math.log(math.exp(float(z[i] @ z[k]) / t) / den) for k in pos) / len(pos)
    return total / n2


def test_simclr_with_semantic_positives_matches_reference():
    torch.manual_seed(0)
    m, b = run_method("simclr")
    B = b.size
    partner = {int(i): -1 for i in b.index}
    a, c = int(b.index[0]), int(b.index[3])
    partner[a], partner[c] = c, a
    b.pos = torch.tensor([partner[int(i)] for i in b.index])
    loss = m(b)["loss"]
    with torch.no_grad():
        z = m.projector(m.backbone(torch.cat(list(b.views))))  # one forward of all views, as SimCLR does
    ids = b.index.repeat(2).tolist()
    assert abs(loss.item() - ref_nt_xent_sepp(z, ids, partner, m.temperature)) < 1e-4
    b.pos = torch.full((B,), -1)
    assert abs(m(b)["loss"].item() - ref_nt_xent(z, m.temperature)) < 1e-4


def test_byol_and_simsiam_semantic_positive_term_matches_reference():
    for method in ("byol", "simsiam"):
        torch.manual_seed(0)
        m, b = run_method(method)
        base = m(b)["loss"].item()
        b.pos = torch.full((b.size,), -1)
        b.pos[1], b.pos[2] = b.index[2], b.index[1]
        out = m(b)
        with torch.no_grad():
            if method == "byol":
                p = [m.predictor(m.projector(m.backbone(v))).double() for v in b.views]
                z = [m.target[1](m.target[0](v)).double() for v in b.views]
                D = lambda a, c: ((F.normalize(a, dim=0) - F.normalize(c, dim=0)) ** 2).sum()  # noqa: E731
                scale = 1.0
            else:
                z = [m.projector(m.backbone(v)).double() for v in b.views]
                p = [m.predictor(x.float()).double() for x in z]
                D = lambda a, c: -(F.normalize(a, dim=0) * F.normalize(c, dim=0)).sum()  # noqa: E731
                scale = 0.5
        term = sum(D(p[v][i], z[1 - v][j]) for v in (0, 1) for i, j in ((1, 2), (2, 1))) / 2
        assert abs(out["loss_sepp"].item() - scale * term.item()) < 1e-4, method
        assert abs(out["loss"].item() - base - m.sepp_weight * out["loss_sepp"].item()) < 1e-4
