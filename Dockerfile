# filterdns: authoritative DNS with NS1-style filter chains.
#   docker build -t filterdns .
#   docker run -p 53:8053/udp -p 53:8053/tcp -p 9153:9153 filterdns
#
# DNS is served on port 8053 on [::] and 0.0.0.0 inside the container, by an unprivileged user
# with no capabilities at all (it works under `capabilities: {drop: [ALL]}`); publish it as 53
# (`-p 53:8053/udp`, or a Kubernetes Service with port 53 and targetPort 8053). To bind 53 in
# the container itself, allow unprivileged ports from 53 for the pod, a namespaced sysctl:
#   docker run --sysctl net.ipv4.ip_unprivileged_port_start=53 filterdns serve --listen [::]:53 --listen 0.0.0.0:53
# (Kubernetes: securityContext.sysctls, see deploy/kubernetes/). No setcap on the interpreter:
# that would let every Python program in the image bind low ports.
#
# Port 9153 serves /metrics, /healthz and /readyz (read-only), for Prometheus and kubelet
# probes. The control API (drains, feeds, reload) stays on the container's loopback, 9154:
#   docker exec CONTAINER filterdns drain eu-west-2 --reason "LB maintenance"
# It needs a token file for changes: mount one and set FILTERDNS_CONTROL_TOKEN_FILE.
#
# The config home is /etc/filterdns (zones/, chains/), written from the example shipped in the
# package by `filterdns init`; mount your own zones/ and chains/ over it. Drains and feed values
# are kept in /var/lib/filterdns: mount a volume there to keep them across restarts.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src

# Dependencies in their own layer: rebuilt only when pyproject.toml changes, not with the code.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && pip install --no-cache-dir -r requirements.txt

# The package itself (filterdns/example links to zones/ and chains/: the wheel gets the files).
# setup.py declares the optional C piece of the UDP transport (recvmmsg/sendmmsg); this slim
# image has no compiler, so pip installs without it and UDP takes its pure-Python path.
COPY README.md LICENSE NOTICE setup.py ./
COPY zones ./zones
COPY chains ./chains
COPY filterdns ./filterdns
RUN pip install --no-cache-dir --no-deps . \
 && filterdns init /etc/filterdns \
 && useradd --system --uid 10053 --user-group --home-dir /var/lib/filterdns --create-home \
            --shell /usr/sbin/nologin filterdns \
 && rm -rf /src

WORKDIR /var/lib/filterdns
USER 10053:10053

ENV FILTERDNS_CONFIG_DIR=/etc/filterdns \
    FILTERDNS_STATE_DIR=/var/lib/filterdns

EXPOSE 8053/udp 8053/tcp 9153/tcp
# /readyz is true once the config is loaded and every listener is open
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9153/readyz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["filterdns"]
# DNS on both address families (the [::] socket is IPv6-only, so 0.0.0.0 is its own listener);
# metrics and probes on all interfaces; the control API on loopback (its default)
CMD ["serve", "--listen", "[::]:8053", "--listen", "0.0.0.0:8053", "--metrics", "0.0.0.0:9153"]
