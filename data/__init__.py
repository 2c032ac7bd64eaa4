"""Dataset loaders used by the demo, the training entry point and the tests (not installed)."""

from data.mnist import load_mnist

__all__ = ["load_mnist"]
