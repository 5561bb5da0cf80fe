"""Pre-trained encoders for mining semantic positives (the SePP paper mines with an already pre-trained
self-supervised model): our own checkpoints, or ResNet weights users already hold, mapped onto our backbone.

SPEC forms:
  RUN/last.pt             a train.py checkpoint: the online backbone
  RUN/last.pt:momentum    ... its momentum / target backbone (MoCo, BYOL)
  FILE.pth                a ResNet state dict (or a checkpoint holding one under 'state_dict' / 'model'):
                          torchvision (conv1.weight, layer1..., fc dropped), MoCo v2 official
                          (module.encoder_q.*), solo-learn (backbone.*), lightly (backbone.0..7 of
                          nn.Sequential(*resnet.children()[:-1])), or module.* / encoder.* prefixes
The network (block type, depth, width, stem) is read from the weights' shapes; an --arch that disagrees, or a
file whose keys cannot be mapped, is refused with one line saying what the file holds.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from engine.errors import UsageError

# lightly's examples: backbone = nn.Sequential(*list(resnet.children())[:-1]) -> indices of torchvision names
SEQUENTIAL = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
PREFIXES = ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.", "module.backbone.", "backbone.", "module.encoder.", "encoder.",
            "module.", "model.", "")


def _state_dict(obj) -> dict:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise UsageError("no state dict inside (expected a dict of tensors, or one under 'state_dict' or 'model')")


# torchvision's ResNet parameter and buffer names (fc excluded): what a backbone's weights are called
RESNET_KEY = re.compile(r"^(conv1\.weight|bn1\.\w+|layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.\w+|"
                        r"downsample\.[01]\.\w+))$")
DEPTHS = {("basic", (1, 1, 1, 1)): "resnet10", ("basic", (2, 2, 2, 2)): "resnet18",
          ("basic", (3, 4, 6, 3)): "resnet34", ("bottleneck", (3, 4, 6, 3)): "resnet50"}


def infer_resnet(sd: dict) -> dict:
    """What network a ResNet state dict (torchvision names) holds, read from its keys and shapes: the block
    type (a conv3 is a bottleneck), the blocks per stage, the width (the stem's channels) and the stem (3x3:
    the small-image stem; its stride is not in the weights). arch is None for a depth we do not build."""
    block = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    depths = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    stem = tuple(sd["conv1.weight"].shape)
    return {"arch": DEPTHS.get((block, depths)), "block": block, "depths": depths, "width": stem[0],
            "small_stem": stem[-1] == 3}


def holds(info: dict) -> str:
    net = info["arch"] or f"ResNet with {info['block']} blocks {list(info['depths'])}"
    return (f"a {net}, width {info['width']}, {'3x3 small-image' if info['small_stem'] else '7x7 ImageNet'} "
            "stem")


def map_resnet_keys(sd: dict, want=RESNET_KEY.match) -> dict:
    """The state dict's ResNet weights under torchvision's names (those in `want`, a set or a predicate),
    whatever the prefix; {} if no prefix gives at least the stem and the four stages."""
    want = want.__contains__ if isinstance(want, (set, frozenset)) else want
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
            if want(name):
                out[name] = v
        if len(out) > len(best):
            best = out
    stages = ("conv1.weight", "layer1.", "layer2.", "layer3.", "layer4.")
    return best if all(any(k.startswith(s) for k in best) for s in stages) else {}


def _found(sd: dict) -> str:
    keys = list(sd)
    return f"{len(keys)} keys, e.g. {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"


def load_encoder(spec: str, arch: str | None = None, small_stem: bool | None = None, stem_stride: int = 1,
                 space: str = "backbone", flag: str = "--encoder") -> tuple[nn.Module, dict]:
    """-> (encoder on the CPU in eval mode, a description for the pairs file's metadata). Foreign weights
    say what network they hold (infer_resnet); an arch or stem given that disagrees is one error line."""
    path, _, which = spec.partition(":") if not os.path.isfile(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {spec}: no such file")
    if which not in ("", "online", "momentum"):
        raise UsageError(f"{flag} {spec}: ':{which}' unknown (':online' or ':momentum')")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"{flag} {path}: cannot be read ({type(e).__name__})")
    if isinstance(obj, dict) and "config" in obj and "model" in obj:   # one of our train.py checkpoints
        from models.methods import build_model_from_config
        model = build_model_from_config(obj["config"])
        model.load_state_dict(obj["model"])
        if which == "momentum" and not model.momentum_encoder:
            raise UsageError(f"{flag} {spec}: a {obj['config']['method']} checkpoint has no momentum encoder")
        backbone, projector = (model.target[0], model.target[1]) if which == "momentum" else (model.backbone,
                                                                                              model.projector)
        enc = backbone if space == "backbone" else nn.Sequential(backbone, projector)
        cfg = obj["config"]
        desc = {"kind": "ours", "method": cfg["method"], "arch": cfg["arch"], "network": which or "online"}
        return enc.eval(), desc
    if space != "backbone":
        raise UsageError(f"{flag} {path}: foreign weights have no projector of ours; use --space backbone")
    try:
        sd = _state_dict(obj)
    except UsageError as e:
        raise UsageError(f"{flag} {path}: {e}")
    mapped = map_resnet_keys(sd)
    if not mapped:
        raise UsageError(f"{flag} {path}: no ResNet weights found (found {_found(sd)})")
    info = infer_resnet(mapped)
    if info["arch"] is None:
        raise UsageError(f"{flag} {path}: holds {holds(info)}, a depth we do not build (resnet10/18/34/50)")
    if (arch or info["arch"]) != info["arch"] or (small_stem if small_stem is not None else info["small_stem"]) \
            != info["small_stem"]:
        raise UsageError(f"{flag} {path}: holds {holds(info)}; drop --arch / --small-stem (read from the weights)")
    from models.backbones import build_backbone
    backbone, _ = build_backbone(info["arch"], info["small_stem"], stem_stride, width=info["width"])
    ours = backbone.state_dict()
    missing = sorted(k for k in set(ours) - set(mapped) if not k.endswith("num_batches_tracked"))
    shapes = [k for k, v in mapped.items() if k in ours and v.shape != ours[k].shape]
    if missing or shapes:
        raise UsageError(f"{flag} {path}: holds {holds(info)}, but "
                         + (f"{len(missing)} of its weights are missing, e.g. {missing[0]}" if missing else
                            f"{shapes[0]} has shape {tuple(mapped[shapes[0]].shape)}, not "
                            f"{tuple(ours[shapes[0]].shape)}"))
    backbone.load_state_dict(mapped, strict=False)
    return backbone.eval(), {"kind": "resnet state dict", "arch": info["arch"], "width": info["width"],
                             "small_stem": info["small_stem"], "keys": len(mapped)}
