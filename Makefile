# make run   - set up .venv, classify the bundled cat photo with the default model
# make test  - set up .venv, run the whole test suite
# make bench - set up .venv, run the benchmarks and rewrite benchmarks/RESULTS*.md
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench install compile clean browser graphviz

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Byte-compiled as pip compiles a regular install: an editable one otherwise compiles every
# module of every command afresh where PYTHONDONTWRITEBYTECODE is set (+60% on `--help`).
compile: $(STAMP)
	@$(BIN)/python -m compileall -q src

run: $(STAMP) compile
	$(BIN)/imagezoo classify src/imagezoo/resources/cat.png --top 5

# The engine tests load OpenVINO; in one long pytest process beside everything else the
# process twice died of a segmentation fault in a later, unrelated test (never reproduced in
# isolation), so they run in a process of their own.
test: $(STAMP) compile browser graphviz
	$(BIN)/python -m pytest -q --ignore=tests/test_engine.py
	$(BIN)/python -m pytest -q tests/test_engine.py

# The web page test drives Debian's Chromium (Playwright's own browser download cannot work
# offline). Installed when missing and this is root with apt-get; otherwise the test says how.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; } \
		|| echo "make: Chromium is missing; the web page test is skipped, or fails under CI (apt-get install chromium)"; }

# Diagrams (imagezoo graph) need Graphviz's dot program; installed the same way when missing.
graphviz:
	@command -v dot >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphviz >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphviz >/dev/null; }; } \
		|| echo "make: Graphviz's dot is missing; the diagram tests that need it are skipped (apt-get install graphviz)"; }

bench: $(STAMP) compile
	$(BIN)/python benchmarks/bench_classify.py
	$(BIN)/python benchmarks/bench_engine.py
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_finetune.py
	$(BIN)/python benchmarks/bench_startup.py
	if [ -d ../shared/data/cifar10-test ]; then $(BIN)/python benchmarks/bench_cifar.py; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
