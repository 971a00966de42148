"""A procedurally generated fine-grained data set, written in the CUB-200-2011 layout.

Every image shows the same bird-like object (body, head, beak, eye, tail). Classes differ only in
small markings drawn in a few *part slots* (head, wing, tail, belly). Each slot has its own two
glyphs (as a bird's crest differs from its wing bar) in one of six colours; a class is one
marking per slot, chosen so that, while there are no more classes than markings per slot (12),
every slot alone identifies the class. Everything else is nuisance drawn independently of the
class: pose (rotation, mirror, scale, position), body colour, lighting, background clutter of
muted glyphs, pixel noise, and random occlusion of individual parts. A network that relies on one part fails whenever that part is occluded;
networks that found the other parts do not: the structure the orthogonal students exploit.

With ``identity_parts`` N (>= 2), a class is instead a *combination* of markings over the first N
slots, each marking shared by at least two classes, so that one part alone cannot tell them apart
(its accuracy is capped, see ``one_part_caps``) and only the N parts together can; the other slots
show a marking drawn per image, independent of the class.

Rendering is a pure function of (class code, nuisance), so two classes can be rendered under
identical nuisance, and they then differ only inside the part regions (tested).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FgkdError

GLYPHS = ("disc", "square", "triangle", "ring", "hstripes", "vstripes", "cross", "diamond")
COLOURS = {
    "red": (220, 30, 40),
    "yellow": (245, 215, 30),
    "blue": (30, 80, 230),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "green": (40, 180, 60),
}
COLOUR_NAMES = tuple(COLOURS)
GLYPHS_PER_SLOT = 2
VARIANTS_PER_SLOT = GLYPHS_PER_SLOT * len(COLOURS)


@dataclass(frozen=True)
class PartSlot:
    name: str
    u: float  # centre in body units (object frame: x along the body, head at +x)
    v: float
    radius: float


PART_SLOTS = (
    PartSlot("head", 0.95, -0.42, 0.21),
    PartSlot("wing", -0.15, -0.10, 0.30),
    PartSlot("tail", -1.28, 0.0, 0.22),
    PartSlot("belly", 0.38, 0.27, 0.22),
)
SUPERSAMPLE = 2
SYNTH_JPEG_QUALITY = 95
CODE_STREAM, SPLIT_STREAM, IMAGE_STREAM = 0, 1, 2  # independent random streams of one seed
FREE = -1  # a code entry whose marking is drawn per image (identity-parts mode: the slots beyond N)
OBJECT_LENGTH = 3.2  # body units from tail tip to beak tip
MAX_PART_SCALE = 1.5  # the belly's marking then covers 3.5% of the wing's on average (0.8% at the default 1.3)


# `fgkd synth` option (and `datasets.<name>.synth` key) -> the SynthParams field it sets
SYNTH_KNOBS = {"occlusion": "occlusion_prob", "clutter": "clutter", "rotation": "max_rotation_deg",
               "scale": "scale_range", "noise": "noise_std", "part_scale": "part_scale"}


@dataclass(frozen=True)
class SynthParams:
    """Difficulty knobs; the defaults are the embedded default data set."""

    occlusion_prob: float = 0.25
    clutter: int = 5
    max_rotation_deg: float = 25.0
    scale_range: tuple[float, float] = (0.65, 0.95)
    noise_std: float = 6.0
    part_jitter: float = 0.05
    part_scale: float = 1.3

    @classmethod
    def from_options(cls, **options) -> SynthParams:
        """The knobs by their `fgkd synth` option names (and `datasets.<name>.synth` keys, SYNTH_KNOBS), checked."""
        params = cls(**{SYNTH_KNOBS[k]: tuple(v) if k == "scale" else v for k, v in options.items()})
        params.check()
        return params

    @classmethod
    def from_config(cls, synth: dict) -> SynthParams:
        """The knobs of a config's `datasets.<name>.synth` (its other keys are not about difficulty), checked."""
        return cls.from_options(**{k: v for k, v in synth.items() if k in SYNTH_KNOBS})

    def check(self) -> None:
        """Refuse settings the generator cannot draw, in one line naming the `fgkd synth` option (written so that NaN
        fails too)."""
        low, high = self.scale_range
        if not 0 <= self.occlusion_prob <= 1:
            raise FgkdError(f"--occlusion is a probability in [0, 1] (got {self.occlusion_prob})")
        if not self.clutter >= 0:
            raise FgkdError(f"--clutter is a number of background glyphs, 0 or more (got {self.clutter})")
        if not 0 <= self.max_rotation_deg <= 180:
            raise FgkdError(f"--rotation is the largest rotation either way, 0 to 180 degrees (got {self.max_rotation_deg})")
        if not 0 < low <= high <= 1:
            raise FgkdError(f"--scale {low} {high}: the object's length as a share of the image side, smallest then "
                            "largest, each in (0, 1]")
        if not 0 <= self.noise_std <= 64:
            raise FgkdError(f"--noise is the largest pixel noise std, 0 to 64 grey levels (got {self.noise_std})")
        if not 0.5 <= self.part_scale <= MAX_PART_SCALE:
            raise FgkdError(f"--part-scale must be 0.5 to {MAX_PART_SCALE} (got {self.part_scale}); larger markings of "
                            "the wing and the belly cover each other more")


@dataclass
class Nuisance:
    """Everything about an image that is not its class."""

    angle: float
    mirror: bool
    scale: float  # pixels (at output size) per body unit
    centre: tuple[float, float]
    body_rgb: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]
    background_angle: float
    clutter: list[dict]
    part_offsets: list[tuple[float, float, float]]  # du, dv, radius factor per slot
    occluded: list[bool]
    occluder_rgb: list[tuple[float, float, float]]
    gain: float
    cast: tuple[float, float, float]
    shade: tuple[float, float]  # illumination gradient direction * strength
    noise_seed: int
    noise_std: float
    free_markings: dict[int, int] = field(default_factory=dict)  # slot -> variant, for the FREE slots of a code


def markings_per_slot(num_classes: int, identity_parts: int) -> int:
    """The fewest markings per slot whose combinations over the identity slots cover every class."""
    markings = 2
    while markings**identity_parts < num_classes:
        markings += 1
    return markings


def check_identity_parts(num_classes: int, identity_parts: int | None) -> None:
    """Refuse a combination mode that cannot exist: one line naming the setting and what would work."""
    if identity_parts is None:
        return
    slots = len(PART_SLOTS)
    if not 2 <= identity_parts <= slots:
        raise FgkdError(f"--identity-parts {identity_parts}: must be 2 to {slots}, the part slots "
                        f"({', '.join(p.name for p in PART_SLOTS)}); leave it out for one identifying marking per slot")
    if num_classes > VARIANTS_PER_SLOT**identity_parts:
        raise FgkdError(f"--classes {num_classes}: {identity_parts} identity parts of {VARIANTS_PER_SLOT} markings "
                        f"each make only {VARIANTS_PER_SLOT**identity_parts} combinations; use fewer classes or more "
                        "identity parts")
    if num_classes // markings_per_slot(num_classes, identity_parts) < 2:
        fits = next(c for c in itertools.count(num_classes + 1) if c // markings_per_slot(c, identity_parts) >= 2)
        raise FgkdError(f"--classes {num_classes} with --identity-parts {identity_parts}: some part's marking would "
                        f"belong to one class only, so that part alone would identify it; use --classes {fits}")


def _alphabet(rng: np.random.Generator, markings: int) -> np.ndarray:
    """An identity slot's markings: each in a colour of its own while there are colours enough, so that the
    combination, not the reading of one glyph, is what makes a class hard; beyond, distinct variants."""
    if markings > len(COLOURS):
        return rng.permutation(VARIANTS_PER_SLOT)[:markings]
    return rng.permutation(len(COLOURS))[:markings] * GLYPHS_PER_SLOT + rng.integers(GLYPHS_PER_SLOT, size=markings)


def class_codes(num_classes: int, rng: np.random.Generator, identity_parts: int | None = None,
                exclude: Sequence[dict[int, int]] = ()) -> np.ndarray:
    """One variant per slot for each class; distinct tuples, each slot injective when possible.

    ``exclude``: classes of other sets (slot -> variant, see read_class_codes) that no class here may show; a code
    showing every marking of an excluded class is drawn again (so the codes are random tuples, not permutations).

    With ``identity_parts`` N: the class's combination over the first N slots, the other slots FREE. With M
    markings per slot (markings_per_slot), combination c (base-M digits d_0, d_1, ...) shows d_0 in the first
    slot and d_0 + d_i (mod M) in slot i: distinct for distinct c, and every slot's markings shared by
    floor(C / M) or ceil(C / M) of the C classes (each block of M consecutive c runs through all M)."""
    slots = len(PART_SLOTS)
    if identity_parts is not None:
        check_identity_parts(num_classes, identity_parts)
        markings = markings_per_slot(num_classes, identity_parts)
        digits = np.array([[c // markings**i % markings for i in range(identity_parts)] for c in range(num_classes)])
        combos = (digits[:, :1] + np.concatenate([np.zeros_like(digits[:, :1]), digits[:, 1:]], 1)) % markings
        alphabets = np.stack([_alphabet(rng, markings) for _ in range(identity_parts)], 1)
        codes = np.full((num_classes, slots), FREE)
        codes[rng.permutation(num_classes), :identity_parts] = np.take_along_axis(alphabets, combos, 0)
        return codes
    if num_classes <= VARIANTS_PER_SLOT and not exclude:
        return np.stack([rng.permutation(VARIANTS_PER_SLOT)[:num_classes] for _ in range(slots)], 1)
    codes: set[tuple[int, ...]] = set()
    for _ in range(1000 * num_classes):
        code = tuple(int(x) for x in rng.integers(0, VARIANTS_PER_SLOT, slots))
        if not any(all(code[slot] == variant for slot, variant in other.items()) for other in exclude):
            codes.add(code)
        if len(codes) == num_classes:
            return np.array(sorted(codes))
    raise FgkdError(f"--classes {num_classes}: not that many classes differ from the {len(exclude)} excluded ones; "
                    "use fewer classes")


def read_class_codes(path: str | Path) -> list[dict[int, int]]:
    """The classes of a set written by ``generate`` (its folder or synthetic.json), as slot -> variant for the slots
    that define them."""
    path = Path(path)
    candidates = [path] if path.suffix == ".json" else [path / "CUB_200_2011" / "synthetic.json", path / "synthetic.json"]
    meta_file = next((c for c in candidates if c.is_file()), None)
    if meta_file is None:
        raise FgkdError(f"--exclude-classes-of {path}: no synthetic.json there; give a folder written by fgkd synth "
                        "or its CUB_200_2011/synthetic.json")
    try:
        meta = json.loads(meta_file.read_text())
        names = {(slot, variant_name(slot, v)): v for slot in range(len(PART_SLOTS)) for v in range(VARIANTS_PER_SLOT)}
        return [{slot: names[slot, name] for slot, name in enumerate(parts) if name is not None}
                for parts in meta["class_parts"].values()]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise FgkdError(f"--exclude-classes-of {meta_file}: not a synthetic.json of fgkd synth ({err!r}); "
                        "regenerate that set") from None


def free_slots(codes: np.ndarray) -> list[int]:
    """Slots whose marking each image draws for itself."""
    return [slot for slot in range(codes.shape[1]) if (codes[:, slot] == FREE).all()]


def one_part_caps(codes: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per slot, the Bayes accuracy on ``labels`` of guessing the class from that slot's marking alone: each
    marking's most frequent class. A FREE slot's marking says nothing, so the most frequent class overall."""
    counts = np.bincount(labels, minlength=len(codes))
    caps = {}
    for slot, part in enumerate(PART_SLOTS):
        markings = np.zeros(len(codes), int) if (codes[:, slot] == FREE).all() else codes[:, slot]
        caps[part.name] = float(sum(counts[markings == m].max() for m in np.unique(markings)) / len(labels))
    return caps


def marking(slot: int, variant: int) -> tuple[int, str]:
    """(glyph index, colour name) of a slot's variant: each slot draws from its own pair of glyphs."""
    return GLYPHS_PER_SLOT * slot + variant % GLYPHS_PER_SLOT, COLOUR_NAMES[variant // GLYPHS_PER_SLOT]


def variant_name(slot: int, variant: int) -> str:
    glyph, colour = marking(slot, variant)
    return f"{colour}-{GLYPHS[glyph]}"


def sample_nuisance(rng: np.random.Generator, size: int, params: SynthParams, free: Sequence[int] = ()) -> Nuisance:
    """The image's nuisance; markings for the ``free`` slots come last, so the rest is that of the default mode."""
    slots = len(PART_SLOTS)
    scale = size * rng.uniform(*params.scale_range) / OBJECT_LENGTH
    margin = 0.5 * OBJECT_LENGTH * scale * 0.6
    centre = tuple(float(rng.uniform(min(margin, size / 2), max(size - margin, size / 2))) for _ in range(2))
    occluded = list(rng.random(slots) < params.occlusion_prob)
    if all(occluded):
        occluded[int(rng.integers(slots))] = False
    clutter = [
        {
            "glyph": int(rng.integers(len(GLYPHS))),
            "rgb": tuple(float(c) for c in rng.uniform(70, 190, 3)),  # muted: never a part's colour
            "x": float(rng.uniform(0, size)),
            "y": float(rng.uniform(0, size)),
            "radius": float(scale * rng.uniform(0.15, 0.35)),
            "angle": float(rng.uniform(0, 2 * math.pi)),
        }
        for _ in range(params.clutter)
    ]
    # Muted body colours, so that saturated part markings stay readable on any body.
    grey = rng.uniform(80, 170)
    body = tuple(float(np.clip(grey + d, 0, 255)) for d in rng.normal(0, 18, 3))
    return Nuisance(
        angle=float(np.deg2rad(rng.uniform(-params.max_rotation_deg, params.max_rotation_deg))),
        mirror=bool(rng.random() < 0.5),
        scale=float(scale),
        centre=centre,
        body_rgb=body,
        background=tuple(tuple(float(c) for c in rng.uniform(40, 215, 3)) for _ in range(2)),
        background_angle=float(rng.uniform(0, 2 * math.pi)),
        clutter=clutter,
        part_offsets=[
            (float(rng.normal(0, params.part_jitter)), float(rng.normal(0, params.part_jitter)),
             float(params.part_scale * rng.uniform(0.9, 1.1)))
            for _ in range(slots)
        ],
        occluded=[bool(o) for o in occluded],
        occluder_rgb=[tuple(float(c) for c in rng.uniform(30, 225, 3)) for _ in range(slots)],
        gain=float(rng.uniform(0.65, 1.25)),
        cast=tuple(float(c) for c in rng.uniform(0.88, 1.12, 3)),
        shade=tuple(float(c) for c in rng.normal(0, 0.25, 2)),
        noise_seed=int(rng.integers(2**31)),
        noise_std=float(rng.uniform(0, params.noise_std)),
        free_markings={slot: int(rng.integers(VARIANTS_PER_SLOT)) for slot in free},
    )


def _glyph_mask(glyph: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Membership of the unit-disc glyph at local coordinates (a, b)."""
    rho = np.hypot(a, b)
    name = GLYPHS[glyph]
    if name == "disc":
        return rho <= 0.8
    if name == "square":
        return (np.abs(a) <= 0.62) & (np.abs(b) <= 0.62)
    if name == "triangle":
        return (b <= 0.6) & (b >= -0.8 + 2.3 * np.abs(a))
    if name == "ring":
        return (rho >= 0.45) & (rho <= 0.88)
    if name == "hstripes":
        return (rho <= 0.9) & (np.floor((b + 1) * 2.5) % 2 == 0)
    if name == "vstripes":
        return (rho <= 0.9) & (np.floor((a + 1) * 2.5) % 2 == 0)
    if name == "cross":
        return (rho <= 0.9) & ((np.abs(a) <= 0.24) | (np.abs(b) <= 0.24))
    return np.abs(a) + np.abs(b) <= 0.88  # diamond


def _slot_geometry(slot: int, nuisance: Nuisance) -> tuple[float, float, float]:
    du, dv, factor = nuisance.part_offsets[slot]
    part = PART_SLOTS[slot]
    return part.u + du, part.v + dv, part.radius * factor


def _body_frame(nuisance: Nuisance, xs: np.ndarray, ys: np.ndarray, ss: int):
    """Object-frame coordinates (u, v) of supersampled pixel centres."""
    cx, cy = (c * ss for c in nuisance.centre)
    dx, dy = xs - cx, ys - cy
    cos, sin = math.cos(nuisance.angle), math.sin(nuisance.angle)
    scale = nuisance.scale * ss
    u = (cos * dx + sin * dy) / scale
    v = (-sin * dx + cos * dy) / scale
    return (-u if nuisance.mirror else u), v


def _image_point(nuisance: Nuisance, u: float, v: float) -> tuple[float, float]:
    """Inverse of ``_body_frame`` at output resolution."""
    u = -u if nuisance.mirror else u
    cos, sin = math.cos(nuisance.angle), math.sin(nuisance.angle)
    return (nuisance.centre[0] + nuisance.scale * (cos * u - sin * v),
            nuisance.centre[1] + nuisance.scale * (sin * u + cos * v))


def slot_centre(slot: int, nuisance: Nuisance) -> tuple[float, float]:
    """(x, y) in output pixels of the centre of slot ``slot``'s marking."""
    return _image_point(nuisance, *_slot_geometry(slot, nuisance)[:2])


def render(code: np.ndarray, nuisance: Nuisance, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one image; returns (H x W x 3 uint8 image, H x W bool object mask)."""
    ss = SUPERSAMPLE
    n = size * ss
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    # Background: a two-colour gradient, then clutter glyphs behind the object.
    t = (np.cos(nuisance.background_angle) * xs + np.sin(nuisance.background_angle) * ys) / n
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0, c1 = (np.array(c, np.float32) for c in nuisance.background)
    canvas = c0 * (1 - t[..., None]) + c1 * t[..., None]
    for item in nuisance.clutter:
        r = item["radius"] * ss
        ca, sa = math.cos(item["angle"]), math.sin(item["angle"])
        dx, dy = xs - item["x"] * ss, ys - item["y"] * ss
        mask = _glyph_mask(item["glyph"], (ca * dx + sa * dy) / r, (-sa * dx + ca * dy) / r)
        canvas[mask] = item["rgb"]

    u, v = _body_frame(nuisance, xs, ys, ss)
    body = (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1.0
    head = (u - 1.0) ** 2 + (v + 0.45) ** 2 <= 0.38**2
    tail = (u <= -0.8) & (u >= -1.55) & (np.abs(v) <= 0.36 * (-0.8 - u) / 0.75 + 0.06)
    beak = (u >= 1.3) & (u <= 1.65) & (np.abs(v + 0.45) <= 0.1 * (1.65 - u) / 0.35 + 0.01)
    obj = body | head | tail | beak
    canvas[body | head | tail] = nuisance.body_rgb
    canvas[beak] = (200, 150, 40)
    canvas[(u - 1.12) ** 2 + (v + 0.55) ** 2 <= 0.06**2] = (10, 10, 10)

    for slot, variant in enumerate(code):
        variant = nuisance.free_markings[slot] if variant == FREE else variant
        pu, pv, pr = _slot_geometry(slot, nuisance)
        a, b = (u - pu) / pr, (v - pv) / pr
        if nuisance.occluded[slot]:
            canvas[(np.abs(a) <= 1.15) & (np.abs(b) <= 1.15)] = nuisance.occluder_rgb[slot]
        else:
            glyph, colour = marking(slot, int(variant))
            canvas[_glyph_mask(glyph, a, b)] = COLOURS[colour]

    # Lighting: global gain, colour cast and a linear shading gradient; then sensor noise.
    shade = 1.0 + nuisance.shade[0] * (xs / n - 0.5) + nuisance.shade[1] * (ys / n - 0.5)
    canvas = canvas * (nuisance.gain * shade)[..., None] * np.array(nuisance.cast, np.float32)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).resize((size, size), Image.BOX)
    pixels = np.asarray(image, np.float32)
    noise = np.random.default_rng(nuisance.noise_seed).normal(0, nuisance.noise_std, pixels.shape)
    pixels = np.clip(np.round(pixels + noise), 0, 255).astype(np.uint8)
    object_mask = obj.reshape(size, ss, size, ss).any(axis=(1, 3))
    return pixels, object_mask


def part_region(slot: int, nuisance: Nuisance, size: int, margin_px: float = 1.0) -> np.ndarray:
    """Pixels (output resolution) that slot ``slot`` can touch, occluder square included."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    u, v = _body_frame(nuisance, xs, ys, 1)
    pu, pv, pr = _slot_geometry(slot, nuisance)
    reach = pr * 1.15 * math.sqrt(2) + margin_px / nuisance.scale
    return np.hypot(u - pu, v - pv) <= reach


def stream_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """Independent random streams (codes, splits, images) so that each image is reproducible alone."""
    return np.random.default_rng([seed, stream, index])


def generate(out: str | Path, classes: int, images_per_class: int, size: int, seed: int,
             params: SynthParams = SynthParams(), test_fraction: float = 0.5,
             identity_parts: int | None = None, exclude_classes_of: Sequence[str | Path] = ()) -> Path:
    """Write the data set under ``out/CUB_200_2011``; same arguments, same bytes. ``identity_parts``: see the
    module's docstring (None: every slot identifies the class). ``exclude_classes_of``: sets (folders written by this
    function) whose classes this one must not have, e.g. a pretraining set of other classes."""
    if classes < 2:
        raise FgkdError(f"--classes must be at least 2 (got {classes})")
    if images_per_class < 2:
        raise FgkdError(f"--images-per-class must be at least 2, one for train and one for test (got {images_per_class})")
    if size < 16:
        raise FgkdError(f"--size must be at least 16 pixels (got {size})")
    if not 0 < test_fraction < 1:
        raise FgkdError(f"test fraction must be in (0, 1) (got {test_fraction})")
    params.check()
    if seed < 0:
        raise FgkdError(f"--seed must be >= 0 (got {seed})")
    if exclude_classes_of and identity_parts is not None:
        raise FgkdError("--exclude-classes-of works in the default mode only (every slot identifies the class); "
                        "leave out --identity-parts")
    exclude = [code for other in exclude_classes_of for code in read_class_codes(other)]
    root = Path(out) / "CUB_200_2011"
    if (root / "images.txt").exists():
        raise FgkdError(f"{root} already holds a data set; remove it or choose another --out")
    codes = class_codes(classes, stream_rng(seed, CODE_STREAM, 0), identity_parts, exclude)
    free = free_slots(codes)
    names = [f"{c + 1:03d}.Species_{c + 1:03d}" for c in range(classes)]
    n_test = min(max(1, round(images_per_class * test_fraction)), images_per_class - 1)
    lines = {key: [] for key in ("images", "labels", "split", "boxes", "part_locs")}
    image_id, test_labels = 0, []
    for label, name in enumerate(names):
        folder = root / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        test_members = set(stream_rng(seed, SPLIT_STREAM, label).permutation(images_per_class)[:n_test].tolist())
        for j in range(images_per_class):
            image_id += 1
            nuisance = sample_nuisance(stream_rng(seed, IMAGE_STREAM, image_id), size, params, free)
            pixels, mask = render(codes[label], nuisance, size)
            relative = f"{name}/{name.split('.', 1)[1]}_{j + 1:04d}.jpg"
            Image.fromarray(pixels).save(root / "images" / relative, quality=SYNTH_JPEG_QUALITY)
            ys, xs = np.nonzero(mask)
            box = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) if len(xs) else (0, 0, size, size)
            lines["images"].append(f"{image_id} {relative}")
            lines["labels"].append(f"{image_id} {label + 1}")
            lines["split"].append(f"{image_id} {0 if j in test_members else 1}")
            test_labels += [label] if j in test_members else []
            lines["boxes"].append(f"{image_id} " + " ".join(f"{float(x):.1f}" for x in box))
            for slot, part in enumerate(PART_SLOTS):
                x, y = slot_centre(slot, nuisance)
                visible = int(not nuisance.occluded[slot] and 0 <= x < size and 0 <= y < size)
                lines["part_locs"].append(f"{image_id} {slot + 1} {x:.1f} {y:.1f} {visible}")

    def write(name: str, rows: list[str]) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(rows) + "\n")

    write("classes.txt", [f"{i + 1} {n}" for i, n in enumerate(names)])
    write("image_class_labels.txt", lines["labels"])
    write("train_test_split.txt", lines["split"])
    write("bounding_boxes.txt", lines["boxes"])
    write("parts/parts.txt", [f"{i + 1} {p.name}" for i, p in enumerate(PART_SLOTS)])
    write("parts/part_locs.txt", lines["part_locs"])
    meta = {
        "generator": "fgkd.data.synth",
        "seed": seed, "classes": classes, "images_per_class": images_per_class, "size": size,
        "test_fraction": test_fraction, "params": asdict(params),
        "part_slots": [p.name for p in PART_SLOTS],
        "class_parts": {n: [None if v == FREE else variant_name(s, int(v)) for s, v in enumerate(codes[i])]
                        for i, n in enumerate(names)},
    }
    if exclude_classes_of:
        meta["excluded_classes"] = {"of": [str(p) for p in exclude_classes_of], "classes": len(exclude)}
    if identity_parts is not None:
        shared = [np.unique(codes[:, s], return_counts=True)[1] for s in range(identity_parts)]
        caps = one_part_caps(codes, np.array(test_labels))
        meta["identity"] = {
            "mode": "combination", "parts": identity_parts, "slots": [p.name for p in PART_SLOTS[:identity_parts]],
            "markings_per_slot": markings_per_slot(classes, identity_parts),
            "classes_per_marking": {"min": int(min(c.min() for c in shared)), "max": int(max(c.max() for c in shared))},
            "other_slots": "a marking drawn per image, independent of the class (null in class_parts)",
            "one_part_cap": {**caps, "overall": max(caps.values())}, "one_part_cap_split": "test",
        }
    (root / "synthetic.json").write_text(json.dumps(meta, indent=1) + "\n")
    # images.txt last: its presence marks a complete data set.
    write("images.txt", lines["images"])
    return root
