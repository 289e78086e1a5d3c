"""The machine daemon's systemd user unit: the shared unit writer of
:mod:`starmux.node.systemd` (also used by the controller agent) under the daemon's name."""

from __future__ import annotations

from starmux.node.systemd import (
    UNIT_NAME,
    UnitExistsError,
    default_unit_dir,
    enable_instructions,
    exec_line,
    install_user_unit,
    quote_exec_arg,
    service_path,
    unit_text,
)

__all__ = [
    "UNIT_NAME",
    "UnitExistsError",
    "default_unit_dir",
    "enable_instructions",
    "exec_line",
    "install_user_unit",
    "quote_exec_arg",
    "service_path",
    "unit_text",
]
