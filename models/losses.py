"""Losses as pure functions of embeddings. Call them outside autocast: they compute in float32."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, temperature: float,
             exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Masked InfoNCE. q [N, D], k [M, D] (L2-normalized); pos [N, M] bool or non-negative weights;
    exclude [N, M] bool: columns left out of row i's denominator (self-similarity, say).

        loss_i = - sum_m w_im * log( exp(q_i.k_m / t) / sum_{m' not excluded} exp(q_i.k_m' / t) ) / sum_m w_im

    With one positive per row this is InfoNCE/NT-Xent; several positives (semantic positives) are averaged
    (SupCon's L_out); weights lam, 1-lam give BSIM's mixture term. Rows without a positive are skipped."""
    logits = (q.float() @ k.float().T) / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    w = pos.float()
    per_row = -torch.where(w > 0, w * logp, torch.zeros_like(logp)).sum(1)
    norm = w.sum(1)
    has = (norm > 0).float()  # masked arithmetic, not boolean indexing: no host-device sync in the step
    return (per_row / norm.clamp_min(1e-12) * has).sum() / has.sum().clamp_min(1)


def neg_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), per row [N]."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1)


def byol_regression(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), z from the target (no gradient), per row [N]."""
    return 2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)
