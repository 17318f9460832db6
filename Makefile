# The two commands of the README (`make demo`, `make test`) each set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := $(CURDIR)/data

# Nothing this project starts may reach for the network: no usage telemetry from MLflow, Dagster
# or anything that honours DO_NOT_TRACK.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DAGSTER_DISABLE_TELEMETRY := true
export DAGSTER_HOME := $(DATA)/dagster_home
export COMPOSITIONAL_AI_DATA := $(DATA)
# The pseudonym key is a secret in production; the demo uses a fixed, public one unless you set it.
export COMPOSITIONAL_AI_PSEUDONYM_KEY ?= demo-only-not-a-secret

.PHONY: setup demo dev mlflow serve evaluate replay-loop test lint bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/compositional-ai demo

# The Dagster UI's port on 127.0.0.1: `make dev DAGSTER_PORT=3100` when 3000 is taken.
DAGSTER_PORT ?= 3000

dev: setup
	$(BIN)/compositional-ai init-home
	$(BIN)/dagster dev -h 127.0.0.1 -p $(DAGSTER_PORT) -w workspace.yaml

# The models' figures on the published protocols, from the packaged data alone.
evaluate: setup
	$(BIN)/compositional-ai evaluate

# The feedback loop replayed through the HTTP repair service, one service per variant (after
# `make demo`): confirmed labels against the model's own predictions.
replay-loop: setup
	$(BIN)/compositional-ai replay-loop

# The repair service over HTTP, serving the registry's champion (after `make demo`).
serve: setup
	$(BIN)/compositional-ai serve --host 127.0.0.1 --port 8000

# The MLflow UI over the demo's registry; the model assets' metadata links to its runs.
mlflow: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(DATA)/mlflow/mlflow.db -h 127.0.0.1 -p 5000

test: setup
	$(BIN)/pytest

bench: setup
	$(BIN)/python -m benchmarks.run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(DATA)/landing $(DATA)/warehouse.duckdb* $(DATA)/mlflow $(DATA)/dagster_home $(DATA)/reports \
		$(DATA)/replay
