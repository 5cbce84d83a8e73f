# The two commands of the README: `make demo` and `make test`. Each does all of
# its own set-up (virtual environment, project install, system packages and the
# test SLURM cluster where needed) and can be run again at no cost.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps demo test lint bench gpu-check clean mmdet test-mmdet

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[timm,dev,onnx]"
	@touch $@

# Debian packages the tests need: SLURM (+ accounting), LaTeX for the tables and
# Chromium (headless screenshots of the MLflow UI).
system-deps:
	@bash slurm/dev/install.sh
	@command -v pdflatex >/dev/null && kpsewhich booktabs.sty >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      texlive-latex-base texlive-latex-recommended >/dev/null; }
	@command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium >/dev/null; }

demo: setup
	$(BIN)/python sweeps/run.py sweeps/table5.yaml --smoke --executor local --max-parallel 2

test: setup system-deps
	@bash slurm/dev/start.sh
	$(BIN)/ruff check .
	. $${PSS_SLURM_DIR:-/tmp/pss-slurm}/env.sh && \
	  $(BIN)/python -m pytest -q tests --ignore=tests/mmdet

# MMDetection 3.3 + mmcv 2.1 (built once from source, cached outside the repository).
MMDET_STAMP := $(VENV)/.mmdet-installed

mmdet: $(MMDET_STAMP)

$(MMDET_STAMP): $(STAMP) pss/mmdet/install.sh
	VENV=$(VENV) bash pss/mmdet/install.sh
	@touch $@

test-mmdet: mmdet system-deps
	@bash slurm/dev/start.sh
	. $${PSS_SLURM_DIR:-/tmp/pss-slurm}/env.sh && \
	  $(BIN)/python -m pytest -q tests/mmdet

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_head.py
	$(BIN)/python benchmarks/bench_report.py
	$(BIN)/python benchmarks/bench_cli.py
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_smoke.py

# What only a GPU shows (needs CUDA; `benchmarks/gpu_check.py --reduced` is its CPU form,
# run by the tests): bench_head with and without AMP, an AMP smoke training, peak GPU
# memory per image, DDP with NCCL.
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) outputs reports/out mlruns mlflow.db
