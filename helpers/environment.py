"""What a chapter runs on, checked before anything is trained (first code cell of every chapter).

:func:`check` prints the versions in use (Python, TensorFlow, Keras, ART, NumPy) and the GPU;
it stops with one clear sentence when a library is outside the versions the course supports, and,
at the ``gpu`` and ``paper`` scales, when no GPU is attached or the ImageNet weights of the
scale's main architecture cannot be fetched (those scales never fall back to random weights).

Introduced in chapter 1 (transfer learning).
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from .scales import as_preset

# TensorFlow and the models are imported only inside the functions that need them: the versions
# must print, and a bad installation be named in one sentence, even where TensorFlow cannot load.

#: Supported versions, [lowest, first unsupported): the course's requirements.txt says the same.
SUPPORTED = {
    "tensorflow": ("2.16", "2.22"),
    "keras": ("3.0", "4.0"),
    "adversarial-robustness-toolbox": ("1.20", "1.21"),
    "numpy": ("2.0", "3.0"),
}
NEEDS_GPU = ("gpu", "paper")


class UnsupportedEnvironment(RuntimeError):
    """The chapter cannot run here; ``str()`` is one sentence saying what to do."""


def versions() -> dict[str, str]:
    """Installed versions of Python and the libraries the course depends on ("missing" if
    absent)."""
    found = {"python": platform.python_version()}
    for name in SUPPORTED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


def _parts(text: str) -> tuple[int, ...]:
    numbers = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def unsupported(found: dict[str, str]) -> list[str]:
    """The libraries of ``found`` outside :data:`SUPPORTED`, each as 'name X (supported: A to below
    B)'."""
    bad = []
    for name, (low, high) in SUPPORTED.items():
        have = found.get(name, "missing")
        if have == "missing" or not _parts(low) <= _parts(have) < _parts(high):
            bad.append(f"{name} {have} (supported: {low} to below {high})")
    return bad


def gpus() -> list[str]:
    """Names of the GPUs TensorFlow sees (empty on a CPU-only machine)."""
    import tensorflow as tf

    devices = tf.config.list_physical_devices("GPU")
    names = []
    for device in devices:
        try:
            names.append(
                tf.config.experimental.get_device_details(device).get("device_name", device.name)
            )
        except (ValueError, RuntimeError):
            names.append(device.name)
    return names


def _imagenet_weights_problem(architecture: str, side: int) -> str | None:
    """None when the ImageNet weights of ``architecture`` are at hand (downloading them if needed),
    else why not."""
    from .models import WeightsUnavailableError, fetch_imagenet_weights

    try:
        fetch_imagenet_weights(architecture, side)
    except WeightsUnavailableError as error:
        return str(error).splitlines()[0]
    return None


def check(scale, *, verbose: bool = True) -> dict:
    """Print versions and GPU; raise :class:`UnsupportedEnvironment` (one sentence) when the chapter
    cannot run.

    ``scale``: a scale name or a :class:`~helpers.scales.Preset` (a rehearsal needs neither GPU nor
    weights).

    Returns ``{"versions": ..., "gpus": [...]}``.
    """
    preset = as_preset(scale, parameter="SCALE")
    found = versions()
    if verbose:
        print("versions: " + ", ".join(f"{name} {v}" for name, v in found.items()))
    if bad := unsupported(found):
        raise UnsupportedEnvironment(
            f"This course needs other library versions: {'; '.join(bad)}. Install the "
            f"course's requirements (pip install -r requirements.txt) and restart the kernel."
        )
    devices = gpus()
    if verbose:
        print("GPU: " + (", ".join(devices) if devices else "none (TensorFlow runs on the CPU)"))
    if preset.rehearsal and verbose:
        print(
            f"rehearsal of scale '{preset.name}': runs on the CPU, without a GPU or ImageNet "
            "weights"
        )
    if preset.name in NEEDS_GPU and not preset.rehearsal:
        if not devices:
            raise UnsupportedEnvironment(
                f"SCALE='{preset.name}' needs a GPU and TensorFlow sees none: on Colab "
                "choose Runtime > Change runtime type > T4 GPU, or run SCALE='smoke' or 'cpu' "
                "here."
            )
        side = preset.backbone_input or preset.image_size
        if preset.weights == "imagenet" and (
            why := _imagenet_weights_problem(preset.main_architecture, side)
        ):
            raise UnsupportedEnvironment(
                f"SCALE='{preset.name}' needs the ImageNet weights of "
                f"{preset.main_architecture}, which could not be fetched ({why}); connect "
                f"to the internet or run SCALE='smoke' or 'cpu'."
            )
    return {"versions": found, "gpus": devices}
