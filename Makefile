# acm-serve: the two commands are `make predict` (run the engine on a bundled model) and `make test`.
# Both install what they need first (scripts/setup).

SWIFT ?= swift
PY := .venv/bin/python
MODEL ?= Tests/ACMModelsTests/Fixtures/vit_mixed
INPUT ?= $(MODEL)/example.npy
BUDGET ?= 0.5

.PHONY: setup build test test-swift test-python predict bench fixtures clean

setup:
	@scripts/setup

build: setup
	$(SWIFT) build -c release

## Every test: Swift unit and golden tests, the Python reference's tests, and the CLI end to end.
test: build
	$(SWIFT) test --disable-xctest
	PYTHONPATH=tools ACM_SERVE_BIN=$(CURDIR)/.build/release/acm-serve $(PY) -m pytest -q tools/tests Tests/e2e

## Classify an image with a bundled model at a compute budget.
predict: build
	.build/release/acm-serve predict --model $(MODEL) --input $(INPUT) --budget $(BUDGET)

## The ACM-vs-dense layer benchmark (BENCHMARKS.md).
bench: build
	.build/release/acm-bench

## Regenerate the golden fixtures from the PyTorch reference.
fixtures: setup
	PYTHONPATH=tools $(PY) -m acm_tools.golden

clean:
	rm -rf .build
