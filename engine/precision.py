"""A run's numeric precision: the autocast dtype, the GradScaler that fp16 needs, and the default where --amp
is not given: bf16 on GPUs, and on CPUs that compute in bf16 natively (AVX512-BF16 or AMX: 1.5-1.7x the fp32
step on the 2-core development machine, docs/BENCHMARKS.md); fp32 on other CPUs, where bf16 is emulated."""
from __future__ import annotations

import functools

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's native-bf16 features named in /proc/cpuinfo (Linux; elsewhere none: fp32 stays the default)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return tuple(x for x in BF16_CPU_FLAGS if x in have)
    except OSError:
        pass
    return ()


def default_amp(device_type: str) -> tuple[str, str]:
    """-> (bf16 | off, why) for a run that did not choose."""
    if device_type == "cuda":
        return "bf16", "the GPU default"
    flags = cpu_bf16_flags()
    if flags:
        return "bf16", f"this CPU computes bf16 natively ({', '.join(flags)})"
    return "off", "fp32: this CPU has no native bf16 (no avx512_bf16 or amx_bf16)"


def amp_dtype(amp: str | None) -> torch.dtype | None:
    return AMP_DTYPES.get(amp or "off")


def grad_scaler(device_type: str, amp: str | None) -> torch.amp.GradScaler:
    """fp16 needs loss scaling (small gradients underflow in fp16); bf16 and fp32 do not (a disabled scaler)."""
    return torch.amp.GradScaler(device_type, enabled=amp == "fp16")


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict | None) -> bool:
    """Restore a saved GradScaler state. A checkpoint saved without fp16 holds an empty one: the scaler then
    starts afresh (its first steps find the scale again). -> whether a state was restored."""
    if not scaler.is_enabled() or not state:
        return False
    scaler.load_state_dict(state)
    return True
