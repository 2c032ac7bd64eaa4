"""The hyper-parameters every preconditioner shares, as one validated frozen dataclass.

``Cls(model, optimizer, **options)`` builds an :class:`Options` from the class's own
:attr:`~eva.preconditioner.Preconditioner.defaults` with the given keywords replaced
(:meth:`Options.override`); every value is checked once, here, and a bad one raises a
``ValueError`` naming the option and its allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eva.comm import Reducer
from eva.scaling import SCALINGS, Scaling
from eva.statistics import CONV_FACTORS, ConvFactors


def check_positive(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_int(name: str, value: object, low: int = 1) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ≥ ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_bool(name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


@dataclass(frozen=True)
class Options:
    """The shared options of :class:`~eva.preconditioner.Preconditioner` (each documented there),
    with the shared defaults; numbers are stored as floats, ``skip_layers`` as a tuple.

    ``running_avg=None`` (running sums) passes here; the preconditioner rejects it unless its
    class allows sums (:attr:`~eva.preconditioner.Preconditioner.allow_running_sum`).
    """

    damping: float = 0.03
    running_avg: float | None = 0.95
    kl_clip: float | None = 0.001
    scaling: Scaling = "kl_clip"
    update_interval: int = 1
    skip_layers: tuple[str, ...] = ()
    stat_batch: int | None = None
    conv_factors: ConvFactors = "reduce"
    enabled: bool = True
    reducer: Reducer | None = None
    overlap_comm: bool = True

    def __post_init__(self) -> None:
        check_positive("damping", self.damping)
        ra = self.running_avg
        if ra is not None and (
            isinstance(ra, bool) or not isinstance(ra, int | float) or not 0 < ra <= 1
        ):
            raise ValueError(f"running_avg must be in (0, 1], got {ra!r}")
        kl = self.kl_clip
        if kl is not None and (not isinstance(kl, int | float) or not kl >= 0):
            raise ValueError(f"kl_clip must be >= 0 or None, got {kl!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        check_int("update_interval", self.update_interval)
        if self.stat_batch is not None:
            check_int("stat_batch", self.stat_batch)
        if self.conv_factors not in CONV_FACTORS:
            raise ValueError(
                f"conv_factors must be one of {CONV_FACTORS}, got {self.conv_factors!r}"
            )
        check_bool("enabled", self.enabled)
        check_bool("overlap_comm", self.overlap_comm)
        skip = self.skip_layers
        normalized = {
            "damping": float(self.damping),
            "running_avg": None if ra is None else float(ra),
            "kl_clip": None if kl is None else float(kl),
            "skip_layers": (skip,) if isinstance(skip, str) else tuple(skip),
        }
        for name, value in normalized.items():
            object.__setattr__(self, name, value)

    def override(self, values: Mapping[str, Any], owner: str = "Options") -> Options:
        """These options with ``values`` replaced (validated again).

        Raises:
            TypeError: a name that is no option (``owner`` names the class in the message).
        """
        unknown = sorted(set(values) - OPTION_NAMES)
        if unknown:
            raise TypeError(f"{owner} got unexpected option(s) {unknown}")
        return dataclasses.replace(self, **values)


OPTION_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(Options))
"""The keyword arguments every preconditioner accepts."""


class OptionAttribute:
    """A read-only attribute of a preconditioner that reads the option of the same name from its
    ``options`` (``pre.damping`` is ``pre.options.damping``); setting it raises, since the
    options are fixed at construction."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(obj.options, self.name)

    def __set__(self, obj: Any, value: object) -> None:
        raise AttributeError(f"{self.name} is fixed at construction (an option)")
