"""GPU-only paths (run on the GPU machine): bf16 autocast + channels_last + fused optimizers for every method,
torch.compile, and training fed by DALI's GPU pipeline."""
import pytest

from tests.helpers import TINY, make_image_folder, read_csv, run

pytestmark = pytest.mark.gpu
GPU = [a for a in TINY if a not in ("--workers", "1")] + ["--workers", "4", "--device", "cuda"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gpu") / "img")
    make_image_folder(root, per_class=256, bad=False)
    return ["--dataset", "imagefolder", "--data", root, "--res", "32"]


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam"])
def test_each_method_trains_in_bf16_channels_last(method, folder, tmp_path):
    r = run(["train.py", *GPU, *folder, "--method", method, "--epochs", "2", "--batch-size", "128",
             "--amp", "bf16", "--channels-last", "--bsim", "--out", str(tmp_path)], timeout=600)
    assert r.returncode == 0 and "done:" in r.stdout, r.stderr[-2000:]
    rows = read_csv(tmp_path / "epoch.csv")
    assert len(rows) == 2 and all(float(x["loss"]) == float(x["loss"]) for x in rows)


def test_compile_and_fp16(folder, tmp_path):
    r = run(["train.py", *GPU, *folder, "--epochs", "1", "--batch-size", "128", "--amp", "fp16",
             "--compile", "--out", str(tmp_path)], timeout=600)
    assert r.returncode == 0 and "done:" in r.stdout, r.stderr[-2000:]


def test_train_on_dali_gpu_pipeline(tmp_path):
    make_image_folder(str(tmp_path / "img"), per_class=64, bad=False)
    r = run(["train.py", *GPU, "--loader", "dali", "--dataset", "imagefolder", "--data", str(tmp_path / "img"),
             "--res", "64", "--epochs", "2", "--batch-size", "32", "--out", str(tmp_path / "run")], timeout=600)
    assert r.returncode == 0 and "done:" in r.stdout, r.stderr[-2000:]


def test_compiled_augmentation_matches_eager():
    import torch

    from loaders.augment import RECIPES, DeviceAugment
    from loaders.batch import RawBatch
    import torch._inductor.config as inductor_config
    inductor_config.fallback_random = True  # the compiled graph draws the same random numbers as eager
    u8 = torch.randint(0, 256, (2, 64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    raw = RawBatch(u8, torch.arange(64, device="cuda"), torch.zeros(64, device="cuda"))
    outs = []
    for compiled in (False, True):
        aug = DeviceAugment(RECIPES["byol"], (0.5,) * 3, (0.25,) * 3, compile=compiled)
        torch.manual_seed(0)
        aug(raw)  # warm-up (compilation), then the same random stream for both
        torch.manual_seed(1)
        outs.append(aug(raw).views)
    assert (outs[0] - outs[1]).abs().max() < 1e-3
