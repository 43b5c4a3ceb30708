# cvlocal developer set-up. `make demo` and `make test` are the two commands a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := constraints/dev.txt
LLAMA_VERSION := 0.3.36
WHEELS := .build/wheels
# llama.cpp built for any x86-64 with AVX2 (x86-64-v3), never native: a native build on CPUs with AMX
# segfaults on every quantized GGUF (ggml_backend_amx_mul_mat), and an AVX-512 build dies with
# "Illegal instruction" on the AMD EPYC machines CI also runs on. No multimodal (llava) library.
# Override for your own hardware, e.g. LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON" (see README).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
PYTEST_ARGS ?=

.PHONY: all setup demo demo-models lint test bench clean llama-wheel

all: setup

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	touch $@

# The llama-cpp-python source is downloaded once into .build/sdist: the wheel is built from it, and the
# converter tests compare our GGUF bytes with llama.cpp's own convert_hf_to_gguf.py found inside it.
SDIST := .build/sdist
$(SDIST)/.unpacked: | $(VENV)/.created
	mkdir -p $(SDIST)
	$(PIP) download --quiet --no-binary :all: --no-deps -d $(SDIST) llama-cpp-python==$(LLAMA_VERSION)
	tar -xzf $(SDIST)/llama_cpp_python-$(LLAMA_VERSION).tar.gz -C $(SDIST)
	touch $@

# pip's wheel cache ignores CMAKE_ARGS, so the wheel is built without the cache into a git-ignored folder.
$(WHEELS)/.built: | $(SDIST)/.unpacked
	mkdir -p $(WHEELS)
	rm -f $(WHEELS)/llama_cpp_python-*.whl
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) wheel --no-cache-dir --no-deps \
		-w $(WHEELS) $(SDIST)/llama_cpp_python-$(LLAMA_VERSION).tar.gz
	touch $@

llama-wheel: $(WHEELS)/.built

$(VENV)/.installed: $(VENV)/.created $(WHEELS)/.built pyproject.toml $(CONSTRAINTS)
	$(PIP) install --quiet -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install --quiet --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[server,dev,cluster]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/cvlocal demo --force

demo-models: setup
	$(PY) assets/demo/train.py --out assets/demo

# ruff (pyflakes and pycodestyle's error classes) on everything, mypy on the converter library;
# both configured in pyproject.toml. `make test` runs this first.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .build .pytest_cache
