"""``scripts/repro/table4_tuned.py``: what Table 4's claim sentences say while cells are missing
(the full table, from fabricated records: ``test_run.py``)."""

from __future__ import annotations

from scripts.repro.records import Cell
from scripts.repro.table4_tuned import _claims


def _cell(*accuracies: float) -> Cell:
    return Cell(values=accuracies, expected=3, diverged=0)


def test_eva_below_sgd_refutes_the_ordering_before_kfac_is_in() -> None:
    """Eva − SGD alone decides "does not hold" when Eva is not above SGD; when it is above, the
    ordering waits for K-FAC; one seed of Eva says nothing."""
    sgd = _cell(86.0, 86.2, 85.8)
    below = {"SGD": sgd, "Eva, whole-batch statistics": _cell(84.5, 84.5, 84.4)}
    (sentence,) = _claims(below, epochs=20)
    assert sentence.startswith("At 20 epochs, with whole-batch statistics: Eva − SGD -1.53")
    assert "(lower), K-FAC has fewer than two seeds so far:" in sentence
    assert sentence.endswith("does not hold (Eva is not above SGD) at this scale.")
    level = {"SGD": sgd, "Eva, whole-batch statistics": _cell(86.0, 86.1, 85.9)}
    assert "does not hold (Eva is not above SGD)" in _claims(level)[0]  # "no difference"
    above = {
        "SGD": sgd,
        "Eva, whole-batch statistics": _cell(88.0, 88.1, 87.9),
        "K-FAC, whole-batch statistics": _cell(87.0),  # one seed: not a cell to compare yet
    }
    (sentence,) = _claims(above)
    assert sentence.startswith("With whole-batch statistics: Eva − SGD +2.00")
    assert sentence.endswith("is not decided until K-FAC has two seeds at this scale.")
    assert _claims({"SGD": sgd, "Eva, whole-batch statistics": _cell(80.0)}) == []
