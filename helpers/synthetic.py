"""Synthetic stand-ins for the MedMNIST datasets, for machines without the real data.

Each class (or, for multi-label data, each finding) owns a fixed pattern of soft blobs,
drawn once per dataset; every image is a smooth random background plus its class pattern
(jittered, with random strength) plus pixel noise. The result has the shapes, class
count, class proportions and task type of the real split, and enough structure for a
small CNN to learn - but it is not medical data, and nothing measured on it is a medical
result. Same arguments -> same images.
"""

from __future__ import annotations

import zlib

import numpy as np

BLOBS_PER_PATTERN = 3
PATTERN_AMPLITUDE = 0.22
#: Range of the random strength of an image's class pattern. The two chest X-ray classes differ by
#: one pattern only: at full strength they are perfectly separable and the model is unrealistically
#: sure of itself, so there a share of the images carry their pattern faintly (borderline cases),
#: which brings its accuracy near the real data's (about 90 %).
STRENGTH = {"pneumonia": (0.0, 1.2)}
DEFAULT_STRENGTH = (0.6, 1.3)
# findings are rarer and overlap: stronger than class patterns, so a model learns to report them
MULTILABEL_GAIN = 2.5
NOISE_SD = 0.05


def _seed(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def _patterns(
    key: str, n_patterns: int, channels: int, opacities: bool = False
) -> dict[str, np.ndarray]:
    """Blob centres (P, B, 2), widths (P, B), amplitudes (P, B, C) of each pattern.

    ``opacities=True`` makes every blob brighter than the background (findings on an X-ray
    that add up when several are present); otherwise blobs are brighter or darker.
    """
    rng = np.random.default_rng(_seed("patterns", key))
    centres = rng.uniform(0.2, 0.8, size=(n_patterns, BLOBS_PER_PATTERN, 2))
    widths = rng.uniform(0.05, 0.11, size=(n_patterns, BLOBS_PER_PATTERN))
    signs = rng.choice([-1.0, 1.0], size=(n_patterns, BLOBS_PER_PATTERN, 1))
    if opacities:
        signs = np.abs(signs) * MULTILABEL_GAIN
    tints = rng.uniform(0.5, 1.0, size=(n_patterns, BLOBS_PER_PATTERN, channels))
    return {"centres": centres, "widths": widths, "amplitudes": PATTERN_AMPLITUDE * signs * tints}


def _render(centres, widths, amplitudes, size: int) -> np.ndarray:
    """Sum of Gaussian blobs. centres (N, B, 2), widths (N, B), amplitudes
    (N, B, C) -> (N, S, S, C)."""
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    dy = grid[None, None, :] - centres[..., 0:1]  # (N, B, S)
    dx = grid[None, None, :] - centres[..., 1:2]
    inv = 1.0 / (2.0 * widths[..., None] ** 2)
    gy, gx = np.exp(-(dy**2) * inv), np.exp(-(dx**2) * inv)  # separable Gaussians
    return np.einsum("nby,nbx,nbc->nyxc", gy, gx, amplitudes).astype(np.float32)


def _backgrounds(rng, count: int, size: int, channels: int, colour: bool) -> np.ndarray:
    """Smooth random fields around a mid grey (skin tone for colour images)."""
    base = np.array([0.78, 0.58, 0.50] if colour else [0.45], dtype=np.float32)[:channels]
    centres = rng.uniform(0, 1, size=(count, 4, 2))
    widths = rng.uniform(0.2, 0.4, size=(count, 4))
    amplitudes = rng.normal(0, 0.08, size=(count, 4, 1)) * np.ones((1, 1, channels))
    return base + _render(centres, widths, amplitudes, size)


def _class_images(
    rng, patterns, index: np.ndarray, size: int, strength=DEFAULT_STRENGTH
) -> np.ndarray:
    """The pattern of class index[i] for every image, jittered and with a random strength in
    ``strength``."""
    count = len(index)
    centres = patterns["centres"][index] + rng.normal(0, 0.02, size=(count, BLOBS_PER_PATTERN, 2))
    strength = rng.uniform(*strength, size=(count, 1, 1))
    return _render(
        centres, patterns["widths"][index], strength * patterns["amplitudes"][index], size
    )


def synthetic_labels(rng, info, split: str, count: int) -> np.ndarray:
    """``count`` labels like ``info``'s ``split``: classes (N,) in its official proportions, every
    class present; or, multi-label, 0/1 findings (N, L) at their official prevalence."""
    if info.multilabel:
        return (
            rng.uniform(size=(count, info.n_classes)) < np.array(info.finding_prevalence)
        ).astype(np.uint8)
    weights = np.array(info.class_counts[split], dtype=float)
    labels = rng.choice(info.n_classes, size=count, p=weights / weights.sum())
    labels[: info.n_classes] = np.arange(info.n_classes)  # every class present, even in tiny splits
    return rng.permutation(labels).astype(np.int64)


def synthetic_arrays(
    info, split: str, size: int, seed: int = 0, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, size, size, C) float32 in [0, 1] and labels shaped like ``info``'s ``split``.

    :func:`helpers.data.make_synthetic` wraps them in a :class:`~helpers.data.MedDataset`.

    Args:
        info: the :class:`~helpers.data.DatasetInfo` to imitate.
        split: "train", "val" or "test" (sets the class proportions).
        size: image side in px.
        seed: changes the images, not the class patterns.
        count: number of images (default: the official count, at most 4,000, or 1,000 above 64 px).
    """
    default = 4000 if size <= 64 else 1000
    count = int(count or min(info.n_samples[split], default))
    if count < info.n_classes:
        raise ValueError(
            f"count={count}: a synthetic split needs at least one image per class "
            f"({info.n_classes})."
        )
    rng = np.random.default_rng(_seed(info.key, split, size, seed))
    labels = synthetic_labels(rng, info, split, count)
    patterns = _patterns(info.key, info.n_classes, info.channels, opacities=info.multilabel)
    images = _backgrounds(rng, count, size, info.channels, colour=info.channels == 3)
    if info.multilabel:
        for finding in range(info.n_classes):
            present = np.flatnonzero(labels[:, finding])
            if len(present):
                images[present] += _class_images(
                    rng, patterns, np.full(len(present), finding), size
                )
    else:
        images += _class_images(
            rng, patterns, labels, size, STRENGTH.get(info.key, DEFAULT_STRENGTH)
        )
    images += rng.normal(0, NOISE_SD, size=images.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels
