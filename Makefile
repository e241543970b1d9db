# Model-conversion pipeline. `make help` lists the targets.
SHELL := /bin/bash
VENV_ROOT ?= $(CURDIR)/.venvs
export VENV_ROOT
PY := $(VENV_ROOT)/orchestrator/bin/python
ENVS := orchestrator mmpretrain paddle mindspore

MANIFEST ?= manifests/all.yaml
OUT ?= artifacts
# One entry per installed source, each with a seeded random-init checkpoint made by its
# own framework (not trained weights; the reports say so).
# DEMO_DIR: where they are made once (default demo/, git-ignored; tests use a temporary one).
DEMO_DIR ?= demo
DEMO_MM := $(DEMO_DIR)/res2net50-w14-s8.pth
DEMO_PD := $(DEMO_DIR)/paddleclas-res2net50-14w-8s.pdparams
DEMO_MS := $(DEMO_DIR)/mindcv-res2net50.ckpt
# Made once for the demo only: never sign real artifacts with it.
DEMO_KEY := $(DEMO_DIR)/signing-key.pem
STORE ?= store
NIGHTLY_OUT ?= nightly-artifacts
PYTEST_ARGS ?=
# TEST_WORKERS: pytest-xdist workers of `make test` (default: the cores, at most 4, since
# each may run a framework conversion of a few GB); 1 runs the suite in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
TEST_DIST = $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)
BENCH_JSON ?= bench.json

.PHONY: help setup demo convert lint test test-fast test-offline list lock lock-hashes mutation zoo-sweep clean verify-artifact publish nightly \
        bench-data-path bench bench-scale bench-int8 bench-warm ray-head ray-worker ray-stop
RAY := $(VENV_ROOT)/orchestrator/bin/ray
RAY_PORT ?= 6379
# Options every conversion run takes from make variables (see `python pipeline.py --help`).
RUN_OPTS = $(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(SHARD_SIZE),--shard-size $(SHARD_SIZE)) \
           $(if $(THREADS),--threads $(THREADS)) $(if $(SKIP_UNCHANGED),--skip-unchanged $(SKIP_UNCHANGED))

help:
	@echo "make setup                      build/update the environments (idempotent)"
	@echo "make demo                       offline: seeded demo checkpoint -> verified ONNX in $(OUT)/"
	@echo "make convert MODEL=NAME [CHECKPOINT=PATH] [OUT=DIR] [DATA=DIR [LIMIT=N]] [PRECISIONS=fp32,fp16,int8]"
	@echo "                                DATA (or DATASETS_DIR): labelled ImageNet val -> accuracy gate"
	@echo "                                EXECUTOR=ray [RAY_ADDRESS=host:port] [SHARD_SIZE=N]: on Ray"
	@echo "make ray-head                     start a Ray head node offering this checkout's environments"
	@echo "make ray-worker ADDRESS=host:port join a Ray cluster, offering this checkout's environments"
	@echo "make ray-stop                     stop the Ray node(s) started on this machine"
	@echo "make bench-scale                  accuracy gate: local vs ray on 1 and 2 workers (JSON)"
	@echo "make bench-int8 [CALIBRATION_IMAGES=256]  int8 build: ORT's calibrator vs in-graph ranges; localize time (JSON)"
	@echo "make bench-warm [SOURCE=mmpretrain] [MODELS=a,b]  sweep seconds per model: fresh process per job vs warm workers (JSON)"
	@echo "make list                       entries of $(MANIFEST)"
	@echo "make zoo-sweep SOURCE=mmpretrain|paddleclas|mindcv [SAMPLE=N] [PATTERN='res*'] [SEED=0] [RESUME=1]"
	@echo "make zoo-sweep LIST=mmdeploy|paddle2onnx|mindcv-popular   a peer project's own test list"
	@echo "                                add + convert + gate zoo models (random init); coverage in $(ZOO_OUT)/"
	@echo "make verify-artifact ARTIFACT=DIR PUBLIC_KEY=PUB"
	@echo "make publish FROM=OUT TO=STORE PUBLIC_KEY=PUB [KEEP=K]   STORE: a folder or s3://BUCKET/PREFIX"
	@echo "make nightly [ONLINE=1 SIGNING_KEY=PEM PUBLIC_KEY=PUB DATA=DIR LIMIT=N] [STORE=store|s3://BUCKET/PREFIX] [KEEP=K]"
	@echo "make bench MODEL=NAME [OUT=DIR] [BATCH_SIZES=1,8,32] [PRECISIONS=..] [DEVICE=cuda]"
	@echo "                                source vs ONNX Runtime latency/FPS table + bench.json"
	@echo "make bench-data-path            accuracy gate: data path vs inference images/s (JSON)"
	@echo "make test                       ruff, then the full test suite (slow tests included)"
	@echo "make lint                       ruff check (rules in pyproject.toml)"
	@echo "make test-fast                  tests that need no framework worker and no package index"
	@echo "make test-offline               the full suite less the tests that need a package index"
	@echo "make lock                       re-resolve envs/*.in into hash-locked envs/*.lock.txt"
	@echo "make lock-hashes                keep the pins, recompute the sha256 hashes in envs/*.lock.txt"
	@echo "make mutation [BUDGET=s]        mutation score of the gate/signing/store code (mutation-report/)"

setup:
	@for env in $(ENVS); do scripts/setup_env.sh $$env || exit $$?; done

$(DEMO_MM): | setup
	@echo "demo: making a seeded random-init checkpoint with mmpretrain (not trained weights)"
	$(VENV_ROOT)/mmpretrain/bin/python -m converters.mmpretrain.make_checkpoint \
	    --arch mmpretrain:res2net50-w14-s8_3rdparty_8xb32_in1k --seed 0 --out $@

$(DEMO_PD): | setup
	@echo "demo: making a seeded random-init checkpoint with PaddleClas (not trained weights)"
	$(VENV_ROOT)/paddle/bin/python -m converters.paddleclas.make_checkpoint \
	    --model-id Res2Net50_14w_8s --seed 0 --mark-demo --out $@

$(DEMO_MS): | setup
	@echo "demo: making a seeded random-init checkpoint with MindCV (not trained weights)"
	$(VENV_ROOT)/mindspore/bin/python -m converters.mindcv.make_checkpoint \
	    --model-id res2net50 --seed 0 --mark-demo --out $@

$(DEMO_KEY): | setup
	@echo "demo: making a signing key for the demo only ($@, $(DEMO_KEY:.pem=.pub)); real runs use SIGNING_KEY"
	$(PY) pipeline.py keygen $@

demo: setup $(DEMO_MM) $(DEMO_PD) $(DEMO_MS) $(DEMO_KEY)
	@echo "demo: signing with the demo key $(DEMO_KEY)"
	$(PY) pipeline.py --manifest $(MANIFEST) --signing-key $(DEMO_KEY) \
	    --only res2net50-w14-s8 --checkpoint res2net50-w14-s8=$(DEMO_MM) \
	    --only paddleclas-res2net50-14w-8s --checkpoint paddleclas-res2net50-14w-8s=$(DEMO_PD) \
	    --only mindcv-res2net50 --checkpoint mindcv-res2net50=$(DEMO_MS) \
	    --out $(OUT) $(RUN_OPTS)

convert: setup
	@test -n "$(MODEL)" || { echo "usage: make convert MODEL=NAME [CHECKPOINT=PATH] [OUT=DIR] [DATA=DIR [LIMIT=N]]"; exit 2; }
	$(PY) pipeline.py --manifest $(MANIFEST) --only $(MODEL) --out $(OUT) \
	    $(if $(CHECKPOINT),--checkpoint $(MODEL)=$(CHECKPOINT)) $(if $(DATA),--data $(DATA)) \
	    $(if $(LIMIT),--limit $(LIMIT)) $(if $(SIGNING_KEY),--signing-key $(SIGNING_KEY)) \
	    $(if $(PRECISIONS),--precisions $(PRECISIONS)) $(RUN_OPTS)

verify-artifact: setup
	@test -n "$(ARTIFACT)" -a -n "$(PUBLIC_KEY)" || { echo "usage: make verify-artifact ARTIFACT=DIR PUBLIC_KEY=PUB"; exit 2; }
	$(PY) pipeline.py verify-artifact $(ARTIFACT) --public-key $(PUBLIC_KEY)

publish: setup
	@test -n "$(FROM)" -a -n "$(TO)" -a -n "$(PUBLIC_KEY)" || { echo "usage: make publish FROM=OUT TO=STORE PUBLIC_KEY=PUB [KEEP=K]"; exit 2; }
	$(PY) pipeline.py publish --from $(FROM) --to $(TO) --public-key $(PUBLIC_KEY) $(if $(KEEP),--keep $(KEEP))

# Scheduled job (.github/workflows/nightly.yml runs it with ONLINE=1); offline it converts the
# demo checkpoints with the demo key and says so.
nightly: setup
	ONLINE=$(ONLINE) STORE=$(STORE) OUT=$(NIGHTLY_OUT) DEMO_DIR=$(DEMO_DIR) \
	    SIGNING_KEY=$(SIGNING_KEY) PUBLIC_KEY=$(PUBLIC_KEY) DATA=$(DATA) LIMIT=$(LIMIT) PRECISIONS=$(PRECISIONS) KEEP=$(KEEP) \
	    EXECUTOR=$(EXECUTOR) SHARD_SIZE=$(SHARD_SIZE) MANIFEST=$(MANIFEST) scripts/nightly.sh

# A Ray node advertises, as resources, each environment this checkout has built (from its
# current lock) and this checkout's code; tasks go only to nodes that can run them as here.
# Task processes import this checkout (PYTHONPATH) and use its environments (VENV_ROOT).
ray-head: setup
	PYTHONPATH=$(CURDIR) $(RAY) start --head --port=$(RAY_PORT) --include-dashboard=false \
	    --resources='$(shell PYTHONPATH=$(CURDIR) $(PY) -m orchestrator.executor)'
	@echo "head started: run 'make ray-worker ADDRESS=<this host>:$(RAY_PORT)' on the other nodes, then"
	@echo "  RAY_ADDRESS=<this host>:$(RAY_PORT) make convert MODEL=... EXECUTOR=ray DATA=..."

ray-worker: setup
	@test -n "$(ADDRESS)" || { echo "usage: make ray-worker ADDRESS=host:port"; exit 2; }
	PYTHONPATH=$(CURDIR) $(RAY) start --address=$(ADDRESS) \
	    --resources='$(shell PYTHONPATH=$(CURDIR) $(PY) -m orchestrator.executor)'

ray-stop:
	$(RAY) stop

bench-scale: setup
	$(PY) benchmarks/scale.py $(if $(IMAGES),--images $(IMAGES)) $(if $(SHARD_SIZE),--shard-size $(SHARD_SIZE)) \
	    $(if $(SWEEP),--sweep $(SWEEP))

bench: setup
	@test -n "$(MODEL)" || { echo "usage: make bench MODEL=NAME [OUT=DIR] [BATCH_SIZES=1,8,32] [PRECISIONS=fp32,fp16,int8] [DEVICE=cuda]"; exit 2; }
	$(PY) pipeline.py bench --model $(MODEL) --manifest $(MANIFEST) --from $(OUT) \
	    $(if $(BATCH_SIZES),--batch-sizes $(BATCH_SIZES)) $(if $(PRECISIONS),--precisions $(PRECISIONS)) \
	    $(if $(DEVICE),--device $(DEVICE)) $(if $(RUNS),--runs $(RUNS)) --json $(BENCH_JSON)

bench-data-path: setup
	$(PY) benchmarks/data_path.py $(if $(DATA),--data $(DATA))

bench-warm: setup
	$(PY) benchmarks/warm_workers.py $(if $(SOURCE),--source $(SOURCE)) $(if $(MODELS),--models $(MODELS))

bench-int8: setup
	$(PY) benchmarks/int8.py $(if $(CALIBRATION_IMAGES),--calibration-images $(CALIBRATION_IMAGES))

list: setup
	@$(PY) pipeline.py --manifest $(MANIFEST) --list

# ruff (configured in pyproject.toml) first: a lint finding fails `make test`, and so CI.
lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(PY) -m pytest $(TEST_DIST) --durations=25 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not index" $(TEST_DIST) $(PYTEST_ARGS)

test-offline: setup
	$(PY) -m pytest -m "not index" $(TEST_DIST) --durations=25 $(PYTEST_ARGS)

lock:
	@for env in $(ENVS) mutation; do scripts/lock_env.sh $$env || exit $$?; done

lock-hashes:
	@for env in $(ENVS) mutation; do scripts/lock_env.sh --hash-only $$env || exit $$?; done

# Mutation testing of the gates, signing, store, manifest, fetch and deploy code against the
# fast tests: score and survivors in MUTATION_OUT/mutation.{md,json} (scripts/mutation.sh).
# Every model of a zoo (or SAMPLE of them, drawn with SEED) from a 5-field entry; a nightly
# job can run it whole (EXECUTOR=ray fans the conversions out). scripts/zoo_sweep.py.
ZOO_OUT ?= zoo-sweep
zoo-sweep: setup
	@test -n "$(SOURCE)$(LIST)" || { echo "usage: make zoo-sweep SOURCE=mmpretrain|paddleclas|mindcv [SAMPLE=N] [PATTERN=...] [SEED=0] [MODELS=a,b]"; echo "       make zoo-sweep LIST=mmdeploy|paddle2onnx|mindcv-popular   (a peer project's own test list)"; exit 2; }
	$(PY) scripts/zoo_sweep.py $(if $(SOURCE),--source $(SOURCE)) $(if $(LIST),--list $(LIST)) --out $(ZOO_OUT) \
	    $(if $(SAMPLE),--sample $(SAMPLE)) \
	    $(if $(PATTERN),--pattern '$(PATTERN)') $(if $(SEED),--seed $(SEED)) $(if $(MODELS),--models $(MODELS)) \
	    $(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(RESUME),--resume)

mutation: setup
	MUTATION_BUDGET=$(or $(BUDGET),3600) MUTATION_OUT=$(or $(MUTATION_OUT),mutation-report) \
	    scripts/mutation.sh

clean:
	rm -rf $(OUT) $(NIGHTLY_OUT) $(if $(findstring ://,$(STORE)),,$(STORE)) .pytest_cache
	@echo "kept demo/ (demo checkpoints and the demo signing key); rm -rf demo to remake them"
