"""--loader device: the dataset resident on the device, crops resampled in one batched op. Its crops are the
torch loader's, its epochs cover every index once over ranks, it trains with BSIM and SePP, a killed run
resumes to the same weights, and a set too large for the device is refused with one line."""
import math

import pytest
import torch

from loaders import LoaderOptions
from loaders.augment import RECIPES
from loaders.datasets import open_source
from loaders.device import DeviceLoader, resample_weights
from loaders.torch_loader import TorchLoader
from tests.conftest import FASHION, have_fashion, needs_fashion
from tests.helpers import (TINY, kill_and_resume_equals_uninterrupted, make_image_folder, ranks_cover_every_index,
                           read_csv, run_here)


@pytest.fixture(scope="module")
def fashion():
    if not have_fashion():   # a GPU host has no Debian package: FASHION_MNIST_DIR names a copy of the idx files
        pytest.skip(f"no Fashion-MNIST idx files in {FASHION} (set FASHION_MNIST_DIR)")
    return open_source("fashion-mnist", FASHION, True, subset=300, seed=0)


@pytest.mark.parametrize("res", [28, 20])   # 28: crops grow to the size; 20: many are shrunk (antialiased)
def test_device_crops_equal_the_torch_loaders(fashion, res):
    """Same seed and epoch: the same batches in the same order, the same boxes, pixels within uint8 rounding."""
    opts = LoaderOptions("device", res, 32, seed=3, workers=0)
    dev = DeviceLoader(fashion, RECIPES["simclr"], opts, "cpu", lambda raw: raw)
    ref = TorchLoader(fashion, RECIPES["simclr"], opts, "cpu", lambda raw: raw)
    for ld in (dev, ref):
        ld.set_epoch(4)
    assert len(dev) == len(ref) == 300 // 32
    n = 0
    for a, b in zip(dev, ref):
        assert torch.equal(a.index, b.index) and torch.equal(a.label, b.label)
        assert a.views.shape == b.views.shape == (2, 32, 1, res, res) and a.views.dtype == torch.uint8
        diff = (a.views.int() - b.views.int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.3, (diff.max(), diff.float().mean())
        assert (a.views[0].float() - a.views[1].float()).abs().mean() > 5   # the two views differ
        n += 1
    assert n == len(dev)


@pytest.mark.gpu
def test_device_crops_on_cuda_equal_the_cpus(fashion):
    """The same epoch on the GPU: the same batches and boxes, pixels within uint8 rounding of the CPU's."""
    opts = LoaderOptions("device", 20, 64, seed=1)
    a, b = (DeviceLoader(fashion, RECIPES["simclr"], opts, d, lambda raw: raw) for d in ("cpu", "cuda"))
    for x, y in zip(a, b):
        assert y.views.is_cuda and torch.equal(x.index, y.index.cpu())
        assert (x.views.int() - y.views.cpu().int()).abs().max() <= 1


def test_resample_weights_are_torch_antialiased_bilinear():
    """One axis, float: the weight rows reproduce F.interpolate(bilinear, antialias) of the crop window."""
    x = torch.rand(1, 1, 1, 50, dtype=torch.float64)
    for start, length, out in [(0, 50, 50), (7, 13, 40), (3, 41, 16), (20, 30, 7)]:
        w = resample_weights(torch.tensor([start]), torch.tensor([length]), 50, out)[0].double()
        got = x[0, 0, 0] @ w.T
        ref = torch.nn.functional.interpolate(x[..., start:start + length], size=(1, out), mode="bilinear",
                                              antialias=True, align_corners=False)[0, 0, 0]
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_device_loader_yields_the_batch_contract_and_refuses_what_it_cannot_hold(fashion, tmp_path):
    from loaders import build_loader
    ld = build_loader(LoaderOptions("device", 28, 32), fashion, RECIPES["byol"], "cpu")
    b = next(iter(ld))
    assert b.views.shape == (2, 32, 3, 28, 28) and b.views.dtype == torch.float32
    assert torch.equal(b.label, torch.as_tensor(fashion.labels[b.index.numpy()]))
    from engine.errors import UsageError
    with pytest.raises(UsageError, match="more than 0% of the .* `loader` ffcv or dali"):
        build_loader(LoaderOptions("device", 28, 32, device_max_fraction=1e-9), fashion, RECIPES["simclr"], "cpu")


@needs_fashion   # train.py's default data
@pytest.mark.slow
def test_two_ranks_cover_every_index_once_per_epoch(tmp_path):
    ranks_cover_every_index(["--loader", "device"], tmp_path)


@needs_fashion   # train.py's default data
@pytest.mark.slow
def test_device_loader_trains_with_bsim_and_sepp(tmp_path):
    r = run_here(["train.py", *TINY, "--loader", "device", "--method", "moco", "--subset", "512", "--epochs", "2",
                  "--batch-size", "64", "--lr", "0.1", "--bsim", "--sepp", "--sepp-warmup", "1", "--sepp-k", "3",
                  "--out", str(tmp_path)])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_csv(tmp_path / "train.csv")
    assert all(math.isfinite(float(x["loss_mix"])) for x in rows)
    info = read_csv(tmp_path / "sepp.csv")[0]
    assert float(info["paired"]) > 0.5 and float(info["label_agreement"]) > 0.2, info   # chance: 0.1


@needs_fashion   # train.py's default data
@pytest.mark.slow
def test_device_loader_refusals_are_one_line(tmp_path):
    make_image_folder(tmp_path / "imgs", per_class=2, bad=False)
    for args, expect in [(["--dataset", "imagefolder", "--data", str(tmp_path / "imgs")], "is read from files"),
                         (["--device-max-fraction", "1e-9"], "GiB of available host memory")]:
        r = run_here(["train.py", *TINY, "--loader", "device", "--subset", "64", "--batch-size", "32", "--epochs",
                      "1", "--out", str(tmp_path / "x")] + args)
        lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1 and expect in lines[0], r.stderr


@needs_fashion   # train.py's default data
@pytest.mark.slow
def test_kill_and_resume_gives_the_same_weights(tmp_path):
    kill_and_resume_equals_uninterrupted(["train.py", "--loader", "device", "--method", "byol", "--subset", "768",
                                          "--epochs", "3", "--batch-size", "64", "--lr", "0.3"] + TINY, tmp_path)
