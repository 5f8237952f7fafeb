# celery-chaos: `make demo` runs the scenario catalog and writes an HTML report;
# `make test` runs the tests (every one when CI is set, as CI sets it). Both set themselves
# up first (scripts/setup.sh).
.PHONY: setup demo test test-all test-slow test-compose lint unit scenarios bench clean

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
# and fault windows, so two share 2 cores well. The long scenario files come first, so the
# short library files fill the gaps at the end.
PYTEST := $(VENV)/pytest scenarios tests -q -p no:cacheprovider -n 2 --dist loadfile

# With CI set (CI=true, as CI runs .ci/run): every test, the compose subset on a private
# Docker engine included (test-all). Without it: the quick tier, every test but those marked
# `slow` (the long scenarios and end-to-end runs: catalog specs with `marks: [slow]`) and
# `compose`, with no engine to start.
ifneq ($(filter true 1 yes,$(CI)),)
test: test-all
else
test: setup
	$(VENV)/ruff check .
	$(PYTEST) -m "not slow and not compose"
endif

test-all: setup
	$(VENV)/ruff check .
	$(ENGINE) -- $(PYTEST)

# The tier the quick run leaves out.
test-slow: setup
	$(ENGINE) -- $(PYTEST) -m "slow or compose"

# The compose subset alone (scenarios/test_compose*.py, tests/test_compose_file.py); an
# engine that cannot start is exit 2 here.
test-compose: setup
	$(ENGINE) --require -- $(VENV)/pytest scenarios/test_compose.py \
	  scenarios/test_compose_demo.py tests/test_compose_file.py -q -p no:cacheprovider

bench: setup
	$(VENV)/python bench/bench_skeleton.py

clean:
	rm -rf .pytest_cache .ruff_cache .hypothesis
