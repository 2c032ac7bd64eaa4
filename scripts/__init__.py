"""Scripts of the project, run as modules: ``python -m scripts.bench``, ``python -m scripts.reproduce``."""
