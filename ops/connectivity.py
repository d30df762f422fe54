"""The stack output `connectivity`, read into typed records.

Its shape (one entry per router, the router's `overlay-node check --json` line, parsed by the program):

    {"aws-router": {"reachable": 59, "total": 60, "unreachable": ["10.250.3.2"],
                    "results": {"10.250.1.1": true, ..., "10.250.3.2": false}}, ...}

A router's value is null when its check printed nothing, and {"raw": "..."} when it printed no JSON. A stack
deployed with the check off exports an empty map (or no `connectivity` output at all): nothing was tested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

OUTPUT_NAME = "connectivity"

CHECK_OFF_HINT = (
    "the stack exports no connectivity result, so nothing was tested: the connectivity check is off. "
    "Turn it on and deploy again: `pulumi config set connectivityCheck true --stack {stack}` "
    "(or `python -m ops deploy --stacks {stack} --config connectivityCheck=true`)"
)


class CheckNotRun(Exception):
    """The stack has no connectivity result to judge."""


@dataclass(frozen=True)
class RouterCheck:
    """What one router's check found: every overlay address it pinged and whether it answered."""

    router: str
    results: Mapping[str, bool]
    """Target address -> reachable."""

    @property
    def unreachable(self) -> list[str]:
        return sorted(target for target, ok in self.results.items() if not ok)


@dataclass(frozen=True)
class RouterProblem:
    """A router whose check left no usable result (no output, or output that is not the check's JSON)."""

    router: str
    reason: str


@dataclass(frozen=True)
class ConnectivityReport:
    routers: list[RouterCheck]
    problems: list[RouterProblem]

    @property
    def unreachable_pairs(self) -> list[tuple[str, str]]:
        """(router, target) for every target a router could not reach."""
        return [(check.router, target) for check in self.routers for target in check.unreachable]

    @property
    def passed(self) -> bool:
        return not self.problems and not self.unreachable_pairs and bool(self.routers)


def parse_connectivity(outputs: Mapping[str, object], stack: str) -> ConnectivityReport:
    """Read the stack's `connectivity` output; CheckNotRun when the stack has none (the check is off)."""
    value = outputs.get(OUTPUT_NAME)
    if not isinstance(value, Mapping) or not value:
        raise CheckNotRun(CHECK_OFF_HINT.format(stack=stack))
    routers: list[RouterCheck] = []
    problems: list[RouterProblem] = []
    for router, result in sorted(value.items(), key=lambda item: str(item[0])):
        parsed = parse_router_check(str(router), result)
        if isinstance(parsed, RouterCheck):
            routers.append(parsed)
        else:
            problems.append(parsed)
    return ConnectivityReport(routers, problems)


def parse_router_check(router: str, result: object) -> RouterCheck | RouterProblem:
    """One router's entry: its check's JSON object, or a problem saying why there is none."""
    if result is None:
        return RouterProblem(router, "the check printed nothing")
    if not isinstance(result, Mapping):
        return RouterProblem(router, f"unexpected check result {result!r}")
    if "raw" in result and "results" not in result:
        return RouterProblem(router, f"the check printed no JSON: {str(result['raw']).strip()[-300:]!r}")
    results = result.get("results")
    if not isinstance(results, Mapping) or not all(isinstance(ok, bool) for ok in results.values()):
        return RouterProblem(router, f"check result without a target -> bool map: {dict(result)!r}"[:400])
    pinged: dict[str, bool] = {str(target): bool(ok) for target, ok in results.items()}
    listed = result.get("unreachable")
    if isinstance(listed, list):
        for target in listed:
            pinged[str(target)] = False  # the check's own list of failures wins over an inconsistent map
    return RouterCheck(router, pinged)
