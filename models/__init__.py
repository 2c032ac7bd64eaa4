"""Model definitions used by the demo, the training entry point and the tests (not installed)."""

from models.autoencoder import Autoencoder

__all__ = ["Autoencoder"]
