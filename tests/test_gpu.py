"""GPU-only paths (run on the GPU machine): bf16 autocast + channels_last + fused optimizers for every method,
torch.compile, and training fed by DALI's GPU pipeline."""
import pytest

from tests.helpers import TINY, make_image_folder, read_csv, run

pytestmark = pytest.mark.gpu
GPU = [a for a in TINY if a not in ("--workers", "1")] + ["--workers", "4", "--device", "cuda"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("gpu") / "img")
    make_image_folder(root, per_class=128, bad=False)
    return ["--dataset", "imagefolder", "--data", root, "--res", "32"]


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam"])
def test_each_method_trains_in_bf16_channels_last(method, folder, tmp_path):
    r = run(["train.py", *GPU, *folder, "--method", method, "--epochs", "2", "--batch-size", "64",
             "--amp", "bf16", "--channels-last", "--bsim", "--out", str(tmp_path)], timeout=600)
    assert r.returncode == 0 and "done:" in r.stdout, r.stderr[-2000:]
    rows = read_csv(tmp_path / "epoch.csv")
    assert len(rows) == 2 and all(float(x["loss"]) == float(x["loss"]) for x in rows)


def test_compile_and_fp16(folder, tmp_path):
    r = run(["train.py", *GPU, *folder, "--epochs", "1", "--batch-size", "128", "--amp", "fp16",
             "--compile", "--out", str(tmp_path)], timeout=600)
    assert r.returncode == 0 and "done:" in r.stdout, r.stderr[-2000:]


def test_train_on_dali_gpu_pipeline(tmp_path):
    pytest.importorskip("nvidia.dali", reason="DALI is not installed (scripts/gpu_check.sh dali brings it)")
    make_image_folder(str(tmp_path / "img"), per_class=64, bad=False)
    r = run(["train.py", *GPU, "--loader", "dali", "--dataset", "imagefolder", "--data", str(tmp_path / "img"),
             "--res", "64", "--epochs", "2", "--batch-size", "32", "--out", str(tmp_path / "run")], timeout=600)
    assert r.returncode == 0 and "done:" in r.stdout, r.stderr[-2000:]

