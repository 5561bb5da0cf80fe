"""The GPU step checked without a GPU (tests/fake_cuda.py): every method's step, plain, with --bsim, --sepp and
both, under each precision, and the batch of every loader, run on a fake CUDA device that fails on a tensor left
on the host, a dtype clash and any host-device sync, and checks the step's precision: the layers' convolutions and
matrix products in bf16 (or fp16, through a GradScaler), the losses' products and the loss in fp32. Each kind of
fault is planted, to show it is caught."""
import logging

import numpy as np
import pytest
import torch

import flags
from engine.step import build_step
from extensions import step_extensions
from loaders import build_loader
from loaders.augment import RECIPES, DeviceAugment
from loaders.datasets import ArraySource
from models.methods import METHODS, build_model_from_config
from tests.fake_cuda import DeviceCheckError, fake_cuda, products, strict, to_fake_cuda

CUDA = torch.device("cuda", 0)
B, RES, N = 8, 16, 64
SMALL = ["--arch", "resnet10", "--stem-stride", "2", "--res", str(RES), "--batch-size", str(B), "--epochs", "1",
         "--proj-hidden", "16", "--proj-dim", "8", "--pred-hidden", "8", "--queue-size", "32", "--warmup-epochs", "0",
         "--workers", "0"]
VARIANTS = {"plain": [], "bsim": ["--bsim"], "sepp": ["--sepp"], "bsim+sepp": ["--bsim", "--sepp"]}


def source(channels=1):
    rng = np.random.default_rng(0)
    shape = (N, 28, 28) if channels == 1 else (N, 28, 28, 3)
    return ArraySource(rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 10, N), 10,
                       (0.5,) * 3, (0.25,) * 3, "tiny")


def train_args(method="simclr", variant="plain", amp="bf16", loader="device", extra=()):
    a = flags.parse(["--method", method, "--loader", loader, *SMALL, *VARIANTS[variant], *extra])
    a.amp, a.channels_last = amp, True   # as flags.resolve_device resolves them on a GPU
    return a


def loader_batches(args, name=None):
    """train.py's loader for `args` (or the loader `name`) on cuda:0, built unchecked (its set-up may copy to
    the device once) -> a callable giving its next batch."""
    opts = flags.loader_options(args, B, **({"name": name} if name else {}))
    ld = build_loader(opts, source(), RECIPES[METHODS[args.method].recipe], CUDA)
    ld.set_epoch(0)
    it = iter(ld)
    next(it)   # unchecked: the epoch's set-up (the device loader copies its order and crop boxes once an epoch)
    return lambda: next(it)


def run_steps(args, batches=loader_batches, steps=2, hooks=()):
    """`steps` training steps of train.py's step for `args` on a fake GPU, each batch from the loader's device
    stage (batches(args) -> a callable giving the next Batch), every op checked, and the step's precision.
    -> the last loss."""
    model = build_model_from_config(vars(args)).to(memory_format=torch.channels_last)
    with fake_cuda() as mode:
        to_fake_cuda(model, mode)
        step = build_step(args, model, steps_per_epoch=4, hooks=[*step_extensions(args, model), *hooks])
        next_batch = batches(args)
        partner = torch.arange(N, device=CUDA).roll(1)   # SePP: each sample's positive, on the device
        with strict() as checked:
            for it in range(steps):
                batch = next_batch()
                if args.sepp:
                    batch.pos = partner[batch.index]
                with products(checked) as seen:
                    loss, out = step(batch, it)
        assert loss.device == CUDA and loss.dtype == torch.float32
        assert all(t.device == CUDA for t in step.model.state_dict().values())
        assert_precision(seen, step, args.amp)
        return loss


def assert_precision(seen, step, amp):
    """The layers' (nn.Conv2d, nn.Linear) products of the last step in the autocast dtype: bf16, or fp16 with the
    CUDA GradScaler scaling the loss; fp32 where autocast is off. Every other product (the losses') in fp32."""
    want = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[amp]
    layers = [(op, dtype) for op, by_layer, dtype in seen if by_layer]
    assert any("convolution" in op for op, _ in layers) and any("mm" in op for op, _ in layers), seen
    wrong = sorted({(op, str(dtype)) for op, dtype in layers if dtype != want})
    assert not wrong, f"layers' products not in {want}: {wrong}"
    assert {dtype for op, by_layer, dtype in seen if not by_layer} <= {torch.float32}, seen
    assert step.scaler.is_enabled() == (amp == "fp16")
    if amp == "fp16":
        assert step.scaler._device == "cuda" and step.scaler._scale is not None   # the loss went through it


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_methods_step_runs_on_a_gpu_without_a_sync(method, variant):
    run_steps(train_args(method, variant))


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("amp", ["fp16", "off"])
def test_each_methods_step_in_fp16_and_fp32(method, amp):
    """fp16: the GradScaler's step without reading found-inf on the host (LARS takes the scale itself)."""
    run_steps(train_args(method, "bsim+sepp", amp))


def _torch(args, pinned=True):
    ld = build_loader(flags.loader_options(args, B, name="torch"), source(), RECIPES["simclr"], CUDA)

    def next_batch():   # what the workers hand over (loaders/torch_loader.collate): uint8 crops [V, B, C, H, W]
        views, idx = torch.zeros(2, B, 1, RES, RES, dtype=torch.uint8), torch.arange(B)
        if pinned:
            views, idx = views.pin_memory(), idx.pin_memory()
        return ld.to_device(views, idx, idx)
    return next_batch


def _ffcv(args):
    from loaders.ffcv_loader import device_batch
    aug = DeviceAugment(RECIPES["simclr"], (0.5,) * 3, (0.25,) * 3, True, device=CUDA)
    idx = torch.arange(B, device=CUDA)
    # ToDevice's output: uint8 crops [B, V, H, W, 3] on the device
    return lambda: device_batch(torch.zeros(B, 2, RES, RES, 3, dtype=torch.uint8, device=CUDA), idx, idx, aug)


def _dali(args, augment="pipeline"):
    from loaders.dali import DALILoader, output_dtype
    opts = flags.loader_options(args, B, dali_augment=augment)
    aug = DeviceAugment(RECIPES["simclr"], (0.5,) * 3, (0.25,) * 3, True, device=CUDA)
    ld = DALILoader(source(3), RECIPES["simclr"], opts, CUDA, augment=aug if augment == "device" else None)
    idx = torch.arange(B, device=CUDA)
    if augment == "device":   # DALI's crops: uint8 CHW
        view = lambda: torch.zeros(B, 3, RES, RES, dtype=torch.uint8, device=CUDA)   # noqa: E731
    else:                     # the whole pipeline: normalized views, HWC for channels_last, in output_dtype
        view = lambda: torch.zeros(B, RES, RES, 3, dtype=output_dtype("cuda", args.amp), device=CUDA)  # noqa: E731
    return lambda: ld._batch([{"view0": view(), "view1": view(), "index": idx}])


LOADER_STAGES = {"synthetic": lambda a: loader_batches(a, "synthetic"), "device": loader_batches, "torch": _torch, "ffcv": _ffcv, "dali": _dali,
                 "dali-device": lambda a: _dali(a, "device")}


@pytest.mark.parametrize("loader", list(LOADER_STAGES))
@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_each_loaders_batch_trains_on_a_gpu_without_a_sync(loader, amp):
    """Each back end's device stage (what it does once its data is on the GPU: layout, dtype, augmentation,
    BSIM's mixtures) feeding the step: DALI's views are fp16 only under autocast (an fp32 step refused them)."""
    run_steps(train_args("simclr", "bsim+sepp", amp), LOADER_STAGES[loader])


# ---- each kind of defect, planted once


@pytest.mark.parametrize("how", ["made on the host", "copied to the host"])
def test_a_tensor_left_on_the_host_is_caught(monkeypatch, how):
    """A per-row weight made without device= (the classic), or the positive mask taken to the host."""
    import models.methods.simclr as simclr
    real = simclr.info_nce

    def planted(q, k, pos, t, exclude=None):
        if how == "made on the host":
            return real(q, k, pos, t, exclude) + (torch.ones(q.shape[0]) * q[:, 0]).mean()
        return real(q, k, pos.cpu(), t, exclude)
    monkeypatch.setattr(simclr, "info_nce", planted)
    with pytest.raises(DeviceCheckError) as e:
        run_steps(train_args("simclr"))
    assert e.value.kind == "host"


def test_fp16_views_in_an_fp32_step_are_caught():
    """Defect 1 planted back: DALI's fp16 views given to a step without autocast."""
    def fp16_views(args):
        nxt = loader_batches(args)

        def next_batch():
            b = nxt()
            b.views = b.views.half()
            return b
        return next_batch
    with pytest.raises(DeviceCheckError) as e:
        run_steps(train_args("simclr", amp="off"), fp16_views)
    assert e.value.kind == "dtype"


class ReadsTheLoss:
    """A hook that reads the loss on the host, as a careless logger would: .item(), or an `if` on it."""

    def __init__(self, how):
        self.how = how

    def after_forward(self, batch, out, it):
        if self.how == "item":
            out["loss_value"] = out["loss"].item()
        elif out["loss"] > 100:   # a Python branch on a device value
            out["loss"] = out["loss"] * 0


@pytest.mark.parametrize("how", ["item", "branch"])
def test_reading_a_device_value_on_the_host_is_caught(how):
    with pytest.raises(DeviceCheckError) as e:
        run_steps(train_args("moco"), hooks=[ReadsTheLoss(how)])
    assert e.value.kind == "sync"


def test_bsim_ratios_drawn_on_the_host_are_caught(monkeypatch):
    """Defect 2 planted back: lam drawn on the host and copied to the device (a blocking copy every step)."""
    import loaders.mix as mix
    on_device = mix.beta
    monkeypatch.setattr(mix, "beta", lambda alpha, n, device: on_device(alpha, n, "cpu").to(device))
    with pytest.raises(DeviceCheckError) as e:
        run_steps(train_args("byol", "bsim"))
    assert e.value.kind == "sync" and "host-to-device" in str(e.value)


class FormatsTheLoss:
    """A hook that formats the loss, as a careless progress line or log line would: on a GPU, str() and an
    f-string copy the value to the host. A log line's failure is swallowed by logging's handler, and raised
    when the check ends."""

    def __init__(self, how):
        self.how = how

    def after_forward(self, batch, out, it):
        if self.how == "f-string":
            print(f"step {it}: loss {out['loss']}")
        else:
            logging.getLogger("tests.train").warning("step %d: loss %s", it, out["loss"])


@pytest.mark.parametrize("how", ["f-string", "log line"])
def test_formatting_a_device_tensor_is_caught(how):
    with pytest.raises(DeviceCheckError) as e:
        run_steps(train_args("simsiam"), hooks=[FormatsTheLoss(how)])
    assert e.value.kind == "sync" and "of a device tensor" in str(e.value)


class CopiesPageable:
    """A hook that copies per-sample weights made on the host without waiting (non_blocking) but unpinned."""

    def before_forward(self, batch, it):
        batch.weights = torch.ones(batch.index.shape[0]).to(batch.index.device, non_blocking=True)


@pytest.mark.parametrize("where", ["in the step", "from an unpinned worker batch"])
def test_a_non_blocking_copy_from_pageable_memory_is_caught(where):
    with pytest.raises(DeviceCheckError) as e:
        if where == "in the step":
            run_steps(train_args("simclr"), hooks=[CopiesPageable()])
        else:   # the torch loader's device stage given a batch that was not pinned (pin_memory off)
            run_steps(train_args("simclr"), lambda a: _torch(a, pinned=False))
    assert e.value.kind == "sync" and "pageable memory" in str(e.value)
