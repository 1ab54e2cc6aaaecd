"""Fine-tuning as in paper 000 (Hirano et al. 2021), and a cache of trained models.

Protocol: all layers trained, SGD with momentum 0.9, batch 32, learning rate 1e-3 for the
first 80 % of the epochs, 1e-4 up to 90 %, 1e-5 after (paper: 40/45/50 epochs), random
rotations of +-5 degrees and random 5 % shifts; the skin-lesion set is oversampled by
:mod:`helpers.data`. A trained model is saved under a key made of dataset, data kind,
size, architecture, weights, scale (with a hash of any overridden training setting) and
seed, reloaded by later runs, and never overwritten.

Introduced in chapter 1 (transfer learning).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from . import costs
from .cache import cache_dir, publish_folder
from .data import MedDataset
from .models import WeightsUnavailableError, get_architecture, model_for
from .own_process import call as call_in_own_process
from .scales import Preset, as_preset

ROTATION_DEGREES = 5.0
SHIFT_FRACTION = 0.05


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()


def learning_rate_at(epoch: int, epochs: int, base: float = 1e-3) -> float:
    """Paper 000's step schedule; ``epoch`` counts from 0. 50 epochs: 1-40 base, 41-45 base/10,
    46-50 base/100."""
    number = epoch + 1
    # the first epoch always at the base rate (1 epoch: not 1e-5)
    if number <= max(1, 0.8 * epochs):
        return base
    if number <= 0.9 * epochs:
        return base / 10
    return base / 100


def augmenter(seed: int = 0) -> keras.Sequential:
    """Random rotation (+-5 degrees) and height/width shifts (5 %)."""
    return keras.Sequential(
        [
            keras.layers.RandomRotation(ROTATION_DEGREES / 360.0, fill_mode="nearest", seed=seed),
            keras.layers.RandomTranslation(
                SHIFT_FRACTION, SHIFT_FRACTION, fill_mode="nearest", seed=seed + 1
            ),
        ],
        name="augment",
    )


def make_pipeline(
    dataset: MedDataset, batch_size: int, *, shuffle: bool, augment: bool, seed: int
) -> tf.data.Dataset:
    """A tf.data pipeline of (image, label) batches, shuffled and augmented for training.

    It shuffles positions, not pixels: each batch is read from the stored images and turned into
    float32 when it is needed (``MedDataset.take``), so memory grows with the batch, not the set.
    """
    labels = np.asarray(dataset.labels)
    shape = (None, *dataset.shape)

    def read(positions):
        return dataset.take(positions), labels[positions]

    def load(positions):
        images, batch_labels = tf.numpy_function(
            read, [positions], (tf.float32, tf.as_dtype(labels.dtype))
        )
        images.set_shape(shape)
        batch_labels.set_shape((None, *labels.shape[1:]))
        return images, batch_labels

    data = tf.data.Dataset.range(len(dataset))
    if shuffle:
        data = data.shuffle(len(dataset), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(batch_size).map(load)
    if augment:
        aug = augmenter(seed)
        data = data.map(
            lambda x, y: (tf.clip_by_value(aug(x, training=True), 0.0, 1.0), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return data.prefetch(tf.data.AUTOTUNE)


def compile_for(
    model: keras.Model, multilabel: bool, learning_rate: float, optimizer: str = "sgd"
) -> None:
    """SGD with momentum 0.9 (or Adam); cross-entropy; accuracy (and AUC for multi-label)."""
    if optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    if multilabel:
        model.compile(
            optimizer,
            loss="binary_crossentropy",
            metrics=[
                keras.metrics.BinaryAccuracy(name="accuracy"),
                keras.metrics.AUC(multi_label=True, name="auc"),
            ],
        )
    else:
        model.compile(optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


class TqdmEpochs(keras.callbacks.Callback):
    """One progress bar over the epochs, with the latest metrics."""

    def __init__(self, epochs: int, description: str):
        super().__init__()
        self.epochs, self.description, self.bar = epochs, description, None

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.epochs, desc=self.description, unit="epoch")

    def on_epoch_end(self, epoch, logs=None):
        shown = {
            k: f"{v:.3f}"
            for k, v in (logs or {}).items()
            if k in ("loss", "accuracy", "val_accuracy")
        }
        self.bar.set_postfix(shown)
        self.bar.update(1)

    def on_train_end(self, logs=None):
        self.bar.close()


# More than eight parameters: the protocol's knobs (paper 000), keywords with its defaults.
def fit(
    model: keras.Model,
    train,
    val=None,
    *,
    epochs: int,
    batch_size: int = 32,
    seed: int = 0,
    augment: bool = True,
    learning_rate: float | None = None,
    description: str = "training",
) -> dict:
    """Train ``model`` on a :class:`~helpers.data.MedDataset` with the paper's protocol.

    Returns the Keras history: a list of per-epoch values for every loss and metric.
    """
    _check_dataset(train, "train")
    if val is not None:
        _check_dataset(val, "val")
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: train for at least one epoch.")
    set_seed(seed)
    base = learning_rate or 1e-3
    compile_for(model, train.info.multilabel, base, _optimizer_of(model))
    _create_training_state(model, train.info)
    data = make_pipeline(train, batch_size, shuffle=True, augment=augment, seed=seed)
    val_data = (
        None if val is None else make_pipeline(val, 256, shuffle=False, augment=False, seed=seed)
    )
    schedule = keras.callbacks.LearningRateScheduler(
        lambda epoch: learning_rate_at(epoch, epochs, base)
    )
    history = model.fit(
        data,
        validation_data=val_data,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=[schedule, TqdmEpochs(epochs, description)],
    )
    costs.count(model, "forward", epochs * (len(train) + (0 if val is None else len(val))))
    costs.count(model, "backward", epochs * len(train))
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def _create_training_state(model: keras.Model, info) -> None:
    """Create the optimizer's and the metrics' variables now, before ``fit`` traces its training
    step.

    Keras creates them lazily, while tracing; TensorFlow then traces the whole step a second time
    (about 10 s for InceptionV3 on a CPU). Zeros stand in for a batch; fit resets the metrics.
    """
    model.optimizer.build(model.trainable_variables)
    labels = np.zeros((1, info.n_classes) if info.multilabel else (1,), np.float32)
    model.compute_metrics(None, labels, np.zeros((1, model.output_shape[-1]), np.float32))
    model.reset_metrics()


def _check_dataset(value, parameter: str) -> None:
    if not isinstance(value, MedDataset):
        raise ValueError(
            f"{parameter} must be a helpers.data.MedDataset (e.g. splits['{parameter}'] from "
            f"data.load_for_scale), not {type(value).__name__}."
        )


def _optimizer_of(model: keras.Model) -> str:
    """The optimizer the model's architecture trains with ("sgd" unless stated)."""
    try:
        return get_architecture(model.name.rsplit("_", 1)[0]).optimizer
    except ValueError:
        return "sgd"


# --------------------------------------------------------------------------- cache


@dataclass
class TrainedModel:
    """A trained model with what it was trained on and how."""

    model: keras.Model
    key: str
    path: Path
    meta: dict
    history: dict = field(default_factory=dict)
    from_cache: bool = False

    def __reduce__(self):
        """Pickled as its cache folder: unpickling loads the saved model
        (:mod:`helpers.own_process`)."""
        return load_trained, (self.path, False)


def model_key(
    dataset: str,
    kind: str,
    size: int,
    architecture: str,
    weights: str | None,
    scale: str | Preset,
    seed: int,
) -> str:
    """Cache key, e.g. ``pneumonia-real-28px-small_cnn-scratch-smoke-seed0``.

    ``scale`` is a scale name or a :class:`~helpers.scales.Preset`; a preset whose training
    settings were overridden adds a short hash (``smoke-1a2b3c4d``), so it gets its own models.
    """
    tag = scale.model_tag() if isinstance(scale, Preset) else scale
    return f"{dataset}-{kind}-{size}px-{architecture}-{weights or 'scratch'}-{tag}-seed{seed}"


# More than eight parameters: what identifies a model (splits, architecture, preset, seed) and
# keyword-only choices of how to get it, each with a default.
def get_or_train(
    splits: dict,
    architecture: str,
    preset,
    seed: int = 0,
    *,
    weights: str | None = "default",
    cache: Path | None = None,
    retrain: bool = False,
    verbose: bool = True,
    own_process: bool | None = None,
) -> TrainedModel:
    """The cached model for these data/architecture/scale/seed, trained now if absent.

    ``preset`` is a :class:`~helpers.scales.Preset` or a scale name. ``weights="default"``
    takes the preset's. The cache is looked up before anything is built or downloaded. If
    ImageNet weights cannot be downloaded and the preset allows it (smoke, cpu), the model
    is trained from random initialisation instead (or loaded, if cached) and says so.
    ``retrain=True`` trains again and saves the new model next to the old one (the old one
    is kept, renamed with a time stamp). ``own_process=True`` (default: the preset's
    ``fit_in_own_process``) trains in a child Python process, which gives back all its memory
    when it ends (:mod:`helpers.own_process`).
    """
    train = _train_split(splits)
    preset = as_preset(preset)
    arch = get_architecture(architecture)
    weights = preset.weights if weights == "default" else weights
    if arch.constructor is None:
        weights = None
    folder = _folder(cache, train, arch.name, weights, preset, seed)
    if _is_cached(folder) and not retrain:
        return load_trained(folder, verbose=verbose)
    if preset.fit_in_own_process if own_process is None else own_process:
        settings = dict(weights=weights, cache=cache, own_process=False)
        call_in_own_process(
            get_or_train,
            splits,
            arch.name,
            preset,
            seed,
            retrain=retrain,
            verbose=verbose,
            **settings,
        )
        trained = get_or_train(splits, arch.name, preset, seed, verbose=False, **settings)
        return replace(trained, from_cache=False)  # trained just now, loaded from the cache
    model, built = _build(train.info, arch.name, preset, weights, seed, verbose)
    if built != weights:  # fell back to random initialisation
        weights, folder = built, _folder(cache, train, arch.name, built, preset, seed)
        if _is_cached(folder) and not retrain:
            return load_trained(folder, verbose=verbose)
    return _train_and_save(
        model, splits, arch.name, weights, preset, seed, folder, keep_existing=not retrain
    )


def _train_split(splits) -> MedDataset:
    if not isinstance(splits, dict) or not isinstance(splits.get("train"), MedDataset):
        raise ValueError(
            "splits must be a dict with a 'train' MedDataset (and 'val'), as returned by "
            f"data.load_for_scale; got {type(splits).__name__}."
        )
    return splits["train"]


def _folder(
    cache, train: MedDataset, architecture: str, weights, preset: Preset, seed: int
) -> Path:
    key = model_key(
        train.info.key,
        "synthetic" if train.synthetic else "real",
        train.size,
        architecture,
        weights,
        preset,
        seed,
    )
    return Path(cache or cache_dir("models")) / key


def _is_cached(folder: Path) -> bool:
    return (folder / "model.keras").is_file()


def _train_and_save(
    model, splits, architecture, weights, preset, seed, folder, keep_existing
) -> TrainedModel:
    train = splits["train"]
    start = time.perf_counter()
    epochs = preset.epochs_for(architecture)
    history = fit(
        model,
        train,
        splits.get("val"),
        epochs=epochs,
        batch_size=preset.batch_size,
        seed=seed,
        description=f"{train.info.key} / {architecture}",
    )
    meta = {
        "key": folder.name,
        "dataset": train.info.key,
        "data": train.kind,
        "size": train.size,
        "architecture": architecture,
        "weights": weights or "none (random initialisation)",
        "scale": preset.name,
        "seed": seed,
        "epochs": epochs,
        "train_images": len(train),
        "train_seconds": round(time.perf_counter() - start, 1),
        "saved": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if preset.rehearsal and weights:
        meta["rehearsal"] = f"random initialisation standing in for the {weights} weights"
    if not save_trained(model, folder, meta, history, keep_existing=keep_existing):
        return load_trained(folder, verbose=False)  # another process saved this model first: use it
    # The saved model, without the optimizer's state (as large as the weights):
    # what the attacks need.
    saved = load_trained(folder, verbose=False)
    return TrainedModel(saved.model, folder.name, folder, meta, history, from_cache=False)


def _build(info, architecture, preset, weights, seed, verbose):
    """The model and the weights it got: ``None`` after an allowed offline fallback.

    A rehearsal (:mod:`helpers.scales`) builds every backbone from random initialisation but keeps
    the weights it stands in for as the model's label, so the chapters take the scale's branches.
    """
    if preset.rehearsal:
        return model_for(
            info, architecture, preset.image_size, None, preset.backbone_input, seed
        ), weights
    try:
        model = model_for(
            info, architecture, preset.image_size, weights, preset.backbone_input, seed
        )
        return model, weights
    except WeightsUnavailableError as error:
        if not preset.offline_fallback:
            raise
        if verbose:
            print(
                "!"
                * 78
                + f"\n!! {error}\n!! Scale '{preset.name}': using {architecture} from RANDOM "
                f"INITIALISATION instead (no transfer learning).\n" + "!" * 78
            )
        return model_for(
            info, architecture, preset.image_size, None, preset.backbone_input, seed
        ), None


def save_trained(
    model: keras.Model, folder: Path, meta: dict, history: dict, *, keep_existing: bool = False
) -> bool:
    """Write model, metadata and history into ``folder`` atomically; return True if written.

    An existing ``folder`` is never lost: it is renamed ``<folder>.old-<time>`` (a model trained
    again), or, with ``keep_existing``, kept as it is and this model dropped (False): the first
    of two processes that trained the same model at once wins.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    model.save(staging / "model.keras")
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    (staging / "history.json").write_text(json.dumps(history, indent=2))
    if folder.exists() and not (keep_existing and _is_cached(folder)):
        folder.rename(
            _unused_name(folder.with_name(f"{folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"))
        )
    return publish_folder(staging, folder, lambda saved: keep_existing and _is_cached(saved))


def _unused_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... whichever does not exist yet."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def load_trained(folder: Path, verbose: bool = True) -> TrainedModel:
    """Reload a model saved by :func:`save_trained`."""
    folder = Path(folder)
    if not (folder / "model.keras").is_file():
        raise FileNotFoundError(f"{folder} holds no model.keras: not a trained-model folder.")
    # no optimizer state: fit compiles
    model = keras.models.load_model(folder / "model.keras", compile=False)
    meta = json.loads((folder / "meta.json").read_text())
    history = json.loads((folder / "history.json").read_text())
    if verbose:
        print(f"loaded {meta['key']} from the cache (trained {meta.get('saved', '?')})")
    return TrainedModel(model, meta["key"], folder, meta, history, from_cache=True)


def remove_cached(folder: Path) -> None:
    """Delete one cached model folder (only folders that hold a model.keras)."""
    folder = Path(folder)
    if (folder / "model.keras").is_file():
        shutil.rmtree(folder)
