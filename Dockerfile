# The image every service of docker-compose.yml runs: the hpo CLI (with PostgreSQL support and
# optuna-dashboard) as a non-root user, under tini so that `docker stop` reaches the command.
#
# Build arguments, all optional (a plain `docker build .` needs none):
#   BASE_IMAGE      any Debian-based image with Python 3.11 or later (default python:3.11-slim)
#   PIP_INDEX_URL   the package index to install from, for a build behind a mirror (default PyPI)
# and one optional BuildKit secret, for an index behind a TLS-inspecting proxy:
#   pip_cert        a CA bundle for pip: docker build --secret id=pip_cert,src=CA.pem ...
# Neither the index nor the CA bundle stays in the image. The build needs BuildKit: the default of
# `docker compose` and of `docker build` since Docker 23; with docker-compose 1.x set
# DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# tini as PID 1: it forwards SIGTERM to the command (a worker then re-queues its trial and exits
# 0; Python as PID 1 would ignore signals it has no handler for) and reaps zombies. Debian's
# package puts it in /usr/bin; a base that has it already is not asked to install it again.
RUN if [ ! -x /usr/bin/tini ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends tini \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY storage ./storage
COPY workers ./workers
COPY hpo ./hpo
COPY docker ./docker
# A virtual environment: the same on every base, and the only way to pip-install on a Debian
# python3, which is "externally managed" (PEP 668).
ARG PIP_INDEX_URL
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/venv \
    && pip install ".[postgres,dashboard]"

# /results: the working folder docker-compose.yml gives the coordinator, where `hpo search` writes
# the campaign's report and final model; the user must be able to write there.
RUN useradd --create-home --uid 10001 --user-group hpo \
    && install -d -o hpo -g hpo /results
USER hpo

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["hpo", "--help"]
