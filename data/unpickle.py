"""The one safe reader of the pickled datasets (MNIST's ``mnist.pkl.gz``, CIFAR's batches).

A pickle can name any Python callable; this reader accepts only the few globals that numpy
arrays need, so a tampered file raises instead of running code.
"""

from __future__ import annotations

import pickle
from typing import Any, BinaryIO

ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }
)
"""``(module, name)`` pairs a dataset pickle may reference: numpy arrays and their dtypes."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :data:`ALLOWED_GLOBALS`.

    Args:
        stream: The binary stream to read.
        what: What the file is, for the error message (e.g. ``"the MNIST pickle"``).
        encoding: How to decode Python 2 strings; ``latin1`` keeps numpy's raw bytes intact.
    """

    def __init__(self, stream: BinaryIO, what: str, encoding: str = "latin1") -> None:
        super().__init__(stream, encoding=encoding)
        self.what = what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in {self.what}")
        return super().find_class(module, name)


def load_numpy_pickle(stream: BinaryIO, what: str) -> Any:
    """Read one pickled object made of numpy arrays, lists, dicts and strings.

    Raises:
        pickle.UnpicklingError: the file references any other global.
    """
    return NumpyOnlyUnpickler(stream, what).load()
