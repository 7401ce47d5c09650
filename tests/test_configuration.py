"""Configuration: the docker_images file (its lines, fields, global options
and image names), the build options that matter to docker_build, and the
base image read from the Dockerfile (the stage docker buildx builds).

Unit tests work in tmp_path; the end-to-end tests run the tool in a git
world against the real registry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import (
    AMD,
    BASE_LAYERS,
    REASON_BASE,
    ROOT,
    T_COMMIT,
    T_IMAGE,
    T_LATER,
    World,
    announced,
    failed,
    fatal_message,
    load_tool,
    succeeded,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from imagetools import new_layer

db = load_tool()

BOTH = ("linux/amd64", "linux/arm64")
HUB = "registry-1.docker.io"
DIGEST = "sha256:" + "0123456789abcdef" * 4


def image(name="img", tagged=None, directory="d", base="alpine:latest"):
    """An image record as read_config makes it."""
    return db.Image(name, tagged or name + ":latest", directory, base, (), AMD)


# ----------------------------------------------------------------------------
# Image names: image_add_tag, full_image_name, expand_base_image, base keys
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("img", "img:latest"),
        ("img:1.0", "img:1.0"),
        ("img@" + DIGEST, "img@" + DIGEST),
        ("ghcr.io/o/img", "ghcr.io/o/img:latest"),
        ("localhost:5000/img", "localhost:5000/img:latest"),
        ("localhost:5000/img:2", "localhost:5000/img:2"),
        ("$DOCKER_REPOSITORY/base", "$DOCKER_REPOSITORY/base:latest"),
        ("scratch", "scratch"),
        ("NONE", "NONE"),
        ("none", "none:latest"),
        ("user/scratch", "user/scratch:latest"),
    ],
)
def test_image_add_tag(name, expected):
    assert db.image_add_tag(name) == expected


@pytest.mark.parametrize(
    ("name", "repository", "expected"),
    [
        ("ghcr.io/o/img:1", None, "ghcr.io/o/img:1"),
        ("user/img:latest", "ghcr.io/o", "user/img:latest"),
        ("img:1", "ghcr.io/o", "ghcr.io/o/img:1"),
        ("img", "docker.io/user", "docker.io/user/img"),
    ],
)
def test_full_image_name(name, repository, expected):
    assert db.full_image_name(name, repository) == expected


@pytest.mark.parametrize("repository", [None, ""])
def test_full_image_name_without_repository(repository):
    with pytest.raises(ValueError) as info:
        db.full_image_name("img:1", repository)
    assert str(info.value) == "img:1: Missing default repository"


@pytest.mark.parametrize(
    ("base", "target", "expected"),
    [
        (
            "$DOCKER_REPOSITORY/base:latest",
            "ghcr.io/o/img:latest",
            ("ghcr.io/o/base:latest", ["--build-arg", "DOCKER_REPOSITORY=ghcr.io/o"]),
        ),
        (
            "${DOCKER_REPOSITORY}/b:1",
            "docker.io/user/img:latest",
            ("docker.io/user/b:1", ["--build-arg", "DOCKER_REPOSITORY=docker.io/user"]),
        ),
        (
            "$DOCKER_REPOSITORY/a/b:2",
            "localhost:5000/x/y/img:latest",
            (
                "localhost:5000/x/y/a/b:2",
                ["--build-arg", "DOCKER_REPOSITORY=localhost:5000/x/y"],
            ),
        ),
        # other bases are left as they are
        *(
            (base, "ghcr.io/o/img:latest", (base, []))
            for base in (
                "ubuntu:latest",
                "NONE",
                "scratch",
                "$DOCKER_REPOSITORY",
                "$DOCKER_REPOSITORYX/b:latest",
                "${DOCKER_REPOSITORY/b:latest",
                "$OTHER/b:latest",
                "ghcr.io/$DOCKER_REPOSITORY/b:latest",
                "docker_repository/b:latest",
            )
        ),
    ],
)
def test_expand_base_image(base, target, expected):
    assert db.expand_base_image(base, target) == expected


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("NONE", None),
        ("scratch", None),
        ("a___b:latest", None),
        ("x", (HUB, "library/x", "latest")),
        ("docker.io/x:latest", (HUB, "library/x", "latest")),
        ("index.docker.io/library/x", (HUB, "library/x", "latest")),
        ("ghcr.io/o/x:1", ("ghcr.io", "o/x", "1")),
        ("localhost:5000/x:2", ("localhost:5000", "x", "2")),
    ],
)
def test_base_key(base, expected):
    """The look-up key of a target's base: None for NONE, scratch and a
    name that is no reference (its look-up reports it)."""
    record = db.Image("i", "ghcr.io/o/i:latest", "d", base, (), AMD)
    (target,) = db.image_targets(record, [])
    assert target.base_key == expected


# ----------------------------------------------------------------------------
# read_config
# ----------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path, monkeypatch):
    """Write docker_images (plus build dirs with a Dockerfile) in tmp_path."""
    monkeypatch.chdir(tmp_path)

    def write(text, dirs=("d",), dockerfile="FROM alpine\n"):
        for directory in dirs:
            (tmp_path / directory).mkdir(parents=True, exist_ok=True)
            (tmp_path / directory / "Dockerfile").write_text(dockerfile)
        (tmp_path / "docker_images").write_text(text, encoding="utf-8")
        return "docker_images"

    return write


def test_read_config_notes_example(config, tmp_path):
    """The configuration of the GNS3 images, from the reference notes."""
    text = (
        "# Name\t\t\tDirectory\t[Base Image]\t[Build Options]\n"
        "\n"
        "--platform=linux/amd64\t\t\t\t\t# global options\n"
        "\n"
        "# chromium: base image is updated too often, use manual build\n"
        "chromium\t\tchromium\tNONE\n"
        "ipterm-base\t\tipterm/base\n"
        "ipterm\t\t\tipterm/cli\n"
        "webterm\t\t\tipterm/web\n"
        "jupyter:v2\t\tjupyter\n"
        "ubuntu:focal\t\tubuntu\n"
        "ovs-snmp\t\tovs-snmp\t\t\t--platform=linux/arm64\n"
    )
    path = config(text, dirs=("chromium", "ipterm/base", "ovs-snmp"))
    dockerfiles = {
        "ipterm/base": "FROM debian:bookworm-slim\n",
        "ipterm/cli": "ARG DOCKER_REPOSITORY\nFROM $DOCKER_REPOSITORY/ipterm-base\n",
        "ipterm/web": "FROM ${DOCKER_REPOSITORY}/ipterm-base\n",
        "jupyter": "FROM python:3.11\n",
        "ubuntu": "FROM ubuntu:focal\n",
    }
    for directory, content in dockerfiles.items():
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
        (tmp_path / directory / "Dockerfile").write_text(content)
    amd = ("--platform=linux/amd64",)
    assert db.read_config(path, {}) == [
        db.Image(
            "chromium",
            "chromium:latest",
            "chromium",
            "NONE",
            amd,
            AMD,
            "chromium/Dockerfile",
        ),
        db.Image(
            "ipterm-base",
            "ipterm-base:latest",
            "ipterm/base",
            "debian:bookworm-slim",
            amd,
            AMD,
            "ipterm/base/Dockerfile",
        ),
        db.Image(
            "ipterm",
            "ipterm:latest",
            "ipterm/cli",
            "$DOCKER_REPOSITORY/ipterm-base:latest",
            amd,
            AMD,
            "ipterm/cli/Dockerfile",
        ),
        db.Image(
            "webterm",
            "webterm:latest",
            "ipterm/web",
            "${DOCKER_REPOSITORY}/ipterm-base:latest",
            amd,
            AMD,
            "ipterm/web/Dockerfile",
        ),
        db.Image(
            "jupyter:v2",
            "jupyter:v2",
            "jupyter",
            "python:3.11",
            amd,
            AMD,
            "jupyter/Dockerfile",
        ),
        db.Image(
            "ubuntu:focal",
            "ubuntu:focal",
            "ubuntu",
            "ubuntu:focal",
            amd,
            AMD,
            "ubuntu/Dockerfile",
        ),
        db.Image(
            "ovs-snmp",
            "ovs-snmp:latest",
            "ovs-snmp",
            "alpine:latest",
            ("--platform=linux/amd64", "--platform=linux/arm64"),
            ("linux/amd64", "linux/arm64"),
            "ovs-snmp/Dockerfile",
        ),
    ]


# Global and image options


def test_read_config_global_options_hold_until_redefined(config):
    path = config(
        "img1\td\n"
        "--a 1\n"
        "img2\td\n"
        "# a comment and a blank line do not reset the options\n"
        "\n"
        "img3\td\n"
        '--b "x y"\n'
        "img4\td\t\t-c 'q r'\n"
    )
    options = [record.options for record in db.read_config(path, {})]
    assert options == [(), ("--a", "1"), ("--a", "1"), ("--b", "x y", "-c", "q r")]


def test_read_config_global_options_cannot_be_emptied(config):
    """A blank or comment line keeps them; '' gives one empty argument."""
    path = config("--a\nimg1\td\n   \n# --none\nimg2\td\n''\nimg3\td\n")
    options = [record.options for record in db.read_config(path, {})]
    assert options == [("--a",), ("--a",), ("",)]


def test_read_config_image_options_without_base(config):
    path = config('img\td\t"--label=a b" --pull\t# comment\n')
    (record,) = db.read_config(path, {})
    assert record.options == ("--label=a b", "--pull")
    assert record.base == "alpine:latest"


@pytest.mark.parametrize(
    ("first", "shown"),
    [("img", "img"), ("img\t#d", "img\t#d"), ("second ok", "second ok")],
)
def test_read_config_single_field_must_be_options(config, first, shown):
    """A single field that is not build options (an image line whose TAB
    became spaces) is an error naming the line, not global options."""
    path = config(f"{first}\nimg2\td\n")
    assert fatal_message(db.read_config, path, {}) == (
        f"docker_images line 1: '{shown}' is neither an image line nor build "
        "options (a TAB typed as spaces?)"
    )


def test_read_config_byte_order_mark(config):
    """A UTF-8 byte order mark before the first line is ignored."""
    path = config("img2\td\n")
    Path(path).write_bytes(b"\xef\xbb\xbf" + Path(path).read_bytes())
    (record,) = db.read_config(path, {})
    assert record.tagged == "img2:latest"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--x # comment", ("--x", "#", "comment")),
        ("--x\t# comment", ("--x",)),
        ("--x  \t # comment", ("--x",)),
    ],
)
def test_read_config_global_option_comment(config, line, expected):
    (record,) = db.read_config(config(f"{line}\nimg\td\n"), {})
    assert record.options == expected


def test_read_config_uses_options_and_environment(tmp_path, monkeypatch):
    """Global and image options decide the platforms and the build
    arguments of the Dockerfile; a --build-arg without a value comes from
    the environment."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "Dockerfile").write_text("ARG V=1\nFROM img:$V AS a\nFROM a\n")
    (tmp_path / "docker_images").write_text(
        "--platform=linux/amd64 --build-arg V\n"
        "one\td\n"
        "two\td\t\t--platform linux/arm64,linux/amd64 --build-arg V=3\n"
    )
    one, two = db.read_config("docker_images", {"V": "2"})
    assert (one.base, one.platforms) == ("img:2", AMD)
    assert (two.base, two.platforms) == ("img:3", ("linux/amd64", "linux/arm64"))


# Fields


def test_read_config_leading_and_trailing_whitespace(config):
    path = config("  \timg\td\tdebian\t \n")
    assert db.read_config(path, {}) == [
        db.Image("img", "img:latest", "d", "debian:latest", (), AMD, "d/Dockerfile")
    ]


def test_read_config_hash_name_is_comment(config):
    """A line starting with '#' is a comment, tabs or not."""
    path = config("img\td\n#a\td\n")
    assert [record.name for record in db.read_config(path, {})] == ["img"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("img\td\tNONE", "NONE"),
        ("img\td\tscratch", "scratch"),
        ("img\td\tdebian", "debian:latest"),
        ("img\td\tdebian:12", "debian:12"),
        ("img\td\tlocalhost:5000/b", "localhost:5000/b:latest"),
        ("img\td\tghcr.io/o/b@" + DIGEST, "ghcr.io/o/b@" + DIGEST),
        ("img\td\t${DOCKER_REPOSITORY}/base", "${DOCKER_REPOSITORY}/base:latest"),
        ("img\td\t\tdebian", "debian:latest"),  # 2 tabs: still the base field
        ("img\td", "alpine:latest"),  # from the Dockerfile
        ("img\td\t# comment", "alpine:latest"),
        # a comment after a space is part of the field
        ("img\td\talpine # c", "alpine # c:latest"),
    ],
)
def test_read_config_base(config, line, expected):
    (record,) = db.read_config(config(line + "\n"), {})
    assert record.base == expected


@pytest.mark.parametrize("dockerfile", ["FROM scratch\n", "FROM NONE\n"])
def test_read_config_untagged_base_from_dockerfile(config, dockerfile):
    (record,) = db.read_config(config("img\td\n", dockerfile=dockerfile), {})
    assert record.base == dockerfile.split()[1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("img", "img:latest"),
        ("img:1", "img:1"),
        ("ghcr.io/o/img", "ghcr.io/o/img:latest"),
        ("localhost:5000/img", "localhost:5000/img:latest"),
        ("img@" + DIGEST, "img@" + DIGEST),
        ("scratch:latest", "scratch:latest"),  # only the bare name is reserved
        ("a" * 250, "a" * 250 + ":latest"),  # test/ + 250: the path limit
    ],
)
def test_read_config_image_name(config, name, expected):
    (record,) = db.read_config(config(f"{name}\td\n"), {})
    assert (record.name, record.tagged) == (name, expected)


# Errors: one line naming the file and line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("img\td\nBad\td\n", "docker_images line 2: invalid image name 'Bad'"),
        ("img:\td\n", "docker_images line 1: invalid image name 'img:'"),
        ("a___b\td\n", "docker_images line 1: invalid image name 'a___b'"),
        (
            "a" * 251 + "\td\n",
            f"docker_images line 1: invalid image name '{'a' * 251}'",
        ),
        # the name is checked before its directory
        ("Bad\tmissing\n", "docker_images line 1: invalid image name 'Bad'"),
        ("scratch\td\n", "docker_images line 1: Reserved image name 'scratch'"),
        ("scratch\tmissing\n", "docker_images line 1: Reserved image name 'scratch'"),
        (
            "img\td\nimg:latest\td\n",
            "docker_images lines 1 and 2: multiple entries for img:latest",
        ),
        (
            "img\td\nimg\tmissing\n",
            "docker_images lines 1 and 2: multiple entries for img",
        ),
        (
            "# c\nimg:1\td\nother\td\n\nimg:1\td\n",
            "docker_images lines 2 and 5: multiple entries for img:1",
        ),
        ("img\tmissing\n", "docker_images line 1: unknown directory 'missing'"),
        # a comment after a space is part of the directory
        ("img\td # comment\n", "docker_images line 1: unknown directory 'd # comment'"),
        (
            "img\td\n--label 'x\n",
            "docker_images line 2: No closing quotation",
        ),
        ('img\td\t\t--label "x\n', "docker_images line 1: No closing quotation"),
        ("# only comments\n\n", "Empty image configuration"),
        ("", "Empty image configuration"),
        ("--platform=linux/amd64\n", "Empty image configuration"),
        # fields that cannot be told apart
        *(
            (f"# header\n\n{line}\n", "docker_images line 3: invalid number of fields")
            for line in (
                "a\td\tc\t-d\te",
                "a\td\t-c\te",
                "a\td\tc\td",
                "a\td\tc\t'x'\t-y",
            )
        ),
    ],
)
def test_read_config_errors(config, text, message):
    assert fatal_message(db.read_config, config(text), {}) == message


def test_read_config_missing_dockerfile(config, tmp_path):
    (tmp_path / "nodf").mkdir()
    path = config("img\td\nother\tnodf\n")
    assert fatal_message(db.read_config, path, {}) == (
        "docker_images line 2: Dockerfile: "
        "[Errno 2] No such file or directory: 'nodf/Dockerfile'"
    )


def test_read_config_dockerfile_without_from(config):
    path = config("img\td\n", dockerfile="RUN true\n")
    assert fatal_message(db.read_config, path, {}) == (
        "docker_images line 1: d/Dockerfile: Missing FROM instruction"
    )


def test_read_config_dockerfile_not_utf8(config, tmp_path):
    path = config("img\td\n")
    (tmp_path / "d" / "Dockerfile").write_bytes(b"\xffFROM alpine\n")
    assert fatal_message(db.read_config, path, {}) == (
        "docker_images line 1: d/Dockerfile: not UTF-8 text (invalid start byte)"
    )


def test_read_config_names_dockerfile_line(config, tmp_path):
    path = config("img\td\n", dockerfile="# c\nFROM img:$TAG\n")
    assert fatal_message(db.read_config, path, {}) == (
        "docker_images line 1: d/Dockerfile line 2: FROM uses undefined variable TAG"
    )


def test_read_config_file_not_utf8(config, tmp_path):
    """Each line is decoded on its own: the error names the bad line (the
    reference tool decoded ahead and named line 0)."""
    config("")
    (tmp_path / "docker_images").write_bytes(b"img\td\n\xff\n")
    assert fatal_message(db.read_config, "docker_images", {}) == (
        "docker_images line 2: 'utf-8' codec can't decode byte 0xff "
        "in position 0: invalid start byte"
    )


def test_read_config_unreadable(config):
    config("img\td\n")
    assert fatal_message(db.read_config, "nofile", {}) == (
        "Can't read images file: [Errno 2] No such file or directory: 'nofile'"
    )
    assert fatal_message(db.read_config, "d", {}) == (
        "Can't read images file: [Errno 21] Is a directory: 'd'"
    )


@pytest.mark.parametrize("size", [1, 100, 100000])
def test_read_config_long_line(tmp_path: Path, monkeypatch, size: int) -> None:
    monkeypatch.chdir(tmp_path)
    Path("docker_images").write_text("app\t" + "d" * size + "\n")
    assert fatal_message(db.read_config, "docker_images", {}) == (
        f"docker_images line 1: unknown directory '{'d' * size}'"
    )


# ----------------------------------------------------------------------------
# check_repositories_defined: name-only images need DOCKER_REPOSITORY
# ----------------------------------------------------------------------------


def test_check_repositories_defined():
    full = [image("ghcr.io/o/a")]
    configured = [
        image("img"),
        image("tool:2", tagged="tool:2", base="NONE"),
        image("ghcr.io/o/full", base="$DOCKER_REPOSITORY/img:latest"),
    ]
    assert db.check_repositories_defined(full, []) is None
    assert db.check_repositories_defined(configured, ["user"]) is None
    images = [*full, image("tool:2", tagged="tool:2")]
    assert fatal_message(db.check_repositories_defined, images, []) == (
        "tool:2: Environment variable DOCKER_REPOSITORY is not defined"
    )


# ----------------------------------------------------------------------------
# read_build_options
# ----------------------------------------------------------------------------


def options(*args, environ=None):
    return db.read_build_options(args, environ or {})


def test_read_build_options_defaults():
    assert options() == db.BuildOptions(AMD, None, None, {})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), AMD),
        (("--pull", "--no-cache"), AMD),
        (("--platform=linux/arm64",), ("linux/arm64",)),
        (("--platform", "linux/arm64"), ("linux/arm64",)),
        # repeated flags add up, comma-separated values too, duplicates once
        (
            ("--platform=linux/amd64", "--platform", "linux/arm64,linux/arm/v7"),
            ("linux/amd64", "linux/arm64", "linux/arm/v7"),
        ),
        (("--platform=Linux/AMD64, linux/amd64,,linux/arm64",), BOTH),
        (("--platform=",), AMD),
    ],
)
def test_read_build_options_platforms(args, expected):
    assert options(*args).platforms == expected


@pytest.mark.parametrize(
    "args",
    [
        ("-f", "x"),
        ("-fx",),
        ("-f=x",),
        ("--file", "x"),
        ("--file=x",),
        ("--file=y", "-f", "x"),  # the last one wins
    ],
)
def test_read_build_options_file(args):
    assert options(*args).dockerfile == "x"


def test_read_build_options_target_and_build_args():
    build = options(
        "--target",
        "one",
        "--target=two",
        "--build-arg",
        "A=1",
        "--build-arg=B=x=y",
        "--build-arg",
        "C",
        "--build-arg",
        "D",
        "--build-arg=A=2",
        environ={"C": "from-env"},
    )
    assert build.target == "two"
    assert build.build_args == {"A": "2", "B": "x=y", "C": "from-env"}


# ----------------------------------------------------------------------------
# read_dockerfile: the base of the built stage
# ----------------------------------------------------------------------------


def dockerfile(tmp_path, text, *args, environ=None):
    """read_dockerfile of `text` written as tmp_path/Dockerfile."""
    (tmp_path / "Dockerfile").write_text(text, encoding="utf-8")
    return db.read_dockerfile(str(tmp_path), options(*args, environ=environ))


def base(tmp_path, text, *args, environ=None):
    return dockerfile(tmp_path, text, *args, environ=environ).base


def base_error(tmp_path, text, *args):
    with pytest.raises(ValueError) as info:
        base(tmp_path, text, *args)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FROM alpine\n", "alpine"),
        # the final stage
        ("FROM golang:1.22 AS build\nRUN make\nFROM debian:12\n", "debian:12"),
        # a stage from an earlier stage resolves to its base, recursively
        ("FROM alpine:3 AS a\nFROM a AS b\nFROM b\n", "alpine:3"),
        ("FROM alpine:3 AS Base\nFROM BASE AS b\nFROM b AS c\nFROM c\n", "alpine:3"),
        # a later stage's name is no alias
        ("FROM b\nFROM alpine AS b\n", "alpine"),
        # flags skipped, lower case instructions
        ("FROM --platform=$BUILDPLATFORM golang:1.22 AS build\n", "golang:1.22"),
        ("from --platform=linux/amd64 ubuntu:22.04 as build\n", "ubuntu:22.04"),
        # BuildKit splits an instruction at any white space, tabs included
        ("\tFrOm\tdebian", "debian"),
        # ARG defaults before the first FROM
        ("ARG V=3.19\nFROM alpine:$V\n", "alpine:3.19"),
        ("ARG V=3.19\nFROM alpine:${V}\n", "alpine:3.19"),
        (
            "ARG R=docker.io/library\nARG I=${R}/alpine\nFROM $I\n",
            "docker.io/library/alpine",
        ),
        ("ARG V\nFROM alpine:${V:-edge}\n", "alpine:edge"),
        ("ARG V=\nFROM alpine:${V:-edge}\n", "alpine:edge"),
        ("ARG V=1\nFROM alpine${V:+:x}\n", "alpine:x"),
        ("ARG A=1 B=2\nFROM img:$A.$B\n", "img:1.2"),
        # $DOCKER_REPOSITORY stays literal: filled in per target
        (
            "ARG DOCKER_REPOSITORY\nFROM $DOCKER_REPOSITORY/base\n",
            "$DOCKER_REPOSITORY/base",
        ),
        (
            "ARG DOCKER_REPOSITORY=x\nFROM ${DOCKER_REPOSITORY}/b:1\n",
            "${DOCKER_REPOSITORY}/b:1",
        ),
        ("FROM $DOCKER_REPOSITORY/base\n", "$DOCKER_REPOSITORY/base"),
        # continuation lines, with comments and blank lines inside
        ("FROM \\\n  # a comment\n\n  alpine:3 \\\n  AS build\n", "alpine:3"),
        # the escape directive
        ("# escape=`\nFROM `\n  debian:12\n", "debian:12"),
        ("#escape=`\nFROM alpine AS a\nRUN dir c:\\\nFROM a\n", "alpine"),
        # comments
        ("# FROM x\nFROM alpine\n  # FROM y\n", "alpine"),
        # heredoc bodies are not instructions
        ("FROM alpine\nRUN <<EOF\nFROM evil\nEOF\n", "alpine"),
        ("FROM alpine\nCOPY <<-'END' /x\n\tFROM evil\n\tEND\n", "alpine"),
        # a byte order mark
        ("\ufeffFROM alpine\n", "alpine"),
        # the automatic platform arguments
        ("FROM img:$TARGETARCH\n", "img:amd64"),
    ],
)
def test_read_dockerfile_base(tmp_path, text, expected):
    assert base(tmp_path, text) == expected


def test_read_dockerfile_target(tmp_path):
    text = "FROM alpine AS one\nFROM debian AS Two\nFROM one AS three\nFROM ubuntu\n"
    assert base(tmp_path, text, "--target", "one") == "alpine"
    assert base(tmp_path, text, "--target=two") == "debian"
    assert base(tmp_path, text, "--target", "three") == "alpine"
    assert base_error(tmp_path, text, "--target", "four") == (
        f"{tmp_path}/Dockerfile: target stage 'four' could not be found"
    )


def test_read_dockerfile_build_args(tmp_path):
    text = "ARG V=1\nARG W\nFROM img:$V\n"
    assert base(tmp_path, text, "--build-arg", "V=2") == "img:2"
    assert base(tmp_path, text, "--build-arg", "V", environ={"V": "env"}) == "img:env"
    # a build-arg sets only declared ARGs
    text = "ARG V=1\nFROM img:${V}${U:-}\n"
    assert base(tmp_path, text, "--build-arg", "U=x") == "img:1"


BAD_FROM = "{dockerfile} line 1: FROM requires either one or three arguments"
NO_FROM = "{dockerfile}: Missing FROM instruction"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # an ARG after the first FROM is no global ARG
        (
            "FROM alpine\nARG V=2\nFROM img:$V\n",
            "{dockerfile} line 3: FROM uses undefined variable V",
        ),
        # the line where the FROM instruction starts
        (
            "# syntax=docker/dockerfile:1\n\nARG V\nFROM \\\n  img:$V\n",
            "{dockerfile} line 4: FROM uses undefined variable V",
        ),
        ("FROM ${NOPE}\n", "{dockerfile} line 1: FROM uses undefined variable NOPE"),
        ("", NO_FROM),
        ("RUN true\n", NO_FROM),
        ("# FROM alpine\n", NO_FROM),
        ("RUN echo FROM x\n", NO_FROM),
        ("FROM\n", BAD_FROM),
        ("FROM a b\n", BAD_FROM),
        ("FROM a FOR b\n", BAD_FROM),
        ("FROM a AS b c\n", BAD_FROM),
    ],
)
def test_read_dockerfile_errors(tmp_path, text, message):
    dockerfile = f"{tmp_path}/Dockerfile"
    assert base_error(tmp_path, text) == message.format(dockerfile=dockerfile)


def test_read_dockerfile_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError) as info:
        db.read_dockerfile("d", options())
    assert str(info.value) == (
        "Dockerfile: [Errno 2] No such file or directory: 'd/Dockerfile'"
    )


def test_read_dockerfile_not_utf8(tmp_path):
    (tmp_path / "Dockerfile").write_bytes(b"FROM alpine\n\xff\n")
    with pytest.raises(ValueError) as info:
        db.read_dockerfile(str(tmp_path), options())
    assert str(info.value) == (
        f"{tmp_path}/Dockerfile: not UTF-8 text (invalid start byte)"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("-f", "other/Dfile"),
        ("-fother/Dfile",),
        ("-f=other/Dfile",),
        ("--file", "other/Dfile"),
        ("--file=other/Dfile",),
    ],
)
def test_read_dockerfile_file_option(tmp_path, monkeypatch, args):
    """-f names a file relative to the current directory, not the context;
    the record names the file read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM wrong\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "Dfile").write_text("FROM right:1\n")
    assert db.read_dockerfile("ctx", options(*args)) == db.Dockerfile(
        "other/Dfile", "right:1", ()
    )


def test_read_dockerfile_uses_per_platform(tmp_path):
    """The base is read for the first platform; the images pulled besides
    it for every platform, with its TARGET* arguments, sorted per
    platform."""
    text = (
        "ARG TOOLS=tools\n"
        "FROM ${TOOLS}:$TARGETARCH AS t\n"
        "FROM base:$TARGETARCH\n"
        "COPY --from=t / /\n"
        "RUN --mount=from=helper-$TARGETOS$TARGETVARIANT,target=/h make\n"
    )
    found = dockerfile(tmp_path, text, "--platform=linux/amd64,linux/arm/v7")
    assert found == db.Dockerfile(
        f"{tmp_path}/Dockerfile",
        "base:amd64",
        (
            ("linux/amd64", "helper-linux"),
            ("linux/amd64", "tools:amd64"),
            ("linux/arm/v7", "helper-linuxv7"),
            ("linux/arm/v7", "tools:arm"),
        ),
    )


def test_read_dockerfile_uses_build_args(tmp_path):
    """A --build-arg sets a stage ARG that --from names."""
    text = "FROM alpine\nARG T=tools:1\nCOPY --from=$T / /\n"
    assert dockerfile(tmp_path, text).uses == (("linux/amd64", "tools:1"),)
    found = dockerfile(tmp_path, text, "--build-arg", "T=tools:2")
    assert found.uses == (("linux/amd64", "tools:2"),)


def test_read_dockerfile_stage_arg_inherits_global_default(tmp_path):
    """As docker documents: `ARG T` in a stage takes the default of the
    global `ARG T=...`."""
    text = "ARG T=tools:1\nFROM alpine\nARG T\nCOPY --from=$T / /\n"
    assert dockerfile(tmp_path, text).uses == (("linux/amd64", "tools:1"),)


def test_read_dockerfile_undefined_source_is_no_image(tmp_path):
    """A --from that substitutes to nothing names no image."""
    text = "FROM alpine\nCOPY --from=$UNDEFINED / /\n"
    assert dockerfile(tmp_path, text).uses == ()


def test_read_config_records_dockerfile_and_uses(config, tmp_path):
    """read_config fills in the Dockerfile read (-f, or <dir>/Dockerfile)
    and the images the build pulls per platform."""
    path = config(
        "plain\td\nmulti\td\t\t--platform=linux/amd64,linux/arm64 -f d/Other\n"
    )
    (tmp_path / "d" / "Other").write_text(
        "FROM t:$TARGETARCH AS t\nFROM alpine\nCOPY --from=t / /\n"
    )
    plain, multi = db.read_config(path, {})
    assert (plain.dockerfile, plain.uses) == ("d/Dockerfile", ())
    assert (multi.dockerfile, multi.base, multi.uses) == (
        "d/Other",
        "alpine:latest",
        (("linux/amd64", "t:amd64"), ("linux/arm64", "t:arm64")),
    )


@pytest.mark.parametrize(
    ("options", "content", "expected_path"),
    [
        ((), None, "nodf/Dockerfile"),
        (("-f", "nodf/missing"), None, "nodf/missing"),
        ((), "FROM $UNDEFINED\n", "nodf/Dockerfile"),
        ((), "RUN true\n", "nodf/Dockerfile"),
        ((), b"\xff", "nodf/Dockerfile"),
    ],
)
def test_read_config_base_column_without_readable_dockerfile(
    config, tmp_path, options, content, expected_path
):
    """With a base column, a Dockerfile that cannot be read is no error
    (docker reports it when building): the image pulls nothing else."""
    path = config("img\tnodf\tdebian\t" + " ".join(options) + "\n")
    (tmp_path / "nodf").mkdir()
    if isinstance(content, str):
        (tmp_path / "nodf" / "Dockerfile").write_text(content)
    elif content is not None:
        (tmp_path / "nodf" / "Dockerfile").write_bytes(content)
    (record,) = db.read_config(path, {})
    assert record == db.Image(
        "img", "img:latest", "nodf", "debian:latest", options, AMD, expected_path, ()
    )


# ----------------------------------------------------------------------------
# The stages a build needs: instruction_sources, target_stage, earlier_stage,
# final_base, used_images
# ----------------------------------------------------------------------------

VARIABLES = {"V": "img:2", "EMPTY": "", "UNSET": None}


@pytest.mark.parametrize(
    ("keyword", "arguments", "expected"),
    [
        ("COPY", "--from=build /a /b", ("build",)),
        ("ADD", "--from=img:1 /a /b", ("img:1",)),
        ("COPY", "--chown=1:1 --link --from=x /a /b", ("x",)),
        ("COPY", "--from=a --from=b /x /", ("a", "b")),
        # flags stop at the first word that is no flag
        ("COPY", "/a --from=x /b", ()),
        ("COPY", "--link /a /b --from=x", ()),
        ("RUN", "echo --mount=from=x", ()),
        ("COPY", "--from= /a /b", ()),  # an empty value names nothing
        ("COPY", "/a /b", ()),
        ("RUN", "--mount=type=bind,from=tools,target=/t make", ("tools",)),
        (
            "RUN",
            "--mount=type=cache,target=/c --mount=from=x:1,type=bind make",
            ("x:1",),
        ),
        ("RUN", "--mount=type=bind,FROM=Up , target=/t make", ("Up",)),
        ("RUN", "--mount=type=cache,target=/c make", ()),
        ("RUN", "--network=none --mount=from=y make", ("y",)),
        # each keyword has its own flag
        ("RUN", "--from=x make", ()),
        ("COPY", "--mount=from=x /a /b", ()),
        ("ENV", "--from=x", ()),
        # variables, as FROM substitutes them
        ("COPY", "--from=$V /a /b", ("img:2",)),
        ("COPY", "--from=${V}-x /a /b", ("img:2-x",)),
        ("COPY", "--from=${EMPTY:-dflt} /a /b", ("dflt",)),
        ("COPY", "--from=${UNSET:-dflt} /a /b", ("dflt",)),
        ("RUN", "--mount=from=${V},target=/t make", ("img:2",)),
        ("COPY", "--from=$DOCKER_REPOSITORY/b /a /b", ("$DOCKER_REPOSITORY/b",)),
    ],
)
def test_instruction_sources(keyword, arguments, expected):
    instruction = db.Instruction(3, keyword, arguments)
    assert db.instruction_sources(instruction, VARIABLES) == expected


def test_dockerfile_stages_sources():
    """Each stage gathers its sources, substituted with the global ARGs
    and those of its own stage."""
    text = (
        "ARG G=global:1\n"
        "FROM alpine AS one\n"
        "ARG S=stage:1\n"
        "COPY --from=$G /a /\n"
        "RUN --mount=from=$S make\n"
        "FROM one\n"
        "COPY --from=${S:-none} /b /\n"
    )
    assert db.dockerfile_stages(text, {}, "linux/amd64") == [
        db.Stage(2, "alpine", "one", ("global:1", "stage:1")),
        db.Stage(6, "one", None, ("none",)),
    ]


STAGES = [
    db.Stage(1, "golang:1", None),
    db.Stage(2, "alpine:3", "build"),
    db.Stage(3, "build", "runtime"),
    db.Stage(4, "debian:12", "late"),
]


@pytest.mark.parametrize(
    ("stages", "target", "expected"),
    [
        (STAGES, None, 3),
        (STAGES, "build", 1),
        (STAGES, "Runtime", 2),  # names compare case-insensitively
        (STAGES[:1], None, 0),
    ],
)
def test_target_stage(stages, target, expected):
    assert db.target_stage(stages, target) == expected


@pytest.mark.parametrize(
    ("stages", "target", "message"),
    [
        ([], None, "Missing FROM instruction"),
        ([], "x", "Missing FROM instruction"),
        (STAGES, "nope", "target stage 'nope' could not be found"),
    ],
)
def test_target_stage_errors(stages, target, message):
    with pytest.raises(ValueError) as info:
        db.target_stage(stages, target)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("index", "name", "expected"),
    [
        (3, "build", 1),
        (3, "BUILD", 1),
        (3, "runtime", 2),
        (3, "0", 0),  # --from by number
        (3, "2", 2),
        (2, "2", None),  # not an earlier stage: an image
        (3, "3", None),
        (3, "late", None),  # the stage itself
        (2, "late", None),  # a later stage
        (1, "build", None),
        (3, "golang:1", None),
    ],
)
def test_earlier_stage(index, name, expected):
    assert db.earlier_stage(STAGES, index, name) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [(None, "debian:12"), ("runtime", "alpine:3"), ("build", "alpine:3")],
)
def test_final_base(target, expected):
    assert db.final_base(STAGES, target) == expected


def uses(text, target=None):
    stages = db.dockerfile_stages(text, {}, "linux/amd64")
    return db.used_images(stages, target)


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        ("FROM alpine\n", None, ()),
        # a builder stage the final stage copies from
        (
            "FROM golang:1 AS build\nFROM alpine\nCOPY --from=build /x /\n",
            None,
            ("golang:1",),
        ),
        # a stage the built stage does not need is not built
        ("FROM golang:1 AS build\nFROM alpine\n", None, ()),
        # --target chooses the built stage
        (
            "FROM golang:1 AS build\nFROM alpine AS final\nCOPY --from=build / /\n"
            "FROM debian\nCOPY --from=tools:1 / /\n",
            "final",
            ("golang:1",),
        ),
        (
            "FROM golang:1 AS build\nFROM alpine AS final\nCOPY --from=build / /\n"
            "FROM debian\nCOPY --from=tools:1 / /\n",
            None,
            ("tools:1",),
        ),
        # chains of stages, through FROM and --from
        (
            "FROM a:1 AS one\nFROM one AS two\nCOPY --from=b:1 / /\n"
            "FROM c:1\nCOPY --from=two / /\n",
            None,
            ("a:1", "b:1"),
        ),
        # --from by number
        ("FROM golang:1\nFROM alpine\nCOPY --from=0 / /\n", None, ("golang:1",)),
        # RUN --mount from an image
        ("FROM alpine\nRUN --mount=from=tools:2,target=/t make\n", None, ("tools:2",)),
        # scratch is no image
        (
            "FROM scratch AS empty\nFROM alpine\nCOPY --from=empty / /\n"
            "COPY --from=scratch / /\n",
            None,
            (),
        ),
        # the final base is not counted twice, wherever it is used
        (
            "FROM alpine AS a\nFROM alpine\nCOPY --from=a / /\n"
            "COPY --from=alpine / /\n",
            None,
            (),
        ),
        ("FROM debian:12 AS base\nFROM base\nCOPY --from=debian:12 / /\n", None, ()),
        # sorted, once each
        (
            "FROM alpine\nCOPY --from=z:1 / /\nCOPY --from=a:1 / /\n"
            "COPY --from=z:1 / /\n",
            None,
            ("a:1", "z:1"),
        ),
        # stage names compare case-insensitively
        (
            "FROM golang:1 AS Build\nFROM alpine\nCOPY --from=BUILD / /\n",
            None,
            ("golang:1",),
        ),
        # a later stage's name is an image
        (
            "FROM alpine AS first\nCOPY --from=later / /\nFROM x:1 AS later\n",
            "first",
            ("later",),
        ),
    ],
)
def test_used_images(text, target, expected):
    assert uses(text, target) == expected


# ----------------------------------------------------------------------------
# Properties: whatever the input, the readers answer with a result or one
# clear line naming the file (and line), never a crash
# ----------------------------------------------------------------------------

FAST = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Text that looks like configuration: names, tabs, comments, quotes.
CONFIG_PIECES = st.sampled_from(
    ["app", "d", "\t", "\t\t", "#", " ", "--opt", "'", '"', "NONE", "scratch",
     "$DOCKER_REPOSITORY/", ":", "@", "/", "-", "x" * 300, "\n", "\r\n", "\x00"]
)  # fmt: skip
CONFIG_TEXT = st.lists(CONFIG_PIECES, max_size=40).map("".join)


def one_line(message: str) -> bool:
    return "\n" not in message and "Traceback" not in message


@FAST
@given(st.one_of(CONFIG_TEXT.map(str.encode), st.binary(max_size=500)))
@example(b"app\td\n" + b"x" * 100000 + b"\n")
@example(b"\xff\xfe\x00app\td")
def test_config_reader(tmp_path: Path, content: bytes) -> None:
    cwd = os.getcwd()
    directory = tmp_path / "world"
    directory.mkdir(exist_ok=True)
    os.chdir(directory)
    try:
        Path("d").mkdir(exist_ok=True)
        Path("d/Dockerfile").write_text("FROM scratch\n")
        Path("docker_images").write_bytes(content)
        try:
            images = db.read_config("docker_images", {})
        except db.Fatal as err:
            assert err.code == 1
            assert one_line(err.message)
            assert err.message.startswith(("docker_images", "Empty image"))
        else:
            assert all(record.directory == "d" for record in images)
    finally:
        os.chdir(cwd)


@FAST
@given(
    st.one_of(
        st.lists(
            st.sampled_from(
                ["FROM", "from", " ", "\t", "\\\n", "`\n", "# escape=`\n", "ARG X",
                 "=", "$X", "${X:-a}", "AS", "b", "--platform=p", "\n", "<<EOF",
                 "EOF", "scratch", "img:1", '"', "\ufeff"]
            ),
            max_size=30,
        ).map("".join).map(str.encode),
        st.binary(max_size=300),
    )
)  # fmt: skip
@example(b"FROM " + b"a" * 100000)
def test_dockerfile_reader(tmp_path: Path, content: bytes) -> None:
    directory = tmp_path / "ctx"
    directory.mkdir(exist_ok=True)
    (directory / "Dockerfile").write_bytes(content)
    build = db.read_build_options(["--build-arg", "X=y"], {})
    try:
        found = db.read_dockerfile(str(directory), build)
    except ValueError as err:
        assert one_line(str(err))
    else:
        assert found.base.strip() and "\n" not in found.base
        assert found.path == f"{directory}/Dockerfile"
        assert all(platform == "linux/amd64" for platform, _ in found.uses)


# ----------------------------------------------------------------------------
# End to end: the configuration as a run reads it
# ----------------------------------------------------------------------------


def test_final_stage_base(world: World) -> None:
    """Only the final stage's base counts as the base: the builder stage's
    image, newer than the image and of other layers, is no reason for a
    rebuild, a change of the final base is. (The builder image is looked
    up for the record of a rebuild, so it is in the registry.)"""
    base_image = world.ref("base:1")
    builder = world.ref("builder:1")
    world.registry.push(base_image, T_COMMIT, BASE_LAYERS)
    world.registry.push(builder, T_LATER, [new_layer("builder")])
    world.write(
        "app/Dockerfile",
        f"FROM --platform=$BUILDPLATFORM {builder} AS build\n"
        "RUN make\n"
        f"FROM {base_image} AS runtime\n"
        "FROM runtime\n"
        "COPY --from=build /out /\n",
    )
    world.config("app\tapp")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [*BASE_LAYERS, new_layer("a")])
    succeeded(world.run())
    world.registry.push(base_image, T_LATER, [new_layer("new")])
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_renamed_dockerfile(world: World) -> None:
    base_image = world.ref("base:1")
    world.registry.push(base_image, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", "scratch")
    world.write("app/Dockerfile.prod", f"FROM {base_image}\n")
    world.config("app\tapp\t\t-f app/Dockerfile.prod")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [new_layer("a")])
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_target_stage_and_build_arg(world: World) -> None:
    base_image = world.ref("base:2")
    world.registry.push(base_image, T_COMMIT, BASE_LAYERS)
    world.write(
        "app/Dockerfile",
        f"ARG REGISTRY={world.registry.host}\nARG TAG=1\n"
        "FROM ${REGISTRY}/" + world.path("base:${TAG}") + " AS base\n"
        "FROM scratch AS other\n",
    )
    world.config("app\tapp\t\t--target base --build-arg TAG=2")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [new_layer("a")])
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_bad_directory(world: World) -> None:
    result = world.run("-C", "nowhere")
    failed(
        result,
        "Can't change directory: [Errno 2] No such file or directory: 'nowhere'\n",
    )


def test_repository_with_a_tag_is_rejected(world: World) -> None:
    world.up_to_date()
    result = world.run(env={"DOCKER_REPOSITORY": f"{world.namespace}:v1"})
    failed(
        result,
        f"DOCKER_REPOSITORY: {world.namespace}:v1: "
        "a repository must not have a tag or digest\n",
    )
    assert world.calls() == []


# ----------------------------------------------------------------------------
# Configuration mistakes, end to end: one line, exit 1, nothing looked up
# ----------------------------------------------------------------------------


APP = "FROM scratch\nCOPY . /\n"
NO_BASE = "FROM NONE\nCOPY . /\n"


@pytest.mark.parametrize(
    ("files", "lines", "args", "variables", "stderr"),
    [
        pytest.param(
            {"app/Dockerfile": "ARG BASE\nFROM $BASE\n"},
            ["# images", "app\tapp"],
            (),
            {},
            "docker_images line 2: app/Dockerfile line 2: "
            "FROM uses undefined variable BASE\n",
            id="undefined-variable-in-from",
        ),
        pytest.param(
            {"app/Dockerfile": APP},
            ["app\tapp", "# again", "app:latest\tapp"],
            (),
            {},
            "docker_images lines 1 and 3: multiple entries for app:latest\n",
            id="duplicate-entry-names-both-lines",
        ),
        pytest.param(
            {"app/Dockerfile": APP},
            ["app\tapp"],
            (),
            {"DOCKER_REPOSITORY": " "},
            "app: Environment variable DOCKER_REPOSITORY is not defined\n",
            id="repository-not-defined",
        ),
        # `tools` in the repository and the same image by its full name
        # push one tag: both lines are named, as Docker compares names.
        pytest.param(
            {"a/Dockerfile": NO_BASE},
            ["tools\ta\tNONE", "{namespace}/tools\ta\tNONE"],
            ("-n",),
            {},
            "docker_images lines 1 and 2: both push {namespace}/tools:latest\n",
            id="two-entries-pushing-the-same-tag",
        ),
        pytest.param(
            {"a/Dockerfile": NO_BASE},
            ["first\ta\tNONE", "second ok", "third\ta\tNONE"],
            ("-n",),
            {},
            "docker_images line 2: 'second ok' is neither an image line nor "
            "build options (a TAB typed as spaces?)\n",
            id="tab-typed-as-spaces",
        ),
        pytest.param(
            {"a/Dockerfile": NO_BASE},
            ["worker:v2\ta\tNONE"],
            ("-n", "worker"),
            {},
            "Image worker not found in 'docker_images' configuration file "
            "(entries with another tag: worker:v2)\n",
            id="unknown-image-names-other-tags",
        ),
        pytest.param(
            {"a/Dockerfile": NO_BASE},
            ["{namespace}/one:v2\ta\tNONE"],
            ("-n", "one:v2"),
            {},
            "Image one:v2 not found in 'docker_images' configuration file "
            "(entries with that name: {namespace}/one:v2)\n",
            id="unknown-image-short-name-of-a-full-name",
        ),
    ],
)
def test_configuration_mistake(
    world: World, files, lines, args, variables, stderr
) -> None:
    """The run fails with one line naming the mistake, and builds nothing;
    {namespace} is the world's."""
    for path, text in files.items():
        world.write(path, text)
    world.config(*(line.format(namespace=world.namespace) for line in lines))
    result = world.run(*args, env=variables)
    failed(result, stderr.format(namespace=world.namespace))
    assert world.calls() == []


def test_byte_order_mark_end_to_end(world: World) -> None:
    world.dockerfile("a", "NONE")
    path = world.config("first\ta\tNONE")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert world.run("-n").stdout == (
        f"*** {world.ref('first')}\nReason: Image missing in repository\n\n"
    )


def test_docker_images_example_reads(tmp_path, monkeypatch):
    """docker_images.example, with its directories made, is a valid
    configuration: no error, no two entries pushing one image, and the
    base of `webapp` is its built stage's, not the first FROM."""
    text = (ROOT / "docker_images.example").read_text()
    monkeypatch.chdir(tmp_path)
    for line in text.splitlines():
        fields = line.split("\t")
        fields = [field for field in fields if field]
        if len(fields) >= 2 and not line.startswith("#"):
            directory = tmp_path / fields[1]
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "Dockerfile").write_text(
                "FROM golang:1.22 AS build\nFROM debian:bookworm-slim\n"
            )
    (tmp_path / "docker_images").write_text(text)
    environ = {"DOCKER_REPOSITORY": "ghcr.io/me"}
    images = db.read_config("docker_images", environ)
    db.check_duplicate_targets(images, ["ghcr.io/me"], "docker_images")
    bases = {image.name: image.base for image in images}
    assert bases["webapp"] == "debian:bookworm-slim"
    assert bases["tools"] == "$DOCKER_REPOSITORY/tools-base:latest"
