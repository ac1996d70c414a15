# The two set-up commands: `make run` and `make test`. Both install into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow reliability bench clean

# torch's spin-waiting OpenMP threads slowed training up to ~20x on a loaded 2-core machine (measured);
# set here too, since `training` can only set it when it is imported before torch.
export OMP_WAIT_POLICY ?= PASSIVE

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/curaclip run

# The default suite; tests marked `slow` (servers, clusters, kill matrices, each over a minute) run in test-slow.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The fault, bad-input and security tests, fast and slow (~12 min alone on 2 cores): their ledger goes to
# docs/reliability.md from the tests that passed, and its summary into the README's "Reliability" section.
# (The report's file goes after '=': a separate argument naming an existing file would be taken for a test
# path, and pytest would not load tests/conftest.py's option.)
reliability: $(STAMP)
	$(BIN)/python -m pytest -q -m reliability --reliability-report=docs/reliability.md; \
	  status=$$?; $(BIN)/python tests/readme_reliability.py && exit $$status

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_matching.py
	$(BIN)/python benchmarks/bench_shard.py
	$(BIN)/python benchmarks/bench_curate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_resume.py
	$(BIN)/python benchmarks/bench_captions.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_cluster.py
	$(BIN)/python benchmarks/bench_overhead.py

clean:
	rm -rf $(VENV) runs
