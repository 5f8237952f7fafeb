# celery-chaos: `make demo` runs the scenario catalog and writes an HTML report;
# `make test` runs every test. Both set themselves up first (scripts/setup.sh).
.PHONY: setup demo test test-compose lint unit scenarios bench clean

VENV := .venv/bin
# Gives the command a Docker engine (a private one, no bridge, when DOCKER_HOST is unset or
# silent) and the compose deployment's images, built from Debian packages when missing, then
# stops that engine. Without root it says why and the compose scenarios skip (see README).
ENGINE := $(VENV)/python -m celery_chaos.deployment.docker_engine run

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
	$(ENGINE) -- $(VENV)/pytest scenarios tests -q -p no:cacheprovider -n 2 --dist loadfile

# The compose subset alone (scenarios/test_compose*.py, tests/test_compose_file.py); an
# engine that cannot start is exit 2 here.
test-compose: setup
	$(ENGINE) --require -- $(VENV)/pytest scenarios/test_compose.py \
	  scenarios/test_compose_demo.py tests/test_compose_file.py -q -p no:cacheprovider

bench: setup
	$(VENV)/python bench/bench_skeleton.py

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
