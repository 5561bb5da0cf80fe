"""What the four methods share: the online encoder, an optional momentum copy, fp32 losses."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from models.backbones import build_backbone


class Method(nn.Module):
    concat_views = False   # forward V views as one batch (BN statistics over all views) or one by one
    sync_bn = False        # convert BN to SyncBatchNorm under multi-GPU DDP (global-batch statistics)
    momentum_encoder = False
    recipe = "simclr"      # augmentation recipe (loaders/augment.py RECIPES)

    def __init__(self, arch="resnet18", small_stem=False, stem_stride=1, width=64, bsim_weight=1.0, sepp_weight=1.0,
                 **_):
        super().__init__()
        self.backbone, self.feat_dim = build_backbone(arch, small_stem, stem_stride, width=width)
        self.bsim_weight = bsim_weight   # total = L_method + w * L_mix (BSIM)
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features for evaluation (kNN, linear probe)."""
        return self.backbone(x)


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


def with_sepp(out: dict, method: "Method", loss_sepp: torch.Tensor) -> dict:
    out["loss_sepp"] = loss_sepp.detach()
    out["loss"] = out["loss"] + method.sepp_weight * loss_sepp
    return out


def with_mix(out: dict, method: "Method", loss_mix: torch.Tensor) -> dict:
    out["loss_method"], out["loss_mix"] = out["loss"].detach(), loss_mix.detach()
    out["loss"] = out["loss"] + method.bsim_weight * loss_mix
    return out
