"""``scripts/repro/records.py``: the paper's numbers the tables quote."""

from __future__ import annotations

import pytest

from scripts.repro import records as repro_records
from tests.repository import ROOT

PAPER = ROOT.parent / "shared" / "paper" / "eva-paper.txt"


def test_paper_numbers_are_in_the_paper():
    """Every number of paper_numbers.csv's tables appears in the paper's text."""
    if not PAPER.exists():
        pytest.skip("the paper's text is not beside the repository")
    text = PAPER.read_text()
    rows = repro_records.paper_numbers("table4") + repro_records.paper_numbers("table9")
    rows += repro_records.paper_numbers("table7") + repro_records.paper_numbers("table8")
    assert len(rows) == 54 + 12 + 12 + 4
    for row in rows:
        assert row["value"] in text, row
