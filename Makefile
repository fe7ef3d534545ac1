# piix3-harness: `make run` and `make test` bring their own set-up (the deps step).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BUILD := build
STAMP := $(BUILD)/.deps-stamp
KERNEL := $(BUILD)/guest/kernel.elf
APT_PACKAGES := qemu-system-x86 qemu-utils gdb gcc-multilib binutils make python3-venv python3-pip

CC := gcc
CFLAGS := -m32 -march=i686 -ffreestanding -fno-pic -fno-pie -fno-stack-protector \
	-fno-omit-frame-pointer -fno-asynchronous-unwind-tables -mno-sse -mno-mmx \
	-O2 -g -std=gnu11 -Wall -Wextra -Werror
LDFLAGS := -m32 -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,noexecstack
# The guest's sources; a copy elsewhere builds with the same commands into its own BUILD:
# `make guest GUEST_SRC=/tmp/x/guest BUILD=/tmp/x/build` (seeded bugs, mutants).
GUEST_SRC := guest
GUEST_C := $(wildcard $(GUEST_SRC)/*.c)
GUEST_S := $(wildcard $(GUEST_SRC)/*.S)
GUEST_OBJ := $(patsubst $(GUEST_SRC)/%,$(BUILD)/guest/%.o,$(GUEST_C) $(GUEST_S))
# Extra compile flags for guest/*.c, and what else the kernel links (the coverage build's).
GUEST_CFLAGS_EXTRA :=
GUEST_EXTRA_OBJ :=
GUEST_EXTRA_LIBS :=
# `make coverage` (harness/coverage/): the guest with gcov counters, built into a BUILD of its own
# (build/ for make test, make bench and timings keeps the plain kernel); reports in build/coverage/.
COVERAGE_BUILD := $(BUILD)/coverage-kernel
COVERAGE_OUT := $(BUILD)/coverage
COVERAGE_CFLAGS := --coverage -fprofile-info-section -fprofile-update=single

.PHONY: deps guest run test debug bench lint mutate clean coverage coverage-guest

deps: $(STAMP)

# Installs what is missing (apt as root, else through sudo), then the venv, once.
$(STAMP): pyproject.toml
	@mkdir -p $(BUILD)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

guest: $(KERNEL)

$(BUILD)/guest/%.c.o: $(GUEST_SRC)/%.c $(wildcard $(GUEST_SRC)/*.h) | $(BUILD)/guest
	$(CC) $(CFLAGS) $(GUEST_CFLAGS_EXTRA) -c $< -o $@

$(BUILD)/guest/%.S.o: $(GUEST_SRC)/%.S | $(BUILD)/guest
	$(CC) -m32 -g -c $< -o $@

$(BUILD)/guest:
	mkdir -p $@

$(KERNEL): $(GUEST_OBJ) $(GUEST_EXTRA_OBJ) $(GUEST_SRC)/linker.ld
	$(CC) $(LDFLAGS) -T $(GUEST_SRC)/linker.ld -o $@ $(GUEST_OBJ) $(GUEST_EXTRA_OBJ) $(GUEST_EXTRA_LIBS) \
		$$($(CC) -m32 -print-libgcc-file-name)

# The coverage build's gcov runtime (guest/gcov/runtime.c: no counters of its own).
$(BUILD)/guest/gcov-runtime.o: $(GUEST_SRC)/gcov/runtime.c | $(BUILD)/guest
	$(CC) $(CFLAGS) -c $< -o $@

# The instrumented kernel: $(COVERAGE_BUILD)/guest/kernel.elf, its .gcno files beside the objects.
coverage-guest:
	$(MAKE) --no-print-directory guest BUILD=$(COVERAGE_BUILD) GUEST_CFLAGS_EXTRA="$(COVERAGE_CFLAGS)" \
		GUEST_EXTRA_OBJ=$(COVERAGE_BUILD)/guest/gcov-runtime.o \
		GUEST_EXTRA_LIBS="$$($(CC) -m32 -print-file-name=libgcov.a)"

# Line/branch coverage of the guest and functional coverage of the ATA protocol: the suite run
# against the instrumented kernel (PIIX3_KERNEL), the counters read from guest RAM into .gcda
# files, gcovr's reports in build/coverage/ (index.html, coverage.xml, coverage.info) and its
# per-file summary; the functional report beside them. COVERAGE_FAIL_UNDER: the levels reached.
COVERAGE_FAIL_UNDER := --fail-under-line 96 --fail-under-branch 78
ATA_FAIL_UNDER := --fail-under-line 97 --fail-under-branch 89
FCOV_FAIL_UNDER := 95
GCOVR := $(VENV)/bin/gcovr --root . $(COVERAGE_BUILD)/guest
coverage: deps guest coverage-guest
	@rm -f $(COVERAGE_BUILD)/guest/*.gcda; rm -rf $(COVERAGE_OUT); mkdir -p $(COVERAGE_OUT)
	@rc=0; PIIX3_KERNEL=$(abspath $(COVERAGE_BUILD)/guest/kernel.elf) $(VENV)/bin/pytest -n auto \
		--piix3-firmware=both --piix3-transport=paired --piix3-gcov --piix3-fcov --piix3-coverage-dir $(COVERAGE_OUT) \
		$(PYTEST_ARGS) || rc=$$?; \
	$(GCOVR) --filter 'guest/' --html-details $(COVERAGE_OUT)/index.html --html-title 'piix3-harness guest coverage' \
		--cobertura $(COVERAGE_OUT)/coverage.xml --lcov $(COVERAGE_OUT)/coverage.info \
		--txt --txt-summary $(COVERAGE_FAIL_UNDER) || rc=$$?; \
	$(GCOVR) --filter 'guest/' --txt --txt-metric branch >$(COVERAGE_OUT)/uncovered-branches.txt || rc=$$?; \
	echo "guest/ata.c alone (the targets):"; \
	$(GCOVR) --filter 'guest/ata\.c' --txt $(COVERAGE_OUT)/ata.txt --txt-summary $(ATA_FAIL_UNDER) || rc=$$?; \
	echo "coverage: $(COVERAGE_OUT)/index.html (annotated source), coverage.xml, coverage.info," \
		"uncovered-branches.txt, ata.txt, functional.md"; exit $$rc

run: deps guest
	$(VENV)/bin/piix3 run $(ARGS)

test: deps guest lint
	$(VENV)/bin/pytest -n auto --piix3-firmware=both --piix3-transport=paired --piix3-fcov \
		--piix3-fcov-fail-under $(FCOV_FAIL_UNDER) \
		$(PYTEST_ARGS)

debug: deps guest
	$(VENV)/bin/piix3 debug $(ARGS)

bench: deps guest
	$(VENV)/bin/piix3 bench $(ARGS)

# Mutation testing of the driver (guest/ata.c, guest/pci.c): each mutant built and run against
# the suite; killed/total and every survivor. Not part of `make test`. ARGS='--sample 10 --seed 1'.
mutate: deps guest
	$(VENV)/bin/python tests/mutate/run.py $(ARGS)

lint: deps
	$(VENV)/bin/ruff check harness tests
	$(VENV)/bin/ruff format --check harness tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(BUILD) $(VENV) *.egg-info harness/*.egg-info .pytest_cache .mypy_cache .ruff_cache
