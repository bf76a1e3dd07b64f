# khib: `make demo` shows a round trip in a VM, `make test` runs every test.
# Both install missing Debian packages and build the kernel once (cached in
# ~/.cache/khib, keyed by its config).

export PATH := /usr/local/go/bin:$(PATH)
GO      ?= go
BIN     := bin
KERNEL   = $(shell kernel/build.sh --path)
VM       = $(BIN)/khib-vm
# Unit tests use the race detector, which needs cgo; the binaries that go
# into the guests are static.
STATIC  := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w"

# Each entry is scenario[:flags], flags joined with commas.
VM_TESTS := check-refusals roundtrip:--smp,1 roundtrip:--smp,2 hibernate hibernate-too-small hibernate-write-error hibernate-no-device \
            hibernate-lying-device hibernate-disk-vanishes \
            cycle cycle:--smp,2 cycle:--mem,4096,--workload,3600,--region,128M,--smp,2 cycle-loopback cycle-armed soak:--cycles,3 resume-corrupt resume-corrupt-restore resume-corrupt-kinds resume-foreign \
            corrupt-images powercut-save powercut-resume resume-fs-changed hybrid-wake hybrid-powerloss cycle-encrypted \
            cycle-swap resume-swap-refused cycle-file cycle-vfat cycle-fuse cycle-s3 migrate-s3 target-refusals
# On the Debian guest (GRUB, initramfs, systemd, the distro kernel, khib from its .deb).
DISTRO_TESTS := distro-cycle distro-cycle:--smp,2 distro-refusal distro-filter distro-remove cycle-tpm distro-swap distro-s3

.PHONY: soak all deps kernel kernel-distro guest-image deb test-distro bins demo test test-unit test-vm lint fuzz bench bench-save bench-hibernate bench-targets clean

all: bins

deps:
	@scripts/deps.sh

kernel: deps
	@kernel/build.sh >/dev/null

# The distro-grade kernel (Debian's config + KEXEC_JUMP) and the Debian
# guest's disk built around it; both cached in ~/.cache/khib.
kernel-distro: deps
	@kernel/build.sh distro >/dev/null

guest-image: kernel-distro
	@scripts/guest-image.sh >/dev/null

# khib's Debian package: bin/khib_<version>_amd64.deb (VERSION= to choose).
VERSION ?=
deb: kernel
	@scripts/build-deb.sh "$(VERSION)" $(BIN) $(KERNEL)

bins:
	@mkdir -p $(BIN)
	$(STATIC) -o $(BIN)/ ./cmd/...

lint:
	@out=$$(gofmt -l cmd internal); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test-unit: lint
	CGO_ENABLED=1 $(GO) test -race ./...

# Each fuzz target for a short while; `make fuzz FUZZTIME=10m` for longer.
FUZZTIME ?= 10s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$t"; CGO_ENABLED=1 $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$pkg || exit 1; \
	  done; done

test-vm: kernel bins
	@set -e; for t in $(VM_TESTS); do \
	  s=$${t%%:*}; f=$$(echo "$${t#$$s}" | sed 's/^://; s/,/ /g'); \
	  echo "== scenario $$s $$f"; $(VM) run --scenario $$s $$f --kernel $(KERNEL) --bindir $(BIN) --json; done

test-distro: guest-image kernel bins
	@set -e; deb=$$(scripts/build-deb.sh "$(VERSION)" $(BIN) $(KERNEL)); disk=$$(scripts/guest-image.sh); \
	for t in $(DISTRO_TESTS); do \
	  s=$${t%%:*}; f=$$(echo "$${t#$$s}" | sed 's/^://; s/,/ /g'); \
	  echo "== scenario $$s $$f"; $(VM) run --scenario $$s $$f --kernel $(KERNEL) --bindir $(BIN) --guest-disk $$disk --deb $$deb --json; done

test: deps test-unit test-vm test-distro
	@echo "make test: all tests passed"

demo: kernel bins
	@$(VM) run --scenario cycle --kernel $(KERNEL) --bindir $(BIN) --demo

# 50 hibernate/resume cycles under a write-heavy workload (make test runs 3);
# SOAK_CYCLES= for another count.
SOAK_CYCLES ?= 50
soak: kernel bins
	@$(VM) run --scenario soak --cycles $(SOAK_CYCLES) --kernel $(KERNEL) --bindir $(BIN)

# Benchmarks, not tests: figures for people, printed on stderr and as JSON.
bench-save: kernel bins
	@$(VM) run --scenario bench-save --kernel $(KERNEL) --bindir $(BIN) --smp 2

bench-hibernate: kernel bins
	@$(VM) run --scenario bench-hibernate --kernel $(KERNEL) --bindir $(BIN)

# The benchmark of record: khib against swsusp at 256 MiB to 3.6 GiB in use
# in a 4 GiB guest, 3 runs each, and the save against makedumpfile; it
# writes bench/results/bench.{md,csv,png}. BENCH_RUNS= and BENCH_SMP= (guest
# CPUs, default 2) change them.
BENCH_RUNS ?= 3
BENCH_SMP ?= 2
bench: deps kernel bins
	@$(VM) run --scenario bench --mem 4096 --smp $(BENCH_SMP) --runs $(BENCH_RUNS) --results bench/results --kernel $(KERNEL) --bindir $(BIN)

# One cycle into each kind of target in a row (disk, swap, file, vfat,
# FUSE, S3): bench/results/targets.md.
bench-targets: deps kernel bins
	@$(VM) run --scenario bench-targets --results bench/results --kernel $(KERNEL) --bindir $(BIN)

clean:
	rm -rf $(BIN)
