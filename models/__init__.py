"""Model definitions used by the demo, the training entry point and the tests (installed beside
``eva`` by ``pip install -e .``).

Start at :mod:`models.registry`: ``build_model(name, ...)`` for every name a ``conf/model`` file
can give. A new model is a module here, its entry in :data:`models.registry.MODELS` and a
``conf/model/<name>.yaml``; Eva and the baselines need nothing from it beyond ordinary
``nn.Linear`` / ``nn.Conv2d`` layers.
"""

from models.autoencoder import Autoencoder

__all__ = ["Autoencoder"]
