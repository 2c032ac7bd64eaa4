"""The grids (``scripts/repro/grids.py``, ``figure_grids.py``, ``bench_grid.py``, ``lm_grid.py``;
by name in ``targets.py``): every run of every target composes into the group of its experiment
and scale, shared runs are one directory named as Hydra names it (``sweeps.run_dirname``), the
``lm`` grid per scale.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.records import RunRecord
from scripts.repro.run import EXCLUDE_KEYS, Layout
from scripts.repro.sweeps import SCALES, Sweep, run_dirname
from scripts.repro.targets import TARGETS, target
from tests.repository import ROOT
from tests.scripts.repro.fabricate import LABELS


@pytest.mark.long
@pytest.mark.parametrize("scale", SCALES)
def test_every_run_composes_into_its_group(scale, compose):
    """Each grid run is a valid train.py config at its scale; its folder is <its config's
    group>/<dirname>. A run that several targets share (same group and overrides) is composed
    once."""
    seen: set[tuple[str, str]] = set()
    for name in TARGETS:
        tgt = target(name, scale)
        sweeps = [*tgt.sweeps, *(t.sweep() for t in tgt.tuned), *(t.final(0.1) for t in tgt.tuned)]
        for sweep in sweeps:
            for run in sweep.runs()[:2]:
                if (sweep.group, run_dirname(run)) in seen:
                    continue
                seen.add((sweep.group, run_dirname(run)))
                overrides = [
                    f"experiment={sweep.experiment}",
                    f"scale={sweep.scale}",
                    *(f"{k}={v}" for k, v in run.items()),
                ]
                cfg = compose(overrides, hydra=True)
                assert cfg.group == sweep.group and cfg.scale == sweep.scale, (name, overrides)
                choices = cfg.hydra.runtime.choices
                for key, value in run.items():
                    got = choices[key] if key in choices else OmegaConf.select(cfg, key)
                    got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
                    assert str(got).replace(" ", "") == value, (name, key, got, value)


def test_shared_runs_are_one_directory():
    """Runs that several SCALE=cpu targets need are one folder each: Table 9's Eva (seed 0, lr
    0.1) is a run of Table 4's lr sweep, Fig. 3's FOOF is Fig. 8's, Fig. 5's Shampoo is Fig. 8's."""
    layout = Layout(Path("r"), "cpu")

    def dirs(name: str) -> set[Path]:
        tgt = target(name, "cpu")
        sweeps = [*tgt.sweeps, *(t.sweep() for t in tgt.tuned)]
        return {layout.run_dir(s, r) for s in sweeps for r in s.runs()}

    shared = dirs("table9") & dirs("table4")
    assert [p.name for p in shared] == [
        "dataset=cifar10_images,model=resnet20,optimizer.lr=0.1,optimizer=eva,seed=0"
    ]
    assert {p.name.split(",")[-2] for p in dirs("fig3") & dirs("fig8")} == {"optimizer=foof"}
    assert len(dirs("fig3") & dirs("fig8")) == 2  # seeds 0 and 1
    assert {p.name.split(",")[-2] for p in dirs("fig5") & dirs("fig8")} == {"optimizer=shampoo"}
    assert dirs("table4") <= dirs("fig5")  # Fig. 5 plots Table 4's runs


def test_run_dirname_matches_hydra(tmp_path, cli, tiny):
    """A diverging job does not stop its sweep, and Hydra's folder is the predicted one."""
    sweep = Sweep("cifar", {"optimizer.lr": (1e12, 0.05)}, {"optimizer": "sgd"}, "smoke")
    assert sweep.overrides()[:2] == ["experiment=cifar", "scale=smoke"]
    args = ["-m", *sweep.overrides(), *tiny, f"out_root={tmp_path}", "skip_completed=true"]
    args += ["hydra.sweep.subdir=${hydra:job.override_dirname}"]
    args += [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(EXCLUDE_KEYS)}]"]
    proc = cli(args, ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tiny_keys = dict(k.split("=", 1) for k in tiny)
    tiny_keys = {k: v for k, v in tiny_keys.items() if k not in EXCLUDE_KEYS}
    statuses = []
    for run in sweep.runs():
        run_dir = tmp_path / sweep.group / run_dirname({**run, **tiny_keys})
        statuses.append(RunRecord(run_dir).data["status"])
    assert statuses == ["failed", "completed"]
    again = cli(args, ROOT)
    assert again.returncode == 0 and again.stdout.count("skip:") == 2


ADAMW_LRS, SGD_LRS = (0.001, 0.002, 0.004), (0.03, 0.1, 0.3)


# ------------------------------------------------------------------------------------ grid


def test_lm_grid_per_scale():
    """Seven settings tuned by test loss, 2 seeds, an lr family each; renders under lm/."""
    for scale in SCALES:
        tgt = target("lm", scale)
        assert tuple(t.label for t in tgt.tuned) == LABELS
        assert all(t.metric == "test_loss" and t.minimise and t.seeds == (0, 1) for t in tgt.tuned)
        assert {(t.experiment, t.scale) for t in tgt.tuned} == {("lm", scale)}
        (job,) = tgt.bench
        assert job.script == "scripts.bench" and job.name == f"steptime-{scale}-lm"
        settings = [b for a, b in zip(job.args, job.args[1:], strict=False) if a == "--setting"]
        assert settings == list(LABELS)
        experiment = job.args[job.args.index("--experiment") + 1]
        assert experiment == ("lm" if scale == "paper" else f"lm,scale={scale}")
    cpu = target("lm", "cpu")
    assert [t.lrs for t in cpu.tuned] == [
        ADAMW_LRS,
        *[SGD_LRS] * 2,
        *[ADAMW_LRS] * 2,
        SGD_LRS,
        SGD_LRS,
    ]
    assert all(len(t.lrs) == 2 for t in target("lm", "smoke").tuned)
    layout = Layout(Path("r"), "cpu")
    assert layout.renders_of(cpu) == Path("r/lm")
    assert Layout(Path("r"), "paper").renders_of(target("lm", "paper")) == Path("r/lm/paper")
    assert Layout(Path("r"), "smoke").renders_of(target("lm", "smoke")) == Path("r/smoke")
    assert layout.renders_of(target("table4", "cpu")) == Path("r/cpu")


def test_lm_runs_compose(compose):
    """Every lm run of the cpu grid is a train.py config with its own settings."""
    for tuned in target("lm", "cpu").tuned:
        run = tuned.sweep().runs()[0]
        cfg = compose(["experiment=lm", *(f"{k}={v}" for k, v in run.items())])
        assert cfg.group == "lm" and cfg.model.name == "gpt"
        assert cfg.optimizer.name == run["optimizer"]
        decay = 0.1 if "adamw" in run["optimizer"] else 0.0005
        assert cfg.optimizer.base.weight_decay == decay
    smoke = compose(["experiment=lm", "scale=smoke"])
    assert smoke.group == "smoke_lm" and smoke.scale == "smoke"
    assert smoke.dataset.context <= smoke.model.kwargs.context
