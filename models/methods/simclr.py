"""SimCLR (Chen et al. 2020): NT-Xent over the global batch of 2N views, positives found by sample index."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine import dist
from models.heads import mlp
from models.losses import info_nce
from models.methods.base import Method


def nt_xent(z: torch.Tensor, ids: torch.Tensor, temperature: float, pos_ids: torch.Tensor | None = None):
    """z [N, D] this rank's normalized views, ids [N] their sample indices. Keys: every rank's views (with
    gradient). Positives: the other views of the same sample, plus views of pos_ids (semantic positives,
    -1 = none). Self-similarity is excluded from the denominator (2N-1 terms, eq. 1 of the paper)."""
    k, kid = dist.gather_with_grad(z), dist.all_gather(ids)
    n = z.shape[0]
    self_mask = torch.zeros(n, k.shape[0], dtype=torch.bool, device=z.device)
    rows = torch.arange(n, device=z.device)
    self_mask[rows, dist.rank() * n + rows] = True
    pos = (ids[:, None] == kid[None, :]) & ~self_mask
    if pos_ids is not None:
        pos |= (pos_ids[:, None] == kid[None, :]) & (pos_ids[:, None] >= 0)
    return info_nce(z, k, pos, temperature, exclude=self_mask)


def nt_xent_mix(zm, k2, ids, lam, partner, temperature):
    """BSIM term: lam * InfoNCE(m, k_i) + (1 - lam) * InfoNCE(m, k_j). zm [B, D] mixtures (of first views),
    k2 [B, D] this rank's second views; keys and negatives: every rank's second views (with gradient)."""
    k, kid = dist.gather_with_grad(k2), dist.all_gather(ids)
    w = lam[:, None] * (ids[:, None] == kid[None, :]) + (1 - lam)[:, None] * (ids[partner][:, None] == kid[None, :])
    return info_nce(zm, k, w, temperature)


class SimCLR(Method):
    concat_views = True   # one forward of all 2N views: BN statistics over the whole batch, as the paper
    sync_bn = True        # ... and global BN across devices

    def __init__(self, proj_hidden=2048, proj_dim=128, temperature=0.2, **kw):
        super().__init__(**kw)
        self.projector = mlp(self.feat_dim, proj_hidden, proj_dim, 2)
        self.temperature = temperature

    def embed(self, views):
        return self.encode_views(views, self.backbone, self.projector)

    def prepare(self, z):
        return F.normalize(torch.cat(z).float(), dim=1)   # [V B, D], view-major

    def loss(self, z, ids, pos):
        V = z.shape[0] // ids.shape[0]
        pos = pos.repeat(V) if pos is not None else None   # SePP: semantic positives count too
        return {"loss": nt_xent(z, ids.repeat(V), self.temperature, pos)}

    def online(self, x):
        return self.projector(self.backbone(x))

    def mix_term(self, z, zm, ids, mix):
        B = ids.shape[0]
        return nt_xent_mix(F.normalize(zm.float(), dim=1), z[B:2 * B], ids, mix.lam, mix.partner, self.temperature)
