# Legato: `make demo` and `make test` install what they need, then run.
# Everything else (`make install`, `check`, `clean`) is for developers.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := legato origin regional edge cache packager drm geo bench

# extra arguments for `legato demo`, e.g. make demo ARGS=--once
ARGS ?=
# extra arguments for pytest, e.g. make test PYTEST_ARGS='-k browser'
PYTEST_ARGS ?=

PYTEST_FLAGS := -ra
ifneq ($(CI),)
PYTEST_FLAGS += -p no:cacheprovider
endif

.PHONY: demo test install install-test check clean distclean

## demo: install, then run `legato demo $(ARGS)`
demo: install
	$(VENV)/bin/legato demo $(ARGS)

## test: install with test extras + browser, then pytest over tests/ (no tests collected = failure)
test: install-test
	@rc=0; $(PY) -m pytest $(PYTEST_FLAGS) $(PYTEST_ARGS) tests || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
		echo "make test: FAILED: pytest collected no tests (exit 5); that is an error, not a pass" >&2; exit 1; \
	fi; exit $$rc

install:
	bash scripts/bootstrap.sh

install-test:
	bash scripts/bootstrap.sh --test

## check: lint and type-check the packages (reports issues; does not change files)
check: install-test
	@rc=0; \
	$(VENV)/bin/ruff check $(PACKAGES) tests || rc=1; \
	$(VENV)/bin/mypy --ignore-missing-imports $(PACKAGES) || rc=1; \
	exit $$rc

## clean: caches, build output and demo data (keeps .venv and node_modules)
clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .demo demo-store
	find . -path ./.venv -prune -o -path ./tests/browser/node_modules -prune -o \
		-name __pycache__ -type d -prune -exec rm -rf {} +

## distclean: clean, plus the virtualenv and the browser test packages
distclean: clean
	rm -rf $(VENV) tests/browser/node_modules
