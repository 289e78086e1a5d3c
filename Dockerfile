# The starmux relay. Build: docker build -t starmux-relay .
# Run:   docker run -p 8765:8765 -v starmux-relay:/data starmux-relay
# The first start prints the relay fingerprint and writes a one-time registration
# token to /data/registration-token (0600; never to the log). Read it with:
#   docker exec CONTAINER cat /data/registration-token
# The same image runs a cluster node (deploy/compose.yml): the `cluster` extra
# (asyncpg, redis) is installed, and /keys holds a key file shared by the nodes.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    STARMUX_RELAY_DATA_DIR=/data

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin starmux \
    && mkdir -p /data /keys && chown starmux:starmux /data /keys && chmod 0700 /data /keys

WORKDIR /app
COPY pyproject.toml README.md ./
COPY starmux ./starmux
COPY relay ./relay
COPY daemon ./daemon
COPY client ./client
COPY web ./web
RUN pip install --no-cache-dir '.[cluster]'

USER starmux
VOLUME ["/data"]
EXPOSE 8765
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8765/health', timeout=8).status == 200 else 1)"]
ENTRYPOINT ["starmux", "relay", "serve", "--host", "0.0.0.0"]
