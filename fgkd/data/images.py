"""The one image decoder: `fgkd prepare`, the training and test images, `fgkd classify`, its overlays and the part
occlusion all read pixels through ``open_rgb``, so that a network sees a user's photo exactly as it saw its data set.

Torch-free (prepare's decoding processes import it)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import DataError

# What PIL raises for a file that is not an image, truncated, damaged or too large to decode safely.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

ORIENTATION = 0x0112  # the EXIF tag a camera sets instead of rotating the pixels
# EXIF orientation -> the transposition that shows the picture upright (as ImageOps.exif_transpose).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def open_rgb(source: str | Path | BinaryIO, draft: tuple[int, int] | None = None, crop_bottom: int = 0) -> Image.Image:
    """An image file as an upright 8-bit RGB picture.

    - Pixels wider than 8 bits are scaled, not clipped (PIL's ``convert`` turns a 16-bit PNG white and a 0..1 float
      TIFF black): 16-bit ones by their full range, 32-bit integer and float ones by their own min..max.
    - ``crop_bottom`` rows (FGVC-Aircraft's copyright banner) are cut off the stored picture, then the EXIF
      orientation is applied, so that a phone photo is seen upright.
    - ``draft``: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale while it stays at least this (width, height) large,
      the banner included (fgkd prepare, which shrinks the image anyway).
    """
    with warnings.catch_warnings():
        # Pillow warns (and decodes) between its pixel limit and twice it, and refuses above: a line of noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source)
    with image:
        stored_height = image.height
        orientation = image.getexif().get(ORIENTATION, 1)
        if draft is not None:
            image.draft("RGB", draft)
        picture = _eight_bit_rgb(image, source)
    if crop_bottom:
        # Rounded up: a JPEG decoded at reduced scale (draft) blends the banner into a partial row.
        crop = math.ceil(crop_bottom * picture.height / stored_height)
        if crop >= picture.height:
            raise DataError(f"{source}: only {stored_height} px tall, nothing is left once its {crop_bottom} px "
                            "copyright banner is cut off; remove it from the index")
        picture = picture.crop((0, 0, picture.width, picture.height - crop))
    return picture.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else picture


def _eight_bit_rgb(image: Image.Image, source) -> Image.Image:
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.float64) / 257
    elif image.mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = pixels.min(), pixels.max()
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise DataError(f"{source}: {image.mode} image with values {low}..{high}, its brightness range is unknown; "
                            "convert it to 8 bits yourself, or leave it out")
        pixels = (pixels - low) * (255 / (high - low))
    else:
        return image.convert("RGB")
    return Image.fromarray(np.round(pixels).astype(np.uint8)).convert("RGB")
