"""Model definitions used by the demo, the training entry point and the tests (installed beside
``eva`` by ``pip install -e .``)."""

from models.autoencoder import Autoencoder

__all__ = ["Autoencoder"]
