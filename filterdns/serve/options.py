"""What ``filterdns serve`` was asked to do: one plain value, read by every process role."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeOptions:
    listen: list[tuple[str, int]] = field(default_factory=lambda: [("127.0.0.1", 8053)])
    zones: str = "zones"
    chains: str = "chains"
    geoip: str | None = None
    metrics: tuple[str, int] | None = ("127.0.0.1", 9153)
    control: tuple[str, int] | None = ("127.0.0.1", 9154)
    control_token_file: str | None = None
    state_dir: str = "var"
    state: str | None = None  # None/"file": state_dir/state.json; etcd://host:port[,...]/prefix
    discard_state: bool = False
    etcd_ca: str | None = None
    etcd_cert: str | None = None
    etcd_key: str | None = None
    etcd_user: str | None = None
    etcd_password_file: str | None = None
    health_policy: str | None = None
    instance: str | None = None
    max_drain_share: float | None = None
    tcp_max_connections: int = 256
    tcp_idle_timeout: float = 10.0
    tcp_max_per_source: int = 32
    tcp_message_timeout: float = 5.0
    tcp_max_lifetime: float = 120.0
    tcp_max_unsent: int = 131072
    http_allow_hosts: tuple = ()  # Host names the control API and metrics answer besides loopback
    rrl: dict | None = None  # dns.rrl.RrlConfig.to_dict(), or None for off
    watch: bool = True
    watch_interval: float = 1.0
    health: bool = True
    workers: int = 1
    #: seed of the routing RNG (shuffle, shed_load); None: seeded from the OS. With one worker
    #: the same queries in the same order get the same answers (`filterdns simulate` relies on it)
    seed: int | None = None
    query_log: str | None = None  # PATH or "-" (stdout); serve/tap.py
    query_log_sample: float = 0.01
    dnstap: str | None = None  # file, unix:PATH or a socket path
    server_id: str | None = None  # NSID and CHAOS id.server (dns/identity.py); None: none
    log_format: str = "text"  # filterdns.logs.FORMATS; workers log the same way
    verbose: bool = False

    def tcp_limits(self, workers: int = 1) -> dict:
        """The TCP limits of one process (serve/tcp.py). The connection caps are the server's:
        with several workers each takes an equal share (rounded up)."""
        return {"max_connections": -(-self.tcp_max_connections // workers),
                "per_source": -(-self.tcp_max_per_source // workers),
                "idle_timeout": self.tcp_idle_timeout, "message_timeout": self.tcp_message_timeout,
                "lifetime": self.tcp_max_lifetime, "max_unsent": self.tcp_max_unsent}
