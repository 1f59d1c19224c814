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
    watch: bool = True
    watch_interval: float = 1.0
    health: bool = True
    workers: int = 1
