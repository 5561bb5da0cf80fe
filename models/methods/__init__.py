"""The four methods. Each is a small module: forward(batch) -> dict with 'loss' (float32) and logs."""
from engine.errors import UsageError
from models.methods.byol import BYOL
from models.methods.moco import MoCo
from models.methods.simclr import SimCLR
from models.methods.simsiam import SimSiam

METHODS = {"simclr": SimCLR, "moco": MoCo, "byol": BYOL, "simsiam": SimSiam}


def build_method(name: str, **kw):
    if name not in METHODS:
        raise UsageError(f"--method {name}: unknown (choose from {', '.join(METHODS)})")
    return METHODS[name](**kw)
