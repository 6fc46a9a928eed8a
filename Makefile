# The two commands a newcomer needs: `make demo` and `make test`. Both set up
# the virtual environment themselves; nothing else has to run first.
# Test tiers (docs/testing.md has the budget table):
#   make quick    the development loop, <= 10 min on two idle cores
#   make test     what CI runs, everything a change must not break, <= 40 min
#   make torture  the long sweeps, outside CI; writes docs/torture-results.md
#   make system-test  the whole device under QEMU alone: boot, update, rollback, power cuts,
#                 a hang (builds the disks first; docs/system-test.md). make test runs it too,
#                 beside the rest of the suite.
#   make container-test-podman  a compatibility run, outside CI: the container tests
#                 unchanged on Podman's Docker-compatible API instead of dockerd.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo quick test torture lint bench clean image system-test container-test-podman

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

# Two lanes at once: the whole device under QEMU (build the disks, then the system
# tests: one TCG guest at a time, about one core) beside the rest of the suite,
# which waits on real processes much of its time. The system lane's output is
# printed when both have ended; either failing fails the target.
test: $(STAMP)
	bash tests/tools.sh
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy
	mkdir -p build
	rm -f build/system.rc build/system.xml
	( { $(MAKE) --no-print-directory image && \
	    $(BIN)/pytest -q -p no:cacheprovider -m "system and not torture" \
	        --junitxml=build/system.xml; } > build/system-lane.log 2>&1; \
	  echo $$? > build/system.rc ) & \
	$(BIN)/pytest -q -m "not torture and not system" --junitxml=build/test.xml; status=$$?; \
	wait; echo "--- the whole device under QEMU (build/system-lane.log) ---"; \
	cat build/system-lane.log; system=$$(cat build/system.rc 2>/dev/null || echo 1); \
	$(BIN)/python -m tests.report areas build/test.xml build/system.xml; \
	echo "make test: suite exit $$status, whole device exit $$system"; \
	[ $$status = 0 ] && [ $$system = 0 ]

# Every fuzzer with 50,000 documents per parser, plus the tests marked torture;
# the dated results go to docs/torture-results.md, to be committed.
torture: image
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
	$(BIN)/pytest -q -m "system and not torture" --junitxml=build/system.xml; status=$$?; \
	$(BIN)/python -m tests.report areas build/system.xml; exit $$status

# The container tests (tests/containers/, the same tests make test runs on dockerd) on
# Podman's Docker-compatible API (`podman system service`), with Podman's own packages,
# which make test does not install (docs/containers.md, "What is tested").
container-test-podman: $(STAMP)
	bash tests/tools.sh container-test-podman
	mkdir -p build
	KRUXOS_CONTAINER_ENGINE=podman $(BIN)/pytest -q -p no:cacheprovider -m "not torture" \
		tests/containers/test_docker_device.py --junitxml=build/container-podman.xml

bench: $(STAMP)
	bash bench/run.sh

lint: $(STAMP)
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache build
