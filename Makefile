# celery-chaos: `make demo` runs the scenario catalog and writes an HTML report;
# `make test` runs every test. Both set themselves up first (scripts/setup.sh).
.PHONY: setup demo test lint unit scenarios bench clean

VENV := .venv/bin

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/celery-chaos run scenarios/ -q

lint: setup
	$(VENV)/ruff check .

unit: setup
	$(VENV)/pytest tests -q

scenarios: setup
	$(VENV)/pytest scenarios -q

test: setup
	$(VENV)/ruff check .
	$(VENV)/pytest tests scenarios -q -p no:cacheprovider

bench: setup
	$(VENV)/python bench/bench_skeleton.py

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
