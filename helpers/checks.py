"""Parameter checks shared by the attacks' settings: one message style, naming the parameter and
the fix (ART's ``_check_params`` idea). Used from chapter 2 on, by :class:`helpers.uap.UAPSettings`,
:class:`helpers.pixel.PixelSettings` and :class:`helpers.retrain.RetrainSettings`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def check_int(name: str, value, minimum: int = 1, hint: str = "") -> int:
    """``value`` as an int, or a ValueError when it is not an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{name}={value!r}: pass an integer >= {minimum}{extra}.")
    return int(value)


def check_positive(name: str, value, hint: str = "") -> float:
    """``value`` as a float, or a ValueError when it is not a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(value)
        or value <= 0
    ):
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{name}={value!r}: pass a finite number > 0{extra}.")
    return float(value)


def check_fraction(name: str, value, hint: str = "", *, zero: bool = True) -> float:
    """``value`` as a float, or a ValueError when it is not in [0, 1] (``zero=False``: (0, 1])."""
    low_ok = (lambda v: v >= 0) if zero else (lambda v: v > 0)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not (math.isfinite(value) and low_ok(value) and value <= 1)
    ):
        interval = "[0, 1]" if zero else "(0, 1]"
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"{name}={value!r}: pass a fraction in {interval}{extra}.")
    return float(value)


def check_choice(name: str, value, choices) -> None:
    """A ValueError naming the choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(map(repr, choices))}.")


def settings_from(kind: type, settings, options: dict, function: str):
    """A settings object of class ``kind``: ``settings`` with ``options`` (its field names) applied,
    or one built from ``options`` alone. Unknown option names give a ValueError listing the fields.
    """
    fields = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(
            f"{function}: unknown setting(s) {', '.join(unknown)}; the settings of "
            f"{kind.__name__} are {', '.join(fields)}."
        )
    if settings is None:
        return kind(**options)
    if not isinstance(settings, kind):
        raise ValueError(
            f"{function}: settings is a {type(settings).__name__}; pass a {kind.__name__} or "
            "keyword settings."
        )
    return dataclasses.replace(settings, **options) if options else settings
