# The image every service of docker-compose.yml runs: the hpo CLI (with PostgreSQL support and
# optuna-dashboard) as a non-root user, under tini so that `docker stop` reaches the command.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1

# tini as PID 1: it forwards SIGTERM to the command (a worker then re-queues its trial and exits
# 0; Python as PID 1 would ignore signals it has no handler for) and reaps zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY storage ./storage
COPY workers ./workers
COPY hpo ./hpo
COPY docker ./docker
RUN pip install ".[postgres,dashboard]"

RUN useradd --create-home --uid 10001 --user-group hpo
USER hpo

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["hpo", "--help"]
