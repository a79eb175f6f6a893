# The two set-up commands of the README, plus the benchmark.
.PHONY: run test bench

# Build the component and run it in wasmtime serve on 127.0.0.1:8055 against
# the built-in local DIAL world (or real endpoints: see README). Options such as
# PORT=8056 or HOST=0.0.0.0: see the header of scripts/run.sh.
run:
	scripts/run.sh

# Every test, exactly as CI runs it.
test:
	scripts/test.sh

# Benchmarks (separate from the tests): writes BENCHMARKS.md.
bench:
	scripts/bench.sh
