import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small, fast configuration: a resnet10 of width 16 (a quarter of torchvision's) with a stride-2 stem at 28 px,
# tiny heads. Width 16 trains 3x faster than 64 on 2 cores (2.6 s against 7.5 s for the BSIM test's 2 epochs).
TINY = ["--arch", "resnet10", "--width", "16", "--stem-stride", "2", "--proj-hidden", "64", "--proj-dim", "32",
        "--pred-hidden", "32", "--queue-size", "128", "--warmup-epochs", "0", "--optimizer", "sgd",
        "--knn-every", "-1", "--workers", "1", "--no-progress"]


def run(args, torchrun=0, timeout=600, env=None):
    cmd = [sys.executable]
    if torchrun:
        port = str(29500 + (os.getpid() % 400))
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", f"--master_port={port}"]
    e = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1" if torchrun else "2", **(env or {}))
    return subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)


def run_here(args):
    """What run(args) returns, for train.py or `-m module` with a main(argv), run in this process: no interpreter
    start-up and no imports again (most of a short run's time on 2 cores). For checks that need no process of
    their own: one rank, nothing killed. The signal handlers that train.py installs are put back."""
    import contextlib
    import importlib
    import io
    import signal
    module, argv = ("train", args[1:]) if args[0] == "train.py" else (args[1], args[2:])
    assert args[0] in ("train.py", "-m"), args
    out, err, code = io.StringIO(), io.StringIO(), 0
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            importlib.import_module(module).main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_or_more(args, torchrun=0):
    """run_here(args) for one process, run(args, torchrun=N) for N ranks."""
    return run(args, torchrun=torchrun) if torchrun else run_here(args)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def smooth_image(rng, h, w):
    """A natural-looking RGB uint8 image (smooth gradients + blobs): JPEG-friendly, every region distinct."""
    import numpy as np
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * x / 17 + b * y / 23 + p * 6) + 40 * np.cos((x * b - y * a) / 41)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, max(6, min(h, w) / 3))
        img += (((y - cy) ** 2 + (x - cx) ** 2) < r * r)[..., None] * rng.uniform(-60, 60, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root, per_class=6, classes=2, seed=0, bad=True):
    """root/<class>/*.jpg of varied sizes; with bad=True also a corrupt and a truncated JPEG.
    Returns (good paths in ImageFolder order, bad paths)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    good, broken = [], []
    for c in range(classes):
        d = os.path.join(root, f"class{c}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
            p = os.path.join(d, f"img{i:03d}.jpg")
            Image.fromarray(smooth_image(rng, h, w)).save(p, quality=95)
            good.append(p)
    if bad:
        with open(good[0], "rb") as f:
            data = f.read()
        corrupt = os.path.join(root, "class0", "zz_corrupt.jpg")
        with open(corrupt, "wb") as f:
            f.write(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
        trunc = os.path.join(root, "class1", "zz_truncated.jpg")
        with open(trunc, "wb") as f:
            f.write(data[:len(data) // 2])
        broken = [corrupt, trunc]
    return sorted(good, key=lambda p: (os.path.dirname(p), p)), broken


def add_bad_files(root, seed=1):
    """The files a real folder holds besides good JPEGs (issue 45), in root/<class>/ of an image folder: a
    truncated JPEG, a PNG named .jpg, CMYK and grayscale JPEGs, a 1x1 image, a text file named .JPEG, and an
    empty class folder. -> {case: path}; the truncated JPEG and the text file cannot be decoded."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    d = os.path.join(root, classes[-1])
    img = Image.fromarray(smooth_image(rng, 90, 120))
    paths = {k: os.path.join(d, f"zz_bad_{k}.{ext}") for k, ext in (
        ("truncated", "jpg"), ("png", "jpg"), ("cmyk", "jpg"), ("grey", "jpg"), ("tiny", "jpg"), ("text", "JPEG"))}
    img.save(paths["truncated"], quality=90)
    with open(paths["truncated"], "r+b") as f:
        f.truncate(os.path.getsize(paths["truncated"]) // 2)
    img.save(paths["png"], format="PNG")
    img.convert("CMYK").save(paths["cmyk"], quality=90)
    img.convert("L").save(paths["grey"], quality=90)
    img.resize((1, 1)).save(paths["tiny"], quality=90)
    with open(paths["text"], "w") as f:
        f.write("not an image\n" * 20)
    os.makedirs(os.path.join(root, "zz_empty_class"), exist_ok=True)
    return paths


def kill_and_resume_equals_uninterrupted(args, tmp_path):
    """Run `args` (train.py ... without --out) to the end; run it again, SIGKILL it once its first checkpoint
    is written, resume with --resume auto: the final weights must equal the uninterrupted run's. Only the killed
    run needs a process of its own: the other two run in this one (run_here)."""
    import signal
    import time

    import torch
    ref = run_here(args + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable] + args + ["--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    ck = out / "last.pt"
    deadline = time.time() + 300
    while not ck.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    saved = torch.load(ck, weights_only=False)   # the checkpoint survives the kill intact
    epochs = int(args[args.index("--epochs") + 1])
    assert 1 <= saved["epoch"] < epochs, "the kill should land mid-run"
    r = run_here(args + ["--out", str(out), "--resume", "auto"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {ck} at epoch {saved['epoch']}" in r.stdout
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    b = torch.load(ck, weights_only=False)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def ranks_cover_every_index(loader_args, tmp_path, n=512):
    """tests/dump_indices.py under 2 gloo ranks: each epoch, the ranks see disjoint halves that cover 0..n-1
    exactly once, and the order changes between epochs."""
    import numpy as np
    r = run(["tests/dump_indices.py", *loader_args, "--subset", str(n), "--out", str(tmp_path)], torchrun=2,
            timeout=300)   # a hang fails by timeout
    assert r.returncode == 0, r.stderr[-2000:]
    for ep in range(2):
        a, b = (np.load(tmp_path / f"r{k}_e{ep}.npy") for k in range(2))
        assert len(a) == len(b) == n // 2 and not set(a) & set(b)
        assert sorted(np.concatenate([a, b]).tolist()) == list(range(n))
    assert not np.array_equal(np.load(tmp_path / "r0_e0.npy"), np.load(tmp_path / "r0_e1.npy"))


def signal_and_resume_equals_uninterrupted(args, tmp_path, stop_step, torchrun=0, expect_batch=None):
    """Run `args` (train.py ... without --out, with --log-every 1) to the end; run it again with a SIGTERM at
    global step `stop_step` (rank 0 signals itself): it must write a mid-epoch checkpoint and exit with code 3
    and one line; resumed with --resume auto, its final weights must equal the uninterrupted run's. Without
    torchrun, all three run in this process (run_here: train.py's SIGTERM handler is put back after each)."""
    import torch
    ref = one_or_more(args + ["--out", str(tmp_path / "ref")], torchrun)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "stopped"
    r = one_or_more(args + ["--out", str(out), "--fault-signal-step", str(stop_step)], torchrun)
    # torchrun reports its workers' exit code 3 as a failure of its own
    assert (r.returncode != 0 if torchrun else r.returncode == 3), (r.returncode, r.stderr[-3000:])
    assert "stopped by SIGTERM" in r.stderr and "--resume auto" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr or torchrun, r.stderr[-2000:]
    saved = torch.load(out / "last.pt", weights_only=False)
    if expect_batch is not None:
        assert (saved["epoch"], saved["batch"]) == expect_batch, (saved["epoch"], saved["batch"])
    r = one_or_more(args + ["--out", str(out), "--resume", "auto"], torchrun)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"at epoch {saved['epoch']}" in r.stdout
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=False)["model"]
    b = torch.load(out / "last.pt", weights_only=False)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    return saved
