"""docker_build run as a user runs it: a real registry over TLS, real git
repositories with controlled dates, and the docker double."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import (
    BASE_LAYER,
    PASSWORD,
    REASON_BASE,
    REASON_FILES,
    REASON_FORCED,
    REASON_GIT,
    REASON_MISSING,
    T_COMMIT,
    T_IMAGE,
    T_LATER,
    World,
    announced,
    failed,
    rebuilt,
    succeeded,
)
from imagetools import new_layer

BASE_LAYERS = [BASE_LAYER, "sha256:" + "2" * 64]


# ----------------------------------------------------------------------------
# Decisions
# ----------------------------------------------------------------------------


def test_nothing_to_do(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    succeeded(world.run())
    assert world.calls() == []


def test_image_missing(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", base)
    world.config("app\tapp")
    world.commit()
    result = world.run()
    succeeded(result, rebuilt(world.ref("app"), REASON_MISSING))
    assert world.built() == [world.ref("app:latest")]
    pushed = world.registry.config(world.ref("app:latest"))
    assert pushed["rootfs"]["diff_ids"][:2] == BASE_LAYERS


def test_base_image_changed(world: World) -> None:
    base = world.up_to_date(base_layers=BASE_LAYERS)
    world.registry.push(base, T_LATER, [*BASE_LAYERS, new_layer("base")])
    succeeded(world.run(), rebuilt(world.ref("app"), REASON_BASE))
    assert world.built() == [world.ref("app:latest")]


def test_newer_commit(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    world.write("app/extra.txt", "more\n")
    world.commit(when=T_LATER)
    succeeded(world.run(), rebuilt(world.ref("app"), REASON_GIT))


def test_commit_elsewhere_is_ignored(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    world.write("other/file.txt", "x\n")
    world.commit(when=T_LATER)
    succeeded(world.run())


def test_dirty_tree(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    world.write("app/new.txt", "uncommitted\n", mtime=T_LATER)
    succeeded(world.run(), rebuilt(world.ref("app"), REASON_FILES))


def test_dirty_tree_older_than_image(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    world.write("app/new.txt", "uncommitted\n", mtime=T_COMMIT)
    for path in ("app/Dockerfile", "app"):
        os.utime(world.root / path, (T_COMMIT, T_COMMIT))
    succeeded(world.run())


def test_directory_outside_git(plain_world: World) -> None:
    world = plain_world
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", base, mtime=T_COMMIT)
    world.config("app\tapp")
    os.utime(world.root / "app", (T_COMMIT, T_COMMIT))
    world.registry.push(
        world.ref("app:latest"), T_IMAGE, [*BASE_LAYERS, new_layer("a")]
    )
    succeeded(world.run())
    world.write("app/late.txt", "x\n", mtime=T_LATER)
    succeeded(world.run(), rebuilt(world.ref("app"), REASON_FILES))


# ----------------------------------------------------------------------------
# Forcing and dry runs
# ----------------------------------------------------------------------------


def two_images(world: World) -> str:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("one", base)
    world.dockerfile("two", "scratch")
    world.config("one\tone", "two\ttwo")
    world.commit()
    for name in ("one", "two"):
        world.registry.push(world.ref(name), T_IMAGE, [*BASE_LAYERS, new_layer(name)])
    return base


def test_forced_by_name(world: World) -> None:
    two_images(world)
    succeeded(world.run("two"), rebuilt(world.ref("two"), REASON_FORCED))


def test_forced_by_base_name(world: World) -> None:
    base = two_images(world)
    succeeded(world.run(base), rebuilt(world.ref("one"), REASON_FORCED))


def test_all(world: World) -> None:
    two_images(world)
    expected = rebuilt(world.ref("one"), REASON_FORCED) + rebuilt(
        world.ref("two"), REASON_FORCED
    )
    succeeded(world.run("--all"), expected)
    assert world.built() == [world.ref("one:latest"), world.ref("two:latest")]


def test_all_with_exclusion(world: World) -> None:
    two_images(world)
    succeeded(world.run("-a", "one:latest"), rebuilt(world.ref("two"), REASON_FORCED))


def test_unknown_image_argument(world: World) -> None:
    two_images(world)
    result = world.run("three")
    failed(result, "Image three not found in 'docker_images' configuration file\n")


@pytest.mark.also_sequential
def test_dry_run(world: World) -> None:
    two_images(world)
    world.registry.push(world.ref("base:1"), T_LATER, [new_layer("new base")])
    result = world.run("--dry-run", "two")
    expected = announced(world.ref("one"), REASON_BASE) + announced(
        world.ref("two"), REASON_FORCED
    )
    succeeded(result, expected)
    assert world.calls() == []


# ----------------------------------------------------------------------------
# Files, directories and options
# ----------------------------------------------------------------------------


def test_file_and_dir_options(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("sub/dir/app", base)
    world.config("app\tapp", name="sub/dir/images.conf")
    world.commit()
    result = world.run("-C", "sub", "--dir", "dir", "-f", "images.conf", "-n")
    succeeded(result, announced(world.ref("app"), REASON_MISSING))


def test_bad_directory(world: World) -> None:
    result = world.run("-C", "nowhere")
    failed(
        result,
        "Can't change directory: [Errno 2] No such file or directory: 'nowhere'\n",
    )


def test_options_order(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", "$DOCKER_REPOSITORY/base:1")
    world.dockerfile("tool", "scratch")
    world.config(
        "--platform=linux/amd64 --label 'a=b c'\t\t# global options",
        "app\tapp\t$DOCKER_REPOSITORY/base:1\t--build-arg X=1 --pull",
        "--no-cache",
        "tool\ttool\tscratch",
    )
    world.commit()
    world.run("--all")
    app, tool = (call["argv"] for call in world.calls())
    assert app == [
        "buildx", "build",
        "--build-arg", f"DOCKER_REPOSITORY={world.namespace}",
        "--platform=linux/amd64", "--label", "a=b c",
        "--build-arg", "X=1", "--pull",
        "--push", "--tag", world.ref("app:latest"), "app",
    ]  # fmt: skip
    assert tool == [
        "buildx", "build", "--no-cache",
        "--push", "--tag", world.ref("tool:latest"), "tool",
    ]  # fmt: skip


# ----------------------------------------------------------------------------
# Repositories and bases
# ----------------------------------------------------------------------------


@pytest.mark.also_sequential
def test_two_repositories(world: World) -> None:
    second = world.namespace + "-mirror"
    base = world.up_to_date(base_layers=BASE_LAYERS)
    world.registry.push(f"{second}/app:latest", T_IMAGE, [*BASE_LAYERS, new_layer("m")])
    env = {"DOCKER_REPOSITORY": f"{world.namespace} {second}"}
    succeeded(world.run(env=env))
    world.registry.push(base, T_LATER, [new_layer("new base")])
    reason = REASON_BASE
    expected = rebuilt(world.ref("app"), reason) + rebuilt(f"{second}/app", reason)
    succeeded(world.run(env=env), expected)
    assert world.built() == [world.ref("app:latest"), f"{second}/app:latest"]


@pytest.mark.also_sequential
def test_second_repository_decides(world: World) -> None:
    second = world.namespace + "-mirror"
    world.up_to_date(base_layers=BASE_LAYERS)
    env = {"DOCKER_REPOSITORY": f"{world.namespace} {second}"}
    reason = REASON_MISSING
    expected = announced(world.ref("app"), reason) + announced(f"{second}/app", reason)
    succeeded(world.run("-n", env=env), expected)


def test_repository_base_and_dependent_image(world: World) -> None:
    """ipterm on ipterm-base: the base is rebuilt first, then the image
    built on it (the reference tool found "Base image has changed" after
    the base's build; this tool knows it before any build)."""
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("ipterm/base", base)
    world.write(
        "ipterm/cli/Dockerfile",
        "ARG DOCKER_REPOSITORY\nFROM $DOCKER_REPOSITORY/ipterm-base\n",
    )
    world.config("ipterm-base\tipterm/base", "ipterm\tipterm/cli")
    world.commit()
    world.registry.push(
        world.ref("ipterm-base"), T_IMAGE, [*BASE_LAYERS, "sha256:" + "3" * 64]
    )
    world.registry.push(
        world.ref("ipterm"),
        T_IMAGE,
        [*BASE_LAYERS, "sha256:" + "3" * 64, new_layer("i")],
    )
    succeeded(world.run())
    world.write("ipterm/base/motd", "hello\n")
    world.commit(when=T_LATER)
    expected = rebuilt(world.ref("ipterm-base"), REASON_GIT) + rebuilt(
        world.ref("ipterm"),
        f"Base image will be rebuilt: {world.ref('ipterm-base:latest')}",
    )
    succeeded(world.run(), expected)
    ipterm = world.calls()[1]["argv"]
    assert ipterm[2:4] == ["--build-arg", f"DOCKER_REPOSITORY={world.namespace}"]
    new_base = world.registry.config(world.ref("ipterm-base"))["rootfs"]["diff_ids"]
    assert (
        world.registry.config(world.ref("ipterm"))["rootfs"]["diff_ids"][:3] == new_base
    )


def test_base_none_is_never_compared(world: World) -> None:
    world.dockerfile("app", world.ref("base:1"))
    world.config("app\tapp\tNONE")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [new_layer("app")])
    succeeded(world.run())


def test_missing_base_image(world: World) -> None:
    world.dockerfile("app", world.ref("base:1"))
    world.config("app\tapp")
    world.commit()
    result = world.run()
    failed(result, f"Missing base image: {world.ref('base:1')}\n")
    assert world.calls() == []


def test_multi_arch_index(world: World) -> None:
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


def test_full_name_image_ignores_repositories(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", base)
    world.config(f"{world.ref('tool:v2')}\tapp")
    world.commit()
    env = {"DOCKER_REPOSITORY": ""}
    result = world.run("-n", env=env)
    succeeded(result, announced(world.ref("tool:v2"), REASON_MISSING))


def test_repository_not_defined(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("app\tapp")
    result = world.run(env={"DOCKER_REPOSITORY": " "})
    failed(result, "app: Environment variable DOCKER_REPOSITORY is not defined\n")


# ----------------------------------------------------------------------------
# Credentials
# ----------------------------------------------------------------------------


def test_basic_auth_login(auth_world: World) -> None:
    world = auth_world
    world.up_to_date(base_layers=BASE_LAYERS)
    login = {"DOCKER_LOGIN_TEST": f"{world.registry.host} builder {PASSWORD}"}
    succeeded(world.run(env=login))
    world.write("app/extra", "x\n")
    world.commit(when=T_LATER)
    result = world.run(env=login)
    succeeded(result, rebuilt(world.ref("app"), REASON_GIT))
    (call,) = world.calls()
    assert not any(key.startswith("DOCKER_LOGIN") for key in call["env"])
    assert PASSWORD not in repr(call)
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.also_sequential
def test_without_login_everything_is_missing(auth_world: World) -> None:
    """The reference reads a 401 as "not there": the base is missing."""
    world = auth_world
    world.up_to_date(base_layers=BASE_LAYERS)
    result = world.run()
    failed(result, f"Missing base image: {world.ref('base:1')}\n")


def test_login_variable_needs_three_fields(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("app\tapp")
    result = world.run(env={"DOCKER_LOGIN_X": "registry.example only-user"})
    failed(result, "DOCKER_LOGIN_X requires 3 fields: registry user password\n")


# ----------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------


def test_build_failure_exit_code(world: World) -> None:
    two_images(world)
    result = world.run("--all", env={"DOCKER_DOUBLE_FAIL": "one=3"})
    assert result.returncode == 3
    assert result.stderr == ""
    assert result.stdout == announced(world.ref("one"), REASON_FORCED) + (
        f"double: failed {world.ref('one:latest')}\n"
    )
    assert world.built() == [world.ref("one:latest")]


def test_docker_missing(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("app\tapp")
    world.commit()
    (world.bin / "docker").unlink()
    env = {"PATH": f"{world.bin}:{os.path.dirname(sys.executable)}"}
    result = world.run("--all", env=env)
    assert result.returncode == 1
    assert result.stdout == announced(world.ref("app"), REASON_FORCED)
    assert result.stderr == (
        "Can't run docker: [Errno 2] No such file or directory: 'docker'\n"
    )
