"""The GPU paths' defects a first GPU run would hit, each shown on the CPU: DALI's view dtype under each
precision, BSIM's mixing ratios drawn on the device, a resume where fewer GPUs are visible, the random-init kNN
weights under torchrun, fp16 loss scaling in the evaluations (and on the GPU, marked gpu) and on resume,
Fashion-MNIST's folder from FASHION_MNIST_DIR (its absence skips), and --compile with SyncBatchNorm."""
import argparse
import os
import sys

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, TINY, run


def test_dali_views_are_fp16_only_under_autocast_on_a_gpu():
    """fp16 views met fp32 weights at the first conv with --amp off ("Input type (c10::Half) and bias type
    (float)"): DALI's output dtype follows the step's precision, and the flags carry it to the loader."""
    import flags
    from loaders import LoaderOptions
    from loaders.dali import output_dtype
    assert output_dtype("cuda", "bf16") == output_dtype("cuda", "fp16") == torch.float16
    assert output_dtype("cuda", "off") == output_dtype("cpu", "bf16") == output_dtype("cpu", "off") == torch.float32
    args = flags.parse(["--loader", "dali", "--amp", "off"])
    flags.resolve_device(args)
    assert LoaderOptions.from_args(args, 64).amp == "off"


def test_mixing_ratios_follow_beta_and_are_made_on_the_batch_device():
    """lam ~ Beta(alpha, alpha): mean 1/2, variance 1/(4(2 alpha + 1)); made where the views are (the fake-CUDA
    check, tests/test_device_check.py, shows no host-to-device copy)."""
    from loaders.mix import MixSpec, beta, make_mix
    for alpha in (0.2, 1.0, 4.0):
        lam = beta(alpha, 100_000, "cpu").double()
        assert abs(lam.mean().item() - 0.5) < 0.01
        assert abs(lam.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01 * (1 + 1 / alpha)
        assert 0 <= lam.min() and lam.max() <= 1
    assert abs((beta(1.0, 100_000, "cpu") < 0.1).float().mean().item() - 0.1) < 0.01   # alpha 1: uniform
    m = make_mix(torch.randn(64, 3, 8, 8), MixSpec("mixup", 1.0))
    assert m.lam.dtype == torch.float32 and m.lam.shape == (64,)


def test_resume_where_fewer_gpus_are_visible_restores_the_first_rng_states(monkeypatch):
    """A checkpoint saved with 2 CUDA RNG states resumed where 1 device is visible: the first state is restored
    (it failed with an IndexError from torch.cuda.set_rng_state_all)."""
    from engine import ckpt
    got = {}

    def set_state(state, device=0):   # as torch's: default_generators[device] of the visible devices
        if device >= 1:
            raise IndexError("tuple index out of range")
        got[device] = state

    def set_all(states):
        for i, s in enumerate(states):
            set_state(s, i)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    s = {"python": __import__("random").getstate(), "numpy": __import__("numpy").random.get_state(),
         "torch": torch.get_rng_state(), "cuda": [torch.tensor([1], dtype=torch.uint8),
                                                   torch.tensor([2], dtype=torch.uint8)]}
    ckpt.set_rng_state(s)
    assert list(got) == [0] and got[0].item() == 1


@pytest.mark.slow
def test_random_init_knn_weights_are_equal_on_two_ranks(tmp_path):
    """--knn-random-init under torchrun: every rank keeps the weights DDP gave it (rank 0's), so each rank's
    share of the monitor is embedded by the same network (each kept its own random draw before)."""
    r = run(["tests/dump_init.py", *TINY, "--subset", "256", "--batch-size", "64", "--epochs", "1",
             "--knn-random-init", "--out", str(tmp_path)], torchrun=2, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    digests = [(tmp_path / f"init_r{k}.txt").read_text() for k in range(2)]
    assert digests[0] == digests[1]


def test_linear_probe_in_fp16_scales_the_loss():
    """eval.classify.fit under fp16 autocast steps through a GradScaler (small gradients underflow without one):
    its scale moved off the initial 65536 (a first step whose scaled gradients overflow fp16 is skipped)."""
    from eval.classify import Classifier, Sgd, TensorBatches, fit
    torch.manual_seed(0)
    x, y = torch.randn(512, 16) * 50, torch.randint(0, 4, (512,))
    clf = Classifier(None, 16, 4, frozen=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    w0 = clf.fc.weight.detach().clone()
    fit(clf, TensorBatches(x, y, 64), Sgd(2, lr=0.1, amp=torch.float16), device=torch.device("cpu"), scaler=scaler)
    st = scaler.state_dict()
    assert st["scale"] != 2.0 ** 16 or st["_growth_tracker"] > 0, st
    assert not torch.equal(clf.fc.weight, w0) and torch.isfinite(clf.fc.weight).all()


def probe_scalers(monkeypatch, device, amps):
    """eval.classify.fit as eval.linear and eval.semisup call it (no scaler given), once per autocast dtype in
    `amps`, on `device`. -> the GradScaler fit made for each, and the classifier's weights before and after."""
    import eval.classify as classify
    made, real = [], classify.grad_scaler
    monkeypatch.setattr(classify, "grad_scaler", lambda *a: made.append(real(*a)) or made[-1])
    out = []
    for amp in amps:
        torch.manual_seed(0)
        x, y = torch.randn(512, 16, device=device) * 50, torch.randint(0, 4, (512,), device=device)
        clf = classify.Classifier(None, 16, 4, frozen=True).to(device)
        w0 = clf.fc.weight.detach().clone()
        classify.fit(clf, classify.TensorBatches(x, y, 64), classify.Sgd(2, lr=0.1, amp=amp), device=device)
        out.append((made[-1], w0, clf.fc.weight.detach()))
    return out


def test_linear_probe_in_fp16_makes_its_own_scaler(monkeypatch):
    """Defect 5 on the path the evaluations take (fit given no scaler): fp16 gets a GradScaler of fit's own on
    the run's device type, which the loss went through; bf16 and fp32 a disabled one."""
    runs = probe_scalers(monkeypatch, torch.device("cpu"), (torch.float16, torch.bfloat16, None))
    assert [s.is_enabled() for s, _, _ in runs] == [True, False, False]
    fp16, w0, w = runs[0]
    assert fp16._device == "cpu" and fp16._scale is not None   # scale() made its scale: the loss was scaled
    assert not torch.equal(w, w0) and torch.isfinite(w).all()


@pytest.mark.gpu
def test_linear_probe_in_fp16_on_the_gpu_scales_the_loss(monkeypatch):
    """Defect 5 on a GPU: a CUDA GradScaler whose scale moved or grew, and trained, finite weights."""
    [(s, w0, w)] = probe_scalers(monkeypatch, torch.device("cuda", 0), (torch.float16,))
    st = s.state_dict()
    assert s.is_enabled() and s._device == "cuda" and (st["scale"] != 2.0 ** 16 or st["_growth_tracker"] > 0), st
    assert not torch.equal(w, w0) and torch.isfinite(w).all()


def write_idx(folder, n=64):
    """Fashion-MNIST's training split in idx format: n random 28 x 28 images and their labels."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    for name, magic, shape in (("train-images-idx3-ubyte", 2051, (n, 28, 28)), ("train-labels-idx1-ubyte", 2049, (n,))):
        head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(head + rng.integers(0, 10 if len(shape) == 1 else 256, shape, dtype=np.uint8).tobytes())


def test_fashion_mnist_comes_from_its_variable_and_its_absence_skips(tmp_path, monkeypatch):
    """Defect 7: a GPU host has no Debian package. FASHION_MNIST_DIR names the folder that train.py's default
    data reads (loaders/datasets.py read afresh with it set); where it names no idx files, the tests that need
    them skip, each saying to set it (tests/test_device.py run with it so)."""
    import importlib.util
    write_idx(tmp_path / "fm")
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "fm"))
    spec = importlib.util.spec_from_file_location("fresh_datasets", os.path.join(ROOT, "loaders", "datasets.py"))
    fresh = importlib.util.module_from_spec(spec)   # a copy: loaders.datasets stays as the other tests have it
    monkeypatch.setitem(sys.modules, "fresh_datasets", fresh)   # (its dataclasses look their module up)
    spec.loader.exec_module(fresh)
    src = fresh.open_source("fashion-mnist", None)
    assert len(src) == 64 and src.name == "fashion-mnist"
    missing = str(tmp_path / "absent")
    r = run(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_device.py"],
            env={"FASHION_MNIST_DIR": missing}, timeout=300)
    skips = [x for x in r.stdout.splitlines() if x.startswith("SKIPPED")]
    assert r.returncode == 0 and " failed" not in r.stdout, r.stdout[-3000:]
    assert all(f"in {missing}" in x and "set FASHION_MNIST_DIR" in x for x in skips if "no CUDA" not in x), skips
    assert sum(int(x.split("[")[1].split("]")[0]) for x in skips if missing in x) == 7, skips   # all but one


def test_fp16_resume_from_a_checkpoint_saved_without_fp16():
    """A bf16 (or fp32) checkpoint holds an empty scaler state: resuming under fp16 starts a fresh loss scale
    with a note (it failed in GradScaler.load_state_dict)."""
    from engine.step import Step

    class Model(torch.nn.Linear):
        def forward(self, batch):
            return {"loss": super().forward(torch.ones(3, 4)).float().square().mean()}
    model = Model(4, 2)
    saved = Step(model, torch.optim.SGD(model.parameters(), lr=0.1), amp="bf16").state_dict()
    assert saved["scaler"] == {}
    fp16 = Step(model, torch.optim.SGD(model.parameters(), lr=0.1), amp="fp16")
    notes = fp16.load_state_dict(saved)
    assert notes and "loss scale starts afresh" in notes[0] and fp16.scaler.is_enabled()
    fp16(Batchless(), 0)   # one step: the scaler holds a scale
    again = Step(model, torch.optim.SGD(model.parameters(), lr=0.1), amp="fp16")
    assert again.load_state_dict(fp16.state_dict()) == [] and again.scaler.get_scale() == fp16.scaler.get_scale()


class Batchless(dict):
    """A batch for a model whose forward ignores it."""


def test_compile_with_sync_batchnorm_is_refused_in_one_line():
    """SyncBatchNorm breaks torch.compile's graph at every BatchNorm (pytorch#161302): several GPUs with SimCLR's
    or BYOL's SyncBatchNorm refuse --compile, saying what to do; --no-sync-bn or one GPU compile."""
    import flags
    from engine.errors import UsageError
    a = argparse.Namespace(method="simclr", compile=True, sync_bn=None)
    with pytest.raises(UsageError, match="drop --compile, or add --no-sync-bn"):
        flags.uses_sync_bn(a, 8, "cuda", True)
    assert not flags.uses_sync_bn(a, 1, "cuda", True)                       # one GPU: no SyncBatchNorm
    assert not flags.uses_sync_bn(argparse.Namespace(method="simclr", compile=True, sync_bn=False), 8, "cuda", True)
    assert not flags.uses_sync_bn(argparse.Namespace(method="moco", compile=True, sync_bn=None), 8, "cuda", False)
    assert flags.uses_sync_bn(argparse.Namespace(method="simclr", compile=False, sync_bn=None), 8, "cuda", True)
    assert not flags.uses_sync_bn(argparse.Namespace(method="simclr", compile=False, sync_bn=None), 2, "cpu", True)
