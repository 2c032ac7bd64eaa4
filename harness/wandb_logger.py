"""Weights & Biases logging that never waits on the network.

``mode: auto`` logs online only when an API key is configured (``wandb login`` or
``WANDB_API_KEY``) and offline otherwise (``wandb/offline-run-*``, upload later with
``wandb sync``); ``WANDB_MODE`` in the environment wins. Local run records are written either way.
"""

from __future__ import annotations

import os
from typing import Any


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    """A thin wrapper: ``log`` and ``finish`` are no-ops when W&B is off."""

    def __init__(
        self,
        enabled: bool,
        mode: str,
        project: str,
        entity: str | None,
        name: str,
        group: str,
        config: dict[str, Any],
        run_dir: str,
    ) -> None:
        self.run = None
        if not enabled:
            return
        import wandb

        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if _has_api_key() else "offline")
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            config=config,
            dir=run_dir,
            mode=mode,
            settings=wandb.Settings(init_timeout=30, silent=True),
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log a dict of scalars at a global step."""
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
