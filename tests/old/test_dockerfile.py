"""The base image of a Dockerfile (the stage docker buildx builds) and the
build options that decide it: platforms, -f/--file, --target, --build-arg."""

import pytest
from conftest import load_tool

db = load_tool()

AMD = ("linux/amd64",)
BOTH = ("linux/amd64", "linux/arm64")


def options(*args, environ=None):
    return db.read_build_options(args, environ or {})


def base(tmp_path, text, *args, environ=None):
    (tmp_path / "Dockerfile").write_text(text, encoding="utf-8")
    return db.dockerfile_base(str(tmp_path), options(*args, environ=environ))


def base_error(tmp_path, text, *args):
    with pytest.raises(ValueError) as info:
        base(tmp_path, text, *args)
    return str(info.value)


# ----------------------------------------------------------------------------
# read_build_options
# ----------------------------------------------------------------------------


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


def test_read_build_options_defaults():
    assert options() == db.BuildOptions(AMD, None, None, {})


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
# dockerfile_base
# ----------------------------------------------------------------------------


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
def test_dockerfile_base(tmp_path, text, expected):
    assert base(tmp_path, text) == expected


def test_dockerfile_base_target(tmp_path):
    text = "FROM alpine AS one\nFROM debian AS Two\nFROM one AS three\nFROM ubuntu\n"
    assert base(tmp_path, text, "--target", "one") == "alpine"
    assert base(tmp_path, text, "--target=two") == "debian"
    assert base(tmp_path, text, "--target", "three") == "alpine"
    assert base_error(tmp_path, text, "--target", "four") == (
        "Dockerfile: target stage 'four' could not be found"
    )


def test_dockerfile_base_build_args(tmp_path):
    text = "ARG V=1\nARG W\nFROM img:$V\n"
    assert base(tmp_path, text, "--build-arg", "V=2") == "img:2"
    assert base(tmp_path, text, "--build-arg", "V", environ={"V": "env"}) == "img:env"
    # a build-arg sets only declared ARGs
    text = "ARG V=1\nFROM img:${V}${U:-}\n"
    assert base(tmp_path, text, "--build-arg", "U=x") == "img:1"


def test_dockerfile_base_arg_after_first_from_not_used(tmp_path):
    text = "FROM alpine\nARG V=2\nFROM img:$V\n"
    assert base_error(tmp_path, text) == (
        f"{tmp_path}/Dockerfile line 3: FROM uses undefined variable V"
    )


def test_dockerfile_base_undefined_variable(tmp_path):
    text = "# syntax=docker/dockerfile:1\n\nARG V\nFROM \\\n  img:$V\n"
    assert base_error(tmp_path, text) == (
        f"{tmp_path}/Dockerfile line 4: FROM uses undefined variable V"
    )
    assert base_error(tmp_path, "FROM ${NOPE}\n") == (
        f"{tmp_path}/Dockerfile line 1: FROM uses undefined variable NOPE"
    )


@pytest.mark.parametrize(
    "text", ["", "RUN true\n", "# FROM alpine\n", "RUN echo FROM x\n"]
)
def test_dockerfile_base_missing_from(tmp_path, text):
    assert base_error(tmp_path, text) == "Dockerfile: Missing FROM instruction"


@pytest.mark.parametrize(
    "text", ["FROM\n", "FROM a b\n", "FROM a FOR b\n", "FROM a AS b c\n"]
)
def test_dockerfile_base_bad_from(tmp_path, text):
    assert base_error(tmp_path, text) == (
        f"{tmp_path}/Dockerfile line 1: FROM requires either one or three arguments"
    )


def test_dockerfile_base_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError) as info:
        db.dockerfile_base("d", options())
    assert str(info.value) == (
        "Dockerfile: [Errno 2] No such file or directory: 'd/Dockerfile'"
    )


def test_dockerfile_base_not_utf8(tmp_path):
    (tmp_path / "Dockerfile").write_bytes(b"FROM alpine\n\xff\n")
    with pytest.raises(ValueError) as info:
        db.dockerfile_base(str(tmp_path), options())
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
def test_dockerfile_base_file_option(tmp_path, monkeypatch, args):
    """-f names a file relative to the current directory, not the context."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM wrong\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "Dfile").write_text("FROM right:1\n")
    assert db.dockerfile_base("ctx", options(*args)) == "right:1"


def test_read_config_uses_options_and_environment(tmp_path, monkeypatch):
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


def test_read_config_names_dockerfile_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "Dockerfile").write_text("# c\nFROM img:$TAG\n")
    (tmp_path / "docker_images").write_text("img\td\n")
    with pytest.raises(db.Fatal) as info:
        db.read_config("docker_images", {})
    assert info.value.message == (
        "docker_images line 1: d/Dockerfile line 2: FROM uses undefined variable TAG"
    )
