"""DNS transports: UDP and TCP listeners on asyncio (uvloop when installed)."""
