# Every target installs what it needs first: on a fresh machine with only Python 3,
# `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest soak bench clean browser-deps screenshot ops-deps \
        image-deps image-test

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

# $(call apt_tools,TARGET,TOOL:PACKAGE ...,WHAT SKIPS WITHOUT THEM): install the packages of
# the tools that are missing, when we are root with apt-get; otherwise, or if that fails, say so
# (the tests that need them skip and say why).
define apt_tools
	@missing=""; for pair in $(2); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  missing="$$(echo $$missing | tr ' ' '\n' | sort -u | xargs)"; \
	  echo "$(1): installing $$missing with apt-get for $(3)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null; } \
	  || echo "$(1): could not install $$missing: $(3) will skip"; \
	else \
	  echo "$(1): missing $$missing (and not root with apt-get): $(3) will skip"; \
	fi
endef

# The operations tests run the real Caddy, promtool/Prometheus and systemd-analyze (Debian's
# packages). Installed when missing and we are root with apt-get; otherwise those tests skip.
OPS_TOOLS := caddy:caddy promtool:prometheus prometheus:prometheus systemd-analyze:systemd pgbouncer:pgbouncer
ops-deps:
	$(call apt_tools,ops-deps,$(OPS_TOOLS),those operations tests)

test: browser-deps ops-deps lint typecheck pytest

screenshot: install browser-deps
	$(BIN)/python docs/screenshot.py

# The image test (tests/test_image.py) builds the Dockerfile with Debian's podman: runc (crun
# cannot run in hybrid-cgroup sandboxes), slirp4netns (the container's network), debootstrap (a
# local base when Docker Hub is out of reach). Installed when missing and we are root with apt-get.
IMAGE_TOOLS := podman:podman runc:runc slirp4netns:slirp4netns debootstrap:debootstrap
image-deps:
	$(call apt_tools,image-deps,$(IMAGE_TOOLS),the image test)

soak: install ops-deps image-deps
	$(BIN)/pytest -q -m soak

# The image on a cached base (made by `make soak` when missing): about a minute.
image-test: install image-deps
	RELAY_IMAGE_TEST=1 $(BIN)/pytest -q tests/test_image.py

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
