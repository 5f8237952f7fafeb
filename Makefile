# celery-chaos: `make demo` runs the scenario catalog and writes an HTML report;
# `make test` runs every test. Both set themselves up first (scripts/setup.sh).
.PHONY: setup demo test lint unit scenarios bench clean

VENV := .venv/bin

setup:
	@bash scripts/setup.sh

# The catalog on two pytest-xdist workers, as `make test` runs it (one run directory, one
# report); the last line says how many scenarios ran as declared and where the report is.
demo: setup
	$(VENV)/celery-chaos run scenarios/ -q -n 2 --dist loadfile -k "not test_explore"

lint: setup
	$(VENV)/ruff check .

unit: setup
	$(VENV)/pytest tests -q

scenarios: setup
	$(VENV)/pytest scenarios -q

# Two pytest-xdist workers, a test file each at a time: scenarios mostly wait on brokers
# and fault windows, so two share 2 cores well (about 9 minutes instead of 15). The long
# scenario files come first, so the short library files fill the gaps at the end.
test: setup
	$(VENV)/ruff check .
	$(VENV)/pytest scenarios tests -q -p no:cacheprovider -n 2 --dist loadfile

bench: setup
	$(VENV)/python bench/bench_skeleton.py

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
