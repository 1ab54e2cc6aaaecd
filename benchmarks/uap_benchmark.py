"""Time ART's UAP and targeted UAP against the course helper's faithful and batched modes.

Same model (the pneumonia small CNN of a scale, from the course cache, trained if absent),
same images, same settings (FGSM attacker with sign steps of strength eps, UAP of size
zeta x mean image norm, i_max passes), for p = 2 and p = inf. Prints a markdown table:
time, speed-up over ART, and the fooling rate R_f (targeted: success rate R_s) on held-out
test images. See benchmarks/README.md.

    python benchmarks/uap_benchmark.py [--images 500] [--eval 300] [--i-max 5] [--scale smoke]
        [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images", type=int, default=500, help="training images the UAPs are computed from"
    )
    parser.add_argument(
        "--eval", type=int, default=300, help="held-out test images the rates are measured on"
    )
    parser.add_argument("--i-max", type=int, default=5, help="passes over the images")
    parser.add_argument(
        "--scale", default="smoke", help="scale preset whose pneumonia small CNN is attacked"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="order of the passes (ART: random.seed)"
    )
    parser.add_argument(
        "--zeta", type=float, default=0.04, help="UAP size as a fraction of the mean image norm"
    )
    parser.add_argument("--eps", type=float, default=0.01, help="FGSM step strength (pixel units)")
    parser.add_argument(
        "--target", type=int, default=1, help="class of the targeted UAPs (pneumonia: 1)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images per update in the batched mode"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed calls of each helper mode (the fastest counts)"
    )
    args = parser.parse_args(argv)
    for name in ("images", "eval", "i_max", "batch_size", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.zeta > 0 or not args.eps > 0:
        parser.error("--zeta and --eps must be positive")
    return args


def load_model(scale: str, seed: int):
    from helpers import data, scales, training

    preset = scales.get_preset(scale)
    splits = data.load_for_scale("pneumonia", preset, seed=seed, verbose=True)
    trained = training.get_or_train(splits, "small_cnn", preset, seed=seed, verbose=True)
    return splits, trained


def run_art(classifier, images, xi, norm, args, target):
    """ART 1.20 as shipped; returns (perturbation (H, W, C), seconds)."""
    from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation

    random.seed(args.seed)
    np.random.seed(args.seed)
    start = time.perf_counter()
    if target is None:
        attack = UniversalPerturbation(
            classifier,
            attacker="fgsm",
            attacker_params={"eps": args.eps},
            delta=1e-6,
            max_iter=args.i_max,
            eps=float(xi),
            norm=norm,
            verbose=False,
        )
        attack.generate(images)
    else:
        attack = TargetedUniversalPerturbation(
            classifier,
            attacker="fgsm",
            attacker_params={"eps": args.eps, "targeted": True},
            delta=1e-6,
            max_iter=args.i_max,
            eps=float(xi),
            norm=norm,
        )
        one_hot = np.eye(classifier.nb_classes, dtype=np.float32)[np.full(len(images), target)]
        attack.generate(images, y=one_hot)
    return attack.noise[0], time.perf_counter() - start


def run_helper(model, images, xi, norm, args, target, mode):
    """(perturbation, seconds of the fastest of ``args.repeat`` calls after the first, seconds of
    the first)."""
    from helpers import uap

    def call():
        start = time.perf_counter()
        result = uap.universal_perturbation(
            model,
            images,
            xi=xi,
            norm=norm,
            eps=args.eps,
            i_max=args.i_max,
            target=target,
            mode=mode,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=False,
        )
        return result.perturbation, time.perf_counter() - start

    # the first call traces the helper's tf.functions anew
    getattr(uap, "_COMPILED", {}).pop(model, None)
    first, first_seconds = call()
    seconds = []
    for _ in range(args.repeat):  # these reuse them
        again, elapsed = call()
        assert np.array_equal(first, again), "the helper is not deterministic"
        seconds.append(elapsed)
    return first, min(seconds), first_seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    import art
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # no retracing notices from the first calls

    from helpers import uap
    from helpers.models import to_art_classifier

    splits, trained = load_model(args.scale, args.seed)
    model = trained.model
    train, test = splits["train"], splits["test"]
    images, held_out = train.images[: args.images], test.images[: args.eval]
    n_classes = int(model.output_shape[-1])
    if not 0 <= args.target < n_classes:
        raise SystemExit(f"--target {args.target}: choose a class in [0, {n_classes}).")
    if len(images) < args.images or len(held_out) < args.eval:
        print(
            f"note: the '{args.scale}' scale has {len(train)} training and {len(test)} test "
            f"images; using {len(images)} and {len(held_out)}."
        )
    classifier = to_art_classifier(model)

    # Warm-up: TensorFlow's runtime, ART's compiled forward pass, one helper call.
    run_art(classifier, images[:2], 0.1, 2, argparse.Namespace(**{**vars(args), "i_max": 1}), None)
    uap.universal_perturbation(model, images[:2], xi=0.1, eps=args.eps, i_max=1, progress=False)

    print(
        f"\n{trained.key}: {train.kind} data, {len(images)} training images, {len(held_out)} test "
        f"images, zeta = {args.zeta:g}, eps = {args.eps:g}, i_max = {args.i_max}, "
        f"seed {args.seed}, batch {args.batch_size}, targeted towards class {args.target} "
        f"({train.info.class_names[args.target]})"
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}; TensorFlow {tf.__version__}, "
        f"ART {art.__version__}"
    )
    print(
        "Warm-up before timing: TensorFlow's runtime, ART's compiled forward pass, one helper "
        f"call. A helper's 'time' is the fastest of {args.repeat} calls after its first call with "
        "the same settings (they reuse the tf.functions traced by the first); 'first call' "
        "includes tracing them. ART runs once.\n"
    )

    rows, verdicts, controls = [], [], {}
    for norm in (2, np.inf):
        xi = uap.xi_from_zeta(images, args.zeta, norm)
        p = "2" if norm == 2 else "∞"
        for target in (None, args.target):
            kind = "UAP" if target is None else "TUAP"
            rate_name = "R_f" if target is None else "R_s"
            key = "fooling_rate" if target is None else "success_rate"

            def rate(rho):
                return uap.evaluate(model, held_out, rho, target=target)[key]

            art_rho, art_seconds = run_art(classifier, images, xi, norm, args, target)
            art_rate = rate(art_rho)
            rows.append((f"ART {kind}", p, art_seconds, None, 1.0, rate_name, art_rate))
            print(f"  p = {p}, {kind}: ART {art_seconds:.1f} s", flush=True)
            for mode in ("faithful", "batched"):
                rho, seconds, first = run_helper(model, images, xi, norm, args, target, mode)
                helper_rate = rate(rho)
                rows.append(
                    (
                        f"helper {kind}, {mode}",
                        p,
                        seconds,
                        first,
                        art_seconds / seconds,
                        rate_name,
                        helper_rate,
                    )
                )
                print(
                    f"  p = {p}, {kind}: helper {mode} {seconds:.2f} s (first call {first:.2f} s)",
                    flush=True,
                )
                if mode == "batched":
                    verdicts.append(
                        (
                            p,
                            kind,
                            art_seconds / seconds,
                            art_seconds / first,
                            helper_rate - art_rate,
                        )
                    )
        controls[p] = np.mean(
            [
                uap.evaluate(
                    model, held_out, uap.random_perturbation(images.shape[1:], xi, norm, seed=s)
                )["fooling_rate"]
                for s in range(3)
            ]
        )
    baseline = uap.evaluate(
        model, held_out, np.zeros(images.shape[1:], np.float32), target=args.target
    )

    print("\n| method | p | time (s) | first call (s) | × faster than ART | rate on test images |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for method, p, seconds, first, ratio, rate_name, value in rows:
        first_text = "" if first is None else f"{first:.2f}"
        ratio_text = f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.1f}×"
        print(
            f"| {method} | {p} | {seconds:.2f} | {first_text} | {ratio_text} "
            f"| {rate_name} = {value:.3f} |"
        )
    print(
        f"\nR_s baseline (no perturbation, class {args.target}): "
        f"R_s0 = {baseline['success_baseline']:.3f}. Random noise of the same norm (3 draws): "
        + ", ".join(f"p = {p}: R_f = {value:.3f}" for p, value in controls.items())
        + f". Random-order seed {args.seed}; rates vary by a few points between seeds."
    )
    print("Goal: batched >= 20x faster than ART, rate >= ART's - 2 points.")
    for p, kind, ratio, ratio_first, delta in verdicts:
        ok = ratio >= 20 and delta >= -0.02
        print(
            f"  p = {p} {kind}: batched {ratio:.1f}x faster ({ratio_first:.1f}x counting the "
            f"first call's tracing), rate {100 * delta:+.1f} points vs ART "
            f"-> {'met' if ok else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
