"""The real-image presets (configs/imagenette_cpu.yaml, configs/cifar10_cpu.yaml) and the speedrun's: every key is
a flag that parses, with what the docs say they train; and, where the real sets are on this machine (IMAGENETTE,
CIFAR10_JPEGS: folders with train/ and val/ or test/; skipped with the reason where absent), a few steps of each
preset on its set, scored on the set's own split."""
import os

import pytest

from tests.helpers import ROOT, run_here
from tests.test_data import write_jpegs


def tree(tmp_path, scored: str):
    write_jpegs([str(tmp_path / s / c / f"{s}{i}.jpg") for s in ("train", scored) for c in ("a", "b") for i in range(2)])
    return str(tmp_path)


@pytest.mark.parametrize("preset,scored,want", [
    ("imagenette_cpu", "val", dict(arch="resnet18", res=64, small_stem=False, method="simclr", knn_k=20, knn_every=1)),
    ("cifar10_cpu", "test", dict(arch="resnet10", width=32, res=32, small_stem=True, stem_stride=1, knn_k=200)),
    ("speedrun_fashion", None, dict(loader="device", time_limit="15m", time_limit_s=900.0, knn_k=20, knn_train=0)),
])
def test_presets_parse_into_what_their_docs_say(tmp_path, preset, scored, want):
    import flags
    data = ["--data", tree(tmp_path, scored)] if scored else []
    args = flags.parse(["--config", os.path.join(ROOT, "configs", f"{preset}.yaml")] + data)
    assert {k: getattr(args, k) for k in want} == want
    if scored:
        assert args.dataset == "imagefolder" and f"train/ and {scored}/" in args.data_found


def real(var: str):
    path = os.environ.get(var, os.path.join(ROOT, "." + var.lower().split("_")[0]))
    return path if os.path.isdir(os.path.join(path, "train")) else None


@pytest.mark.parametrize("preset,var", [("imagenette_cpu", "IMAGENETTE"), ("cifar10_cpu", "CIFAR10_JPEGS")])
def test_a_few_steps_of_each_real_set_preset(tmp_path, preset, var):
    data = real(var)
    if data is None:
        pytest.skip(f"no {var} set here: set {var}=DIR (train/ and val/ or test/ class folders; "
                    "scripts/gpu_prepare.sh makes .imagenette)")
    out = tmp_path / "run"
    r = run_here(["train.py", "--config", os.path.join(ROOT, "configs", f"{preset}.yaml"), "--data", data,
                  "--subset", "128", "--batch-size", "32", "--epochs", "1", "--knn-train", "200", "--knn-test", "100",
                  "--knn-k", "5", "--workers", "1", "--no-progress", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: kNN top-1" in r.stdout and (out / "last.pt").exists(), r.stdout[-2000:]
