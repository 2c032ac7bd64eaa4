"""The project's scripts, run as modules (``python -m scripts.bench``) or through the Makefile."""
