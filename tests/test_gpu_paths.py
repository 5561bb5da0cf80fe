"""The GPU paths' defects a first GPU run would hit, each shown on the CPU: DALI's view dtype under each
precision, BSIM's mixing ratios drawn on the device, a resume where fewer GPUs are visible, the random-init kNN
weights under torchrun, fp16 loss scaling in the evaluations and on resume, and --compile with SyncBatchNorm."""
import argparse

import pytest
import torch

from tests.helpers import TINY, run


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
