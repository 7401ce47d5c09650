"""Look-ups that spare the registry: one HEAD per image on a warm run,
tokens and authentication reused, and retries of what may go away. The
registry is reached through the tests' fault proxy, which counts and
spoils requests."""

from __future__ import annotations

import json
import time

import pytest
from conftest import PASSWORD, REASON_BASE, T_LATER, World, announced, failed, succeeded
from imagetools import new_layer
from servers import FaultProxy


def methods(proxy: FaultProxy) -> list[tuple[str, str]]:
    """What the proxy saw, the repository part cut off, in a stable order."""
    return sorted((method, path.rsplit("/", 2)[-2]) for method, path in proxy.seen)


@pytest.mark.also_sequential
def test_cold_then_warm_run(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.seen.clear()
    succeeded(world.run())
    # per image: GET of the manifest and of the config (with an empty cache
    # a HEAD would only cost time)
    assert methods(proxy) == [
        ("GET", "blobs"),
        ("GET", "blobs"),
        ("GET", "manifests"),
        ("GET", "manifests"),
        ("GET", "v2"),
    ]
    proxy.seen.clear()
    succeeded(world.run())
    assert methods(proxy) == [
        ("GET", "v2"),
        ("HEAD", "manifests"),
        ("HEAD", "manifests"),
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
    assert [m for m in methods(proxy) if m[0] == "GET"] == [
        ("GET", "blobs"),
        ("GET", "blobs"),
        ("GET", "manifests"),
        ("GET", "manifests"),
        ("GET", "v2"),
    ]
    assert not (world.root.parent / "cache").exists()


def test_corrupt_cache_is_ignored_and_rebuilt(
    faulty_world: tuple[World, FaultProxy],
) -> None:
    world, _ = faulty_world
    world.up_to_date()
    cache = world.root.parent / "cache" / "docker_build" / "manifests.json"
    cache.parent.mkdir(parents=True)
    cache.write_text('{"version": 1, "entries": {"sha256:x": {"platforms": 7}}}')
    result = world.run()
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == (
        f"docker_build: warning: ignoring the cache {cache}: unexpected content\n"
    )
    assert len(json.loads(cache.read_text())["entries"]) == 2
    succeeded(world.run())


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


# ----------------------------------------------------------------------------
# Retries
# ----------------------------------------------------------------------------


@pytest.mark.also_sequential
def test_503_burst_is_retried(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.add("/manifests/", "status", method="GET", times=2, status=503)
    succeeded(world.run())
    assert sum(1 for m in methods(proxy) if m == ("GET", "manifests")) >= 4


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


@pytest.mark.also_sequential
def test_connection_reset_is_retried(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.add("/blobs/", "reset", times=2)
    succeeded(world.run())


@pytest.mark.also_sequential
def test_truncated_body_is_retried(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.add("/blobs/", "truncate")
    succeeded(world.run())


def test_retries_are_bounded(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.seen.clear()
    proxy.add(
        "/app/manifests/", "status", times=100, status=500, headers={"Retry-After": "0"}
    )
    result = world.run()
    failed(
        result,
        f"{world.ref('app:latest')}: 500 Server Error: Internal Server Error "
        f"for url: https://{proxy.host}/v2/{world.path('app')}/manifests/latest\n",
    )
    assert sum(1 for m in proxy.seen if "/app/manifests/" in m[1]) == 5
    assert world.calls() == []


def test_other_errors_are_not_retried(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.seen.clear()
    proxy.add("/app/manifests/", "status", times=100, status=400)
    result = world.run()
    failed(
        result,
        f"{world.ref('app:latest')}: 400 Client Error: Bad Request "
        f"for url: https://{proxy.host}/v2/{world.path('app')}/manifests/latest\n",
    )
    assert sum(1 for m in proxy.seen if "/app/manifests/" in m[1]) == 1
