"""One training engine for every stage: teacher, orthogonal student k, aux-KD student.

A plain loop in the style of torchvision's classification reference. Each epoch reseeds every
random generator from (seed, stage, epoch), and a checkpoint is written after it, so a killed
run resumes from the last finished epoch and ends with the very weights of an uninterrupted one.
Under torchrun the same loop runs data-parallel (DistributedDataParallel): ``batch_size`` is per
process, and N processes step through the images of one process with batch N x ``batch_size``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import arithmetic, distributed
from .atomic import atomic_path, refuse_to_overwrite_inputs, require_utf8_name, write_parquet
from .config import DEVICES, TrainConfig, config_hash
from .data.dataset import derived_seed, load_split, make_loader, make_train_loader
from .data.manifest import class_names, data_digest, read_manifest
from .data.recipes import ImageSizes
from .distributed import Processes
from .errors import DataError, FgkdError, some
from .metrics import topk_hits
from .methods import METHODS, FrozenNetworks
from .modelfile import (MODEL_FORMAT, content_digest, describe_inputs, file_digest, input_sizes, load_model,
                        non_finite_weights)
from .models import FGVCNet, imagenet_weights_file

log = logging.getLogger("fgkd")


def stage_name(stage: str, index: int | None) -> str:
    return f"student_{index}" if stage == "student" else stage


def select_device(config: TrainConfig, processes: Processes = Processes()) -> torch.device:
    """The device to run on; one that is not a device, or not on this machine, is one line (not CUDA's traceback)."""
    if config.device == "auto":
        return torch.device(f"cuda:{processes.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(config.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise FgkdError(f"device {config.device!r} is not one of {', '.join(DEVICES)}")
    if device.type == "cuda" and device.index is None:
        # An index, as torch.cuda.set_device, the nccl process group and DDP's device_ids need one (plain "cuda"
        # failed under torchrun with set_device's ValueError); under torchrun each process its own GPU, as auto.
        device = torch.device("cuda", processes.local_rank)
    visible = torch.cuda.device_count()
    if device.type == "cuda" and device.index >= visible:
        found = f"only cuda:0..cuda:{visible - 1} are visible" if visible else "no CUDA GPU is visible"
        raise FgkdError(f"device {config.device!r}: {found} on this machine; use device auto or cpu")
    return device


def _diverged(problem: str, kept: Path | None) -> FgkdError:
    """Training went non-finite. Runs are deterministic: resuming with the same settings diverges again."""
    if kept is None:
        return FgkdError(f"{problem}: training diverged before any checkpoint was written. Lower the learning "
                         "rates (lr, backbone_lr) or check the data, then rerun")
    return FgkdError(f"{problem}: training diverged. The last checkpoint, {kept}, is kept and finite, but a rerun "
                     "with these settings would resume from it and diverge again: lower the learning rates (lr, "
                     "backbone_lr; the stage then starts over) or check the data")


def _check_earlier_inputs(path: str | Path, meta: dict, sizes: ImageSizes) -> None:
    """A frozen network sees the student's input images: trained on others, its attention maps and logits (the OR
    and KD targets) would be silently wrong."""
    if input_sizes(meta) != sizes:
        raise FgkdError(f"{path}: trained on {describe_inputs(input_sizes(meta))}, this stage on "
                        f"{describe_inputs(sizes)}; an earlier network sees this stage's images, so train every stage "
                        "of a run with the same preprocessing, resize and crop")


def start_weights(config: TrainConfig) -> dict:
    """Where the network's first weights come from, with the sha256 of that file: part of a checkpoint's identity
    (a run never resumes from a checkpoint that started from other weights) and of model.pt's metadata."""
    files = config.weight_files()
    if config.pretrained == "imagenet":
        source, path = "imagenet", imagenet_weights_file(config.backbone)
    elif files:
        source, path = next(iter(files.items()))  # one at most: check_values refuses both
    else:
        return {"source": "none", "file": None, "sha256": None}
    return {"source": source, "file": str(path), "sha256": file_digest(path)}


def initialise_from(model: FGVCNet, path: str | Path, config: TrainConfig, num_classes: int) -> None:
    """Transfer: the trunk of a fgkd model.pt (its best-on-val weights), and its main head when the classes and the
    head fit; otherwise the head keeps its fresh initialisation (the log says why). Aux heads are never copied."""
    try:
        source, meta = load_model(path)
    except FgkdError as err:
        raise FgkdError(f"init_from: {err}; init_from takes a model.pt written by `fgkd train` (a torchvision weights "
                        "file goes to pretrained)") from None
    if meta["backbone"] != config.backbone:
        raise FgkdError(f"init_from: {path} is a {meta['backbone']} model, this stage trains a {config.backbone}; "
                        "give a model of the same backbone")
    theirs_trunk, ours_trunk = source.trunk.state_dict(), model.trunk.state_dict()
    shapes = [f"{k} {tuple(v.shape)} (here {tuple(ours_trunk[k].shape)})" for k, v in theirs_trunk.items()
              if k in ours_trunk and v.shape != ours_trunk[k].shape]
    if shapes:  # a ViT's or Swin's position tables are sized for its crop
        raise FgkdError(f"init_from: {path} was trained at crop {meta['crop']}, this stage at {config.crop}, and its "
                        f"trunk's shapes differ ({some(shapes)}); train this stage at crop {meta['crop']}")
    model.trunk.load_state_dict(theirs_trunk)
    theirs = (meta["num_classes"], meta["head"], meta["head_hidden"])
    ours = (num_classes, config.head, config.head_hidden)
    if theirs == ours:
        model.head.load_state_dict(source.head.state_dict())
        log.info("init_from %s: trunk and main head copied", path)
    else:
        log.info("init_from %s: trunk copied; main head re-initialised (%d classes, head %s of %d hidden units there; "
                 "%d classes, head %s of %d here)", path, *theirs, *ours)


def is_best(val_acc: float, best_val: float, has_validation: bool) -> bool:
    """Model selection: the epoch of the highest validation top-1, the first of equal ones; without a validation
    split (val_fraction 0), the last epoch."""
    return not has_validation or val_acc > best_val


def _cosine(base: float, epoch: int, epochs: int) -> float:
    """The official schedule: lr/2 * (cos(pi * epoch / epochs) + 1), set once per epoch."""
    return base / 2 * (math.cos(math.pi * epoch / epochs) + 1)


# The values of the options that switch a speed-up (TrainConfig.amp, channels_last, compile), as implemented below.
AMP_MODES = ("auto", "bf16", "off")  # auto: bf16 autocast on CUDA
CHANNELS_LAST_MODES = ("auto", "on", "off")  # auto: on CUDA
COMPILE_MODES = ("off", "on")


def _autocast(device: torch.device, config: TrainConfig):
    enabled = config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _memory_format(device: torch.device, config: TrainConfig):
    on = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
    return torch.channels_last if on else torch.contiguous_format


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader, device: torch.device, config: TrainConfig) -> dict[str, np.ndarray]:
    """Logits, labels and image ids of a whole loader (main head)."""
    model.eval()
    logits, labels, ids = [], [], []
    for images, targets, image_ids in loader:
        images = images.to(device, non_blocking=True, memory_format=_memory_format(device, config))
        with _autocast(device, config):
            out = model(images)
        out = out[0] if isinstance(out, tuple) else out
        logits.append(out.float().cpu())
        labels.append(targets)
        ids.append(image_ids)
    return {"logits": torch.cat(logits).numpy(), "labels": torch.cat(labels).numpy(), "image_ids": torch.cat(ids).numpy()}


def _val_accuracy(model, val_set, device, config: TrainConfig, processes: Processes) -> float:
    """Top-1 on the validation split (ties against the prediction, as every report), each process scoring its
    share of the images."""
    if not len(val_set):
        return float("nan")
    loader = make_loader(val_set, config.batch_size, config.workers, processes.rank, processes.world)
    result = (evaluate(model, loader, device, config) if len(loader)
              else {"logits": np.zeros((0, 1)), "labels": np.zeros(0, dtype=np.int64)})
    correct, count = distributed.all_sum(
        [float(topk_hits(result["logits"], result["labels"], 1).sum()), float(len(result["labels"]))], processes, device)
    return correct / count


def train(stage: str, data: str | Path, out: str | Path, config: TrainConfig, earlier: list[str | Path] = (),
          index: int | None = None, progress: bool = True, name: str | None = None,
          processes: Processes | None = None) -> Path:
    """Train one stage; writes out/model.pt and out/history.parquet, resuming from out/checkpoint.pt.

    ``name`` (default: teacher, student_k, auxkd) labels the run and, with the seed, seeds it: two runs
    of the same stage under different names (a CE baseline beside the teacher) start differently.
    ``processes`` (default: from torchrun's environment) makes it one of several data-parallel processes.
    """
    if stage not in METHODS:
        raise FgkdError(f"unknown stage {stage!r}; choose one of {', '.join(METHODS)}")
    if stage == "student" and (index is None or index < 1):
        raise FgkdError("a student stage needs --index k >= 1")
    if stage == "student" and len(earlier) != index:
        raise FgkdError(f"student {index} learns against the teacher and students 1..{index - 1}: "
                        f"expected {index} --earlier models, got {len(earlier)}")
    if stage == "auxkd" and not earlier:
        raise FgkdError("auxkd needs at least one --earlier model to imitate")
    if stage == "teacher" and earlier:
        raise FgkdError("the teacher trains with cross-entropy alone; pass no --earlier models")
    refuse_to_overwrite_inputs(Path(out) / "model.pt", earlier)
    config.check()
    processes = processes or distributed.from_environment()
    _check_writable(Path(out))
    device = select_device(config, processes)
    with distributed.process_group(processes, device):
        return _train(stage, data, Path(out), config, earlier, index, progress and processes.main,
                      name or stage_name(stage, index), processes, device)


def _check_writable(out: Path) -> None:
    """A results folder that cannot take the files is refused before any training time is spent."""
    require_utf8_name(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise FgkdError(f"{out}: the results cannot be written there ({err.strerror}); choose a writable folder "
                        "for --out") from None


def _check_images_per_step(model: torch.nn.Module, data, train_set, val_set, config: TrainConfig,
                           processes: Processes) -> None:
    """Batch norm cannot train on one image: a step of one image is refused before any training."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    shared = processes.world if processes.distributed and config.sync_batchnorm else 1  # processes per BN batch
    if config.batch_size * shared < 2:
        raise FgkdError(f"batch_size {config.batch_size}: batch norm cannot train on one image per step; "
                        "use a batch size of 2 or more")
    if min(config.batch_size, len(train_set) // processes.world) * shared < 2:
        raise DataError(f"{data}: {len(train_set)} training image(s) ({len(val_set)} more held out for validation "
                        f"by val_fraction {config.val_fraction}) for {processes.world} process(es): batch norm cannot "
                        "train on one image per step; add training images or lower val_fraction")


def _train(stage, data, out: Path, config: TrainConfig, earlier, index, progress, name, processes: Processes,
           device: torch.device) -> Path:
    sizes = ImageSizes(config.resize, config.crop, config.preprocessing)
    train_set = load_split(data, "train", sizes, config.val_fraction, config.seed)
    val_set = load_split(data, "val", sizes, config.val_fraction, config.seed)
    num_classes = train_set.num_classes

    frozen_models, frozen_meta = [], []
    for path in earlier:
        net, meta = load_model(path, num_classes, device)
        _check_earlier_inputs(path, meta, sizes)
        frozen_models.append(net.to(memory_format=_memory_format(device, config)))
        frozen_meta.append(meta)
    run_hash = config_hash(config, name, [meta["config_hash"] for meta in frozen_meta], processes.world)
    seed = derived_seed(config.seed, zlib.crc32(name.encode()))

    torch.manual_seed(seed)
    model = FGVCNet(config.backbone, num_classes, config.head, config.head_hidden, config.attention_stride,
                    aux_heads=len(earlier) if stage == "auxkd" else 0, pretrained=config.pretrained,
                    image_size=config.crop)
    if config.init_from != "none":
        initialise_from(model, config.init_from, config, num_classes)
    _check_images_per_step(model, data, train_set, val_set, config, processes)
    identity = {"configuration": run_hash, "data": data_digest(data), "earlier": [file_digest(p) for p in earlier],
                "start": start_weights(config)}
    start = identity["start"]
    if processes.main and start["file"]:
        log.info("%s starts from %s weights %s (sha256 %s)", name, start["source"], start["file"], start["sha256"])
    if processes.distributed and config.sync_batchnorm:
        model = distributed.sync_batchnorm(model, device)
    model = model.to(device, memory_format=_memory_format(device, config))
    method = METHODS[stage].from_config(model, FrozenNetworks(frozen_models), config)
    new_ids = {id(p) for p in model.new_parameters()}
    optimizer = torch.optim.SGD(
        [{"params": model.new_parameters(), "lr": config.lr},
         {"params": [p for p in model.parameters() if id(p) not in new_ids], "lr": config.backbone_lr}],
        momentum=config.momentum, weight_decay=config.weight_decay)

    checkpoint_path = out / "checkpoint.pt"
    state = {"epoch": 0, "history": [], "best_val": -1.0, "best_epoch": -1, "best_state": None, "partial": None,
             "arithmetic": []}
    if checkpoint_path.exists():
        state = _resume(checkpoint_path, identity, model, optimizer, state, processes)
    # Every setting the stage's steps ran under: a resume elsewhere adds one (under torchrun, the first process's).
    state.setdefault("arithmetic", [arithmetic.UNRECORDED])  # a checkpoint of an earlier fgkd
    here = arithmetic.record(device)
    if here not in state["arithmetic"]:
        state["arithmetic"].append(here)

    has_checkpoint = state["epoch"] > 0 or state["partial"] is not None  # resumed

    def save(where: str, partial: dict | None = None) -> Path:
        """Write the checkpoint, unless the weights went non-finite: then stop, keeping the last one."""
        nonlocal has_checkpoint
        broken = non_finite_weights(model.state_dict())
        if broken:
            raise _diverged(f"non-finite weights ({some(broken)}) after {where}",
                            checkpoint_path if has_checkpoint else None)
        if processes.main:
            _save_checkpoint(checkpoint_path, identity, model, optimizer, {**state, "partial": partial})
        has_checkpoint = True
        return checkpoint_path

    step = method
    if processes.distributed:
        # Buffers (batch-norm statistics) are made one at the end of each epoch, not before every step.
        step = torch.nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
    if config.compile == "on":
        step = torch.compile(step)
    steps = 0  # optimizer steps of this process: what a resumed run saves
    with StopRequest() as stop:
        context = EpochContext(step, method, optimizer, device, config, processes, stop, save, progress)
        for epoch in range(state["epoch"], config.epochs):
            for group, base in zip(optimizer.param_groups, (config.lr, config.backbone_lr)):
                group["lr"] = _cosine(base, epoch, config.epochs)
            epoch_seed = derived_seed(seed, epoch)
            torch.manual_seed(epoch_seed)
            partial = state.get("partial")
            loader = make_train_loader(train_set, config.batch_size, epoch_seed, config.workers, processes.rank,
                                       processes.world, skip_batches=partial["step"] if partial else 0)
            label = f"{name} {epoch + 1}/{config.epochs}"
            row, epoch_steps = train_epoch(context, loader, label, checkpoint_path if has_checkpoint else None, partial)
            steps += epoch_steps
            state["partial"] = None
            distributed.broadcast_buffers(model, processes)
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                   "backbone_lr": optimizer.param_groups[1]["lr"], **row}
            row["val_acc"] = _val_accuracy(model, val_set, device, config, processes)
            state["history"].append(row)
            if is_best(row["val_acc"], state["best_val"], has_validation=len(val_set) > 0):
                state["best_val"], state["best_epoch"] = row["val_acc"], epoch + 1
                state["best_state"] = _plain_state(model)
            state["epoch"] = epoch + 1
            if processes.main:
                log.info("%s epoch %d/%d %s", name, epoch + 1, config.epochs,
                         " ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch",)))
            save(label)

    if processes.main:
        log.info("%s: done, %d optimizer steps run by this process", name, steps)
        metadata = {
            "backbone": config.backbone, "num_classes": num_classes, "head": config.head,
            "head_hidden": config.head_hidden, "attention_stride": config.attention_stride,
            "aux_heads": len(earlier) if stage == "auxkd" else 0, "stage": name, "config_hash": run_hash,
            "data_digest": identity["data"], "start": identity["start"], "preprocessing": config.preprocessing,
            "resize": config.resize, "crop": config.crop, "best_epoch": state["best_epoch"], "epochs": config.epochs,
            "processes": processes.world, "config": json.dumps(dataclasses.asdict(config), sort_keys=True),
            # For `fgkd classify` and `fgkd export`; a model.pt of an earlier fgkd lacks these three keys.
            "class_names": class_names(read_manifest(data)), "dataset": Path(data).resolve().name,
            "best_val_acc": state["best_val"],
            "arithmetic": state["arithmetic"],  # every setting this stage's steps ran under (resumes may add one)
            # What fgkd verify checks a restored model.pt against: the networks it learnt from, its history.
            "earlier": [{"stage": meta["stage"], "config_hash": meta["config_hash"], "sha256": digest}
                        for meta, digest in zip(frozen_meta, identity["earlier"])],
        }
        history = pd.DataFrame(state["history"])
        history.insert(0, "stage", name)
        write_parquet(history, out / "history.parquet")
        metadata["history_sha256"] = file_digest(out / "history.parquet")
        saved = {"format": MODEL_FORMAT, "metadata": metadata, "state_dict": state["best_state"],
                 "last_state_dict": _plain_state(model)}
        metadata["content_sha256"] = content_digest(saved)
        with atomic_path(out / "model.pt") as tmp:
            torch.save(saved, tmp)
        checkpoint_path.unlink(missing_ok=True)
    return out / "model.pt"


def _plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights, loadable into a plain FGVCNet (SyncBatchNorm keeps BatchNorm's names)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class StopRequest:
    """SIGTERM/SIGUSR1 (SLURM preemption, time limit, scancel --signal) ask the loop to stop after the
    current step; the run then saves a mid-epoch checkpoint and exits, and a rerun resumes exactly."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


@dataclasses.dataclass(frozen=True)
class EpochContext:
    """What every epoch of one stage runs with: built once per stage, so that an epoch's own arguments stand out."""

    step: Callable  # the method, or its DDP / torch.compile wrapper: what a batch is given to
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    config: TrainConfig
    processes: Processes
    stop: StopRequest
    save: Callable[[str, dict], Path] | None  # writes a mid-epoch checkpoint on a stop request; returns its path
    progress: bool = False  # a progress bar


def train_epoch(context: EpochContext, loader, label: str, kept: Path | None = None,
                partial: dict | None = None) -> tuple[dict[str, float], int]:
    """One epoch of ``context.step``. After a mid-epoch checkpoint, ``partial`` carries the finished steps (the
    loader already skips their images) and the sums over all processes (kept by the main process only, so that
    the end-of-epoch all-sum counts them once). ``kept`` is this run's last checkpoint, if any. Returns the epoch's
    row and the number of optimizer steps taken here."""
    step, optimizer, device, config = context.step, context.optimizer, context.device, context.config
    processes, stop = context.processes, context.stop
    context.method.train()
    partial = partial or {"step": 0, "sums": {}, "correct": 0, "seen": 0, "seconds": 0.0}
    keep = processes.main
    sums = dict(partial["sums"]) if keep else dict.fromkeys(partial["sums"], 0.0)
    correct, seen = (partial["correct"], partial["seen"]) if keep else (0, 0)
    start = time.perf_counter() - partial["seconds"]
    taken = 0
    bar = tqdm(loader, desc=label, unit="batch", leave=False, disable=not context.progress)
    for number, (images, labels, _) in enumerate(bar, start=partial["step"] + 1):
        images = images.to(device, non_blocking=True, memory_format=_memory_format(device, config))
        labels = labels.to(device, non_blocking=True)
        with _autocast(device, config):
            output = step(images, labels)
        loss = sum(output.losses.values())
        non_finite, stopping = _agree(not torch.isfinite(loss), bool(stop.received), processes, device)
        if non_finite:
            terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in output.losses.items())
            raise _diverged(f"non-finite loss ({terms}) at {label}, step {number}", kept)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        taken += 1
        batch = len(labels)
        for key, value in {**output.losses, **output.extras, "loss": loss}.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) * batch
        correct += int(topk_hits(output.logits.detach().float().cpu().numpy(), labels.cpu().numpy(), 1).sum())
        seen += batch
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", img_s=f"{seen * processes.world / (time.perf_counter() - start):.0f}")
        if stopping:
            totals = _all_sums(sums, correct, seen, processes, device)
            saved = context.save(f"{label}, step {number}",
                                 {"step": number, **totals, "seconds": time.perf_counter() - start})
            raise FgkdError(f"stopped by {stop.received or 'a signal to another process'} at {label}, step {number}; "
                            f"checkpoint saved to {saved}: rerun the same command to resume")
    seconds = time.perf_counter() - start
    totals = _all_sums(sums, correct, seen, processes, device)
    if totals["seen"] == 0:
        raise FgkdError("the training split is empty; check the manifest and val_fraction")
    return {**{k: v / totals["seen"] for k, v in totals["sums"].items()}, "train_acc": totals["correct"] / totals["seen"],
            "seconds": seconds, "images_per_s": totals["seen"] / seconds}, taken


def _agree(non_finite: bool, stopping: bool, processes: Processes, device) -> tuple[bool, bool]:
    """All processes stop at the same step: a NaN or a signal in one is a NaN or a signal in all."""
    if not processes.distributed:
        return non_finite, stopping
    flags = distributed.all_sum([float(non_finite), float(stopping)], processes, device)
    return flags[0] > 0, flags[1] > 0


def _all_sums(sums: dict, correct: int, seen: int, processes: Processes, device) -> dict:
    keys = sorted(sums)
    values = distributed.all_sum([sums[k] for k in keys] + [correct, seen], processes, device)
    return {"sums": dict(zip(keys, values[:-2])), "correct": int(values[-2]), "seen": int(values[-1])}


def _save_checkpoint(path: Path, identity: dict, model, optimizer, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"identity": identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "state": state}, tmp)


IDENTITY_PARTS = {"configuration": "configuration", "data": "data set (other manifest rows or image bytes)",
                  "earlier": "set of earlier models (other --earlier model.pt contents)",
                  "start": "start weights (another --pretrained or --init-from file, or other contents)"}


def _resume(path: Path, identity: dict, model, optimizer, fresh: dict, processes: Processes) -> dict:
    """The checkpoint's state, if it was written by this very run: same configuration, data and earlier
    models, and weights that fit the network; otherwise a warning saying why, and ``fresh``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        log.warning("%s: unreadable checkpoint (%s); starting this stage over", path, err)
        return fresh
    saved_identity = saved.get("identity") if isinstance(saved, dict) else None
    if not isinstance(saved_identity, dict):
        log.warning("%s: written by an older fgkd (no record of its data); not resuming from it, starting this "
                    "stage over", path)
        return fresh
    differs = [IDENTITY_PARTS[key] for key in IDENTITY_PARTS if saved_identity.get(key) != identity[key]]
    if differs:
        hashes = f" (hash {saved_identity.get('configuration')}, now {identity['configuration']})"
        log.warning("%s: written by another %s; not resuming from it, starting this stage over", path,
                    " and another ".join(d + hashes if d == "configuration" else d for d in differs))
        return fresh
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if {k: v.shape for k, v in saved["model"].items()} != expected:
        log.warning("%s: its weights do not fit this network; not resuming from it, starting this stage over", path)
        return fresh
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    partial = saved["state"].get("partial")
    if processes.main:  # step: the optimizer steps already taken in the next epoch
        log.info("%s: resuming after epoch %d, step %d", path, saved["state"]["epoch"],
                 partial["step"] if partial else 0)
    return saved["state"]
