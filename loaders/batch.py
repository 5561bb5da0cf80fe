"""The one batch contract every loader back end yields (DESIGN.md, "Every back end yields the same Batch").

Shapes and dtypes, declared once like an FFCV operation's output:
  views  float [V, B, C, H, W]  augmented + normalized, on the training device (channels_last per view
                                when the run uses it); float32, or float16 from DALI on a GPU under autocast
  index  int64 [B]              real sample indices into the training set (never fakes: SePP needs them)
  label  int64 [B]              class labels, -1 where the dataset has none
  pos    int64 [B] | None       an extra positive per sample (SePP's mined one): a sample id (an index value), -1
                                for none; every method's loss accepts it (models/methods/base.py)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from loaders.augment import DeviceAugment
    from loaders.order import EpochOrder


@dataclass
class Batch:
    views: torch.Tensor
    index: torch.Tensor
    label: torch.Tensor
    pos: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.views.shape[1]


@dataclass
class RawBatch:
    """What a back end hands to the shared device stage: uint8 crops [V, B, C, H, W] already on the device
    (C is 1 for grayscale sources; the device stage expands to 3), before colour augmentation, and the epoch
    they belong to (the augmentation's draws are keyed by seed, epoch, sample and view)."""
    views: torch.Tensor
    index: torch.Tensor
    label: torch.Tensor
    epoch: int = 0


@runtime_checkable
class Loader(Protocol):
    """What train.py, SePP, eval.bench and the evaluations know of a back end (torch, device, ffcv, dali,
    synthetic), and all they use: no caller asks which back end it is.

    order             EpochOrder | None: the sample order it consumes (loaders/order.py), None where the back end
                      keeps its own (FFCV's quasi-random order, DALI's file reader, synthetic batches)
    resumes_mid_epoch set_epoch(epoch, skip) starts at batch `skip`; False: a resume restarts the epoch
    augment          the shared device stage (loaders/augment.py), None where the back end normalizes itself
    """
    order: "EpochOrder | None"
    resumes_mid_epoch: bool
    augment: "DeviceAugment | None"

    def __len__(self) -> int: ...                        # this rank's batches per epoch

    def set_epoch(self, epoch: int, skip: int = 0) -> None: ...   # the next iteration is epoch's, from batch skip

    def set_plan(self, plan: Callable[[int], object] | None) -> None: ...   # SePP: the plan becomes the order

    def __iter__(self) -> Iterator[Batch]: ...


def set_plan(loader, plan) -> None:
    """The default set_plan: the plan (epoch -> order) becomes the loader's order; a back end that keeps its
    own order cannot take one."""
    if loader.order is None:
        raise ValueError(f"{type(loader).__name__} keeps its own sample order, so it cannot follow a sample plan")
    loader.order.plan = plan
