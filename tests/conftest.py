"""Shared fixtures: the real registry (TLS, optionally htpasswd), the git
world the tool runs in, and the docker test double; and what the
end-to-end tests expect of a run (success, failure, rebuild headers)."""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib.machinery
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import bcrypt
import imagetools
import pytest
import requests
from servers import (
    BUSYBOX,
    DockerEngine,
    FaultProxy,
    RegistryServer,
    Tls,
    TokenServer,
    engine_unavailable,
    make_tls,
    start_dockerd,
    start_registry,
)

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "docker_build"
DOUBLE = Path(__file__).resolve().parent / "docker_double"

# Controlled times: commits happen at T_COMMIT, images are made at T_IMAGE.
T_COMMIT = 1767225600  # 2026-01-01T00:00:00Z
T_IMAGE = 1769904000  # 2026-02-01T00:00:00Z
T_LATER = 1772323200  # 2026-03-01T00:00:00Z

USER = "builder"
PASSWORD = "Canary-pw-7f3a9c"  # must never show up anywhere

# The layer of base:1 in World.up_to_date, and in many tests' bases.
BASE_LAYER = "sha256:" + "1" * 64
# A base of two layers (the linux/amd64 image of multi_base), and the
# linux/arm64 image of multi_base.
BASE_LAYERS = [BASE_LAYER, "sha256:" + "2" * 64]
ARM_LAYERS = ["sha256:" + "3" * 64, "sha256:" + "4" * 64]

# The reasons docker_build gives for a rebuild.
REASON_FORCED = "Rebuild triggered by command line"
REASON_MISSING = "Image missing in repository"
REASON_BASE = "Base image has changed"
REASON_GIT = "Git change more recent than image"
REASON_FILES = "Files in docker context more recent than image"


@functools.cache
def load_tool() -> ModuleType:
    """Import the executable (it has no .py suffix), once for all tests."""
    loader = importlib.machinery.SourceFileLoader("docker_build", str(TOOL))
    spec = importlib.util.spec_from_loader("docker_build", loader)
    assert spec
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while classes are made
    sys.modules["docker_build"] = module
    loader.exec_module(module)
    return module


def utc(when: float) -> str:
    """A time as docker_build shows it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def fatal_message(func, *args, code: int = 1) -> str:
    """Call func, expect the tool's Fatal with the exit code; return its
    message."""
    with pytest.raises(load_tool().Fatal) as info:
        func(*args)
    assert info.value.code == code
    return str(info.value.message)


# ----------------------------------------------------------------------------
# HTTP answers without a server
# ----------------------------------------------------------------------------


def response(
    status: int, headers=None, body: bytes = b"", url: str = "https://reg.example/v2/"
) -> requests.Response:
    """A requests.Response as a server would send it."""
    made = requests.Response()
    made.status_code = status
    made.headers = requests.structures.CaseInsensitiveDict(headers or {})
    made._content = body
    made.encoding = "utf-8"
    made.url = url
    made.reason = {200: "OK", 401: "Unauthorized"}.get(status, "Error")
    return made


class FakeSession:
    """A RegistryHost's session (set `host.session`): answers requests from
    `routes`: (method, url) -> a list of responses, one per request (the
    last one repeats), or a function of the request's Authorization header;
    requests in `calls` as (method, url, Authorization, timeout). dxf asks
    for tokens with requests.get: monkeypatch it with this session's get."""

    def __init__(self, routes) -> None:
        self.routes = routes
        self.calls: list[tuple] = []

    def request(self, method, url, headers=None, timeout=None, auth=None, **kwargs):
        authorization = (headers or {}).get("Authorization")
        if auth is not None:  # requests turns a (user, password) into this
            login = base64.b64encode(":".join(auth).encode()).decode()
            authorization = "Basic " + login
        self.calls.append((method, url, authorization, timeout))
        route = self.routes[method, url]
        if callable(route):
            return route(authorization)
        return route.pop(0) if len(route) > 1 else route[0]

    def get(self, url, **kwargs):
        return self.request("get", url, **kwargs)

    def head(self, url, **kwargs):
        return self.request("head", url, **kwargs)

    def post(self, url, **kwargs):
        return self.request("post", url, **kwargs)

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------
# Records for in-process tests of planning and building
# ----------------------------------------------------------------------------

AMD = ("linux/amd64",)
GHCR = ["ghcr.io/o"]
REPOS = ["docker.io/user", "ghcr.io/o"]


def make_image(
    name: str,
    base: str = "NONE",
    directory: str = "d",
    options: tuple[str, ...] = (),
    platforms: tuple[str, ...] = AMD,
):
    """An image record as a configuration line would give it."""
    db = load_tool()
    return db.Image(
        name,
        db.image_add_tag(name),
        directory,
        db.image_add_tag(base),
        options,
        platforms,
    )


# ----------------------------------------------------------------------------
# Processes
# ----------------------------------------------------------------------------


def process_running(pid: int) -> bool:
    """Running: a zombie (state Z) has ended, as a gone process has."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ended_within(pid: int, seconds: float) -> bool:
    """Whether the process ends within `seconds`."""
    deadline = time.monotonic() + seconds
    while process_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ----------------------------------------------------------------------------
# What a run prints
# ----------------------------------------------------------------------------


def succeeded(result, stdout: str = "") -> None:
    """The run succeeded, printed `stdout` and nothing on stderr."""
    assert (result.returncode, result.stderr, result.stdout) == (0, "", stdout)


def failed(result, stderr: str) -> None:
    """The run failed with status 1, printed `stderr` and nothing on stdout."""
    assert (result.returncode, result.stdout, result.stderr) == (1, "", stderr)


def announced(name: str, reason: str) -> str:
    """The header of an image that is (or, in a dry run, would be) rebuilt."""
    return f"*** {name}\nReason: {reason}\n\n"


def rebuilt(name: str, reason: str) -> str:
    """The output for an image rebuilt and pushed by the docker double."""
    tag = name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"
    return announced(name, reason) + f"double: pushed {tag}\n\n"


# ----------------------------------------------------------------------------
# Scenarios several stages share
# ----------------------------------------------------------------------------


def two_images(world: World) -> str:
    """one (on base:1) and two (on scratch), both up to date and committed;
    returns base:1's reference."""
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("one", base)
    world.dockerfile("two", "scratch")
    world.config("one\tone", "two\ttwo")
    world.commit()
    for name in ("one", "two"):
        world.registry.push(
            world.ref(name), T_IMAGE, [*BASE_LAYERS, imagetools.new_layer(name)]
        )
    return base


def multi_base(world: World) -> str:
    """base:1 for linux/amd64 (BASE_LAYERS) and linux/arm64 (ARM_LAYERS);
    returns its reference."""
    base = world.ref("base:1")
    world.registry.push(
        base, T_COMMIT, {"linux/amd64": BASE_LAYERS, "linux/arm64": ARM_LAYERS}
    )
    return base


def chain(world: World) -> None:
    """tool (listed first) on middle on root, root on a registry base;
    other on that base too; everything up to date, committed at T_COMMIT."""
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, [BASE_LAYER])
    world.dockerfile("tool", "$DOCKER_REPOSITORY/middle")
    world.dockerfile("middle", "${DOCKER_REPOSITORY}/root")
    world.dockerfile("root", base)
    world.dockerfile("other", base)
    world.config("tool\ttool", "middle\tmiddle", "other\tother", "root\troot")
    world.commit()
    root = [BASE_LAYER, imagetools.new_layer("root")]
    middle = [*root, imagetools.new_layer("middle")]
    world.registry.push(world.ref("root"), T_IMAGE, root)
    world.registry.push(world.ref("middle"), T_IMAGE, middle)
    world.registry.push(
        world.ref("tool"), T_IMAGE, [*middle, imagetools.new_layer("tool")]
    )
    world.registry.push(
        world.ref("other"), T_IMAGE, [BASE_LAYER, imagetools.new_layer("other")]
    )


def touch_root(world: World) -> None:
    """A commit after the images were made changes root of the chain."""
    world.write("root/new", "x\n")
    world.commit(when=T_LATER)


def expected_chain(world: World) -> str:
    """What a run prints after touch_root: root, then what is built on it."""
    return (
        announced(world.ref("root"), REASON_GIT)
        + announced(
            world.ref("middle"),
            f"Base image will be rebuilt: {world.ref('root:latest')}",
        )
        + announced(
            world.ref("tool"),
            f"Base image will be rebuilt: {world.ref('middle:latest')}",
        )
    )


def manual_schema() -> dict:
    """The JSON schema of the --output document, from docs/usage.md."""
    text = (ROOT / "docs" / "usage.md").read_text()
    after = text.split("<!-- plan-schema -->", 1)[1]
    body = after.split("```json\n", 1)[1].split("```", 1)[0]
    return json.loads(body)


def check_schema(document: dict) -> None:
    """The document is valid by the manual's schema (itself valid)."""
    import jsonschema

    schema = manual_schema()
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    validator.validate(document)


# ----------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tls]:
    """A throwaway CA, trusted by requests (and dxf) in this process and in
    every process started from it."""
    paths = make_tls(tmp_path_factory.mktemp("tls"))
    saved = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(paths.ca_file)
    yield paths
    if saved is None:
        del os.environ["REQUESTS_CA_BUNDLE"]
    else:
        os.environ["REQUESTS_CA_BUNDLE"] = saved


class Registry(RegistryServer):
    """The registry, with helpers to make and read images in it."""

    def push(self, reference: str, created: float, layers, **kwargs) -> None:
        imagetools.push_image(
            reference, imagetools.rfc3339(created), layers, login=self.login, **kwargs
        )

    def config(self, reference: str, platform: str = "linux/amd64") -> dict | None:
        return imagetools.image_config(reference, platform, login=self.login)

    def digest(self, reference: str, platform: str = "linux/amd64") -> str:
        return imagetools.manifest_digest(reference, platform, login=self.login)


def start(directory: Path, tls: Tls, **kwargs) -> Registry:
    server = start_registry(directory, tls, **kwargs)
    return Registry(server.host, server.process, server.log, server.login)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, tls: Tls) -> Iterator[Registry]:
    """An open registry over TLS."""
    server = start(tmp_path_factory.mktemp("registry"), tls, accesslog=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_registry(
    tmp_path_factory: pytest.TempPathFactory, tls: Tls
) -> Iterator[Registry]:
    """A registry with htpasswd basic auth for USER / PASSWORD."""
    directory = tmp_path_factory.mktemp("auth_registry")
    htpasswd = directory / "htpasswd"
    digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{USER}:{digest}\n")
    server = start(directory, tls, htpasswd=htpasswd)
    server.login = (USER, PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, tls: Tls
) -> Iterator[Registry]:
    """A registry with Bearer tokens from the tests' token server, which
    gives tokens for USER / PASSWORD only."""
    directory = tmp_path_factory.mktemp("token_registry")
    tokens = TokenServer(directory, tls, (USER, PASSWORD))
    server = start(directory, tls, auth=tokens.registry_auth(), accesslog=True)
    server.login = (USER, PASSWORD)
    server.tokens = tokens
    yield server
    server.stop()
    tokens.close()


# ----------------------------------------------------------------------------
# The git world and the docker double
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class World:
    """A project directory with a docker_images file, run like a user."""

    root: Path
    bin: Path
    log: Path
    registry: Registry
    namespace: str  # a repository of its own on the registry
    env: dict[str, str]
    options: tuple[str, ...] = ()  # given to every run

    def write(self, name: str, text: str, mtime: float | None = None) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return path

    def config(self, *lines: str, name: str = "docker_images") -> Path:
        return self.write(name, "".join(line + "\n" for line in lines))

    def dockerfile(self, directory: str, base: str, mtime: float | None = None) -> None:
        self.write(f"{directory}/Dockerfile", f"FROM {base}\nCOPY . /\n", mtime)

    def ref(self, name: str) -> str:
        """Full name of an image in this world's namespace."""
        return f"{self.namespace}/{name}"

    def path(self, name: str) -> str:
        """An image's repository on the registry: its name without the host."""
        return self.namespace.split("/", 1)[1] + "/" + name

    def git(self, *args: str, when: float = T_COMMIT) -> str:
        stamp = f"@{int(when)} +0000"
        env = {
            **os.environ,
            "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_DATE": stamp,
            "GIT_AUTHOR_NAME": "Test",
            "GIT_AUTHOR_EMAIL": "test@example.org",
            "GIT_COMMITTER_NAME": "Test",
            "GIT_COMMITTER_EMAIL": "test@example.org",
        }
        result = subprocess.run(
            ["git", "-C", str(self.root), *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def commit(self, when: float = T_COMMIT) -> None:
        self.git("add", "-A", when=when)
        self.git("commit", "-q", "--allow-empty", "-m", "change", when=when)

    def run(self, *args: str, env: dict[str, str] | None = None, **kwargs):
        return subprocess.run(
            [str(TOOL), *self.options, *args],
            cwd=kwargs.pop("cwd", self.root),
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )

    def up_to_date(self, *names: str, base_layers: list[str] | None = None) -> str:
        """Images (`app` by default) built on base:1, all up to date and
        committed; returns the base's reference."""
        base = self.ref("base:1")
        layers = [BASE_LAYER] if base_layers is None else base_layers
        self.registry.push(base, T_COMMIT, layers)
        for name in names or ("app",):
            self.dockerfile(name, base)
        self.config(*(f"{name}\t{name}" for name in names or ("app",)))
        self.commit()
        for name in names or ("app",):
            self.registry.push(
                self.ref(name), T_IMAGE, [*layers, imagetools.new_layer(name)]
            )
        return base

    def calls(self) -> list[dict]:
        """What the docker double was asked to do, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def built(self) -> list[str]:
        return [call["argv"][-2] for call in self.calls()]


def make_world(
    tmp_path: Path, registry: Registry, request, use_git: bool, host: str | None = None
) -> World:
    root = tmp_path / "project"
    root.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(DOUBLE)
    log = tmp_path / "docker.log"
    namespace = (
        (host or registry.host)
        + "/"
        + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DOCKER_", "GIT_"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        DOCKER_DOUBLE_LOG=str(log),
        DOCKER_REPOSITORY=namespace,
        LC_ALL="C",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    options = getattr(request, "param", ())
    world = World(root, bin_dir, log, registry, namespace, env, options)
    if use_git:
        world.git("init", "-q")
    return world


# Every end-to-end scenario runs once, with the default concurrency. The
# rule for the --jobs=1 variant: a test runs a second time with one look-up
# at a time (mark it `also_sequential`; the expected outcome is the same)
# only where concurrent look-ups could change what it observes:
# - several look-ups fail: which error is reported, and that it is one line;
# - look-ups share something it counts: requests, connections, tokens,
#   authentication challenges, questions to a credential helper, warnings;
# - faults that several look-ups meet, so that their retries overlap;
# - output that several look-ups decide together: its order;
# - the progress line, which counts finished look-ups.
WORLDS = (
    "world",
    "plain_world",
    "auth_world",
    "token_world",
    "faulty_world",
    "http_world",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "engine: runs against a real Docker Engine (dockerd) and registry",
    )
    config.addinivalue_line(
        "markers",
        "also_sequential: run the test's world with --jobs=1 too "
        "(where concurrent look-ups could change what the test sees)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("also_sequential") is None:
        return
    used = [name for name in WORLDS if name in metafunc.fixturenames]
    if len(used) != 1:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: also_sequential needs one world"
        )
    (name,) = used
    metafunc.parametrize(
        name, [("--jobs=1",), ()], ids=["jobs1", "default"], indirect=True
    )


@pytest.fixture
def world(tmp_path: Path, registry: Registry, request) -> World:
    """A git repository with its own namespace on the open registry."""
    return make_world(tmp_path, registry, request, use_git=True)


@pytest.fixture
def plain_world(tmp_path: Path, registry: Registry, request) -> World:
    """A project directory outside any git repository."""
    return make_world(tmp_path, registry, request, use_git=False)


def world_with_login(tmp_path: Path, registry: Registry, request) -> World:
    """A git world on a registry with logins: the double logs in by a file,
    the tool by DOCKER_LOGIN (set by each test)."""
    world = make_world(tmp_path, registry, request, use_git=True)
    login_file = tmp_path / "double-login"
    login_file.write_text(f"{USER} {PASSWORD}\n")
    world.env["DOCKER_DOUBLE_LOGIN"] = str(login_file)
    return world


@pytest.fixture
def auth_world(tmp_path: Path, auth_registry: Registry, request) -> World:
    """A git world on the basic-auth registry."""
    return world_with_login(tmp_path, auth_registry, request)


@pytest.fixture
def token_world(tmp_path: Path, token_registry: Registry, request) -> World:
    """A git world on the Bearer-token registry."""
    return world_with_login(tmp_path, token_registry, request)


@pytest.fixture
def faulty_world(
    tmp_path: Path, registry: Registry, tls: Tls, request
) -> Iterator[tuple[World, FaultProxy]]:
    """A git world whose registry is reached through the fault proxy."""
    proxy = FaultProxy(registry.host, tls)
    world = make_world(tmp_path, registry, request, use_git=True, host=proxy.host)
    yield world, proxy
    proxy.close()


@pytest.fixture(scope="session")
def http_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry without TLS, as many run on localhost:5000."""
    server = start(tmp_path_factory.mktemp("http_registry"), None)
    yield server
    server.stop()


@pytest.fixture
def http_world(
    tmp_path: Path, http_registry: Registry, request, monkeypatch
) -> Iterator:
    """Makes git worlds on the plain-HTTP registry, named by `host` (for
    example localhost:PORT); the tests and the double push over HTTP."""
    port = http_registry.host.rpartition(":")[2]

    def make(name: str) -> World:
        host = f"{name}:{port}"
        plain = f"{http_registry.host} {host}"
        monkeypatch.setenv("TEST_PLAIN_HTTP_HOSTS", plain)
        world = make_world(tmp_path, http_registry, request, use_git=True, host=host)
        world.env["TEST_PLAIN_HTTP_HOSTS"] = plain
        return world

    return make


@pytest.fixture
def world_factory(tmp_path: Path, tls: Tls, request) -> Iterator:
    """Makes a git world on a given registry, reached through a fault
    proxy, with the double logged in when the registry wants a login."""
    proxies: list[FaultProxy] = []

    def make(registry: Registry) -> tuple[World, FaultProxy]:
        proxy = FaultProxy(registry.host, tls)
        proxies.append(proxy)
        world = make_world(tmp_path, registry, request, use_git=True, host=proxy.host)
        login_file = tmp_path / "double-login"
        login_file.write_text(f"{USER} {PASSWORD}\n")
        world.env["DOCKER_DOUBLE_LOGIN"] = str(login_file)
        return world, proxy

    yield make
    for proxy in proxies:
        proxy.close()


# ----------------------------------------------------------------------------
# The real Docker Engine (tests marked `engine`)
# ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    """A real dockerd, shared by the engine tier. Where it cannot start the
    tier is skipped with the reason; on CI (CI=true) it fails instead."""
    why = engine_unavailable()
    server = None
    if why is None:
        try:
            server = start_dockerd(tmp_path_factory.mktemp("dockerd"))
        except RuntimeError as err:
            why = str(err)
    if server is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the real-engine tier must run on CI: {why}")
        pytest.skip(why)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def engine_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain-HTTP registry on loopback: dockerd's BuildKit speaks plain
    HTTP to registries on 127.0.0.0/8."""
    server = start(tmp_path_factory.mktemp("engine_registry"), None)
    plain_http(server.host)
    yield server
    server.stop()


def plain_http(host: str) -> None:
    """The tests' own registry clients reach the host over plain HTTP."""
    hosts = os.environ.get("TEST_PLAIN_HTTP_HOSTS", "")
    os.environ["TEST_PLAIN_HTTP_HOSTS"] = f"{hosts} {host}".strip()


@pytest.fixture(scope="session")
def busybox(engine: DockerEngine, engine_registry: Registry) -> str:
    """A small base image in the registry: busybox and a few of its
    commands, made from the static binary (no network to pull one)."""
    reference = f"{engine_registry.host}/busybox:latest"
    engine.docker("import", "-", reference, input=rootfs_tar({}))
    engine.docker("push", reference)
    return reference


def rootfs_tar(files: dict[str, bytes]) -> bytes:
    """A root file system as a tar: /bin/busybox, its commands, `files`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(BUSYBOX, "bin/busybox")
        for command in ("sh", "cat", "echo", "ls", "true", "false"):
            link = tarfile.TarInfo(f"bin/{command}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            archive.addfile(link)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="session", autouse=True)
def _tools_present() -> None:
    for tool in ("docker-registry", "git"):
        if not shutil.which(tool):
            pytest.exit(f"{tool} is not installed: run tests/run", returncode=3)


# ----------------------------------------------------------------------------
# Runs in the background
# ----------------------------------------------------------------------------


def start_tool(world: World, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The tool run in the world without waiting for it."""
    return subprocess.Popen(
        [sys.executable, str(TOOL), *world.options, *args],
        cwd=world.root,
        env={**world.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_build(world: World, count: int = 1) -> list[int]:
    """The pids of the double once `count` builds have started."""
    started = Path(str(world.log) + ".started")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if started.exists() and len(started.read_text().splitlines()) >= count:
            return [int(line.split()[0]) for line in started.read_text().splitlines()]
        time.sleep(0.05)
    raise AssertionError("no build started")


# ----------------------------------------------------------------------------
# The tool in-process: a docker double for its builds, a project directory
# ----------------------------------------------------------------------------

FAKE_DOCKER = """\
#!/bin/sh
# A docker double: logs the build in $STATE, prints a line on stdout and
# one on stderr, and exits with the tag's version ("latest" counts as 0).
# NEED_<name>: a file of $STATE that must exist when the build starts.
# WAIT_<name>: a file of $STATE to wait for, at most $STEPS * 0.05 s
# ($STEPS_<name> for that build alone).
while [ $# -gt 0 ]; do
    if [ "$1" = --tag ]; then tag=$2; fi
    shift
done
name=${tag##*/}
name=${name%%:*}
code=${tag##*:}
if [ "$code" = latest ]; then code=0; fi
echo "$name" >>"$STATE/log"
touch "$STATE/$name.started"
eval "need=\\${NEED_$name:-}"
if [ -n "$need" ] && [ ! -e "$STATE/$need" ]; then
    echo "started without $need"
    exit 8
fi
eval "wait=\\${WAIT_$name:-}"
if [ -n "$wait" ]; then
    eval "limit=\\${STEPS_$name:-${STEPS:-200}}"
    steps=0
    while [ ! -e "$STATE/$wait" ]; do
        steps=$((steps + 1))
        if [ "$steps" -gt "$limit" ]; then
            echo "no $wait"
            exit 9
        fi
        sleep 0.05
    done
fi
echo "building $tag"
echo "warning from $name" >&2
if [ "$code" = 0 ]; then touch "$STATE/$name.done"; fi
exit "$code"
"""


@dataclasses.dataclass
class DockerDouble:
    """FAKE_DOCKER installed: `environ` finds it first on PATH."""

    environ: dict[str, str]
    state: Path

    def started(self) -> list[str]:
        """The names of the builds, in the order they started."""
        log = self.state / "log"
        return log.read_text().split() if log.exists() else []


@pytest.fixture
def docker(tmp_path: Path) -> DockerDouble:
    """The environment for in-process builds: FAKE_DOCKER first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER)
    script.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    environ = {"PATH": str(bin_dir) + os.pathsep + os.environ["PATH"]}
    return DockerDouble({**environ, "STATE": str(state)}, state)


def block(shown: str, reason: str = REASON_FORCED, output: bool = True) -> str:
    """What a parallel build prints: its header, then FAKE_DOCKER's two
    lines, prefixed."""
    text = f"*** {shown}\nReason: {reason}\n\n"
    if output:
        tag = shown if ":" in shown.rpartition("/")[2] else shown + ":latest"
        name = tag.rpartition("/")[2].partition(":")[0]
        text += f"[{shown}] building {tag}\n[{shown}] warning from {name}\n"
    return text


def summary(built: str = "-", failed: str = "-", skipped: str = "-") -> str:
    """The closing lines of a parallel run."""
    return f"\nBuilt: {built}\nFailed: {failed}\nSkipped: {skipped}\n"


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """tmp_path as the tool's working directory, DOCKER_REPOSITORY=ghcr.io/o,
    no logins and no registry look-up allowed; write(config, *dirs) writes
    the configuration and a Dockerfile in each directory."""
    for key in list(os.environ):
        if key.startswith(("DOCKER_LOGIN", "DOCKER_REPOSITORY")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DOCKER_REPOSITORY", "ghcr.io/o")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        load_tool().RegistryHost, "fetch_image", lambda *a: pytest.fail("look-up")
    )

    def write(config: str, *dirs: str) -> None:
        for directory in dirs:
            (tmp_path / directory).mkdir()
            (tmp_path / directory / "Dockerfile").write_text("FROM alpine\n")
        (tmp_path / "docker_images").write_text(config)

    return write
