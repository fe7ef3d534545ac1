# piix3-harness: `make run` and `make test` bring their own set-up (the deps step).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BUILD := build
STAMP := $(BUILD)/.deps-stamp
KERNEL := $(BUILD)/guest/kernel.elf
APT_PACKAGES := qemu-system-x86 qemu-utils gdb gcc-multilib binutils make

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

.PHONY: deps guest run test debug bench lint mutate clean

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
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/guest/%.S.o: $(GUEST_SRC)/%.S | $(BUILD)/guest
	$(CC) -m32 -g -c $< -o $@

$(BUILD)/guest:
	mkdir -p $@

$(KERNEL): $(GUEST_OBJ) $(GUEST_SRC)/linker.ld
	$(CC) $(LDFLAGS) -T $(GUEST_SRC)/linker.ld -o $@ $(GUEST_OBJ) $$($(CC) -m32 -print-libgcc-file-name)

run: deps guest
	$(VENV)/bin/piix3 run $(ARGS)

test: deps guest lint
	$(VENV)/bin/pytest -n auto --piix3-firmware=both $(PYTEST_ARGS)

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
