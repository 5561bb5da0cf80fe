"""BSIM mixture views, made on the device from views already decoded (no extra decode), and BSIM's extension:
all of BSIM's work in the loop (the loaders and the methods name it nowhere).

BSIM ("Beyond Single Instance Multi-view", arXiv 2011.13356) mixes two instances x_i, x_j into m and asks
the mixture to be jointly similar to both sources, weighted by the mixing ratio. Only the abstract is
available to us, so this implements the standard joint-similarity form of that family (i-Mix, MoCo-Mix):
  * partner j: an in-batch permutation with no fixed points (no image is mixed with itself);
  * lam ~ Beta(alpha, alpha) per sample (default alpha = 1: uniform);
  * mixup: m = lam x_i + (1 - lam) x_j; cutmix: x_j's box of area (1 - lam) pasted into x_i, lam then
    corrected to the area actually kept after clipping at the border; 'both': a fair coin per sample;
  * the mixture is made from the first view (already augmented and normalized; mixup commutes with the
    per-channel normalization since both are affine).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.extension import Extension

MODES = ("mixup", "cutmix", "both")


@dataclass
class Mix:
    images: torch.Tensor   # float [B, C, H, W]: lam * x_i + (1 - lam) * x_partner (or a cutmix paste)
    partner: torch.Tensor  # int64 [B]: in-batch index j of the second source, never i itself
    lam: torch.Tensor      # float32 [B]: weight of the first source (for cutmix: the area actually kept)


@dataclass(frozen=True)
class MixSpec:
    mode: str = "mixup"
    alpha: float = 1.0


def derangement(n: int, device) -> torch.Tensor:
    """A random permutation without fixed points: one random n-cycle (each j != i has chance 1/(n-1))."""
    if n < 2:
        raise ValueError("mixing needs at least 2 samples per batch")
    p = torch.randperm(n, device=device)
    partner = torch.empty_like(p)
    partner[p] = p.roll(-1)
    return partner


def beta(alpha: float, n: int, device) -> torch.Tensor:
    """n draws of Beta(alpha, alpha), made on `device`: X / (X + Y) with X, Y ~ Gamma(alpha). Drawn on the host
    and copied over, they would make every step wait for the device (a copy from pageable memory); and
    torch.distributions.Beta validates its arguments with a host-side check, a sync as well."""
    conc = torch.full((2, n), float(alpha), device=device)
    g = torch._standard_gamma(conc)
    return g[0] / (g[0] + g[1]).clamp_min(torch.finfo(g.dtype).tiny)


def cutmix_boxes(lam: torch.Tensor, H: int, W: int):
    """Per-sample boxes of area (1 - lam) H W at uniform centres, clipped: -> mask [B, 1, H, W], kept lam."""
    B, dev = lam.shape[0], lam.device
    cut = (1 - lam).clamp(0, 1).sqrt()
    ch, cw = (cut * H).round(), (cut * W).round()
    cy, cx = torch.rand(B, device=dev) * H, torch.rand(B, device=dev) * W
    y0, y1 = (cy - ch / 2).round().clamp(0, H), (cy + ch / 2).round().clamp(0, H)
    x0, x1 = (cx - cw / 2).round().clamp(0, W), (cx + cw / 2).round().clamp(0, W)
    ys = torch.arange(H, device=dev).view(1, H, 1)
    xs = torch.arange(W, device=dev).view(1, 1, W)
    mask = ((ys >= y0.view(-1, 1, 1)) & (ys < y1.view(-1, 1, 1)) & (xs >= x0.view(-1, 1, 1))
            & (xs < x1.view(-1, 1, 1))).unsqueeze(1)
    kept = 1 - ((y1 - y0) * (x1 - x0)) / (H * W)
    return mask, kept


def make_mix(x: torch.Tensor, spec: MixSpec, lam: torch.Tensor | None = None,
             partner: torch.Tensor | None = None) -> Mix:
    """x [B, C, H, W] (the first view) -> Mix(images, partner, lam)."""
    B, _, H, W = x.shape
    partner = derangement(B, x.device) if partner is None else partner
    if lam is None:
        lam = beta(spec.alpha, B, x.device)
    lam = lam.float()
    xj = x[partner]
    mixed = torch.lerp(xj, x, lam.view(-1, 1, 1, 1).to(x.dtype))          # lam x_i + (1 - lam) x_j
    if spec.mode == "mixup":
        return Mix(mixed, partner, lam)
    mask, kept = cutmix_boxes(lam, H, W)
    cut = torch.where(mask, xj, x)
    if spec.mode == "cutmix":
        return Mix(cut, partner, kept)
    coin = torch.rand(B, device=x.device) < 0.5                              # 'both': per sample
    return Mix(torch.where(coin.view(-1, 1, 1, 1), cut, mixed), partner, torch.where(coin, kept, lam))


class BSIM(Extension):
    """BSIM in the loop: before each forward, the mixtures of the batch's first views (make_mix, on the device,
    from the global random stream that checkpoints save); inside the forward, their online embeddings and the
    method's mix_term, weighted: total = L_method + weight * L_mix. The training log carries L_mix."""
    log_keys = ("loss_mix",)

    def __init__(self, spec: MixSpec, weight: float = 1.0):
        self.spec, self.weight = spec, weight
        self.mix: Mix | None = None   # the current step's mixtures

    def before_forward(self, batch, it: int):
        self.mix = make_mix(batch.views[0], self.spec)

    def embed(self, method, batch):
        return method.online(self.mix.images)

    def terms(self, method, e, em, batch) -> dict:
        return {"loss_mix": (method.mix_term(e, em, batch.index, self.mix), self.weight)}

    def after_forward(self, batch, out, it: int):
        self.mix = None   # the mixtures' memory is the step's, not kept through the monitor and checkpoints
