//! "Method": how every figure of the report is measured, as the closing
//! section of `BENCHMARKS.md` says it.

pub(super) const METHOD: &str = "\
- **World**: `mas-world` runs inside the benchmark process on its own 2-thread Tokio runtime \
(threads `mas-world*`), with no delays or faults: every upstream answers as fast as it can \
(except in `two_agents`, where the world pauses between the events of both agents' streams). \
The benchmark client, the world and `wasmtime serve` share the machine's cores.
- **Component**: `wasmtime serve -Scli --addr 127.0.0.1:PORT --env DIAL_ENDPOINT=… --env \
UMS_AGENT_ENDPOINT=… [extra flags] mas_coordinator.wasm`, the release build.
- **Floor**: the scenario's upstream calls as the coordinator makes them in its default \
`COORDINATION_MODE=plan` (the planning call, the agent call(s) of the plan the world answers, \
synthesis) made by the benchmark client itself, one after the other, with the request bodies \
built by the coordinator's own functions (`plan::request_body`, `plan::task_text`, \
`agent_history`, `conversation_title`, `plan::sections`, `synthesis::request_body`, the target's \
`model` added as the coordinator adds it) from the configuration the component gets, every \
answer read to its end and checked. With several independent agents the floor is \
coordination + the slowest agent path + synthesis of each run (each call timed on its own). \
The *floor* opens a new TCP connection per call, as wasmtime does for every outbound request; \
*floor, kept-alive* reuses one connection per upstream (what a pooled client could reach).
- **Same bytes**: before a scenario is measured, one floor run and one coordinated run are \
recorded by the world and compared call by call (the agent calls between the coordination \
call and the synthesis in any order): service, method, path and query, the `content-type`, \
`api-key` and `x-conversation-id` headers and the body must be identical byte for byte, UMS \
conversation ids and turn numbers aside (`ums-conv-<n>#<turn>`, different per conversation by \
design); anything else stops the run.
- **Coordinated**: the streaming request to the component on a kept-alive connection, read to \
the end. **Added latency** = coordinated − floor, per percentile (p50 − p50, p99 − p99). \
Floor, kept-alive floor and coordinated requests are interleaved one by one, so all see the \
same conditions. **TTFB**: from handing the request to the connection to the first non-empty \
body frame of the response.
- **Checks**: every measured coordinated response must be `200`, contain the stage of every \
agent the plan chose and the synthesized answer (for `two_agents`, with both task sections), \
carry no error event and end with `data: [DONE]`; every floor call must be 200 and its stream \
end with `data: [DONE]`. Anything else is a failure and is \
counted (warm-up included for the load levels).
- **Throughput**: N clients, each on its own kept-alive connection, sending back to back for a \
warm-up, then a measured window; req/s = responses completed in the window ÷ its length.
- **CPU**: utime + stime of the wasmtime process from `/proc/<pid>/stat` (all threads), delta over \
a run ÷ completed requests; the world's share from `/proc/self/task/*/stat` of the `mas-world*` \
threads; \"bench client\" is the rest of the benchmark process. 1 core = 1.00. \
Peak RSS is `VmHWM` from `/proc/<pid>/status`.
- **Other load**: the machine may be shared (builds, tests). Before each phase the tool waits \
(at most 3 minutes over the whole run) until other processes use less than 0.2 cores, and \
a phase during which they used more than 0.2 cores is measured again (3 attempts at most); \
every table shows the other processes' load during the phase (machine busy time from \
`/proc/stat` minus interrupts, wasmtime and the benchmark process): rows where it is above \
~0.1 cores are skewed.
- **Host floor**: `fixed` and `relay` (`bench/floor`, built with the component's release \
profile) each in a `wasmtime serve` of its own with the run's flags (`-Scli`, `relay` with \
`--env RELAY_ORIGIN=<the world's Core>`), or each under `spin up` with a generated manifest \
(`target/mas-bench/floor-spin/`); 1 client: warm-up, then until the latency phase's time or \
count runs out; 32 clients: as the throughput levels. `fixed` gets the `gpa` scenario's request, \
`relay` its GPA call, checked once against the direct call as the world records both.
- **Percentiles**: nearest rank over all samples of the window.";
