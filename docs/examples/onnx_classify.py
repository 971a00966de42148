"""Classify photos with a model from `fgkd export --format onnx`, on onnxruntime alone (numpy, Pillow, onnxruntime).

It shows that the model card beside the model (birds.onnx -> birds.onnx.json) holds all else a deployment needs: the
class names, the input and output names, and the preprocessing the network was trained with. Usage:

    python onnx_classify.py deploy/birds.onnx photo1.jpg [photo2.jpg ...]

prints each photo's five most probable classes, one line each: image, rank, class, probability.
"""

import json
import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

# The preprocessing this script can follow: the values a card's fields hold (fgkd/export.py, model_card). Both resize
# with PIL's bilinear; `fgkd classify` resizes "on uint8 pixels" with torchvision, up to one grey level apart.
KNOWN = {"resize_mode": ("square: resize x resize, aspect not kept", "short side to resize, aspect kept"),
         "interpolation": ("bilinear, antialiased, on the PIL image", "bilinear, antialiased, on uint8 pixels"),
         "crop_mode": ("centre",), "scale": ("pixel values / 255",)}


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def preprocess(path, recipe):
    """One image file as the network's input, 1 x 3 x crop x crop float32, resized and cropped as torchvision does."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")  # upright, as the camera meant it; 8-bit RGB
    size, crop = recipe["resize"], recipe["crop"]
    if recipe["resize_mode"].startswith("square"):
        width = height = size
    elif image.width <= image.height:  # the short side to `size`, the long one scaled and truncated
        width, height = size, int(size * image.height / image.width)
    else:
        width, height = int(size * image.width / image.height), size
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = round((width - crop) / 2), round((height - crop) / 2)  # as torchvision's CenterCrop (half to even)
    pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
    pixels = (pixels - np.float32(recipe["mean"])) / np.float32(recipe["std"])
    return pixels.transpose(2, 0, 1)[None]  # height x width x RGB -> 1 x RGB x height x width


def main(model, images):
    card_file = f"{model}.json"
    try:
        with open(card_file, encoding="utf-8") as file:
            card = json.load(file)
    except (OSError, ValueError) as error:
        fail(f"{card_file}: cannot read the model card ({error}); it is written beside the model by `fgkd export`")
    recipe = card.get("preprocessing") or {}
    for field, values in KNOWN.items():
        if recipe.get(field) not in values:
            fail(f"{card_file}: preprocessing {field} {recipe.get(field)!r} is not one this script knows "
                 f"({' or '.join(map(repr, values))}); classify with `fgkd classify` or extend preprocess()")
    names = card["class_names"]  # null for a model.pt of an earlier fgkd: classes are shown by their index
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    status = 0
    for path in images:
        try:
            batch = preprocess(path, recipe)
        except OSError as error:  # not an image, truncated, missing: say so and go on with the others
            print(f"{path}: not a readable image ({error}); skipped", file=sys.stderr)
            status = 1
            continue
        logits = session.run([card["output"]["name"]], {card["input"]["name"]: batch})[0][0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        for rank, c in enumerate(np.argsort(-probabilities, kind="stable")[:5], 1):
            print(f"{path}  {rank}  {names[c] if names else c}  {probabilities[c]:.6f}")
    return status


if __name__ == "__main__":
    if len(sys.argv) < 3:
        fail("usage: python onnx_classify.py MODEL.onnx IMAGE [IMAGE ...]")
    sys.exit(main(sys.argv[1], sys.argv[2:]))
