"""The reproduction behind ``python -m scripts.reproduce`` and ``make table4`` … ``make fig8``,
``make lm``, ``make kl_sweep``: for each target, run what is missing, then render from the run
records.

How a target flows through the package (``table4`` at ``--scale cpu`` as the example):

1. **What it is made of** — :mod:`.targets` finds ``table4`` by name; its builder in
   :mod:`.grids` (tables), :mod:`.figure_grids` (figures), :mod:`.bench_grid` (Tables 5, 8, 10),
   :mod:`.lm_grid` (``lm``) or :mod:`.kl_grid` (``kl_sweep``) returns a
   :class:`~.sweeps.Target`: Hydra sweeps, learning-rate sweeps of tuned settings, benchmark
   calls, and what its scale cannot run (:mod:`.sweeps`).
2. **Running it** — :mod:`.run` turns every unfinished sweep into ``python train.py -m …`` (and
   benchmark calls into ``python -m scripts.bench …``); :mod:`.pool` runs them side by side for
   ``--jobs N``; :mod:`.tuning` picks a tuned setting's rate from its sweep's records before the
   other seeds start. Each run leaves ``results/runs/<scale>/<group>/<overrides>/``.
3. **Reading it back** — :mod:`.records` turns those folders into rows (status, final
   accuracy, curves); nothing is read from W&B.
4. **Rendering it** — :mod:`.render` writes ``results/<scale>/<target>.md`` with the header
   every render shares (what ran, the command, how many runs finished), then the body from
   :mod:`.tables` / :mod:`.table4_tuned` / :mod:`.bench_tables` (over :mod:`.table`, with
   the paper's numbers from ``paper_numbers.csv``), :mod:`.figures` / :mod:`.time_to_target`
   (over :mod:`.plotting`), :mod:`.lm_report` or :mod:`.kl_table`.

A new target is a builder in a grid module (step 1), registered in :mod:`.targets`, and a
renderer for its records (step 4), registered in ``TABLES`` of :mod:`.render` or ``BUILDERS`` of
:mod:`.figures`; the runner and the record reader need no change.

Outside the targets: :mod:`.kl_clip_report` reports, for any runs you name (``kl_sweep``'s, for
one), how often KL clipping bound each epoch
(``python -m scripts.repro.kl_clip_report <run folders> --out <stem>``).
"""
