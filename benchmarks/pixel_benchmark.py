"""Time ART's PixelAttack against the course's few-pixel attack (helpers.pixel.pixel_attack).

Same models (the small CNNs of a scale: pneumonia, greyscale; skin lesions, colour - the
synthetic stand-in when the real file is not available), same test images, untargeted, k pixels,
at most ``--generations`` generations of differential evolution. ART 1.20's ``PixelAttack``
(es=1: differential evolution, th=k pixels) attacks one image after the other with SciPy-style
DE (population about 400, best1bin with recombination 1, early stop when its best candidate
succeeds); the helper attacks all images at once (population ``--population``, the paper's
rand/1 without crossover, early stop at the first success) with one model call per generation.
Prints a markdown table: images per second, speed-up over ART, success rate, model queries
(candidate images evaluated) per image and per second - ART's larger population makes it query
about four times as often per generation, so the two speeds are worth reading together.

    python benchmarks/pixel_benchmark.py [--images 20] [--pixels 1 3] [--population 100]
        [--generations 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20, help="test images attacked per dataset")
    parser.add_argument(
        "--pixels", type=int, nargs="+", default=[1, 3], help="pixel counts k (1-3)"
    )
    parser.add_argument(
        "--population", type=int, default=100, help="the helper's DE population (paper: 100)"
    )
    parser.add_argument(
        "--generations", type=int, default=30, help="at most this many generations (ART: max_iter)"
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["pneumonia", "derma"],
        help="pneumonia (grey), derma (colour)",
    )
    parser.add_argument("--scale", default="smoke", help="scale preset whose small CNN is attacked")
    parser.add_argument(
        "--pick",
        choices=("spread", "first"),
        default="spread",
        help="spread: images at evenly spaced ranks of clean confidence (near the boundary to "
        "confident); first: the first test images",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of both attacks (ART: numpy's global seed)"
    )
    parser.add_argument("--skip-art", action="store_true", help="time the helper only")
    args = parser.parse_args(argv)
    if args.images < 1 or args.population < 4 or args.generations < 1:
        parser.error("--images and --generations must be at least 1, --population at least 4")
    if any(k not in (1, 2, 3) for k in args.pixels):
        parser.error("--pixels: choose among 1, 2, 3")
    return args


def load_model(dataset: str, scale: str, seed: int):
    from helpers import data, scales, training

    preset = scales.get_preset(scale)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MD5.*")
        splits = data.load_for_scale(dataset, preset, seed=seed, verbose=False)
    return splits, training.get_or_train(splits, "small_cnn", preset, seed=seed, verbose=True)


def pick_images(model, test, n: int, how: str) -> np.ndarray:
    from helpers.models import predict_proba

    if how == "first":
        return test.images[:n]
    order = np.argsort(predict_proba(model, test.images).max(axis=1))
    return test.images[
        order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]
    ]


class CountingClassifier:
    """Counts the images an ART classifier is asked to predict (model queries)."""

    def __init__(self, classifier):
        self.images = 0
        original = classifier.predict

        def predict(x, *a, **k):
            self.images += len(x)
            return original(x, *a, **k)

        classifier.predict = predict


def run_art(classifier, counter, images, k: int, generations: int, seed: int):
    """(adversarial images, seconds, queries per image, error text or None)."""
    from art.attacks.evasion import PixelAttack

    np.random.seed(seed)
    counter.images = 0
    start = time.perf_counter()
    try:
        attack = PixelAttack(
            classifier, th=k, es=1, max_iter=generations, targeted=False, verbose=False
        )
        adversarial = attack.generate(images)
    except Exception as error:  # report, do not stop the benchmark
        return None, time.perf_counter() - start, np.nan, f"{type(error).__name__}: {error}"
    return (
        adversarial.astype(np.float32),
        time.perf_counter() - start,
        counter.images / len(images),
        None,
    )


def run_helper(model, images, k: int, args):
    from helpers import pixel

    start = time.perf_counter()
    result = pixel.pixel_attack(
        model,
        images,
        pixels=k,
        population=args.population,
        generations=args.generations,
        seed=args.seed,
        progress=False,
    )
    return result, time.perf_counter() - start


def changed_pixels(adversarial, images) -> int:
    """Largest number of pixel positions changed in any image."""
    return int(
        (np.abs(adversarial - images).max(axis=-1) > 1e-6)
        .reshape(len(images), -1)
        .sum(axis=1)
        .max()
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    import art
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    from helpers import pixel
    from helpers.models import predict_proba, to_art_classifier

    rows, notes = [], []
    for dataset in args.datasets:
        splits, trained = load_model(dataset, args.scale, args.seed)
        model, test = trained.model, splits["test"]
        images = pick_images(model, test, args.images, args.pick)
        clean = predict_proba(model, images).argmax(axis=1)
        channels = "grey" if images.shape[-1] == 1 else "colour"
        label = f"{dataset} ({channels}, {test.kind})"
        notes.append(
            f"{label}: {trained.key}, {len(images)} test images "
            f"({args.pick}), clean confidence {predict_proba(model, images).max(axis=1).min():.2f}-"
            f"{predict_proba(model, images).max(axis=1).max():.2f}"
        )
        classifier = to_art_classifier(model)
        counter = CountingClassifier(classifier)
        # warm-up: TensorFlow's runtime, the helper's compiled forward pass, ART's predict
        pixel.pixel_attack(model, images[:2], population=8, generations=1, progress=False)
        if not args.skip_art:
            run_art(classifier, counter, images[:1], 1, 1, args.seed)
        for k in args.pixels:
            result, seconds = run_helper(model, images, k, args)
            art_seconds, art_row = None, None
            if not args.skip_art:
                adversarial, art_seconds, queries, error = run_art(
                    classifier, counter, images, k, args.generations, args.seed
                )
                if error:
                    notes.append(f"ART PixelAttack failed on {label}, k = {k}: {error}")
                    art_row = [
                        label,
                        k,
                        "ART PixelAttack",
                        len(images),
                        f"{art_seconds:.1f}",
                        "failed",
                        "-",
                        "-",
                        "-",
                        "-",
                    ]
                else:
                    success = predict_proba(model, adversarial).argmax(axis=1) != clean
                    changed = changed_pixels(adversarial, images)
                    art_row = [
                        label,
                        k,
                        "ART PixelAttack",
                        len(images),
                        f"{art_seconds:.1f}",
                        f"{len(images) / art_seconds:.2f}",
                        "1.0",
                        f"{success.mean():.0%}",
                        f"{queries:.0f}",
                        f"{queries * len(images) / art_seconds:.0f}",
                    ]
                    if changed > k:
                        notes.append(f"ART changed up to {changed} pixels for k = {k} on {label}")
                rows.append(art_row)
            speed = (
                f"{art_seconds / seconds:.1f}" if art_seconds and art_row[5] != "failed" else "-"
            )
            rows.append(
                [
                    label,
                    k,
                    "helpers.pixel",
                    len(images),
                    f"{seconds:.1f}",
                    f"{len(images) / seconds:.2f}",
                    speed,
                    f"{result.success_rate:.0%}",
                    f"{result.queries.mean():.0f}",
                    f"{result.queries.sum() / seconds:.0f}",
                ]
            )

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, GPUs: "
        f"{len(tf.config.list_physical_devices('GPU'))}; TensorFlow {tf.__version__}, "
        f"ART {art.__version__}; untargeted, at most {args.generations} generations, helper "
        f"population {args.population}, seed {args.seed}"
    )
    for note in notes:
        print(f"- {note}")
    header = [
        "model (data)",
        "k",
        "method",
        "images",
        "time (s)",
        "images/s",
        "× faster than ART",
        "success rate",
        "model queries/image",
        "model queries/s",
    ]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
