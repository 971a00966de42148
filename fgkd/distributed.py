"""Data-parallel training under torchrun: which process this is, and the few collectives the loop needs.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op for one process. Under torchrun,
also with one process, the run is data-parallel: a process group, DistributedDataParallel, synchronised batch norm
(with one process they compute what a plain run does, and a one-GPU machine can check the nccl path).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn

from .errors import LAUNCHED_ERRORS, FgkdError


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (its rendezvous variables are set), whatever the process count

    @property
    def main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1 or self.launched


def from_environment() -> Processes:
    """The variables torchrun sets for each process it starts."""
    return Processes(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)), "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)


@contextmanager
def process_group(processes: Processes, device: torch.device):
    """nccl between GPUs, gloo between CPU processes; torn down on the way out, also on errors."""
    if not processes.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=processes.rank, world_size=processes.world,
                            device_id=device if device.type == "cuda" else None)
    if processes.main:
        logging.getLogger("fgkd").info("data-parallel: %d process(es), %s backend, on %s", processes.world, backend,
                                       device)
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_sum(values: list[float], processes: Processes, device: torch.device) -> list[float]:
    """Element-wise sum over the processes (float64, so that counts stay exact)."""
    if not processes.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_buffers(module: torch.nn.Module, processes: Processes) -> None:
    """Batch-norm running statistics of the main process to all: without SyncBatchNorm each process
    updates its own from its own images, and what is evaluated and saved must be one model."""
    if processes.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


class ProcessSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose batch statistics span the images of all processes, in plain tensor ops and
    differentiable collectives: torch's SyncBatchNorm has CUDA kernels only, and without it a CPU
    (gloo) data-parallel run would not train like one process with the whole batch."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1, *[1] * (input.dim() - 2)]
        # bf16 under autocast: statistics and output in float32 (rounded once at the end), as torch's batch norm
        values = input.to(torch.promote_types(input.dtype, torch.float32))
        count = _sum(torch.tensor(float(input.numel() // input.shape[1]), device=input.device))
        mean = _sum(values.sum(dims)) / count
        centred = values - mean.view(shape)
        var = _sum((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * count / (count - 1), factor)
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)  # then rounded once to the input's type


class ProcessSyncBatchNormAct(ProcessSyncBatchNorm):
    """ProcessSyncBatchNorm followed by the dropout and activation of the timm layer it replaces (BatchNormAct2d, as
    in EfficientNet): the norm alone would train a network without those activations."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm):
        super().__init__(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
        self.drop, self.act = layer.drop, layer.act

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(input)))


def _sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over the processes; its gradient is the sum of the processes' gradients."""
    return funcol.wait_tensor(funcol.all_reduce(tensor, "sum", dist.group.WORLD))


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every batch-norm layer made to normalise over all processes' images: on GPUs torch's SyncBatchNorm through
    timm's conversion, which keeps the activation of timm's fused norm + activation layers (torch's own drops it)."""
    from timm.layers import BatchNormAct2d, convert_sync_batchnorm

    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, BatchNormAct2d)
    for name, layer in module.named_modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and type(layer) not in plain:
            raise FgkdError(f"sync_batchnorm: the network's layer {name} is a {type(layer).__name__}, which fgkd "
                            "cannot make synchronous; set train.sync_batchnorm: false")
    if device.type == "cuda":
        return convert_sync_batchnorm(module)
    return _process_sync_batchnorm(module, BatchNormAct2d)


def _process_sync_batchnorm(module: nn.Module, fused: type) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        synced = (ProcessSyncBatchNormAct(module) if isinstance(module, fused) else
                  ProcessSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                       module.track_running_stats))
        synced.load_state_dict(module.state_dict())
        return synced.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _process_sync_batchnorm(child, fused))
    return module


def launch(count: int, argv: list[str]) -> NoReturn:
    """Run ``fgkd <argv>`` in ``count`` processes on this node through torchrun, in this process: SLURM's signals
    reach torchrun, which passes SIGTERM and SIGUSR1 (the warning before the time limit) on to its workers; each then
    saves the mid-epoch checkpoint, and torchrun returns only after they have.

    An FgkdError (bad input, a stop by a signal) is the same in every process, and torchrun stops the others when the
    first fails, maybe before they print it: each process leaves it in a file, and the launcher prints it once, in
    one line (the first written first), instead of torchrun's traceback and report. When the first process to fail
    failed otherwise, the launcher shows those."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if count > 1:  # what torchrun sets, less its four lines of warning about it
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="fgkd-launch-") as scratch:
        # torchrun's log folder in it too, or each run leaves a torchelastic_* folder in the temporary directory
        args = parse_args(["--standalone", f"--nproc-per-node={count}", f"--log-dir={Path(scratch, 'torchrun')}",
                           "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "-m", "fgkd", *argv])
        errors = Path(scratch, "errors")
        errors.mkdir()
        os.environ[LAUNCHED_ERRORS] = str(errors)
        # its log lines on a failure say what the one line, or else the ChildFailedError's report, says
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
        try:
            run(args)
        except (ChildFailedError, SignalException) as failure:
            lines = sorted(errors.iterdir(), key=lambda path: path.stat().st_mtime_ns)
            # a process that failed first without an FgkdError (the others then stop, by torchrun's signal) is a bug
            first = failure.get_first_failure()[0] if isinstance(failure, ChildFailedError) else None
            if not lines or (first is not None and not (errors / str(first)).exists()):
                raise
            raise FgkdError("; ".join(dict.fromkeys(path.read_text(encoding="utf-8") for path in lines))) from None
        finally:
            del os.environ[LAUNCHED_ERRORS]
    sys.exit(0)
