"""Backend selection: RDMA when the host has a device and pyverbs imports, else TCP."""

from __future__ import annotations

import importlib.util
import logging
import os

from mooncake.transfer.config import TransferConfig

log = logging.getLogger(__name__)


def rdma_devices(sysfs: str = "/sys/class/infiniband") -> list[str]:
    """Names of RDMA devices the kernel lists (empty without RDMA support)."""
    try:
        return sorted(os.listdir(sysfs))
    except OSError:
        return []


def pyverbs_available() -> bool:
    return importlib.util.find_spec("pyverbs") is not None


def select_backend(config: TransferConfig) -> str:
    """``rdma`` or ``tcp`` for inter-host transfers, per ``config.backend``.

    ``auto`` picks RDMA only where it can work and logs why when it falls back to TCP;
    an explicit ``rdma`` that cannot work raises ``ValueError`` naming the field.
    """
    devices = rdma_devices(config.rdma_sysfs)
    if config.rdma_device is not None:
        devices = [d for d in devices if d == config.rdma_device]
    if config.backend == "tcp":
        return "tcp"
    reason = None
    if not devices:
        reason = f"no RDMA device under {config.rdma_sysfs}" + (
            f" named {config.rdma_device!r}" if config.rdma_device else ""
        )
    elif not pyverbs_available():
        reason = "pyverbs is not installed (extra 'rdma')"
    if reason is None:
        log.info("transfer: using RDMA device %s", devices[0])
        return "rdma"
    if config.backend == "rdma":
        raise ValueError(f"backend: 'rdma' requested but {reason}")
    log.info("transfer: %s; using the TCP backend", reason)
    return "tcp"


__all__ = ["pyverbs_available", "rdma_devices", "select_backend"]
