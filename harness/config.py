"""Checks on a composed config, before any work: one line naming the offending key."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A config value outside its allowed range."""


def _require(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _positive_int(cfg: DictConfig, key: str, allow_none: bool = False) -> None:
    value = cfg.get(key.split(".")[-1])
    if allow_none and value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    _require(ok, key, "an integer > 0", value)


def check_scale(cfg: DictConfig, choices: Mapping[str, object]) -> None:
    """``scale=<s>`` took effect: the experiment has a ``conf/at_scale/<experiment>_<s>.yaml``
    (it sets ``scale``; Hydra skips a missing one silently).

    Args:
        cfg: The composed config.
        choices: Hydra's config-group choices (``HydraConfig.get().runtime.choices``).
    """
    chosen = choices.get("scale") or "paper"
    if cfg.get("scale", "paper") != chosen:
        experiment = choices.get("experiment")
        if experiment is None:
            raise ConfigError(f"scale={chosen} needs an experiment=<name> that has it")
        raise ConfigError(
            f"scale={chosen}: experiment={experiment} has no {chosen} setting (no "
            f"conf/at_scale/{experiment}_{chosen}.yaml); scale=paper runs it as it is"
        )


def validate(cfg: DictConfig, world_size: int = 1) -> None:
    """Raise :class:`ConfigError` for the first invalid value found."""
    trainer = cfg.trainer
    for key in (
        "epochs",
        "batch_size",
        "eval_batch_size",
        "eval_interval",
        "checkpoint_interval",
        "log_interval",
    ):
        _positive_int(trainer, f"trainer.{key}")
    _positive_int(trainer, "trainer.max_steps", allow_none=True)
    _require(
        trainer.batch_size % world_size == 0,
        "trainer.batch_size",
        f"divisible by the number of workers ({world_size})",
        trainer.batch_size,
    )
    _require(
        trainer.amp in (None, "bf16", "fp16"), "trainer.amp", "null, bf16 or fp16", trainer.amp
    )
    timeout = trainer.get("dist_timeout_s")
    _require(
        isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0,
        "trainer.dist_timeout_s",
        "a number of seconds > 0",
        timeout,
    )
    lr = cfg.optimizer.get("lr")
    _require(isinstance(lr, int | float) and lr > 0, "optimizer.lr", "a number > 0", lr)
    warmup = cfg.schedule.get("warmup_epochs", 0)
    _require(
        isinstance(warmup, int | float) and warmup >= 0,
        "schedule.warmup_epochs",
        "a number >= 0",
        warmup,
    )
