# The commands of the README: run (and its logs), test, bench, eval.
.PHONY: run logs test bench eval eval-rag

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

# Routing and plan evaluation (docs/eval.md): the shipped cases (eval/cases.jsonl)
# against the local DIAL world, started in process; with DIAL_ENDPOINT set,
# against that DIAL Core instead (DEPLOYMENT_NAME, DIAL_API_KEY and every other
# variable of the coordinator are read). Writes target/eval/report.{json,md}.
# More flags: make eval EVAL_ARGS="--repeat 3 --min-accuracy 0.9"
EVAL_ARGS ?=
EVAL_TARGET = $(if $(DIAL_ENDPOINT),,--local-world)
eval:
	cargo run -p mas-eval --locked -- $(EVAL_TARGET) $(EVAL_ARGS)

# The same with the registry of eval/rag.env (GPA, UMS and a RAG agent) on
# eval/cases-rag.jsonl.
eval-rag:
	set -a && . eval/rag.env && set +a && \
	cargo run -p mas-eval --locked -- $(EVAL_TARGET) --cases eval/cases-rag.jsonl $(EVAL_ARGS)
