"""Where a seeded loader stands in its data — the epoch, the batches of it already handed out and
the generator state at the epoch's start — kept so that a run restarted from a checkpoint goes
on with the very batches it would have seen. Shared by the image loader
(:class:`data.loader.TensorLoader`) and the text loader (:class:`data.text.RandomWindows`)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch


class SeededEpochs:
    """Resumable epoch bookkeeping for a loader that draws each epoch's random numbers at once
    from its own CPU generator.

    A subclass calls :meth:`_start_epochs` in its constructor, draws an epoch from
    :meth:`_epoch_generator`, calls :meth:`_handed_out` before yielding each batch, and names the
    size its state is only valid for (:attr:`size_key`, :attr:`size_unit`, :meth:`_size`).
    """

    size_key: ClassVar[str]
    """The key of :meth:`state_dict` that holds :meth:`_size`."""
    size_unit: ClassVar[str]
    """What :meth:`_size` counts, for the error message of a mismatched state."""

    seed: int
    _generator: torch.Generator
    _epoch_state: torch.Tensor
    _epoch: int
    _batch: int

    def __len__(self) -> int:
        raise NotImplementedError

    def _size(self) -> int:
        """The size of the data the state belongs to."""
        raise NotImplementedError

    def _start_epochs(self, seed: int) -> None:
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._epoch_state = self._generator.get_state()
        self._epoch = 0
        self._batch = 0

    @property
    def epoch(self) -> int:
        """Index of the epoch the next batch belongs to."""
        return self._epoch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with the same batches after a restart.

        Returns:
            ``{"generator": <state at the start of the current epoch>, "epoch": int,
            "batch": <batches of it already handed out>, "seed": int, <size_key>: int}``.
        """
        return {
            "generator": self._epoch_state.clone(),
            "epoch": self._epoch,
            "batch": self._batch,
            "seed": self.seed,
            self.size_key: self._size(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next iteration continues where that one stopped.

        Raises:
            ValueError: The state belongs to data of another size, or its batch position is out
                of range.
        """
        if int(state[self.size_key]) != self._size():
            raise ValueError(
                f"state was saved for {state[self.size_key]} {self.size_unit}, this loader has "
                f"{self._size()}"
            )
        batch = int(state["batch"])
        if not 0 <= batch < max(1, len(self)):
            raise ValueError(f"state batch must be in [0, {len(self) - 1}], got {batch}")
        self._epoch_state = state["generator"].clone()
        self._generator.set_state(self._epoch_state)
        self._epoch = int(state["epoch"])
        self._batch = batch

    def _epoch_generator(self) -> torch.Generator:
        """The generator, rewound to the start of the current epoch: draw the epoch from it."""
        self._generator.set_state(self._epoch_state)
        return self._generator

    def _handed_out(self, batch: int) -> None:
        """Batch ``batch`` of the epoch is handed out: the next one is ``batch + 1``, or, after
        the last, the first of the next epoch."""
        if batch + 1 >= len(self):
            self._finish_epoch()
        else:
            self._batch = batch + 1

    def _finish_epoch(self) -> None:
        """Move on to the next epoch, whose draws start where this epoch's ended."""
        self._epoch += 1
        self._batch = 0
        self._epoch_state = self._generator.get_state()
