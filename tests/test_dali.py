"""DALI back end in CPU mode (device_id=None): views are regions of the source, augmentation statistics match
the torch path's, shards cover every file once over 2 ranks, corrupt files are named, training runs."""
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import UsageError
from loaders import LoaderOptions, build_loader
from loaders.augment import RECIPES, DeviceAugment, ViewAug
from loaders.batch import RawBatch
from loaders.order import EpochOrder
from engine.errors import DataError
from loaders.datasets import ArraySource, IMAGENET_MEAN, IMAGENET_STD, open_source
from tests.helpers import TINY, add_bad_files, make_image_folder, run, smooth_image

MEAN, STD = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


def unnormalize(v):  # [B, 3, H, W] float -> [B, H, W, 3] in 0..255
    return (v.permute(0, 2, 3, 1).float().cpu().numpy() * STD + MEAN) * 255


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def coded_folder(tmp_path_factory):
    """PNG images whose red channel is the column, green the row, blue a smooth pattern: a view tells which
    region of its source it shows."""
    root = tmp_path_factory.mktemp("coded")
    rng = np.random.default_rng(0)
    for c in range(2):
        os.makedirs(root / f"c{c}")
        for i in range(8):
            h, w = 96, 128
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = np.linspace(0, 255, w)[None, :].round()
            img[..., 1] = np.linspace(0, 255, h)[:, None].round()
            img[..., 2] = smooth_image(rng, h, w)[..., 2]
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return str(root)


GPU = pytest.mark.gpu


@pytest.mark.parametrize("device,roi,listed,aug", [("cpu", False, False, "pipeline"),
                                                   ("cpu", True, True, "pipeline"), ("cpu", False, False, "device"),
                                                   pytest.param("cuda", False, False, "pipeline", marks=GPU),
                                                   pytest.param("cuda", True, False, "pipeline", marks=GPU),
                                                   pytest.param("cuda", False, False, "device", marks=GPU)])
def test_views_are_regions_of_the_source(coded_folder, device, roi, listed, aug, tmp_path):
    """Whole decode + crops, and ROI decoding (--dali-roi); over the folder and over a file list; with every
    augmentation in DALI, and with DALI's crops handed to the shared device augmentation (--dali-augment)."""
    if listed:
        lines = [f"{os.path.join(d, f)} {int(d[-1])}\n" for d in sorted(glob_dirs(coded_folder))
                 for f in sorted(os.listdir(d))]
        (tmp_path / "train.txt").write_text("# path label\n" + "".join(lines))
        src = open_source("filelist", str(tmp_path / "train.txt"), True)
    else:
        src = open_source("imagefolder", coded_folder, True)
    recipe = (ViewAug(crop_scale=(0.2, 1.0), flip=0, jitter=0, gray=0, blur=0),) * 2
    loader = build_loader(LoaderOptions("dali", 32, 4, workers=2, seed=1, dali_roi=roi, dali_augment=aug),
                          src, recipe, device)
    loader.set_epoch(0)
    areas, n = [], 0
    for b in loader:
        assert b.views.shape == (2, 4, 3, 32, 32) and b.views.device.type == device
        assert b.views.dtype == (torch.float32 if device == "cpu" or aug == "device" else torch.float16)
        assert b.label.tolist() == [int(src.labels[i]) for i in b.index.tolist()] and b.label.device.type == device
        for v in range(2):
            x = unnormalize(b.views[v])
            for k, i in enumerate(b.index.tolist()):
                img = np.asarray(Image.open(src.files[i]).convert("RGB")).astype(float)
                # the red/green ramps give the crop box: column = red * (W-1)/255, row = green * (H-1)/255
                l, r = x[k, :, :, 0].min() * 127 / 255, x[k, :, :, 0].max() * 127 / 255
                t, btm = x[k, :, :, 1].min() * 95 / 255, x[k, :, :, 1].max() * 95 / 255
                assert -1.5 < l < r < 128.5 and -1.5 < t < btm < 96.5
                box = (l, t, r + 1, btm + 1)
                areas.append((r + 1 - l) * (btm + 1 - t) / (96 * 128))
                blue = Image.fromarray(img[..., 2].astype(np.uint8))
                ref = np.asarray(blue.resize((32, 32), Image.BILINEAR, box=box))
                assert np.corrcoef(ref.ravel(), x[k, :, :, 2].ravel())[0, 1] > 0.9
                n += 1
    assert n == 32 and 0.2 - 0.05 < min(areas) and max(areas) <= 1.05 and np.std(areas) > 0.1


def glob_dirs(root):
    return [os.path.join(root, d) for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]


@pytest.mark.parametrize("device,branchless", [("cpu", False), ("cpu", True),
                                               pytest.param("cuda", False, marks=pytest.mark.gpu),
                                               pytest.param("cuda", True, marks=pytest.mark.gpu)])
def test_augmentation_statistics_match_the_torch_path(device, branchless):
    """Constant-colour images: the fraction turned grey and the brightness/colour changes of DALI's views
    follow the same distributions as the torch path's device augmentation (2048 samples each), with DALI's
    conditionals and with the branchless form (--dali-branchless)."""
    rng = np.random.default_rng(0)
    n, res = 2048, 8
    colours = rng.integers(40, 216, (n, 3)).astype(np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (n, res, res, 3)).copy()
    src = ArraySource(images, np.zeros(n, np.int64), 1, IMAGENET_MEAN, IMAGENET_STD, "flat")
    recipe = (ViewAug(crop_scale=(1.0, 1.0), blur=0),) * 2
    loader = build_loader(LoaderOptions("dali", res, 256, workers=2, seed=0, dali_branchless=branchless),
                          src, recipe, device)
    dali_views, idx = [], []
    for b in loader:
        dali_views.append(unnormalize(b.views[0]).mean((1, 2)))
        idx.append(b.index.cpu().numpy())
    dali = np.concatenate(dali_views)
    base = colours[np.concatenate(idx)].astype(float)
    aug = DeviceAugment(recipe, IMAGENET_MEAN, IMAGENET_STD)
    u8 = torch.from_numpy(images).permute(0, 3, 1, 2).unsqueeze(0).expand(2, -1, -1, -1, -1)
    tv = unnormalize(aug(RawBatch(u8, torch.arange(n), torch.zeros(n))).views[0]).mean((1, 2))

    def stats(out, src_rgb):
        gray = (np.abs(out[:, 0] - out[:, 1]) < 1.5) & (np.abs(out[:, 1] - out[:, 2]) < 1.5)
        luma = out @ [0.299, 0.587, 0.114] / (src_rgb @ [0.299, 0.587, 0.114])
        return gray.mean(), np.median(luma), np.std(luma), np.abs(out - src_rgb).mean()
    d, t = stats(dali, base), stats(tv, colours.astype(float))
    assert abs(d[0] - t[0]) < 0.04 and 0.15 < d[0] < 0.3, (d, t)    # grayscale p=0.2
    assert abs(d[1] - t[1]) < 0.04 and abs(d[2] - t[2]) < 0.05, (d, t)  # brightness change
    assert abs(d[3] - t[3]) / t[3] < 0.2, (d, t)                      # overall colour change


@pytest.mark.parametrize("device", DEVICES)
def test_brightness_contrast_match_a_float64_reference(device):
    """The jitter's brightness then contrast (blended with the sample's mean grey level, torchvision's
    definition), with fixed factors per sample, against float64 arithmetic on random images."""
    from nvidia.dali import fn, pipeline_def, types
    from loaders.augment import GRAY
    from loaders.dali import _brightness_contrast
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (9 + i, 7, 3), dtype=np.uint8) for i in range(6)]
    b = np.array([0.6, 1.4, 1.0, 1.0, 0.8, 1.3], np.float32)
    c = np.array([1.0, 1.0, 0.6, 1.4, 1.2, 0.7], np.float32)
    cpu = device == "cpu"

    @pipeline_def(batch_size=6, num_threads=1, device_id=None if cpu else 0)
    def pipe():
        v = fn.external_source(source=lambda: imgs, batch=True, layout="HWC", device="cpu" if cpu else "gpu")
        bb = fn.external_source(source=lambda: list(b), batch=True)
        cc = fn.external_source(source=lambda: list(c), batch=True)
        return _brightness_contrast(fn, types, v, bb, cc, cpu)

    p = pipe()
    p.build()
    out = p.run()[0]
    out = out if cpu else out.as_cpu()
    for i, x in enumerate(imgs):
        xb = np.clip(x * float(b[i]), 0, 255)
        ref = np.clip(xb * float(c[i]) + (xb @ GRAY).mean() * (1 - float(c[i])), 0, 255)
        assert np.abs(np.array(out.at(i)) - ref).max() < 0.5 * max(1.0, float(c[i])) + 0.01, i


@pytest.mark.parametrize("device,branchless", [("cpu", False), ("cpu", True),
                                               pytest.param("cuda", True, marks=pytest.mark.gpu)])
def test_solarize_inverts_the_bright_channels_of_a_fraction(device, branchless):
    """Solarize alone at p=0.5: each sample is either unchanged or has every channel >= 128 inverted."""
    rng = np.random.default_rng(1)
    n, res = 512, 4
    colours = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    images = np.broadcast_to(colours[:, None, None, :], (n, res, res, 3)).copy()
    src = ArraySource(images, np.zeros(n, np.int64), 1, IMAGENET_MEAN, IMAGENET_STD, "flat")
    recipe = (ViewAug(crop_scale=(1.0, 1.0), flip=0, jitter=0, gray=0, blur=0, solarize=0.5),) * 2
    loader = build_loader(LoaderOptions("dali", res, 128, workers=2, seed=0, dali_branchless=branchless),
                          src, recipe, device)
    hits = []
    for b in loader:
        out = unnormalize(b.views[1]).reshape(len(b.index), -1, 3)
        assert np.ptp(out, axis=1).max() < 1.0        # still constant
        got, c = out[:, 0], colours[b.index.cpu().numpy()].astype(float)
        sol = np.where(c >= 128, 255 - c, c)
        same, inverted = np.abs(got - c).max(1) < 1.0, np.abs(got - sol).max(1) < 1.0
        assert (same | inverted).all()
        hits.append(inverted[(c >= 128).any(1)])
    frac = np.concatenate(hits).mean()
    assert 0.4 < frac < 0.6, frac


@pytest.mark.parametrize("device,branchless", [("cpu", False), ("cpu", True),
                                               pytest.param("cuda", False, marks=GPU),
                                               pytest.param("cuda", True, marks=GPU)])
def test_blur_leaves_the_skipped_samples_unchanged(device, branchless):
    """Blur alone, p=0.5 on the first view and p=1 on the second (BYOL's, no conditional): each sample is either
    exactly its source (with --dali-branchless: sigma 1e-3, a one-tap kernel) or smoothed."""
    rng = np.random.default_rng(2)
    n, res = 512, 16
    images = rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8)
    src = ArraySource(images, np.zeros(n, np.int64), 1, IMAGENET_MEAN, IMAGENET_STD, "flat")
    one = ViewAug(crop_scale=(1.0, 1.0), flip=0, jitter=0, gray=0, blur=0.5, sigma=(1.0, 2.0))
    recipe = (one, replace(one, blur=1.0))
    loader = build_loader(LoaderOptions("dali", res, 128, workers=2, seed=0, dali_branchless=branchless),
                          src, recipe, device)
    same = [[], []]
    for b in loader:
        x = images[b.index.cpu().numpy()].astype(float)
        for v in range(2):
            out = unnormalize(b.views[v])
            err = np.abs(out - x).reshape(len(x), -1).max(1)
            rough = np.abs(np.diff(out, axis=2)).mean((1, 2, 3)) / np.abs(np.diff(x, axis=2)).mean((1, 2, 3))
            assert ((err < 1.0) | (rough < 0.6)).all(), (err, rough)   # unchanged, or smoothed
            same[v].append(err < 1.0)
    frac = [np.concatenate(f).mean() for f in same]
    assert 0.4 < frac[0] < 0.6 and frac[1] == 0, frac


@pytest.mark.parametrize("device", DEVICES)
def test_several_pipelines_cover_every_file_once(device, tmp_path):
    """--dali-pipes 2 (with --dali-concurrent): two pipelines of half a batch, each reading its slice of every
    batch of the shared epoch order; one epoch holds every file once and the next epoch is another order."""
    make_image_folder(str(tmp_path / "img"), per_class=20, bad=False)
    src = open_source("imagefolder", str(tmp_path / "img"), True)
    loader = build_loader(LoaderOptions("dali", 16, 8, workers=2, dali_pipes=2, dali_concurrent=True),
                          src, RECIPES["simclr"], device)
    assert len(loader) == 5
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen = []
        for b in loader:
            assert b.views.shape == (2, 8, 3, 16, 16) and torch.isfinite(b.views.float()).all()
            assert b.label.tolist() == [int(src.labels[i]) for i in b.index.tolist()]
            seen += b.index.tolist()
        assert sorted(seen) == list(range(40))
        assert seen == EpochOrder(40, 8).samples(epoch).tolist()   # the order every back end takes
        orders.append(seen)
    assert orders[0] != orders[1]
    with pytest.raises(UsageError, match="must divide"):
        build_loader(LoaderOptions("dali", 16, 8, dali_pipes=3), src, RECIPES["simclr"], device)


@pytest.mark.slow
def test_two_ranks_cover_every_file_once_per_epoch(tmp_path):
    make_image_folder(str(tmp_path / "img"), per_class=40, bad=False)
    r = run(["tests/dump_indices.py", "--loader", "dali", "--dataset", "imagefolder", "--data",
             str(tmp_path / "img"), "--batch", "8", "--out", str(tmp_path)], torchrun=2, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    orders = []
    for ep in range(2):
        a, b = (np.load(tmp_path / f"r{k}_e{ep}.npy") for k in range(2))
        assert len(a) == len(b) == 40 and not set(a) & set(b)
        assert sorted(np.concatenate([a, b]).tolist()) == list(range(80))
        orders.append(np.concatenate([a, b]))
    assert not np.array_equal(*orders)  # reshuffled after the epoch


def test_unreadable_files_are_skipped_or_named(tmp_path, capsys):
    """Files that are not images or JPEGs cut short are left out at the start, one warning each; a file that
    looks whole but fails inside DALI stops the run with an error naming it (or is skipped with --skip-files)."""
    _, bad = make_image_folder(str(tmp_path / "img"), per_class=8)
    extra = add_bad_files(str(tmp_path / "img"))
    src = open_source("imagefolder", str(tmp_path / "img"), True)
    loader = build_loader(LoaderOptions("dali", 16, 4, workers=1), src, RECIPES["simclr"], "cpu")
    assert sorted(loader.skipped) == sorted([*bad, extra["truncated"], extra["text"]])
    assert capsys.readouterr().err.count("warning: skipped an unreadable image") == 4
    assert sum(len(b.index) for b in loader) == 20   # and CMYK, grey, PNG-named and 1x1 files decode
    with open(bad[0], "r+b") as f:   # whole-looking: an end marker after the random bytes
        f.seek(0, 2)
        f.write(b"\xff\xd9")
    loader = build_loader(LoaderOptions("dali", 16, 4, workers=1), src, RECIPES["simclr"], "cpu")
    with pytest.raises(DataError, match="zz_corrupt.jpg"):
        for _ in loader:
            pass
    report = tmp_path / "bad.txt"
    report.write_text("# 2 bad\n" + "".join(f"{p}\tOSError\n" for p in bad))
    loader = build_loader(LoaderOptions("dali", 16, 4, workers=1, skip_files=str(report)),
                          src, RECIPES["simclr"], "cpu")
    assert sum(len(b.index) for b in loader) == 20 and len(loader) == 5
    with pytest.raises(UsageError, match="`skip_files`"):
        build_loader(LoaderOptions("dali", 16, 4, skip_files=str(tmp_path / "nope.txt")), src, RECIPES["simclr"], "cpu")


@pytest.mark.slow
def test_train_with_dali_two_ranks_and_resume(tmp_path):
    make_image_folder(str(tmp_path / "img"), per_class=32, bad=False)
    out = str(tmp_path / "run")
    args = ["train.py", *TINY, "--loader", "dali", "--dataset", "imagefolder", "--data", str(tmp_path / "img"),
            "--res", "32", "--batch-size", "16", "--lr", "0.1", "--bsim", "--out", out,
            "--dali-pipes", "2", "--dali-branchless", "--dali-concurrent"]   # 2 ranks x 2 pipelines: 4 shards
    r = run(args + ["--epochs", "1"], torchrun=2, timeout=400)
    assert r.returncode == 0 and "done:" in r.stdout, r.stderr[-2000:]
    r = run(args + ["--epochs", "2", "--resume", "auto"], torchrun=2, timeout=400)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stderr[-2000:]
    assert "restarts at its first batch" not in r.stdout   # the reader takes the epoch order wherever it starts


def test_sample_plan_over_files_keeps_pairs_in_one_batch(tmp_path):
    """SePP's plan with DALI over files: encoded bytes in the plan's order, decoded by DALI."""
    from mining.sampler import PairPlan
    make_image_folder(str(tmp_path / "img"), per_class=16, bad=False)
    src = open_source("imagefolder", str(tmp_path / "img"), True)
    rng = np.random.default_rng(0)
    nb = np.stack([rng.permutation(32)[:3] for _ in range(32)])
    nb[nb == np.arange(32)[:, None]] = -1
    loader = build_loader(LoaderOptions("dali", 16, 8, workers=1), src, RECIPES["simclr"], "cpu")
    plan = PairPlan(nb, seed=0)
    loader.set_plan(plan)
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen, partner = [], plan.plan(epoch)[1]
        for b in loader:
            ids = b.index.tolist()
            assert all(partner[i] in ids for i in ids if partner[i] >= 0)
            assert b.label.tolist() == [int(src.labels[i]) for i in ids]
            seen += ids
        assert sorted(seen) == list(range(32)) and len(loader) == 4


def test_sweep_script_times_every_row(tmp_path):
    """scripts/sweep_dali.py (the GPU tuning sweep) runs every stage and setting, here in CPU mode."""
    import json
    from scripts.sweep_dali import main
    make_image_folder(str(tmp_path / "img"), per_class=32, bad=False)
    main(["--data", str(tmp_path / "img"), "--res", "32", "--batch-size", "8", "--threads", "1", "--steps", "2",
          "--warmup", "1", "--device", "cpu", "--json", str(tmp_path / "s.json")])
    rows = json.load(open(tmp_path / "s.json"))["results"]
    assert [r["name"] for r in rows][:4] == ["read", "decode", "crops", "simclr"] and len(rows) == 14
    assert all(r.get("pairs_per_s", 0) > 0 for r in rows), rows


def test_sweep_best_flags_name_the_fastest_expressible_row():
    """--best turns the fastest simclr row into eval.bench's flags; rows changing what no flag sets (prefetch,
    batch) and other stages are passed over."""
    from eval.bench import build_parser
    from scripts.sweep_dali import best_flags
    row = dict(stage="simclr", hw_load=None, branchless=False, pipes=1, concurrent=False, prefetch=2, threads=16,
               batch_size=256)
    rows = [{**row, "name": "simclr", "pairs_per_s": 100.0},
            {**row, "name": "device augment", "stage": "device", "pairs_per_s": 900.0},
            {**row, "name": "simclr prefetch 4", "prefetch": 4, "pairs_per_s": 800.0},
            {**row, "name": "simclr batch 512", "batch_size": 512, "pairs_per_s": 700.0},
            {"name": "simclr concurrent", "error": "refused"},
            {**row, "name": "simclr all + pipes 2", "branchless": True, "concurrent": True, "pipes": 2,
             "threads": 32, "hw_load": 0.9, "pairs_per_s": 300.0},
            {**row, "name": "simclr branchless", "branchless": True, "pairs_per_s": 200.0}]
    assert best_flags(rows) == "--dali-hw-load 0.9 --dali-branchless --dali-concurrent --dali-pipes 2 --workers 32"
    assert best_flags(rows[:1] + rows[-1:]) == "--dali-branchless"
    assert best_flags(rows[:1]) == "" and best_flags([rows[4]]) == ""
    a = build_parser().parse_args(["--workers", "16", *best_flags(rows).split()])   # later flags win
    assert (a.dali_hw_load, a.dali_branchless, a.dali_concurrent, a.dali_pipes, a.workers) == (0.9, True, True, 2, 32)


@pytest.mark.parametrize("flags,match", [(["--sepp", "--dali-pipes", "2"], "--dali-pipes"),
                                         (["--dali-augment", "gpu"], "--dali-augment gpu"),
                                         (["--dali-pipes", "0"], "--dali-pipes 0"),
                                         (["--dali-hw-load", "1.5"], "hw-load 1.5")])
def test_bad_dali_flags_are_refused_before_training(flags, match):
    from flags import parse
    with pytest.raises(UsageError) as e:
        parse(["--loader", "dali", *flags])
    assert match in e.value.for_cli()   # as the command line prints it (the loader names its arguments: `dali_pipes`)
