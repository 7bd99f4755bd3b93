# syntax=docker/dockerfile:1.7
# inferd image: the server binary, ONNX Runtime from its PyPI wheel, and the models.
#
#   CPU (default):  docker build -t inferd .
#   CUDA:           docker build -t inferd:cuda \
#                     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg ORT_PACKAGE=onnxruntime-gpu \
#                     --build-arg CARGO_FEATURES=cuda .
#                   then run with INFERD_DEVICE=cuda and a GPU (docker-compose.gpu.yml).
#   libtorch:       docker build -t inferd:torch \
#                     --build-arg TORCH_VERSION=2.13.0 --build-arg CARGO_FEATURES=torch .
#                   adds the libtorch backend for TorchScript versions (models/*/model.pt),
#                   with libtorch's CPU libraries from the `torch` PyPI wheel (the version
#                   tch 0.26 links). Features combine: CARGO_FEATURES="cuda torch" with the
#                   CUDA arguments above runs ONNX versions on the GPU and TorchScript ones on
#                   the CPU; libtorch on CUDA needs the wheel's CUDA 13 libraries (the
#                   nvidia-* wheels), which this image does not carry.
#
# The runtime stage runs as a numeric non-root user and writes only to /data (the
# JSON-lines log and the spill file), so it runs with a read-only root filesystem.

ARG RUST_VERSION=1.95
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- torch: libtorch's CPU libraries and headers, unpacked from PyPI's wheels by
# the script `make test` uses (empty when TORCH_VERSION is unset; it must equal
# the pin in scripts/torch-requirements.txt). The CUDA half of libtorch is left
# out, so the image needs none of the nvidia-* CUDA packages.
FROM python:3.11-slim-bookworm AS torch
ARG TORCH_VERSION=""
COPY scripts/with-torch.sh scripts/torch-requirements.txt /tmp/torch/scripts/
RUN mkdir -p /opt/libtorch/lib \
 && if [ -n "$TORCH_VERSION" ]; then \
      grep -qx "torch==${TORCH_VERSION}" /tmp/torch/scripts/torch-requirements.txt \
        || { echo "TORCH_VERSION=${TORCH_VERSION} is not the pinned torch" >&2; exit 1; }; \
      rm -rf /opt/libtorch \
      && INFERD_LIBTORCH_DIR=/opt/libtorch bash /tmp/torch/scripts/with-torch.sh true; \
    fi \
 && rm -rf /tmp/torch

# ---- build: the release binary --------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS build
ARG CARGO_FEATURES=""
WORKDIR /src
# tch's build script finds libtorch here (used only with the `torch` feature).
COPY --from=torch /opt/libtorch /opt/libtorch
ENV LIBTORCH=/opt/libtorch
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is
# copied out because the target cache mount is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin inferd \
      ${CARGO_FEATURES:+--features "$CARGO_FEATURES"} \
 && install -m 0755 target/release/inferd /usr/local/bin/inferd

# ---- ort: libonnxruntime from the PyPI wheel, by the script `make test` uses -----
FROM python:3.11-slim-bookworm AS ort
ARG ORT_PACKAGE=onnxruntime
ARG ORT_VERSION=1.31.1
COPY scripts/install-ort.sh /tmp/install-ort.sh
RUN ORT_PACKAGE="$ORT_PACKAGE" ORT_VERSION="$ORT_VERSION" ORT_DIR=/opt/onnxruntime \
    bash /tmp/install-ort.sh \
 && rm -rf /opt/onnxruntime/wheel

# ---- runtime --------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
ARG ORT_VERSION=1.31.1
RUN groupadd --system --gid 10001 inferd \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin inferd \
 && install -d -o 10001 -g 10001 /data
COPY --from=build /usr/local/bin/inferd /usr/local/bin/inferd
COPY --from=ort /opt/onnxruntime/lib /opt/onnxruntime/lib
# Empty unless TORCH_VERSION was set.
COPY --from=torch /opt/libtorch/lib /opt/libtorch/lib
COPY models /models
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    LD_LIBRARY_PATH=/opt/libtorch/lib \
    INFERD_MODELS_DIR=/models \
    INFERD_LISTEN=0.0.0.0:8080 \
    INFERD_LOG_FORMAT=json \
    INFERD_PREDLOG_PATH=/data/predictions.jsonl \
    INFERD_PREDLOG_SPILL_PATH=/data/predlog-spill.jsonl
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# No curl or shell needed: the binary probes itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["inferd", "healthcheck", "--url", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["inferd"]
CMD ["serve"]
