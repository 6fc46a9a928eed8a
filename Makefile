# The two commands a newcomer needs: `make demo` and `make test`. Both set up
# the virtual environment themselves; nothing else has to run first.
# Test tiers (docs/testing.md has the budget table):
#   make quick    the development loop, <= 10 min on two idle cores
#   make test     what CI runs, everything a change must not break, <= 40 min
#   make torture  the long sweeps, outside CI; writes docs/torture-results.md
#   make system-test  the whole device under QEMU: boot, update, rollback, power cuts, a hang (builds the disks first; not in
#                 make test yet: docs/system-test.md)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo quick test torture lint bench clean image system-test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m reconciler.sim.demo

quick: $(STAMP)
	bash tests/tools.sh
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy
	mkdir -p build
	$(BIN)/pytest -q -m "not qemu and not slow and not torture and not system" --junitxml=build/quick.xml; \
	status=$$?; $(BIN)/python -m tests.report areas build/quick.xml; exit $$status

test: $(STAMP)
	bash tests/tools.sh
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy
	mkdir -p build
	$(BIN)/pytest -q -m "not torture and not system" --junitxml=build/test.xml; status=$$?; \
	$(BIN)/python -m tests.report areas build/test.xml; exit $$status

# Every fuzzer with 50,000 documents per parser, plus the tests marked torture;
# the dated results go to docs/torture-results.md, to be committed.
torture: $(STAMP)
	bash tests/tools.sh
	mkdir -p build
	KRUXOS_FUZZ_EXAMPLES=$${KRUXOS_FUZZ_EXAMPLES:-50000} $(BIN)/pytest -q -m "fuzz or torture" \
		--timeout=7200 --junitxml=build/torture.xml; status=$$?; \
	KRUXOS_FUZZ_EXAMPLES=$${KRUXOS_FUZZ_EXAMPLES:-50000} \
		$(BIN)/python -m tests.report torture build/torture.xml docs/torture-results.md; \
	exit $$status

# The QEMU device's disk, from Debian packages and the product's own files
# (deploy/image/, docs/system-test.md); as root, from nothing each time.
image: $(STAMP)
	bash tests/tools.sh
	PY=$(BIN)/python bash deploy/image/build.sh build/image

# Boot the disk of `make image` and check the real system (tests marked system).
system-test: image
	mkdir -p build
	$(BIN)/pytest -q -m system --junitxml=build/system.xml; status=$$?; \
	$(BIN)/python -m tests.report areas build/system.xml; exit $$status

bench: $(STAMP)
	bash bench/run.sh

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build
