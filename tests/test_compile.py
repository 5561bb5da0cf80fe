"""--compile and --compile-augment compile on the CPU with no graph break and no recompile once warm, read from
dynamo's counters. The backend is aot_eager (forward and backward traced, no code generated): graph breaks and
recompiles are dynamo's, whatever backend then lowers the graphs (inductor on a GPU)."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import flags
from engine.step import build_step
from loaders import build_loader
from loaders.augment import RECIPES
from models.methods import METHODS, build_model_from_config
from tests.test_device_check import B, N, source, train_args


@pytest.mark.parametrize("method", ["simclr", "byol"])   # between them: concatenated views, a predictor, a
def test_step_and_augmentation_compile_without_graph_breaks(method):   # target network, two view recipes
    torch._dynamo.reset()
    counters.clear()
    args = train_args(method, "bsim+sepp", "bf16", extra=["--compile", "--compile-augment"])
    model = build_model_from_config(vars(args)).to(memory_format=torch.channels_last)
    step = build_step(args, model, steps_per_epoch=4, compile_backend="aot_eager")
    opts = flags.loader_options(args, B, compile_augment="aot_eager")
    ld = build_loader(opts, source(), RECIPES[METHODS[method].recipe], torch.device("cpu"))
    partner = torch.arange(N).roll(1)   # SePP pairs distinct samples (never a sample with itself)

    def steps(first, n):
        ld.set_epoch(first)
        for it, b in zip(range(n), ld):
            b.pos = partner[b.index]
            loss, _ = step(b, it)
            assert torch.isfinite(loss)

    steps(0, 3)
    warm = dict(counters["frames"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert warm["total"] == warm["ok"] == counters["stats"]["unique_graphs"]
    # one graph per compiled callable, two for those that see two batch shapes (the views and the mixtures)
    callables = 1 + len(set(RECIPES[METHODS[method].recipe])) + sum(
        len(c) if isinstance(c, torch.nn.ModuleList) else 1 for c in model.children())
    assert warm["total"] <= 2 * callables, (warm, callables)
    steps(1, 3)   # warm: a new epoch, new batches, no recompile
    assert dict(counters["frames"]) == warm and not counters["graph_break"]
