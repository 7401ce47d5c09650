"""Faults, bad credentials, interrupts and overlapping runs, against the
real registry (through the tests' fault proxy where the fault is the
registry's). Every failure is one line naming the image and the cause,
exit status 1, no traceback, and no build of an image whose state is
unknown."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import trustme
from conftest import (
    PASSWORD,
    REASON_FILES,
    REASON_MISSING,
    T_COMMIT,
    T_IMAGE,
    TOOL,
    USER,
    World,
    announced,
    failed,
    succeeded,
    utc,
)
from imagetools import new_layer, push_raw_config
from servers import FaultProxy, free_port


def fails(world: World, result, stderr: str) -> None:
    """The run failed with this one line, and built nothing."""
    failed(result, stderr)
    assert world.calls() == []


# ----------------------------------------------------------------------------
# Registry faults
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


@pytest.mark.also_sequential
def test_stalled_answer_is_retried(faulty_world: tuple[World, FaultProxy]) -> None:
    world, proxy = faulty_world
    world.up_to_date()
    proxy.add("/app/manifests/", "stall", method="GET", delay=2.0)
    result = world.run("--timeout", "0.5")
    succeeded(result)
    assert [m for m, p in proxy.seen if "/app/manifests/" in p].count("GET") >= 2


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


# ----------------------------------------------------------------------------
# Credentials
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
    result = world.run("-n", env=login)
    world.registry.tokens.hidden.clear()
    succeeded(result, announced(world.ref("app"), REASON_MISSING))


def test_forbidden_repository_with_basic_login(auth_registry, world_factory) -> None:
    world, proxy = world_factory(auth_registry)
    world.up_to_date()
    proxy.add("/app/manifests/", "status", times=99, status=403)
    login = {"DOCKER_LOGIN": f"{proxy.host} {USER} {PASSWORD}"}
    result = world.run("-n", env=login)
    succeeded(result, announced(world.ref("app"), REASON_MISSING))


# ----------------------------------------------------------------------------
# Secrets
# ----------------------------------------------------------------------------


NOW = {"Retry-After": "0"}
SERVER_ERRORS = {"times": 99, "status": 500, "headers": NOW}


def spoil(body: bytes) -> bytes:
    return body + b" "


def test_password_never_shows(auth_registry, world_factory, tmp_path: Path) -> None:
    """Every error path with a login: the canary password appears in no
    output, in no child's environment and in no child's argv."""
    world, proxy = world_factory(auth_registry)
    world.up_to_date()
    login = {"DOCKER_LOGIN_CANARY": f"{proxy.host} {USER} {PASSWORD}"}
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    scenarios = [
        ([], {}, None),
        ([], {"DOCKER_LOGIN_CANARY": f"{proxy.host} {USER} x{PASSWORD}"}, None),
        ([], {"DOCKER_REPOSITORY": f"127.0.0.1:{free_port()}/x"}, None),
        ([], {"REQUESTS_CA_BUNDLE": str(other_ca)}, None),
        ([], {}, ("/manifests/", "status", SERVER_ERRORS)),
        ([], {}, ("/blobs/", "reset", {"times": 2})),
        ([], {}, ("/blobs/", "truncate", {})),
        ([], {}, ("/manifests/", "body", {"method": "GET", "rewrite": spoil})),
        (["--all"], {"DOCKER_DOUBLE_FAIL": "app=9"}, None),
        (["--all"], {"DOCKER_DOUBLE_SIGNAL": "app=SIGKILL"}, None),
        (["--all"], {}, None),
    ]  # fmt: skip
    outputs = []
    for args, extra, fault in scenarios:
        if fault:
            path, action, options = fault
            proxy.add(path, action, **options)
        result = world.run(*args, "--no-cache", env={**login, **extra})
        outputs.append(result.stdout + result.stderr)
        proxy.faults.clear()
        assert "Traceback" not in result.stderr
    assert not any(PASSWORD in output for output in outputs)
    calls = world.calls()
    assert calls
    assert not any(PASSWORD in json.dumps(call) for call in calls)
    assert not any(key.startswith("DOCKER_LOGIN") for c in calls for key in c["env"])


# ----------------------------------------------------------------------------
# Reference defects fixed
# ----------------------------------------------------------------------------


def test_base_without_layers(world: World) -> None:
    world.up_to_date(base_layers=[])
    result = world.run()
    succeeded(result)


def test_build_killed_by_a_signal(world: World) -> None:
    world.up_to_date()
    result = world.run("--all", env={"DOCKER_DOUBLE_SIGNAL": "app=SIGKILL"})
    assert result.returncode == 128 + signal.SIGKILL
    assert result.stderr == f"{world.ref('app')}: docker was killed by SIGKILL\n"


def test_repository_with_a_tag_is_rejected(world: World) -> None:
    world.up_to_date()
    result = world.run(env={"DOCKER_REPOSITORY": f"{world.namespace}:v1"})
    fails(
        world,
        result,
        f"DOCKER_REPOSITORY: {world.namespace}:v1: "
        "a repository must not have a tag or digest\n",
    )


def test_duplicate_entry_names_both_lines(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("app\tapp", "# again", "app:latest\tapp")
    fails(
        world,
        world.run(),
        "docker_images lines 1 and 3: multiple entries for app:latest\n",
    )


def test_dirty_tree_counts_only_the_build_context(world: World) -> None:
    """Ignored files (by git or .dockerignore) and .git do not count."""
    world.up_to_date()
    world.write(".gitignore", "*.o\n")
    world.write("app/.dockerignore", "*.log\nsecret/\n")
    world.commit()
    created = time.time() + 1000  # after every file written so far
    layers = ["sha256:" + "1" * 64, new_layer("a")]
    world.registry.push(world.ref("app"), created, layers)
    world.write("app/notes.txt", "untracked\n", mtime=T_COMMIT)  # dirty now
    later = created + 500
    world.write("app/main.o", "ignored by git\n", mtime=later)
    world.write("app/debug.log", "ignored by docker\n", mtime=later)
    world.write("app/secret/key", "ignored by docker\n", mtime=later)
    result = world.run()
    succeeded(result)
    world.write("app/main.c", "counts\n", mtime=later)
    result = world.run("-n")
    assert result.stdout == announced(world.ref("app"), REASON_FILES)


def test_directory_without_tracked_files(world: World) -> None:
    """git knows nothing of the directory (all ignored): the reference
    tool stopped with "Can't get commit date"."""
    world.write(".gitignore", "app/\n")
    world.up_to_date()
    result = world.run()
    succeeded(result)


# ----------------------------------------------------------------------------
# Interrupts and overlapping runs
# ----------------------------------------------------------------------------


def start_tool(world: World, *args: str, env: dict | None = None) -> subprocess.Popen:
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


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("build_jobs", ["1", "2"])
def test_interrupt_stops_the_build(world: World, signum: int, build_jobs: str) -> None:
    world.up_to_date()
    tool = start_tool(
        world, "--all", "--build-jobs", build_jobs, env={"DOCKER_DOUBLE_SLEEP": "60"}
    )
    (pid,) = wait_for_build(world)
    tool.send_signal(signum)
    _, stderr = tool.communicate(timeout=30)
    assert tool.returncode == 128 + signum
    what = "build" if build_jobs == "1" else "builds"
    name = signal.Signals(signum).name
    assert stderr == f"Interrupted by {name}: {what} of {world.ref('app')} stopped\n"
    assert not alive(pid)


def test_overlapping_runs(world: World) -> None:
    world.up_to_date()
    first = start_tool(world, "--all", env={"DOCKER_DOUBLE_SLEEP": "3"})
    wait_for_build(world)
    result = world.run("--all", "--no-wait")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "docker_images: another docker_build run is using it\n"
    second = start_tool(world, "--all")
    assert first.wait(timeout=60) == 0
    assert second.wait(timeout=60) == 0
    one, two = world.calls()
    assert two["start"] >= one["end"]
    # a dry run does not wait
    assert world.run("-n", "--no-wait").returncode == 0


def test_lock_of_a_killed_run_is_gone(world: World) -> None:
    world.up_to_date()
    first = start_tool(world, "--all", env={"DOCKER_DOUBLE_SLEEP": "60"})
    (pid,) = wait_for_build(world)
    first.kill()
    first.wait()
    os.kill(pid, signal.SIGKILL)  # a killed run cannot stop its build
    result = world.run("--all", "--no-wait")
    assert (result.returncode, result.stderr) == (0, "")
