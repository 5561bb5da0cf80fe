"""The augmentation on a CPU, one sample at a time: only the ops the sample drew, in OpenCV and NumPy on
[H, W, C] float32. The draws and the pixels are augment_view's (loaders/augment.py), up to float rounding
(tests/test_augment.py): the branchless batch path evaluates every jitter op at each of its four random-order
slots and selects (16 evaluations, 4 of them the costly hue), which suits a GPU and costs a CPU ~7x more
(docs/BENCHMARKS.md). The torch loader runs this in its workers, so that it overlaps the step.
"""
from __future__ import annotations

import cv2
import numpy as np

from loaders.augment import GRAY, ViewAug, blur_size

# No OpenCV thread pool, in any process: these ops are per sample and the parallelism is the loader's workers;
# and a pool started in a parent is not there in a forked worker, which then waits on it for ever.
cv2.setNumThreads(1)
LUMA = float(sum(GRAY))
_W = np.asarray(GRAY, np.float32).reshape(1, 3)
ONE, ZERO = (1.0,) * 4, (0.0,) * 4


def _clamp(x: np.ndarray) -> np.ndarray:
    return cv2.min(cv2.max(x, ZERO), ONE)


def _gray(x: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> [H, W] luma; a grey image [H, W] gives LUMA * x (its three equal channels' luma)."""
    return cv2.multiply(x, (LUMA,) * 4) if x.ndim == 2 else cv2.transform(x, _W)


def _hue(x: np.ndarray, f: float) -> np.ndarray:
    """OpenCV's float HSV has H in degrees [0, 360); its way back wraps H up to 720, not below 0."""
    hsv = cv2.add(cv2.cvtColor(x, cv2.COLOR_RGB2HSV), (f * 360.0 + (360.0 if f < 0 else 0.0), 0.0, 0.0, 0.0))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _jitter(x: np.ndarray, factors, order) -> np.ndarray:
    grey = x.ndim == 2
    for o in order:
        f = factors[o]
        if o == 0:
            x = cv2.min(cv2.multiply(x, (f,) * 4), ONE)      # f >= 0 and x >= 0
        elif o == 1:
            x = _clamp(cv2.addWeighted(x, f, x, 0.0, (1.0 - f) * float(np.mean(_gray(x), dtype=np.float64))))
        elif grey:        # saturation and hue leave grey as it is (loaders/augment.py, grey_jitter)
            continue
        elif o == 2:
            g = _gray(x)
            x = _clamp(cv2.addWeighted(x, f, cv2.merge([g, g, g]), 1.0 - f, 0.0))
        else:
            x = _hue(x, f)
    return x


def kernel(sigma: float, size: int) -> np.ndarray:
    """float32 [size]: loaders.augment.gaussian_kernels' kernel (torchvision's), in NumPy."""
    t = np.linspace(-(size - 1) * 0.5, (size - 1) * 0.5, size, dtype=np.float32)
    pdf = np.exp(np.float32(-0.5) * (t / np.float32(sigma)) ** 2)
    return pdf / pdf.sum()


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    k = kernel(sigma, blur_size(x.shape[1]))
    return cv2.sepFilter2D(x, -1, k, k, borderType=cv2.BORDER_REFLECT_101)   # torch's "reflect" padding


def augment_sample(u8: np.ndarray, aug: ViewAug, p: dict) -> np.ndarray:
    """uint8 [H, W, C] (C = 1 or 3) and one sample's draws (ViewParams.row) -> float32 [H, W, 3] in [0, 1]."""
    x = u8[..., 0] if u8.shape[2] == 1 else u8
    x = x.astype(np.float32) / np.float32(255)
    if p["flip"]:
        x = cv2.flip(x, 1)
    if p["jitter"]:
        x = _jitter(x, p["factors"], p["order"])
    if p["gray"]:
        g = _gray(x)
        x = g if x.ndim == 2 else cv2.merge([g, g, g])
    if p["blur"]:
        x = _blur(x, p["sigma"])
    if p["solarize"]:
        x = np.where(x >= 0.5, np.float32(1) - x, x)
    return cv2.merge([x, x, x]) if x.ndim == 2 else x


def normalize(x: np.ndarray, mean, std) -> np.ndarray:
    """float32 [H, W, 3] -> (x - mean) / std per channel."""
    return cv2.divide(cv2.subtract(x, (*mean, 0.0)), (*std, 1.0))


def augment_views(crops: np.ndarray, recipe: tuple[ViewAug, ...], draws: list, mean, std) -> np.ndarray:
    """One sample's V crops uint8 [V, H, W, C] and its draws (a ViewParams.row per view) -> normalized float32
    [V, H, W, 3] (what the loader's workers hand over)."""
    return np.stack([normalize(augment_sample(c, a, d), mean, std) for c, a, d in zip(crops, recipe, draws)])
