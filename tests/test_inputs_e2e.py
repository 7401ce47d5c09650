"""Decisions by recorded inputs, end to end: the tool builds its images
(recording their inputs), the world changes, and the next run builds
exactly what the change calls for."""

from __future__ import annotations

import json

import imagetools
import pytest
from conftest import (
    BASE_LAYER,
    T_COMMIT,
    T_IMAGE,
    T_LATER,
    World,
    announced,
    rebuilt,
    succeeded,
)

CONTEXT = "Build context changed"
OPTIONS = "Build options changed"
USED = "Image used by the build changed"


def first_build(world: World, *names: str, lines: tuple[str, ...] = ()) -> None:
    """Build every image (each is missing), then check that a second run
    has nothing to do; the double's log starts empty afterwards."""
    world.registry.push(world.ref("base:1"), T_COMMIT, [BASE_LAYER])
    if lines:
        world.config(*lines)
    else:
        world.config(*(f"{name}\t{name}" for name in names))
    if (world.root / ".git").exists():
        world.commit()
    first = world.run()
    assert first.returncode == 0, first.stderr
    assert sorted(world.built()) == sorted(f"{world.ref(n)}:latest" for n in names)
    succeeded(world.run())
    world.log.unlink()


def app(world: World, text: str = "FROM {base}\nCOPY . /\n") -> None:
    world.write("app/Dockerfile", text.format(base=world.ref("base:1")))
    world.write("app/file", "one\n")


def runs_and_builds(world: World, reason: str, name: str = "app") -> None:
    """A dry run predicts the rebuild, and a real run does it, once."""
    predicted = world.run("-n")
    succeeded(predicted, announced(world.ref(name), reason))
    succeeded(world.run(), rebuilt(world.ref(name), reason))
    assert world.built() == [world.ref(name) + ":latest"]
    world.log.unlink()
    succeeded(world.run())
    assert world.calls() == []


def builds_nothing(world: World) -> None:
    succeeded(world.run())
    assert world.calls() == []


def test_label_records_the_inputs(world: World) -> None:
    """Every build gets --label docker_build.inputs=<compact JSON> before
    the tool's own options."""
    app(world)
    world.registry.push(world.ref("base:1"), T_COMMIT, [BASE_LAYER])
    world.config("app\tapp\t--build-arg X=1")
    world.commit()
    succeeded(world.run(), rebuilt(world.ref("app"), "Image missing in repository"))
    argv = world.calls()[0]["argv"]
    label = argv[argv.index("--label") + 1]
    key, _, value = label.partition("=")
    assert key == "docker_build.inputs"
    assert argv[argv.index("--label") + 2 :] == [
        "--push",
        "--tag",
        world.ref("app:latest"),
        "app",
    ]
    recorded = json.loads(value)
    assert sorted(recorded) == ["context", "images", "options", "version"]
    assert recorded["version"] == 1 and recorded["images"] == {}
    assert recorded["context"].startswith("sha256:")
    assert value == json.dumps(recorded, separators=(",", ":"), sort_keys=True)
    config = world.registry.config(world.ref("app"))
    assert config["config"]["Labels"] == {"docker_build.inputs": value}


def test_merge_of_an_old_commit(world: World) -> None:
    """A branch commit older than the image, merged later, is built."""
    app(world)
    first_build(world, "app")
    world.git("checkout", "-q", "-b", "topic")
    world.write("app/file", "two\n")
    world.commit(when=T_COMMIT)
    world.git("checkout", "-q", "-")
    world.git("merge", "-q", "--no-ff", "-m", "merge", "topic", when=T_COMMIT)
    runs_and_builds(world, CONTEXT)


def test_fast_forward_to_an_old_commit(world: World) -> None:
    app(world)
    first_build(world, "app")
    world.git("checkout", "-q", "-b", "topic")
    world.write("app/file", "two\n")
    world.commit(when=T_COMMIT)
    world.git("checkout", "-q", "-")
    world.git("merge", "-q", "--ff-only", "topic", when=T_COMMIT)
    runs_and_builds(world, CONTEXT)


def test_git_ignored_artifact(world: World) -> None:
    """A file docker sends but git ignores is part of the context."""
    app(world, "FROM {base}\nCOPY target/app.jar /\n")
    world.write(".gitignore", "target/\n")
    world.write("app/target/app.jar", "v1\n")
    first_build(world, "app")
    world.write("app/target/app.jar", "v2\n", mtime=T_COMMIT)
    runs_and_builds(world, CONTEXT)


def test_directory_that_git_ignores(world: World) -> None:
    app(world)
    world.write(".gitignore", "app/\n")
    first_build(world, "app")
    world.write("app/Dockerfile", f"FROM {world.ref('base:1')}\nRUN true\n")
    runs_and_builds(world, CONTEXT)


def test_dockerfile_outside_the_context(world: World) -> None:
    world.write("app/file", "one\n")
    world.write("files/app.Dockerfile", f"FROM {world.ref('base:1')}\n")
    first_build(world, "app", lines=("app\tapp\t-f files/app.Dockerfile",))
    world.write("files/app.Dockerfile", f"FROM {world.ref('base:1')}\nRUN true\n")
    world.commit(when=T_COMMIT)
    runs_and_builds(world, CONTEXT)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (("app\tapp\t--build-arg X=1",), ("app\tapp\t--build-arg X=2",)),
        (("--build-arg X=1", "app\tapp"), ("--build-arg X=2", "app\tapp")),
        (("app\tapp\t--target=a",), ("app\tapp\t--target=b",)),
    ],
    ids=["image", "global", "target"],
)
def test_build_options_change(world: World, before, after) -> None:
    base = world.ref("base:1")
    app(world, "FROM {base} AS a\nFROM {base} AS b\n")
    first_build(world, "app", lines=before)
    world.config(*after)
    world.commit(when=T_COMMIT)
    runs_and_builds(world, OPTIONS)
    assert base  # the stages both start from the base


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM {used} AS build\nRUN make\nFROM {base}\nCOPY --from=build /x /\n",
        "FROM {base}\nCOPY --from={used} /x /\n",
        "FROM {base}\nRUN --mount=type=bind,from={used},target=/t true\n",
    ],
    ids=["builder-stage", "copy-from", "run-mount"],
)
def test_image_used_by_the_build_changes(world: World, dockerfile: str) -> None:
    used = world.ref("tools:1")
    world.registry.push(used, T_COMMIT, ["sha256:" + "7" * 64])
    world.write(
        "app/Dockerfile", dockerfile.format(used=used, base=world.ref("base:1"))
    )
    first_build(world, "app")
    world.registry.push(used, T_LATER, ["sha256:" + "8" * 64])
    runs_and_builds(world, f"{USED}: {used}")


def test_change_and_revert(world: World) -> None:
    app(world)
    first_build(world, "app")
    world.write("app/file", "two\n")
    world.commit(when=T_LATER)
    world.write("app/file", "one\n")
    world.commit(when=T_LATER)
    builds_nothing(world)


def test_commit_of_a_dockerignored_file(world: World) -> None:
    app(world)
    world.write("app/.dockerignore", "*.md\n")
    world.write("app/README.md", "one\n")
    first_build(world, "app")
    world.write("app/README.md", "two\n")
    world.commit(when=T_LATER)
    builds_nothing(world)


def test_amend_that_keeps_the_content(world: World) -> None:
    app(world)
    first_build(world, "app")
    world.git("commit", "-q", "--amend", "-m", "reworded", when=T_LATER)
    builds_nothing(world)


def test_reproducible_build_is_steady(world: World) -> None:
    """SOURCE_DATE_EPOCH=0 gives images created in 1970: no endless
    rebuilds."""
    app(world)
    first_build(world, "app", lines=("--build-arg SOURCE_DATE_EPOCH=0", "app\tapp"))
    config = world.registry.config(world.ref("app"))
    assert config["created"].startswith("1970-01-01T00:00:00")
    builds_nothing(world)


def test_base_change_still_rebuilds(world: World) -> None:
    app(world)
    first_build(world, "app")
    world.registry.push(world.ref("base:1"), T_LATER, ["sha256:" + "9" * 64])
    runs_and_builds(world, "Base image has changed")


def test_unknown_label_format_falls_back_to_times(world: World) -> None:
    """An image whose label this version cannot read is decided by times,
    as one without a label."""
    app(world)
    world.registry.push(world.ref("base:1"), T_COMMIT, [BASE_LAYER])
    world.config("app\tapp")
    world.commit(when=T_LATER)
    imagetools.push_image(
        world.ref("app"),
        imagetools.rfc3339(T_IMAGE),
        [BASE_LAYER, imagetools.new_layer("app")],
        labels={"docker_build.inputs": '{"version":99}'},
    )
    succeeded(
        world.run("-n"),
        announced(world.ref("app"), "Git change more recent than image"),
    )
