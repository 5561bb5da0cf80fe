"""Real JPEG folders on a CPU (issue 45): the augmentation's CPU path gives the device path's pixels, a JPEG is
decoded at the DCT scale its crops allow, and unreadable files never stop a run."""
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from loaders import augment as A
from loaders.batch import RawBatch
from loaders.crops import _u01, crop_key, crop_keys, reduction, uniforms
from loaders.datasets import open_source
from loaders.torch_loader import MultiCrop
from tests.helpers import TINY, add_bad_files, make_image_folder, run_here, smooth_image


def test_keyed_draws_are_the_crop_stream_bit_for_bit():
    """The torch splitmix64 (the augmentation's draws, on any device) equals the numba one (the crops')."""
    idx = torch.tensor([0, 1, 77, 123456789, 2**40 + 3])
    for seed, epoch, view in [(0, 0, 0), (7, 3, 1), (2**31 - 1, 999, 2)]:
        keys = crop_keys(seed, epoch, idx, view)
        u = uniforms(keys, 60, 10)
        for a, i in enumerate(idx.tolist()):
            key = np.uint64(crop_key(seed, epoch, i, view))
            assert np.uint64(keys[a].item() % 2**64) == key
            assert np.array_equal(u[a].numpy(), [_u01(key, d) for d in range(60, 70)])


@pytest.mark.parametrize("recipe", ["simclr", "byol"])
@pytest.mark.parametrize("channels", [3, 1])
def test_cpu_path_gives_the_device_paths_pixels(recipe, channels):
    """Per sample with only the ops drawn (OpenCV, loaders/augment_cpu.py) = branchless on the batch (the GPU's
    path), for the same keyed draws: in the main process and as a worker hands them over."""
    u8 = torch.randint(0, 256, (2, 64, channels, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    aug = A.DeviceAugment(A.RECIPES[recipe], (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), True, seed=5)
    raw = RawBatch(u8, torch.arange(100, 164), torch.zeros(64, dtype=torch.long), epoch=3)
    cpu = aug(raw).views
    device = torch.stack([aug.normalize(A.augment_view(u8[v], a, A.keyed_params(a, 5, 3, raw.index, v)))
                          for v, a in enumerate(aug.recipe)])
    torch.testing.assert_close(cpu, device, atol=1e-4, rtol=0)
    worker = np.stack([aug.sample_views(u8[:, b].permute(0, 2, 3, 1).numpy(), 100 + b, 3) for b in range(64)], 1)
    batch = aug.finish(torch.from_numpy(worker).permute(0, 1, 4, 2, 3), raw.index, raw.label)
    torch.testing.assert_close(batch.views, device, atol=1e-4, rtol=0)
    assert batch.views[0].is_contiguous(memory_format=torch.channels_last)
    plain = aug.normalize(u8[0].float().div(255).expand(-1, 3, -1, -1))
    assert (cpu[0] - plain).abs().mean() > 0.1   # and it did augment


@pytest.mark.parametrize("recipe", ["simclr", "byol"])
def test_a_workers_draws_equal_the_batch_draws(recipe):
    """keyed_row (one sample, plain Python: the workers') = keyed_params (a batch of tensors: the device's)."""
    idx = torch.arange(40, 90)
    for v, aug in enumerate(A.RECIPES[recipe]):
        batch = A.keyed_params(aug, 7, 2, idx, v)
        for b, i in enumerate(idx.tolist()):
            assert A.keyed_row(aug, 7, 2, i, v) == batch.row(b)


def test_draws_depend_on_sample_and_epoch_not_on_the_batch():
    aug = A.RECIPES["simclr"][0]
    a = A.keyed_params(aug, 0, 1, torch.tensor([5, 6, 7]), 0)
    b = A.keyed_params(aug, 0, 1, torch.tensor([7, 5]), 0)
    assert torch.equal(a.factors[[2, 0]], b.factors) and torch.equal(a.order[[2, 0]], b.order)
    c = A.keyed_params(aug, 0, 2, torch.tensor([5, 6, 7]), 0)
    assert not torch.equal(a.factors, c.factors)
    many = A.keyed_params(aug, 0, 0, torch.arange(4000), 0)
    assert 0.77 < many.jitter.float().mean() < 0.83 and 0.17 < many.gray.float().mean() < 0.23
    assert 0.47 < many.flip.float().mean() < 0.53 and 0.47 < many.blur.float().mean() < 0.53


def test_dct_scale_is_the_largest_that_keeps_every_crop_at_least_res():
    assert [reduction(r) for r in (0.5, 1.0, 1.99, 2.0, 3.9, 4.0, 7.9, 8.0, 100.0)] == [1, 1, 1, 2, 2, 4, 4, 8, 8]


def test_reduced_decode_gives_the_full_decodes_crops(tmp_path):
    """Large JPEGs and small crops: the views come from a DCT-scaled decode and match the crops of a full decode
    (the same boxes, a different downsampling filter: a few grey levels apart)."""
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / "c")
    for k in range(4):
        Image.fromarray(smooth_image(rng, 480, 640)).save(tmp_path / "c" / f"{k}.jpg", quality=95)
    src = open_source("imagefolder", str(tmp_path), True)
    ds = MultiCrop(src, 32, [(0.3, 1.0), (0.3, 1.0)], seed=1)
    for i in range(4):
        boxes = []
        img, _, size = src.load_reduced(i, lambda h, w: (boxes.extend(ds.boxes(i, 2, h, w)),
                                                         reduction(min(min(b[2:]) for b in boxes) / 32))[1])
        assert size == (480, 640) and img.shape[-1] <= 640 // 4   # decoded at 1/4 or less
        full, _ = src.load(i)
        ref = torch.stack([TF.resized_crop(full, *b, [32, 32], antialias=True) for b in ds.boxes(i, 2, 480, 640)])
        views = ds[(i, 2)][0]
        assert (views.float() - ref.float()).abs().mean() < 3


def test_unreadable_files_are_replaced_and_reported(tmp_path):
    make_image_folder(str(tmp_path), per_class=4, bad=False)
    bad = add_bad_files(str(tmp_path))
    src = open_source("imagefolder", str(tmp_path), True)
    ds = MultiCrop(src, 24, [(0.08, 1.0)] * 2, seed=0)
    met = {}
    for i in range(len(src)):
        views, j, label, skipped = ds[(i, 0)]
        assert views.shape == (2, 3, 24, 24) and label == src.labels[j]
        met.update(skipped)
        assert (j == i) == (not skipped)
    assert sorted(src.files[i] for i in met) == sorted([bad["truncated"], bad["text"]])


def test_a_run_on_a_folder_with_bad_files_ends_and_counts_them(tmp_path):
    """CMYK, grey, a PNG named .jpg and a 1x1 image decode; the truncated JPEG and the text file are skipped with
    one warning each and counted at the end; the empty class folder is said once."""
    make_image_folder(str(tmp_path / "img" / "train"), per_class=12, bad=False)
    bad = add_bad_files(str(tmp_path / "img" / "train"))
    make_image_folder(str(tmp_path / "img" / "val"), per_class=2, bad=False)
    os.makedirs(tmp_path / "img" / "val" / "zz_empty_class")
    out = str(tmp_path / "run")
    r = run_here(["train.py", *TINY, "--data", str(tmp_path / "img"), "--res", "24", "--epochs", "2",
                  "--batch-size", "8", "--out", out, "--workers", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: skipped an unreadable image")]
    assert len(warnings) == 2 and any(bad["truncated"] in w for w in warnings)
    assert "skipped 2 unreadable image(s)" in r.stdout and "Traceback" not in r.stderr
    listed = open(os.path.join(out, "skipped.txt")).read()
    assert bad["truncated"] in listed and bad["text"] in listed and len(listed.splitlines()) == 2
    assert "hold no images (zz_empty_class)" in r.stderr


def test_prepare_writes_the_readable_files_and_lists_the_rest(tmp_path):
    """loaders.prepare on the same folder: CMYK, grey, PNG-named and 1x1 files are written, the truncated JPEG and
    the text file are skipped and listed in the report; the .beton trains."""
    pytest.importorskip("ffcv")
    make_image_folder(str(tmp_path / "img"), per_class=8, bad=False)
    bad = add_bad_files(str(tmp_path / "img"))
    out = str(tmp_path / "img.beton")
    r = run_here(["-m", "loaders.prepare", "--data", str(tmp_path / "img"), "--out", out, "--workers", "1",
                  "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "20 images" in r.stdout and "skipped 2" in r.stdout
    report = open(out + ".report.txt").read()
    assert bad["truncated"] in report and bad["text"] in report and bad["cmyk"] not in report
    t = run_here(["train.py", *TINY, "--loader", "ffcv", "--beton", out, "--data", str(tmp_path / "img"),
                  "--res", "24", "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "run")])
    assert t.returncode == 0, t.stderr[-2000:]
