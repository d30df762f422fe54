"""Read a stack's raw config from its Pulumi.<stack>.yaml (for the lab and tests; `pulumi` itself is not needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

from multicloud_overlay.overlay.config import PROJECT


def read_stack_file(path: str | Path) -> dict[str, Any]:
    """The project's keys of a stack file, without the `multicloud-overlay:` prefix."""
    doc = cast(dict[str, Any], yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    prefix = f"{PROJECT}:"
    return {k.removeprefix(prefix): v for k, v in (doc.get("config") or {}).items() if k.startswith(prefix)}
