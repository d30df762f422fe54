"""A real, stock Debian sshd that takes a node's push and check the way pulumi-command sends them.

How pulumi-command (the `command:remote:Command` provider, pinned at 1.2.1 in requirements.txt) runs a remote
command, from its source, read with the project's search tool (repository pulumi/pulumi-command unless named; the
stored copies are not tagged, so they are the newest the index holds, not proven to be v1.2.1's exact text):

- provider/pkg/provider/remote/commandOutputs.go @3494816610256db600ea4b44a3fbdd16020c6e1d (`CommandOutputs.run`,
  `logAndWrapSetenvErr`): it dials (`Connection.Dial`), opens one session (`client.NewSession()`), then for every
  `environment` entry calls `session.Setenv(k, v)`; the first refusal fails the command before anything runs,
  with `could not set environment variable "K": ssh: setenv failed` (and an error log "Unable to set 'K'. This
  only works if your SSH server is configured to accept these variables via AcceptEnv ..."). Then, unless
  `addPreviousOutputInEnv` is false, it sends the previous stdout/stderr (on an update) as PULUMI_COMMAND_STDOUT
  and PULUMI_COMMAND_STDERR: a refusal of those is only a warning. `stdin`, when non-empty, is the session's
  stdin; the command string runs with `session.Run(cmd)`; a non-zero exit fails with
  "<ExitError>: running %q:\n<stdout+stderr>"; the stdout and stderr outputs lose one trailing newline.
- provider/pkg/provider/remote/commandController.go @1355b24c0e2bf78d7366816dab5400fed3a348b4: Create runs
  `create`; Update runs `update`, else `create`. `triggers` never reach the node (only the engine compares them).
- ssh/session.go of golang.org/x/crypto (golang/crypto @0e971cde, an old copy, and current copies of the same file
  the index holds): `Setenv` sends an "env" channel request with want-reply true and returns "ssh: setenv failed"
  when the server answers failure; `Run` = `Start` + `Wait`, `Start` sends one "exec" request with the command
  string (OpenSSH's sshd runs it as `<login shell> -c <command>`: /bin/bash for the payload's login user); stdin
  is copied and then closed (EOF), also when it is empty.
- provider/pkg/provider/remote/connection.go @e1fd5afe468d4a61b924bdb784227d423461649c (a version without
  hostKey) and connection_test.go @3701639a69d08e01d30ed34eb0f3c86f99e51a3e: `Dial` = `dialWithRetry(ssh.Dial)`,
  retried on ANY error (a refused TCP connection, but also a failed handshake or login) until `dialErrorLimit`
  attempts (default 10; -1 unlimited) with a backoff of 100 ms x1.5 up to 5 s; `perDialTimeout` (default 15 s)
  is the ssh.ClientConfig timeout; user root and port 22 by default; auth is the private key (plus an agent when
  SSH_AUTH_SOCK is set).
- Host keys: the index holds no connection.go with `hostKey` (it came with PR #794, "Add ability to specify host
  key", merged 2025-05-23, for issue #755); the SDK installed here (pulumi_command/remote/_inputs.py) documents
  "The expected host key to verify the server's identity. If not provided, the host key will be ignored." Go's
  `ssh.FixedHostKey` compares the server key's wire blob byte for byte and fails the handshake with "ssh: host key
  mismatch" before authentication (and, by the retry above, again up to dialErrorLimit times: with this
  program's 60, some four minutes before `pulumi up` reports it). Key types: what `ssh.ParseAuthorizedKey` reads
  (ed25519, ecdsa, rsa); the node offers only the ed25519 key its payload installs.

paramiko, verified in its source (paramiko 5.1.0, channel.py): `Channel.set_environment_variable` and so
`exec_command(environment=...)` send "env" with want-reply FALSE: a refusal is silently ignored. This client
therefore sends its own env requests with want-reply true and waits for the answer, as Go's Setenv does.

The node side: one network namespace of its own (unique name NETNS_PREFIX<pid>-<random>) with no link out of it
(a management NIC with NODE_ADDRESS and a LAN NIC with the node's LAN address, each a veth whose peer end stays in
the namespace too, and no default route): the test's client connects from a thread that entered that namespace,
so no packet leaves it. sshd runs from Debian's openssh-server with
the packaged /etc/ssh/sshd_config (asserted identical to /usr/share/openssh/sshd_config, `AcceptEnv LANG LC_*`)
in a private mount namespace where everything the node needs is mounted, never written to the host:
overlays over /etc and /var (their changes land on a tmpfs), the payload's login user in copies of
/etc/passwd, /etc/shadow, /etc/group (bind mounts), its home on a tmpfs /home with ~/.ssh/authorized_keys from
the payload's `users` entry, /etc/sudoers.d bound to a directory holding only the stock README and the payload's
drop-ins (each checked with `visudo -cf`), the payload's host key as the only host key (as `ssh_deletekeys` /
`ssh_keys` do), the payload's write_files (node script, boot config, unit, ...), tmpfs at
/etc/multicloud-overlay, /var/lib/multicloud-overlay, /usr/local/sbin and /run, and cloud-init's "done" status
(a booted VM: `cloud-init status --wait` returns).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import io
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import paramiko
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from paramiko.common import MSG_CHANNEL_FAILURE, cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from multicloud_overlay.cloudinit.render import HOST_KEY_PATH, PayloadFile, payload_node_config, read_payload

SSHD = "/usr/sbin/sshd"
SSHD_CONFIG = Path("/etc/ssh/sshd_config")
PACKAGED_SSHD_CONFIG = Path("/usr/share/openssh/sshd_config")
STOCK_ACCEPT_ENV = ("LANG", "LC_*")
ACCEPT_ENV_LINE = "AcceptEnv LANG LC_*"
SUDOERS_DIR = "/etc/sudoers.d"
NETNS_PREFIX = "pushsshd-"
"""Not the lab's "mco-" (lab/topology.py PREFIX): the lab takes every mco-* namespace for its own."""
NODE_ADDRESS = "192.0.2.1"
"""TEST-NET-1, on a NIC inside the node's own namespace (which has no route out)."""
PREVIOUS_OUTPUT_ENV = ("PULUMI_COMMAND_STDOUT", "PULUMI_COMMAND_STDERR")
CLONE_NEWNET = 0x40000000
START_TIMEOUT = 10.0


class SshdSetupError(RuntimeError):
    """The node could not be built (a missing package, a payload without a login user, ...)."""


class SetenvRefused(Exception):
    """The server refused an "env" request: pulumi-command fails the command with this message, before it runs."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f'could not set environment variable "{name}": ssh: setenv failed')


class HostKeyMismatch(Exception):
    """The node showed another host key than the pinned one: the handshake stops before authentication."""


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str
    public_openssh: str


def generate_key_pair(algorithm: str = "ED25519") -> KeyPair:
    """A real key pair in the shapes pulumi_tls gives (OpenSSH private key, `type base64\\n` public key)."""
    if algorithm.upper() == "ED25519":
        key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey = ed25519.Ed25519PrivateKey.generate()
    elif algorithm.upper() == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise ValueError(f"no test key for algorithm {algorithm}")
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private.decode(), public.decode() + "\n")


def _load_private_key(text: str) -> paramiko.PKey:
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise ValueError("the connection's privateKey is not an OpenSSH private key paramiko can read")


def _public_blob(openssh: str) -> tuple[str, bytes]:
    kind, blob = openssh.split()[:2]
    return kind, base64.b64decode(blob)


# --------------------------------------------------------------------------- payload


@dataclass(frozen=True)
class LoginUser:
    """One cloud-config `users:` entry, as cloud-init creates it."""

    name: str
    authorized_keys: tuple[str, ...]
    shell: str = "/bin/sh"
    gecos: str = ""
    groups: tuple[str, ...] = ()
    sudo: tuple[str, ...] = ()
    """Rules cloud-init writes to /etc/sudoers.d/90-cloud-init-users for this user (none unless `sudo:` is set)."""


@dataclass(frozen=True)
class NodePayload:
    user_data: str
    files: tuple[PayloadFile, ...]
    users: tuple[LoginUser, ...]
    host_key: KeyPair | None

    @classmethod
    def from_user_data(cls, user_data: str) -> NodePayload:
        files, _ = read_payload(user_data)
        body = cast(dict[str, Any], yaml.safe_load(user_data))
        users = []
        for entry in body.get("users") or []:
            if isinstance(entry, str):
                raise SshdSetupError(
                    f"users: {entry!r}: the harness creates only explicit users (the image's default user is not modelled)"
                )
            groups = entry.get("groups") or ()
            sudo = entry.get("sudo") or ()
            users.append(
                LoginUser(
                    name=str(entry["name"]),
                    authorized_keys=tuple(str(k).strip() for k in entry.get("ssh_authorized_keys") or ()),
                    shell=str(entry.get("shell") or "/bin/sh"),
                    gecos=str(entry.get("gecos") or ""),
                    groups=tuple(g.strip() for g in groups.split(",")) if isinstance(groups, str) else tuple(map(str, groups)),
                    sudo=(sudo,) if isinstance(sudo, str) else tuple(map(str, sudo)),
                )
            )
        by_path = {f.path: f for f in files}
        private, public = by_path.get(HOST_KEY_PATH), by_path.get(f"{HOST_KEY_PATH}.pub")
        host_key = KeyPair(private.content.decode(), public.content.decode()) if private and public else None
        return cls(user_data, tuple(files), tuple(users), host_key)

    def login_user(self, name: str) -> LoginUser:
        found = [u for u in self.users if u.name == name]
        if not found:
            raise SshdSetupError(f"the payload creates no user {name!r} (users: {[u.name for u in self.users]})")
        return found[0]

    @property
    def sudoers_files(self) -> list[PayloadFile]:
        return [f for f in self.files if os.path.dirname(f.path) == SUDOERS_DIR]

    @property
    def node_config(self) -> dict[str, Any]:
        return payload_node_config(self.user_data)


# --------------------------------------------------------------------------- what a Command resource sends


def _unsecret(value: Any) -> Any:
    from tests.harness import unsecret

    value = unsecret(value)
    if isinstance(value, dict):
        return {k: _unsecret(v) for k, v in cast(dict[str, Any], value).items()}
    if isinstance(value, list):
        return [_unsecret(v) for v in cast(list[Any], value)]
    return value


@dataclass(frozen=True)
class SshConnection:
    """`connection` of a remote Command (defaults as pulumi-command's: user root, port 22, 10 dials, 15 s)."""

    host: str
    user: str = "root"
    private_key: str | None = None
    host_key: str | None = None
    port: int = 22
    dial_error_limit: int = 10
    per_dial_timeout: int = 15

    @classmethod
    def from_inputs(cls, conn: Mapping[str, Any]) -> SshConnection:
        conn = _unsecret(dict(conn))
        unknown = set(conn) - {"host", "user", "privateKey", "hostKey", "port", "dialErrorLimit", "perDialTimeout"}
        if unknown:
            raise SshdSetupError(f"connection sets {sorted(unknown)}, which this harness does not model")
        return cls(
            host=str(conn["host"]),
            user=str(conn.get("user", "root")),
            private_key=conn.get("privateKey"),
            host_key=conn.get("hostKey"),
            port=int(conn.get("port", 22)),
            dial_error_limit=int(conn.get("dialErrorLimit", 10)),
            per_dial_timeout=int(conn.get("perDialTimeout", 15)),
        )

    def replace(self, **changes: Any) -> SshConnection:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RemoteCommand:
    """Everything of a `command:remote:Command` that reaches the node (`triggers` never do)."""

    connection: SshConnection
    create: str | None
    update: str | None
    stdin: str | None
    environment: dict[str, str]
    add_previous_output_in_env: bool = True

    @classmethod
    def from_inputs(cls, inputs: Mapping[str, Any]) -> RemoteCommand:
        plain = _unsecret(dict(inputs))
        known = {"connection", "create", "update", "delete", "stdin", "environment", "triggers", "addPreviousOutputInEnv", "logging"}
        unknown = set(plain) - known
        if unknown:
            raise SshdSetupError(f"the Command sets {sorted(unknown)}, which this harness does not model")
        return cls(
            connection=SshConnection.from_inputs(plain["connection"]),
            create=plain.get("create"),
            update=plain.get("update"),
            stdin=plain.get("stdin"),
            environment={str(k): str(v) for k, v in (plain.get("environment") or {}).items()},
            add_previous_output_in_env=bool(plain.get("addPreviousOutputInEnv", True)),
        )

    def script(self, operation: str) -> str:
        if operation == "create":
            script = self.create
        elif operation == "update":
            script = self.update if self.update is not None else self.create
        else:
            raise ValueError(operation)
        if script is None:
            raise ValueError(f"the Command has no {operation} command")
        return script


@dataclass
class CommandResult:
    command: str
    exit_status: int
    raw_stdout: str
    raw_stderr: str
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    @property
    def stdout(self) -> str:
        """The Command's `stdout` output (one trailing newline trimmed, as pulumi-command does)."""
        return self.raw_stdout.removesuffix("\n")

    @property
    def stderr(self) -> str:
        return self.raw_stderr.removesuffix("\n")

    def error(self) -> str:
        """pulumi-command's error for a failed command."""
        return f"Process exited with status {self.exit_status}: running {self.command!r}:\n{self.raw_stdout}{self.raw_stderr}"


# --------------------------------------------------------------------------- the SSH client


def _request_answered_failure(chan: paramiko.Channel, m: Message) -> None:
    """MSG_CHANNEL_FAILURE: remember the refusal and wake the waiter (paramiko's own handler closes the channel)."""
    transport = cast(_Transport, chan.get_transport())
    transport.refused.add(chan.get_id())
    chan.event.set()


class _Transport(paramiko.Transport):
    _channel_handler_table = {  # noqa: RUF012 - paramiko's per-class dispatch table, extended
        **cast(dict[int, Any], vars(paramiko.Transport)["_channel_handler_table"]),
        MSG_CHANNEL_FAILURE: _request_answered_failure,
    }

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.refused: set[int] = set()


def _channel_request(chan: paramiko.Channel, request: str, *strings: str, timeout: float) -> bool:
    """Send a channel request with want-reply true; True if the server answered success, False if failure."""
    transport = cast(_Transport, chan.get_transport())
    transport.refused.discard(chan.get_id())
    m = Message()
    m.add_byte(cMSG_CHANNEL_REQUEST)
    m.add_int(chan.remote_chanid)
    m.add_string(request)
    m.add_boolean(True)
    for s in strings:
        m.add_string(s)
    chan.event.clear()
    chan.event_ready = False
    cast(Any, transport)._send_user_message(m)
    if not chan.event.wait(timeout):
        raise TimeoutError(f"no answer to the {request!r} request in {timeout} s")
    if chan.event_ready:
        return True
    if chan.get_id() in transport.refused:
        return False
    raise paramiko.SSHException(f"channel closed while waiting for the answer to {request!r}")


def setns_net(netns: str) -> None:
    """Move the calling thread into a named network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def connect_in_netns(netns: str, address: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection made from inside `netns` (a short-lived thread enters it; the socket stays there)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            setns_net(netns)
            out["sock"] = socket.create_connection((address, port), timeout=timeout)
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, name=f"connect-{netns}")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return cast(socket.socket, out["sock"])


def dial(netns: str, address: str, conn: SshConnection, connect_budget: float = START_TIMEOUT) -> _Transport:
    """Connect, pin the host key, authenticate: pulumi-command's `Connection.Dial`.

    A refused TCP connection is retried (backoff 100 ms x1.5, at most 5 s, within dialErrorLimit and
    `connect_budget`); a wrong host key or a refused login is raised at once (pulumi-command would retry those
    too, up to dialErrorLimit times, and then fail with the same error)."""
    deadline = time.monotonic() + connect_budget
    delay, attempts = 0.1, 0
    while True:
        attempts += 1
        try:
            sock = connect_in_netns(netns, address, conn.port, conn.per_dial_timeout if conn.per_dial_timeout > 0 else None)
            break
        except OSError:
            out_of_tries = conn.dial_error_limit >= 0 and attempts > conn.dial_error_limit
            if out_of_tries or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
    transport = _Transport(sock)
    try:
        transport.start_client(timeout=conn.per_dial_timeout)
        server_key = transport.get_remote_server_key()
        if conn.host_key is not None:
            want_type, want_blob = _public_blob(conn.host_key)
            if server_key.get_name() != want_type or server_key.asbytes() != want_blob:
                raise HostKeyMismatch(
                    f"ssh: handshake failed: ssh: host key mismatch (pinned {want_type} {conn.host_key.split()[1][:16]}..., "
                    f"the node shows {server_key.get_name()} {server_key.get_base64()[:16]}...)"
                )
        if conn.private_key is None:
            raise SshdSetupError("the connection has no privateKey (password and agent logins are not modelled)")
        transport.auth_publickey(conn.user, _load_private_key(conn.private_key))
    except BaseException:
        transport.close()
        raise
    return transport


def exec_command(
    transport: _Transport,
    command: str,
    stdin: str | None = None,
    environment: Mapping[str, str] | None = None,
    optional_environment: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> CommandResult:
    """One session, as pulumi-command's `CommandOutputs.run`: env requests (a refused `environment` entry raises
    SetenvRefused before the command runs; a refused `optional_environment` entry is a warning), then exec, stdin,
    EOF, and the exit status."""
    warnings: list[str] = []
    chan = transport.open_session(timeout=timeout)
    try:
        for name, value in (environment or {}).items():
            if not _channel_request(chan, "env", name, value, timeout=timeout):
                raise SetenvRefused(name)
        for name, value in (optional_environment or {}).items():
            if not _channel_request(chan, "env", name, value, timeout=timeout):
                warnings.append(f"Unable to set {name!r}: the server refused it (AcceptEnv); the command runs without it")
        chan.exec_command(command)
        if stdin:
            chan.sendall(stdin.encode())
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            got = False
            while chan.recv_ready():
                out += chan.recv(65536)
                got = True
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                got = True
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{command!r} did not finish in {timeout} s (stdout so far: {out.decode(errors='replace')!r})")
            if not got:
                time.sleep(0.01)
        return CommandResult(command, chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace"), warnings)
    finally:
        chan.close()


# --------------------------------------------------------------------------- the node


def _run(argv: Sequence[str], input: str | None = None, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SshdSetupError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _alive(pid: int) -> bool:
    """The process runs (a zombie, waiting for its parent to reap it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _netns_pids(netns: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in proc.stdout.split()]


def _kill_netns_processes(netns: str) -> None:
    """End the processes this harness started in its namespace (sshd and its sessions), by pid."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _netns_pids(netns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)


def sweep_stale_namespaces() -> list[str]:
    """Remove what an earlier run of this harness left behind when its test process died before cleaning up
    (SIGKILL, a power cut): namespaces NETNS_PREFIX<pid>-<random> whose pid no longer runs, the processes in them
    (its sshd and sessions, by pid), and their work directories. Mounts need nothing: they lived only in the
    node's mount namespace, which ended with its last process."""
    removed = []
    netns_dir = Path("/run/netns")
    for entry in sorted(netns_dir.iterdir()) if netns_dir.is_dir() else []:
        if not entry.name.startswith(NETNS_PREFIX):
            continue
        owner = entry.name.removeprefix(NETNS_PREFIX).split("-")[0]
        if owner.isdigit() and _alive(int(owner)):
            continue
        _kill_netns_processes(entry.name)
        _run(["ip", "netns", "del", entry.name], check=False)
        removed.append(entry.name)
    for workdir in Path(tempfile.gettempdir()).glob(f"{NETNS_PREFIX}*"):
        owner = workdir.name.removeprefix(NETNS_PREFIX).split("-")[0]
        if workdir.is_dir() and owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(workdir, ignore_errors=True)
            removed.append(str(workdir))
    return removed


def check_stock_sshd() -> None:
    """openssh-server and sudo are installed and the packaged sshd_config is the one in use, unchanged."""
    for tool in (SSHD, "/usr/bin/sudo", "/usr/sbin/visudo", "/usr/bin/nsenter", "/usr/bin/unshare"):
        if not os.access(tool, os.X_OK):
            raise SshdSetupError(f"{tool} is missing: run scripts/setup.sh (Debian packages openssh-server, sudo, util-linux)")
    text = SSHD_CONFIG.read_text()
    if PACKAGED_SSHD_CONFIG.exists() and PACKAGED_SSHD_CONFIG.read_text() != text:
        raise SshdSetupError(f"{SSHD_CONFIG} differs from the packaged {PACKAGED_SSHD_CONFIG}: this test needs the stock one")
    if ACCEPT_ENV_LINE not in text.splitlines():
        raise SshdSetupError(f"{SSHD_CONFIG} has no line {ACCEPT_ENV_LINE!r}: not Debian's stock sshd_config")


def _free_id(used: set[int], start: int = 1000) -> int:
    n = start
    while n in used:
        n += 1
    return n


class StockSshdNode:
    """A node booted from `payload`: its own network and mount namespaces, a stock sshd, the login user.

    Use as a context manager; `close()` removes everything (processes, namespace, work directory)."""

    def __init__(self, payload: NodePayload, login: str) -> None:
        self.payload = payload
        self.user = payload.login_user(login)
        if payload.host_key is None:
            raise SshdSetupError(f"the payload installs no host key at {HOST_KEY_PATH}: there is nothing to pin")
        self.netns = f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.address = NODE_ADDRESS
        self.workdir = Path(tempfile.mkdtemp(prefix=self.netns + "."))
        self.proc: subprocess.Popen[bytes] | None = None
        self._netns_created = False
        self._installs: list[tuple[Path, str, int]] = []
        self.uid = self.gid = -1
        self.log_path = self.workdir / "sshd.log"

    # -- lifecycle

    def __enter__(self) -> StockSshdNode:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        check_stock_sshd()
        sweep_stale_namespaces()
        self._prepare_files()
        _run(["ip", "netns", "add", self.netns])
        self._netns_created = True
        lan = self.payload.node_config.get("lan", {})
        batch = [
            "link set lo up",
            # veth pairs with both ends inside the namespace (this kernel has no dummy driver): a NIC with nothing behind.
            "link add mgmt0 type veth peer name mgmt1",
            f"addr add {NODE_ADDRESS}/24 dev mgmt0",
            "link set mgmt1 up",
            "link set mgmt0 up",
            "link add lan0 type veth peer name lan1",
            "link set lan1 up",
            "link set lan0 up",
        ]
        if lan.get("address") and not lan.get("configure"):
            batch.append(f"addr add {lan['address']} dev lan0")  # the platform gives the LAN NIC its address
        _run(["ip", "-n", self.netns, "-batch", "-"], input="\n".join(batch) + "\n")
        routes = _run(["ip", "-n", self.netns, "-j", "route", "show", "default"]).stdout.strip()
        if routes not in ("", "[]"):
            raise SshdSetupError(f"namespace {self.netns} has a default route: {routes}")
        log = open(self.log_path, "wb")  # noqa: SIM115 - sshd writes to it for its whole life
        try:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    "-c",
                    self._node_script(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_until_listening()

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
            self.proc = None
        if self._netns_created:
            _kill_netns_processes(self.netns)  # sessions sshd forked into sessions of their own, if any are left
            _run(["ip", "netns", "del", self.netns], check=False)
            self._netns_created = False
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- building the node

    def _prepare_files(self) -> None:
        w = self.workdir
        os.chmod(w, 0o700)
        (w / "mnt").mkdir()
        etc = w / "etc"
        etc.mkdir()
        passwd = Path("/etc/passwd").read_text().splitlines()
        group = Path("/etc/group").read_text().splitlines()
        shadow = Path("/etc/shadow").read_text().splitlines()
        names = {line.split(":")[0] for line in passwd}
        if self.user.name in names:
            raise SshdSetupError(f"user {self.user.name} already exists on this machine: the harness adds it to the node only")
        uid = _free_id({int(line.split(":")[2]) for line in passwd} | {int(line.split(":")[2]) for line in group})
        self.uid = self.gid = uid
        home = f"/home/{self.user.name}"
        passwd.append(f"{self.user.name}:x:{uid}:{uid}:{self.user.gecos}:{home}:{self.user.shell}")
        # lock_passwd (cloud-init's default) or no password at all: useradd's "!" either way.
        shadow.append(f"{self.user.name}:!:{int(time.time() // 86400)}:0:99999:7:::")
        group.append(f"{self.user.name}:x:{uid}:")
        for g in self.user.groups:
            for i, line in enumerate(group):
                parts = line.split(":")
                if parts[0] == g:
                    parts[3] = ",".join(filter(None, [*parts[3].split(","), self.user.name]))
                    group[i] = ":".join(parts)
                    break
            else:
                gid = _free_id({int(line.split(":")[2]) for line in group})
                group.append(f"{g}:x:{gid}:{self.user.name}")
        shadow_gid = next((int(line.split(":")[2]) for line in group if line.split(":")[0] == "shadow"), 0)
        for name, lines, mode, gid in (("passwd", passwd, 0o644, 0), ("group", group, 0o644, 0), ("shadow", shadow, 0o640, shadow_gid)):
            path = etc / name
            path.write_text("\n".join(lines) + "\n")
            os.chown(path, 0, gid)
            os.chmod(path, mode)
        # /etc/sudoers.d: the stock README and the payload's drop-ins (+ cloud-init's own for a `sudo:` user rule).
        sudoers = w / "sudoers.d"
        sudoers.mkdir(mode=0o755)
        if Path(SUDOERS_DIR, "README").exists():
            shutil.copy2(Path(SUDOERS_DIR, "README"), sudoers / "README")
        dropins = [(os.path.basename(f.path), f.content, f.mode) for f in self.payload.sudoers_files]
        if self.user.sudo:
            rules = "".join(f"{self.user.name} {rule}\n" for rule in self.user.sudo)
            dropins.append(("90-cloud-init-users", ("# Created by cloud-init\n" + rules).encode(), 0o440))
        for name, content, mode in dropins:
            path = sudoers / name
            path.write_bytes(content)
            os.chown(path, 0, 0)
            os.chmod(path, mode)
            check = _run(["visudo", "-cf", str(path)], check=False)
            if check.returncode != 0:
                raise SshdSetupError(f"visudo -cf {name}: {check.stdout.strip()} {check.stderr.strip()}")
        # The payload's files as cloud-init writes them (sudoers drop-ins are in the bound directory above).
        files = w / "files"
        files.mkdir()
        for i, f in enumerate(self.payload.files):
            if os.path.dirname(f.path) == SUDOERS_DIR:
                continue
            src = files / str(i)
            src.write_bytes(f.content)
            self._installs.append((src, f.path, f.mode))
        (w / "authorized_keys").write_text("".join(k + "\n" for k in self.user.authorized_keys))
        (w / "cloud-init-status.json").write_text(
            '{"v1": {"datasource": "DataSourceNone", "stage": null, "init": {"errors": [], "start": 1.0, "finished": 2.0},'
            ' "modules-final": {"errors": [], "start": 3.0, "finished": 4.0}}}\n'
        )
        (w / "cloud-init-result.json").write_text('{"v1": {"datasource": "DataSourceNone", "errors": []}}\n')

    def _node_script(self) -> str:
        w = shlex.quote(str(self.workdir))
        home = f"/home/{self.user.name}"
        lines = [
            "set -eu",
            f"W={w}",
            # A tmpfs only this mount namespace sees: the overlays' upper layers (nothing reaches the host's disk).
            'mount -t tmpfs -o mode=0700 tmpfs "$W/mnt"',
            "for d in etc var; do",
            '  mkdir "$W/mnt/$d-up" "$W/mnt/$d-work"',
            '  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$W/mnt/$d-up,workdir=$W/mnt/$d-work" "/$d"',
            "done",
            'for f in passwd group shadow; do mount --bind "$W/etc/$f" "/etc/$f"; done',
            f'mount --bind "$W/sudoers.d" {SUDOERS_DIR}',
            # As a guest agent does at first boot (GCP's set_host_keys): fresh keys in /etc/ssh/ssh_host_*. The
            # payload's pinned key (written below with its other files) and sshd_config.d drop-in must still win.
            "rm -f /etc/ssh/ssh_host_*",
            "ssh-keygen -A >/dev/null",
            "mkdir -p /etc/multicloud-overlay /var/lib/multicloud-overlay",
            "for d in /etc/multicloud-overlay /var/lib/multicloud-overlay /usr/local/sbin /home /run; do mount -t tmpfs -o mode=0755 tmpfs $d; done",
            "mkdir -m 0755 /run/sshd /run/cloud-init",
            'cp "$W/cloud-init-status.json" /run/cloud-init/status.json',
            'cp "$W/cloud-init-result.json" /run/cloud-init/result.json',
        ]
        for src, dest, mode in self._installs:
            lines.append(f"install -D -m {mode:04o} -o root -g root {shlex.quote(str(src))} {shlex.quote(dest)}")
        lines += [
            f"mkdir -m 0750 {home} && mkdir -m 0700 {home}/.ssh",
            f'install -m 0600 "$W/authorized_keys" {home}/.ssh/authorized_keys',
            f"chown -R {self.uid}:{self.gid} {home}",
            f"exec {SSHD} -D -e",
        ]
        return "\n".join(lines) + "\n"

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise SshdSetupError(f"sshd exited ({self.proc.returncode}) while starting:\n{self.log()}")
            try:
                connect_in_netns(self.netns, self.address, 22, 1.0).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SshdSetupError(f"sshd did not listen on {self.address}:22 within {START_TIMEOUT} s:\n{self.log()}") from None
                time.sleep(0.05)

    # -- using it

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the node is not running"
        return self.proc.pid

    def as_root(
        self, argv: Sequence[str], input: str | None = None, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run argv as root inside the node (its mount and network namespaces): what a console would do."""
        return _run(["nsenter", "--target", str(self.pid), "--mount", "--net", "--", *argv], input=input, timeout=timeout, check=check)

    def effective_accept_env(self) -> list[str]:
        """The AcceptEnv patterns of the running configuration (`sshd -T`, sshd_config.d included)."""
        out = self.as_root([SSHD, "-T", "-C", f"user={self.user.name},host=client,addr=192.0.2.2"], check=True).stdout
        return [word for line in out.splitlines() if line.startswith("acceptenv ") for word in line.split()[1:]]

    def ssh(
        self,
        conn: SshConnection,
        command: str,
        stdin: str | None = None,
        environment: Mapping[str, str] | None = None,
        optional_environment: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> CommandResult:
        """Run one command over SSH to this node (the connection's host is replaced by the node's address)."""
        transport = dial(self.netns, self.address, conn)
        try:
            return exec_command(transport, command, stdin, environment, optional_environment, timeout)
        finally:
            transport.close()

    def run_command(
        self, command: RemoteCommand, operation: str = "create", previous: CommandResult | None = None, timeout: float = 120.0
    ) -> CommandResult:
        """Run a Command resource's create or update exactly as pulumi-command would, with all its inputs."""
        optional: dict[str, str] = {}
        if command.add_previous_output_in_env and previous is not None:
            if previous.stdout:
                optional[PREVIOUS_OUTPUT_ENV[0]] = previous.stdout
            if previous.stderr:
                optional[PREVIOUS_OUTPUT_ENV[1]] = previous.stderr
        return self.ssh(command.connection, command.script(operation), command.stdin, command.environment, optional, timeout)
