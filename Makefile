# Two commands do all the set-up on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/gp-activations
# The torch wheels to install first (local wheels on our machines; override elsewhere,
# e.g. `make test TORCH_SPEC="torch torchvision"`, or the CPU-only build:
# `make run TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu"`).
# Installed only where $(VENV) has no torch yet.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
PIP_FLAGS ?= -q
export TORCHINDUCTOR_CACHE_DIR ?= $(CURDIR)/.cache/inductor

.PHONY: install run test docs bench clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install $(PIP_FLAGS) $(TORCH_SPEC)
	$(PY) -m pip install $(PIP_FLAGS) -e ".[ray,test,models,docs,tensorboard]"
	touch $(STAMP)

install: $(STAMP)

RUN_DIR ?= runs/default

# The default search (experiments/mnist1d.toml); a second `make run` continues/reprints it.
run: $(STAMP)
	$(CLI) search --out $(RUN_DIR) \
		$(if $(wildcard $(RUN_DIR)/run.sqlite),--resume,--config experiments/mnist1d.toml)

# The suite on TEST_WORKERS processes (pytest-xdist; 2 = the two cores of our CI machines,
# 6.6 min there instead of 13; TEST_WORKERS=0 runs it in this process).  loadgroup: tests
# marked xdist_group("NAME") share one worker (the wheel builds, the Ray clusters).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadgroup tests

# The documentation (docs/, mkdocs.yml) into site/; strict: a warning is an error.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) benchmarks/activation_overhead.py
	$(PY) benchmarks/activation_overhead.py --sizes
	$(PY) benchmarks/eager_kernels.py
	$(PY) benchmarks/trainer_throughput.py
	$(PY) benchmarks/search_overhead.py

clean:
	rm -rf $(VENV) .cache build *.egg-info site
