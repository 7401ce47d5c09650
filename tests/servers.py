"""Servers for the tests and the benchmark: a throwaway CA, the real
docker-registry, a fault-injecting HTTPS proxy in front of it, and a real
Docker Engine (dockerd) of the tests' own."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclasses.dataclass
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(directory: Path) -> Tls:
    """A CA and a certificate for 127.0.0.1 and localhost, as files."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = Tls(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca_file))
    cert.private_key_pem.write_to_path(str(paths.key_file))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(paths.cert_file), append=True)
    return paths


@dataclasses.dataclass
class RegistryServer:
    """A running docker-registry on 127.0.0.1."""

    host: str
    process: subprocess.Popen
    log: Path
    login: tuple[str, str] | None = None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()

    def requests_logged(self) -> list[tuple[str, str, str]]:
        """(method, path, status) of every request, from the access log."""
        pattern = re.compile(
            r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[0-9.]+" (\d+)'
        )
        return pattern.findall(self.log.read_text(errors="replace"))


def start_registry(
    directory: Path,
    tls: Tls | None,
    htpasswd: Path | None = None,
    accesslog: bool = False,
    auth: dict | None = None,
    readonly: bool = False,
) -> RegistryServer:
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": not accesslog}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if readonly:  # every push is refused (405)
        config["storage"]["maintenance"] = {"readonly": {"enabled": True}}
    if tls:
        config["http"]["tls"] = {
            "certificate": str(tls.cert_file),
            "key": str(tls.key_file),
        }
    if htpasswd:
        config["auth"] = {"htpasswd": {"realm": "test", "path": str(htpasswd)}}
    if auth:
        config["auth"] = auth
    config_file = directory / "config.yml"
    config_file.write_text(json.dumps(config))  # JSON is YAML
    log_path = directory / "registry.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config_file)], stdout=log, stderr=log
    )
    host = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            scheme = "https" if tls else "http"
            requests.get(f"{scheme}://{host}/v2/", timeout=1)
            return RegistryServer(host, process, log_path)
        except requests.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("docker-registry did not start: " + str(directory))


def serve_tls(
    handler: type[http.server.BaseHTTPRequestHandler], tls: Tls
) -> http.server.ThreadingHTTPServer:
    """An HTTPS server on a free port of 127.0.0.1, serving in a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# ----------------------------------------------------------------------------
# The fault proxy
# ----------------------------------------------------------------------------

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclasses.dataclass
class Fault:
    """What to do, `times` times, to requests matching method and path.

    action: "status" (answer status/headers/body), "reset" (close the
    connection with a RST), "stall" (wait `delay`, then answer normally),
    "truncate" (send half of the real body, then close), "body" (the real
    answer with `rewrite(body)` as the body, headers unchanged)."""

    path: str  # a regular expression, searched in the path
    action: str
    method: str | None = None
    times: int = 1
    status: int = 503
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    rewrite: Callable[[bytes], bytes] | None = None


class FaultProxy:
    """An HTTPS reverse proxy to a registry that misbehaves on request."""

    def __init__(self, upstream: str, tls: Tls) -> None:
        self.upstream = upstream
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str]] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.session = requests.Session()
        self.session.verify = str(tls.ca_file)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with proxy.lock:
                    proxy.connections += 1

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy.handle(self)

            do_HEAD = do_GET
            do_PUT = do_GET
            do_POST = do_GET
            do_PATCH = do_GET

        self.server = serve_tls(Handler, tls)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"

    def add(self, path: str, action: str, **kwargs) -> Fault:
        fault = Fault(path, action, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            self.seen.append((method, path))
            for fault in self.faults:
                if (
                    fault.times > 0
                    and fault.method in (None, method)
                    and re.search(fault.path, path)
                ):
                    fault.times -= 1
                    return fault
        return None

    def handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        fault = self.take_fault(method, path)
        if fault and fault.action == "reset":
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.close_connection = True
            handler.connection.close()
            return
        if fault and fault.action == "status":
            self.answer(handler, fault.status, fault.headers, fault.body, method)
            return
        if fault and fault.action == "stall":
            time.sleep(fault.delay)
        headers = {
            key: value
            for key, value in handler.headers.items()
            if key.lower() not in HOP_BY_HOP and key.lower() != "host"
        }
        upstream = self.session.request(
            method,
            f"https://{self.upstream}{path}",
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=30,
        )
        content = upstream.content
        answer_headers = {
            key: value
            for key, value in upstream.headers.items()
            if key.lower() not in HOP_BY_HOP
        }
        if fault and fault.action == "body" and fault.rewrite:
            content = fault.rewrite(content)
            for key, value in fault.headers.items():  # "" removes a header
                answer_headers = {
                    k: v for k, v in answer_headers.items() if k.lower() != key.lower()
                }
                if value:
                    answer_headers[key] = value
        if fault and fault.action == "truncate":
            handler.send_response(upstream.status_code)
            for key, value in answer_headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(content)))
            handler.end_headers()
            handler.wfile.write(content[: len(content) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        self.answer(handler, upstream.status_code, answer_headers, content, method)

    @staticmethod
    def answer(handler, status: int, headers: dict, body: bytes, method: str) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(body)


# ----------------------------------------------------------------------------
# The token server
# ----------------------------------------------------------------------------

SERVICE = "test-registry"
USER_OF_TOKENS = "identity-user"
ISSUER = "test-issuer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Bearer token endpoint: ES256 JWTs with the signing certificate in
    x5c, anchored in a CA the registry trusts (rootcertbundle). With
    `login` set, only those credentials get a token; otherwise anyone."""

    def __init__(
        self, directory: Path, tls: Tls, login: tuple[str, str] | None
    ) -> None:
        self.login = login
        self.hidden: set[str] = set()  # repositories a token never grants
        self.identity_token = "identity-" + b64url(os.urandom(9))
        self.issued: list[str] = []  # the scope of every token given out
        self.refused = 0
        ca = trustme.CA()
        signer = ca.issue_cert("token-signer")
        self.rootcertbundle = directory / "token-ca.pem"
        ca.cert_pem.write_to_path(str(self.rootcertbundle))
        self.key = serialization.load_pem_private_key(
            signer.private_key_pem.bytes(), password=None
        )
        self.chain = [
            base64.b64encode(
                x509.load_pem_x509_certificate(blob.bytes()).public_bytes(
                    serialization.Encoding.DER
                )
            ).decode()
            for blob in signer.cert_chain_pems[:1]
        ]
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Without it each token costs ~40 ms (Nagle and delayed ACK).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.answer(self)

            def do_POST(self) -> None:
                server.refresh(self)

        self.server = serve_tls(Handler, tls)
        self.realm = f"https://127.0.0.1:{self.server.server_address[1]}/token"

    def registry_auth(self) -> dict:
        """The `auth` section of the registry's configuration."""
        return {
            "token": {
                "realm": self.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.rootcertbundle),
            }
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        """A token for Basic credentials (or anyone, without `login`)."""
        query = urllib.parse.parse_qs(urllib.parse.urlparse(handler.path).query)
        user = self.user(handler.headers.get("Authorization", ""))
        if self.login and user != self.login[0]:
            self.refuse(handler)
            return
        scopes = query.get("scope", [])
        self.issued.extend(scopes)
        token = self.token(user or "", scopes)
        send_json(handler, 200, {"token": token, "access_token": token})

    def refresh(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        """The OAuth2 refresh-token grant, for identity tokens."""
        length = int(handler.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(handler.rfile.read(length).decode())
        if form.get("refresh_token") != [self.identity_token]:
            self.refuse(handler)
            return
        self.issued.extend(form.get("scope", []))
        token = self.token(USER_OF_TOKENS, form.get("scope", []))
        send_json(handler, 200, {"access_token": token})

    def refuse(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        self.refused += 1
        send_json(handler, 401, {"errors": [{"code": "UNAUTHORIZED"}]})

    def user(self, authorization: str) -> str | None:
        """The user of valid Basic credentials, else None."""
        if not authorization.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        if self.login and (user, password) != self.login:
            return None
        return user

    def token(self, subject: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [] if name in self.hidden else actions.split(",")
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT", "x5c": self.chain}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": b64url(os.urandom(12)),
            "access": access,
        }
        signing_input = (
            b64url(json.dumps(header).encode())
            + "."
            + b64url(json.dumps(claims).encode())
        )
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + b64url(signature)


def send_json(handler: http.server.BaseHTTPRequestHandler, status: int, data) -> None:
    body = json.dumps(data).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


# ----------------------------------------------------------------------------
# A real Docker Engine
# ----------------------------------------------------------------------------

# Debian's docker.io client: 20.10 builds with BuildKit without buildx; a
# newer docker CLI earlier on PATH (say in /usr/local/bin) does not.
DOCKER_CLIENT = Path("/usr/bin/docker")
BUSYBOX = Path("/bin/busybox")  # static: the test images' only program


@dataclasses.dataclass
class DockerEngine:
    """A dockerd of the tests' own: its socket and its process."""

    host: str  # unix://SOCKET, for DOCKER_HOST
    process: subprocess.Popen
    log: Path

    def docker(self, *args: str, input: bytes | None = None) -> str:
        """Run the docker client against this daemon; its stdout."""
        return self.run(*args, input=input).decode(errors="replace")

    def run(self, *args: str, input: bytes | None = None) -> bytes:
        """Run the docker client against this daemon; its raw stdout."""
        result = subprocess.run(
            [str(DOCKER_CLIENT), *args],
            env={**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"},
            input=input,
            capture_output=True,
            check=False,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)}: " + result.stderr.decode(errors="replace")
            )
        return result.stdout

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def engine_unavailable() -> str | None:
    """Why a dockerd cannot be started here (None: it can)."""
    if os.geteuid() != 0:
        return "the real-engine tests need root to start dockerd"
    for program in ("dockerd", "containerd", "runc"):
        if not shutil.which(program):
            return f"{program} is not installed (apt-get install docker.io)"
    if not DOCKER_CLIENT.exists():
        return f"{DOCKER_CLIENT} is not installed (apt-get install docker.io)"
    if not BUSYBOX.exists():
        return f"{BUSYBOX} is not installed (apt-get install busybox-static)"
    return None


def start_dockerd(directory: Path) -> DockerEngine:
    """dockerd with its own data root, exec root and socket; vfs storage,
    no iptables and no bridge (builds run with --network none)."""
    # unix socket paths are short: the socket lives in a short temp dir
    run = Path(tempfile.mkdtemp(prefix="dbe", dir="/tmp"))
    sock = run / "d.sock"
    log_path = directory / "dockerd.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            str(directory / "data"),
            "--exec-root",
            str(run / "exec"),
            "--pidfile",
            str(run / "pid"),
            "-H",
            f"unix://{sock}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
        ],
        stdout=log,
        stderr=log,
    )
    engine = DockerEngine(f"unix://{sock}", process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            engine.docker("version", "--format", "{{.Server.Version}}")
            return engine
        except RuntimeError:
            time.sleep(0.2)
    engine.stop()
    tail = log_path.read_text(errors="replace").splitlines()[-3:]
    raise RuntimeError("dockerd did not start: " + " / ".join(tail))
