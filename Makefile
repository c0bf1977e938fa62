# The README's commands. Each target creates/refreshes .venv when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vitkit-installed
DATA   := /usr/share/datasets/fashion-mnist

.PHONY: setup data browser train test lint format clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)

# Debian's dataset-fashion-mnist, where apt exists; otherwise vitkit downloads with torchvision.
data:
	@if [ ! -d $(DATA) ] && command -v apt-get >/dev/null 2>&1; then \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
		$$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
		echo "note: could not apt-get install dataset-fashion-mnist; vitkit will try to download it"; \
	fi

# Debian's chromium, where apt exists: the headless browser that tests the HTML report (skipped without it).
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo -n"; \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
		echo "note: could not apt-get install chromium; the report's browser test will be skipped"; \
	fi

train: setup data
	$(PY) -m vitkit train --recipe fashion-mnist --out runs/fashion-mnist --overwrite

test: setup data browser
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

format: setup
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
