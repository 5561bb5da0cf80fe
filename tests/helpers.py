import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small, fast configuration: resnet10 with a stride-2 stem at 28 px, tiny heads.
TINY = ["--arch", "resnet10", "--stem-stride", "2", "--proj-hidden", "64", "--proj-dim", "32",
        "--pred-hidden", "32", "--queue-size", "128", "--warmup-epochs", "0", "--optimizer", "sgd",
        "--knn-every", "-1", "--workers", "1", "--no-progress"]


def run(args, torchrun=0, timeout=600, env=None):
    cmd = [sys.executable]
    if torchrun:
        port = str(29500 + (os.getpid() % 400))
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", f"--master_port={port}"]
    e = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1" if torchrun else "2", **(env or {}))
    return subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))
