"""MedMNIST data: the datasets of the course, loaded without the ``medmnist`` package.

The official npz files are downloaded from Zenodo, cached, and checked against their
published MD5. A folder of npz files can be given with ``root=`` or the ``MEDMNIST_DIR``
environment variable (several folders separated by ``:``). A :class:`MedDataset` keeps the
images as stored (uint8) and hands them out as float32 in [0, 1] with shape (N, H, W, C),
C = 1 for greyscale and 3 for colour, a few at a time or all at once.

Where the real data cannot be had (offline), :func:`load` can return a synthetic stand-in
with the same shapes, classes and task type (see :mod:`helpers.synthetic`); such a dataset
has ``synthetic=True`` and announces itself loudly.

Introduced in chapter 1 (transfer learning).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .cache import cache_dir
from .config import ENV_MEDMNIST_DIR
from .scales import as_preset
from .synthetic import synthetic_arrays

ZENODO_RECORD = "https://zenodo.org/records/10519652/files"
SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")


class DataUnavailableError(RuntimeError):
    """The real MedMNIST file is neither on disk nor downloadable."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the course needs to know about one MedMNIST dataset."""

    key: str  # short name used in the course: "pneumonia", ...
    flag: str  # MedMNIST file stem: "pneumoniamnist", ...
    title: str  # for figures and tables
    task: str  # "binary-class", "multi-class" or "multi-label"
    class_names: tuple[str, ...]  # MedMNIST's label names (findings for multi-label)
    short_names: tuple[str, ...]  # abbreviations used in the papers' tables
    channels: int  # 1 = greyscale, 3 = RGB
    n_samples: dict  # official split sizes at every image size
    normal_classes: tuple[int, ...]  # classes counted as "normal" (multi-label: empty set = normal)
    license: str
    md5: dict  # image size -> official MD5
    train_per_class: int | None = None  # paper 000's class-balanced subset sizes
    test_per_class: int | None = None
    oversample: bool = False  # paper 000: oversample the imbalanced skin-lesion set
    train_without_normal: bool = (
        False  # paper 004 (4.4): train the multi-label model on images with findings
    )
    citation: str = ""
    # official images per class of each split, single-label data (MedMNIST v2's label counts)
    class_counts: dict | None = None
    # official share of the images with each finding, multi-label data (ChestX-ray14)
    finding_prevalence: tuple | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def short_title(self) -> str:
        """The title without the MedMNIST name, e.g. "Chest X-ray"."""
        return self.title.split(" (")[0]

    @property
    def multilabel(self) -> bool:
        return self.task == "multi-label"

    @property
    def disease_classes(self) -> tuple[int, ...]:
        return tuple(c for c in range(self.n_classes) if c not in self.normal_classes)

    def filename(self, size: int) -> str:
        return f"{self.flag}.npz" if size == 28 else f"{self.flag}_{size}.npz"

    def url(self, size: int) -> str:
        return f"{ZENODO_RECORD}/{self.filename(size)}?download=1"


DATASETS: dict[str, DatasetInfo] = {
    "pneumonia": DatasetInfo(
        key="pneumonia",
        flag="pneumoniamnist",
        title="Chest X-ray (PneumoniaMNIST)",
        task="binary-class",
        class_names=("normal", "pneumonia"),
        short_names=("NORMAL", "PNEUMONIA"),
        channels=1,
        n_samples={"train": 4708, "val": 524, "test": 624},
        normal_classes=(0,),
        license="CC BY 4.0",
        md5={
            28: "28209eda62fecd6e6a2d98b1501bb15f",
            64: "8f4eceb4ccffa70c672198ea285246c6",
            128: "05b46931834c231683c68f40c47b2971",
            224: "d6a3c71de1b945ea11211b03746c1fe1",
        },
        train_per_class=900,
        test_per_class=270,
        citation="Kermany et al., Cell 172(5):1122-1131 (2018)",
        class_counts={"train": (1214, 3494), "val": (135, 389), "test": (234, 390)},
    ),
    "oct": DatasetInfo(
        key="oct",
        flag="octmnist",
        title="Retinal OCT (OCTMNIST)",
        task="multi-class",
        class_names=("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        short_names=("CNV", "DME", "DRUSEN", "NM"),
        channels=1,
        n_samples={"train": 97477, "val": 10832, "test": 1000},
        normal_classes=(3,),
        license="CC BY 4.0",
        md5={
            28: "c68d92d5b585d8d81f7112f81e2d0842",
            64: "e229e9440236b774d9f0dfef9d07bdaf",
            128: "0a97e76651ace45c5d943ee3f65b63ae",
            224: "abc493b6d529d5de7569faaef2773ba3",
        },
        train_per_class=1960,
        test_per_class=840,
        citation="Kermany et al., Cell 172(5):1122-1131 (2018)",
        class_counts={
            "train": (33484, 10213, 7754, 46026),
            "val": (3721, 1135, 862, 5114),
            "test": (250, 250, 250, 250),
        },
    ),
    "derma": DatasetInfo(
        key="derma",
        flag="dermamnist",
        title="Skin lesions (DermaMNIST)",
        task="multi-class",
        class_names=(
            "actinic keratoses and intraepithelial carcinoma",
            "basal cell carcinoma",
            "benign keratosis-like lesions",
            "dermatofibroma",
            "melanoma",
            "melanocytic nevi",
            "vascular lesions",
        ),
        short_names=("AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC"),
        channels=3,
        n_samples={"train": 7007, "val": 1003, "test": 2005},
        normal_classes=(2, 3, 5),
        license="CC BY-NC 4.0",
        md5={
            28: "0744692d530f8e62ec473284d019b0c7",
            64: "b70a2f5635c6199aeaa28c31d7202e1f",
            128: "2defd784463fa5243564e855ed717de1",
            224: "8974907d8e169bef5f5b96bc506ae45d",
        },
        oversample=True,
        citation="Tschandl et al., Sci Data 5:180161 (2018); Codella et al., arXiv:1902.03368",
        class_counts={
            "train": (228, 359, 769, 80, 779, 4693, 99),
            "val": (33, 52, 110, 12, 111, 671, 14),
            "test": (66, 103, 220, 23, 223, 1341, 29),
        },
    ),
    "chest": DatasetInfo(
        key="chest",
        flag="chestmnist",
        title="Chest X-ray, 14 findings (ChestMNIST)",
        task="multi-label",
        class_names=(
            "atelectasis",
            "cardiomegaly",
            "effusion",
            "infiltration",
            "mass",
            "nodule",
            "pneumonia",
            "pneumothorax",
            "consolidation",
            "edema",
            "emphysema",
            "fibrosis",
            "pleural thickening",
            "hernia",
        ),
        short_names=(
            "ATEL",
            "CARD",
            "EFFU",
            "INFI",
            "MASS",
            "NODU",
            "PNEU",
            "PNTX",
            "CONS",
            "EDEM",
            "EMPH",
            "FIBR",
            "PLEU",
            "HERN",
        ),
        channels=1,
        n_samples={"train": 78468, "val": 11219, "test": 22433},
        normal_classes=(),
        license="CC BY 4.0",
        md5={
            28: "02c8a6516a18b556561a56cbdd36c4a8",
            64: "9de6cd0b934ebb5b7426cfba5efbae16",
            128: "db107e5590b27930b62dbaf558aebee3",
            224: "45bd33e6f06c3e8cdb481c74a89152aa",
        },
        citation="Wang et al., ChestX-ray8, CVPR 2017",
        finding_prevalence=(
            0.103,
            0.025,
            0.119,
            0.177,
            0.052,
            0.056,
            0.013,
            0.047,
            0.042,
            0.021,
            0.022,
            0.015,
            0.030,
            0.002,
        ),
        train_without_normal=True,
    ),
}
ALIASES = {
    "pneumoniamnist": "pneumonia",
    "chest_xray": "pneumonia",
    "octmnist": "oct",
    "dermamnist": "derma",
    "skin": "derma",
    "chestmnist": "chest",
}


def get_info(name: str) -> DatasetInfo:
    """Look up a dataset by course name ("pneumonia", "oct", "derma", "chest") or MedMNIST flag."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}.")
    return DATASETS[key]


@dataclass
class MedDataset:
    """One split of a dataset: images and their labels.

    The pixels stay as stored (``stored``: uint8 0-255 for the real files, float32 in [0, 1] for
    the synthetic stand-ins); ``index`` says which stored image is each of the dataset's N images,
    so subsets and oversampling copy no pixel. They become float32 in [0, 1] only when asked for:
    :meth:`take` (some images), :meth:`batches` (all, a batch at a time: memory grows with the
    batch, not with N) or :attr:`images` (all at once, for sets small enough to hold as float32).
    ``labels``: (N,) int64, or (N, L) uint8 for multi-label. ``added``: UAPs added on the fly,
    (K, H, W, C) and per image the UAP's index or -1 (adversarial retraining,
    :mod:`helpers.retrain`).
    """

    info: DatasetInfo
    split: str
    stored: np.ndarray  # (M, H, W, C) as stored
    labels: np.ndarray
    synthetic: bool = False
    source: str = ""
    notes: list = field(default_factory=list)
    duplicate: np.ndarray | None = None  # (N,) bool: True for the copies oversampling added
    index: np.ndarray | None = None  # (N,) positions in ``stored``; None: stored in order (N = M)
    added: tuple[np.ndarray, np.ndarray] | None = None  # (UAPs (K, H, W, C), choice per image (N,))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self.stored.shape[1])

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's shape (H, W, C)."""
        return tuple(self.stored.shape[1:])

    @property
    def images(self) -> np.ndarray:
        """All N images as float32 (N, H, W, C) in [0, 1]: a new array on every access."""
        return self.take(np.arange(len(self)))

    def take(self, positions) -> np.ndarray:
        """The images at ``positions`` (ints, or a slice like ``slice(0, 200)``) as float32
        (n, H, W, C) in [0, 1]."""
        if isinstance(positions, slice):
            positions = np.arange(len(self))[positions]
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        rows = positions if self.index is None else self.index[positions]
        images = self.stored[rows]
        images = to_unit_float(images) if images.dtype == np.uint8 else images.astype(np.float32)
        if self.added is not None:
            uaps, choice = self.added
            chosen = choice[positions]
            perturbed = np.flatnonzero(chosen >= 0)
            images[perturbed] = np.clip(images[perturbed] + uaps[chosen[perturbed]], 0.0, 1.0)
        return images

    def batches(self, batch_size: int, order=None):
        """Float32 batches (b, H, W, C) of the images, in ``order`` (default: as they are)."""
        order = np.arange(len(self)) if order is None else np.asarray(order)
        for start in range(0, len(order), batch_size):
            yield self.take(order[start : start + batch_size])

    @property
    def stored_bytes(self) -> int:
        """Memory the stored pixels take (bytes)."""
        return int(self.stored.nbytes)

    def compact(self) -> "MedDataset":
        """The same dataset holding only the stored images it uses (a copy of those; repeats kept by
        index)."""
        if self.index is None:
            return self
        used, rows = np.unique(self.index, return_inverse=True)
        if len(used) == len(self.stored):  # every stored image is used: nothing to drop
            return self
        return replace(
            self, stored=self.stored[used], index=rows.astype(np.int64), notes=list(self.notes)
        )

    @property
    def kind(self) -> str:
        """'real' or 'SYNTHETIC'."""
        return "SYNTHETIC" if self.synthetic else "real"

    def subset(self, index) -> "MedDataset":
        """A new dataset with the images at ``index`` (array of ints or booleans); no pixel is
        copied."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64)
        duplicate = None if self.duplicate is None else self.duplicate[index]
        added = None if self.added is None else (self.added[0], self.added[1][index])
        rows = index if self.index is None else self.index[index]
        return replace(
            self,
            index=rows,
            labels=self.labels[index],
            notes=list(self.notes),
            duplicate=duplicate,
            added=added,
        )

    def distinct(self) -> np.ndarray:
        """Positions of the images as drawn from the stored split: each once, without oversampling's
        copies."""
        return np.arange(len(self)) if self.duplicate is None else np.flatnonzero(~self.duplicate)

    def class_counts(self) -> np.ndarray:
        """Images per class (multi-label: per finding; the normal count is not included)."""
        if self.info.multilabel:
            return self.labels.sum(axis=0).astype(int)
        return np.bincount(self.labels, minlength=self.info.n_classes)

    def describe(self) -> str:
        return (
            f"{self.info.title} [{self.split}] {len(self)} images of {self.size}x{self.size}x"
            f"{self.stored.shape[-1]} - {self.kind} data ({self.source})"
        )

    def __repr__(self) -> str:
        return f"MedDataset({self.describe()})"


# --------------------------------------------------------------------------- files


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def search_folders(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for npz files: ``root``, then ``$MEDMNIST_DIR``, then the cache."""
    folders = []
    if root is not None:
        folders.append(Path(root))
    for entry in os.environ.get(ENV_MEDMNIST_DIR, "").split(os.pathsep):
        if entry.strip():
            folders.append(Path(entry.strip()))
    folders.append(cache_dir("medmnist"))
    return folders


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not a MedMNIST size; choose one of {SIZES}.")


def _offline_message(info: DatasetInfo, size: int, reason: str) -> str:
    return (
        f"Could not get {info.filename(size)} ({info.title}, {size} px): {reason}.\n"
        f"  Download it from {info.url(size)}\n"
        f"  and put it in {cache_dir('medmnist')} (or in a folder named by root= or the "
        f"{ENV_MEDMNIST_DIR} environment variable).\n"
        "  Offline, the smoke and cpu scales can use a synthetic stand-in instead "
        "(source='synthetic')."
    )


def download(
    info: DatasetInfo, size: int, folder: Path | None = None, timeout: float = 60.0
) -> Path:
    """Download the official npz into ``folder`` (default: the cache) and verify its MD5."""
    _check_size(size)
    folder = Path(folder) if folder else cache_dir("medmnist")
    target = folder / info.filename(size)
    partial = target.with_suffix(".part")
    try:
        _fetch(info.url(size), partial, timeout, info.filename(size))
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as error:
        partial.unlink(missing_ok=True)
        reason = f"download failed ({type(error).__name__}: {error})"
        raise DataUnavailableError(_offline_message(info, size, reason)) from None
    except BaseException:  # interrupted: no half-written file left behind
        partial.unlink(missing_ok=True)
        raise
    digest = md5_of(partial)
    if digest != info.md5[size]:
        partial.unlink(missing_ok=True)
        raise DataUnavailableError(
            _offline_message(
                info, size, f"the download's MD5 {digest} is not the official {info.md5[size]}"
            )
        )
    partial.replace(target)
    return target


def _fetch(url: str, partial: Path, timeout: float, label: str) -> None:
    """Stream ``url`` into the file ``partial`` with a progress bar."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=label) as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))


def locate(info: DatasetInfo, size: int, root=None, download_missing: bool = True) -> Path:
    """Path of the npz file, downloading it into the cache if it is nowhere on disk.

    A file whose MD5 differs from the official one (a re-packaged copy the reader put in a
    folder, the cache included) is used with a warning, never deleted: :func:`download`
    only moves files with the official MD5 into the cache.
    """
    _check_size(size)
    for folder in search_folders(root):
        path = folder / info.filename(size)
        if not path.is_file():
            continue
        if md5_of(path) == info.md5[size]:
            return path
        warnings.warn(
            f"{path}: MD5 differs from the official {info.md5[size]}; using it anyway "
            f"(a re-packaged copy?). Check its origin.",
            stacklevel=2,
        )
        return path
    if not download_missing:
        raise DataUnavailableError(_offline_message(info, size, "no local copy and download=False"))
    return download(info, size)


def read_raw(
    path: Path, info: DatasetInfo, split: str, size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images as stored (uint8, (N, H, W, C)) and labels, from a MedMNIST npz file.

    The arrays must match the dataset: ``size`` x ``size`` px (when given) with ``info.channels``
    channels, one label (or one 0/1 value per finding) per image; anything else is refused.
    """
    path = Path(path)
    try:
        with np.load(path) as archive:
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
    except KeyError:
        raise ValueError(
            f"{path} has no '{split}_images'/'{split}_labels' arrays: not a MedMNIST file? "
            f"The official file is at {_url_of(info, path)}"
        ) from None
    except Exception as error:  # zipfile.BadZipFile, OSError, pickle errors
        raise ValueError(
            f"{path} is not a readable npz file ({type(error).__name__}: {error}).\n"
            f"  Delete {path} and download it again from {_url_of(info, path)}"
        ) from None
    stored_shape = images.shape
    if images.ndim == 3:
        images = images[..., None]
    _check_stored(path, info, split, size, images, labels, stored_shape)
    labels = labels.astype(np.uint8) if info.multilabel else labels.reshape(-1).astype(np.int64)
    return images, labels


def _check_stored(
    path: Path, info: DatasetInfo, split: str, size: int | None, images, labels, stored_shape: tuple
) -> None:
    """Refuse arrays that do not fit ``info`` (e.g. colour images in a greyscale dataset's file)."""
    side = "H, W" if size is None else f"{size}, {size}"
    expected = f"({side}, {info.channels}) images ({'RGB' if info.channels == 3 else 'greyscale'})"
    fits = (
        images.ndim == 4
        and images.shape[-1] == info.channels
        and (size is None or images.shape[1:3] == (size, size))
    )
    n_labels = info.n_classes if info.multilabel else 1
    label_shape = labels.shape[1:] if labels.ndim > 1 else ()
    labels_fit = len(labels) == len(images) and int(np.prod(label_shape, dtype=int)) == n_labels
    if not fits or not labels_fit:
        raise ValueError(
            f"{path}: '{split}_images' has shape {stored_shape} and "
            f"'{split}_labels' {labels.shape}, but {info.title} needs {expected} and {n_labels} "
            f"label value(s) per image: this is not the published {path.name}. Replace it with "
            f"the official file from {_url_of(info, path)} (or remove it from MEDMNIST_DIR)."
        )


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """Stored pixel values (0-255, usually uint8) as float32 in [0, 1]."""
    scaled = images.astype(np.float32)
    scaled /= 255.0
    return scaled


def _url_of(info: DatasetInfo, path: Path) -> str:
    """The official URL of the file named like ``path`` (the Zenodo record if none is)."""
    sizes = [size for size in SIZES if info.filename(size) == path.name]
    return info.url(sizes[0]) if sizes else ZENODO_RECORD.rsplit("/", 1)[0]


# --------------------------------------------------------------------------- loading


# More than eight parameters: each keyword is one way of finding the data, each with a default.
def load(
    name: str,
    split: str = "train",
    size: int = 28,
    *,
    source: str = "auto",
    root=None,
    download: bool = True,
    allow_synthetic: bool = False,
    seed: int = 0,
    synthetic_count: int | None = None,
    verbose: bool = True,
) -> MedDataset:
    """Load one split of a MedMNIST dataset.

    Args:
        name: "pneumonia", "oct", "derma" or "chest" (or the MedMNIST flag).
        split: "train", "val" or "test".
        size: image side in px: 28, 64, 128 or 224.
        source: "real" (fail if unavailable), "synthetic", or "auto" (real when reachable,
            else synthetic if ``allow_synthetic``).
        root: a folder holding the npz files (also ``$MEDMNIST_DIR``).
        download: fetch the official file when it is not on disk.
        allow_synthetic: with source="auto", fall back to the synthetic stand-in.
        seed: seed of the synthetic stand-in.
        synthetic_count: images in a synthetic split (default: a few thousand at most).
    """
    info = get_info(name)
    _check_size(size)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a split; choose one of {SPLITS}.")
    if source not in ("auto", "real", "synthetic"):
        raise ValueError(f"source={source!r}; choose 'auto', 'real' or 'synthetic'.")
    if source != "synthetic":
        try:
            path = locate(info, size, root=root, download_missing=download)
            images, labels = read_raw(path, info, split, size)
            return MedDataset(info, split, images, labels, synthetic=False, source=str(path))
        except DataUnavailableError as error:
            if source == "real" or not allow_synthetic:
                raise
            reason = str(error).splitlines()[0]
    else:
        reason = "requested"
    dataset = make_synthetic(info, split, size, seed=seed, count=synthetic_count)
    dataset.notes.append(f"synthetic stand-in: {reason}")
    if verbose:
        print(synthetic_banner(dataset, reason))
    return dataset


def make_synthetic(info, split: str, size: int, seed: int = 0, count: int | None = None):
    """A synthetic :class:`MedDataset` shaped like ``info``'s ``split``
    (:func:`helpers.synthetic.synthetic_arrays`).

    Args:
        info: the :class:`DatasetInfo` to imitate.
        split: "train", "val" or "test" (sets the class proportions).
        size: image side in px.
        seed: changes the images, not the class patterns.
        count: number of images (default: the official count, at most 4,000, or 1,000 above 64 px).
    """
    images, labels = synthetic_arrays(info, split, size, seed=seed, count=count)
    return MedDataset(
        info, split, images, labels, synthetic=True, source=f"synthetic (seed {seed})"
    )


def synthetic_banner(dataset: MedDataset, reason: str = "") -> str:
    """The loud notice printed whenever synthetic data is used."""
    line = "!" * 78
    why = f"\n!! reason: {reason}" if reason else ""
    return (
        f"{line}\n!! SYNTHETIC STAND-IN for {dataset.info.title} [{dataset.split}], "
        f"{dataset.size} px.{why}\n!! Same shapes, classes and task type as the real data, "
        f"but generated patterns:\n!! numbers computed on it are NOT medical results.\n{line}"
    )


# --------------------------------------------------------------------------- sampling


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def class_balanced(dataset: MedDataset, per_class: int, seed: int = 0) -> MedDataset:
    """At most ``per_class`` images of every class, drawn without replacement (paper 000)."""
    if dataset.info.multilabel:
        raise ValueError(
            "class_balanced: multi-label data has no single class per image; use cap()."
        )
    rng = _rng(seed)
    picks = [
        rng.permutation(np.flatnonzero(dataset.labels == c))[:per_class]
        for c in range(dataset.info.n_classes)
    ]
    return dataset.subset(rng.permutation(np.concatenate(picks)))


def cap(dataset: MedDataset, max_images: int | None, seed: int = 0) -> MedDataset:
    """A random subset of at most ``max_images``, keeping the class proportions (stratified)."""
    if max_images is None or len(dataset) <= max_images:
        return dataset
    rng = _rng(seed)
    if dataset.info.multilabel:
        return dataset.subset(np.sort(rng.choice(len(dataset), max_images, replace=False)))
    fraction = max_images / len(dataset)
    picks = []
    for c in range(dataset.info.n_classes):
        members = np.flatnonzero(dataset.labels == c)
        keep = max(1, int(round(fraction * len(members)))) if len(members) else 0
        picks.append(rng.permutation(members)[:keep])
    index = rng.permutation(np.concatenate(picks))[:max_images]
    return dataset.subset(index)


def oversample(dataset: MedDataset, seed: int = 0) -> MedDataset:
    """Random oversampling: every class repeated up to the size of the largest (paper 000, skin)."""
    if dataset.info.multilabel:
        raise ValueError("oversample: not defined for multi-label data.")
    rng = _rng(seed)
    counts = dataset.class_counts()
    target = counts.max()
    picks, copies = [], []
    for c in np.flatnonzero(counts):
        members = np.flatnonzero(dataset.labels == c)
        extra = rng.choice(members, target - len(members), replace=True)
        picks.append(np.concatenate([members, extra]))
        copies.append(np.arange(target) >= len(members))
    order = rng.permutation(target * len(picks))
    oversampled = dataset.subset(np.concatenate(picks)[order])
    oversampled.duplicate = np.concatenate(copies)[order]
    return oversampled


def draw_distinct(
    dataset: MedDataset, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images drawn at random, without replacement, from the split as stored.

    Oversampling's copies are left out (the UAPs of paper 000 are made from the raw, imbalanced
    training images). Returns the images (n, H, W, C), n = min(count, distinct images), and their
    positions in ``dataset``.
    """
    index = rng.permutation(dataset.distinct())[:count]
    return dataset.take(index), index


def load_for_scale(
    name: str, preset, seed: int = 0, root=None, source: str = "auto", verbose: bool = True
) -> dict[str, MedDataset]:
    """Train/val/test splits sampled as the papers do, capped by the scale preset.

    Class-balanced subsets for pneumonia and OCT (paper 000: 900/270 and 1,960/840 per
    class, capped by the preset and what the split holds), random oversampling of the
    skin-lesion training set (its copies are marked: :meth:`MedDataset.distinct`), no image
    without a finding in the multi-label training set (paper 004), and the preset's
    ``max_train``/``max_test`` caps everywhere. ``preset`` is a :class:`~helpers.scales.Preset`
    or a scale name ("smoke", ...); a rehearsal preset always gets synthetic data. Each split keeps
    one stored (uint8) copy of the images it uses; oversampling repeats them by index.
    """
    info = get_info(name)
    preset = as_preset(preset)
    if preset.rehearsal:  # a rehearsal runs on synthetic data of the scale's size
        source = "synthetic"
    samplers = {
        "train": lambda d: _sample_train(d, preset, seed),
        "val": lambda d: cap(d, preset.max_test, seed + 1),
        "test": lambda d: _sample_test(d, preset, seed + 2),
    }
    splits = {}
    for split in SPLITS:
        stored = load(
            info.key,
            split,
            preset.image_size,
            source=source,
            root=root,
            download=True,
            allow_synthetic=preset.offline_fallback,
            seed=seed,
            synthetic_count=_synthetic_count(info, split, preset),
            verbose=verbose,
        )
        verbose = verbose and not stored.synthetic  # one banner per dataset is enough
        splits[split] = samplers[split](stored).compact()
        del stored
    return splits


def _synthetic_count(info: DatasetInfo, split: str, preset) -> int:
    """Enough synthetic images for the sampling that follows, at most the official count."""
    wanted = preset.max_train if split == "train" else preset.max_test
    wanted = wanted or (4000 if split == "train" else 1000)
    per_class = _per_class(
        info.train_per_class if split == "train" else info.test_per_class,
        preset.train_per_class if split == "train" else preset.test_per_class,
    )
    if per_class and info.class_counts:
        counts = np.array(info.class_counts[split], dtype=float)
        # 1.5x: labels are drawn at random, so the rarest class must be expected well
        # above per_class
        wanted = max(wanted, int(np.ceil(1.5 * per_class * counts.sum() / counts.min())))
    # the normal images are dropped before sampling
    if split == "train" and info.train_without_normal:
        wanted = int(
            np.ceil(1.1 * wanted / (1.0 - np.prod(1.0 - np.array(info.finding_prevalence))))
        )
    return int(min(info.n_samples[split], wanted, 20_000))


def _per_class(paper: int | None, preset_cap: int | None) -> int | None:
    values = [v for v in (paper, preset_cap) if v is not None]
    return min(values) if values else None


def _sample_train(train: MedDataset, preset, seed: int) -> MedDataset:
    info = train.info
    if info.train_without_normal:  # paper 004: no image without a finding in training
        train = train.subset(np.flatnonzero(train.labels.any(axis=1)))
    per_class = _per_class(info.train_per_class, preset.train_per_class)
    if info.train_per_class is not None and per_class is not None:
        train = class_balanced(train, per_class, seed)
    train = cap(train, preset.max_train, seed)
    if info.oversample:
        train = cap(oversample(train, seed), preset.max_train, seed)
    return train


def _sample_test(test: MedDataset, preset, seed: int) -> MedDataset:
    info = test.info
    per_class = _per_class(info.test_per_class, preset.test_per_class)
    if info.test_per_class is not None and per_class is not None:
        test = class_balanced(test, per_class, seed)
    return cap(test, preset.max_test, seed)
