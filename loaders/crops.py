"""Random-resized-crop boxes, one stream for every back end (torch, ffcv, device): a counter-based hash of
(seed, epoch, sample, view), so every back end, worker count, thread and resume point gives the same crop
for the same sample and epoch, and a test can recompute it.

crop_box draws with torchvision RandomResizedCrop.get_params' rules (10 tries of area and log-aspect, then
a centred crop); it is numba-compiled so FFCV's compiled decoder calls it, and crop_boxes fills a whole
epoch's boxes at once for the device loader.
"""
from __future__ import annotations

import numpy as np
from numba import njit

LOG_RATIO = (float(np.log(3 / 4)), float(np.log(4 / 3)))


@njit(cache=True)
def _mix(x):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True)
def _u01(key, draw):
    """Uniform [0, 1) from a 64-bit key and a draw number (splitmix64)."""
    h = _mix(key + np.uint64(draw) * np.uint64(0x9E3779B97F4A7C15))
    return np.float64(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def crop_key(seed, epoch, index, view):
    h = _mix(np.uint64(seed) + np.uint64(0x632BE59BD9B4E019))
    h = _mix(h ^ np.uint64(epoch))
    h = _mix(h ^ np.uint64(index))
    return _mix(h ^ np.uint64(view + 1))


LR0, LR1 = LOG_RATIO   # numba freezes module globals into the compiled code


@njit(cache=True)
def crop_box(key, height, width, smin, smax):
    """(top, left, h, w) for the sample whose crop_key is `key`, with torchvision RandomResizedCrop's rules
    (area in [smin, smax] of the image, log-aspect in LOG_RATIO; 10 tries, then a centred crop)."""
    area = height * width
    for t in range(10):
        target = area * (smin + (smax - smin) * _u01(key, 4 * t))
        aspect = np.exp(LR0 + (LR1 - LR0) * _u01(key, 4 * t + 1))
        w = int(np.round(np.sqrt(target * aspect)))
        h = int(np.round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(_u01(key, 4 * t + 2) * (height - h + 1))
            j = int(_u01(key, 4 * t + 3) * (width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < np.exp(LR0):
        w = width
        h = int(np.round(w / np.exp(LR0)))
    elif in_ratio > np.exp(LR1):
        h = height
        w = int(np.round(h * np.exp(LR1)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@njit(cache=True)
def _fill(out, seed, epoch, indices, view, size, scale):
    """out[k] = the box of sample indices[k]; size (height, width), scale (smin, smax)."""
    for k in range(len(indices)):
        out[k, 0], out[k, 1], out[k, 2], out[k, 3] = crop_box(crop_key(seed, epoch, indices[k], view),
                                                              size[0], size[1], scale[0], scale[1])


@njit(cache=True)
def reduction(ratio):
    """The DCT scale libjpeg decodes at (1, 2, 4 or 8): the largest power of two <= ratio, where ratio is the
    smallest crop side over the output size, so that no crop is upsampled from a reduced decode."""
    s = 1
    while s < 8 and 2 * s <= ratio:
        s *= 2
    return s


@njit(cache=True)
def scaled_box(t, l, h, w, sy, sx, height, width):
    """A full-size box (t, l, h, w) in the image decoded at scale (sy, sx), of size (height, width): edges
    rounded, inside the image, at least 1 px."""
    top, left = min(int(np.round(t * sy)), height - 1), min(int(np.round(l * sx)), width - 1)
    bottom, right = min(int(np.round((t + h) * sy)), height), min(int(np.round((l + w) * sx)), width)
    return top, left, max(1, bottom - top), max(1, right - left)


@njit(cache=True)
def draws(seed, epoch, index, view, first, count):
    """float64 [count]: the uniforms first .. first + count - 1 of one sample's view (uniforms() for one key)."""
    key = crop_key(seed, epoch, index, view)
    out = np.empty(count, np.float64)
    for k in range(count):
        out[k] = _u01(key, first + k)
    return out


def crop_boxes(seed: int, epoch: int, indices, view: int, height: int, width: int, scale) -> np.ndarray:
    """int32 [len(indices), 4] of (top, left, h, w): crop_box for every sample of `indices` (same-sized images)."""
    idx = np.ascontiguousarray(indices, dtype=np.int64)
    out = np.empty((len(idx), 4), np.int32)
    _fill(out, seed, epoch, idx, view, (height, width), (float(scale[0]), float(scale[1])))
    return out


def view_box(seed: int, epoch: int, index: int, view: int, height: int, width: int, scale):
    """One sample's box (Python ints): what the torch loader's workers cut."""
    key = np.uint64(crop_key(seed, epoch, index, view))   # numba hands a uint64 back as a Python int
    t, l, h, w = crop_box(key, height, width, float(scale[0]), float(scale[1]))
    return int(t), int(l), int(h), int(w)


# The same stream in torch, on whatever device the sample indices live (the augmentation's draws, made where
# the views are, with no host-device copy). int64 holds uint64's bits: products and sums wrap alike, and a right
# shift is made logical by masking the sign's copies.
def _i64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_M1, _M2, _GOLD = (_i64(c) for c in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15))


def _shr(x, k: int):
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix_t(x):
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def crop_keys(seed: int, epoch: int, index, view: int):
    """crop_key for a tensor of sample indices (int64, any device): the same bits as the numba function."""
    import torch
    h = _mix_t(torch.full_like(index, _i64((seed + 0x632BE59BD9B4E019) % (1 << 64))))
    h = _mix_t(h ^ epoch)
    h = _mix_t(h ^ index)
    return _mix_t(h ^ (view + 1))


def uniforms(keys, first: int, count: int):
    """float64 [len(keys), count]: _u01(key, draw) for every key and the draws first .. first + count - 1 (bit-equal
    to the numba stream). Made where the keys are: no host-to-device copy."""
    import torch
    d = torch.arange(first, first + count, dtype=torch.int64, device=keys.device)
    h = _mix_t(keys.view(-1, 1) + d.view(1, -1) * _GOLD)
    return _shr(h, 11).double() * (1.0 / 9007199254740992.0)
