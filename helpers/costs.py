"""Image passes through the models: counted while a chapter runs.

The work of a chapter is, to a good approximation, the number of images that go through each
model forward (a prediction) and backward (a gradient, for training or for an FGSM step). The
helpers that call a model count them here: :func:`models.predict_proba`, :func:`training.fit`,
:func:`uap.universal_perturbation` and the pixel attacks' forward pass. A chapter's
:class:`~helpers.records.Recorder` starts the count afresh and writes it to the results file
(``"passes"``), so every run says how much work it did, per architecture.

The count, times a per-image cost on some hardware, is the chapter's run time there: see
:mod:`helpers.timing` for the predicted counts of every chapter and the README's times.
"""

from __future__ import annotations

from collections import defaultdict

KINDS = ("forward", "backward")

_COUNTS: dict[str, dict[str, int]] = defaultdict(lambda: {kind: 0 for kind in KINDS})


def architecture_of(model) -> str:
    """The architecture a course model was built as (its name without
    ``_imagenet``/``_scratch``)."""
    name = str(getattr(model, "name", "model"))
    head, _, tail = name.rpartition("_")
    return head if tail in ("imagenet", "scratch") and head else name


def count(model, kind: str, images: int) -> None:
    """Add ``images`` passes of ``kind`` ("forward" or "backward") through ``model``."""
    count_architecture(architecture_of(model), kind, images)


def add(counts: dict[str, dict[str, int]]) -> None:
    """Add a :func:`snapshot` taken elsewhere (e.g. in a child process that trained a model)."""
    for arch, kinds in counts.items():
        for kind, images in kinds.items():
            count_architecture(arch, kind, images)


def count_architecture(architecture: str, kind: str, images: int) -> None:
    """Add ``images`` passes of ``kind`` through a model of ``architecture``."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {KINDS}.")
    _COUNTS[architecture][kind] += int(images)


def snapshot() -> dict[str, dict[str, int]]:
    """``{architecture: {"forward": n, "backward": n}}`` counted since the last :func:`reset`."""
    return {arch: dict(kinds) for arch, kinds in sorted(_COUNTS.items())}


def reset() -> None:
    """Start counting from zero."""
    _COUNTS.clear()
