from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mooncake.transfer import select
from mooncake.transfer.base import BufferPool
from mooncake.transfer.config import TransferConfig
from mooncake.transfer.fetcher import default_backends


def fake_sysfs(tmp_path: Path, *devices: str) -> str:
    d = tmp_path / "infiniband"
    d.mkdir()
    for name in devices:
        (d / name).mkdir()
    return str(d)


def test_no_device_falls_back_to_tcp_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """auto without /sys/class/infiniband entries selects TCP and logs the reason."""
    cfg = TransferConfig(rdma_sysfs=str(tmp_path / "missing"))
    with caplog.at_level(logging.INFO, logger="mooncake.transfer.select"):
        assert select.select_backend(cfg) == "tcp"
    assert "no RDMA device" in caplog.text and "TCP" in caplog.text
    assert [b.name for b in default_backends(cfg, BufferPool(0))] == ["shm", "tcp"]


def test_device_without_pyverbs_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A device is listed but pyverbs does not import: TCP, with the reason logged."""
    monkeypatch.setattr(select, "pyverbs_available", lambda: False)
    cfg = TransferConfig(rdma_sysfs=fake_sysfs(tmp_path, "mlx5_0"))
    with caplog.at_level(logging.INFO, logger="mooncake.transfer.select"):
        assert select.select_backend(cfg) == "tcp"
    assert "pyverbs" in caplog.text


def test_device_and_pyverbs_select_rdma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a device and pyverbs, auto selects RDMA; a named device that is absent does not."""
    monkeypatch.setattr(select, "pyverbs_available", lambda: True)
    sysfs = fake_sysfs(tmp_path, "mlx5_0", "mlx5_1")
    assert select.rdma_devices(sysfs) == ["mlx5_0", "mlx5_1"]
    assert select.select_backend(TransferConfig(rdma_sysfs=sysfs)) == "rdma"
    assert select.select_backend(TransferConfig(rdma_sysfs=sysfs, rdma_device="mlx5_1")) == "rdma"
    assert select.select_backend(TransferConfig(rdma_sysfs=sysfs, rdma_device="rxe0")) == "tcp"
    assert select.select_backend(TransferConfig(rdma_sysfs=sysfs, backend="tcp")) == "tcp"


def test_explicit_rdma_without_device_is_a_config_error(tmp_path: Path) -> None:
    """backend='rdma' where RDMA cannot work raises ValueError naming the field."""
    with pytest.raises(ValueError, match=r"^backend:"):
        select.select_backend(TransferConfig(backend="rdma", rdma_sysfs=str(tmp_path)))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backend": "ucx"}, "backend"),
        ({"listen_port": 70000}, "listen_port"),
        ({"batch_blocks": 0}, "batch_blocks"),
        ({"batch_bytes": -1}, "batch_bytes"),
        ({"io_timeout_s": 0}, "io_timeout_s"),
        ({"socket_buffer_bytes": 0}, "socket_buffer_bytes"),
        ({"pool_bytes": -1}, "pool_bytes"),
    ],
)
def test_transfer_config_names_bad_field(kwargs: dict[str, object], field: str) -> None:
    """Each invalid TransferConfig value raises ValueError starting with the field name."""
    with pytest.raises(ValueError, match=rf"^{field}:"):
        TransferConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown field"):
        TransferConfig.from_dict({"colour": 1})
