"""At home with Docker: credentials as `docker login` leaves them, plain
HTTP registries on loopback, the JSON plan, --version, exit codes, and the
progress line on a terminal."""

from __future__ import annotations

import base64
import json
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from conftest import (
    PASSWORD,
    REASON_GIT,
    ROOT,
    T_LATER,
    TOOL,
    USER,
    World,
    announced,
    succeeded,
)

HELPER = Path(__file__).resolve().parent / "docker-credential-test"


def docker_config(world: World, config: dict) -> Path:
    """A Docker config directory for the world, and the test helper."""
    directory = world.root.parent / "docker-config"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    world.env["DOCKER_CONFIG"] = str(directory)
    (world.bin / "docker-credential-test").symlink_to(HELPER)
    world.env["TEST_CREDENTIALS_LOG"] = str(directory / "helper.log")
    return directory


def helper_knows(world: World, credentials: dict[str, list[str]]) -> None:
    path = world.root.parent / "credentials.json"
    path.write_text(json.dumps(credentials))
    world.env["TEST_CREDENTIALS"] = str(path)


def asked(world: World) -> list[str]:
    log = Path(world.env["TEST_CREDENTIALS_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ----------------------------------------------------------------------------
# Credentials
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["{host}", "https://{host}", "https://{host}/v2/"])
def test_auths_entry(auth_world: World, key: str) -> None:
    world = auth_world
    world.up_to_date()
    host = world.registry.host
    docker_config(
        world, {"auths": {key.format(host=host): {"auth": b64(f"{USER}:{PASSWORD}")}}}
    )
    succeeded(world.run())


@pytest.mark.also_sequential
def test_login_variable_comes_first(auth_world: World) -> None:
    world = auth_world
    world.up_to_date()
    host = world.registry.host
    docker_config(world, {"auths": {host: {"auth": b64(f"{USER}:wrong")}}})
    succeeded(world.run(env={"DOCKER_LOGIN": f"{host} {USER} {PASSWORD}"}))
    result = world.run()
    assert result.stderr == (
        f"{host}: login failed: the registry rejected the credentials of {USER}\n"
    )


@pytest.mark.parametrize("setting", ["credHelpers", "credsStore"])
@pytest.mark.also_sequential
def test_credential_helper(auth_world: World, setting: str) -> None:
    world = auth_world
    world.up_to_date()
    host = world.registry.host
    config = {"credHelpers": {host: "test"}} if setting == "credHelpers" else {
        "credsStore": "test", "auths": {host: {}}
    }  # fmt: skip
    docker_config(world, config)
    helper_knows(world, {host: [USER, PASSWORD]})
    result = world.run()
    succeeded(result)
    assert asked(world) == [host]
    world.write("app/new", "x\n")
    world.commit(when=T_LATER)
    result = world.run()
    assert result.returncode == 0
    (call,) = world.calls()
    assert PASSWORD not in json.dumps(call) + result.stdout + result.stderr


@pytest.mark.also_sequential
def test_helper_without_the_registry_means_anonymous(world: World) -> None:
    world.up_to_date()
    docker_config(world, {"credsStore": "test"})
    helper_knows(world, {})
    succeeded(world.run())
    assert asked(world) == [world.registry.host]


@pytest.mark.parametrize("broken", ["exit", "garbage", "missing"])
@pytest.mark.also_sequential
def test_broken_helper_is_a_warning(world: World, broken: str) -> None:
    world.up_to_date()
    docker_config(world, {"credsStore": "missing" if broken == "missing" else "test"})
    world.env["TEST_HELPER_BROKEN"] = broken
    result = world.run()
    host = world.registry.host
    assert (result.returncode, result.stdout) == (0, "")
    if broken == "exit":
        expected = f"docker-credential-test failed for {host} (exit 3)"
    elif broken == "garbage":
        expected = f"docker-credential-test gave no credentials for {host}"
    else:
        expected = (
            f"docker-credential-missing failed for {host}: [Errno 2] "
            "No such file or directory: 'docker-credential-missing'"
        )
    assert result.stderr == (
        f"docker_build: warning: {expected}; using anonymous access\n"
    )


@pytest.mark.also_sequential
def test_identity_token(token_world: World) -> None:
    world = token_world
    world.up_to_date()
    tokens = world.registry.tokens
    docker_config(
        world,
        {"auths": {world.registry.host: {"identitytoken": tokens.identity_token}}},
    )
    succeeded(world.run())
    docker_config_path = Path(world.env["DOCKER_CONFIG"]) / "config.json"
    docker_config_path.write_text(
        json.dumps({"auths": {world.registry.host: {"identitytoken": "stale"}}})
    )
    result = world.run()
    assert result.stderr == (
        f"{world.registry.host}: login failed: "
        "the registry rejected the credentials of <token>\n"
    )


# ----------------------------------------------------------------------------
# Plain HTTP
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
# The JSON plan
# ----------------------------------------------------------------------------


def plan_schema() -> dict:
    """The schema as the README documents it."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- plan-schema -->\n```json\n(.*?)```", readme, re.S)
    assert match
    return json.loads(match.group(1))


@pytest.mark.also_sequential
def test_json_dry_run(world: World) -> None:
    base = world.up_to_date("app", "tool")
    world.write("tool/new", "x\n")
    world.commit(when=T_LATER)
    result = world.run("-n", "--json")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    jsonschema.validate(document, plan_schema())
    entry = {
        "name": "app",
        "full_name": world.ref("app:latest"),
        "repository": world.namespace,
        "directory": "app",
        "base": base,
        "platforms": ["linux/amd64"],
        "decision": "up-to-date",
        "reason": None,
        "result": None,
        "exit_code": None,
    }
    assert document == {
        "version": 1,
        "dry_run": True,
        "images": [
            entry,
            {
                **entry,
                "name": "tool",
                "full_name": world.ref("tool:latest"),
                "directory": "tool",
                "decision": "rebuild",
                "reason": REASON_GIT,
            },
        ],
    }
    assert result.stderr == announced(world.ref("tool"), REASON_GIT)


def test_json_after_a_run(world: World) -> None:
    world.up_to_date("app", "tool")
    result = world.run(
        "--all", "--output", "json", env={"DOCKER_DOUBLE_FAIL": "tool=5"}
    )
    assert result.returncode == 5
    document = json.loads(result.stdout)
    jsonschema.validate(document, plan_schema())
    assert [(e["name"], e["result"], e["exit_code"]) for e in document["images"]] == [
        ("app", "built", 0),
        ("tool", "failed", 5),
    ]
    # the builds' own output went to stderr with the headers
    assert f"double: pushed {world.ref('app:latest')}\n" in result.stderr
    assert f"double: failed {world.ref('tool:latest')}\n" in result.stderr


def test_json_parallel_run_reports_skipped(world: World) -> None:
    world.up_to_date("root")
    world.dockerfile("leaf", "$DOCKER_REPOSITORY/root")
    world.config("root\troot", "leaf\tleaf")
    world.commit()
    env = {"DOCKER_DOUBLE_FAIL": "/root:=4"}
    result = world.run("--all", "--json", "--build-jobs", "2", env=env)
    assert result.returncode == 4
    document = json.loads(result.stdout)
    jsonschema.validate(document, plan_schema())
    assert [(e["name"], e["result"], e["exit_code"]) for e in document["images"]] == [
        ("root", "failed", 4),
        ("leaf", "skipped", None),
    ]


# ----------------------------------------------------------------------------
# Version, exit codes, progress
# ----------------------------------------------------------------------------


def test_version() -> None:
    result = subprocess.run([str(TOOL), "--version"], capture_output=True, text=True)
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.*)"$', pyproject, re.M)
    assert version
    assert (result.returncode, result.stdout) == (0, f"docker_build {version[1]}\n")


def test_exit_status_0(world: World) -> None:
    world.up_to_date()
    assert world.run().returncode == 0


def test_exit_status_1(world: World) -> None:
    world.config("app\tmissing")
    result = world.run()
    assert (result.returncode, result.stderr) == (
        1,
        "docker_images line 1: unknown directory 'missing'\n",
    )


def test_exit_status_2(world: World) -> None:
    result = world.run("--no-such-option")
    assert result.returncode == 2
    assert result.stderr.endswith(
        "docker_build: error: unrecognized arguments: --no-such-option\n"
    )


def test_exit_status_of_a_failed_build(world: World) -> None:
    world.up_to_date()
    assert world.run("--all", env={"DOCKER_DOUBLE_FAIL": "app=42"}).returncode == 42


@pytest.mark.also_sequential
def test_progress_on_a_terminal(world: World) -> None:
    world.up_to_date("app", "tool")
    controller, terminal = pty.openpty()
    tool = subprocess.Popen(
        [sys.executable, str(TOOL), *world.options],
        cwd=world.root,
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    stdout, _ = tool.communicate(timeout=60)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert (tool.returncode, stdout) == (0, b"")
    # 3 look-ups (base, app, tool) and 2 git queries
    assert b"\rdocker_build: checking 1/5\x1b[K" in seen
    assert seen.endswith(b"\r\x1b[K")
