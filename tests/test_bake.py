"""Stage: the bake file (--output bake). The bake target fields of build
options, target names, the names BuildKit looks named contexts up by, the
rule by which a record written to a bake file names an image the same file
builds (and the check of it on the next run), and the bake document of a
plan; end to end, the document of a real graph checked against bake's file
format and against a dry run, and the document "run" with the docker double
(each target one `docker buildx build`), after which the tool builds
nothing until a dependency changes."""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import jsonschema
import pytest
from conftest import (
    AMD,
    BASE_LAYERS,
    REPOS,
    T_COMMIT,
    T_LATER,
    World,
    failed,
    fatal_message,
    load_tool,
    make_image,
    rebuilt,
    succeeded,
)

db = load_tool()

FORCED = db.Cause(db.Reason.FORCED)
BOTH = ("linux/amd64", "linux/arm64")
DIGEST_1 = "sha256:" + "1" * 64
DIGEST_2 = "sha256:" + "2" * 64
TOOL = "ghcr.io/o/tool:latest"
LIB = "ghcr.io/o/lib:1"
CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
T_CREATED = CREATED.timestamp()
NO_IMAGES_LABEL = db.Inputs("sha256:c", "sha256:o", {}).label


def sha256_reference(label: str) -> str:
    """The inputs reference of a label, computed here."""
    return "inputs:sha256:" + hashlib.sha256(label.encode()).hexdigest()


# ----------------------------------------------------------------------------
# Bake's file format (JSON), as its reference documents the fields
# ----------------------------------------------------------------------------

BAKE_NAME = "^[a-zA-Z0-9_-]+$"
STRINGS = {"type": "array", "items": {"type": "string"}}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}
# args and labels may hold null: the Dockerfile's value then
STRING_MAP = {"type": "object", "additionalProperties": {"type": ["string", "null"]}}
BAKE_TARGET = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "annotations": STRINGS,
        "args": STRING_MAP,
        "attest": STRINGS,
        "cache-from": STRINGS,
        "cache-to": STRINGS,
        "call": STRING,
        "context": STRING,
        "contexts": {"type": "object", "additionalProperties": STRING},
        "description": STRING,
        "dockerfile": STRING,
        "dockerfile-inline": STRING,
        "entitlements": STRINGS,
        "inherits": STRINGS,
        "labels": STRING_MAP,
        "network": STRING,
        "no-cache": BOOLEAN,
        "no-cache-filter": STRINGS,
        "output": STRINGS,
        "platforms": STRINGS,
        "pull": BOOLEAN,
        "secret": STRINGS,
        "shm-size": STRING,
        "ssh": STRINGS,
        "tags": STRINGS,
        "target": STRING,
        "ulimits": STRINGS,
    },
}
BAKE_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["group", "target"],
    "properties": {
        "group": {
            "type": "object",
            "propertyNames": {"pattern": BAKE_NAME},
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["targets"],
                "properties": {"targets": STRINGS},
            },
        },
        "target": {
            "type": "object",
            "propertyNames": {"pattern": BAKE_NAME},
            "additionalProperties": BAKE_TARGET,
        },
    },
}


def check_bake_file(document: dict) -> None:
    """A bake file by the schema, whose default group names each of its
    targets once."""
    validator = jsonschema.Draft202012Validator(BAKE_SCHEMA)
    validator.check_schema(BAKE_SCHEMA)
    validator.validate(document)
    targets = document["group"]["default"]["targets"]
    assert sorted(targets) == sorted(document["target"])


@pytest.mark.parametrize(
    "broken",
    [
        {"target": {}},  # no group
        {"group": {"default": {"targets": []}}, "target": {"a.b": {}}},
        {"group": {"default": {"targets": []}}, "target": {"a": {"push": True}}},
        {"group": {"default": {"targets": []}}, "target": {"a": {"no-cache": "1"}}},
        {"group": {"default": {"targets": []}}, "target": {"a": {"tags": "x"}}},
        {"group": {"default": {"targets": "a"}}, "target": {}},
        {"group": {"default": {"targets": []}}, "target": {}, "x": 1},
    ],
    ids=["no-group", "name", "unknown-field", "boolean", "list", "group", "key"],
)
def test_bake_schema_rejects(broken):
    with pytest.raises(jsonschema.ValidationError):
        check_bake_file(broken)


# ----------------------------------------------------------------------------
# bake_fields: build options as bake target fields
# ----------------------------------------------------------------------------


# Options whose field is a list, each given once but --cache-from.
LIST_OPTIONS = (
    "--cache-from", "type=registry,ref=c", "--cache-to=type=inline",
    "--secret", "id=s,src=f", "--ssh", "default", "--allow", "network.host",
    "--annotation", "k=v", "--attest", "type=sbom", "--no-cache-filter",
    "stage", "--ulimit", "nofile=1024:1024", "--cache-from", "type=local,src=d",
)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        ((), {}),
        (
            ("--build-arg", "X=1", "--build-arg=Y=a=b", "--build-arg", "X=3"),
            {"args": {"X": "3", "Y": "a=b"}},
        ),
        # without a value: the one read from the environment, else none
        (("--build-arg", "HOME", "--build-arg", "UNSET"), {"args": {"HOME": "/h"}}),
        (("-f", "ctx/sub/Dockerfile.x"), {"dockerfile": "sub/Dockerfile.x"}),
        (("--file=other/Dockerfile",), {"dockerfile": "../other/Dockerfile"}),
        (("-fctx/Dockerfile",), {"dockerfile": "Dockerfile"}),
        (("-f=/abs/Dockerfile",), {"dockerfile": "/abs/Dockerfile"}),
        (("--target", "a", "--target=b"), {"target": "b"}),
        (
            ("--platform", "linux/amd64, linux/ARM64", "--platform=linux/amd64"),
            {"platforms": ["linux/amd64", "linux/arm64"]},
        ),
        (("--label", "a=b", "--label", "c"), {"labels": {"a": "b", "c": ""}}),
        (("-t", "x:1", "--tag=y:2", "-tz:3"), {"tags": ["x:1", "y:2", "z:3"]}),
        (("--no-cache", "--pull"), {"no-cache": True, "pull": True}),
        (("--pull=false", "--no-cache=1"), {"pull": False, "no-cache": True}),
        (("--push", "--push=true"), {}),  # what the output does anyway
        (
            ("--network", "host", "--shm-size=2g"),
            {"network": "host", "shm-size": "2g"},
        ),
        (
            LIST_OPTIONS,
            {
                "cache-from": ["type=registry,ref=c", "type=local,src=d"],
                "cache-to": ["type=inline"],
                "secret": ["id=s,src=f"],
                "ssh": ["default"],
                "entitlements": ["network.host"],
                "annotations": ["k=v"],
                "attest": ["type=sbom"],
                "no-cache-filter": ["stage"],
                "ulimits": ["nofile=1024:1024"],
            },
        ),
        (("--build-context", "src=../src"), {"contexts": {"src": "../src"}}),
    ],
    ids=[
        "none",
        "build-args",
        "build-args-from-environment",
        "file-in-context",
        "file-beside-context",
        "file-attached",
        "file-absolute",
        "target",
        "platforms",
        "labels",
        "tags",
        "flags",
        "flag-values",
        "push",
        "strings",
        "lists",
        "build-context",
    ],
)
def test_bake_fields(options, fields):
    """Each option as its field (-f relative to the context ctx); the
    fields are valid in a bake target."""
    assert db.bake_fields(options, (("HOME", "/h"),), "ctx") == fields
    jsonschema.validate({"context": "ctx", **fields}, BAKE_TARGET)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        (("--progress", "plain"), "--progress"),
        (("-o", "type=local,dest=d"), "-o"),
        (("--output=type=tar",), "--output"),
        (("--load",), "--load"),
        (("-q",), "-q"),
        (("--iidfile", "f"), "--iidfile"),
        (("--provenance=1",), "--provenance"),
        (("--builder", "b"), "--builder"),
        (("--add-host=h:1.2.3.4",), "--add-host"),
    ],
)
def test_bake_fields_option_without_field(options, option):
    with pytest.raises(ValueError) as info:
        db.bake_fields(("--pull", *options), (), "ctx")
    assert str(info.value) == f"build option {option} has no bake file equivalent"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--pull", "--target"), "build option --target needs a value"),
        (("--pull=maybe",), "build option --pull=maybe: not true or false"),
        (("ctx",), "'ctx' is not a build option"),
        (("-",), "'-' is not a build option"),
    ],
)
def test_bake_fields_refused(options, message):
    with pytest.raises(ValueError) as info:
        db.bake_fields(options, (), "ctx")
    assert str(info.value) == message


# ----------------------------------------------------------------------------
# Target names, and the names BuildKit looks named contexts up by
# ----------------------------------------------------------------------------


def test_bake_target_names():
    """The shown name, made of what bake takes; unique in order."""
    images = [
        make_image("base"),
        make_image("ghcr.io/o/one:v2"),
        make_image("ghcr.io/o/a.b"),
        make_image("ghcr.io/o/a-b"),
        make_image("ghcr.io/o/a-b-2"),
        make_image("localhost:5000/x__y"),
    ]
    targets = [t for image in images for t in db.image_targets(image, REPOS)]
    names = db.bake_target_names(targets)
    assert list(names.values()) == [
        "docker-io-user-base",
        "ghcr-io-o-base",
        "ghcr-io-o-one-v2",
        "ghcr-io-o-a-b",
        "ghcr-io-o-a-b-2",
        "ghcr-io-o-a-b-2-2",
        "localhost-5000-x__y",
    ]
    assert list(names) == [target.key for target in targets]
    assert all(re.fullmatch(BAKE_NAME, name) for name in names.values())


@pytest.mark.parametrize(
    ("reference", "name"),
    [
        ("ghcr.io/o/base:latest", "ghcr.io/o/base"),
        ("ghcr.io/o/base:1", "ghcr.io/o/base:1"),
        ("docker.io/user/base:latest", "user/base"),
        ("docker.io/library/alpine:3", "alpine:3"),
        ("index.docker.io/library/alpine:latest", "alpine"),
        ("alpine", "alpine"),
        ("docker.io/library/a/b:latest", "library/a/b"),
        ("localhost:5000/ns/x:latest", "localhost:5000/ns/x"),
        (f"ghcr.io/o/x:latest@{DIGEST_1}", f"ghcr.io/o/x:latest@{DIGEST_1}"),
        (f"ghcr.io/o/x@{DIGEST_1}", f"ghcr.io/o/x@{DIGEST_1}"),
    ],
)
def test_familiar_name(reference, name):
    assert db.familiar_name(reference) == name


# ----------------------------------------------------------------------------
# The rule: a record from a bake file names an image the same file builds
# by its inputs; the next run compares that with the image's label then
# ----------------------------------------------------------------------------


def test_inputs_reference():
    assert db.inputs_reference(NO_IMAGES_LABEL) == sha256_reference(NO_IMAGES_LABEL)
    assert db.inputs_reference(NO_IMAGES_LABEL) != db.inputs_reference(
        db.Inputs("sha256:d", "sha256:o", {}).label
    )


def test_baked_inputs():
    """An image built before (None) is named by the inputs reference of
    what its build records; the others keep their digests."""
    inputs = db.Inputs("sha256:c", "sha256:o", {TOOL: None, LIB: DIGEST_1})
    tool_key = db.parse_reference(TOOL).key
    assert db.baked_inputs(inputs, {tool_key: NO_IMAGES_LABEL}) == db.Inputs(
        "sha256:c",
        "sha256:o",
        {TOOL: sha256_reference(NO_IMAGES_LABEL), LIB: DIGEST_1},
    )


def labelled(label: str | None, digest: str = DIGEST_1):
    return db.ImageInfo(CREATED, ("sha256:b",), digest, label)


OTHER_LABEL = db.Inputs("sha256:d", "sha256:o", {}).label


@pytest.mark.parametrize(
    ("found", "platforms", "label"),
    [
        ({"linux/amd64": labelled(NO_IMAGES_LABEL)}, AMD, NO_IMAGES_LABEL),
        (dict.fromkeys(BOTH, labelled(NO_IMAGES_LABEL)), BOTH, NO_IMAGES_LABEL),
        (
            {
                "linux/amd64": labelled(NO_IMAGES_LABEL),
                "linux/arm64": labelled(OTHER_LABEL),
            },
            BOTH,
            None,
        ),
        (
            {
                "linux/amd64": labelled(NO_IMAGES_LABEL),
                "linux/arm64": labelled(OTHER_LABEL),
            },
            ("linux/arm64",),
            OTHER_LABEL,
        ),
        ({"linux/amd64": labelled(None)}, AMD, None),
        ({"linux/amd64": None}, AMD, None),
        (None, AMD, None),
    ],
    ids=[
        "one",
        "all-agree",
        "differ",
        "pulled-for-one",
        "no-label",
        "no-platform",
        "no-image",
    ],
)
def test_pulled_label(found, platforms, label):
    assert db.pulled_label(found, platforms) == label


BAKED = db.Inputs(
    "sha256:c", "sha256:o", {TOOL: sha256_reference(NO_IMAGES_LABEL), LIB: DIGEST_1}
)


def now(tool_label: str | None, tool_digest: str = DIGEST_2) -> db.Inputs:
    """The current inputs: tool (pulled) with that label and digest."""
    return db.Inputs(
        "sha256:c",
        "sha256:o",
        {TOOL: tool_digest, LIB: DIGEST_1},
        {TOOL: tool_label, LIB: None},
    )


@pytest.mark.parametrize(
    ("recorded", "current", "finding"),
    [
        # still the image built with those inputs (whatever its digest)
        (BAKED, now(NO_IMAGES_LABEL), None),
        # the same inputs, built again (by the bake file, say)
        (BAKED, now(NO_IMAGES_LABEL, DIGEST_1), None),
        # rebuilt with other inputs, or by something without the record
        (BAKED, now(OTHER_LABEL), db.Cause(db.Reason.IMAGE, TOOL)),
        (BAKED, now(None), db.Cause(db.Reason.IMAGE, TOOL)),
        # the build no longer pulls it
        (
            BAKED,
            db.Inputs("sha256:c", "sha256:o", {LIB: DIGEST_1}),
            db.Cause(db.Reason.IMAGE, TOOL),
        ),
        # a record of digests is compared with digests, not labels
        (
            db.Inputs("sha256:c", "sha256:o", {TOOL: DIGEST_1, LIB: DIGEST_1}),
            now(NO_IMAGES_LABEL),
            db.Cause(db.Reason.IMAGE, TOOL),
        ),
        (
            db.Inputs("sha256:c", "sha256:o", {TOOL: DIGEST_2, LIB: DIGEST_1}),
            now(OTHER_LABEL),
            None,
        ),
    ],
    ids=[
        "same-inputs",
        "same-inputs-rebuilt",
        "other-inputs",
        "no-record",
        "no-longer-pulled",
        "digests-differ",
        "digests-agree",
    ],
)
def test_inputs_evidence_of_a_bake_record(recorded, current, finding):
    """An inputs reference agrees with the image's label now; the
    finding names the image as any other changed image."""
    evidence = db.Evidence(None, T_CREATED, True)
    assert db.inputs_evidence(evidence, recorded, current, "NONE") == db.Evidence(
        finding, T_CREATED, True, recorded=recorded, current=current
    )


def test_describe_evidence_of_a_bake_record():
    """--explain shows the image now in the record's form."""
    baked = sha256_reference(NO_IMAGES_LABEL)
    other = sha256_reference(OTHER_LABEL)
    for current, shown in [
        (now(NO_IMAGES_LABEL), f"image {TOOL} {baked}; up to date"),
        (
            now(OTHER_LABEL),
            f"image {TOOL} {baked} -> {other}; Image used by the build changed: {TOOL}",
        ),
        (
            now(None),
            f"image {TOOL} {baked} -> none; Image used by the build changed: {TOOL}",
        ),
    ]:
        evidence = db.inputs_evidence(
            db.Evidence(None, T_CREATED, True), BAKED, current, "NONE"
        )
        assert db.describe_evidence(evidence) == (
            "image created 2024-01-02T03:04:05Z; base layer found; "
            f"context sha256:c; options sha256:o; image {LIB} {DIGEST_1}; {shown}"
        )


# ----------------------------------------------------------------------------
# bake_document: a plan's builds as a bake file
# ----------------------------------------------------------------------------


def plan_of(
    images: Sequence[db.Image],
    repositories: Sequence[str] = REPOS,
    forced: Callable[[db.Image], bool] = lambda image: True,
) -> db.Plan:
    """The plan of the images in build order: the forced ones are rebuilt,
    each recording context sha256:c, options sha256:o and, for an image it
    pulls, DIGEST_1, or None when that is rebuilt before it (as the
    planner gives them); the others are up to date."""
    rebuilt: set[tuple[str, str, str]] = set()
    planned = []
    for node in db.build_order(db.image_graph(images, repositories, forced)):
        decisions = []
        for target in node.targets:
            pulled = {
                image: None if db.lookup_key(image) in rebuilt else DIGEST_1
                for image in target.used_images
            }
            inputs = db.Inputs("sha256:c", "sha256:o", pulled)
            decisions.append(
                db.Decision(target, FORCED, inputs=inputs)
                if node.forced
                else db.Decision(target, None)
            )
        if node.forced:
            rebuilt.update(target.key for target in node.targets)
        planned.append(db.ImagePlan(node, tuple(decisions)))
    return db.Plan(tuple(planned))


def uses(image: db.Image, *used: str) -> db.Image:
    """The image, pulling `used` (on linux/amd64) besides its base."""
    return dataclasses.replace(image, uses=tuple(("linux/amd64", u) for u in used))


BASE = make_image("base", "alpine:3", "base")
TOOLS = make_image("tools", "$DOCKER_REPOSITORY/base", "tools")
APP = uses(
    make_image(
        "app",
        "alpine:3",
        "app",
        ("--build-arg", "V=2", "--target", "final", "-f", "app/Dockerfile.app",
         "--label", "a=b", "--platform", "linux/amd64,linux/arm64"),
        BOTH,
    ),
    "$DOCKER_REPOSITORY/tools:latest",
    "alpine:3",
)  # fmt: skip
FULL = make_image("ghcr.io/x/full:2", "debian:12", "full", ("-t", "x/full:2", "--pull"))


def labels(images: dict, base: str) -> dict[str, str]:
    """The tool's labels of a build on `base` that records `images`."""
    digest = images.get(base)
    found = {"org.opencontainers.image.base.digest": digest} if digest else {}
    return {
        "docker_build.inputs": db.Inputs("sha256:c", "sha256:o", images).label,
        "org.opencontainers.image.base.name": base,
        **found,
    }


def test_bake_document():
    """A target per target, in build order; FROM and --from images of the
    file are named contexts of their targets; a record names an image of
    the file by its inputs reference."""
    document = db.bake_document(plan_of([APP, TOOLS, BASE, FULL]), "conf")

    def base(repository: str) -> dict:
        return {
            "context": "base",
            "tags": [f"{repository}/base:latest"],
            "labels": labels({}, "alpine:3"),
            "output": ["type=registry"],
        }

    def tools(repository: str, familiar: str, name: str) -> dict:
        return {
            "context": "tools",
            "args": {"DOCKER_REPOSITORY": repository},
            "tags": [f"{repository}/tools:latest"],
            "labels": labels({}, f"{repository}/base:latest"),
            "output": ["type=registry"],
            "contexts": {f"{familiar}/base": f"target:{name}-base"},
        }

    def app(repository: str, familiar: str, name: str) -> dict:
        return {
            "context": "app",
            # it pulls $DOCKER_REPOSITORY/tools: the argument is passed
            "args": {"DOCKER_REPOSITORY": repository, "V": "2"},
            "target": "final",
            "dockerfile": "Dockerfile.app",
            "labels": {
                "a": "b",
                **labels(
                    {
                        "alpine:3": DIGEST_1,
                        f"{repository}/tools:latest": sha256_reference(NO_IMAGES_LABEL),
                    },
                    "alpine:3",
                ),
            },
            "platforms": ["linux/amd64", "linux/arm64"],
            "tags": [f"{repository}/app:latest"],
            "output": ["type=registry"],
            "contexts": {f"{familiar}/tools": f"target:{name}-tools"},
        }

    assert document == {
        "group": {
            "default": {
                "targets": [
                    "docker-io-user-base",
                    "ghcr-io-o-base",
                    "docker-io-user-tools",
                    "ghcr-io-o-tools",
                    "docker-io-user-app",
                    "ghcr-io-o-app",
                    "ghcr-io-x-full-2",
                ]
            }
        },
        "target": {
            "docker-io-user-base": base("docker.io/user"),
            "ghcr-io-o-base": base("ghcr.io/o"),
            "docker-io-user-tools": tools("docker.io/user", "user", "docker-io-user"),
            "ghcr-io-o-tools": tools("ghcr.io/o", "ghcr.io/o", "ghcr-io-o"),
            "docker-io-user-app": app("docker.io/user", "user", "docker-io-user"),
            "ghcr-io-o-app": app("ghcr.io/o", "ghcr.io/o", "ghcr-io-o"),
            "ghcr-io-x-full-2": {
                "context": "full",
                "tags": ["ghcr.io/x/full:2", "x/full:2"],
                "pull": True,
                "labels": labels({}, "debian:12"),
                "output": ["type=registry"],
            },
        },
    }
    check_bake_file(document)
    # key order does not matter to bake, but reads better the same each time
    assert list(document["target"]["ghcr-io-o-tools"]) == [
        "context", "args", "tags", "labels", "output", "contexts",
    ]  # fmt: skip


def test_bake_document_images_not_built_are_pulled():
    """Only the app is rebuilt: its base and tools come from the registry
    (no named context), and its record keeps their digests."""
    document = db.bake_document(
        plan_of([BASE, TOOLS, APP], ["ghcr.io/o"], lambda image: image is APP),
        "conf",
    )
    assert document["group"] == {"default": {"targets": ["ghcr-io-o-app"]}}
    app = document["target"]["ghcr-io-o-app"]
    assert "contexts" not in app
    assert app["labels"] == {
        "a": "b",
        **labels(
            {"alpine:3": DIGEST_1, "ghcr.io/o/tools:latest": DIGEST_1}, "alpine:3"
        ),
    }


def test_bake_document_a_context_the_options_name_wins():
    """A --build-context for an image of the file is what a run of the
    tool builds with: the bake file keeps it."""
    tools = make_image(
        "tools",
        "$DOCKER_REPOSITORY/base",
        "tools",
        ("--build-context", "ghcr.io/o/base=docker-image://ghcr.io/o/base:1"),
    )
    document = db.bake_document(plan_of([BASE, tools], ["ghcr.io/o"]), "conf")
    assert document["target"]["ghcr-io-o-tools"]["contexts"] == {
        "ghcr.io/o/base": "docker-image://ghcr.io/o/base:1"
    }


def test_bake_document_nothing_to_build():
    """An empty group when nothing is rebuilt, or nothing is planned."""
    empty = {"group": {"default": {"targets": []}}, "target": {}}
    assert db.bake_document(plan_of([]), "conf") == empty
    assert db.bake_document(plan_of([BASE], forced=lambda image: False), "c") == empty
    check_bake_file(empty)


@pytest.mark.parametrize(
    "forced", [lambda image: True, lambda image: False], ids=["rebuilt", "up-to-date"]
)
def test_bake_document_option_without_field(forced):
    """One line naming the file, the image's line, the image and the
    option; also for an image that is not rebuilt this time."""
    img = dataclasses.replace(
        make_image("img", options=("--pull", "--progress=plain")), line=3
    )
    assert fatal_message(
        db.bake_document, plan_of([BASE, img], REPOS, forced), "conf"
    ) == ("conf line 3: img: build option --progress has no bake file equivalent")


# ----------------------------------------------------------------------------
# End to end: a real graph
# ----------------------------------------------------------------------------

MULTI_DOCKERFILE = """\
ARG DOCKER_REPOSITORY
FROM $DOCKER_REPOSITORY/base AS final
ARG VERSION
COPY --from=$DOCKER_REPOSITORY/child / /opt
FROM scratch AS debug
"""


def bake_graph(world: World) -> tuple[str, str]:
    """base (on the registry's upstream:1), child on $DOCKER_REPOSITORY/base
    and multi (its Dockerfile elsewhere, built to the stage final on
    $DOCKER_REPOSITORY/base, copying from $DOCKER_REPOSITORY/child), for the
    repositories r1 and r2; a global label for the last two. Committed,
    nothing pushed; returns r1 and r2."""
    r1, r2 = world.ref("r1"), world.ref("r2")
    world.env["DOCKER_REPOSITORY"] = f"{r1} {r2}"
    upstream = world.ref("upstream:1")
    world.registry.push(upstream, T_COMMIT, BASE_LAYERS)
    world.dockerfile("base", upstream)
    world.dockerfile("child", "$DOCKER_REPOSITORY/base")
    world.write("multi/file", "x\n")
    world.write("files/Dockerfile.multi", MULTI_DOCKERFILE)
    world.config(
        "base\tbase",
        "--label team=build",
        "child\tchild",
        "multi\tmulti\t--build-arg VERSION=2 --target final -f files/Dockerfile.multi",
    )
    world.commit()
    return r1, r2


def bake_file(world: World, *args: str) -> dict:
    """The bake file of a run that succeeds, checked by bake's format."""
    result = world.run("--output", "bake", *args)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    check_bake_file(document)
    return document


def built_names(document: dict) -> list[str]:
    """The full name each target of the default group pushes, in order."""
    return [
        document["target"][name]["tags"][0]
        for name in document["group"]["default"]["targets"]
    ]


def target_pushing(document: dict, full_name: str) -> str:
    (name,) = (n for n, t in document["target"].items() if t["tags"][0] == full_name)
    return name


def test_bake_file_of_a_graph(world: World) -> None:
    """The targets are what a dry run builds, in its order; what is
    printed for people (the dry run's lines) goes to stderr; the
    fields of each target are its build's."""
    r1, r2 = bake_graph(world)
    dry = world.run("-n")
    result = world.run("--output", "bake")
    assert (result.returncode, result.stderr) == (0, dry.stdout)
    document = json.loads(result.stdout)
    check_bake_file(document)
    shown = re.findall(r"^\*\*\* (.*)$", dry.stdout, re.M)
    assert built_names(document) == [f"{name}:latest" for name in shown]
    assert shown == [
        f"{r1}/base", f"{r2}/base", f"{r1}/child", f"{r2}/child",
        f"{r1}/multi", f"{r2}/multi",
    ]  # fmt: skip
    assert world.calls() == []
    assert not Path(f"{world.log}.probes").exists()  # docker is not asked
    for repository in (r1, r2):
        base = target_pushing(document, f"{repository}/base:latest")
        child = target_pushing(document, f"{repository}/child:latest")
        multi = document["target"][
            target_pushing(document, f"{repository}/multi:latest")
        ]
        child_label = document["target"][child]["labels"]["docker_build.inputs"]
        base_label = document["target"][base]["labels"]["docker_build.inputs"]
        inputs = json.loads(multi["labels"].pop("docker_build.inputs"))
        assert inputs["images"] == {
            f"{repository}/base:latest": sha256_reference(base_label),
            f"{repository}/child": sha256_reference(child_label),
        }
        assert multi == {
            "context": "multi",
            "args": {"DOCKER_REPOSITORY": repository, "VERSION": "2"},
            # no base digest: the base is built by the same bake file
            "labels": {
                "team": "build",
                "org.opencontainers.image.base.name": f"{repository}/base:latest",
            },
            "target": "final",
            "dockerfile": "../files/Dockerfile.multi",
            "tags": [f"{repository}/multi:latest"],
            "output": ["type=registry"],
            "contexts": {
                f"{repository}/base": f"target:{base}",
                f"{repository}/child": f"target:{child}",
            },
        }
        base_target = document["target"][base]
        inputs = json.loads(base_target["labels"].pop("docker_build.inputs"))
        upstream = world.ref("upstream:1")
        digest = world.registry.digest(upstream)
        assert inputs["images"] == {upstream: digest}
        assert base_target == {  # the global label is for the images below it
            "context": "base",
            "tags": [f"{repository}/base:latest"],
            "labels": {
                "org.opencontainers.image.base.name": upstream,
                "org.opencontainers.image.base.digest": digest,
            },
            "output": ["type=registry"],
        }


# What a bake target may hold for run_bake to build it as bake would.
RUN_BAKE_FIELDS = {
    "context", "dockerfile", "target", "tags", "args", "labels", "contexts",
    "output",
}  # fmt: skip


def run_bake(world: World, document: dict) -> None:
    """Build the default group as bake would, with the docker double: each
    target one `docker buildx build` with its fields, in group order; a
    named context must be a target built before it."""
    done: list[str] = []
    for name in document["group"]["default"]["targets"]:
        target = document["target"][name]
        assert set(target) <= RUN_BAKE_FIELDS
        assert target["output"] == ["type=registry"]
        assert all(
            value.removeprefix("target:") in done
            for value in target.get("contexts", {}).values()
        )
        argv = ["buildx", "build"]
        for arg, value in target.get("args", {}).items():
            argv += ["--build-arg", f"{arg}={value}"]
        if "target" in target:
            argv += ["--target", target["target"]]
        dockerfile = target.get("dockerfile", "Dockerfile")
        argv += ["--file", os.path.join(target["context"], dockerfile)]
        for label, value in target["labels"].items():
            argv += ["--label", f"{label}={value}"]
        (tag,) = target["tags"]
        argv += ["--push", "--tag", tag, target["context"]]
        docker = subprocess.run(
            [str(world.bin / "docker"), *argv],
            cwd=world.root,
            env=world.env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert docker.returncode == 0, docker.stderr
        done.append(name)


def test_built_from_a_bake_file_is_up_to_date(world: World) -> None:
    """Built from the bake file, nothing is out of date (a bake file then
    has an empty group); a change of the base rebuilds it, the child and
    multi (which copies from the child)."""
    r1, r2 = bake_graph(world)
    run_bake(world, bake_file(world))
    assert len(world.calls()) == 6
    succeeded(world.run())
    empty = world.run("--output", "bake")
    assert (empty.returncode, empty.stderr) == (0, "")
    assert json.loads(empty.stdout) == {
        "group": {"default": {"targets": []}},
        "target": {},
    }
    world.write("base/new", "x\n")
    world.commit(when=T_LATER)
    expected = [rebuilt(f"{r}/base", "Build context changed") for r in (r1, r2)]
    expected += [
        rebuilt(f"{r}/{name}", f"Base image will be rebuilt: {r}/base:latest")
        for name in ("child", "multi")
        for r in (r1, r2)
    ]
    succeeded(world.run(), "".join(expected))
    succeeded(world.run())


def test_built_from_a_bake_file_image_used_replaced(world: World) -> None:
    """After the bake file's builds, r1's child is pushed again by other
    means (no record): multi, which copies from it, is rebuilt, in both
    repositories; the child itself is up to date by its time."""
    r1, r2 = bake_graph(world)
    run_bake(world, bake_file(world))
    run_bake(
        world,
        {
            "group": {"default": {"targets": ["child"]}},
            "target": {
                "child": {
                    "context": "child",
                    # made after the commits, whatever the clock says
                    "args": {
                        "DOCKER_REPOSITORY": r1,
                        "SOURCE_DATE_EPOCH": str(T_LATER),
                    },
                    "tags": [f"{r1}/child:latest"],
                    "labels": {},
                    "output": ["type=registry"],
                }
            },
        },
    )
    reason = f"Image used by the build changed: {r1}/child"
    succeeded(
        world.run(), rebuilt(f"{r1}/multi", reason) + rebuilt(f"{r2}/multi", reason)
    )
    succeeded(world.run())


def test_bake_file_option_without_field(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("--progress=plain", "app\tapp")
    world.commit()
    failed(
        world.run("--output", "bake"),
        "docker_images line 2: app: build option --progress has no bake file "
        "equivalent\n",
    )
    assert world.calls() == []


def test_bake_file_takes_no_lock(world: World) -> None:
    """It builds nothing: a run that is building does not hold it up."""
    world.dockerfile("app", "scratch")
    path = world.config("app\tapp")
    world.commit()
    with open(path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        failed(
            world.run("--no-wait"),
            "docker_images: another docker_build run is using it\n",
        )
        document = bake_file(world, "--no-wait")
    assert built_names(document) == [world.ref("app:latest")]


def test_bake_file_paths_are_those_of_the_builds(world: World) -> None:
    """With --dir, the context and Dockerfile are named as the tool's own
    builds name them: from the directory it changed to."""
    world.dockerfile("sub/app", "scratch")
    world.write("sub/files/Dockerfile.app", "FROM scratch\n")
    world.config("app\tapp\t-f files/Dockerfile.app", name="sub/docker_images")
    world.commit()
    document = bake_file(world, "-C", "sub")
    (target,) = document["target"].values()
    assert (target["context"], target["dockerfile"]) == (
        "app",
        "../files/Dockerfile.app",
    )
