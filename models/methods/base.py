"""What the four methods share: the online encoder, an optional momentum copy, fp32 losses, and forward.

Every method's forward is Method.forward, and an add-on (engine/extension.py) reaches a method through one
declared interface, with no branch on any add-on in a method:
  positives  int64 [B] or None (Batch.pos)   an extra positive per sample (a sample id, -1 for none; SePP's):
                           contrastive methods add it to their positive masks (the masked info_nce), BYOL and
                           SimSiam a regression term of its own (sepp_term), weighted by sepp_weight
  terms      the add-on's own loss terms: its extension's embed (extra forward passes under autocast, e.g. through
                           online, the online path) and terms (float32 terms over the method's embeddings, e.g.
                           mix_term for BSIM's mixtures), each added with its weight
A method defines embed (the views, under autocast), prepare (float32 forms of those embeddings), loss (its own
term, with the positives), online and mix_term; after_loss if it keeps state (MoCo's queue)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from models.backbones import build_backbone


class Method(nn.Module):
    concat_views = False   # forward V views as one batch (BN statistics over all views) or one by one
    sync_bn = False        # convert BN to SyncBatchNorm under multi-GPU DDP (global-batch statistics)
    momentum_encoder = False
    cosine_momentum = False  # the momentum encoder's ema: constant (MoCo), or a cosine from ema to 1 (BYOL)
    recipe = "simclr"      # augmentation recipe (loaders/augment.py RECIPES)
    sepp_term = False      # SePP's positives as a loss term of their own (out["loss_sepp"]), not a positive mask

    def __init__(self, arch="resnet18", small_stem=False, stem_stride=1, width=64, sepp_weight=1.0, **_):
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(arch, small_stem, stem_stride, width=width)
        self.sepp_weight = sepp_weight   # BYOL/SimSiam: total += w * L_sepp (semantic positives)

    def make_target(self, *modules: nn.Module) -> nn.ModuleList:
        """A frozen copy (momentum / target encoder), updated only by momentum_update."""
        t = nn.ModuleList(copy.deepcopy(m) for m in modules)
        for p in t.parameters():
            p.requires_grad_(False)
        return t

    def online_target_pairs(self):
        return []

    @torch.no_grad()
    def momentum_update(self, m: float):
        """target <- m * target + (1 - m) * online (MoCo, BYOL); BN buffers are copied."""
        for online, target in self.online_target_pairs():
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(m).add_(po.detach(), alpha=1 - m)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)

    def encode_views(self, views: torch.Tensor, *fns) -> list[torch.Tensor]:
        """Apply fns in sequence to every view ([V, B, ...]): concatenated or one by one (concat_views)."""
        V = views.shape[0]
        if self.concat_views:
            x = views.flatten(0, 1)
            for f in fns:
                x = f(x)
            return list(x.chunk(V))
        out = []
        for v in views:
            for f in fns:
                v = f(v)
            out.append(v)
        return out

    def forward(self, batch, extensions=()) -> dict:
        """batch (loaders/batch.Batch), extensions: the add-ons that bring loss terms (engine/extension.py) ->
        {'loss': float32 total, 'loss_method' (the method's own, where terms were added), and the logged terms}."""
        e = self.embed(batch.views)
        extra = [x.embed(self, batch) for x in extensions]
        with fp32(batch.views.device.type):
            e = self.prepare(e)
            out = self.loss(e, batch.index, batch.pos)
            terms = {}
            for x, ex in zip(extensions, extra):
                mine = x.terms(self, e, ex, batch)
                taken = set(mine) & (set(terms) | set(out))   # one would hide the other in the log, or in the loss
                if taken:
                    raise ValueError(f"{type(x).__name__} names a loss term already taken: {sorted(taken)}")
                terms |= mine
            if terms:
                out["loss_method"] = out["loss"].detach()
            for name, (term, weight) in terms.items():
                out[name] = term.detach()
                out["loss"] = out["loss"] + weight * term
        self.after_loss(e, batch.index)
        return out

    def embed(self, views: torch.Tensor):
        """views [V, B, C, H, W] -> what loss and mix_term need (under autocast)."""
        raise NotImplementedError

    def prepare(self, e):
        """embed's output in the float32 forms the losses take (outside autocast)."""
        return e

    def loss(self, e, ids: torch.Tensor, pos: torch.Tensor | None) -> dict:
        """The method's own term {'loss': ...}; pos: SePP's positives (None without them)."""
        raise NotImplementedError

    def online(self, x: torch.Tensor) -> torch.Tensor:
        """The online path of images x [B, C, H, W] (BSIM's mixtures)."""
        raise NotImplementedError

    def mix_term(self, e, em: torch.Tensor, ids: torch.Tensor, mix) -> torch.Tensor:
        """BSIM's term for the mixtures' online embeddings em, given the views' e."""
        raise NotImplementedError

    def after_loss(self, e, ids: torch.Tensor):
        """State kept from the step (MoCo's queue); nothing by default."""


def fp32(device_type: str):
    """Losses run outside autocast, in float32."""
    return torch.autocast(device_type, enabled=False)


def mix_regression(pm: torch.Tensor, z: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor, D) -> torch.Tensor:
    """BSIM term for BYOL/SimSiam: mean of lam * D(p(m), z_i) + (1 - lam) * D(p(m), z_j), z the targets."""
    return (lam * D(pm, z) + (1 - lam) * D(pm, z[partner])).mean()


def sepp_regression(p: torch.Tensor, z: torch.Tensor, ids: torch.Tensor, pos_ids: torch.Tensor, D) -> torch.Tensor:
    """SePP term for BYOL/SimSiam: mean over the anchors whose semantic positive (pos_ids, a sample id or -1)
    is in the batch of D(p_i, z_j), j that positive's row. Masked, so no host-device sync."""
    hit = (pos_ids[:, None] == ids[None, :]) & (pos_ids[:, None] >= 0)
    has = hit.any(1)
    j = hit.float().argmax(1)
    return (D(p, z[j]) * has).sum() / has.sum().clamp(min=1)


def regression_loss(method: "Method", p: list, z: list, ids: torch.Tensor, pos: torch.Tensor | None, D,
                    scale: float) -> dict:
    """BYOL's and SimSiam's symmetrized scale * (D(p1, z2) + D(p2, z1)), and with SePP's positives the same form
    of sepp_regression as a weighted term of its own."""
    out = {"loss": scale * (D(p[0], z[1]).mean() + D(p[1], z[0]).mean())}
    if pos is not None:
        out = with_sepp(out, method, scale * (sepp_regression(p[0], z[1], ids, pos, D)
                                              + sepp_regression(p[1], z[0], ids, pos, D)))
    return out


def with_sepp(out: dict, method: "Method", loss_sepp: torch.Tensor) -> dict:
    out["loss_sepp"] = loss_sepp.detach()
    out["loss"] = out["loss"] + method.sepp_weight * loss_sepp
    return out
