"""Dask settings a mooncake cluster starts with."""

from __future__ import annotations

import dask

from mooncake.dask_defaults import QUIET, quiet_config, quiet_env


def test_quiet_settings_apply_over_dask_defaults() -> None:
    """With Dask's defaults, every housekeeping interval is made rarer."""
    with dask.config.set({k: default for k, (default, _) in QUIET.items()}):
        assert quiet_config() == {k: ours for k, (_, ours) in QUIET.items()}
        env = quiet_env()
    assert env["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"] == "500ms"
    assert env["DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL"] == "1s"


def test_a_configured_setting_is_left_alone() -> None:
    """A setting the user configured (not Dask's default) is not overridden."""
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}):
        assert "distributed.admin.tick.interval" not in quiet_config()


def test_env_keeps_dask_defaults(monkeypatch) -> None:
    """MOONCAKE_DASK_QUIET=0 changes nothing."""
    monkeypatch.setenv("MOONCAKE_DASK_QUIET", "0")
    assert quiet_config() == {} and quiet_env() == {}
