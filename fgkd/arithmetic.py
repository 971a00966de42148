"""What decides a run's floating-point results besides its config, data and seed, recorded in model.pt.

On CPU, 1 against 2 threads, and oneDNN's kernels capped at AVX2 (ONEDNN_MAX_CPU_ISA) against
the machine's own (AMX/AVX512), each give other trained weights; so may another CPU. On CUDA: the GPU, and
whether TF32 is allowed (torch's default lets cuDNN convolutions use it even with amp off). And the torch build.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# The CPU's vector-instruction flags that decide which kernels oneDNN, MKL and ATen pick, best first.
VECTOR_FLAGS = ("amx_tile", "avx512_fp16", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "avx")
# Environment variables that cap or pin those choices (or the float arithmetic) for the libraries in torch.
LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "ATEN_CPU_CAPABILITY", "MKL_CBWR",
          "MKL_ENABLE_INSTRUCTIONS")
UNRECORDED = {"device": "unrecorded"}  # steps run by an fgkd that did not record them


def record(device: torch.device) -> dict:
    """This process's arithmetic."""
    found = {"torch": str(torch.__version__), "device": device.type, "threads": torch.get_num_threads(),
             "cpu": _cpu_info("model name") or "unknown", "cpu_capability": torch.backends.cpu.get_cpu_capability(),
             "cpu_flags": [f for f in VECTOR_FLAGS if f in _cpu_info("flags").split()],
             "limits": {name: os.environ[name] for name in LIMITS if os.environ.get(name)}}
    if device.type == "cuda":
        found.update(gpu=torch.cuda.get_device_name(device), tf32_convolutions=torch.backends.cudnn.allow_tf32,
                     tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return found


def describe(found: dict) -> str:
    """One record as the reports print it: what differs between two records that give other numbers."""
    if found.get("device") not in ("cpu", "cuda"):
        return "not recorded (an earlier fgkd)"
    limits = "".join(f"; {name}={value}" for name, value in found.get("limits", {}).items())
    if found["device"] == "cuda":
        tf32 = [kind for kind in ("convolutions", "matmul") if found.get(f"tf32_{kind}")]
        return (f"CUDA {found['gpu']} (TF32 {'and '.join(tf32) if tf32 else 'off'}{limits}), "
                f"torch {found['torch']}")
    flags = found.get("cpu_flags")  # the best one first; records of the first version lack them: left out
    best = "" if flags is None else f"{flags[0] if flags else 'no vector flags'}, "
    threads = f"{found['threads']} thread{'s' if found['threads'] != 1 else ''}"
    return f"CPU {found['cpu']} ({best}torch {found['cpu_capability']}{limits}), {threads}, torch {found['torch']}"


def _cpu_info(key: str) -> str:
    """The first value of ``key`` in /proc/cpuinfo ('' where there is none, e.g. not Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    values = [line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == key]
    return values[0] if values else ""
