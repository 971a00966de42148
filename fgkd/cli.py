"""The `fgkd` command line: a thin click layer over the library."""

from __future__ import annotations

import functools

import click

from .errors import FgkdError


def _friendly(command):
    """Report FgkdError as one line (`Error: ...`, exit 1) instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FgkdError as err:
            raise click.ClickException(str(err)) from None

    return wrapper


@click.group()
@click.version_option(package_name="fgkd")
def main():
    """Fine-grained classification by knowledge distillation."""


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write CUB_200_2011/ into.")
@click.option("--classes", default=10, show_default=True, help="Number of classes.")
@click.option("--images-per-class", default=60, show_default=True, help="Images per class (train + test).")
@click.option("--size", default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--occlusion", default=0.25, show_default=True, help="Probability that each part is occluded.")
@click.option("--test-fraction", default=0.5, show_default=True, help="Share of each class in the test split.")
@_friendly
def synth(out, classes, images_per_class, size, seed, occlusion, test_fraction):
    """Generate the synthetic fine-grained data set in the CUB-200-2011 layout."""
    from .data.synth import SynthParams, generate

    root = generate(out, classes, images_per_class, size, seed, SynthParams(occlusion_prob=occlusion), test_fraction)
    click.echo(f"wrote {classes * images_per_class} images in {classes} classes to {root}")


@main.command()
@click.argument("dataset", type=click.Choice(["cub", "cars", "aircraft"]))
@click.option("--root", required=True, type=click.Path(), help="The data set's folder or official archive.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for manifest.parquet and images/.")
@click.option("--resize", default=512, show_default=True, help="Short side of the stored copies (never upscaled).")
@click.option("--workers", default=None, type=int, help="Decoding processes (default: CPU count, at most 8).")
@_friendly
def prepare(dataset, root, out, resize, workers):
    """Check a raw data set and write its manifest and resized images."""
    from .data.prepare import prepare as run_prepare

    manifest = run_prepare(dataset, root, out, resize=resize, workers=workers)
    click.echo(f"wrote {manifest}")
