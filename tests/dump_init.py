"""Run under torchrun (gloo): train.py's set-up only; each rank writes a digest of the weights its random-init
kNN monitor embeds with (tests/test_gpu_paths.py: they must be equal on every rank).

    python -m torch.distributed.run --nproc_per_node=2 tests/dump_init.py [train.py flags] --knn-random-init --out DIR
"""
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
import flags
from engine import dist  # noqa: E402

r = train.setup(flags.parse(sys.argv[1:]))
h = hashlib.sha1()
for k, v in sorted(r.random_init_state.items()):
    h.update(k.encode())
    h.update(v.detach().cpu().contiguous().numpy().tobytes())
with open(os.path.join(r.args.out, f"init_r{r.rank}.txt"), "w") as f:
    f.write(h.hexdigest())
dist.barrier()
dist.cleanup()
