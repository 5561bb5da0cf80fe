"""Training runs end to end: 2-process gloo DDP for each method, kill-and-resume, and bad input."""
import math

import pytest
import torch

from tests.helpers import TINY, kill_and_resume_equals_uninterrupted, read_csv, run, run_here

pytestmark = pytest.mark.slow


# one contrastive and one non-contrastive method without BSIM; all four run under torchrun in the BSIM test
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_two_process_gloo_training_lowers_the_loss(method, tmp_path):
    out = tmp_path / method
    r = run(["train.py", "--method", method, "--subset", "512", "--epochs", "2", "--batch-size", "64",
             "--out", str(out), "--lr", "0.3"] + TINY, torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_csv(out / "epoch.csv")
    losses = [float(x["loss"]) for x in rows]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert losses[1] < losses[0], losses
    cfg = torch.load(out / "last.pt", weights_only=False)["config"]
    assert cfg["world"] == 2 and cfg["method"] == method


def test_kill_and_resume_gives_the_same_weights_and_a_truncated_checkpoint_falls_back(tmp_path):
    args = ["train.py", "--method", "byol", "--subset", "768", "--epochs", "3", "--batch-size", "64",
            "--lr", "0.3"] + TINY
    kill_and_resume_equals_uninterrupted(args, tmp_path)
    out = tmp_path / "killed"
    ck, prev = out / "last.pt", out / "last.prev.pt"
    assert torch.load(prev, weights_only=False)["epoch"] == 2      # the checkpoint before the last is kept
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])     # a copy cut short
    r = run_here(args + ["--out", str(out), "--resume", "auto"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from the previous checkpoint {prev}" in r.stderr and f"resumed from {prev} at epoch 2" in r.stdout
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    b = torch.load(ck, weights_only=False)["model"]                # epoch 3 again, from epoch 2: the same weights
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    prev.write_bytes(b"")
    ck.write_bytes(b"x")
    r = run_here(args + ["--out", str(out), "--resume", "auto"])
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert r.returncode == 2 and len(lines) == 1 and "no readable checkpoint" in lines[0], r.stderr[-2000:]


@pytest.fixture(scope="module")
def simclr_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck")
    r = run_here(["train.py", "--method", "simclr", "--subset", "64", "--epochs", "1", "--batch-size", "32",
                  "--out", str(out)] + TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "last.pt"


def bad(args, expect, torchrun=0, here=False):
    """here: in this process (run_here), where an uncaught exception fails the test by raising; the subprocess
    form also shows that no Traceback reaches the terminal."""
    # tiny, fast settings first: the flag under test comes later and wins
    quick = TINY + ["--subset", "64", "--batch-size", "32", "--epochs", "1"]
    r = run_here(["train.py"] + quick + args) if here else run(["train.py"] + quick + args, torchrun=torchrun,
                                                                 timeout=120)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    if torchrun:  # torchrun's launcher adds its own ChildFailedError report; none may come from our code
        assert "train.py\", line" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
    else:
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines and expect in lines[0], r.stderr[-2000:]
    return r


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, simclr_ckpt):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expect in [
        (["--dataset", "imagefolder", "--data", "/nonexistent/dir"], "no such directory"),
        (["--dataset", "imagefolder", "--data", str(empty)], "no images found"),
        (["--dataset", "fashion-mnist", "--data", str(empty)], "no Fashion-MNIST idx files"),
        (["--loader", "nope"], "--loader nope: unknown"),
        (["--method", "nope"], "--method nope: unknown"),
        (["--arch", "nope"], "--arch nope: unknown"),
        (["--amp", "fp16", "--device", "cpu"], "--amp fp16 needs a GPU"),
        (["--epochs", "x"], "invalid int value"),
        (["--method", "byol", "--resume", str(simclr_ckpt)], "a simclr checkpoint, not byol"),
        (["--resume", str(tmp_path / "none.pt")], "no such file"),
    ]:
        r = bad(args, expect, here=args[-1] != "/nonexistent/dir")   # the first in a process of its own
        assert r.returncode == 2, (args, r.returncode)
    if not torch.cuda.is_available():
        assert bad(["--device", "cuda"], "no CUDA device").returncode == 2


def test_corrupt_checkpoint_and_batch_not_divisible(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert bad(["--resume", str(broken)], "no readable checkpoint", here=True).returncode == 2
    bad(["--batch-size", "63", "--subset", "128"], "not divisible by the 2 processes", torchrun=2)


def test_demo_config_beats_random_init(tmp_path):
    """The README's demo in miniature: the trained encoder's kNN beats the same encoder at random init."""
    out = tmp_path / "demo"
    r = run_here(["train.py", "--config", "configs/fashion_demo.yaml", "--subset", "4096", "--epochs", "2",
                  "--knn-train", "2000", "--knn-test", "1000", "--out", str(out), "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    knn = {x["what"]: float(x["knn_top1"]) for x in read_csv(out / "knn.csv")}
    assert knn["trained"] > knn["random-init"] + 5, knn


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam"])
def test_bsim_two_process_training_and_resume(method, tmp_path):
    out = tmp_path / method
    extra = ["--lr", "0.12", "--ema", "0.99"] if method == "moco" else ["--lr", "0.3"]
    args = ["train.py", "--method", method, "--subset", "512", "--batch-size", "64", "--out", str(out),
            "--bsim", "--bsim-mode", "both"] + TINY + extra
    r = run(args + ["--epochs", "2"], torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = read_csv(out / "train.csv")
    assert all(math.isfinite(float(x["loss_mix"])) for x in steps)
    losses = [float(x["loss"]) for x in read_csv(out / "epoch.csv")]
    if method == "moco":
        assert losses[1] < 2 * math.log(129) - 0.05, losses   # L_method + L_mix, each at most log(Q+1) at chance
    else:
        assert losses[1] < losses[0], losses
    assert torch.load(out / "last.pt", weights_only=False)["config"]["world"] == 2
    if method in ("simclr", "simsiam"):   # no state beyond the weights: the resume is tested with moco and byol
        return
    r = run(args + ["--epochs", "3", "--resume", "auto"], torchrun=2)
    assert r.returncode == 0 and "at epoch 2" in r.stdout, r.stderr[-3000:]
    assert [int(x["epoch"]) for x in read_csv(out / "epoch.csv")] == [1, 2, 3]


def test_run_state_declares_every_field_that_train_py_sets():
    """train.Run is a dataclass with every field declared: no part of the loop adds an attribute of its own."""
    import ast
    import dataclasses

    import train
    tree = ast.parse(open(train.__file__).read())
    set_ = {t.attr for n in ast.walk(tree) if isinstance(n, (ast.Assign, ast.AugAssign))
            for tgt in (n.targets if isinstance(n, ast.Assign) else [n.target])
            for t in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "r"}
    declared = {f.name for f in dataclasses.fields(train.Run)}
    assert len(set_) > 25 and set_ <= declared, sorted(set_ - declared)


def test_a_toy_extension_joins_the_loop_and_changes_the_gradients(tmp_path, monkeypatch):
    """extensions.py: an add-on is a class that owns its flags, their check and its extension (engine/extension.py),
    and an entry in ADDONS; flags.py, train.py, the loaders and the methods name none. The toy's flag is parsed and
    checked, the toy sees every event in order, and its loss term (the mean of the method's embeddings, through the
    declared interface: Extension.terms) changes the gradients by exactly that term's, in a step of its own and in
    train.py's, whose log carries it."""
    import extensions
    import flags
    import train
    from engine.errors import UsageError
    from engine.extension import Extension
    from loaders.batch import Batch
    from models.methods import build_method

    class Toy(Extension):
        log_keys = ("loss_toy",)

        def __init__(self, weight):
            self.weight, self.events = weight, []

        def epoch_start(self, run, epoch):
            self.events.append(("epoch", epoch))

        def batch_loaded(self, batch):
            self.events.append(("batch", batch.size))

        def terms(self, method, e, extra, batch):
            return {"loss_toy": (e.mean(), self.weight)}   # SimCLR's e: the normalized projections [2B, D]

    built = []

    class ToyAddOn(extensions.AddOn):
        title = "toy"

        def add_flags(self, a):
            a("--toy-weight", type=float, default=0.0)

        def check(self, args):
            if args.toy_weight < 0:
                raise UsageError(f"--toy-weight {args.toy_weight}: must be >= 0")

        def build(self, args, run, model):
            built.append(Toy(args.toy_weight))
            return built[-1]

    # the gradients, with and without the toy, from the same weights and batch: apart by w * d(mean e)/dw exactly
    torch.manual_seed(0)
    m = build_method("simclr", arch="resnet10", small_stem=True, width=8, proj_hidden=32, proj_dim=16)
    b = Batch(torch.randn(2, 8, 3, 16, 16), torch.arange(8), torch.zeros(8).long())

    def grads(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(m.parameters()), allow_unused=False)])
    plain, with_toy = grads(m(b)["loss"]), grads(m(b, [Toy(2.5)])["loss"])
    term = grads(m.prepare(m.embed(b.views)).mean())
    torch.testing.assert_close(with_toy, plain + 2.5 * term, rtol=1e-3, atol=1e-5)   # float32 losses
    assert (with_toy - plain).abs().max() > 1e-3 * plain.abs().max()

    monkeypatch.setattr(extensions, "ADDONS", extensions.ADDONS + [ToyAddOn()])
    with pytest.raises(UsageError, match="--toy-weight -1.0: must be >= 0"):
        flags.parse(["--toy-weight", "-1"])
    train.main(["--method", "simclr", "--loader", "device", "--subset", "256", "--epochs", "2", "--batch-size", "64",
                "--res", "16", "--toy-weight", "1.5", "--out", str(tmp_path)] + TINY)
    toy, = built
    assert toy.events == [("epoch", 0)] + [("batch", 64)] * 4 + [("epoch", 1)] + [("batch", 64)] * 4
    rows = read_csv(tmp_path / "train.csv")
    logged = [float(x["loss_toy"]) for x in rows]
    assert rows and all(math.isfinite(v) and abs(v) < 1 for v in logged) and len(set(logged)) > 1, rows[:2]


def test_sepp_refuses_an_ffcv_order_that_would_replace_its_pairs():
    """SePP keeps each pair in one batch through its own sample order: with --loader ffcv it takes --ffcv-order
    auto as ours, and refuses an order given explicitly that would silently replace it (issue 47 item 3)."""
    import extensions
    import flags
    from engine.errors import UsageError
    p = flags.build_parser()
    args = p.parse_args(["--sepp", "--loader", "ffcv", "--ffcv-order", "random"])
    with pytest.raises(UsageError, match="--ffcv-order random would replace it"):
        extensions.check(args)
    for given in ("auto", "ours"):
        args = p.parse_args(["--sepp", "--loader", "ffcv", "--ffcv-order", given])
        extensions.check(args)
        assert args.ffcv_order == "ours"


def test_each_addon_check_fires_on_the_flags_alone(tmp_path):
    """The add-ons' checks (extensions.py) refuse bad combinations from the flags, before any data is read: each
    one fires (issue 47 item 5: two of them could not)."""
    import flags
    from engine.errors import UsageError
    enc = tmp_path / "enc.pt"
    enc.write_bytes(b"x")
    for argv, message in (
            (["--sepp", "--loader", "synthetic"], "--sepp needs real images to mine"),
            (["--sepp", "--sepp-bank", "train", "--sepp-encoder", str(enc)], "--sepp-bank train fills the bank"),
            (["--sepp", "--sepp-bank", "cache"], "--sepp-bank cache: unknown"),
            (["--sepp", "--loader", "dali", "--dali-pipes", "2"], "runs one pipeline per GPU"),
            (["--sepp-pairs", str(enc), "--sepp-bank", "train"], "--sepp-pairs brings its own positives"),
            (["--bsim", "--bsim-mode", "blend"], "--bsim-mode blend: unknown")):
        with pytest.raises(UsageError, match=message):
            flags.parse(argv)


def test_the_momentum_schedule_is_the_methods_byol_a_cosine_to_one_moco_constant():
    """engine/ names no method: a method declares its momentum schedule (Method.cosine_momentum). BYOL's target
    momentum is 1 - (1 - ema)(cos(pi k / K) + 1) / 2 at step k of K (its section 3.2); MoCo's stays at ema."""
    import flags
    from engine.step import build_step
    from models.methods import build_model_from_config
    for method, ema in (("byol", 0.996), ("moco", 0.99)):
        a = flags.parse(["--method", method, "--arch", "resnet10", "--width", "8", "--epochs", "2", "--ema", str(ema)])
        m = build_step(a, build_model_from_config(vars(a)), 10).momentum
        k = torch.arange(20, dtype=torch.float64)
        want = (1 - (1 - ema) * (torch.cos(math.pi * k / 20) + 1) / 2 if method == "byol"
                else torch.full((20,), ema, dtype=torch.float64))
        torch.testing.assert_close(torch.as_tensor(m, dtype=torch.float64), want, rtol=0, atol=1e-6)
