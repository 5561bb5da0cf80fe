"""--compile and --compile-augment compile the whole step on the CPU (the forward with its loss, their backward,
the optimizer's update, the augmentation) with no graph break and no recompile once warm, read from dynamo's
counters: graph_break, unimplemented (where a data-dependent break, a branch on a tensor, is counted) and resumes
(the code after any break) all stay empty. The backend is aot_eager (forward and
backward traced, no code generated): breaks and recompiles are dynamo's, whatever backend then lowers the graphs
(inductor on a GPU)."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import flags
from engine.step import build_step
from extensions import step_extensions
from loaders import build_loader
from loaders.augment import RECIPES
from models.methods import METHODS, build_model_from_config
from tests.test_device_check import B, N, source, train_args

BREAKS = ("graph_break", "unimplemented", "resumes")


def breaks() -> dict:
    return {k: dict(counters[k]) for k in BREAKS if counters[k]}


def compiled_step(method, optimizer, augment=True, variant="bsim+sepp"):
    """train.py's step for `method` (with BSIM and SePP) under --compile (and --compile-augment), aot_eager, and a
    callable that runs the global iterations `its` through it, from the start of `epoch`."""
    torch._dynamo.reset()
    counters.clear()
    extra = ["--compile", "--optimizer", optimizer] + (["--compile-augment"] if augment else [])
    args = train_args(method, variant, "bf16", extra=extra)
    model = build_model_from_config(vars(args)).to(memory_format=torch.channels_last)
    step = build_step(args, model, steps_per_epoch=4, hooks=step_extensions(args, model), compile_backend="aot_eager")
    opts = flags.loader_options(args, B, compile_augment="aot_eager" if augment else False)
    ld = build_loader(opts, source(), RECIPES[METHODS[method].recipe], torch.device("cpu"))
    partner = torch.arange(N).roll(1)   # SePP pairs distinct samples (never a sample with itself)

    def steps(epoch, its):
        ld.set_epoch(epoch)
        for it, b in zip(its, ld):
            b.pos = partner[b.index] if args.sepp else None
            loss, _ = step(b, it)
            assert torch.isfinite(loss)
    return step, steps


# between them: concatenated views and one by one, a predictor, a target network, both view recipes, SGD and LARS
@pytest.mark.parametrize("method, optimizer", [("simclr", "sgd"), ("byol", "lars")])
def test_the_whole_step_compiles_without_graph_breaks(method, optimizer):
    step, steps = compiled_step(method, optimizer)
    assert step.model._compiled_call_impl is not None               # forward + loss: one compiled call
    assert "_torchdynamo_orig_callable" in dir(step.opt.step)       # the optimizer's update: compiled
    steps(0, [0, 1])
    warm = dict(counters["frames"])
    assert breaks() == {}, breaks()
    assert warm["total"] == warm["ok"] == counters["stats"]["unique_graphs"]
    # the forward (views with and without mixtures), the augmentation's recipes, the update (before and after its
    # state exists): a graph each, and no more (a recompile per learning rate would add one per step)
    assert warm["total"] <= 2 + len(set(RECIPES[METHODS[method].recipe])) + 2, warm
    steps(1, [2, 3])   # warm: a new epoch, new batches and learning rates, no recompile
    assert dict(counters["frames"]) == warm and breaks() == {}


def test_a_branch_on_a_tensor_in_the_loss_is_seen_as_a_break(monkeypatch):
    """A data-dependent break planted in the loss (a Python `if` on the loss tensor): counted under unimplemented,
    with the code after it under resumes (torch 2.14 counts it under graph_break as well; which counters such a
    break reaches depends on the version, so the check reads all three)."""
    import models.methods.simclr as simclr
    real = simclr.info_nce

    def planted(q, k, pos, t, exclude=None):
        loss = real(q, k, pos, t, exclude)
        return loss if loss < 1e9 else loss * 0
    monkeypatch.setattr(simclr, "info_nce", planted)
    _, steps = compiled_step("simclr", "sgd", augment=False, variant="plain")
    steps(0, [0])
    assert counters["unimplemented"] and counters["resumes"], breaks()


def test_a_compiled_update_reads_its_learning_rates_from_tensors_across_a_resume():
    """The schedule's lr is filled into the same tensors every step (a new float would be a new constant to
    dynamo: a recompile per step), and a checkpoint of either kind resumes into either kind of step."""
    import numpy as np

    from engine.optim import lr_as_tensors
    from engine.step import Step

    class Model(torch.nn.Linear):
        def forward(self, batch):
            return {"loss": super().forward(torch.ones(3, 4)).square().mean()}

    def step_of(compiled):
        model = Model(4, 2)
        s = Step(model, torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9), lr=np.array([0.1, 0.2]))
        if compiled:   # as compile_update holds them (without compiling: the tensors are what is checked)
            lr_as_tensors(s.opt, "cpu")
        return s
    compiled, eager = step_of(True), step_of(False)
    held = compiled.opt.param_groups[0]["lr"]
    for it in (0, 1):
        compiled({}, it)
        eager({}, it)
    assert compiled.opt.param_groups[0]["lr"] is held and held.item() == pytest.approx(0.2)
    assert eager.opt.param_groups[0]["lr"] == pytest.approx(0.2)
    saved_compiled, saved_eager = compiled.state_dict(), eager.state_dict()
    compiled.load_state_dict(saved_eager)
    eager.load_state_dict(saved_compiled)
    assert isinstance(compiled.opt.param_groups[0]["lr"], torch.Tensor)
    assert type(eager.opt.param_groups[0]["lr"]) is float
