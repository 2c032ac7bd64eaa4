"""The experiment harness behind ``train.py``: the training loop, schedules, run records,
checkpoints, workers.

Kept apart from the ``eva`` library, which has no dependency on Hydra, W&B or the data code;
installed beside it (with ``models`` and ``data``) by ``pip install -e .``.
"""
