# Two commands do all the set-up on a fresh machine (Python 3.9+ with venv and pip):
#   make demo         builds .venv and runs the main job: the offline demo, quick preset (15-30 min on 2 CPU cores, machine-dependent)
#   make test         builds .venv and runs the test suite
# (make quickstart: a 15-second smoke job through s3prl's downstream runner.)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# torch is pinned and installed first: a bare torch requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: setup demo quickstart test clean system-packages

setup: system-packages $(VENV)/.installed

# espeak-ng synthesises the mini-SUPERB speech (tests, demo). Installed with apt when missing and we are root, waiting
# up to 10 minutes for another apt/dpkg (e.g. unattended-upgrades on a fresh machine) to release its lock.
system-packages:
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get -o DPkg::Lock::Timeout=600 update -qq && DEBIAN_FRONTEND=noninteractive apt-get \
	      -o DPkg::Lock::Timeout=600 install -y -qq espeak-ng >/dev/null; \
	  else echo "espeak-ng is missing: install it (e.g. sudo apt-get install espeak-ng)"; exit 1; fi; }

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH) 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install -q -e '.[superb,test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, s3prl_distill; assert torch.__version__.startswith('$(subst torch==,,$(TORCH))'), torch.__version__"
	touch $@

demo: setup
	$(VENV)/bin/s3prl-distill demo --preset quick --workdir result/demo

quickstart: setup
	$(VENV)/bin/s3prl-distill quickstart --workdir result/quickstart

# Two pytest workers (pytest-xdist), each test file on one worker so module fixtures are built once: most of the
# suite is s3prl subprocesses that leave a core idle: 31 -> 19 min of pytest on 2 cores, measured (PYTEST_WORKERS=0: one
# process). pytest exits 5 when it collected no tests: that is a failure here, never a silent pass.
# The device_check tests (tests/test_on_device.py) run once, inside tests/test_gpu_check.py, which runs them through
# `benchmarks/gpu_check.sh --device cpu --quick` as a GPU machine does; collecting them here too would run them twice.
PYTEST_WORKERS ?= 2
PYTEST_MARKERS ?= not device_check
test: setup
	@$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadfile --durations=30 -m "$(PYTEST_MARKERS)" $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$status

clean:
	rm -rf $(VENV) result build *.egg-info
