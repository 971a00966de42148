"""A torch Dataset over a manifest, the FGVC transforms, and the DataLoader factory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from ..errors import DataError, brief
from .images import DECODE_ERRORS, open_rgb
from .manifest import read_manifest
from .recipes import PREPROCESSING, ImageSizes


def decode_rgb(path: str | Path) -> torch.Tensor:
    """An image file as a 3 x H x W uint8 RGB tensor, decoded by the one decoder (fgkd.data.images.open_rgb)."""
    return torch.from_numpy(np.array(open_rgb(path))).permute(2, 0, 1)


def fgvc_transform(sizes: ImageSizes, train: bool) -> v2.Compose:
    """Train: resize, random crop, flip. Test: resize, centre crop. Then normalise (see PREPROCESSING)."""
    recipe = PREPROCESSING[sizes.preprocessing]
    spatial = [v2.ToPILImage()] if recipe.on_pil else []
    spatial.append(v2.Resize((sizes.resize, sizes.resize) if recipe.square else sizes.resize, antialias=True))
    if train:
        spatial += [v2.RandomCrop(sizes.crop, padding=recipe.padding or None), v2.RandomHorizontalFlip()]
    else:
        spatial.append(v2.CenterCrop(sizes.crop))
    spatial += [v2.PILToTensor()] if recipe.on_pil else []
    return v2.Compose([*spatial, v2.ToDtype(torch.float32, scale=True), v2.Normalize(recipe.mean, recipe.std)])


def unnormalise(images: torch.Tensor, sizes: ImageSizes) -> torch.Tensor:
    """The transform's output (3 x H x W, or a batch of them) back to pixels in [0, 1]: its normalisation undone."""
    recipe = PREPROCESSING[sizes.preprocessing]
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in (recipe.mean, recipe.std))
    return (images * std + mean).clamp(0, 1)


def centre_crop_box(sizes: ImageSizes, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in the pixels of a width x height image: the part of it that the test transform's
    centre crop keeps, i.e. what the network sees (torchvision's arithmetic for Resize and CenterCrop)."""
    if PREPROCESSING[sizes.preprocessing].square:
        resized_width = resized_height = sizes.resize
    elif width <= height:
        resized_width, resized_height = sizes.resize, int(sizes.resize * height / width)
    else:
        resized_width, resized_height = int(sizes.resize * width / height), sizes.resize
    left = int(round((resized_width - sizes.crop) / 2.0))
    top = int(round((resized_height - sizes.crop) / 2.0))
    x_scale, y_scale = width / resized_width, height / resized_height
    box_left, box_top = round(left * x_scale), round(top * y_scale)
    # At least one pixel each way: a crop of a 1 px tall image rounds to none.
    return (box_left, box_top, max(box_left + 1, round((left + sizes.crop) * x_scale)),
            max(box_top + 1, round((top + sizes.crop) * y_scale)))


class ManifestDataset(Dataset):
    """Images of one split of a prepared data set; items are (image, label, image_id)."""

    def __init__(self, root: str | Path, frame: pd.DataFrame, num_classes: int, transform=None):
        self.root = Path(root)
        self.num_classes = num_classes
        self.paths = frame["path"].tolist()
        self.labels = torch.tensor(frame["label"].to_numpy(), dtype=torch.long)
        self.image_ids = torch.tensor(frame["image_id"].to_numpy(), dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.root / self.paths[index]
        try:
            image = decode_rgb(path)
        except (*DECODE_ERRORS, DataError) as err:
            raise DataError(f"{path}: cannot decode image ({brief(err)}); rerun `fgkd prepare` for this data set") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index], self.image_ids[index]


def split_train_val(frame: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carve a stratified validation split out of ``train`` (at least one image per class when > 0)."""
    train = frame[frame["split"] == "train"]
    if val_fraction <= 0:
        return train, train.iloc[:0]
    rng = np.random.default_rng(seed)
    val_rows = []
    for _, group in train.groupby("label", sort=True):
        if len(group) < 2:
            continue
        count = min(len(group) - 1, max(1, round(len(group) * val_fraction)))
        val_rows.extend(rng.choice(group.index.to_numpy(), size=count, replace=False).tolist())
    val_mask = train.index.isin(val_rows)
    return train[~val_mask], train[val_mask]


def load_split(root: str | Path, split: str, sizes: ImageSizes, val_fraction: float = 0.0, seed: int = 0,
               train_augment: bool | None = None) -> ManifestDataset:
    """``split`` is train, val (carved from train) or test."""
    frame = read_manifest(root)
    if split == "test":
        rows = frame[frame["split"] == "test"]
    else:
        train, val = split_train_val(frame, val_fraction, seed)
        rows = train if split == "train" else val
    augment = (split == "train") if train_augment is None else train_augment
    return ManifestDataset(root, rows, frame.attrs["num_classes"], fgvc_transform(sizes, train=augment))


def derived_seed(*parts: int) -> int:
    """A well-mixed seed from several integers (SeedSequence: nearby inputs, unrelated outputs)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class SeededAugmentation(Dataset):
    """Draws each image's random crop and flip from (epoch seed, image index), not from a shared stream:
    the batches are the same whatever the number of loader workers or of training processes, and a
    resumed epoch can skip images without decoding them."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(derived_seed(self.seed, index))
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(state)


class EpochSampler(Sampler[int]):
    """One epoch's shuffled order, dealt round-robin to ``world`` processes (the tail that does not divide
    evenly is dropped): step s of ``world`` processes with batch b sees the images of step s of one
    process with batch world x b. ``start`` skips this process's first images (a resumed epoch)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
        self.indices = order[: size - size % world][rank::world][start:].tolist()

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_train_loader(dataset: Dataset, batch_size: int, seed: int, workers: int = 0, rank: int = 0, world: int = 1,
                      skip_batches: int = 0) -> DataLoader:
    """One epoch of training batches of this process; the last incomplete batch is dropped (unless it is
    the only one). Pinned memory on CUDA."""
    per_process = (len(dataset) - len(dataset) % world) // world
    sampler = EpochSampler(len(dataset), seed, rank, world, start=skip_batches * batch_size)
    return DataLoader(SeededAugmentation(dataset, seed), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
                      drop_last=per_process > batch_size)


def make_loader(dataset: Dataset, batch_size: int, workers: int = 0, rank: int = 0, world: int = 1) -> DataLoader:
    """Every ``world``-th image from ``rank`` on, in order (evaluation). Pinned memory on CUDA."""
    return DataLoader(dataset, batch_size=batch_size, sampler=range(rank, len(dataset), world), num_workers=workers,
                      pin_memory=torch.cuda.is_available())
