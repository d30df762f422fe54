"""Read a stack's raw config from its Pulumi.<stack>.yaml (for the lab and tests; `pulumi` itself is not needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

from multicloud_overlay.overlay.config import PROJECT, RETIRED_KEYS, TOP_KEYS, UNPREFIXED


def read_stack_file(path: str | Path) -> dict[str, Any]:
    """The project's keys of a stack file, without the `multicloud-overlay:` prefix.

    Pulumi reads every key of a stack file as `<namespace>:<name>`. A key of this project written without the prefix
    (`hub: aws`) never reaches the program: it is listed under UNPREFIXED, and parse_config says how to write it.
    Keys of other namespaces (`aws:region`) are not this program's and are left out."""
    doc = cast(dict[str, Any], yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    prefix = f"{PROJECT}:"
    config = cast(dict[object, Any], doc.get("config") or {})
    raw = {k.removeprefix(prefix): v for k, v in config.items() if isinstance(k, str) and k.startswith(prefix)}
    unprefixed = sorted(k for k in config if isinstance(k, str) and ":" not in k and k in TOP_KEYS | set(RETIRED_KEYS))
    if unprefixed:
        raw[UNPREFIXED] = unprefixed
    return raw
