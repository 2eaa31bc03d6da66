# Two commands a newcomer needs: `make demo` and `make test`. Both build .venv from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

DEMO_PORT ?= 8080

BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: test lint pytest demo bench bench-docs docs clean cluster-assets test-cluster coverage mutate

$(STAMP): pyproject.toml setup.cfg
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

test: lint pytest

demo: $(STAMP)
	$(BIN)/python -m example_app.demo --port $(DEMO_PORT)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@touch $@

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	@touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The benchmarks (about 2 minutes on 2 cores) into build/bench/, ignored by git: nothing tracked changes.
BENCH_RESULTS ?= build/bench/results.json

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --out $(BENCH_RESULTS)

# Publish a full run (making one first if there is none): rewrites docs/performance.md, its plot
# and benchmarks/results.json.
bench-docs: $(BENCH_STAMP)
	test -f $(BENCH_RESULTS) || $(MAKE) bench
	$(BIN)/python -m benchmarks.report $(BENCH_RESULTS)

lint: $(STAMP)
	$(BIN)/ruff check flask_bindcar tests example_app benchmarks soak
	$(BIN)/ruff format --check flask_bindcar tests example_app benchmarks soak
	$(BIN)/mypy

# Two processes, a test file each at a time (module fixtures stay in one process): most tests wait
# on a server (a FakeCluster, a gunicorn), so two halve the wall time on two cores.
pytest: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile

# The real control plane (kube-apiserver, etcd, kubectl) built from the Go modules pinned in
# tools/kube, into an envtest-style KUBEBUILDER_ASSETS folder. Needs Go; a second run takes seconds.
KUBE_ASSETS ?= build/kube-assets

cluster-assets:
	tools/kube/build.sh $(KUBE_ASSETS)

# The tests marked `cluster`, against a RealCluster started from those binaries.
test-cluster: $(STAMP) cluster-assets
	KUBEBUILDER_ASSETS=$(abspath $(KUBE_ASSETS)) $(BIN)/pytest --cluster -m cluster

# Line and branch coverage of the library over the whole suite, the processes it starts included
# (settings in setup.cfg's [coverage:*]), and the real-cluster tests when `make cluster-assets` has
# built the binaries. Not part of `make test`: it is slower.
coverage: $(STAMP)
	$(BIN)/coverage erase
	KUBEBUILDER_ASSETS=$${KUBEBUILDER_ASSETS:-$(abspath $(KUBE_ASSETS))} $(BIN)/coverage run -m pytest -q -p no:cacheprovider \
		$$(test -x "$${KUBEBUILDER_ASSETS:-$(KUBE_ASSETS)}/kube-apiserver" && echo --cluster)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report

# Mutation testing of the modules that decide (setup.cfg's [mutmut]), in mutants/. Slow (about 25
# minutes on 2 cores with MUTATE_JOBS=6); not in CI. docs/testing.md explains what survives.
mutate: $(STAMP)
	$(BIN)/mutmut run --max-children $${MUTATE_JOBS:-4}
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .mypy_cache .ruff_cache .demo mutants .coverage .coverage.*

# The soak (issue 23, docs/reliability.md): the example app under a real gunicorn against the real
# control plane, a bounded load whose every answer is judged, kube-apiserver and etcd killed and
# restarted on a schedule. Results in build/soak/ (result.json, timeline.png); exits non-zero on
# any wrong decision, hung request or undocumented 5xx. `soak-short` (about 3 minutes, one
# kill-and-restart) is the CI version (the picture only when matplotlib, the bench extra, is
# installed); `soak` runs the full schedule for SOAK_SECONDS. SOAK_ADAPTER=wsgi soaks the WSGI
# middleware instead of the Flask extension.
SOAK_SECONDS ?= 1800
SOAK_OUT ?= build/soak
SOAK_ADAPTER ?= flask

.PHONY: soak soak-short
soak: $(BENCH_STAMP) cluster-assets
	KUBEBUILDER_ASSETS=$(abspath $(KUBE_ASSETS)) $(BIN)/python -m soak --full --adapter $(SOAK_ADAPTER) --seconds $(SOAK_SECONDS) --out $(SOAK_OUT)/full

soak-short: $(STAMP) cluster-assets
	KUBEBUILDER_ASSETS=$(abspath $(KUBE_ASSETS)) $(BIN)/python -m soak --adapter $(SOAK_ADAPTER) --seconds 150 --out $(SOAK_OUT)/short
