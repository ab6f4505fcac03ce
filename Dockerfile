# egress-filter in a container: `egress-filter run` (DNS resolver, proxy, dashboard) as a non-root user.
# Not built or run where this file was written (no Docker daemon there); see docs/operations.md.
#
#   docker build -t egress-filter .
#   docker run -d --name egress-filter -p 53:5353/udp -p 53:5353/tcp -p 3128:8080 \
#       -v egress-filter-state:/var/lib/egress-filter egress-filter
#
# Inside the container the servers listen on 0.0.0.0 (its own network namespace); what is
# reachable from outside is only what `-p` publishes.  The dashboard stays on the container's
# loopback unless you give it a token (docs/dashboard.md).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY policies ./policies
COPY runtime ./runtime
COPY store ./store
COPY dns_blocker ./dns_blocker
COPY proxy_addons ./proxy_addons
COPY replay ./replay
COPY egress_filter ./egress_filter
RUN pip install . && rm -rf /src \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/egress-filter --create-home \
        --shell /usr/sbin/nologin egress-filter

USER egress-filter:egress-filter
WORKDIR /var/lib/egress-filter
ENV HOME=/var/lib/egress-filter
VOLUME ["/var/lib/egress-filter"]

EXPOSE 5353/udp 5353/tcp 8080/tcp

# version.bind CH TXT is answered by the resolver itself, never forwarded: healthy means serving,
# whatever the upstreams do.  The proxy port must accept a connection too.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["egress-filter", "health", "--dns", "127.0.0.1:5353", "--proxy", "127.0.0.1:8080"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["egress-filter"]
CMD ["run", "--dns-listen", "0.0.0.0:5353", "--proxy-listen", "0.0.0.0:8080", \
     "--db", "/var/lib/egress-filter/events.db"]
