# filterdns: authoritative DNS with NS1-style filter chains.
#   docker build -t filterdns .
#   docker run -p 53:53/udp -p 53:53/tcp -p 9153:9153 filterdns
# Mount your own config over /etc/filterdns/zones and /etc/filterdns/chains, and a volume on
# /var/lib/filterdns to keep drains and feed values across container restarts.
FROM python:3.11-slim-bookworm

# setcap lets the unprivileged user bind port 53 without running as root
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY filterdns ./filterdns
RUN pip install --no-cache-dir . \
 && setcap 'cap_net_bind_service=+ep' "$(readlink -f "$(command -v python3)")" \
 && rm -rf /src

COPY zones /etc/filterdns/zones
COPY chains /etc/filterdns/chains
RUN useradd --system --uid 10053 --home-dir /var/lib/filterdns --create-home filterdns
USER filterdns
WORKDIR /var/lib/filterdns

ENV FILTERDNS_ZONES=/etc/filterdns/zones \
    FILTERDNS_CHAINS=/etc/filterdns/chains \
    FILTERDNS_STATE_DIR=/var/lib/filterdns

EXPOSE 53/udp 53/tcp 9153/tcp
# /readyz is true once the config is loaded and every listener is open
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9154/readyz', timeout=2).status == 200 else 1)"]

# DNS and metrics on all interfaces of the container; the control API stays on its loopback
CMD ["filterdns", "serve", "--listen", "0.0.0.0:53", "--metrics", "0.0.0.0:9153"]
