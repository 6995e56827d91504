# stability-relay container image. See README, "Operations" → "Docker".
#
#   docker build -t stability-relay .   (podman/buildah: add --format docker, or no HEALTHCHECK)
#   docker run -d --name stability-relay -p 127.0.0.1:8080:8080 \
#     -v /srv/stability-relay/config.yaml:/etc/stability-relay/config.yaml:ro \
#     -v stability-relay-state:/var/lib/stability-relay \
#     -e RELAY_DSN='postgresql://relay:...@db:5432/app' stability-relay
#
# The config must listen on 0.0.0.0:8080 (`http.listen`): the container's own loopback is
# not reachable from outside it. The health check below asks 127.0.0.1:8080/healthz.

ARG PYTHON_VERSION=3.11
# Both stages start from this image. Any Debian bookworm image with `python` (3.11+, with
# venv and pip) and useradd will do: tests/ops/test_image.py builds on a local debootstrap base
# when Docker Hub is out of reach (docs/docker.md).
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim-bookworm

# Build: a virtualenv with the relay and its dependencies (wheels only, no compiler needed).
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY sql ./sql
RUN python -m venv /opt/stability-relay \
    && /opt/stability-relay/bin/pip install .

# Run: the virtualenv on a clean slim image, as an unprivileged user.
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin relay \
    && install -d -m 0755 /etc/stability-relay \
    && install -d -o relay -g relay -m 0700 /var/lib/stability-relay
COPY --from=build /opt/stability-relay /opt/stability-relay
# STATE_DIRECTORY: where webhook delivery state is kept (as systemd's StateDirectory= sets it).
ENV PATH=/opt/stability-relay/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STATE_DIRECTORY=/var/lib/stability-relay
USER 10001:10001
VOLUME ["/etc/stability-relay", "/var/lib/stability-relay"]
EXPOSE 8080
# SIGTERM: stop accepting, tell clients to reconnect, drain webhooks, exit 0 within
# http.shutdown_timeout; give it that long (docker stop -t, Kubernetes grace period).
STOPSIGNAL SIGTERM
# No curl in the slim image: Python asks /healthz (200 while the process serves).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["stability-relay"]
CMD ["run", "--config", "/etc/stability-relay/config.yaml"]
