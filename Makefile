PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m zoo demo

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

# The performance figures of bench/ (README, Performance): head-set overhead, inference after
# deploy(), speed against segmentation_models_pytorch, data loading; JSON in bench/results/.
.PHONY: bench
bench: $(STAMP)
	$(PY) -c 'import segmentation_models_pytorch' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/train_overhead.py
	$(PY) bench/inference_parity.py
	$(PY) bench/vs_smp.py
	$(PY) bench/data_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
