"""Run the Pulumi program (__main__.py) under pulumi.runtime.set_mocks and record every registration.

    run = run_program(raw_config)          # raw stack config: key -> value, as in Pulumi.<stack>.yaml
    run.resources                          # every resource: type, name, inputs, parent URN, custom
    run.outputs                            # the stack's exports, resolved
    run.of_type("aws:ec2/instance:Instance")

    run_cached(raw_config)                 # run_program once per distinct config, shared by every test module
    plan_of(raw_config)                    # the overlay's Plan of that config (what the program deploys)
    run_standalone(program)                # any other Pulumi program (a building block on its own), same mocks

Invokes (image lookups, availability zones, ...) are answered by `ProgramMocks.call` with realistic shapes.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import json
import logging
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from multicloud_overlay.overlay.config import parse_config
from multicloud_overlay.overlay.encapsulation import PAIR_KEY_BYTES
from multicloud_overlay.overlay.plan import Plan, build_plan, pair_key_name
from tests import mockdata

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "multicloud-overlay"

# Invoke token -> canned result, and resource type -> extra output properties (what the cloud would compute,
# e.g. a reserved address), one module per platform under tests/mockdata/.
INVOKES: dict[str, dict[str, Any]] = {}
# Invoke token -> function of the invoke's arguments (answers that depend on them, e.g. one id per port group).
CALLS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
RESOURCE_OUTPUTS: dict[str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]] = {}
# Platform-independent resources computed by their providers.
RESOURCE_OUTPUTS["tls:index/privateKey:PrivateKey"] = lambda args: {
    "privateKeyOpenssh": f"-----BEGIN OPENSSH PRIVATE KEY-----\nmock-{args.name}\n-----END OPENSSH PRIVATE KEY-----\n",
    "publicKeyOpenssh": f"ssh-ed25519 AAAAmock{sum(args.name.encode())}\n",
}


def mock_pair_keys(plan: Plan) -> dict[str, str]:
    """The tunnel keys the mocked random provider gives a program run of `plan` (empty when not encrypted)."""
    if not plan.encrypted:
        return {}
    return {
        pair_key_name(a, b): hashlib.shake_256(f"mock-ipsec-{pair_key_name(a, b)}".encode()).hexdigest(PAIR_KEY_BYTES)
        for a, b in plan.router_pairs()
    }


# Deterministic per name (cached runs compare), distinct per pair, the length the program asked for.
RESOURCE_OUTPUTS["random:index/randomBytes:RandomBytes"] = lambda args: {
    "hex": hashlib.shake_256(f"mock-{args.name}".encode()).hexdigest(int(args.inputs["length"])),
    "base64": base64.b64encode(hashlib.shake_256(f"mock-{args.name}".encode()).digest(int(args.inputs["length"]))).decode(),
}
RESOURCE_OUTPUTS["command:remote:Command"] = lambda args: {"stdout": "", "stderr": ""}
RESOURCE_OUTPUTS["command:local:Command"] = lambda args: {"stdout": "", "stderr": ""}
for _platform in mockdata.PLATFORMS:
    INVOKES.update(_platform.INVOKES)
    CALLS.update(getattr(_platform, "CALLS", {}))
    RESOURCE_OUTPUTS.update(_platform.RESOURCE_OUTPUTS)


@dataclass(frozen=True)
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    parent: str
    custom: bool
    provider: str
    urn: str
    ignore_changes: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()


@dataclass
class ProgramRun:
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    invokes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    invoke_providers: list[tuple[str, str]] = field(default_factory=list)
    """(token, provider reference) of every invoke."""
    component_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """URN -> outputs a component registered with register_outputs."""
    logs: list[str] = field(default_factory=list)
    """Every message the program logged through the engine at info level or above (pulumi.log.info, .warn, .error):
    what `pulumi up` shows."""
    debug_logs: list[str] = field(default_factory=list)
    """The engine's debug channel (pulumi.log.debug; the SDK logs its own resource registrations there too)."""
    secret_outputs: set[str] = field(default_factory=set)
    """Names of the stack exports that are secret."""
    provider_outputs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    """(type, name) -> the outputs the (mocked) provider computed for a resource, e.g. the stack's generated keys."""

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str, type: str | None = None) -> Registered:
        found = [r for r in self.resources if r.name == name and (type is None or r.type == type)]
        assert len(found) == 1, f"{len(found)} resources named {name}"
        return found[0]

    def waits_for(self, urn: str) -> set[str]:
        """Every resource the engine finishes before it starts this one: its dependencies, theirs, and so on."""
        deps = {r.urn: r.depends_on for r in self.resources}
        seen: set[str] = set()
        todo = list(deps[urn])
        while todo:
            u = todo.pop()
            if u not in seen:
                seen.add(u)
                todo += deps.get(u, ())
        return seen

    def children_of(self, urn: str) -> list[Registered]:
        return [r for r in self.resources if r.parent == urn]

    def descendants_of(self, urn: str) -> list[Registered]:
        out: list[Registered] = []
        todo = [urn]
        while todo:
            parent = todo.pop()
            kids = self.children_of(parent)
            out += kids
            todo += [k.urn for k in kids]
        return out


class ProgramMocks(pulumi.runtime.Mocks):
    """Echo inputs as outputs, give every resource a stable id, and plausible values for a few outputs."""

    def __init__(self, run: ProgramRun) -> None:
        self.run = run
        self.counter = 0

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        self.counter += 1
        state = dict(args.inputs)
        hook = RESOURCE_OUTPUTS.get(args.typ)
        if hook is not None:
            computed = hook(args)
            state.update(computed)
            self.run.provider_outputs[(args.typ, args.name)] = computed
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.run.invokes.append((args.token, dict(args.args)))
        self.run.invoke_providers.append((args.token, args.provider))
        answer = CALLS.get(args.token)
        if answer is not None:
            return dict(answer(dict(args.args))), []
        result = INVOKES.get(args.token)
        if result is None:
            return {}, []
        return dict(result), []


class RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: ProgramMocks, run: ProgramRun) -> None:
        super().__init__(mocks)
        self.run = run

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            from pulumi.runtime.sync_await import _ensure_event_loop

            _ensure_event_loop()
            self.run.resources.append(
                Registered(
                    type=request.type,
                    name=request.name,
                    inputs=rpc.deserialize_properties(request.object),
                    parent=request.parent,
                    custom=bool(request.custom),
                    provider=request.provider,
                    urn=response.urn,
                    ignore_changes=tuple(request.ignoreChanges),
                    depends_on=tuple(request.dependencies),
                )
            )
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:
        from pulumi.runtime.sync_await import _ensure_event_loop

        _ensure_event_loop()
        self.run.component_outputs[request.urn] = rpc.deserialize_properties(request.outputs)
        return super().RegisterResourceOutputs(request)


def _config_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run_program(raw: Mapping[str, Any], stack: str = "test", into: ProgramRun | None = None) -> ProgramRun:
    """Run __main__.py with the given raw stack config; return every registration and the resolved exports.

    `into` receives the registrations even when the program raises (to prove nothing was registered)."""
    run = into if into is not None else ProgramRun()
    _set_mocks(run, stack)
    config = {f"{PROJECT}:{k}": _config_value(v) for k, v in raw.items()}
    pulumi.runtime.set_all_config(config, [])
    exported: dict[str, Any] = {}
    real_export = pulumi.export

    def capture(name: str, value: Any) -> None:
        exported[name] = value

    pulumi.export = capture  # type: ignore[assignment]
    try:

        def program() -> None:
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

        _sync_await(run_pulumi_func(program))
        for name, value in exported.items():
            run.outputs[name] = _resolve(value)
            if _sync_await(pulumi.Output.from_input(value).is_secret()):
                run.secret_outputs.add(name)
    finally:
        pulumi.export = real_export
    return run


def run_standalone(program: Callable[[], None], into: ProgramRun | None = None) -> ProgramRun:
    """Run `program`, a Pulumi program body that is not the overlay (e.g. a building block on its own), under the
    same mocks and recorder as run_program: no stack config, no exports.

    `into` receives the registrations even when the program raises (to prove nothing was registered)."""
    run = into if into is not None else ProgramRun()
    _set_mocks(run, "standalone")
    _sync_await(run_pulumi_func(program))
    return run


def _set_mocks(run: ProgramRun, stack: str) -> None:
    """Point the Pulumi runtime at mocks that record every registration, invoke and log line into `run`."""
    mocks = ProgramMocks(run)
    logger = logging.getLogger(f"multicloud-overlay.test.{id(run)}")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_ListHandler(run.logs, run.debug_logs))
    logger.propagate = False
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=RecordingMonitor(mocks, run), logger=logger)


class _ListHandler(logging.Handler):
    """The mock engine hands every pulumi.log call to a logging.Logger at the matching level: info and above to
    `sink`, debug to `debug_sink`."""

    def __init__(self, sink: list[str], debug_sink: list[str]) -> None:
        super().__init__()
        self.sink = sink
        self.debug_sink = debug_sink

    def emit(self, record: logging.LogRecord) -> None:
        (self.sink if record.levelno >= logging.INFO else self.debug_sink).append(record.getMessage())


def unsecret(value: Any) -> Any:
    """A registered input that holds a secret arrives wrapped in Pulumi's secret envelope: its plain value."""
    if isinstance(value, dict) and rpc._special_sig_key in value:  # pyright: ignore[reportPrivateUsage]
        return value["value"]
    return value


def _config_key(raw: Mapping[str, Any]) -> str:
    return json.dumps(raw, sort_keys=True, default=str)


_CACHED: dict[str, ProgramRun] = {}


def run_cached(raw: Mapping[str, Any]) -> ProgramRun:
    """run_program once per distinct config (tests that assert different things about one run share it, also
    across test modules): the one way a test runs the overlay for a config it does not change afterwards."""
    key = _config_key(raw)
    if key not in _CACHED:
        _CACHED[key] = run_program(json.loads(key))
    return _CACHED[key]


_PLANS: dict[str, Plan] = {}


def plan_of(raw: Mapping[str, Any]) -> Plan:
    """build_plan(parse_config(raw)), once per distinct config (a Plan is frozen: tests share it). A test that patches
    what parsing or planning reads, or that checks planning itself, calls build_plan."""
    key = _config_key(raw)
    if key not in _PLANS:
        _PLANS[key] = build_plan(parse_config(raw))
    return _PLANS[key]


def _resolve(value: Any) -> Any:
    output = pulumi.Output.from_input(value)
    return _sync_await(output.future())


def is_user_data(value: str) -> bool:
    if value.startswith("#cloud-config"):
        return True
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.startswith(b"#cloud-config")


def user_data_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        if unsecret(value) is not value:
            return user_data_strings(unsecret(value))
        return [s for v in value.values() for s in user_data_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in user_data_strings(v)]
    if isinstance(value, str) and len(value) > 64 and is_user_data(value):
        return [value]
    return []


def decode(value: str) -> str:
    if value.startswith("#cloud-config"):
        return value
    raw = base64.b64decode(value)
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
