# Fanout — build, test and demo entry points. `make` alone lists the targets.

SWIFT ?= swift

.DEFAULT_GOAL := help

.PHONY: help deps test-deps build proto proto-check test demo example bench stress fuzz clean

help:
	@echo "Fanout make targets:"
	@echo "  make deps         check (and as root, install) the system packages the build needs"
	@echo "  make test-deps    the same, plus what the tests need: PostgreSQL (Debian's postgresql) and openssl"
	@echo "  make build        debug build of the package ($(SWIFT) build)"
	@echo "  make proto        regenerate Sources/FanoutProtoC from proto/ with protoc-c"
	@echo "  make proto-check  fail if Sources/FanoutProtoC differs from what proto/ generates"
	@echo "  make test         proto-check, Swift tests, then the C client's tests (ASan+UBSan, valgrind) and the Python package's (pytest in a venv)"
	@echo "  make demo         build, start fanoutd on a temporary socket and run 'fanout demo'"
	@echo "  make example      build, then run Examples/ResearchWorker: a question fanned out into LLM subagents (local stub)"
	@echo "  make bench        release build, then Benchmarks/: enqueue, run-through and fanout-results rates beside a bare"
	@echo "                   SQLite insert and update, peak RSS, start latency idle and under a 1M-task backlog (LATENCY_SAMPLES=0"
	@echo "                    skips it), enqueue with durability full (DURABLE_TASKS=0 skips it), the LLM row (LLM_TASKS=0 skips it),"
	@echo "                    the worker row (WORKER_TASKS=0 skips it), run-through with 1, 2 and 3 fanoutd on one PostgreSQL it starts"
	@echo "                    (POSTGRES_TASKS=0 skips it, POSTGRES_DAEMONS=\"3\" runs three only; each run checks every task ran once);"
	@echo "                    every issue target marked met or not; JSON in Benchmarks/results/"
	@echo "                   (SIZES=\"100000 1000000\" by default; BENCH_TIMEOUT=seconds per size overrides the default;"
	@echo "                    SUBSCRIBER_SIZES=\"50000\" run alone and with a following subscriber, \"none\" to skip)"
	@echo "  make stress       release build, then fanoutd under SIGKILLs, fuzzed frames, a following subscriber and"
	@echo "                   1,000 connections for STRESS_SECONDS (default 600); prints one summary, fails on a crash or a lost task"
	@echo "  make fuzz         libFuzzer (-sanitize=fuzzer,address) over the frame decoder for FUZZ_SECONDS (default 300),"
	@echo "                   starting from the seeds in Fuzz/Corpus"
	@echo "  make clean        remove .build"
	@echo "Variables: SWIFT=$(SWIFT)"

deps:
	@SWIFT="$(SWIFT)" scripts/ensure-deps

# After deps, so that under make -j two apt-get runs never race for the dpkg lock.
test-deps: deps
	@SWIFT="$(SWIFT)" scripts/ensure-deps --test

build: deps
	$(SWIFT) build

# proto-check needs protoc-c, so it depends on deps (this also orders it under make -j).
proto: deps
	scripts/generate-proto

proto-check: deps
	scripts/generate-proto --check

test: test-deps proto-check
	$(SWIFT) build --build-tests
	$(SWIFT) test
	@if [ -f clients/c/Makefile ]; then \
		$(MAKE) -C clients/c test; \
	else \
		echo "clients/c: no C client yet, skipped"; \
	fi
	@if [ -d clients/python ]; then \
		bash clients/python/run-tests.sh; \
	else \
		echo "clients/python: no Python client yet, skipped"; \
	fi

demo: deps
	$(SWIFT) build
	scripts/demo

example: deps
	$(SWIFT) build
	scripts/example

# Benchmarks/ is a package of its own (it depends on this one by path), so
# `make test` never builds it. It starts the release fanoutd built here on a
# temporary socket and database for each size, prints a table and writes
# Benchmarks/results/latest.json. Every size is bounded by a timeout, after
# which the daemon is stopped and the size reported as timed out.
SIZES ?= 100000 1000000
SUBSCRIBER_SIZES ?= 50000
BENCH_TIMEOUT ?=

bench: test-deps
	$(SWIFT) build -c release
	$(SWIFT) build -c release --package-path Benchmarks --product FanoutBench
	"$$($(SWIFT) build -c release --package-path Benchmarks --show-bin-path)/FanoutBench" \
		--repo "$(CURDIR)" --fanoutd "$(CURDIR)/.build/release/fanoutd" --sizes "$(SIZES)" --subscriber-sizes "$(SUBSCRIBER_SIZES)" \
		$(if $(BENCH_TIMEOUT),--timeout $(BENCH_TIMEOUT)) $(if $(LLM_TASKS),--llm-tasks $(LLM_TASKS)) $(if $(GATEWAY_LINES),--gateway-lines $(GATEWAY_LINES)) $(if $(WORKER_TASKS),--worker-tasks $(WORKER_TASKS)) \
		$(if $(LATENCY_SAMPLES),--latency-samples $(LATENCY_SAMPLES)) $(if $(BACKLOG),--backlog $(BACKLOG)) $(if $(DURABLE_TASKS),--durable-tasks $(DURABLE_TASKS)) \
		$(if $(POSTGRES_TASKS),--postgres-tasks $(POSTGRES_TASKS)) $(if $(POSTGRES_DAEMONS),--postgres-daemons "$(POSTGRES_DAEMONS)")

STRESS_SECONDS ?= 600

stress: deps
	$(SWIFT) build -c release
	$(SWIFT) build -c release --package-path Benchmarks --product FanoutStress
	"$$($(SWIFT) build -c release --package-path Benchmarks --show-bin-path)/FanoutStress" \
		--fanoutd "$(CURDIR)/.build/release/fanoutd" --seconds $(STRESS_SECONDS)

# Fuzz/ is a package of its own, built with the sanitizers into .build-fuzz.
# New inputs go to .build-fuzz/corpus; the committed seeds stay as they are.
FUZZ_SECONDS ?= 300

fuzz: deps
	$(SWIFT) build --package-path Fuzz --scratch-path .build-fuzz \
		-Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
	mkdir -p .build-fuzz/corpus
	.build-fuzz/debug/FanoutFuzz -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 .build-fuzz/corpus Fuzz/Corpus

clean:
	rm -rf .build .build-fuzz Benchmarks/.build Fuzz/.build
