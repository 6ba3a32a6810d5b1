"""What the run is running on: device names, peak memory, and peak FLOP/s for utilization."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by device-name substring.
# MFU is reported against these; DESIGN.md notes ~790 TFLOP/s measured for large matmuls on H100 SXM.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "RTX 4090": 165.0,
}


def device_name(device: torch.device, world_size: int = 1) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name} x{world_size}" if world_size > 1 else name


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo ("" where there is none)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return ""
    return next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")), "")


def peak_tflops(device: torch.device) -> float | None:
    """The bf16 dense peak of a CUDA device, or None when unknown (CPU, unlisted GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops
    return None


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start peak_memory_mib's count anew (CUDA; on CPU the process's peak cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
