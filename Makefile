# inferd: the two commands the README promises are `make run` and `make test`.
SHELL := /bin/bash
ORT_LIB := $(CURDIR)/.ort/lib/libonnxruntime.so.1.31.1
export ORT_DYLIB_PATH ?= $(ORT_LIB)

.PHONY: run test check fuzz docs build ort models models-install lint stack-up stack-down

## Serve both models on :8080 with embedded defaults.
run: ort
	cargo run --release --bin inferd -- serve

## Everything the suite needs, then the suite (see scripts/test.sh).
test:
	./scripts/test.sh

## The quick tier, for the edit-compile-test loop: formatting, lints, the docs
## checks that need no server, and every test that needs no release build and
## no outside service (see scripts/check.sh).
check: ort
	./scripts/check.sh

## The property tests with fresh seeds and more cases (each failure prints its
## seed); `make test` runs them with one fixed seed.
fuzz: ort
	./scripts/fuzz.sh

## The book, where mdBook is installed (cargo install mdbook --locked).
docs:
	mdbook build docs

build: ort
	cargo build --release --bins

ort: $(ORT_LIB)
$(ORT_LIB):
	./scripts/install-ort.sh

## Retrain both models from scratch into a temp dir and print their metrics.
models:
	./scripts/train-models.sh

## Retrain and replace the committed models.
models-install:
	MODELS_OUT=$(CURDIR)/.models-new ./scripts/train-models.sh
	for m in text-classifier/1 text-classifier/2 text-classifier/3 lstm-forecaster/1 lstm-forecaster-torch/1; do \
	  mkdir -p models/$$m; cp .models-new/$$m/model.toml .models-new/$$m/golden.json .models-new/$$m/README.md models/$$m/; \
	  for f in model.onnx model.pt heldout.json reference.json; do \
	    if [ -f .models-new/$$m/$$f ]; then cp .models-new/$$m/$$f models/$$m/; fi; done; done
	rm -rf .models-new

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	./scripts/check-layers.sh

## The docker-compose topology on loopback: nginx + 3 workers + Redis + PostgreSQL.
stack-up: build
	./scripts/stack.sh up

stack-down:
	./scripts/stack.sh down
