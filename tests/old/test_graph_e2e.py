"""Images built from images of the same file: build order, an honest dry
run, failures that skip dependents, parallel builds, --explain."""

from __future__ import annotations

import os

import pytest
from conftest import (
    BASE_LAYER,
    REASON_FILES,
    REASON_FORCED,
    REASON_GIT,
    T_COMMIT,
    T_IMAGE,
    T_LATER,
    World,
    announced,
    failed,
    utc,
)
from imagetools import new_layer

BASE = [BASE_LAYER]


def chain(world: World) -> None:
    """tool (listed first) on middle on root, root on a registry base;
    everything up to date, committed at T_COMMIT."""
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE)
    world.dockerfile("tool", "$DOCKER_REPOSITORY/middle")
    world.dockerfile("middle", "${DOCKER_REPOSITORY}/root")
    world.dockerfile("root", base)
    world.dockerfile("other", base)
    world.config("tool\ttool", "middle\tmiddle", "other\tother", "root\troot")
    world.commit()
    root = [*BASE, new_layer("root")]
    middle = [*root, new_layer("middle")]
    world.registry.push(world.ref("root"), T_IMAGE, root)
    world.registry.push(world.ref("middle"), T_IMAGE, middle)
    world.registry.push(world.ref("tool"), T_IMAGE, [*middle, new_layer("tool")])
    world.registry.push(world.ref("other"), T_IMAGE, [*BASE, new_layer("other")])


def touch_root(world: World) -> None:
    world.write("root/new", "x\n")
    world.commit(when=T_LATER)


def expected_chain(world: World) -> str:
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


@pytest.mark.also_sequential
def test_dry_run_reports_dependents(world: World) -> None:
    chain(world)
    assert world.run().stdout == ""
    touch_root(world)
    result = world.run("-n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == expected_chain(world)
    assert world.calls() == []


def test_dependents_are_built_after_their_base(world: World) -> None:
    chain(world)
    touch_root(world)
    result = world.run()
    assert (result.returncode, result.stderr) == (0, "")
    pushed = [world.ref(f"{name}:latest") for name in ("root", "middle", "tool")]
    assert world.built() == pushed
    blocks = expected_chain(world).split("\n\n")[:-1]
    assert result.stdout == "".join(
        f"{block}\n\ndouble: pushed {tag}\n\n"
        for block, tag in zip(blocks, pushed, strict=True)
    )
    assert world.run().stdout == ""


def test_forcing_a_base_propagates(world: World) -> None:
    chain(world)
    result = world.run("-n", "middle")
    assert result.stdout == announced(world.ref("middle"), REASON_FORCED) + announced(
        world.ref("tool"), f"Base image will be rebuilt: {world.ref('middle:latest')}"
    )


def test_failed_base_skips_dependents(world: World) -> None:
    chain(world)
    touch_root(world)
    world.write("other/new", "x\n")
    world.commit(when=T_LATER)
    env = {"DOCKER_DOUBLE_FAIL": "/root:=7"}
    result = world.run("--build-jobs", "2", env=env)
    assert (result.returncode, result.stderr) == (7, "")
    assert sorted(world.built()) == [
        world.ref("other:latest"),
        world.ref("root:latest"),
    ]
    assert result.stdout.endswith(
        "\nBuilt: " + world.ref("other")
        + "\nFailed: " + world.ref("root") + " (exit 7)"
        + "\nSkipped: " + world.ref("middle") + ", " + world.ref("tool") + "\n"
    )  # fmt: skip
    assert f"[{world.ref('root')}] double: failed {world.ref('root:latest')}\n" in (
        result.stdout
    )


def test_failure_stops_a_sequential_run(world: World) -> None:
    chain(world)
    touch_root(world)
    result = world.run(env={"DOCKER_DOUBLE_FAIL": "/root:=7"})
    assert (result.returncode, result.stderr) == (7, "")
    assert result.stdout == (
        announced(world.ref("root"), REASON_GIT)
        + f"double: failed {world.ref('root:latest')}\n"
    )


def test_independent_images_build_concurrently(world: World) -> None:
    world.dockerfile("one", "scratch")
    world.dockerfile("two", "scratch")
    world.config("one\tone", "two\ttwo")
    world.commit()
    result = world.run("--build-jobs", "2", env={"DOCKER_DOUBLE_SLEEP": "1"})
    assert (result.returncode, result.stderr) == (0, "")
    one, two = world.calls()
    assert one["start"] < two["end"] and two["start"] < one["end"]
    assert result.stdout.endswith(
        f"\nBuilt: {world.ref('one')}, {world.ref('two')}\nFailed: -\nSkipped: -\n"
    )


def test_cycle_is_an_error(world: World) -> None:
    world.dockerfile("a", "$DOCKER_REPOSITORY/b")
    world.dockerfile("b", "$DOCKER_REPOSITORY/a")
    world.config("a\ta", "b\tb")
    result = world.run("-n")
    failed(result, "Dependency cycle: a -> b -> a\n")


@pytest.mark.also_sequential
def test_explain(world: World) -> None:
    chain(world)
    world.write("other/new", "x\n", mtime=T_LATER)
    for path in ("other", "other/Dockerfile"):
        os.utime(world.root / path, (T_COMMIT, T_COMMIT))
    result = world.run("--explain", "-n")
    assert result.returncode == 0
    assert result.stdout == announced(world.ref("other"), REASON_FILES)
    created, committed = utc(T_IMAGE), utc(T_COMMIT)
    up_to_date = (
        f"image created {created}; base layer found; "
        f"context changed {committed} (commit); up to date"
    )
    assert result.stderr.splitlines() == [
        f"{world.ref('other')}: image created {created}; base layer found; "
        f"context changed {utc(T_LATER)} (mtime); {REASON_FILES}",
        f"{world.ref('root')}: {up_to_date}",
        f"{world.ref('middle')}: {up_to_date}",
        f"{world.ref('tool')}: {up_to_date}",
    ]
