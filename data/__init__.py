"""Dataset loaders used by the demo, the training entry point and the tests (installed beside
``eva`` by ``pip install -e .``).

Start at :mod:`data.registry`: ``build_dataset(name, ...)`` for every name a ``conf/dataset``
file can give, one module per source format (``cifar.py``, ``fmnist.py``, ``text.py``, …), the
batch iterators in ``loader.py`` and ``text.py``. A new dataset is a loader module, its entry
in :data:`data.registry.DATASETS` and a ``conf/dataset/<name>.yaml``.
"""

from data.mnist import load_mnist

__all__ = ["load_mnist"]
