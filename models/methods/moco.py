"""MoCo v2 (Chen et al. 2020): query encoder, momentum key encoder, a queue of negatives, symmetrized."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from engine import dist
from models.heads import mlp
from models.losses import info_nce
from models.methods.base import Method


def moco_contrast(q, k, ids, queue, temperature, *, pos_ids=None, queue_ids=None):
    """q [B, D] queries, k [B, D] their keys (no gradient), ids [B] sample indices. Logits: q.k_own and
    q.queue, as MoCo; other in-batch keys are left out, except semantic positives (pos_ids) which count."""
    keys = torch.cat([k, queue])
    B, Q = k.shape[0], queue.shape[0]
    pos = torch.zeros(B, B + Q, dtype=torch.bool, device=q.device)
    pos[:, :B] = ids[:, None] == ids[None, :]
    if pos_ids is not None:
        pos[:, :B] |= (pos_ids[:, None] == ids[None, :]) & (pos_ids[:, None] >= 0)
        if queue_ids is not None:
            pos[:, B:] = (pos_ids[:, None] == queue_ids[None, :]) & (pos_ids[:, None] >= 0)
    exclude = torch.zeros_like(pos)
    exclude[:, :B] = ~pos[:, :B]
    return info_nce(q, keys, pos, temperature, exclude=exclude)


def moco_mix(qm, k, ids, lam, partner, *, queue, temperature):
    """BSIM term: lam * InfoNCE(m, k_i) + (1 - lam) * InfoNCE(m, k_j), keys from the momentum encoder,
    negatives the queue (other in-batch keys left out, as in moco_contrast)."""
    B, Q = k.shape[0], queue.shape[0]
    w = torch.zeros(B, B + Q, device=qm.device)
    w[:, :B] = lam[:, None] * (ids[:, None] == ids[None, :]) + (1 - lam)[:, None] * (ids[partner][:, None] == ids[None, :])
    exclude = torch.zeros_like(w, dtype=torch.bool)
    exclude[:, :B] = w[:, :B] == 0
    return info_nce(qm, torch.cat([k, queue]), w, temperature, exclude=exclude)


class Keys(NamedTuple):
    """MoCo's step in float32: normalized queries and keys per view, the queue (and its sample ids) before it."""
    q: list
    k: list
    queue: torch.Tensor
    queue_ids: torch.Tensor


class MoCo(Method):
    momentum_encoder = True   # keys from each view separately (per-view BN), as the paper

    def __init__(self, proj_hidden=2048, proj_dim=128, temperature=0.2, queue_size=65536, **kw):
        super().__init__(**kw)
        self.projector = mlp(self.feat_dim, proj_hidden, proj_dim, 2, hidden_bn=False)  # MoCo v2's MLP head
        self.target = self.make_target(self.backbone, self.projector)
        self.temperature = temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def online_target_pairs(self):
        return [(self.backbone, self.target[0]), (self.projector, self.target[1])]

    def keys(self, views):
        with torch.no_grad():
            return self.encode_views(views, self.target[0], self.target[1])

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor, ids: torch.Tensor):
        k, ids = dist.all_gather(k), dist.all_gather(ids)
        n, Q = k.shape[0], self.queue.shape[0]
        slots = (self.queue_ptr + torch.arange(n, device=k.device)) % Q
        self.queue[slots[-Q:]] = k[-Q:]
        self.queue_ids[slots[-Q:]] = ids[-Q:]
        self.queue_ptr.copy_((self.queue_ptr + n) % Q)

    def embed(self, views):
        return self.encode_views(views, self.backbone, self.projector), self.keys(views)

    def prepare(self, e):
        q, k = e
        return Keys([F.normalize(x.float(), dim=1) for x in q], [F.normalize(x.float(), dim=1) for x in k],
                    self.queue.clone(), self.queue_ids.clone())

    def loss(self, e, ids, pos):
        q, k, queue, qid = e
        return {"loss": 0.5 * (moco_contrast(q[0], k[1], ids, queue, self.temperature, pos_ids=pos, queue_ids=qid)
                               + moco_contrast(q[1], k[0], ids, queue, self.temperature, pos_ids=pos, queue_ids=qid))}

    def online(self, x):
        return self.projector(self.backbone(x))

    def mix_term(self, e, qm, ids, mix):
        return moco_mix(F.normalize(qm.float(), dim=1), e.k[1], ids, mix.lam, mix.partner, queue=e.queue,
                        temperature=self.temperature)

    def after_loss(self, e, ids):
        self.enqueue(e.k[1], ids)
