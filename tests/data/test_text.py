"""The ``pystdlib`` byte corpus (``data/text.py``): which files, the split by file, the caps, the
loaders' windows and exact resumption, and one-line errors."""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

import pytest
import torch

from data.registry import build_dataset
from data.text import (
    SEPARATOR,
    RandomWindows,
    SequentialWindows,
    TextSplits,
    is_validation,
    load_pystdlib,
    stdlib_files,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def split_of(paths: list[str], fraction: float = 0.05) -> tuple[list[str], list[str]]:
    val = [p for p in paths if zlib.crc32(p.encode()) % 10_000 < fraction * 10_000]
    return [p for p in paths if p not in val], val


def test_files_sorted_and_skipped_folders(tmp_path: Path) -> None:
    root = write_tree(
        tmp_path,
        {
            "b.py": "b",
            "a.py": "a",
            "pkg/mod.py": "m",
            "pkg/test/test_mod.py": "t",
            "tests/x.py": "t",
            "site-packages/lib.py": "s",
            "idlelib/idle.py": "i",
            "encodings/cp1.py": "e",
            "notes.txt": "n",
            "test.py": "a file named test is kept",
        },
    )
    assert stdlib_files(root) == ["a.py", "b.py", "pkg/mod.py", "test.py"]


def test_split_by_path_hash_and_nul_joined_bytes(tmp_path: Path) -> None:
    names = [f"m{i:02d}.py" for i in range(60)]
    root = write_tree(tmp_path, {n: f"# {n}\n" for n in names})
    train_files, val_files = split_of(names, 0.2)
    assert val_files and train_files  # the rule written out above picks some of each
    splits = load_pystdlib(root, val_fraction=0.2, context=4, max_val_bytes=None)
    assert (splits.train_files, splits.test_files) == (len(train_files), len(val_files))
    want_train = bytes([SEPARATOR]).join((root / n).read_bytes() for n in train_files)
    want_val = bytes([SEPARATOR]).join((root / n).read_bytes() for n in val_files)
    assert bytes(splits.train.tolist()) == want_train
    assert bytes(splits.test.tolist()) == want_val
    assert splits.train.dtype == torch.uint8 and splits.num_classes == 256
    assert all(is_validation(n, 0.2) == (n in val_files) for n in names)


def test_caps_keep_the_first_bytes(tmp_path: Path) -> None:
    names = [f"m{i:02d}.py" for i in range(60)]
    root = write_tree(tmp_path, {n: "x = 1\n" * 20 for n in names})
    full = load_pystdlib(root, val_fraction=0.2, max_val_bytes=None)
    capped = load_pystdlib(root, val_fraction=0.2, max_train_bytes=300, max_val_bytes=200)
    assert len(capped.train) == 300 and len(capped.test) == 200
    assert torch.equal(capped.train, full.train[:300]) and torch.equal(capped.test, full.test[:200])


def test_real_stdlib_is_read() -> None:
    splits = build_dataset("pystdlib", max_train_bytes=50_000, max_val_bytes=10_000)
    assert isinstance(splits, TextSplits) and splits.task == "language"
    assert len(splits.train) == 50_000 and len(splits.test) == 10_000
    assert splits.train_files > 100 and 0 < splits.test_files < splits.train_files / 5
    text = bytes(splits.train[:20_000].tolist()).decode("utf-8", errors="replace")
    assert "def " in text and "import " in text
    assert splits.input_shape == (128,) and not splits.in_memory


def test_random_windows_are_next_byte_pairs_and_reproducible() -> None:
    data = torch.arange(200, dtype=torch.uint8)
    loader = RandomWindows(data, context=8, batch_size=4, steps_per_epoch=3, seed=7)
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3 and loader.epoch == 1
    for x, y in batches:
        assert x.shape == y.shape == (4, 8) and x.dtype == torch.int64
        assert torch.equal(y, x + 1)  # consecutive bytes: targets are the next byte
        assert int(x.max()) + 1 <= 199
    again = list(RandomWindows(data, context=8, batch_size=4, steps_per_epoch=3, seed=7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = list(RandomWindows(data, context=8, batch_size=4, steps_per_epoch=3, seed=8))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other))
    second_epoch = list(loader)
    assert not torch.equal(second_epoch[0][0], batches[0][0])


def test_random_windows_resume_mid_epoch() -> None:
    data = torch.randint(256, (500,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    straight = RandomWindows(data, 16, 4, 5, seed=3)
    reference = [x for _ in range(2) for x, _ in straight]
    killed = RandomWindows(data, 16, 4, 5, seed=3)
    seen = []
    for i, (x, _) in enumerate(killed):
        seen.append(x)
        if i == 2:
            break
    resumed = RandomWindows(data, 16, 4, 5, seed=999)
    resumed.load_state_dict(killed.state_dict())
    seen += [x for x, _ in resumed] + [x for x, _ in resumed]
    assert len(seen) == len(reference)
    assert all(torch.equal(a, b) for a, b in zip(seen, reference))
    with pytest.raises(ValueError, match="saved for 500 training bytes, this loader has 499"):
        RandomWindows(data[:499], 16, 4, 5).load_state_dict(killed.state_dict())


def test_ranks_split_each_global_batch() -> None:
    data = torch.arange(256, dtype=torch.uint8)
    whole = next(iter(RandomWindows(data, 8, 4, 2, seed=1)))[0]
    parts = [
        next(iter(RandomWindows(data, 8, 4, 2, seed=1, rank=r, world_size=2)))[0] for r in (0, 1)
    ]
    assert torch.equal(torch.cat(parts), whole)


def test_sequential_windows_cover_the_split_once() -> None:
    data = torch.arange(50, dtype=torch.uint8)
    loader = SequentialWindows(data, context=8, batch_size=4)
    batches = list(loader)
    assert loader.num_windows == 6 and len(loader) == len(batches) == 2
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x.flatten(), torch.arange(48)) and torch.equal(y, x + 1)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"context": 0}, "dataset.context must be a positive integer"),
        ({"steps_per_epoch": 1.5}, "dataset.steps_per_epoch"),
        ({"max_train_bytes": 0}, "dataset.max_train_bytes must be a positive integer or null"),
        ({"val_fraction": 1.0}, "dataset.val_fraction"),
    ],
)
def test_bad_options_one_line(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        build_dataset("pystdlib", **options)
    assert "\n" not in str(info.value)


def test_too_few_bytes_name_the_cap() -> None:
    splits = build_dataset("pystdlib", max_train_bytes=100, max_val_bytes=100)
    with pytest.raises(ValueError, match="max_train_bytes"):
        splits.loaders(4)
    splits = build_dataset("pystdlib", max_train_bytes=1000, max_val_bytes=100)
    with pytest.raises(ValueError, match="max_val_bytes"):
        splits.loaders(4)
    with pytest.raises(ValueError, match="resize does not apply to text"):
        build_dataset("pystdlib", max_train_bytes=1000).loaders(4, resize=32)


def test_no_sources_says_where_it_looked(tmp_path: Path) -> None:
    write_tree(tmp_path, {"site-packages/a.py": "x", "readme.txt": "y"})
    for root in (tmp_path, tmp_path / "missing"):
        with pytest.raises(FileNotFoundError) as info:
            build_dataset("pystdlib", root=str(root))
        message = str(info.value)
        assert "\n" not in message and str(root) in message and "no .py files" in message
