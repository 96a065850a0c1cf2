# Two commands do all the set-up on a fresh machine:
#   make demo   installs Kasmina in .venv, then runs the main job (kasmina demo) on the embedded SQLite log
#   make test   installs Kasmina with its dev extras in .venv, then runs the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch, pinned, so pip never pulls a multi-GB CUDA build by accident.
TORCH  ?= torch==2.13.0
DB     ?= sqlite:///kasmina.db

.PHONY: install demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[dev]'

# --resume: a second `make demo` continues (or re-reports) the run in the log, never clobbers it.
demo: install
	$(VENV)/bin/kasmina demo --db $(DB) --resume --plot demo.png
	$(VENV)/bin/kasmina verify --db $(DB)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) kasmina.db kasmina.db-wal kasmina.db-shm kasmina.db.checkpoints demo.png .pytest_cache
