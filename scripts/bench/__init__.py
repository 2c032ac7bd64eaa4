"""The benchmark: step time, memory, communication and a phase profile of every optimizer
against SGD (the paper's Tables 5, 8 and 10), run as ``python -m scripts.bench``.

- :mod:`.contenders` — an optimizer label (``kfac@10``) → the optimizer and preconditioner
  ``train.py`` builds from ``conf/optimizer`` (Hydra's compose API, then
  :func:`harness.optimizers.build_optimizer`);
- :mod:`.workloads` — what is stepped: a model on random batches, or an experiment's own run;
- :mod:`.step_time` — the round-robin timer and the step-time record;
- :mod:`.memory` — bytes kept between steps and the peak of one algorithm alone;
- :mod:`.communication` — the bytes of statistics a preconditioner all-reduces;
- :mod:`.profile` — per-phase time from ``torch.profiler`` ranges;
- :mod:`.report` — the markdown of a record; :mod:`.inverse` — factor-inverse timings;
- :mod:`.cli` — the command line (``python -m scripts.bench --help``).

Time to a target accuracy is not measured here: it comes from the reproduction's Fig. 5
(``make fig5``, ``scripts/repro/time_to_target.py``), which reads a step-time record.
"""
