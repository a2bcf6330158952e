# rotnet: the pipeline, trainer and tools in one image.
#
#   docker build -t rotnet .
#   docker run --rm -v "$PWD/data:/data" rotnet rotnet-pipeline --dataset mnist --output-dir /data/records/mnist
#   docker run --rm -v "$PWD/data:/data" rotnet rotnet-train --records /data/records/mnist --output /data/runs/mnist
#
# GPU: build with --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04-style images that
# carry Python 3.11, or keep this base and install `tensorflow[and-cuda]` (pulls CUDA/cuDNN wheels);
# run with `docker run --gpus all`. The trainer picks mixed_float16 automatically on a GPU.
#
# Dataflow custom container (`--sdk_container_image`): build the `dataflow` target, which adds Beam's
# SDK worker boot binary as the entrypoint, push it, and pass it to the pipeline. Tag it with the
# package version, read from schemas/version.py (never spelled here, so it cannot go stale):
#   VERSION=$(python3 -c 'from schemas.version import PACKAGE_VERSION; print(PACKAGE_VERSION)')
#   docker build --target dataflow -t "REGION-docker.pkg.dev/PROJECT/rotnet/worker:$VERSION" .
#   docker push "REGION-docker.pkg.dev/PROJECT/rotnet/worker:$VERSION"
#   rotnet-pipeline ... --runner DataflowRunner --sdk_container_image "REGION-docker.pkg.dev/PROJECT/rotnet/worker:$VERSION"
#
# HTTP service (rotnet-serve: the API, and the page at /): build the `serve` target and mount a trained
# model; publish the port on the host's loopback only (the service has no authentication):
#   docker build --target serve -t rotnet-serve .
#   docker run --rm -p 127.0.0.1:8080:8080 -v "$PWD/data/runs/photos:/models/model:ro" rotnet-serve --quarter-turns
#
# The build context is only what .dockerignore leaves (no .venv, data/, caches or .git).
# (the Beam version in the image must equal the launcher's: both come from constraints.txt).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BEAM_SDK_IMAGE=apache/beam_python3.11_sdk:2.77.0

FROM ${BEAM_SDK_IMAGE} AS beam-sdk

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /opt/rotnet
# Same recipe and pins as `make` (scripts/install.sh + constraints.txt); only the extras differ
# (no test tools in the image).
COPY setup.cfg pyproject.toml constraints.txt README.md ./
COPY scripts/install.sh scripts/install-system.sh scripts/
COPY schemas/ schemas/
COPY pipeline/ pipeline/
COPY trainer/ trainer/
COPY tools/ tools/
COPY benchmarks/ benchmarks/
COPY rotnet/ rotnet/
# Debian's jpegtran (rotnet-correct --lossless transpose) through the same script as .ci/run.
RUN EXTRAS=pipeline,trainer,gcp,export,serve PIP="python -m pip" sh scripts/install.sh \
    && sh scripts/install-system.sh && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 rotnet \
    && mkdir /data && chown rotnet /data
USER 10001
WORKDIR /data
CMD ["rotnet-pipeline", "--help"]

FROM runtime AS serve
# rotnet-serve binds 127.0.0.1 by default; inside the container it listens on all of the container's
# interfaces so that `docker run -p 127.0.0.1:8080:8080` reaches it. MODEL: mount it at /models/model.
EXPOSE 8080
ENTRYPOINT ["rotnet-serve", "/models/model", "--host", "0.0.0.0", "--port", "8080"]
CMD []

FROM runtime AS dataflow
# COPY writes as root whatever USER says; the worker keeps running as the unprivileged user.
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
