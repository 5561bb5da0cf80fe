"""The four methods. Each is a small module: forward(batch) -> dict with 'loss' (float32) and logs."""
from engine.errors import UsageError
from models.methods.byol import BYOL
from models.methods.moco import MoCo
from models.methods.simclr import SimCLR
from models.methods.simsiam import SimSiam

METHODS = {"simclr": SimCLR, "moco": MoCo, "byol": BYOL, "simsiam": SimSiam}


def build_method(name: str, **kw):
    if name not in METHODS:
        raise UsageError(f"`method` {name}: unknown (choose from {', '.join(METHODS)})")
    return METHODS[name](**kw)


# what a run's saved config says of its model (the rest is training): enough to rebuild it from a checkpoint
MODEL_KEYS = ("arch", "small_stem", "stem_stride", "width", "temperature", "proj_hidden", "proj_dim", "pred_hidden",
              "queue_size", "sepp_weight")


def model_kwargs(cfg: dict) -> dict:
    return {k: cfg[k] for k in MODEL_KEYS if cfg.get(k) is not None}


def build_model_from_config(cfg: dict):
    """The method a run's resolved config (config.json, or a checkpoint's 'config') describes."""
    return build_method(cfg["method"], **model_kwargs(cfg))
