"""Pre-trained encoders for mining semantic positives (the SePP paper mines with an already pre-trained
self-supervised model): our own checkpoints, or ResNet weights users already hold, mapped onto our backbone.

SPEC forms:
  RUN/last.pt             a train.py checkpoint: the online backbone
  RUN/last.pt:momentum    ... its momentum / target backbone (MoCo, BYOL)
  FILE.pth                a ResNet state dict (or a checkpoint holding one under 'state_dict' / 'model'):
                          torchvision (conv1.weight, layer1..., fc dropped), MoCo v2 official
                          (module.encoder_q.*), solo-learn (backbone.*), lightly (backbone.0..7 of
                          nn.Sequential(*resnet.children()[:-1])), or module.* / encoder.* prefixes
A file whose keys cannot be mapped is refused with one line naming the keys it found.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from engine.errors import UsageError

# lightly's examples: backbone = nn.Sequential(*list(resnet.children())[:-1]) -> indices of torchvision names
SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
PREFIXES = ("module.encoder_q.", "encoder_q.", "module.backbone.", "backbone.", "module.encoder.", "encoder.",
            "module.", "model.", "")


def _state_dict(obj) -> dict:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise UsageError("no state dict inside (expected a dict of tensors, or one under 'state_dict' or 'model')")


def map_resnet_keys(sd: dict, want: set) -> dict:
    """The state dict's ResNet weights under torchvision's names (those of `want`), whatever the prefix; {} if
    no prefix gives at least the stem and the four stages."""
    best = {}
    for prefix in PREFIXES:
        out = {}
        for k, v in sd.items():
            if not k.startswith(prefix):
                continue
            name = k[len(prefix):]
            m = re.match(r"(\d+)\.(.*)", name)   # nn.Sequential indices (lightly)
            if m and m.group(1) in SEQUENTIAL:
                name = f"{SEQUENTIAL[m.group(1)]}.{m.group(2)}"
            if name in want:
                out[name] = v
        if len(out) > len(best):
            best = out
    stages = ("conv1.weight", "layer1.", "layer2.", "layer3.", "layer4.")
    return best if all(any(k.startswith(s) for k in best) for s in stages) else {}


def _found(sd: dict) -> str:
    keys = list(sd)
    return f"{len(keys)} keys, e.g. {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"


def load_encoder(spec: str, arch: str = "resnet50", small_stem: bool = False, stem_stride: int = 1,
                 space: str = "backbone") -> tuple[nn.Module, dict]:
    """-> (encoder on the CPU in eval mode, a description for the pairs file's metadata)."""
    path, _, which = spec.partition(":") if not os.path.isfile(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise UsageError(f"--encoder {spec}: no such file")
    if which not in ("", "online", "momentum"):
        raise UsageError(f"--encoder {spec}: ':{which}' unknown (':online' or ':momentum')")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"--encoder {path}: cannot be read ({type(e).__name__})")
    if isinstance(obj, dict) and "config" in obj and "model" in obj:   # one of our train.py checkpoints
        from engine.config import build_model_from_config
        model = build_model_from_config(obj["config"])
        model.load_state_dict(obj["model"])
        if which == "momentum" and not model.momentum_encoder:
            raise UsageError(f"--encoder {spec}: a {obj['config']['method']} checkpoint has no momentum encoder")
        backbone, projector = (model.target[0], model.target[1]) if which == "momentum" else (model.backbone,
                                                                                              model.projector)
        enc = backbone if space == "backbone" else nn.Sequential(backbone, projector)
        cfg = obj["config"]
        desc = {"kind": "ours", "method": cfg["method"], "arch": cfg["arch"], "network": which or "online"}
        return enc.eval(), desc
    if space != "backbone":
        raise UsageError(f"--encoder {path}: foreign weights have no projector of ours; use --space backbone")
    from models.backbones import build_backbone
    backbone, _ = build_backbone(arch, small_stem, stem_stride)
    want = set(backbone.state_dict())
    try:
        sd = _state_dict(obj)
    except UsageError as e:
        raise UsageError(f"--encoder {path}: {e}")
    mapped = map_resnet_keys(sd, want)
    missing = sorted(want - set(mapped) - {k for k in want if k.endswith("num_batches_tracked")})
    if not mapped or missing:
        raise UsageError(f"--encoder {path}: cannot map its keys onto a {arch} backbone (found {_found(sd)}; "
                         f"missing {len(missing) if mapped else 'all'} of ours"
                         + (f", e.g. {missing[0]}" if mapped and missing else "") + "); check --arch / --small-stem")
    shapes = [k for k, v in mapped.items() if v.shape != backbone.state_dict()[k].shape]
    if shapes:
        raise UsageError(f"--encoder {path}: {shapes[0]} has shape {tuple(mapped[shapes[0]].shape)}, our {arch} "
                         f"{tuple(backbone.state_dict()[shapes[0]].shape)}; check --arch / --small-stem")
    backbone.load_state_dict(mapped, strict=False)
    return backbone.eval(), {"kind": "resnet state dict", "arch": arch, "keys": len(mapped)}
