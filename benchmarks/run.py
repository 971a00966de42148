"""fgkd's speed and memory against the bare loop and the physical floor, measured in one run.

`scripts/benchmark` prints the table and writes benchmarks/RESULTS.md. Every ratio compares two
figures measured in this run, interleaved and repeated (the median counts), on the default config
(config/config.yaml: ResNet-10, batch 64, 56 px crops) unless the row says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from fgkd.config import cli_flags
from fgkd.data.dataset import load_split, make_train_loader
from fgkd.data.recipes import ImageSizes
from fgkd.data.prepare import prepare
from fgkd.data.synth import SynthParams, generate
from fgkd.distributed import Processes
from fgkd.ensemble import ensemble
from fgkd.methods import AuxKD, CrossEntropy, FrozenNetworks, OrthogonalStudent
from fgkd.models import FGVCNet
from fgkd.train import EpochContext, StopRequest, TrainConfig, train_epoch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ["Snakefile", "workflow", "config", "slurm", "dvc.yaml", ".dvc", ".dvcignore", "fgkd"]


@dataclass
class Row:
    section: str
    measure: str
    value: float
    unit: str
    reference: str = ""
    ratio: float = float("nan")
    target: str = ""

    @property
    def met(self) -> str:
        if not self.target:
            return ""
        op, bound = self.target.split()
        value = self.ratio if not np.isnan(self.ratio) else self.value
        return "yes" if (value >= float(bound) if op == ">=" else value <= float(bound)) else "NO"


def default_config() -> TrainConfig:
    options = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"]
    return TrainConfig(**{**options, "backbone": "resnet10", "device": "cpu"})


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(functions: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in turns so that drifts of the machine hit all alike."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def in_memory_batches(config: TrainConfig, classes: int, steps: int):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(config.batch_size, 3, config.crop, config.crop, generator=generator),
             torch.randint(0, classes, (config.batch_size,), generator=generator),
             torch.arange(config.batch_size)) for _ in range(steps)]


def network(config: TrainConfig, classes: int, aux_heads: int = 0) -> FGVCNet:
    return FGVCNet(config.backbone, classes, config.head, config.head_hidden, config.attention_stride, aux_heads,
                   image_size=config.crop)


# The transformer of sections 1-3: the smallest ViT of timm's ImageNet models, random weights, 4 x 4 patches of 16 px.
VIT = {"backbone": "timm-vit_tiny_patch16_224", "crop": 64, "attention_stride": 16, "head": "gap"}


def bare_step(model, optimizer, batches):
    """What one writes by hand with torchvision: forward, CE (on every head), backward, step."""
    model.train()
    for images, labels, _ in batches:
        out = model(images)
        heads = [out[0], *out[1]] if isinstance(out, tuple) else [out]
        loss = sum(F.cross_entropy(logits, labels) for logits in heads)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def inference(networks, batches, attention_only: bool = False):
    with torch.inference_mode():
        for images, _, _ in batches:
            for net in networks:
                net.attention_only(images) if attention_only else net(images)


def fgkd_epoch(method, optimizer, batches, config):
    with StopRequest() as stop:
        train_epoch(EpochContext(method, method, optimizer, torch.device("cpu"), config, Processes(), stop, save=None),
                    batches, "bench")


def sgd(model, config):
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def training_steps(config: TrainConfig, classes: int, steps: int, repeats: int,
                   network_name: str = "") -> tuple[list[Row], float]:
    """Sections 1-3: the engine against the bare loop, and the distillers against their floor (``network_name``: a
    network other than the default config's, named in each row's section)."""
    batches = in_memory_batches(config, classes, steps)
    images = steps * config.batch_size
    rows = []
    torch.manual_seed(0)
    model = network(config, classes)
    optimizer = sgd(model, config)
    frozen = [network(config, classes).eval().requires_grad_(False) for _ in range(4)]
    bare_step(model, optimizer, batches[:2])  # warm-up: allocator, oneDNN kernels
    inference(frozen, batches[:1])

    teacher = CrossEntropy(model)
    students = {k: OrthogonalStudent(model, FrozenNetworks(frozen[:k]), "or", config.orth_weight) for k in (1, 2, 4)}
    aux_model = network(config, classes, aux_heads=3)
    aux_optimizer = sgd(aux_model, config)
    aux = AuxKD(aux_model, FrozenNetworks(frozen[:3]), config.kd_temperature, config.kd_alpha)
    times = interleaved({
        "bare": lambda: bare_step(model, optimizer, batches),
        "fgkd": lambda: fgkd_epoch(teacher, optimizer, batches, config),
        "forward": lambda: inference(frozen[:1], batches),
        "to_attention": lambda: inference(frozen[:1], batches, attention_only=True),
        **{f"student{k}": (lambda s=s: fgkd_epoch(s, optimizer, batches, config)) for k, s in students.items()},
        "aux_bare": lambda: bare_step(aux_model, aux_optimizer, batches),
        "aux": lambda: fgkd_epoch(aux, aux_optimizer, batches, config),
    }, repeats)

    rate = images / times["fgkd"]
    rows.append(Row(f"1 framework{network_name}", "teacher step, fgkd engine", rate, "img/s",
                    f"bare loop {images / times['bare']:.0f} img/s", (images / times["fgkd"]) / (images / times["bare"]),
                    ">= 0.95"))
    per_step = lambda name: times[name] / steps * 1000  # noqa: E731
    for k in (1, 2, 4):
        floor = per_step("bare") + k * per_step("forward")
        # The frozen networks run only up to the attention layer: against that lower floor too.
        truncated = per_step("bare") + k * per_step("to_attention")
        rows.append(Row(f"2 orthogonal student{network_name}", f"k = {k} frozen networks", per_step(f"student{k}"), "ms/step",
                        f"floor CE step + {k} x forward = {floor:.0f} ms (+ {k} x forward up to the attention "
                        f"layer = {truncated:.0f} ms: {per_step(f'student{k}') / truncated:.2f})",
                        per_step(f"student{k}") / floor, "<= 1.10"))
    floor = per_step("aux_bare") + 3 * per_step("forward")
    rows.append(Row(f"3 aux-KD student{network_name}", "K + 1 = 3 teachers, 3 auxiliary heads", per_step("aux"), "ms/step",
                    f"floor CE step (all heads) + 3 x forward = {floor:.0f} ms", per_step("aux") / floor, "<= 1.10"))
    return rows, rate


def images_per_second(dataset, count: int) -> float:
    """Decoded and augmented images per second in this process: one loader worker's rate."""
    start = time.perf_counter()
    for index in range(count):
        dataset[index % len(dataset)]
    return count / (time.perf_counter() - start)


def decode_rates(files: list[Path]) -> tuple[float, float]:
    """Decode only (to an RGB uint8 tensor): PIL against torchvision.io.decode_jpeg."""
    from PIL import Image
    from torchvision.io import decode_jpeg, read_file

    def pil():
        for path in files:
            with Image.open(path) as image:
                torch.from_numpy(np.array(image.convert("RGB")))

    def torchvision_io():
        for path in files:
            decode_jpeg(read_file(str(path)))

    times = interleaved({"pil": pil, "tv": torchvision_io}, 3)
    return len(files) / times["pil"], len(files) / times["tv"]


def input_pipeline(work: Path, default_data: Path, config: TrainConfig, consumption: float) -> list[Row]:
    """Section 4: reading prepared copies against CUB-sized originals, and the default loader against the model."""
    sizes = ImageSizes(config.resize, config.crop)
    generate(work / "raw_large", classes=10, images_per_class=20, size=448, seed=0)
    originals = prepare("cub", work / "raw_large", work / "originals", resize=448, workers=1, progress=False).parent
    prepared = prepare("cub", work / "raw_large", work / "prepared", resize=config.resize, workers=1,
                       progress=False).parent
    count = 300
    rate_original = images_per_second(load_split(originals, "train", sizes), count)
    rate_prepared = images_per_second(load_split(prepared, "train", sizes), count)
    rows = [Row("4 input pipeline", "one worker, prepared copies (short side 64)", rate_prepared, "img/s",
                f"448 px originals {rate_original:.0f} img/s", rate_prepared / rate_original)]
    files = sorted((default_data / "images").rglob("*.jpg"))[:400]
    pil, tv = decode_rates(files)
    rows.append(Row("4 input pipeline", "decode only, PIL (used)", pil, "img/s",
                    f"torchvision.io.decode_jpeg {tv:.0f} img/s", pil / tv))

    train_set = load_split(default_data, "train", sizes, config.val_fraction, config.seed)
    epochs = []
    for epoch in range(3):
        start = time.perf_counter()
        seen = sum(len(labels) for _, labels, _ in make_train_loader(train_set, config.batch_size, epoch,
                                                                    config.workers))
        epochs.append(seen / (time.perf_counter() - start))
    feed = statistics.median(epochs)
    rows.append(Row("4 input pipeline", f"default loader ({config.workers} worker, whole epochs)", feed, "img/s",
                    f"model consumes {consumption:.0f} img/s", feed / consumption, ">= 1.5"))
    return rows


# The GPU's demand in the loader sections: NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/
# README.md, "Training performance: NVIDIA DGX A100 (8x A100 80GB)": 1 GPU, mixed precision, 224 px, batch 256 per
# GPU (pytorch-21.03 NGC container, DALI-CPU loader): 2470 img/s. A 448 px image has (448/224)^2 = 4x the pixels,
# and ResNet-50's cost grows with them: 2470 / 4 = 617.5 img/s. An assumption until `scripts/benchmark --section gpu`
# measures fgkd's own step (batch 32 uses a GPU less fully than 256: the real rate is likely lower; a newer GPU,
# higher).
A100_RESNET50_224_IMG_S = 2470.0
PAPER_DEMAND_IMG_S = A100_RESNET50_224_IMG_S / (448 / 224) ** 2


def paper_size_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 800 x 600 JPEGs (quality 90), the size of the paper config's prepared copies (short side 600):
    smooth random colour fields with fine noise on top, so that they compress like photographs (about 100 KB),
    not like flat test patterns."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index in range(count):
        coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 12, 16)).astype(np.float32))
        smooth = F.interpolate(coarse, size=(600, 800), mode="bicubic", align_corners=False)[0]
        pixels = (smooth + torch.from_numpy(rng.normal(0, 12, (3, 600, 800)).astype(np.float32))).clamp(0, 255)
        path = folder / f"{index:03d}.jpg"
        Image.fromarray(pixels.byte().permute(1, 2, 0).numpy()).save(path, format="JPEG", quality=90)
        files.append(path)
    return files


def paper_loader(work: Path, count: int = 60, repeats: int = 5) -> tuple[list[Row], str]:
    """Loader at the paper's size: one core decoding and augmenting 800 x 600 JPEGs to 448 px training inputs
    (the `official` recipe: square resize 600, RandomCrop(448, padding=8), flip, normalise 0.5 / 0.5), with PIL
    (fgkd's loader) and with torchvision.io.decode_jpeg + transforms v2 on uint8 tensors."""
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms import v2

    from fgkd.data.dataset import decode_rgb, fgvc_transform

    files = paper_size_jpegs(work / "paper_jpegs", count)
    kilobytes = statistics.mean(f.stat().st_size for f in files) / 1024
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one loader worker = one core (DataLoader workers run torch with one thread)
    try:
        pil_transform = fgvc_transform(ImageSizes(600, 448, "official"), train=True)
        tensor_transform = v2.Compose([v2.Resize((600, 600), antialias=True), v2.RandomCrop(448, padding=8),
                                       v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                                       v2.Normalize((0.5,) * 3, (0.5,) * 3)])

        def pil():
            for path in files:
                pil_transform(decode_rgb(path))

        def tensor():
            for path in files:
                tensor_transform(decode_jpeg(read_file(str(path))))

        pil()  # warm-up
        tensor()
        times = interleaved({"pil": pil, "tensor": tensor}, repeats)
    finally:
        torch.set_num_threads(threads)
    rates = {name: count / seconds for name, seconds in times.items()}
    demand = PAPER_DEMAND_IMG_S
    workers = {name: math.ceil(demand / rate) for name, rate in rates.items()}
    rows = [Row("8 loader at the paper's size", "one core, PIL (fgkd's loader): decode 800 x 600, official recipe "
                "to 448", rates["pil"], "img/s", f"GPU demand {demand:.0f} img/s: {workers['pil']} workers"),
            Row("8 loader at the paper's size", "one core, torchvision.io.decode_jpeg + transforms v2 on uint8",
                rates["tensor"], "img/s", f"GPU demand {demand:.0f} img/s: {workers['tensor']} workers",
                rates["tensor"] / rates["pil"])]
    note = (f"Loader at the paper's size: {count} JPEGs of 800 x 600 px (quality 90, {kilobytes:.0f} KB each) made by "
            f"the benchmark; one core each path, interleaved, median of {repeats}. GPU demand: ResNet-50 teacher "
            f"step at 448 px, assumed {demand:.0f} img/s = NVIDIA's published 1 x A100 80GB mixed-precision "
            f"training rate at 224 px, {A100_RESNET50_224_IMG_S:.0f} img/s (DeepLearningExamples, "
            "PyTorch/Classification/ConvNets/resnet50v1.5/README.md, DGX A100 table), / (448/224)^2. "
            "Workers = ceil(demand / one core's rate); a VGG-16-BN step needs about a quarter of that (about 4x the "
            "FLOPs of ResNet-50).")
    return rows, note


def _synced_timed(functions: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """interleaved() with the GPU's queue drained at the end of each call, so that a time is the GPU's work."""
    def synced(function):
        def run():
            function()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

    return interleaved({name: synced(f) for name, f in functions.items()}, repeats)


def gpu_steps(work: Path, steps: int = 10, repeats: int = 3, device: str = "cuda", crop: int = 448,
              backbones: tuple = (("resnet50", 512), ("vgg16_bn", 4096)),
              compile: bool = True) -> tuple[list[Row], str]:
    """The paper config on the GPU: ResNet-50 and VGG-16-BN at 448 px, batch 32, bf16 autocast, channels_last, 200
    classes (CUB), random weights. Per backbone: the bare torchvision model's forward + backward + SGD step (the
    floor), fgkd's teacher, student 3 (k = 3 frozen networks) and aux-KD (K + 1 = 4 frozen networks, 4 auxiliary
    heads) steps through fgkd's engine, the teacher step under torch.compile; then the loader's one-core rate on this
    machine's CPU against the measured ResNet-50 teacher demand. (``device``, ``crop``, ``backbones``, ``compile``:
    a small run of the same code on the CPU, to check it without a GPU.)"""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return [], "GPU: skipped: no CUDA on the machine of this run."
    import torchvision

    classes, batch = 200, 32
    rows = []
    demand = {}
    for backbone, hidden in backbones:
        config = TrainConfig(backbone=backbone, head="official", head_hidden=hidden, attention_stride=32,
                             batch_size=batch, resize=600, crop=crop, preprocessing="official", amp="bf16",
                             channels_last="on", device=str(device))
        generator = torch.Generator().manual_seed(0)
        batches = [(torch.randn(batch, 3, crop, crop, generator=generator),
                    torch.randint(0, classes, (batch,), generator=generator), torch.arange(batch))
                   for _ in range(steps)]
        on_gpu = [(x.to(device, memory_format=torch.channels_last), y.to(device), i) for x, y, i in batches]
        # fgkd's engine gets them as its loader gives them: float32 in pinned CPU memory, copied every step
        # (non-blocking); the floor's are on the GPU already.
        if device.type == "cuda":
            batches = [(x.pin_memory(), y.pin_memory(), i) for x, y, i in batches]

        def net(aux_heads=0):
            model = FGVCNet(backbone, classes, "official", hidden, 32, aux_heads)
            return model.to(device, memory_format=torch.channels_last)

        # The floor: the same network in a hand-written loop on batches already on the GPU. For reference, the
        # torchvision classifier itself (its own head: VGG's is a 120M-parameter classifier, fgkd's official one
        # is small).
        bare = net()
        bare_optimizer = sgd(bare, config)
        vision = torchvision.models.get_model(backbone, num_classes=classes)
        vision = vision.to(device, memory_format=torch.channels_last)
        vision_optimizer = sgd(vision, config)

        def floor():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bare_step(bare, bare_optimizer, on_gpu)

        def torchvision_model():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                bare_step(vision, vision_optimizer, on_gpu)

        model = net()
        optimizer = sgd(model, config)
        frozen = [net().eval().requires_grad_(False) for _ in range(4)]
        aux_model = net(aux_heads=4)
        aux_optimizer = sgd(aux_model, config)
        methods = {"teacher": CrossEntropy(model),
                   "student3": OrthogonalStudent(model, FrozenNetworks(frozen[:3]), "or", config.orth_weight),
                   "aux": AuxKD(aux_model, FrozenNetworks(frozen), config.kd_temperature, config.kd_alpha)}
        optimizers = {"teacher": optimizer, "student3": optimizer, "aux": aux_optimizer}

        def engine(name, step=None):
            method = methods[name]
            context = EpochContext(method if step is None else step, method, optimizers[name], device, config, Processes(), StopRequest(),
                                   save=None)
            return lambda: train_epoch(context, batches, "bench")

        compiled = torch.compile(methods["teacher"]) if compile else methods["teacher"]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        functions = {"floor": floor, "torchvision": torchvision_model, **{name: engine(name) for name in methods},
                     "compiled": engine("teacher", compiled)}
        for function in functions.values():  # warm-up: cuDNN autotuning, the allocator, compilation
            function()
        times = _synced_timed(functions, repeats, device)
        per_step = {name: seconds / steps * 1000 for name, seconds in times.items()}
        demand[backbone] = batch / per_step["teacher"] * 1000
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        floor_ms = per_step["floor"]
        section = f"9 GPU {backbone}"
        rows += [Row(section, "floor: the same network, bare loop (forward + backward + SGD, batches on the GPU)",
                     floor_ms, "ms/step", f"{batch / floor_ms * 1000:.0f} img/s"),
                 Row(section, "the torchvision classifier itself, bare loop", per_step["torchvision"], "ms/step",
                     f"floor {floor_ms:.1f} ms", per_step["torchvision"] / floor_ms),
                 Row(section, "teacher, fgkd engine", per_step["teacher"], "ms/step",
                     f"{demand[backbone]:.0f} img/s; floor {floor_ms:.1f} ms", per_step["teacher"] / floor_ms),
                 Row(section, "student 3 (k = 3 frozen networks)", per_step["student3"], "ms/step",
                     f"floor {floor_ms:.1f} ms", per_step["student3"] / floor_ms),
                 Row(section, "aux-KD (4 frozen networks, 4 aux heads)", per_step["aux"], "ms/step",
                     f"floor {floor_ms:.1f} ms", per_step["aux"] / floor_ms),
                 Row(section, "teacher, torch.compile on", per_step["compiled"], "ms/step",
                     f"compile off {per_step['teacher']:.1f} ms", per_step["compiled"] / per_step["teacher"]),
                 Row(section, "peak GPU memory (all of the above)", peak, "GiB")]
        del bare, vision, model, frozen, aux_model, methods, compiled, functions, on_gpu
        if device.type == "cuda":
            torch.cuda.empty_cache()
    first = backbones[0][0]
    loader_rows, _ = paper_loader(work, count=20, repeats=2)
    for row in loader_rows:
        workers = math.ceil(demand[first] / row.value)
        rows.append(Row("9 GPU loader", row.measure + " (this machine's CPU)", row.value, "img/s",
                        f"measured {first} teacher demand {demand[first]:.0f} img/s: {workers} workers"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (a check of the code, not a figure)"
    note = (f"GPU: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
            f"batch {batch}, {crop} px, bf16 autocast, channels_last, {classes} classes, random weights, in-memory "
            "batches (pinned CPU memory for fgkd's engine, copied each step as from its loader; on the GPU for the "
            f"floor); median of {repeats} x {steps} steps. Ratios: against the floor of the same backbone "
            "(student and aux-KD also run their frozen networks: compare with 1 + k x forward / step); compile: "
            "compiled / eager.")
    return rows, note


def timed_command(args: list[str], cwd: Path, check: bool = True) -> float:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds


def project_copy(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy2(source, target / name)
    return target


def workflow_overhead(work: Path) -> list[Row]:
    """Section 5: planning the paper's DAG, and no-op reruns after a finished (tiny) run."""
    project = project_copy(work / "project")
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "CUB_200_2011.tgz").write_bytes(b"")  # the paper config checks that its raw paths exist
    (raw / "fgvc-aircraft-2013b.tar.gz").write_bytes(b"")
    (raw / "stanford_cars").mkdir()
    rows = [Row("5 workflow", "snakemake -n all, paper config (3 x 2 x 3 seeds, K = 3)",
                timed_command(["snakemake", "-n", "all", "--configfile", "config/paper.yaml"], project), "s",
                target="<= 5")]
    shutil.copy2(REPO / "config" / "tiny.yaml", project / "config" / "config.yaml")
    timed_command(["snakemake", "--cores", "2", "all"], project)
    rows.append(Row("5 workflow", "no-op rerun of snakemake all", timed_command(["snakemake", "--cores", "2", "all"],
                                                                                project), "s", target="<= 5"))
    timed_command(["dvc", "config", "core.no_scm", "true"], project)
    timed_command(["dvc", "repro"], project)
    rows.append(Row("5 workflow", "no-op dvc repro", timed_command(["dvc", "repro"], project), "s", target="<= 5"))
    return rows


def ensemble_speed(work: Path) -> list[Row]:
    """Section 6: every subset of 5 members (teacher + K = 4 students) over 10,000 test images."""
    rng = np.random.default_rng(0)
    images, classes, files = 10_000, 200, []
    labels = rng.integers(0, classes, images)
    for member in range(5):
        frame = pd.DataFrame(rng.standard_normal((images, classes), dtype=np.float32),
                             columns=[f"logit_{c:03d}" for c in range(classes)])
        frame.insert(0, "label", labels)
        frame.insert(0, "image_id", np.arange(images))
        files.append(work / f"member{member}.parquet")
        frame.to_parquet(files[-1])
    names = ["teacher", *[f"student_{k}" for k in range(1, 5)]]
    seconds = median_seconds(lambda: ensemble(files, names), 3)
    return [Row("6 ensembles", "all 31 subsets of 5 members, 10,000 images x 200 classes (read + score)", seconds,
                "s", target="<= 1")]


def peak_memory(work: Path, data: Path, config: TrainConfig) -> list[Row]:
    """Section 7: peak resident memory of the largest process of each stage (one epoch of training)."""
    options = cli_flags({**dataclasses.asdict(config), "epochs": 1})
    runs = work / "runs"
    fgkd = [sys.executable, "-m", "fgkd"]
    teacher, s1, s2 = (runs / name / "model.pt" for name in ("teacher", "student_1", "student_2"))
    stages = {
        "train teacher": [*fgkd, "train", "--stage", "teacher", "--out", str(teacher.parent)],
        "train student_1": [*fgkd, "train", "--stage", "student", "--index", "1", "--earlier", str(teacher),
                            "--out", str(s1.parent)],
        "train student_2": [*fgkd, "train", "--stage", "student", "--index", "2", "--earlier", str(teacher),
                            "--earlier", str(s1), "--out", str(s2.parent)],
        "train auxkd": [*fgkd, "train", "--stage", "auxkd", *[f"--earlier={m}" for m in (teacher, s1, s2)],
                        "--out", str(runs / "auxkd")],
    }
    baseline = _peak_mib([sys.executable, "-c", "import torch, torchvision, fgkd.train"])
    reference = f"importing torch + fgkd alone: {baseline:,.0f} MiB"
    rows = [Row("7 peak memory", stage, _peak_mib([*args, "--data", str(data), "--no-progress",
                                                                         *options]), "MiB", reference)
            for stage, args in stages.items()]
    rows.append(Row("7 peak memory", "predict", _peak_mib([*fgkd, "predict", "--model", str(teacher), "--data",
                                                            str(data), "--out", str(runs / "logits.parquet")]), "MiB",
                    reference))
    return rows


def _peak_mib(args: list[str]) -> float:
    """Max RSS of the command's largest process, read in a fresh interpreter that only waits for it."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return int(result.stdout.split()[-1]) / 1024


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def table(rows: list[Row]) -> str:
    lines = ["| section | measure | value | reference (same run) | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "" if np.isnan(r.ratio) else f"{r.ratio:.2f}"
        lines.append(f"| {r.section} | {r.measure} | {r.value:,.{2 if r.value < 10 else 0}f} {r.unit} | {r.reference} "
                     f"| {ratio} | {r.target} | {r.met} |")
    return "\n".join(lines)


SECTIONS = ("all", "loader448", "gpu")
BLOCK = "<!-- section {name} -->\n{text}\n<!-- /section {name} -->"


def section_text(rows: list[Row], note: str) -> str:
    return f"{note}\n\n{table(rows)}" if rows else note


def update_block(results: Path, name: str, text: str) -> None:
    """Replace one section's block of RESULTS.md (added at the end when missing), leaving the rest as it was."""
    current = results.read_text() if results.exists() else "# Benchmarks\n"
    block = BLOCK.format(name=name, text=text)
    start, end = f"<!-- section {name} -->", f"<!-- /section {name} -->"
    if start in current and end in current:
        current = current[:current.index(start)] + block + current[current.index(end) + len(end):]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    results.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md",
                        help="where to write the table (with the machine and the date)")
    parser.add_argument("--section", choices=SECTIONS, default="all",
                        help="loader448: only the loader at the paper's size (under a minute); gpu: only the GPU "
                             "section (prints 'skipped: no CUDA' without one); each updates only its block of the "
                             "results file")
    args = parser.parse_args()
    started = time.perf_counter()
    stamp = time.strftime('%Y-%m-%d')
    if args.section != "all":
        with tempfile.TemporaryDirectory(prefix="fgkd-bench-") as tmp:
            rows, note = (paper_loader if args.section == "loader448" else gpu_steps)(Path(tmp))
        text = f"`scripts/benchmark --section {args.section}` ({stamp}, {time.perf_counter() - started:.0f} s). " \
               f"Machine: {machine()}.\n{section_text(rows, note)}"
        print(text)
        if rows:
            update_block(args.results, args.section, text)
        return
    config = default_config()
    settings = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]["synthetic"]["synth"]
    with tempfile.TemporaryDirectory(prefix="fgkd-bench-") as tmp:
        work = Path(tmp)
        generate(work / "raw", settings["classes"], settings["images_per_class"], settings["size"], settings["seed"],
                 SynthParams.from_config(settings))
        data = prepare("cub", work / "raw", work / "data", resize=config.resize, workers=1, progress=False).parent
        rows, consumption = training_steps(config, settings["classes"], steps=10, repeats=5)
        rows += training_steps(dataclasses.replace(config, **VIT), settings["classes"], steps=10, repeats=5,
                               network_name=", ViT-Ti/16 at 64 px")[0]
        rows += input_pipeline(work, data, config, consumption)
        rows += workflow_overhead(work)
        rows += ensemble_speed(work)
        rows += peak_memory(work, data, config)
        loader_rows, loader_note = paper_loader(work)
        gpu_rows, gpu_note = gpu_steps(work)
    minutes = (time.perf_counter() - started) / 60
    text = (f"# Benchmarks\n\n`scripts/benchmark` ({stamp}, {minutes:.1f} min). Machine: "
            f"{machine()}.\nDefault config: {config.backbone}, batch {config.batch_size}, {config.crop} px crops, "
            f"{config.workers} loader worker.\n\n{table(rows)}\n\n"
            f"{BLOCK.format(name='loader448', text=section_text(loader_rows, loader_note))}\n\n"
            f"{BLOCK.format(name='gpu', text=section_text(gpu_rows, gpu_note))}\n")
    print(text)
    if not gpu_rows and args.results.exists():  # keep the GPU figures of an earlier run on a GPU machine
        previous = args.results.read_text()
        if "<!-- section gpu -->" in previous and "<!-- /section gpu -->" in previous:
            start = previous.index("<!-- section gpu -->")
            kept = previous[start:previous.index("<!-- /section gpu -->") + len("<!-- /section gpu -->")]
            if "skipped" not in kept:
                text = text[:text.index("<!-- section gpu -->")] + kept + "\n"
    args.results.write_text(text)
    missed = [r for r in rows + loader_rows + gpu_rows if r.met == "NO"]
    if missed:
        print(f"{len(missed)} target(s) missed: " + "; ".join(r.measure for r in missed))


if __name__ == "__main__":
    main()
