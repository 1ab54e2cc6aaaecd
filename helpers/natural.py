"""Natural images for UAPs made without medical data (paper 001, Minagi et al. 2022).

The attacker has no medical images, only ordinary photographs. They are resized to the
model's input, converted to grey for greyscale tasks (as the paper does), and used as the UAP's
attack set; the UAP's size xi still comes from the mean norm of the *medical* images.

Sources, in order: a folder given as ``folder=`` or by ``$NATURAL_IMAGES_DIR`` (any jpg/png, any
size), else the openly licensed sample photographs shipped with scikit-image (public domain /
CC0), cut into random crops. On Colab, any folder of photos works, e.g. Imagenette
(``https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz``, a 10-class ImageNet subset:
ImageNet's terms, research and teaching only)::

    !wget -q https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz
    !tar xzf imagenette2-160.tgz
    os.environ["NATURAL_IMAGES_DIR"] = "imagenette2-160/train"

Introduced in chapter 4 (UAPs from natural images).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from . import uap
from .checks import check_int, settings_from
from .config import ENV_NATURAL_DIR

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
#: Openly licensed photographs in scikit-image (name: licence): everyday scenes and textures, no
#: medical or microscopy images (paper 001's attacker has no medical data), each photo once.
SKIMAGE_PHOTOS = {
    "astronaut": "public domain (NASA)",
    "chelsea": "CC0",
    "coffee": "CC0",
    "rocket": "public domain",
    "camera": "CC0",
    "hubble_deep_field": "public domain (NASA)",
    "brick": "CC0",
    "grass": "CC0",
    "gravel": "CC0",
}


def _to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    image = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[..., None] if channels == 1 else array


def _check(size: int, channels: int) -> None:
    if not (isinstance(size, (int, np.integer)) and size >= 8):
        raise ValueError(f"size={size!r}: give the model's input side in px (>= 8).")
    if channels not in (1, 3):
        raise ValueError(
            f"channels={channels!r}: 1 (grey, converted as the paper does) or 3 (RGB)."
        )


def image_files(folder) -> list[Path]:
    """Image files below ``folder`` (recursively), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not a folder of photos.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(
            f"folder={str(folder)!r} holds no images ({', '.join(sorted(EXTENSIONS))})."
        )
    return files


def load_folder(
    folder, size: int, channels: int, count: int | None = None, seed: int = 0
) -> np.ndarray:
    """Up to ``count`` photos from ``folder`` (random choice), as float32 (N, size, size, channels)
    in [0, 1]."""
    _check(size, channels)
    files = image_files(folder)
    if count is not None and count < len(files):
        files = [
            files[i]
            for i in sorted(np.random.default_rng(seed).choice(len(files), count, replace=False))
        ]
    arrays = []
    for path in files:
        try:
            with Image.open(path) as image:
                arrays.append(_to_array(image, size, channels))
        except OSError:
            continue  # an unreadable file is skipped, not fatal
    if not arrays:
        raise ValueError(f"folder={str(folder)!r}: none of its images could be read.")
    return np.stack(arrays)


def skimage_photos() -> dict:
    """The photographs of :data:`SKIMAGE_PHOTOS` this scikit-image has (name: PIL image)."""
    # scikit-image's sample data only where no folder of photos is given
    from skimage import data as skdata

    photos = {}
    for name in SKIMAGE_PHOTOS:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            array = np.asarray(loader())
        except Exception:  # a sample that needs a download (pooch) is skipped offline
            continue
        if array.ndim == 3 and array.shape[-1] == 4:
            array = array[..., :3]
        photos[name] = Image.fromarray(
            array if array.dtype == np.uint8 else (255 * array).astype(np.uint8)
        )
    return photos


def sample_photos(size: int, channels: int, count: int = 200, seed: int = 0) -> np.ndarray:
    """``count`` random crops (20-100 % of the side) of scikit-image's openly licensed
    photographs."""
    _check(size, channels)
    photos = list(skimage_photos().values())
    if not photos:
        raise ValueError(
            f"none of scikit-image's sample photographs could be loaded; set {ENV_NATURAL_DIR} "
            f"(or folder=) to a folder of photos instead."
        )
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        side = int(min(photo.size) * rng.uniform(0.2, 1.0))
        left, top = (
            rng.integers(0, photo.size[0] - side + 1),
            rng.integers(0, photo.size[1] - side + 1),
        )
        crops.append(_to_array(photo.crop((left, top, left + side, top + side)), size, channels))
    return np.stack(crops)


FOLDER_HELP = (
    f"Point {ENV_NATURAL_DIR} at a folder of natural photos (any jpg/png; sub-folders are "
    "searched): ImageNet's ILSVRC-2012 training images, as paper 001 used, an Open Images "
    "download, or Imagenette (see this module's docstring)."
)


def natural_images(
    size: int, channels: int, count: int = 200, folder=None, seed: int = 0, scale: str | None = None
) -> tuple[np.ndarray, str]:
    """Natural images for a model's input, and a description of where they came from.

    Without a folder the images are crops of at most a dozen scikit-image photos, far from
    paper 001's 100,000 ImageNet images: at ``scale="gpu"`` that is said in a banner, and
    ``scale="paper"`` refuses to run without a folder.
    """
    folder = folder or os.environ.get(ENV_NATURAL_DIR)
    if folder:
        images = load_folder(folder, size, channels, count, seed)
        return images, f"{len(images)} photos from {folder}"
    if scale == "paper":
        raise ValueError(
            f"scale 'paper' reproduces paper 001 with {count:,} natural photos, but no folder of "
            f"photos was given, only scikit-image's few sample photographs. {FOLDER_HELP}"
        )
    images = sample_photos(size, channels, count, seed)
    description = f"{len(images)} crops of scikit-image's openly licensed sample photographs"
    if scale in ("gpu", "gpu-rehearsal", "paper-rehearsal"):
        print(
            "!" * 78
            + (
                f"\n!! NATURAL IMAGES: {description}, not ImageNet: far less varied than paper "
                "001's\n!! attack set, so the natural-image UAPs are weaker than the paper's.\n"
                f"!! {FOLDER_HELP}\n"
            )
            + "!" * 78
        )
    return images, description


def label_composition(predictions, class_names) -> pd.Series:
    """Share of images predicted as each class (paper 001, Tables S1-S3)."""
    counts = np.bincount(np.asarray(predictions), minlength=len(class_names))
    return pd.Series(
        counts / max(counts.sum(), 1), index=list(class_names), name="share of natural images"
    )


def iter_folder(
    folder, size: int, channels: int, count: int | None = None, chunk: int = 1000, seed: int = 0
):
    """Photos of ``folder`` in random order, loaded ``chunk`` at a time (for sets too big for
    memory)."""
    files = image_files(folder)
    order = np.random.default_rng(seed).permutation(len(files))[:count]
    for start in range(0, len(order), chunk):
        arrays = []
        for index in order[start : start + chunk]:
            try:
                with Image.open(files[index]) as image:
                    arrays.append(_to_array(image, size, channels))
            except OSError:
                continue
        if arrays:
            yield np.stack(arrays)


def uap_in_chunks(
    model,
    images,
    settings: uap.UAPSettings | None = None,
    *,
    eval_images,
    chunk: int = 1000,
    progress: bool = True,
    **options,
) -> tuple:
    """One pass (i_max = 1) over natural images, chunk by chunk, each chunk warm-starting from the
    last.

    ``images`` is an array (N, H, W, C), split into chunks of ``chunk`` images in random order,
    or an iterable of such arrays (e.g. :func:`iter_folder`, for 100,000 photos). ``settings``: a
    :class:`~helpers.uap.UAPSettings` with the size as ``xi`` (that of the medical images), or its
    fields as keywords; its ``i_max`` is set to 1, and chunk k is passed over with seed + k.
    ``progress`` shows one progress bar over the chunks. Returns the final
    :class:`~helpers.uap.UAPResult` and a DataFrame of R_f (R_s) on ``eval_images`` after each
    chunk (how the rate grows with the number of photos seen; paper 001 reports only the final
    UAPs).
    """
    settings = replace(settings_from(uap.UAPSettings, settings, options, "uap_in_chunks"), i_max=1)
    check_int("chunk", chunk, 1, "images per chunk")
    chunks, total = images, None
    if isinstance(images, np.ndarray):
        order = np.random.default_rng(settings.seed).permutation(len(images))
        chunks = (images[order[i : i + chunk]] for i in range(0, len(images), chunk))
        total = -(-len(images) // chunk)
    perturbation, rows, result, used = None, [], None, 0
    for number, part in enumerate(
        tqdm(chunks, total=total, desc="natural-image UAP", unit="chunk", disable=not progress)
    ):
        result = uap.universal_perturbation(
            model,
            part,
            replace(settings, seed=settings.seed + number),
            init=perturbation,
            eval_images=eval_images,
            progress=False,
        )
        perturbation, used = result.perturbation, used + len(part)
        rows.append({"natural images used": used, "rate": result.eval_rates[-1]})
    if result is None:
        raise ValueError("images is empty: give at least one natural image.")
    return result, pd.DataFrame(rows)
