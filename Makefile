# One entry point. Every target creates and uses the project's virtual environment itself, so a
# fresh machine needs nothing but Python 3.11+, Go (for the e2e control plane) and make.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOURCES := $(shell find core operator scheduler_extender kernel_image -name '*.py' 2>/dev/null)
PYTEST_ARGS ?=

.PHONY: help venv lint typecheck crds unit images e2e test bench up down toolchain clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

# Dependencies change rarely (pyproject.toml); the package's file list changes often. The editable
# install is a link tree (strict mode), so edits show at once and new files need a quick relink.
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $@

$(VENV)/.linked: $(VENV)/.deps $(SOURCES)
	$(BIN)/pip install -q --no-deps -e . --config-settings editable_mode=strict 2>&1 | grep -vE 'Warning|^\s*$$|!!|\*\*\*|strategy|import/use|warnings' || true
	touch $@

venv: $(VENV)/.linked  ## create or refresh the virtual environment

lint: venv  ## ruff (lint and format check), actionlint over the workflows
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$$(bash tools/actionlint.sh) .github/workflows/*.yml

typecheck: venv  ## mypy over the package
	$(BIN)/mypy -p notebookos
	$(BIN)/mypy --explicit-package-bases images

crds: venv  ## regenerate crds/ from the API models
	$(BIN)/notebookos crds --out crds --out charts/notebookos/crds

unit: venv toolchain  ## unit and integration tests (real processes, no cluster; helm renders the chart)
	$(BIN)/notebookos crds --out crds --out charts/notebookos/crds --check
	NOTEBOOKOS_K8S_BIN=$$(bash e2e/toolchain/build.sh) $(BIN)/pytest tests $(PYTEST_ARGS)

toolchain:  ## build (or reuse) the real control plane, Karpenter's kwok provider, and the hub test's proxy and Chromium
	bash e2e/toolchain/build.sh
	bash e2e/toolchain/karpenter.sh
	bash e2e/toolchain/hub.sh

# A whole control plane, Karpenter and dozens of processes share 2 cores here: a test that timed
# out waiting (never one whose assertion failed) runs once more, and the summary counts the rerun.
E2E_RERUN := --reruns 1 --only-rerun TimeoutError --only-rerun Empty

e2e: venv toolchain  ## e2e tests against a real kube-apiserver, scheduler, controller-manager and kwok
	NOTEBOOKOS_K8S_BIN=$$(bash e2e/toolchain/build.sh) NOTEBOOKOS_KARPENTER_BIN=$$(bash e2e/toolchain/karpenter.sh) \
		$(BIN)/pytest e2e $(E2E_RERUN) $(PYTEST_ARGS)

# Names and tags from Chart.yaml (images/names.sh). Cold: mmdebstrap, wheels and both builds;
# cached (~/.cache/notebookos/images and the builder's layers): tens of seconds. TORCH=torch==X adds torch.
images: venv  ## build the control and kernel images (podman/buildah, Debian base made here), smoke-test them, run the chart and a kernel on three real kubelets
	bash images/build.sh
	NOTEBOOKOS_K8S_BIN=$$(bash e2e/toolchain/build.sh) NOTEBOOKOS_KUBELET_BIN=$$(bash e2e/toolchain/kubelet.sh) \
		$(BIN)/pytest images $(PYTEST_ARGS)

test: lint typecheck unit images e2e  ## every tier, lint included (what CI runs)

up: venv toolchain  ## set up and run NotebookOS locally (control plane, fake GPU nodes, operator, a kernel, a cell)
	NOTEBOOKOS_K8S_BIN=$$(bash e2e/toolchain/build.sh) $(BIN)/python -m e2e.testbed.up start

down: venv  ## stop what `make up` started
	$(BIN)/python -m e2e.testbed.up stop

bench: venv  ## benchmarks: figures beside their baselines
	$(BIN)/python -m benchmarks

clean:  ## remove the virtual environment and build outputs (the toolchain cache stays)
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
