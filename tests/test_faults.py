"""Faults a long run must survive: a non-finite loss is skipped without a trace, too many in a row stop the run
with one line, and no checkpoint holds non-finite weights."""
import math

import pytest
import torch

from engine.guard import NonFiniteGuard, all_finite
from engine.optim import build_optimizer
from tests.helpers import TINY, read_csv, run, run_here


def _net():
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


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
    r = run_here(quick + ["--fault-nonfinite", "2,5", "--out", str(tmp_path / "two")])
    assert r.returncode == 0, r.stderr[-2000:]
    rows = read_csv(tmp_path / "two" / "train.csv")
    assert [int(x["skipped"]) for x in rows] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [math.isfinite(float(x["loss"])) for x in rows] == [True, True, False, True, True, False, True, True]
    assert all(math.isfinite(float(x["loss"])) for x in read_csv(tmp_path / "two" / "epoch.csv"))
    assert all_finite_state(tmp_path / "two" / "last.pt")
    r = run_here(quick + ["--fault-nonfinite", "5,6,7", "--nonfinite-limit", "3", "--out", str(tmp_path / "stop")])
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "3 steps in a row had a non-finite loss" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert torch.load(tmp_path / "stop" / "last.pt", weights_only=False)["epoch"] == 1   # epoch 1's, finite
    assert all_finite_state(tmp_path / "stop" / "last.pt")
    r = run_here(quick + ["--fault-nonfinite", "5", "--nonfinite-limit", "0", "--out", str(tmp_path / "off")])
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "loss is nan at epoch 2" in lines[0], r.stderr


def all_finite_state(path) -> bool:
    state = torch.load(path, weights_only=False)
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torch", "device"])
def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(loader, tmp_path):
    """8 batches an epoch; SIGTERM at global step 5 (epoch 1): the checkpoint holds epoch 0 + 6 batches, and
    the resumed run goes on at batch 6 with the same RNG streams: the uninterrupted run's weights."""
    from tests.helpers import signal_and_resume_equals_uninterrupted
    args = ["train.py", *TINY, "--loader", loader, "--method", "byol", "--bsim", "--subset", "512", "--epochs", "2",
            "--batch-size", "64", "--log-every", "1", "--lr", "0.3"]
    saved = signal_and_resume_equals_uninterrupted(args, tmp_path, 5, expect_batch=(0, 6))
    assert saved["ranks"] and len(saved["ranks"]) == 1
    if loader == "torch":   # --ckpt-every-min: checkpoints inside the epochs change nothing in the training
        r = run_here(args + ["--ckpt-every-min", "1e-6", "--out", str(tmp_path / "often")])
        assert r.returncode == 0, r.stderr[-2000:]
        prev = torch.load(tmp_path / "often" / "last.prev.pt", weights_only=False)
        assert (prev["epoch"], prev["batch"]) == (1, 7)          # the last mid-epoch one, before the epoch's end
        a = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
        b = torch.load(tmp_path / "often" / "last.pt", weights_only=False)["model"]
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_sigterm_to_one_of_two_ranks_stops_both_at_one_step_and_resume_equals_the_uninterrupted_run(tmp_path):
    """Rank 0 alone is signalled: the ranks agree at the next log step, every rank's RNG state goes into the
    checkpoint, and the 2-rank resume ends with the uninterrupted run's weights."""
    from tests.helpers import signal_and_resume_equals_uninterrupted
    args = ["train.py", *TINY, "--method", "simclr", "--bsim", "--subset", "512", "--epochs", "2",
            "--batch-size", "64", "--log-every", "2", "--lr", "0.3"]
    saved = signal_and_resume_equals_uninterrupted(args, tmp_path, 9, torchrun=2)
    assert (saved["epoch"], saved["batch"]) == (1, 3) and len(saved["ranks"]) == 2   # agreed at the log step 10


@pytest.mark.slow
def test_sigterm_with_ffcv_and_dali_resumes_mid_epoch(tmp_path):
    from tests.helpers import signal_and_resume_equals_uninterrupted
    from tests.test_ffcv import prepare
    beton = str(tmp_path / "f.beton")
    assert prepare("--subset", "512", "--out", beton, "--write-mode", "raw").returncode == 0
    args = ["train.py", *TINY, "--loader", "ffcv", "--beton", beton, "--ffcv-order", "ours", "--subset", "512",
            "--epochs", "2", "--batch-size", "64", "--log-every", "1", "--lr", "0.3"]
    signal_and_resume_equals_uninterrupted(args, tmp_path / "ffcv", 3, expect_batch=(0, 4))
    dali = ["train.py", *TINY, "--loader", "dali", "--subset", "256", "--epochs", "2", "--batch-size", "64",
            "--log-every", "1", "--out", str(tmp_path / "dali")]
    r = run_here(dali + ["--fault-signal-step", "1"])
    assert r.returncode == 3, r.stderr[-2000:]
    saved = torch.load(tmp_path / "dali" / "last.pt", weights_only=False)
    assert (saved["epoch"], saved["batch"]) == (0, 2)
    r = run_here(dali + ["--resume", "auto"])
    # DALI's reader takes the epoch order from the resumed batch on (its own random draws differ from then on)
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert "restarts at its first batch" not in r.stdout


def _torchrun(extra, args, nproc=1, env=None):
    """One torchrun agent (started, not waited for)."""
    import os
    import subprocess
    import sys
    from tests.helpers import ROOT
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **(env or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra, *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


_WORKER_SCRIPT = """
import multiprocessing, sys
from loaders import LoaderOptions, build_loader
from loaders.augment import RECIPES
from loaders.datasets import open_source
loader = build_loader(LoaderOptions("torch", 16, 32, seed=0, workers=1),
                      open_source("fashion-mnist", None, True, 256, 0), RECIPES["simclr"], "cpu", 0, 1)
it = iter(loader)
next(it)
(worker,) = multiprocessing.active_children()
print(worker.pid, flush=True)
sys.stdin.readline()
print("batches", 1 + sum(1 for _ in it), flush=True)
raise RuntimeError("a crash with the loader's workers alive")
"""


def test_loader_workers_ignore_a_notice_from_outside_and_end_with_the_main_process():
    """torch loader workers: SIGTERM and SIGUSR1 from another process (torchrun's or SLURM's notice to the
    group) leave them working (the epoch's 8 batches come); the main process's own SIGTERM on its way out
    after an exception ends them, so the process exits (with a worker deaf to it, it waited for ever)."""
    import os
    import signal
    import subprocess
    import sys
    from tests.helpers import ROOT
    p = subprocess.Popen([sys.executable, "-c", _WORKER_SCRIPT], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="ignore"))
    try:
        worker = int(p.stdout.readline())
        os.kill(worker, signal.SIGTERM)
        os.kill(worker, signal.SIGUSR1)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert out.split() == ["batches", "8"], err[-2000:]
    assert p.returncode == 1 and "a crash with the loader's workers alive" in err, err[-2000:]


@pytest.mark.slow
def test_two_torchrun_agents_meet_by_c10d_rendezvous_and_train(tmp_path):
    """Beyond one machine: two torchrun agents (--nnodes 2, one CPU process each), rendezvous c10d on
    127.0.0.1, as two nodes of a cluster would; one run of world size 2."""
    import os
    port = 29100 + os.getpid() % 300
    rdzv = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=faults"]
    args = ["train.py", *TINY, "--subset", "256", "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "r")]
    agents = [_torchrun(rdzv, args) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in agents]
    assert all(p.returncode == 0 for p in agents), [o[1][-2000:] for o in outs]
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert state["config"]["world"] == 2 and state["epoch"] == 1


TWO_RANKS = ["train.py", *TINY, "--subset", "512", "--epochs", "3", "--batch-size", "64", "--lr", "0.3",
           "--resume", "auto"]


@pytest.fixture(scope="module")
def two_rank_reference(tmp_path_factory):
    """The uninterrupted 2-rank run the interrupted ones must end as (weights of its last.pt)."""
    out = tmp_path_factory.mktemp("two_rank_ref")
    ref = run(TWO_RANKS + ["--out", str(out)], torchrun=2)
    assert ref.returncode == 0, ref.stderr[-2000:]
    return torch.load(out / "last.pt", weights_only=False)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("rendezvous", ["static", "c10d-2-agents"])
def test_elastic_restart_after_a_lost_worker_resumes_and_ends_as_the_uninterrupted_run(rendezvous, tmp_path,
                                                                                       two_rank_reference):
    """torchrun --max-restarts 1: the last rank dies in epoch 2 (step 10 of 8 an epoch); torchrun restarts the
    group, which resumes from epoch 1's checkpoint (--resume auto) and finishes with the weights of a run that
    lost nothing. One agent keeps its store across the restart (static rendezvous here; --standalone, c10d,
    passed too but costs CI time): engine.dist.elastic_store gives each attempt its own keys. Two agents (two
    nodes, c10d) take a new store each round (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as the README asks of
    multi-node jobs). The surviving rank,
    whose collective failed, exits at once: its loader's worker ends on the main process's SIGTERM."""
    import os
    import time
    fault = [*TWO_RANKS, "--out", str(tmp_path / "elastic"), "--fault-exit-step", "10"]
    port = 29700 + os.getpid() % 100
    t = time.monotonic()
    if rendezvous == "c10d-2-agents":
        rdzv = ["--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=elastic",
                "--max-restarts=1"]
        agents = [_torchrun(rdzv, fault, env={"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}) for _ in range(2)]
    else:
        agents = [_torchrun([f"--master_port={port}", "--max-restarts=1"], fault, nproc=2)]
    outs = [p.communicate(timeout=600) for p in agents]
    out, err = "".join(o[0] for o in outs), "".join(o[1] for o in outs)
    assert all(p.returncode == 0 for p in agents), err[-3000:]
    assert "failed (exitcode: 17)" in err, "no worker was lost: " + err[-2000:]
    assert "resumed from" in out and "at epoch 1" in out, out[-2000:]
    assert "Unable to shutdown" not in err, "the surviving rank had to be killed: " + err[-3000:]
    print(f"elastic run ({rendezvous}): {time.monotonic() - t:.0f} s")
    b = torch.load(tmp_path / "elastic" / "last.pt", weights_only=False)
    assert b["epoch"] == 3
    for k, v in two_rank_reference.items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_sigterm_to_the_torchrun_agent_reaches_the_workers_which_checkpoint_and_resume(tmp_path,
                                                                                        two_rank_reference):
    """The SLURM path: SIGTERM to torchrun (not to the workers) at a random moment of training; torchrun
    forwards it, the workers agree, checkpoint and stop; the resume ends with the uninterrupted run's weights."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from tests.helpers import ROOT
    args = [*TWO_RANKS, "--log-every", "1"]   # --resume auto: a fresh directory starts from scratch
    out = tmp_path / "term"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={29800 + os.getpid() % 150}", *args, "--out", str(out)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv = out / "train.csv"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None and (not csv.exists() or len(csv.read_text().splitlines()) < 5):
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert "stopped by SIGTERM" in err, err[-3000:]
    saved = torch.load(out / "last.pt", weights_only=False)
    assert (saved["epoch"], saved["batch"]) != (3, 0), "the signal should land mid-run"
    r = run(args + ["--out", str(out)], torchrun=2)
    assert r.returncode == 0, r.stderr[-2000:]
    b = torch.load(out / "last.pt", weights_only=False)["model"]
    for k, v in two_rank_reference.items():
        torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5, msg=k)
