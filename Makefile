# Two entry points: `make demo` (install, then the main job) and `make test` (install, then the suite).
# The install is idempotent: a stamp keyed on pyproject.toml and the constraints skips it when nothing changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BENCH := $(VENV)/bin/bench
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(CONSTRAINTS) | sha256sum | cut -c1-16)
DEMO_OPS := conv,dwconv,octconv,goctconv,ddf,scconv,sru,cru,nearest,bilinear,deconv,pixel_shuffle,carafe,ddf_up,pac,jbu
DEMO := outputs/demo

.PHONY: install demo test clean

install: $(STAMP)

# torch/torchvision first (PyPI's default build; see the constraints file), then mmcv built against
# that torch without build isolation (ninja first: without it the build is serial), then this package.
$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) "setuptools>=77.0.3,<81" wheel ninja torch torchvision
	MMCV_WITH_OPS=1 MAX_JOBS=$$(nproc) $(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) mmcv
	$(PIP) install -q --no-build-isolation -c $(CONSTRAINTS) -e ".[detection,test]"
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium >/dev/null) || echo "warning: Debian's chromium is missing; the leaderboard render test will fail"
	rm -f $(VENV)/.installed-*
	touch $@

# The demo's records and leaderboard are this machine's own (outputs/demo/); the committed leaderboards/ changes
# only when a maintainer regenerates it on purpose (README, Read the leaderboard).
demo: install
	$(BENCH) check --all
	$(BENCH) run task=classification op=ddf results_dir=$(DEMO)/results
	$(BENCH) profile -m op=$(DEMO_OPS) results_dir=$(DEMO)/results
	$(BENCH) leaderboard --out $(DEMO)
	@echo "Results: $(DEMO)/results/ (one JSON record per run); leaderboard: $(DEMO)/README.md and $(DEMO)/index.html"

test: install
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests; there must always be tests" >&2; exit 1; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache
