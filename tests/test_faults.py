"""Faults a long run must survive: a non-finite loss is skipped without a trace, too many in a row stop the run
with one line, and no checkpoint holds non-finite weights."""
import math

import pytest
import torch

from engine.guard import NonFiniteGuard, all_finite
from engine.optim import build_optimizer
from tests.helpers import TINY, read_csv, run


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _step(net, opt, guard, x, poison=False):
    if guard:
        guard.before()
    loss = net(x).pow(2).mean()
    if poison:
        loss = loss * float("nan")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if guard:
        guard.after(loss)


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_a_non_finite_step_leaves_weights_statistics_and_optimizer_state_as_they_were(optimizer):
    """good A, poisoned B, good C through the guard = good A, good C without it: parameters, BatchNorm
    running statistics and momentum buffers, exactly."""
    xs = [torch.randn(32, 8, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    ref = _net()
    ref_opt = build_optimizer(optimizer, ref, 0.1, 1e-4)
    for x in (xs[0], xs[2]):
        _step(ref, ref_opt, None, x)
    net = _net()
    opt = build_optimizer(optimizer, net, 0.1, 1e-4)
    guard = NonFiniteGuard(net, opt, 3, "cpu")
    _step(net, opt, guard, xs[0])
    _step(net, opt, guard, xs[1], poison=True)
    assert guard.read() == (1, 1) and all_finite(net)
    _step(net, opt, guard, xs[2])
    for k, v in ref.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    for p_ref, p in zip(ref.parameters(), net.parameters()):
        for key, v in ref_opt.state[p_ref].items():
            assert torch.equal(opt.state[p][key], v), key
    assert guard.read() == (1, 1)


def test_a_non_finite_first_step_zeroes_the_state_it_created():
    net = _net()
    opt = build_optimizer("sgd", net, 0.1, 0.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    guard = NonFiniteGuard(net, opt, 3, "cpu")
    _step(net, opt, guard, torch.randn(32, 8), poison=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    assert all(float(s["momentum_buffer"].abs().sum()) == 0 for s in opt.state.values())
    net[0].weight.data[0, 0] = math.inf
    assert not all_finite(net)


@pytest.mark.slow
def test_training_skips_injected_non_finite_steps_and_stops_after_too_many_in_a_row(tmp_path):
    quick = ["train.py", *TINY, "--method", "moco", "--subset", "256", "--epochs", "2", "--batch-size", "64",
             "--log-every", "1"]
    r = run(quick + ["--fault-nonfinite", "2,5", "--out", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_csv(tmp_path / "two" / "train.csv")
    assert [int(x["skipped"]) for x in rows] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [math.isfinite(float(x["loss"])) for x in rows] == [True, True, False, True, True, False, True, True]
    assert all(math.isfinite(float(x["loss"])) for x in read_csv(tmp_path / "two" / "epoch.csv"))
    assert all_finite_state(tmp_path / "two" / "last.pt")
    r = run(quick + ["--fault-nonfinite", "5,6,7", "--nonfinite-limit", "3", "--out", str(tmp_path / "stop")])
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "3 steps in a row had a non-finite loss" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert torch.load(tmp_path / "stop" / "last.pt", weights_only=False)["epoch"] == 1   # epoch 1's, finite
    assert all_finite_state(tmp_path / "stop" / "last.pt")
    r = run(quick + ["--fault-nonfinite", "5", "--nonfinite-limit", "0", "--out", str(tmp_path / "off")])
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "loss is nan at epoch 2" in lines[0], r.stderr


def all_finite_state(path) -> bool:
    state = torch.load(path, weights_only=False)
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
