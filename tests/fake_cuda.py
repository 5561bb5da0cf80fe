"""A fake CUDA device for checking GPU code on a machine without one (tests/test_device_check.py).

    with fake_cuda() as mode:
        model = to_fake_cuda(build_method(...), mode)       # parameters and buffers: fake tensors on cuda:0
        batch = ...                                          # made inside the mode, on device "cuda"
        with strict():                                       # fails on a host tensor, a dtype clash, a sync
            step(batch, 0)

fake_cuda: torch's FakeTensorMode (shapes, dtypes, devices and strides without data: meta kernels), with autocast
and the GradScaler told that CUDA is there, so that they take their GPU paths. Devices are named with their
index (cuda:0), as train.py names them: a bare "cuda" would make torch ask the missing driver which is current.
strict: a dispatch mode on top that turns what a real GPU step would trip on into a DeviceCheckError:
  - host:  an op given tensors on both the host and the device (0-dim host tensors are scalars: allowed),
           and any device-to-host copy;
  - sync:  reading a device value on the host (.item(), bool(), int(), a Python `if` on a tensor, .tolist(),
           nonzero and boolean indexing), formatting a device tensor (str, repr, an f-string, a log line: its
           values are copied to the host), a blocking host-to-device copy, a non_blocking one from pageable
           memory (CUDA copies it synchronously: only pinned memory is copied without waiting; fake tensors
           are pinned by Tensor.pin_memory, as a DataLoader's pinning thread does), torch.cuda.synchronize;
  - dtype: a matrix product or convolution given floating tensors of different dtypes (cuBLAS/cuDNN refuse
           them; the meta kernels check convolution but not addmm).
A failure is raised where it happens and kept (strict's `caught`): one swallowed on the way (logging catches
what a log line raises) is raised when strict ends. Inside `products()`, strict also records the output dtype of
every matrix product and convolution, and whether a layer (nn.Linear, nn.Conv*) ran it: the precision check.
The autograd engine cannot run a backward on fake CUDA tensors without a GPU (pytorch#92627: it initialises
the device), so inside fake_cuda, Tensor.backward gives every leaf the loss reaches a fake gradient of its
shape instead: what follows the backward (GradScaler, optimizer, momentum update, guard) runs as on a GPU.
"""
from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_consecutive,
            aten.unique_dim, aten.repeat_interleave}
MATMUL_OPS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.addbmm, aten.mv, aten.addmv, aten.dot,
              aten.convolution, aten._convolution, aten.convolution_backward}


# The fused SGD kernel (torch.optim.SGD(fused=True), what build_optimizer picks on a GPU) has no meta kernel in
# torch 2.14. It updates its tensor lists in place and returns nothing: a meta kernel that does nothing gives
# fake tensors what the real kernel gives them (their shapes, dtypes and devices do not change).
_META = torch.library.Library("aten", "IMPL")
for _overload in ("", ".tensor_lr"):
    _META.impl(f"_fused_sgd_{_overload}", lambda *args, **kwargs: None, "Meta")


LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_MODULES: list[torch.nn.Module] = []   # the modules whose forward is running, innermost last (inside strict)


class DeviceCheckError(AssertionError):
    def __init__(self, kind: str, what: str):
        super().__init__(f"{kind}: {what}")
        self.kind = kind


def _tensors(args, kwargs):
    flat, _ = torch.utils._pytree.tree_flatten((args, kwargs))
    return [t for t in flat if isinstance(t, torch.Tensor)]


class Strict(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.caught: list[DeviceCheckError] = []
        self.products: list[tuple[str, bool, torch.dtype]] | None = None   # (op, run by a layer, output dtype)

    def fail(self, kind: str, what: str):
        self.caught.append(DeviceCheckError(kind, what))
        raise self.caught[-1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        name = str(func)
        if packet in SYNC_OPS:
            self.fail("sync", f"{name} reads a device value on the host (.item(), bool(), an `if` on a tensor, "
                              "nonzero, boolean indexing)")
        ts = _tensors(args, kwargs)
        if packet in (aten._to_copy, aten.copy_):
            self._check_copy(packet, name, args, kwargs)
        else:
            kinds = {t.device.type for t in ts if t.dim() > 0}
            if "cpu" in kinds and "cuda" in kinds:
                shapes = [(tuple(t.shape), t.device.type) for t in ts]
                self.fail("host", f"{name} given tensors on the host and on the device: {shapes}")
        if packet in MATMUL_OPS:
            dtypes = {t.dtype for t in ts if t.is_floating_point() and t.dim() > 0}
            if len(dtypes) > 1:
                self.fail("dtype", f"{name} given {sorted(map(str, dtypes))}")
        out = func(*args, **kwargs)
        if self.products is not None and packet in MATMUL_OPS and packet is not aten.convolution_backward:
            self.products.append((name, bool(_MODULES) and isinstance(_MODULES[-1], LAYERS), out.dtype))
        return out

    def _check_copy(self, packet, name, args, kwargs):
        src = args[1] if packet is aten.copy_ else args[0]
        dst = (args[0].device if packet is aten.copy_
               else torch.device(kwargs["device"]) if kwargs.get("device") is not None else src.device)
        blocking = not (args[2] if packet is aten.copy_ and len(args) > 2 else kwargs.get("non_blocking", False))
        if src.device.type == "cpu" and dst.type == "cuda":
            if blocking:
                self.fail("sync", f"{name}: a blocking host-to-device copy of {tuple(src.shape)} (the host waits "
                                  "for the device)")
            if not getattr(src, "fake_pinned", False):
                self.fail("sync", f"{name}: a non_blocking copy of {tuple(src.shape)} from pageable memory (CUDA "
                                  "copies it synchronously; pin it: DataLoader(pin_memory=True), Tensor.pin_memory)")
        if src.device.type == "cuda" and dst.type == "cpu":
            self.fail("host", f"{name}: a device-to-host copy of {tuple(src.shape)} (a sync)")


def _no_sync(*_, **__):
    raise DeviceCheckError("sync", "torch.cuda.synchronize() in the step")


def _fake_backward(mode):
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        seen, stack = set(), [self.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            leaf = getattr(fn, "variable", None)   # AccumulateGrad: a leaf that takes a gradient
            if leaf is not None and leaf.grad is None:
                with torch.no_grad():
                    leaf.grad = torch.empty_strided(leaf.shape, leaf.stride(), dtype=leaf.dtype, device=leaf.device)
            stack.extend(f for f, _ in fn.next_functions)
    return backward


@contextlib.contextmanager
def fake_cuda():
    """FakeTensorMode, autocast and the GradScaler on their CUDA paths, Tensor.backward replaced as the module
    says, torch.cuda.synchronize failing."""
    import torch.cuda.amp.common
    mp = pytest_monkeypatch()
    # what autocast and the GradScaler ask before taking their CUDA paths (torch.cuda.is_available itself stays
    # False: with it True, torch would initialise the missing driver)
    mp.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    mp.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    mp.setattr(torch.cuda, "synchronize", _no_sync)
    mp.setattr(torch.cuda, "mem_get_info", lambda *a: (80 * 2**30, 80 * 2**30))   # the device loader asks
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    mp.setattr(torch.Tensor, "backward", _fake_backward(mode))
    mp.setattr(torch.Tensor, "pin_memory", _pin_memory)   # FakeTensorMode has no _pin_memory
    mp.setattr(torch.Tensor, "is_pinned", lambda self, device=None: getattr(self, "fake_pinned", False))
    try:
        with mode:
            yield mode
    finally:
        mp.undo()


def _pin_memory(self, device=None):
    out = self.clone()
    out.fake_pinned = True   # FakeTensorMode cannot pin: the mark is what strict reads
    return out


@contextlib.contextmanager
def strict():
    """The checks above while it lasts. -> the Strict mode (its `caught`, and `products` for precision)."""
    mode = Strict()
    mp = pytest_monkeypatch()
    for how in ("__format__", "__repr__", "__str__"):
        mp.setattr(torch.Tensor, how, _host_read(mode, how, getattr(torch.Tensor, how)))
    try:
        with _modules_tracked(), mode:
            yield mode
    finally:
        mp.undo()
    if mode.caught:   # raised inside, but swallowed on the way out (logging's handlers catch what they raise)
        raise mode.caught[0]


def _host_read(mode: Strict, how: str, original):
    def read(self, *args):
        if self.device.type == "cuda":
            mode.fail("sync", f"{how} of a device tensor {tuple(self.shape)}: its values are copied to the host")
        return original(self, *args)
    return read


@contextlib.contextmanager
def _modules_tracked():
    """_MODULES holds the modules whose forward runs, innermost last (global forward hooks)."""
    def enter(m, _):
        _MODULES.append(m)

    def leave(m, _, __):   # returns None: a forward hook's value would replace the output
        _MODULES.pop()
    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(enter),
             torch.nn.modules.module.register_module_forward_hook(leave)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        _MODULES.clear()


@contextlib.contextmanager
def products(mode: Strict):
    """Record (op, run by a layer, output dtype) of every matrix product and convolution meanwhile. -> the list."""
    mode.products = []
    try:
        yield mode.products
    finally:
        mode.products = None


def to_fake_cuda(module: torch.nn.Module, mode: FakeTensorMode) -> torch.nn.Module:
    """Every parameter and buffer of a (real, CPU) module replaced by a fake tensor on cuda:0 of the same shape,
    dtype and strides (channels_last stays channels_last). Module.to() cannot do it under FakeTensorMode."""
    with mode:
        for m in module.modules():
            for k, p in list(m._parameters.items()):
                if p is not None:
                    f = torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device="cuda:0")
                    m._parameters[k] = torch.nn.Parameter(f, requires_grad=p.requires_grad)
            for k, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[k] = torch.empty_strided(b.shape, b.stride(), dtype=b.dtype, device="cuda:0")
    return module


def pytest_monkeypatch():
    from _pytest.monkeypatch import MonkeyPatch
    return MonkeyPatch()
