"""Per-sample random augmentation as batched tensor ops on the training device.

Every op draws its parameters per sample (not once per batch) and is written to equal torchvision's
functional op on the same image with the same parameters (tests/test_augment.py checks each one).
Ops that apply with probability p are computed for the whole batch and selected with torch.where:
no data-dependent indexing, so no host/device sync in the step.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from loaders.batch import Batch, RawBatch

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class ViewAug:
    """One view's recipe. crop_scale is used by the loaders (random-resized crop while decoding)."""
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: float = 0.5
    jitter: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray: float = 0.2
    blur: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    solarize: float = 0.0


# SimCLR/MoCo v2/SimSiam: two identical distributions (MoCo v2's jitter strengths, as SimSiam uses).
# BYOL (Grill et al. 2020, Table 6): asymmetric blur (1.0 / 0.1) and solarize (0 / 0.2), saturation 0.2.
RECIPES: dict[str, tuple[ViewAug, ...]] = {
    "simclr": (ViewAug(), ViewAug()),
    "byol": (ViewAug(saturation=0.2, blur=1.0), ViewAug(saturation=0.2, blur=0.1, solarize=0.2)),
    "none": (ViewAug(crop_scale=(1.0, 1.0), flip=0, jitter=0, gray=0, blur=0),) * 2,
}


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] -> [..., 1, H, W] luma."""
    r, g, b = x.unbind(-3)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(-3)


def _col(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def _blend(x, ref, f):
    return (_col(f) * x + (1 - _col(f)) * ref).clamp(0, 1)


def brightness(x, f):
    return _blend(x, torch.zeros_like(x), f)


def contrast(x, f):
    return _blend(x, grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), f)


def saturation(x, f):
    return _blend(x, grayscale(x), f)


def hue(x, f):
    """Shift hue by f (in turns) per sample: RGB -> HSV -> RGB with torchvision's conventions."""
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(-3), x.amin(-3)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / torch.where(eqc, torch.ones_like(maxc), maxc)
    crd = torch.where(eqc, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + f.view(-1, 1, 1), 1.0)
    # HSV -> RGB in closed form: channel n in (5, 3, 1) is v - v*s*clamp(min(k, 4-k), 0, 1), k=(n+6h) mod 6.
    h6 = h.unsqueeze(-3) * 6.0
    k = torch.remainder(torch.cat([h6 + 5.0, h6 + 3.0, h6 + 1.0], dim=-3), 6.0)
    w = torch.minimum(k, 4.0 - k).clamp(0, 1)
    v, s = maxc.unsqueeze(-3), s.unsqueeze(-3)
    return (v - v * s * w).clamp(0, 1)


def gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """[B] sigmas -> [B, size] normalized 1-D kernels (torchvision's _get_gaussian_kernel1d)."""
    half = (size - 1) * 0.5
    t = torch.linspace(-half, half, size, device=sigma.device)
    pdf = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    return pdf / pdf.sum(1, keepdim=True)


def blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Separable gaussian blur, one sigma per sample, reflect padding (as torchvision)."""
    B, C, H, W = x.shape
    k = gaussian_kernels(sigma, size).repeat_interleave(C, 0)  # [B*C, size]
    y = F.pad(x.reshape(1, B * C, H, W), [size // 2] * 4, mode="reflect")
    y = F.conv2d(y, k.view(B * C, 1, size, 1).to(y.dtype), groups=B * C)
    y = F.conv2d(y, k.view(B * C, 1, 1, size).to(y.dtype), groups=B * C)
    return y.view(B, C, H, W)


def solarize(x, threshold=0.5):
    return torch.where(x >= threshold, 1.0 - x, x)


def blur_size(res: int) -> int:
    """10% of the side, odd (SimCLR: 23 px at 224), at least 3."""
    k = max(3, int(0.1 * res))
    return k if k % 2 else k + 1


def _uniform(n, lo, hi, device):
    return torch.rand(n, device=device) * (hi - lo) + lo


def _coin(n, p, device):
    return torch.rand(n, device=device) < p


def jitter_params(n: int, aug: ViewAug, device) -> dict[str, torch.Tensor]:
    """ColorJitter.get_params per sample: factors and a random order of the four ops."""
    return dict(
        factors=torch.stack([
            _uniform(n, max(0.0, 1 - aug.brightness), 1 + aug.brightness, device),
            _uniform(n, max(0.0, 1 - aug.contrast), 1 + aug.contrast, device),
            _uniform(n, max(0.0, 1 - aug.saturation), 1 + aug.saturation, device),
            _uniform(n, -aug.hue, aug.hue, device)], 1),
        order=torch.rand(n, 4, device=device).argsort(1),
    )


JITTER_OPS = (brightness, contrast, saturation, hue)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Apply the four ops in each sample's own order: at slot s, sample b gets op order[b, s]."""
    for slot in range(4):
        out = x
        for o, op in enumerate(JITTER_OPS):
            sel = (order[:, slot] == o).view(-1, 1, 1, 1)
            out = torch.where(sel, op(x, factors[:, o]), out)
        x = out
    return x


def grey_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """color_jitter on grey images [B, 1, H, W]: saturation and hue leave grey as it is, so only brightness and
    contrast act, in the order the sample's permutation puts them (4 op evaluations on one channel, not 16 on
    three). Contrast's reference is the luma mean, as color_jitter computes it on the 3 equal channels."""
    pos = order.argsort(1)                                   # the slot of each op
    b_first = (pos[:, 0] < pos[:, 1]).view(-1, 1, 1, 1)
    luma = float(sum(GRAY))
    bright = lambda y: brightness(y, factors[:, 0])          # noqa: E731
    contr = lambda y: _blend(y, luma * y.mean(dim=(-3, -2, -1), keepdim=True), factors[:, 1])   # noqa: E731
    return torch.where(b_first, contr(bright(x)), bright(contr(x)))


@dataclass
class ViewParams:
    """One view's random draws for a batch, per sample ([B] tensors; None where the recipe turns the op off):
    what augment_view (branchless, the whole batch) and loaders/augment_cpu.py (per sample, only the ops drawn)
    both apply, so the two paths give the same pixels for the same draws."""
    flip: torch.Tensor | None = None        # bool
    jitter: torch.Tensor | None = None      # bool
    factors: torch.Tensor | None = None     # float32 [B, 4]: brightness, contrast, saturation, hue
    order: torch.Tensor | None = None       # int64 [B, 4]: the jitter ops in the sample's order
    gray: torch.Tensor | None = None        # bool
    blur: torch.Tensor | None = None        # bool
    sigma: torch.Tensor | None = None       # float32
    solarize: torch.Tensor | None = None    # bool

    def row(self, b: int) -> dict:
        """Sample b's draws as Python values (the per-sample path's branches)."""
        return {k: (None if v is None else v[b].tolist()) for k, v in vars(self).items()}


def random_params(n: int, aug: ViewAug, device) -> ViewParams:
    """Draws from the global RNG, in the order augment_view always drew them."""
    p = ViewParams()
    if aug.flip > 0:
        p.flip = _coin(n, aug.flip, device)
    if aug.jitter > 0:
        jp = jitter_params(n, aug, device)
        p.factors, p.order, p.jitter = jp["factors"], jp["order"], _coin(n, aug.jitter, device)
    if aug.gray > 0:
        p.gray = _coin(n, aug.gray, device)
    if aug.blur > 0:
        p.sigma = _uniform(n, *aug.sigma, device)
        p.blur = _coin(n, aug.blur, device)
    if aug.solarize > 0:
        p.solarize = _coin(n, aug.solarize, device)
    return p


DRAW0 = 64   # the keyed draws of a view start here (loaders/crops.py's crop box uses draws 0-39)


def jitter_ranges(aug: ViewAug) -> tuple[tuple, tuple]:
    """ColorJitter's factor ranges: (low, high) of brightness, contrast, saturation and hue."""
    return ((max(0.0, 1 - aug.brightness), max(0.0, 1 - aug.contrast), max(0.0, 1 - aug.saturation), -aug.hue),
            (1 + aug.brightness, 1 + aug.contrast, 1 + aug.saturation, aug.hue))


def keyed_params(aug: ViewAug, seed: int, epoch: int, index: torch.Tensor, view: int) -> ViewParams:
    """Draws from the (seed, epoch, sample, view) stream of loaders/crops.py, on index's device: the same for a
    sample whichever loader, worker, batch or resume point it comes from, and equal on the CPU and the GPU."""
    from loaders.crops import crop_keys, uniforms
    u = uniforms(crop_keys(seed, epoch, index.long(), view), DRAW0, 14)
    lo, hi = jitter_ranges(aug)
    p = ViewParams()
    if aug.flip > 0:
        p.flip = u[:, 0] < aug.flip
    if aug.jitter > 0:
        p.jitter = u[:, 1] < aug.jitter
        p.factors = torch.stack([lo[k] + u[:, 2 + k] * (hi[k] - lo[k]) for k in range(4)], 1).float()
        p.order = u[:, 6:10].argsort(1)
    if aug.gray > 0:
        p.gray = u[:, 10] < aug.gray
    if aug.blur > 0:
        p.blur = u[:, 11] < aug.blur
        p.sigma = (aug.sigma[0] + u[:, 12] * (aug.sigma[1] - aug.sigma[0])).float()
    if aug.solarize > 0:
        p.solarize = u[:, 13] < aug.solarize
    return p


def keyed_row(aug: ViewAug, seed: int, epoch: int, index: int, view: int) -> dict:
    """keyed_params(...).row(0) for one sample, in plain Python (a loader worker's per-sample path: no tensor
    ops on one-element tensors). tests/test_real_jpegs.py checks the two agree."""
    from loaders.crops import draws
    u = draws(seed, epoch, index, view, DRAW0, 14).tolist()
    lo, hi = jitter_ranges(aug)
    f32 = lambda x: float(np.float32(x))   # noqa: E731  (keyed_params' .float())
    on = lambda p, k: (u[k] < p) if p > 0 else None   # noqa: E731
    jitter = aug.jitter > 0
    return {"flip": on(aug.flip, 0), "jitter": on(aug.jitter, 1),
            "factors": [f32(lo[k] + u[2 + k] * (hi[k] - lo[k])) for k in range(4)] if jitter else None,
            "order": sorted(range(4), key=lambda k: u[6 + k]) if jitter else None,
            "gray": on(aug.gray, 10), "blur": on(aug.blur, 11),
            "sigma": f32(aug.sigma[0] + u[12] * (aug.sigma[1] - aug.sigma[0])) if aug.blur > 0 else None,
            "solarize": on(aug.solarize, 13)}


def _where(coin, a, b):
    return torch.where(coin.view(-1, 1, 1, 1), a, b)


def augment_view(u8: torch.Tensor, aug: ViewAug, params: ViewParams | None = None) -> torch.Tensor:
    """uint8 [B, C, H, W] (C = 1 or 3) -> float [B, 3, H, W] in [0, 1], randomly augmented per sample: with
    `params`' draws, or draws from the global RNG. Branchless: every op on every sample, selected with
    torch.where (no host-device sync on a GPU).
    A grey source (C = 1) is augmented on its one channel and expanded at the end: the same draws and, up to
    float rounding, the same pixels as its three-channel copy (tests/test_augment.py), at a third of the work."""
    p = params if params is not None else random_params(u8.shape[0], aug, u8.device)
    x = u8.float().div_(255)
    grey = x.shape[1] == 1
    if p.flip is not None:
        x = _where(p.flip, x.flip(-1), x)
    if p.jitter is not None:
        x = _where(p.jitter, (grey_jitter if grey else color_jitter)(x, p.factors, p.order), x)
    if p.gray is not None:
        x = _where(p.gray, float(sum(GRAY)) * x if grey else grayscale(x).expand_as(x), x)
    if p.blur is not None:
        x = _where(p.blur, blur(x, p.sigma, blur_size(x.shape[-1])), x)
    if p.solarize is not None:
        x = _where(p.solarize, solarize(x), x)
    return x.expand(-1, 3, -1, -1) if grey else x


class DeviceAugment:
    """The shared device stage: RawBatch (uint8 crops) -> Batch (augmented, normalized float views). The draws
    come from the (seed, epoch, sample, view) stream (keyed_params). On a GPU the batch path runs (branchless);
    on a CPU the per-sample path (loaders/augment_cpu.py, only the ops drawn), the same pixels either way."""

    def __init__(self, recipe, mean, std, channels_last: bool = False, *, compile: bool | str = False,
                 device=None, seed: int = 0):
        self.recipe, self.seed = tuple(recipe), seed
        # compile: torch.compile fuses the many elementwise passes (jitter evaluates its 4 ops at each of its 4
        # random-order slots) into a few kernels; same math, for GPU runs (a string: the compile backend)
        self.compiled = bool(compile)
        self.view_fn = (torch.compile(augment_view, dynamic=False, backend=compile if isinstance(compile, str)
                                      else "inductor") if compile else augment_view)
        # on the training device from the start: no host-to-device copy inside a step (elsewhere: moved once)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1).to(device or "cpu")
        self.std = torch.tensor(std).view(1, 3, 1, 1).to(device or "cpu")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:  # once: no per-step host-to-device copy
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def per_sample(self, device: torch.device) -> bool:
        return device.type == "cpu" and not self.compiled

    def view_batch(self, u8: torch.Tensor, index: torch.Tensor, epoch: int, v: int) -> torch.Tensor:
        """View v of a batch, uint8 [B, C, H, W] -> normalized float [B, 3, H, W] (either path)."""
        aug = self.recipe[v]
        if not self.per_sample(u8.device):
            return self.normalize(self.view_fn(u8, aug, keyed_params(aug, self.seed, epoch, index, v)))
        from loaders.augment_cpu import augment_sample, normalize
        hwc = u8.permute(0, 2, 3, 1).numpy()
        out = np.empty((len(hwc), *hwc.shape[1:3], 3), np.float32)
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        for b, i in enumerate(index.tolist()):   # the draws in plain Python, as the workers make them
            out[b] = normalize(augment_sample(hwc[b], aug, keyed_row(aug, self.seed, epoch, i, v)), mean, std)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)

    def sample_views(self, crops: np.ndarray, index: int, epoch: int) -> np.ndarray:
        """The per-sample path for one sample (a loader's worker): uint8 [V, H, W, C] -> normalized float32
        [V, H, W, 3]."""
        from loaders.augment_cpu import augment_views
        draws = [keyed_row(a, self.seed, epoch, index, v) for v, a in enumerate(self.recipe)]
        return augment_views(crops, self.recipe, draws, self.mean.flatten().tolist(), self.std.flatten().tolist())

    def __call__(self, raw: RawBatch) -> Batch:
        if raw.views.shape[0] != len(self.recipe):
            raise ValueError(f"loader gave {raw.views.shape[0]} views, recipe has {len(self.recipe)}")
        views = torch.stack([self.view_batch(u, raw.index, raw.epoch, v) for v, u in enumerate(raw.views)])
        return self.finish(views, raw.index, raw.label)

    def finish(self, views: torch.Tensor, index: torch.Tensor, label: torch.Tensor) -> Batch:
        """Augmented, normalized views [V, B, 3, H, W] -> Batch, in the run's memory format."""
        if not views[0].is_contiguous(memory_format=self.memory_format):   # a worker's [B, V, H, W, C]
            views = torch.stack([v.contiguous(memory_format=self.memory_format) for v in views])
        return Batch(views=views, index=index, label=label)

    def plain(self, u8: torch.Tensor) -> torch.Tensor:
        """No augmentation (evaluation): uint8 [B, C, H, W] -> normalized float [B, 3, H, W]."""
        x = u8.float().div_(255)
        return self.normalize(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
