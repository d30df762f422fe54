"""Read the stack config through pulumi.Config (the only Pulumi-dependent part of configuration)."""

from __future__ import annotations

import json
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from multicloud_overlay.overlay.config import MAP_KEYS, PROJECT, RETIRED_KEYS, TOP_KEYS

SECRET_SET = "[secret]"


def read_pulumi_config() -> dict[str, Any]:
    """Every key of this project's stack config as set, unknown ones included (so typos are reported)."""
    prefix = f"{PROJECT}:"
    keys = {k.removeprefix(prefix) for k in (*runtime_config.CONFIG.get(), *runtime_config.get_config_env()) if k.startswith(prefix)}
    cfg = pulumi.Config(PROJECT)
    raw: dict[str, Any] = {}
    for key in sorted(keys | TOP_KEYS):
        if key in RETIRED_KEYS:
            raw[key] = SECRET_SET  # only its presence matters (it may be a secret): parse_config says what to do
            continue
        value = cfg.get(key)
        if value is None:
            continue
        if key in MAP_KEYS:
            try:
                raw[key] = json.loads(value)
            except json.JSONDecodeError:
                raw[key] = value  # parse_config says what is wrong with it
        else:
            raw[key] = value
    return raw
