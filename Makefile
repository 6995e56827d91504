# Every target installs what it needs first: on a fresh machine with only Python 3,
# `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest soak bench clean browser-deps screenshot ops-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,demo]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/stability-relay demo

lint: install
	$(BIN)/ruff check relay tests bench
	$(BIN)/ruff format --check relay tests bench

typecheck: install
	$(BIN)/mypy --strict relay

pytest: install
	$(BIN)/pytest -q

# The browser tests drive Debian's Chromium (never a downloaded browser). Installed when missing
# and we are root with apt-get; otherwise, or if that fails, the browser tests skip and say why.
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "browser-deps: installing Chromium with apt-get for the browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends chromium fonts-liberation >/dev/null; } \
	  || echo "browser-deps: could not install chromium: the browser tests will skip"; \
	else \
	  echo "browser-deps: no /usr/bin/chromium (and not root with apt-get): the browser tests will skip"; \
	fi

# The operations tests run the real Caddy, promtool/Prometheus and systemd-analyze (Debian's
# packages). Installed when missing and we are root with apt-get; otherwise those tests skip.
OPS_TOOLS := caddy:caddy promtool:prometheus prometheus:prometheus systemd-analyze:systemd pgbouncer:pgbouncer
ops-deps:
	@missing=""; for pair in $(OPS_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing="$$(echo $$missing | tr ' ' '\n' | sort -u | xargs)"; \
	  echo "ops-deps: installing $$missing with apt-get for the operations tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null; } \
	  || echo "ops-deps: could not install $$missing: those operations tests will skip"; \
	else \
	  echo "ops-deps: missing$$missing (and not root with apt-get): those operations tests will skip"; \
	fi

test: browser-deps ops-deps lint typecheck pytest

screenshot: install browser-deps
	$(BIN)/python docs/screenshot.py

soak: install
	$(BIN)/pytest -q -m soak

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
