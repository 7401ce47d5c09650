"""The Registry stage, end to end: docker_build run as a user runs it,
against the real registry (over TLS, over plain HTTP, with Basic logins
and Bearer tokens), through the tests' fault proxy where the fault is the
registry's. Covered: registry faults and retries, logins refused and
repositories hidden, the digest cache across runs, connections per
registry, and multi-platform indexes. Every failure is one line naming
the image and the cause, exit status 1, and no build of an image whose
state is unknown."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
import trustme
from conftest import (
    ARM_LAYERS,
    BASE_LAYERS,
    PASSWORD,
    REASON_BASE,
    REASON_MISSING,
    T_COMMIT,
    T_IMAGE,
    T_LATER,
    USER,
    World,
    announced,
    failed,
    multi_base,
    succeeded,
    utc,
)
from imagetools import new_layer, push_raw_config
from servers import FaultProxy, free_port


def fails(world: World, result, stderr: str) -> None:
    """The run failed with this one line, and built nothing."""
    failed(result, stderr)
    assert world.calls() == []


def methods(proxy: FaultProxy) -> list[tuple[str, str]]:
    """What the proxy saw, the repository part cut off, in a stable order."""
    return sorted((method, path.rsplit("/", 2)[-2]) for method, path in proxy.seen)


# ----------------------------------------------------------------------------
# Registries that cannot be reached or trusted
# ----------------------------------------------------------------------------


def test_connection_refused(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("app\tapp")
    world.commit()
    repository = f"127.0.0.1:{free_port()}/ns"
    result = world.run(env={"DOCKER_REPOSITORY": repository})
    fails(world, result, f"{repository}/app:latest: Connection refused\n")


def test_name_not_known(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("app\tapp")
    world.commit()
    result = world.run(env={"DOCKER_REPOSITORY": "nowhere.invalid/ns"})
    assert result.stderr in (
        "nowhere.invalid/ns/app:latest: Name or service not known\n",
        "nowhere.invalid/ns/app:latest: Temporary failure in name resolution\n",
    )
    fails(world, result, result.stderr)


class Silent:
    """A listening socket that accepts and reads, and never writes."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=connection.recv, args=(65536,), daemon=True).start()

    def close(self) -> None:
        self.server.close()
        for connection in self.connections:
            connection.close()


@pytest.mark.parametrize(("timeout", "deadline"), [("30", "2"), ("1", "2")])
def test_registry_that_never_answers(world: World, timeout, deadline) -> None:
    """A stalled registry ends the run within the look-up's deadline, the
    requests' time included, with one line naming the image; the --timeout
    of a request is cut to what is left."""
    silent = Silent()
    try:
        world.dockerfile("app", "scratch")
        world.config("app\tapp")
        world.commit()
        repository = f"{silent.host}/ns"
        began = time.monotonic()
        result = world.run(
            "--timeout",
            timeout,
            "--deadline",
            deadline,
            env={"DOCKER_REPOSITORY": repository},
        )
        took = time.monotonic() - began
    finally:
        silent.close()
    fails(
        world,
        result,
        f"{repository}/app:latest: timed out (gave up after {deadline} s)\n",
    )
    assert took < float(deadline) + 2.5  # the tool's own start included


@pytest.mark.also_sequential
def test_untrusted_certificate(world: World, tmp_path: Path) -> None:
    world.up_to_date()
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    result = world.run(env={"REQUESTS_CA_BUNDLE": str(other_ca)})
    fails(
        world,
        result,
        f"{world.ref('base:1')}: certificate verify failed: "
        "unable to get local issuer certificate\n",
    )


# ----------------------------------------------------------------------------
# Plain HTTP registries
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_loopback_registry_without_tls(http_world, name: str) -> None:
    world = http_world(name)
    world.up_to_date()
    succeeded(world.run())
    world.write("app/new", "x\n")
    world.commit(when=T_LATER)
    result = world.run()
    assert result.returncode == 0
    assert world.built() == [world.ref("app:latest")]


def test_insecure_registry_by_name(http_world) -> None:
    """A plain-HTTP registry not named as loopback is refused, unless
    DOCKER_INSECURE_REGISTRIES names it."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        pytest.skip("the host name does not resolve")
    if not address.startswith("127."):
        pytest.skip("the host name is not on loopback")
    world = http_world(name)
    world.up_to_date()
    result = world.run()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"{world.ref('base:1')}: ")
    assert result.stderr.count("\n") == 1
    port = world.namespace.split("/")[0].rpartition(":")[2]
    env = {"DOCKER_INSECURE_REGISTRIES": f"other {name}:{port}"}
    succeeded(world.run(env=env))


# ----------------------------------------------------------------------------
# What the registry answers: bad manifests and image configs
# ----------------------------------------------------------------------------


def test_malformed_manifest(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.add(
        "/app/manifests/",
        "body",
        method="GET",
        rewrite=lambda body: b"{not json",
        headers={"Docker-Content-Digest": ""},
    )
    fails(world, world.run(), f"{world.ref('app:latest')}: Invalid JSON\n")


def test_manifest_digest_mismatch(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    real = requests.get(
        f"https://{world.registry.host}/v2/{world.path('app')}/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        timeout=10,
    )
    spoiled = real.content.replace(b'"layers"', b'"layers" ')
    proxy.add("/app/manifests/", "body", method="GET", rewrite=lambda _: spoiled)
    expected = real.headers["Docker-Content-Digest"]
    actual = "sha256:" + hashlib.sha256(spoiled).hexdigest()
    fails(
        world,
        world.run(),
        f"{world.ref('app:latest')}: expected digest {expected}, got {actual}\n",
    )


NO_CREATED = json.dumps({"rootfs": {"diff_ids": []}}).encode()
NO_ROOTFS = json.dumps({"created": utc(T_IMAGE)}).encode()
BAD_CREATED = json.dumps({"created": "yesterday", "rootfs": {"diff_ids": []}}).encode()
MISSING = "missing information from registry"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (b"{not json", "Invalid JSON"),
        (b"[1, 2]", "Invalid JSON"),
        (NO_CREATED, MISSING),
        (NO_ROOTFS, MISSING),
        (BAD_CREATED, "Unknown string format: yesterday"),
    ],
    ids=["not-json", "not-an-object", "no-created", "no-rootfs", "bad-created"],
)
def test_bad_image_config(world: World, config: bytes, message: str) -> None:
    world.up_to_date()
    push_raw_config(world.ref("app:latest"), config)
    fails(world, world.run(), f"{world.ref('app:latest')}: {message}\n")


# ----------------------------------------------------------------------------
# Retries
# ----------------------------------------------------------------------------


def gets(proxy: FaultProxy, path: str) -> int:
    """How many GET requests the proxy saw for paths containing `path`."""
    return sum(1 for method, seen in proxy.seen if method == "GET" and path in seen)


@pytest.mark.parametrize(
    ("path", "action", "options", "args", "at_least"),
    [
        ("/manifests/", "status", {"method": "GET", "times": 2, "status": 503}, (), 4),
        ("/blobs/", "reset", {"times": 2}, (), 0),
        ("/blobs/", "truncate", {}, (), 0),
        ("/app/manifests/", "stall", {"method": "GET", "delay": 2.0},
         ("--timeout", "0.5"), 2),
    ],
    ids=["503-burst", "connection-reset", "truncated-body", "stalled-answer"],
)  # fmt: skip
@pytest.mark.also_sequential
def test_transient_fault_is_retried(
    faulty_world: tuple[World, FaultProxy],
    path: str,
    action: str,
    options: dict,
    args: tuple[str, ...],
    at_least: int,
) -> None:
    """A fault that goes away is retried and the run succeeds; where the
    fault is met by GETs of `path`, they are asked again."""
    world, proxy = faulty_world
    world.up_to_date()
    proxy.add(path, action, **options)
    succeeded(world.run(*args))
    assert gets(proxy, path) >= at_least


@pytest.mark.also_sequential
def test_429_honours_retry_after(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.add(
        "/manifests/", "status", method="GET", status=429, headers={"Retry-After": "1"}
    )
    started = time.monotonic()
    succeeded(world.run())
    assert time.monotonic() - started >= 1.0


def test_server_errors_give_up_with_one_line(
    faulty_world: tuple[World, FaultProxy],
) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.add(
        "/app/manifests/", "status", times=99, status=503, headers={"Retry-After": "0"}
    )
    result = world.run()
    fails(
        world,
        result,
        f"{world.ref('app:latest')}: 503 Server Error: Service Unavailable for url: "
        f"https://{proxy.host}/v2/{world.path('app')}/manifests/latest\n",
    )


@pytest.mark.parametrize(
    ("status", "headers", "error", "tries"),
    [
        (500, {"Retry-After": "0"}, "500 Server Error: Internal Server Error", 5),
        (400, {}, "400 Client Error: Bad Request", 1),
    ],
    ids=["server-error-bounded", "client-error-not-retried"],
)
def test_retries_are_bounded(
    faulty_world: tuple[World, FaultProxy],
    status: int,
    headers: dict,
    error: str,
    tries: int,
) -> None:
    """Server errors are tried five times in all; other errors once."""
    world, proxy = faulty_world
    world.up_to_date()
    proxy.seen.clear()
    proxy.add("/app/manifests/", "status", times=100, status=status, headers=headers)
    result = world.run()
    fails(
        world,
        result,
        f"{world.ref('app:latest')}: {error} "
        f"for url: https://{proxy.host}/v2/{world.path('app')}/manifests/latest\n",
    )
    assert sum(1 for m in proxy.seen if "/app/manifests/" in m[1]) == tries


# ----------------------------------------------------------------------------
# Logins refused and repositories hidden
# ----------------------------------------------------------------------------


def refuses_wrong_password(world: World) -> None:
    world.up_to_date()
    login = {"DOCKER_LOGIN": f"{world.registry.host} {USER} wrong-{PASSWORD}"}
    fails(
        world,
        world.run(env=login),
        f"{world.registry.host}: login failed: "
        f"the registry rejected the credentials of {USER}\n",
    )


@pytest.mark.also_sequential
def test_wrong_basic_password(auth_world: World) -> None:
    refuses_wrong_password(auth_world)


@pytest.mark.also_sequential
def test_wrong_bearer_password(token_world: World) -> None:
    refuses_wrong_password(token_world)


def test_repository_hidden_from_an_accepted_login(token_world: World) -> None:
    """Docker Hub answers 401 for a repository that does not exist yet: it
    is missing, and must be built."""
    world = token_world
    world.up_to_date()
    world.registry.tokens.hidden.add(world.path("app"))
    login = {"DOCKER_LOGIN": f"{world.registry.host} {USER} {PASSWORD}"}
    try:
        result = world.run("-n", env=login)
    finally:
        world.registry.tokens.hidden.clear()
    succeeded(result, announced(world.ref("app"), REASON_MISSING))


def test_forbidden_repository_with_basic_login(auth_registry, world_factory) -> None:
    """A 403 for a repository, with a Basic login accepted: it is missing."""
    world, proxy = world_factory(auth_registry)
    world.up_to_date()
    proxy.add("/app/manifests/", "status", times=99, status=403)
    login = {"DOCKER_LOGIN": f"{proxy.host} {USER} {PASSWORD}"}
    result = world.run("-n", env=login)
    succeeded(result, announced(world.ref("app"), REASON_MISSING))


# ----------------------------------------------------------------------------
# Requests spared: the digest cache across runs, tokens, connections
# ----------------------------------------------------------------------------

# What a run asks about app and its base without a cache: one probe, and
# per image GET of the manifest and of the config (with an empty cache a
# HEAD would only cost time).
COLD = [
    ("GET", "blobs"),
    ("GET", "blobs"),
    ("GET", "manifests"),
    ("GET", "manifests"),
    ("GET", "v2"),
]


@pytest.mark.also_sequential
def test_cold_then_warm_run(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.seen.clear()
    succeeded(world.run())
    assert methods(proxy) == COLD
    proxy.seen.clear()
    succeeded(world.run())
    assert methods(proxy) == [
        ("GET", "v2"),
        ("HEAD", "manifests"),
        ("HEAD", "manifests"),
    ]


@pytest.mark.also_sequential
def test_changed_tag_is_fetched_again(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    succeeded(world.run())
    world.registry.push(world.ref("base:1"), T_LATER, [new_layer("new")])
    proxy.seen.clear()
    result = world.run("-n")
    succeeded(result, announced(world.ref("app"), REASON_BASE))
    assert methods(proxy) == [
        ("GET", "blobs"),
        ("GET", "manifests"),
        ("GET", "v2"),
        ("HEAD", "manifests"),
        ("HEAD", "manifests"),
    ]


@pytest.mark.also_sequential
def test_no_cache(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    succeeded(world.run("--no-cache"))
    proxy.seen.clear()
    succeeded(world.run("--no-cache"))
    assert [m for m in methods(proxy) if m[0] == "GET"] == COLD
    assert not (world.root.parent / "cache").exists()


def test_corrupt_cache_is_ignored_and_rebuilt(
    faulty_world: tuple[World, FaultProxy],
) -> None:
    world, _ = faulty_world
    world.up_to_date()
    cache = world.root.parent / "cache" / "docker_build" / "manifests.json"
    cache.parent.mkdir(parents=True)
    cache.write_text('{"version": 2, "entries": {"sha256:x": {"platforms": 7}}}')
    result = world.run()
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (
        f"docker_build: warning: ignoring the cache {cache}: unexpected content\n"
    )
    assert len(json.loads(cache.read_text())["entries"]) == 2
    succeeded(world.run())


def test_older_cache_is_dropped_silently(
    faulty_world: tuple[World, FaultProxy],
) -> None:
    """A cache an older docker_build wrote (version 1) is not read, even
    where it names the very manifests (here it would say every image lacks
    the platform: a rebuild), and not warned about: it is replaced by a
    version-2 cache holding each platform's manifest digest."""
    world, proxy = faulty_world
    world.up_to_date()
    cache = world.root.parent / "cache" / "docker_build" / "manifests.json"
    succeeded(world.run())
    fresh = json.loads(cache.read_text())
    assert fresh["version"] == 2
    old = {
        digest: {"used": entry["used"], "platforms": {"linux/amd64": None}}
        for digest, entry in fresh["entries"].items()
    }
    cache.write_text(json.dumps({"version": 1, "entries": old}))
    proxy.seen.clear()
    succeeded(world.run())
    # read as a cold cache: no HEAD request
    assert [m for m in methods(proxy) if m[0] == "HEAD"] == []
    rewritten = json.loads(cache.read_text())
    assert rewritten["version"] == 2
    assert set(rewritten["entries"]) == set(old)
    for entry in rewritten["entries"].values():
        (facts,) = entry["platforms"].values()
        assert facts["digest"].startswith("sha256:")


@pytest.mark.also_sequential
def test_token_and_challenge_reused(token_world: World) -> None:
    world = token_world
    login = {"DOCKER_LOGIN_T": f"{world.registry.host} builder {PASSWORD}"}
    world.up_to_date("one", "two", "three")
    tokens = world.registry.tokens
    tokens.issued.clear()
    logged = len(world.registry.requests_logged())
    succeeded(world.run(env=login))
    requests = world.registry.requests_logged()[logged:]
    # one unauthenticated request learns the scheme; then one token per
    # repository, each used for all of that repository's requests
    assert [r for r in requests if r[2] == "401"] == [("GET", "/v2/", "401")]
    assert sorted(tokens.issued) == [
        f"repository:{world.path(name)}:pull"
        for name in ("base", "one", "three", "two")
    ]


def test_connections_at_most_the_pool(faulty_world: tuple[World, FaultProxy]) -> None:
    """Kept-alive connections: never more than --jobs to a registry."""
    world, proxy = faulty_world
    world.up_to_date("a", "b", "c", "d", "e", "f")
    before = proxy.connections
    succeeded(world.run("--jobs", "2", "--no-cache"))
    assert 1 <= proxy.connections - before <= 2
    before = proxy.connections
    succeeded(world.run("--jobs", "1", "--no-cache"))
    assert proxy.connections - before == 1


# ----------------------------------------------------------------------------
# Platforms: multi-platform indexes, bases and images missing a platform
# ----------------------------------------------------------------------------


def test_missing_base_image(world: World) -> None:
    world.dockerfile("app", world.ref("base:1"))
    world.config("app\tapp")
    world.commit()
    result = world.run()
    fails(world, result, f"Missing base image: {world.ref('base:1')}\n")


def test_base_without_the_platform(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", base)
    world.config("app\tapp\t\t--platform=linux/arm64")
    world.commit()
    fails(world, world.run(), f"Missing base image: {base} for linux/arm64\n")


def test_multi_arch_index(world: World) -> None:
    """Indexes of several platforms, in any order: linux/amd64 is compared."""
    base = world.ref("base:1")
    world.registry.push(
        base, T_COMMIT, BASE_LAYERS, platforms=["linux/arm64", "linux/amd64"]
    )
    world.dockerfile("app", base)
    world.config("app\tapp")
    world.commit()
    world.registry.push(
        world.ref("app"), T_IMAGE, [*BASE_LAYERS, new_layer("app")],
        platforms=["linux/amd64", "linux/arm/v7"],
    )  # fmt: skip
    succeeded(world.run())


def test_oci_without_media_types_attestations_and_bare_entries(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS, oci=True, odd_entries=True)
    world.dockerfile("app", base)
    world.config("app\tapp")
    world.commit()
    world.registry.push(
        world.ref("app"), T_IMAGE, [*BASE_LAYERS, new_layer("a")], oci=True
    )
    succeeded(world.run())
    world.registry.push(
        world.ref("app"), T_IMAGE, [new_layer("other")], oci=True, odd_entries=True
    )
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_plain_manifest_of_another_platform_is_missing(world: World) -> None:
    base = multi_base(world)
    world.dockerfile("app", base)
    world.config("app\tapp")
    world.commit()
    world.registry.push(
        world.ref("app"),
        T_IMAGE,
        [*ARM_LAYERS, new_layer("a")],
        platforms=["linux/arm64"],
    )
    reason = f"{REASON_MISSING} for linux/amd64"
    succeeded(world.run("-n"), announced(world.ref("app"), reason))


# ----------------------------------------------------------------------------
# Docker Hub's pull limit, as the registry states it
# ----------------------------------------------------------------------------


def limited(proxy: FaultProxy, remaining: int) -> None:
    """Every manifest answer carries Docker Hub's pull-limit header."""
    proxy.add(
        "/manifests/",
        "body",
        times=1000,
        rewrite=lambda body: body,
        headers={"ratelimit-remaining": f"{remaining};w=21600"},
    )


@pytest.mark.also_sequential
def test_pull_limit_too_low_is_one_line(
    faulty_world: tuple[World, FaultProxy],
) -> None:
    """Fewer manifest requests left than look-ups to make: one warning
    naming the registry, before the decisions; the run goes on."""
    world, proxy = faulty_world
    world.up_to_date("a", "b", "c")
    limited(proxy, 1)
    result = world.run("-n")
    assert (result.returncode, result.stdout) == (0, "")
    host = world.namespace.split("/")[0]
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        f"docker_build: warning: {host}: the pull limit leaves 1 manifest "
        "requests, and this run has "
    )
    assert lines[0].endswith(" look-ups to make there")


def test_pull_limit_enough_is_silent_and_explained(
    faulty_world: tuple[World, FaultProxy],
) -> None:
    """Enough left: nothing said; --explain shows the remaining count."""
    world, proxy = faulty_world
    world.up_to_date("a")
    limited(proxy, 100)
    succeeded(world.run("-n"))
    result = world.run("-n", "-v")
    host = world.namespace.split("/")[0]
    assert result.stderr.endswith(
        f"{host}: pull limit: 100 manifest requests remaining\n"
    )


# ----------------------------------------------------------------------------
# The caches
# ----------------------------------------------------------------------------


def test_unwritable_cache_warns_in_one_line(world: World) -> None:
    """A cache directory that cannot be made: one warning line per run
    (not one per cache file), and the run goes on."""
    world.up_to_date()
    blocked = world.root.parent / "blocked"
    blocked.write_text("")
    for _ in range(2):
        result = world.run("-n", env={"XDG_CACHE_HOME": str(blocked)})
        assert (result.returncode, result.stdout) == (0, "")
        assert result.stderr == (
            "docker_build: warning: ignoring the cache "
            f"{blocked}/docker_build/manifests.json: [Errno 20] Not a directory: "
            f"'{blocked}/docker_build/manifests.json'\n"
        )
