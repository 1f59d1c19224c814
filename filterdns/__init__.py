"""filterdns: an authoritative DNS server that routes clients to edge regions with
NS1-style filter chains."""

__version__ = "0.1.0"
