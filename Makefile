# `make demo` and `make test` set everything up on a fresh machine (Python 3.11 or 3.12).
# `make demo POLICY=gaussian` (or cluster, attentive, none) trains the demo with that policy;
# `make demo RECIPE=clipa` (or clipf, siglip) trains a variant of configs/tiny.py.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DATA := data/demo
POLICY ?= random
RECIPE ?=
# A recipe keeps its own image policy unless POLICY is given too.
POLICY_FLAG := $(if $(or $(filter command line,$(origin POLICY)),$(if $(RECIPE),,plain)),--config.model.model_img.masking.policy=$(POLICY))
# A demo with ARGS trains in its own workdir (named by a checksum of ARGS), so that it never
# resumes, or is refused by, a finished demo of another config.
DEMO_WORKDIR ?= workdirs/demo-$(if $(RECIPE),$(RECIPE)$(if $(filter command line,$(origin POLICY)),-$(POLICY)),$(POLICY))$(if $(strip $(ARGS)),-$(shell printf '%s' '$(ARGS)' | cksum | cut -d' ' -f1))

.PHONY: demo test data clean glip-table plan slice-table

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEMO_DATA)/COMPLETE: $(VENV)/.installed input_pipeline/demo_data.py
	rm -rf $(DEMO_DATA)
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m input_pipeline.demo_data --out=$(DEMO_DATA)

data: $(DEMO_DATA)/COMPLETE

demo: $(VENV)/.installed $(DEMO_DATA)/COMPLETE
	$(PY) main.py --workdir=$(DEMO_WORKDIR) --config=configs/tiny.py$(if $(RECIPE),:$(RECIPE)) \
	    $(POLICY_FLAG) $(ARGS)
	@echo
	@echo "Demo finished. TensorBoard events, metrics.jsonl and train.log (every log line): $(DEMO_WORKDIR)"
	@echo "Checkpoints: $(DEMO_WORKDIR)/checkpoints   (make demo again resumes; rm -r $(DEMO_WORKDIR) to start over)"

# GLIP's table for the demo's policies at equal training compute (about the same number of
# encoded image patches): the unmasked run trains half the steps of the 50%-masked ones
# (18 of 36 patches; attentive 20, whole blocks; cluster a varying number), RECLIP's row as
# many steps on 32-pixel images (16 patches), tuned at 48. The table shows what each encoded.
# CLIPA's, CLIPF's and SigLIP's demos (configs/tiny.py variants) add their rows.
glip-table: $(VENV)/.installed $(DEMO_DATA)/COMPLETE
	$(MAKE) demo POLICY=none DEMO_WORKDIR=workdirs/demo-none ARGS="--config.num_epochs=1.0"
	$(MAKE) demo POLICY=none DEMO_WORKDIR=workdirs/demo-reclip ARGS="--config.image_size=32"
	for policy in random gaussian cluster attentive; do $(MAKE) demo POLICY=$$policy; done
	for recipe in clipa clipf siglip; do $(MAKE) demo RECIPE=$$recipe; done
	$(PY) -m tools.glip_table --out=workdirs/glip_table --tune_steps=50 --tune_image_size=48 \
	    --metric=zeroshot/top1,retrieval/image_retrieval_recall@1,retrieval/text_retrieval_recall@1 \
	    --runs=workdirs/demo-none,workdirs/demo-reclip,workdirs/demo-random,workdirs/demo-gaussian,workdirs/demo-cluster,workdirs/demo-attentive,workdirs/demo-clipa,workdirs/demo-clipf,workdirs/demo-siglip

# A TPU slice planned from this machine: `make plan CONFIG=configs/cfg_flip_large.py
# SLICE=v3-256 [ARGS=--config.batch_size=32768]` (tools/plan.py).
CONFIG ?= configs/tiny.py
SLICE ?= v5e-4
TPU_COMPILER := $(VENV)/tpu-compiler
$(TPU_COMPILER)/.installed: $(VENV)/.installed requirements-plan.txt
	rm -rf $(TPU_COMPILER)
	$(PY) -m pip install --quiet --no-deps --target $(TPU_COMPILER) -r requirements-plan.txt
	touch $@

plan: $(TPU_COMPILER)/.installed
	$(PY) -m tools.plan --config=$(CONFIG) --slice=$(SLICE) $(ARGS)

# docs/pod-slices.md's table of FLIP's recipes on their slices (tools/slice_table.py).
slice-table: $(TPU_COMPILER)/.installed
	$(PY) -m tools.slice_table $(ARGS)

# The tests also run open_clip's and CLIP_benchmark's own code as references (torch and
# torchvision among them); `make demo` and training never install these.
$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt $(TPU_COMPILER)/.installed
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

test: $(VENV)/.installed-test
	$(PY) -m pytest -q --durations=25 tests

clean:
	rm -rf workdirs/demo-* $(DEMO_DATA)
