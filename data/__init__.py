"""Dataset loaders used by the demo, the training entry point and the tests (installed beside
``eva`` by ``pip install -e .``)."""

from data.mnist import load_mnist

__all__ = ["load_mnist"]
