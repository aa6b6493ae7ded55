# The instrumented WebSocket server, its load generator and the alert sink, as docker-compose.yml
# builds them (`obsgen render` on a spec with a builtin service, or whose webhooks name the sink
# http://alert-sink:5001/...). Build context: this repository's root.
#
#   docker build -t obsgen/instrumented-server:0.1.0 .
#   docker run --rm -p 8765:8765 -v "$PWD/secret:/run/secrets/server_jwt_secret:ro" \
#     -e OBSGEN_HOST=0.0.0.0 -e OBSGEN_JWT_SECRET_FILE=/run/secrets/server_jwt_secret \
#     obsgen/instrumented-server:0.1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A regular install of the project (not editable): the image needs no source tree at run time.
# .dockerignore sends only what the package build reads.
COPY . /tmp/obsgen-src
RUN pip install /tmp/obsgen-src && rm -rf /tmp/obsgen-src

# Never root. The uid is fixed: compose stages the server's secrets owned by it.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin obsgen
USER 10001
WORKDIR /tmp

# WebSocket, /metrics, /healthz and /readyz share one port. The alert sink
# (python -m instrumented_server.alert_sink --host 0.0.0.0) listens on 5001.
EXPOSE 8765
EXPOSE 5001
CMD ["python", "-m", "instrumented_server"]
