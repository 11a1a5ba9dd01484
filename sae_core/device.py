"""The one device and dtype policy (the README's table: Device and dtype).

fp32 master weights and optimizer state everywhere. Matrix products in bf16 autocast on
CUDA GPUs that support bf16; fp32 on CPU (bf16 matmuls are not faster than fp32 on this
AVX-512/AMX CPU for these shapes, and fp32 keeps the CPU tests exact).
"""

from __future__ import annotations

import contextlib
import os

import torch

from sae_core.errors import UserError


def resolve_device(name: str) -> torch.device:
    """"auto" -> the first CUDA device if any, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"device {name!r} is not a torch device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} asked for, but torch sees "
                        f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def autocast_dtype(policy: str, device: torch.device) -> torch.dtype | None:
    """The dtype the matrix products run in, or None for plain fp32."""
    if policy == "off":
        return None
    if policy == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        with torch.cuda.device(device):  # the chosen GPU, not the current one
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
    return None


def matmul_autocast(device: torch.device, mm_dtype: torch.dtype | None
                    ) -> contextlib.AbstractContextManager[object]:
    """Run the matrix products inside in mm_dtype (bf16 autocast), or as they are (None)."""
    if mm_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=mm_dtype)


def memory_bytes(device: torch.device) -> int:
    """All the memory of `device`: the GPU's, or this machine's RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
