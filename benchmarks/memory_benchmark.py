"""Peak host memory of the paper scale: loading, one training epoch and one retraining round at
224 px.

The paper scale keeps every split as stored (uint8), oversamples by index and turns images into
float32 a batch at a time, so its memory is the stored bytes of the sampled splits plus what one
batch of the model needs. This script measures it: it writes an npz shaped like the real 224 px
file (random pixels, the real class proportions, ``--images`` training images), then, in one
process, loads it with the paper preset, trains the model one epoch and runs one retraining
round (UAPs, the half-perturbed set, one more epoch), printing the peak resident memory after
each stage. Run it twice with different ``--images``: the peak grows by the stored bytes of the
extra images, not by their float32 copies. The bound for the real set size is then

    peak(measured) + (real training images - measured) x bytes per stored image.

    python benchmarks/memory_benchmark.py [--dataset derma] [--images 600]
        [--architecture inception_v3]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

GIB = 2**30


def peak_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def write_npz(folder: Path, name: str, train_images: int, seed: int = 0) -> Path:
    """A 224 px npz like MedMNIST's: random pixels, the real class proportions, the real val/test
    sizes."""
    from helpers.data import get_info
    from helpers.synthetic import synthetic_labels

    info, rng = get_info(name), np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        count = train_images if split == "train" else info.n_samples[split]
        shape = (count, 224, 224) + ((3,) if info.channels == 3 else ())
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        labels = synthetic_labels(rng, info, split, count)
        arrays[f"{split}_labels"] = labels.reshape(count, -1).astype(np.uint8)
    path = folder / info.filename(224)
    np.savez(path, **arrays)
    return path


def stored_bound() -> list[tuple[str, float, float]]:
    """Per dataset at the paper scale (224 px): (name, GiB stored by its sampled splits, GiB of its
    largest raw split).

    An upper bound from the official split sizes: a split is counted whole unless paper 000 draws a
    class-balanced training or test subset from it (at most ``per_class`` images of each class); the
    ChestMNIST training split is counted with its normal images, which training leaves out. While a
    split is loaded, the whole raw array is in memory besides the sampled copy (then it is
    released).
    """
    from helpers.data import DATASETS

    rows = []
    for name, info in DATASETS.items():
        per_image = 224 * 224 * info.channels
        kept = 0
        for split in ("train", "val", "test"):
            # val: kept whole
            cap = {"train": info.train_per_class, "test": info.test_per_class}.get(split)
            counts = (info.class_counts or {}).get(split)
            kept += sum(min(c, cap) for c in counts) if cap and counts else info.n_samples[split]
        rows.append((name, kept * per_image / GIB, max(info.n_samples.values()) * per_image / GIB))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="derma", help="derma (oversampled), chest, oct or pneumonia"
    )
    parser.add_argument(
        "--images", type=int, default=600, help="training images in the npz (real: see the output)"
    )
    parser.add_argument(
        "--architecture", default="inception_v3", help="the model trained (paper: seven)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training batch (paper 000: 32)")
    parser.add_argument(
        "--bound", action="store_true", help="only print the stored-bytes bound of every dataset"
    )
    args = parser.parse_args(argv)
    if args.bound:
        rows = stored_bound()
        for name, kept, raw in rows:
            print(
                f"{name:<10} stored {kept:5.2f} GiB, largest raw split while loading {raw:5.2f} GiB"
            )
        print(
            f"all four {sum(kept for _, kept, _ in rows):5.2f} GiB stored; loading adds at most "
            f"{max(raw for _, _, raw in rows):5.2f} GiB for a moment"
        )
        return 0

    import warnings

    from helpers import data, models, retrain, training, uap
    from helpers.scales import get_preset

    warnings.filterwarnings("ignore", message=".*MD5 differs.*")
    preset = get_preset("paper", batch_size=args.batch_size, epochs=1)
    info = data.get_info(args.dataset)
    print(
        f"{info.title}, {args.images} training images at 224 px, {args.architecture} at "
        f"{preset.backbone_input} px, batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory() as folder:
        write_npz(Path(folder), info.key, args.images)
        print(f"after writing the npz:        peak {peak_gib():5.2f} GiB")
        start = time.perf_counter()
        splits = data.load_for_scale(info.key, preset, root=folder, source="real", verbose=False)
    train = splits["train"]
    stored = sum(split.stored_bytes for split in splits.values())
    print(
        f"after loading:                peak {peak_gib():5.2f} GiB  ({len(train)} training images "
        f"from {len(train.stored)} stored, {stored / GIB:.2f} GiB stored in all splits)"
    )
    model = models.model_for(info, args.architecture, 224, None, preset.backbone_input)
    training.fit(model, train, splits["val"], epochs=1, batch_size=args.batch_size)
    print(f"after one training epoch:     peak {peak_gib():5.2f} GiB")
    if not info.multilabel:
        attack, _ = data.draw_distinct(train, 32, np.random.default_rng(0))
        result = uap.universal_perturbation(
            model,
            attack,
            zeta=0.04,
            norm=2,
            eps=preset.uap_eps,
            i_max=1,
            mode="batched",
            progress=False,
        )
        mixed, _ = retrain.retraining_set(train, [result.perturbation], seed=1)
        training.fit(model, mixed, splits["val"], epochs=1, batch_size=args.batch_size)
        print(f"after one retraining round:   peak {peak_gib():5.2f} GiB")
    per_image = int(np.prod(train.shape))
    real = info.n_samples["train"]
    print(
        f"{time.perf_counter() - start:.0f} s; one stored image: {per_image / 2**20:.3f} MiB; the "
        f"real training split has {real} images: bound = peak + ({real} - {args.images}) "
        f"x {per_image / 2**20:.3f} MiB "
        f"= {peak_gib() + max(0, real - args.images) * per_image / GIB:.2f} GiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
