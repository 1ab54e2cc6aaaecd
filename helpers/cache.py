"""The course cache: where models, UAPs, attacks and retraining runs are kept, how an entry is
written so that nothing saved is lost or half-written, and the digests that go into cache keys.

Each cached result's key is built by its settings: :func:`helpers.training.model_key`,
:meth:`helpers.uap.UAPSettings.key`, :meth:`helpers.pixel.PixelSettings.key`,
:meth:`helpers.retrain.RetrainSettings.key`. Introduced in chapter 1.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from .config import ENV_CACHE_DIR


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the course cache.

    The cache is ``$COURSE_CACHE_DIR`` if set, else ``~/.cache/medattack``.
    """
    root = Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "medattack")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- digests


def array_digest(array) -> str:
    """A short hex digest (sha1, 12 characters) of an array's float32 values and shape."""
    values = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    digest = hashlib.sha1(str(values.shape).encode())
    digest.update(values.tobytes())
    return digest.hexdigest()[:12]


def weights_digest(model: keras.Model) -> str:
    """A short hex digest of the model's weights: changes whenever the model is trained further."""
    digest = hashlib.sha1()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:12]


# --------------------------------------------------------------------------- writing once


def save_npz_once(path, **arrays) -> bool:
    """Write ``arrays`` to the npz file ``path`` atomically, unless it exists; return True if
    written.

    An existing file is never overwritten: when two processes compute the same entry at once,
    the first writer wins and the other one's arrays are dropped (False), so both can go on
    with the saved file. The arrays are written to a temporary file first, then linked to
    ``path`` in one step that fails if ``path`` appeared meanwhile.
    """
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part.npz")
    os.close(fd)
    try:
        np.savez(partial, **arrays)
        return _link_once(Path(partial), path)
    finally:
        Path(partial).unlink(missing_ok=True)


def _link_once(source: Path, path: Path) -> bool:
    """Give ``source``'s content the name ``path`` unless ``path`` exists; True if it did."""
    try:
        os.link(source, path)  # atomic: fails if another writer was first
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links
        if path.exists():
            return False
        os.replace(source, path)
        return True


def publish_folder(staging: Path, folder: Path, keep_if) -> bool:
    """Rename the finished ``staging`` folder to ``folder``; True if it was.

    The rename fails when another process put ``folder`` there meanwhile: then, if
    ``keep_if(folder)`` (e.g. the entry is complete), that folder is kept and ``staging`` deleted
    (False); otherwise the error is raised.
    """
    try:
        staging.rename(folder)
        return True
    except OSError:
        if not keep_if(folder):
            raise
        shutil.rmtree(staging)
        return False
