"""Scale presets: one place that says how big every chapter runs.

Every chapter has a single ``SCALE`` parameter (``smoke``, ``cpu``, ``gpu`` or ``paper``)
and reads everything else from :func:`get_preset`:

* ``smoke`` - continuous integration: about a minute per chapter on two CPU cores,
  28 px images, a small CNN trained from scratch.
* ``cpu``   - a laptop: minutes per chapter, 28 px, small CNN + MobileNetV2.
* ``gpu``   - a Colab T4: at most ~15 min per chapter, 64 px images resized to 128 px
  inside ImageNet-pretrained backbones.
* ``paper`` - the papers' full protocol: 224 px resized to 299 px, seven backbones,
  50 epochs, full attack budgets (hours on a GPU).

A *rehearsal* (``get_preset(SCALE, rehearsal=True)``, a chapter's ``REHEARSAL`` parameter)
runs a scale's shapes and code paths - its architectures, image size, backbone input, UAP
mode, pixel victim, every branch its chapters take - with the tiny budgets of
:data:`REHEARSAL_BUDGETS`, random-initialised backbones and synthetic data, so that the
``gpu`` and ``paper`` paths can be executed on a CPU without the internet. Its numbers
mean nothing; it exists to find what breaks before a reader does.

Introduced in chapter 1 (transfer learning).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

SCALES = ("smoke", "cpu", "gpu", "paper")

#: The seven architectures of paper 000 (Hirano et al. 2021), Inception V3 first.
PAPER_ARCHITECTURES = (
    "inception_v3",
    "vgg16",
    "vgg19",
    "resnet50",
    "inception_resnet_v2",
    "densenet121",
    "densenet169",
)

#: Fields that change what a model learns: overriding any of them gives it another cache key.
TRAINING_FIELDS = (
    "epochs",
    "backbone_epochs",
    "batch_size",
    "backbone_input",
    "train_per_class",
    "test_per_class",
    "max_train",
    "max_test",
    "image_size",
)


@dataclass(frozen=True)
class Preset:
    """Everything a chapter needs to know about its scale."""

    name: str
    image_size: int  # MedMNIST size loaded: 28, 64, 128 or 224 px
    architectures: tuple[str, ...]  # trained and attacked in the chapters
    main_architecture: str  # the one the figures focus on (paper: Inception V3)
    weights: str | None  # "imagenet" or None (random initialisation)
    offline_fallback: bool  # offline: synthetic data / random init instead of failing
    epochs: int  # training epochs (paper 000: 50)
    backbone_epochs: int | None = None  # epochs for ImageNet backbones, if fewer (default: epochs)
    batch_size: int = 32  # paper 000: 32
    backbone_input: int | None = None  # side the model resizes to inside (paper 000: 299)
    train_per_class: int | None = None  # cap on the papers' class-balanced training subsets
    test_per_class: int | None = None  # cap on the papers' class-balanced test subsets
    max_train: int | None = None  # cap on any training set (imbalanced / multi-label)
    max_test: int | None = None  # cap on any test set
    # Attack budgets used by the later chapters.
    uap_images: int = 200  # images the UAP is generated from
    uap_i_max: int = 15  # passes over them (paper 000: 15)
    uap_eps: float = 0.01  # FGSM step strength in [0, 1] pixel units
    uap_mode: str = "faithful"  # "faithful": paper 000's algorithm; "batched": the faster variant
    # UAP size as a fraction of mean image norm
    zeta_grid: tuple[float, ...] = (0.01, 0.02, 0.04, 0.06)
    eval_images: int = 300  # test images a UAP is evaluated on
    natural_images: int = 1000  # natural photos a UAP is made from (paper 001: 100,000, one pass)
    natural_chunk: int = 250  # R_f is logged after every chunk of them (the course's curve)
    pixel_images_per_class: int = 10  # images attacked per class by the pixel attacks
    pixel_architecture: str = ""  # the model the pixel attacks fool (paper 004: ResNet50); "": main
    pixel_population: int = 100  # differential evolution population (paper 004: 100)
    pixel_generations: int = 100  # at most this many generations (paper 004: 100)
    retrain_rounds: int = 5  # adversarial retraining rounds (paper 000: 5)
    retrain_uaps: int = 10  # UAPs per retraining round (paper 000: 10)
    retrain_epochs: int = 5  # extra epochs per round (paper 000: 5)
    rehearsal: bool = False  # tiny budgets, random backbones, synthetic data (see the module)
    # Train each new model in a process of its own: TensorFlow keeps ~0.25 GiB of host memory after
    # every fit (keras-team/keras#17458), 28 fits at paper scale would fill 23 GB.
    fit_in_own_process: bool = False
    notes: str = field(default="", compare=False)

    def epochs_for(self, architecture: str) -> int:
        """Training epochs of ``architecture``: ``backbone_epochs`` for ImageNet backbones."""
        if architecture == "small_cnn" or self.backbone_epochs is None:
            return self.epochs
        return self.backbone_epochs

    def model_tag(self) -> str:
        """The scale name for the cache keys of trained models, e.g. ``cpu`` or ``cpu-1a2b3c4d``.

        A named preset as shipped gives its name; with any of :data:`TRAINING_FIELDS`
        overridden, a short hash of those fields is appended, so the model is trained anew.
        """
        fields = {name: getattr(self, name) for name in TRAINING_FIELDS}
        stock = _PRESETS.get(self.name)
        if (
            stock is not None
            and fields == {name: getattr(stock, name) for name in TRAINING_FIELDS}
            and not self.rehearsal
        ):
            return self.name
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.label}-{digest}"

    @property
    def label(self) -> str:
        """The scale's name, with ``-rehearsal`` for a rehearsal: names its results and cache
        entries."""
        return f"{self.name}-rehearsal" if self.rehearsal else self.name

    @property
    def pixel_victim(self) -> str:
        """The architecture the pixel attacks of chapters 5-6 fool."""
        return self.pixel_architecture or self.main_architecture

    def describe(self) -> str:
        """One line for a chapter's output."""
        weights = self.weights or "random initialisation"
        line = (
            f"scale '{self.name}': {self.image_size} px, "
            f"architectures {', '.join(self.architectures)}, {self.epochs} epochs, "
            f"weights: {weights}"
        )
        if self.rehearsal:
            line += (
                "\nREHEARSAL of this scale: its shapes and code paths with tiny budgets, "
                "random-initialised backbones standing in for the ImageNet weights and synthetic "
                "data; the numbers mean nothing."
            )
        return line


_PRESETS = {
    "smoke": Preset(
        name="smoke",
        image_size=28,
        architectures=("small_cnn",),
        main_architecture="small_cnn",
        weights=None,
        offline_fallback=True,
        epochs=6,
        train_per_class=400,
        test_per_class=150,
        max_train=1600,
        max_test=600,
        uap_images=100,
        uap_i_max=3,
        zeta_grid=(0.02, 0.04, 0.08),
        eval_images=200,
        natural_images=200,
        natural_chunk=50,
        pixel_images_per_class=10,
        pixel_population=50,
        pixel_generations=30,
        retrain_rounds=1,
        retrain_uaps=2,
        retrain_epochs=1,
        notes="CI: about a minute per chapter on two CPU cores; small CNN from scratch.",
    ),
    "cpu": Preset(
        name="cpu",
        image_size=28,
        architectures=("small_cnn", "mobilenet_v2"),
        main_architecture="small_cnn",
        weights="imagenet",
        offline_fallback=True,
        epochs=25,
        backbone_epochs=2,
        backbone_input=64,
        train_per_class=900,
        test_per_class=270,
        max_train=4000,
        max_test=1200,
        uap_images=500,
        uap_i_max=5,
        zeta_grid=(0.01, 0.02, 0.04, 0.06, 0.08),
        eval_images=500,
        natural_images=1000,
        natural_chunk=250,
        pixel_images_per_class=20,
        pixel_population=100,
        pixel_generations=50,
        retrain_rounds=5,
        retrain_uaps=5,
        retrain_epochs=2,
        notes="A laptop: minutes per chapter.",
    ),
    # The gpu budgets are cut until every chapter's predicted compute on a T4 stays near 10 minutes
    # (helpers/timing.py: image passes counted from the preset, times the per-image cost on a T4),
    # so a chapter with its loading, tracing and plotting fits a 15-minute lab.
    "gpu": Preset(
        name="gpu",
        image_size=64,
        architectures=("inception_v3", "resnet50", "vgg16"),
        main_architecture="inception_v3",
        weights="imagenet",
        offline_fallback=False,
        epochs=5,
        backbone_input=128,
        train_per_class=500,
        test_per_class=250,
        max_train=2000,
        max_test=1000,
        uap_images=300,
        uap_i_max=3,
        eval_images=400,
        natural_images=800,
        natural_chunk=200,
        # the faithful loop would not fit a T4's 15 minutes; chapter 2 compares both
        uap_mode="batched",
        pixel_images_per_class=6,
        pixel_population=100,
        pixel_generations=40,
        pixel_architecture="resnet50",
        retrain_rounds=3,
        retrain_uaps=3,
        retrain_epochs=1,
        notes="Colab T4: at most ~15 minutes per chapter.",
    ),
    "paper": Preset(
        name="paper",
        image_size=224,
        architectures=PAPER_ARCHITECTURES,
        main_architecture="inception_v3",
        weights="imagenet",
        offline_fallback=False,
        epochs=50,
        backbone_input=299,
        train_per_class=None,
        test_per_class=None,
        max_train=None,
        max_test=None,
        uap_images=10_000,
        uap_i_max=15,
        zeta_grid=(0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.10),
        eval_images=10_000,
        natural_images=100_000,
        natural_chunk=1000,
        pixel_images_per_class=100,
        pixel_population=100,
        pixel_generations=100,
        pixel_architecture="resnet50",
        retrain_rounds=5,
        retrain_uaps=10,
        retrain_epochs=5,
        # Paper 000 (Methods): FGSM epsilon = 0.0024, applied by the authors' code to images scaled
        # (X - 128) / 128 for X in 0..255; one such unit is 128/255 of a [0, 1] unit, so the same
        # step is 0.0024 * 128 / 255 = 0.0012 in this course's [0, 1] units.
        uap_eps=0.0024 * 128 / 255,
        fit_in_own_process=True,
        notes="The papers' full protocol: hours on a GPU.",
    ),
}


#: What a rehearsal shrinks, and nothing else: a few images, one epoch, one pass, two generations.
#: Two values of the zeta grid keep the chapters' curves; two chunks keep chapter 4's warm start.
#: Chapter 1 shows 8 test images per dataset, so the test split keeps 4 per class. The attacks use
#: 4 training, 4 test and 4 natural images: predictions took 40 % of chapter 4's gpu rehearsal in a
#: profile, and these give the gpu rehearsal 28 % fewer image passes than 8 test and 8 natural
#: images did (helpers.timing).
REHEARSAL_BUDGETS = {
    "epochs": 1,
    "backbone_epochs": 1,
    "train_per_class": 6,
    "test_per_class": 4,
    "max_train": 42,
    "max_test": 24,
    "uap_images": 4,
    "uap_i_max": 1,
    "eval_images": 4,
    "natural_images": 4,
    "natural_chunk": 2,
    "pixel_images_per_class": 1,
    "pixel_population": 8,
    "pixel_generations": 2,
    "retrain_rounds": 1,
    "retrain_uaps": 1,
    "retrain_epochs": 1,
}


def rehearsal_of(preset: Preset) -> Preset:
    """``preset`` with :data:`REHEARSAL_BUDGETS` and the first two values of its zeta grid."""
    return replace(preset, rehearsal=True, zeta_grid=preset.zeta_grid[:2], **REHEARSAL_BUDGETS)


def get_preset(scale: str, rehearsal: bool = False, **overrides) -> Preset:
    """Return the preset for ``scale``; keyword arguments override single fields.

    ``rehearsal=True`` gives the scale's rehearsal (see the module docstring).

    >>> get_preset("smoke").image_size
    28
    """
    if not isinstance(scale, str) or scale.lower() not in _PRESETS:
        raise ValueError(f"SCALE={scale!r} is not a scale; choose one of {', '.join(SCALES)}.")
    if not isinstance(rehearsal, bool):
        raise ValueError(
            f"REHEARSAL={rehearsal!r}: choose True (tiny budgets, the scale's code paths) or False."
        )
    preset = rehearsal_of(_PRESETS[scale.lower()]) if rehearsal else _PRESETS[scale.lower()]
    unknown = set(overrides) - set(preset.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"get_preset: unknown field(s) {sorted(unknown)}; "
            f"known: {sorted(preset.__dataclass_fields__)}."
        )
    return replace(preset, **overrides) if overrides else preset


def as_preset(preset, parameter: str = "preset") -> Preset:
    """``preset`` itself, or the preset of a scale name ("smoke", "cpu", "gpu", "paper")."""
    if isinstance(preset, Preset):
        return preset
    if isinstance(preset, str) and preset.lower() in _PRESETS:
        return _PRESETS[preset.lower()]
    raise ValueError(
        f"{parameter}={preset!r} is not a scale preset; pass a scale name "
        f"({', '.join(repr(s) for s in SCALES)}) or get_preset(SCALE)."
    )
