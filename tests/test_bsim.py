"""BSIM mixture views: the mixing on the device and each method's joint-similarity term."""
import math

import pytest
import torch
import torch.nn.functional as F

from loaders.batch import Batch
from loaders.mix import BSIM, Mix, MixSpec, cutmix_boxes, derangement, make_mix
from models.methods import build_method
from models.methods.moco import moco_contrast, moco_mix
from models.methods.simclr import nt_xent_mix


def ref_mix_infonce(zm, k, lam, partner, t, neg_cols=None):
    """lam * -log softmax(zm.k/t)[i] + (1 - lam) * -log softmax(...)[j], float64, with loops."""
    zm, k = F.normalize(zm.double(), dim=1), F.normalize(k.double(), dim=1)
    out = 0.0
    for i in range(zm.shape[0]):
        cols = list(range(k.shape[0])) if neg_cols is None else neg_cols(i)
        den = sum(math.exp(float(zm[i] @ k[c]) / t) for c in cols)
        lp = lambda c: float(zm[i] @ k[c]) / t - math.log(den)  # noqa: E731
        out += -(float(lam[i]) * lp(i) + (1 - float(lam[i])) * lp(int(partner[i])))
    return out / zm.shape[0]


def test_partner_permutation_has_no_fixed_points_and_is_uniform():
    counts = torch.zeros(6, 6)
    for _ in range(3000):
        p = derangement(6, "cpu")
        assert sorted(p.tolist()) == list(range(6)) and (p != torch.arange(6)).all()
        counts[torch.arange(6), p] += 1
    off = counts[~torch.eye(6, dtype=torch.bool)] / 3000
    assert (off - 0.2).abs().max() < 0.04      # each j != i with chance 1/5


def test_cutmix_box_area_matches_corrected_lambda():
    lam = torch.rand(500)
    mask, kept = cutmix_boxes(lam, 32, 24)
    torch.testing.assert_close(1 - mask.float().mean((1, 2, 3)), kept)
    # clipping at the border only removes pasted area: the kept share is never below the asked lam
    # (up to rounding the box to whole pixels), and tracks it
    assert (kept >= lam - 0.06).all()
    assert torch.corrcoef(torch.stack([kept, lam]))[0, 1] > 0.8


def test_mixup_values_and_lambda_one_gives_first_source():
    x = torch.randn(5, 3, 8, 8)
    lam, partner = torch.tensor([1.0, 0.0, 0.3, 0.5, 0.9]), torch.tensor([1, 2, 3, 4, 0])
    m = make_mix(x, MixSpec("mixup"), lam, partner)
    ref = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner]
    torch.testing.assert_close(m.images, ref)
    torch.testing.assert_close(m.images[0], x[0])
    cm = make_mix(x, MixSpec("cutmix"), torch.ones(5), partner)
    torch.testing.assert_close(cm.images, x) and torch.testing.assert_close(cm.lam, torch.ones(5))


def test_beta_alpha_controls_lambda():
    x = torch.randn(4000, 1, 2, 2)
    lam = make_mix(x, MixSpec("mixup", alpha=0.2)).lam
    assert ((lam < 0.1) | (lam > 0.9)).float().mean() > 0.5   # Beta(0.2, 0.2) is U-shaped
    lam = make_mix(x, MixSpec("mixup", alpha=1.0)).lam
    assert abs(lam.mean().item() - 0.5) < 0.03 and abs(lam.var().item() - 1 / 12) < 0.01


def test_simclr_mix_term_matches_reference_and_reduces_at_lambda_one():
    zm, k = torch.randn(6, 8), torch.randn(6, 8)
    lam, partner = torch.rand(6), derangement(6, "cpu")
    n = lambda x: F.normalize(x, dim=1)  # noqa: E731
    got = nt_xent_mix(n(zm), n(k), torch.arange(6), lam, partner, 0.2)
    assert abs(got.item() - ref_mix_infonce(zm, k, lam, partner, 0.2)) < 1e-4
    one = nt_xent_mix(n(zm), n(k), torch.arange(6), torch.ones(6), partner, 0.2)
    plain = -torch.log_softmax(n(zm) @ n(k).T / 0.2, 1).diag().mean()   # the method's positive term
    assert abs(one.item() - plain.item()) < 1e-5


def test_moco_mix_term_matches_reference_and_reduces_at_lambda_one():
    qm, k, queue = torch.randn(5, 8), torch.randn(5, 8), torch.randn(16, 8)
    lam, partner = torch.rand(5), derangement(5, "cpu")
    n = lambda x: F.normalize(x, dim=1)  # noqa: E731
    ids = torch.arange(5)
    got = moco_mix(n(qm), n(k), ids, lam, partner, queue=n(queue), temperature=0.2)
    keys = torch.cat([k, queue])
    ref = ref_mix_infonce(qm, keys, lam, partner, 0.2,
                          neg_cols=lambda i: sorted({i, int(partner[i])}) + list(range(5, 21)))
    assert abs(got.item() - ref) < 1e-4
    one = moco_mix(n(qm), n(k), ids, torch.ones(5), partner, queue=n(queue), temperature=0.2)
    assert abs(one.item() - moco_contrast(n(qm), n(k), ids, n(queue), 0.2).item()) < 1e-5


@pytest.mark.parametrize("name", ["simclr", "moco", "byol", "simsiam"])
def test_method_total_is_own_loss_plus_weighted_mix_term(name):
    torch.manual_seed(0)
    m = build_method(name, arch="resnet10", small_stem=True, proj_hidden=32, proj_dim=16, pred_hidden=16,
                     queue_size=32)
    views = torch.randn(2, 8, 3, 16, 16)
    b = Batch(views, torch.arange(8), torch.zeros(8).long())
    bsim = BSIM(MixSpec("mixup"), weight=0.5)   # its extension: the mixtures before the forward, the term inside
    bsim.before_forward(b, 0)
    q0 = m.queue.clone() if name == "moco" else None
    out = m(b, [bsim])
    torch.testing.assert_close(out["loss"], out["loss_method"] + 0.5 * out["loss_mix"])
    with torch.no_grad():  # recompute the BYOL / SimSiam term from the formula, float64
        lam, j = bsim.mix.lam.double(), bsim.mix.partner
        if name in ("byol", "simsiam"):
            pm = m.predictor(m.projector(m.backbone(bsim.mix.images))).double()
            z = (m.target[1](m.target[0](views[1])) if name == "byol" else m.projector(m.backbone(views[1]))).double()
            cos = lambda a, c: (F.normalize(a, dim=1) * F.normalize(c, dim=1)).sum(1)  # noqa: E731
            D = (lambda a, c: 2 - 2 * cos(a, c)) if name == "byol" else (lambda a, c: -cos(a, c))
            ref = (lam * D(pm, z) + (1 - lam) * D(pm, z[j])).mean()
            assert abs(out["loss_mix"].item() - ref.item()) < 1e-4
    if q0 is not None:
        assert not torch.equal(q0, m.queue)
