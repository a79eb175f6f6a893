# The commands of the README: run (and its logs), test, bench.
.PHONY: run logs test bench

# Build the component and run it in wasmtime serve on 127.0.0.1:8055 against
# the built-in local DIAL world (or real endpoints: see README). Options such as
# PORT=8056 or HOST=0.0.0.0: see the header of scripts/run.sh.
run:
	scripts/run.sh

# Follow the coordinator's JSON log lines of a running `make run`, e.g.
# make logs FILTER='level=error' (KEY=VALUE filters; see scripts/logs.sh).
logs:
	scripts/logs.sh --follow $(FILTER)

# Every test, exactly as CI runs it.
test:
	scripts/test.sh

# Benchmarks (separate from the tests): writes BENCHMARKS.md.
bench:
	scripts/bench.sh
