# Every target installs what it needs first: on a fresh machine with only Python 3,
# `make demo` and `make test` are the whole set-up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck pytest soak bench bench-compare clean browser-deps \
        screenshot ops-deps image-deps image-test clients queue-packages

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

# -rs: every skipped test is listed at the end with its reason, so a skip is never silent.
# -n: test processes (pytest-xdist), each with its own embedded PostgreSQL; a file's tests
# stay in one process (--dist loadfile). PYTEST_WORKERS=0 runs them all in this one.
PYTEST_WORKERS ?= 3
pytest: install
	$(BIN)/pytest -q -rs -n $(PYTEST_WORKERS) --dist loadfile

# The browser tests drive Debian's Chromium (never a downloaded browser), at this path.
CHROMIUM ?= /usr/bin/chromium
BROWSER_TOOLS := $(CHROMIUM):chromium $(CHROMIUM):fonts-liberation
browser-deps:
	$(call apt_tools,browser-deps,$(BROWSER_TOOLS),the browser tests)

# $(call apt_tools,TARGET,TOOL:PACKAGE ...,WHAT SKIPS WITHOUT THEM): install the packages of
# the tools that are missing, when we are root with apt-get (.ci/apt-install waits for another
# apt-get to finish, up to 10 minutes, instead of failing at once). When a tool is still
# missing, the tests that need it skip and say why, except under CI (CI set, and not "false"
# or "0"): there a skip would hide missing coverage, so the target fails, unless
# ALLOW_MISSING_TOOLS=1 says that this CI runs without them on purpose.
define apt_tools
	@missing=""; for pair in $(2); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	[ -n "$$missing" ] || exit 0; \
	missing="$$(echo $$missing | tr ' ' '\n' | sort -u | xargs)"; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "$(1): installing $$missing with apt-get for $(3)"; \
	  if .ci/apt-install $$missing; then \
	    still=""; for pair in $(2); do \
	      command -v "$${pair%%:*}" >/dev/null 2>&1 || still="$$still $${pair%%:*}"; \
	    done; \
	    [ -n "$$still" ] || exit 0; \
	    why="installed $$missing, yet still missing:$$still"; \
	  else \
	    why="could not install $$missing"; \
	  fi; \
	else \
	  why="missing $$missing (and not root with apt-get)"; \
	fi; \
	case "$${CI:-}:$(ALLOW_MISSING_TOOLS)" in \
	  :*|false:*|0:*|*:1) echo "$(1): $$why: $(3) will skip" ;; \
	  *) echo "$(1): $$why: under CI (CI=$$CI) $(3) must run, not skip;" \
	       "set ALLOW_MISSING_TOOLS=1 if this CI runs without them on purpose" >&2; exit 1 ;; \
	esac
endef

# The operations tests run the real Caddy, promtool/Prometheus and systemd-analyze (Debian's
# packages). Installed when missing and we are root with apt-get; otherwise those tests skip.
OPS_TOOLS := caddy:caddy promtool:prometheus prometheus:prometheus systemd-analyze:systemd pgbouncer:pgbouncer
ops-deps:
	$(call apt_tools,ops-deps,$(OPS_TOOLS),those operations tests)

# The React hook (clients/react): its packages as package-lock.json pins them (`npm ci`, again
# only when package.json or the lock changes; no install scripts), typechecked (tsc --noEmit),
# rendered on the server once (check-ssr.mjs) and its example bundled (esbuild), for
# tests/browser/test_react_hook.py. Node and npm come from the machine, never from apt here.
# Without them, or when `npm ci` fails, that test skips and says why, except under CI, as for
# the apt tools above.
REACT := clients/react
clients:
	@why=""; \
	if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  why="node and npm are missing (Node.js 18 or later)"; \
	elif [ ! -f $(REACT)/node_modules/.installed ] || \
	     [ $(REACT)/package-lock.json -nt $(REACT)/node_modules/.installed ] || \
	     [ $(REACT)/package.json -nt $(REACT)/node_modules/.installed ]; then \
	  (cd $(REACT) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) \
	    && touch $(REACT)/node_modules/.installed || why="npm ci failed in $(REACT)"; \
	fi; \
	if [ -z "$$why" ]; then cd $(REACT) && exec npm run --silent build; fi; \
	case "$${CI:-}:$(ALLOW_MISSING_TOOLS)" in \
	  :*|false:*|0:*|*:1) echo "clients: $$why: the React hook's test will skip" ;; \
	  *) echo "clients: $$why: under CI (CI=$$CI) the React hook's test must run, not skip;" \
	       "set ALLOW_MISSING_TOOLS=1 if this CI runs without it on purpose" >&2; exit 1 ;; \
	esac

# The npm job queues' own packages (pg-boss, graphile-worker), each pinned by the
# package-lock.json of its folder under tests/queues/, for their profile tests: `npm ci` (again
# only when package.json or the lock changes; no install scripts). Without node and npm, or
# when `npm ci` fails, those tests skip and say why, except under CI, as for the apt tools.
QUEUE_PACKAGES := $(patsubst %/package-lock.json,%,$(wildcard tests/queues/*/package-lock.json))
queue-packages:
	@why=""; \
	if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then \
	  why="node and npm are missing (Node.js 18 or later)"; \
	else \
	  for dir in $(QUEUE_PACKAGES); do \
	    if [ ! -f $$dir/node_modules/.installed ] || \
	       [ $$dir/package-lock.json -nt $$dir/node_modules/.installed ] || \
	       [ $$dir/package.json -nt $$dir/node_modules/.installed ]; then \
	      (cd $$dir && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error) \
	        && touch $$dir/node_modules/.installed || why="$$why npm ci failed in $$dir;"; \
	    fi; \
	  done; \
	fi; \
	[ -n "$$why" ] || exit 0; \
	case "$${CI:-}:$(ALLOW_MISSING_TOOLS)" in \
	  :*|false:*|0:*|*:1) echo "queue-packages: $$why: the npm queues' profile tests will skip" ;; \
	  *) echo "queue-packages: $$why: under CI (CI=$$CI) the npm queues' tests must run, not skip;" \
	       "set ALLOW_MISSING_TOOLS=1 if this CI runs without them on purpose" >&2; exit 1 ;; \
	esac

test: browser-deps ops-deps clients queue-packages lint typecheck pytest

screenshot: install browser-deps
	$(BIN)/python docs/screenshot.py

# The image test (tests/ops/test_image.py) builds the Dockerfile with Debian's podman: runc (crun
# cannot run in hybrid-cgroup sandboxes), slirp4netns (the container's network), debootstrap (a
# local base when Docker Hub is out of reach). Installed when missing and we are root with apt-get.
IMAGE_TOOLS := podman:podman runc:runc slirp4netns:slirp4netns debootstrap:debootstrap
image-deps:
	$(call apt_tools,image-deps,$(IMAGE_TOOLS),the image test)

soak: install ops-deps image-deps
	$(BIN)/pytest -q -rs -m soak

# The image on a cached base (made by `make soak` when missing): about a minute.
image-test: install image-deps
	RELAY_IMAGE_TEST=1 $(BIN)/pytest -q -rs tests/ops/test_image.py

bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

# The benchmarks against another revision, in the same run (bench/compare.py), e.g.
# make bench-compare BASE=fd2cc15 ONLY="notify details" ARGS="--quick --fail-over"
bench-compare: install
	@test -n "$(BASE)" || { echo "usage: make bench-compare BASE=<git rev> [ONLY=...] [ARGS=...]" >&2; exit 2; }
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.compare --base $(BASE) $(if $(ONLY),--only $(ONLY)) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(REACT)/node_modules $(REACT)/dist \
	       tests/queues/*/node_modules
