"""Cluster security on Dask's terms: which ``distributed.security.Security`` a client or a
worker uses, and the rule that nothing joins a cluster over the network in clear.

- The embedded cluster (``LLM()`` without ``scheduler``) listens on 127.0.0.1 only and
  uses TLS with a temporary CA (``Security.temporary()``): certificates live in memory,
  are handed to the worker processes it starts, and nothing else holds them, so no
  other process (even local) can talk to its scheduler, workers or nannies.
- A joined cluster uses the TLS files given (``--tls-ca-file``, ``--tls-cert``,
  ``--tls-key``) or Dask's own configuration (``distributed.comm.tls.*``). Dask's TLS is
  mutual: a peer without a certificate signed by the CA is refused at the handshake.
- An address off the loopback without TLS is refused unless ``insecure`` is set: Dask's
  comms deserialize pickles, so whoever reaches an unencrypted port runs code there.

See docs/security.md.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from distributed.comm.addressing import parse_address, parse_host_port
from distributed.security import Security


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for Dask's mutual TLS (one set per process: scheduler, worker, client)."""

    ca_file: str | None = None
    """CA certificate every peer's certificate must be signed by."""
    cert: str | None = None
    """This process's certificate (may also hold the key)."""
    key: str | None = None
    """This process's private key (when not inside ``cert``)."""

    def __post_init__(self) -> None:
        if (self.ca_file is None) != (self.cert is None):
            raise ValueError("tls: --tls-ca-file and --tls-cert go together")
        if self.key is not None and self.cert is None:
            raise ValueError("tls: --tls-key needs --tls-cert")

    @property
    def given(self) -> bool:
        return self.ca_file is not None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (name or address) resolves to loopback addresses only."""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return False  # every interface
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(i[4][0]).split("%")[0]).is_loopback for i in infos
    )


def embedded_security() -> Security:
    """TLS with a temporary, in-memory CA for a cluster this process starts."""
    security: Security = Security.temporary()
    return security


def client_security(tls: TLSFiles | None = None) -> Security:
    """What a client uses to join a running cluster: the files given, else Dask's
    configuration (``distributed.comm.tls.*``; empty when none is set)."""
    if tls is not None and tls.given:
        return Security(
            tls_ca_file=tls.ca_file,
            tls_client_cert=tls.cert,
            tls_client_key=tls.key,
            require_encryption=True,
        )
    return Security()


def uses_tls(address: str, security: Security) -> bool:
    """Whether a connection to ``address`` under ``security`` is TLS."""
    scheme = parse_address(address, strict=False)[0] if "://" in address else None
    return scheme == "tls" or (bool(security.require_encryption) and scheme is None)


def check_address(address: str, tls: bool, insecure: bool, what: str) -> None:
    """Refuse (``ValueError`` naming ``what``) to use an address off the loopback without
    TLS, unless ``insecure``."""
    if tls or insecure:
        return
    _, loc = parse_address(address, strict=False)
    host, _ = parse_host_port(loc, 0)
    if not is_loopback(host):
        raise ValueError(
            f"{what}: {address} is reachable from the network and the connection is not TLS: "
            "anyone who can reach a Dask port can run code there. Give "
            "--tls-ca-file/--tls-cert/--tls-key (or Dask's distributed.comm.tls "
            "config) and a tls:// address, or --insecure to accept the risk"
        )


__all__ = [
    "TLSFiles",
    "check_address",
    "client_security",
    "embedded_security",
    "is_loopback",
    "uses_tls",
]
