"""Unit tests of docker_build's pure logic, checked against the reference.

No network and no registry: registry look-ups come from a dict, and the
registry client (dxf) is replaced by a fake where its error handling is
tested. Files and git repositories live in tmp_path.
"""

import argparse
import datetime
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import types

import pytest
import requests
import requests.exceptions
import urllib3.exceptions
from conftest import ROOT, load_tool
from old.fakes import CREATED, FakeContexts, FakeRegistry, info, needs_rebuild

db = load_tool()

HUB = "registry-1.docker.io"
HEX64 = "0123456789abcdef" * 4
DIGEST = "sha256:" + HEX64
UTC = datetime.timezone.utc
CREATED_Z = CREATED


def fatal_message(func, *args, code=1):
    """Call func, expect db.Fatal with the exit code; return its message."""
    with pytest.raises(db.Fatal) as info:
        func(*args)
    assert info.value.code == code
    return str(info.value.message)


AMD = ("linux/amd64",)


def make_image(
    name="img",
    image=None,
    directory="d",
    base="alpine:latest",
    options=(),
    platforms=AMD,
):
    return db.Image(
        name, image or name + ":latest", directory, base, options, platforms
    )


# ----------------------------------------------------------------------------
# image_add_tag, full_image_name, expand_base_image
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
    ],
)
def test_expand_base_image_expands(base, target, expected):
    assert db.expand_base_image(base, target) == expected


@pytest.mark.parametrize(
    "base",
    [
        "ubuntu:latest",
        "NONE",
        "scratch",
        "$DOCKER_REPOSITORY",
        "$DOCKER_REPOSITORYX/b:latest",
        "${DOCKER_REPOSITORY/b:latest",
        "$OTHER/b:latest",
        "ghcr.io/$DOCKER_REPOSITORY/b:latest",
        "docker_repository/b:latest",
    ],
)
def test_expand_base_image_leaves_other_bases(base):
    assert db.expand_base_image(base, "ghcr.io/o/img:latest") == (base, [])


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
        db.Image("chromium", "chromium:latest", "chromium", "NONE", amd, AMD),
        db.Image(
            "ipterm-base",
            "ipterm-base:latest",
            "ipterm/base",
            "debian:bookworm-slim",
            amd,
            AMD,
        ),
        db.Image(
            "ipterm",
            "ipterm:latest",
            "ipterm/cli",
            "$DOCKER_REPOSITORY/ipterm-base:latest",
            amd,
            AMD,
        ),
        db.Image(
            "webterm",
            "webterm:latest",
            "ipterm/web",
            "${DOCKER_REPOSITORY}/ipterm-base:latest",
            amd,
            AMD,
        ),
        db.Image("jupyter:v2", "jupyter:v2", "jupyter", "python:3.11", amd, AMD),
        db.Image("ubuntu:focal", "ubuntu:focal", "ubuntu", "ubuntu:focal", amd, AMD),
        db.Image(
            "ovs-snmp",
            "ovs-snmp:latest",
            "ovs-snmp",
            "alpine:latest",
            ("--platform=linux/amd64", "--platform=linux/arm64"),
            ("linux/amd64", "linux/arm64"),
        ),
    ]


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
    options = [image.options for image in db.read_config(path, {})]
    assert options == [(), ("--a", "1"), ("--a", "1"), ("--b", "x y", "-c", "q r")]


def test_read_config_global_options_cannot_be_emptied(config):
    """A blank or comment line keeps them; '' gives one empty argument."""
    path = config("--a\nimg1\td\n   \n# --none\nimg2\td\n''\nimg3\td\n")
    options = [image.options for image in db.read_config(path, {})]
    assert options == [("--a",), ("--a",), ("",)]


def test_read_config_image_options_without_base(config):
    path = config('img\td\t"--label=a b" --pull\t# comment\n')
    (image,) = db.read_config(path, {})
    assert image.options == ("--label=a b", "--pull")
    assert image.base == "alpine:latest"


def test_read_config_leading_and_trailing_whitespace(config):
    path = config("  \timg\td\tdebian\t \n")
    assert db.read_config(path, {}) == [
        db.Image("img", "img:latest", "d", "debian:latest", (), AMD)
    ]


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
    (image,) = db.read_config(config(line + "\n"), {})
    assert image.base == expected


@pytest.mark.parametrize("dockerfile", ["FROM scratch\n", "FROM NONE\n"])
def test_read_config_untagged_base_from_dockerfile(config, dockerfile):
    (image,) = db.read_config(config("img\td\n", dockerfile=dockerfile), {})
    assert image.base == dockerfile.split()[1]


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
    (image,) = db.read_config(config(f"{name}\td\n"), {})
    assert (image.name, image.image) == (name, expected)


def test_read_config_single_field_is_global_option(config):
    """A line without a tab, even an image name, is a global option line."""
    path = config("img\nimg2\td\n")
    assert db.read_config(path, {}) == [
        db.Image("img2", "img2:latest", "d", "alpine:latest", ("img",), AMD)
    ]


def test_read_config_tab_comment_after_name_is_global_option(config):
    path = config("img\t#d\nimg2\td\n")
    (image,) = db.read_config(path, {})
    assert image.options == ("img",)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--x # comment", ("--x", "#", "comment")),
        ("--x\t# comment", ("--x",)),
        ("--x  \t # comment", ("--x",)),
    ],
)
def test_read_config_global_option_comment(config, line, expected):
    (image,) = db.read_config(config(f"{line}\nimg\td\n"), {})
    assert image.options == expected


def test_read_config_space_comment_joins_directory(config):
    path = config("img\td # comment\n")
    assert fatal_message(db.read_config, path, {}) == (
        "docker_images line 1: unknown directory 'd # comment'"
    )


@pytest.mark.parametrize(
    "line",
    [
        "a\td\tc\t-d\te",
        "a\td\t-c\te",
        "a\td\tc\td",
        "a\td\tc\t'x'\t-y",
    ],
)
def test_read_config_invalid_number_of_fields(config, line):
    path = config(f"# header\n\n{line}\n")
    assert fatal_message(db.read_config, path, {}) == (
        "docker_images line 3: invalid number of fields"
    )


def test_read_config_hash_name_is_comment(config):
    """A line starting with '#' is a comment, tabs or not."""
    path = config("img\td\n#a\td\n")
    assert [image.name for image in db.read_config(path, {})] == ["img"]


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
        (
            "img\td\n--label 'x\n",
            "docker_images line 2: No closing quotation",
        ),
        ('img\td\t\t--label "x\n', "docker_images line 1: No closing quotation"),
        ("# only comments\n\n", "Empty image configuration"),
        ("", "Empty image configuration"),
        ("--platform=linux/amd64\n", "Empty image configuration"),
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
        "docker_images line 1: Dockerfile: Missing FROM instruction"
    )


def test_read_config_dockerfile_not_utf8(config, tmp_path):
    path = config("img\td\n")
    (tmp_path / "d" / "Dockerfile").write_bytes(b"\xffFROM alpine\n")
    assert fatal_message(db.read_config, path, {}) == (
        "docker_images line 1: d/Dockerfile: not UTF-8 text (invalid start byte)"
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


# ----------------------------------------------------------------------------
# Environment: DOCKER_REPOSITORY and DOCKER_LOGIN*
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  Docker.IO/User  GHCR.io/Owner ", ["docker.io/user", "ghcr.io/owner"]),
        ("user", ["user"]),
        ("", []),
        (" \t ", []),
    ],
)
def test_docker_repositories(value, expected):
    assert db.docker_repositories({"DOCKER_REPOSITORY": value}) == expected


def test_docker_repositories_unset():
    assert db.docker_repositories({}) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ghcr.io/o a___b", "DOCKER_REPOSITORY: a___b: invalid reference format"),
        ("user:tag:x", "DOCKER_REPOSITORY: user:tag:x: invalid reference format"),
        (
            "GHCR.io/" + "A" * 256,
            "DOCKER_REPOSITORY: ghcr.io/"
            + "a" * 256
            + ": repository name must not be more than 255 characters",
        ),
    ],
)
def test_docker_repositories_invalid(value, message):
    environ = {"DOCKER_REPOSITORY": value}
    assert fatal_message(db.docker_repositories, environ) == message


@pytest.mark.parametrize(
    "value",
    ["ghcr.io/o:latest", "localhost:5000/o:2", "ghcr.io/o@" + DIGEST],
)
def test_docker_repositories_tag_or_digest(value):
    environ = {"DOCKER_REPOSITORY": f"docker.io/ok {value}"}
    assert fatal_message(db.docker_repositories, environ) == (
        f"DOCKER_REPOSITORY: {value}: a repository must not have a tag or digest"
    )


@pytest.mark.parametrize(
    "value", ["localhost:5000/o", "ghcr.io/o/sub", "user", "localhost:5000", "user:1"]
)
def test_docker_repositories_registry_port_is_no_tag(value):
    assert db.docker_repositories({"DOCKER_REPOSITORY": value}) == [value]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A___B", "invalid reference format"),
        ("Img..x", "invalid reference format"),
        ("user/-Img", "invalid reference format"),
        ("Img", "invalid reference format: repository name (Img) must be lowercase"),
        (
            "user/Img:1",
            "invalid reference format: repository name (user/Img) must be lowercase",
        ),
        (
            "ghcr.io/O/a",
            "invalid reference format: repository name (O/a) must be lowercase",
        ),
    ],
)
def test_parse_reference_lowercase_only_when_otherwise_valid(text, message):
    with pytest.raises(ValueError) as info:
        db.parse_reference(text)
    assert str(info.value) == message


def test_login_table():
    environ = {
        "PATH": "/bin",
        "DOCKER_LOGIN": "docker.io user pass word",
        "DOCKER_LOGIN_GHCR": "  GHCR.IO  me  sec  ret ",
        "DOCKER_LOGINX": "localhost:5000 u p",
        "XDOCKER_LOGIN": "ignored",
        "docker_login": "ignored",
    }
    assert db.login_table(environ) == {
        HUB: ("user", "pass word"),
        "ghcr.io": ("me", "sec  ret"),
        "localhost:5000": ("u", "p"),
    }


@pytest.mark.parametrize("value", ["", "   ", "ghcr.io", "ghcr.io user"])
def test_login_table_needs_three_fields(value):
    environ = {"DOCKER_LOGIN_X": value}
    assert fatal_message(db.login_table, environ) == (
        "DOCKER_LOGIN_X requires 3 fields: registry user password"
    )


def test_login_table_defined_twice():
    environ = {
        "DOCKER_LOGIN_1": "docker.io a b",
        "DOCKER_LOGIN_2": "Registry-1.Docker.IO c d",
    }
    assert fatal_message(db.login_table, environ) == (
        "DOCKER_LOGIN: registry-1.docker.io defined multiple times"
    )


def test_child_environment_strips_logins():
    environ = {
        "PATH": "/bin",
        "DOCKER_REPOSITORY": "user",
        "DOCKER_LOGIN": "a b c",
        "DOCKER_LOGIN_A": "a b c",
        "DOCKER_LOGINX": "",
        "XDOCKER_LOGIN": "kept",
    }
    before = dict(environ)
    assert db.child_environment(environ) == {
        "PATH": "/bin",
        "DOCKER_REPOSITORY": "user",
        "XDOCKER_LOGIN": "kept",
    }
    assert environ == before


# ----------------------------------------------------------------------------
# Command line names, forcing, targets, build command
# ----------------------------------------------------------------------------

CONFIG_IMAGES = [
    make_image("img", base="alpine:latest"),
    make_image("tool:2", image="tool:2", base="NONE"),
    make_image("ghcr.io/o/full", base="$DOCKER_REPOSITORY/img:latest"),
]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([], []),
        (["img"], ["img:latest"]),
        (["img:latest", "tool:2"], ["img:latest", "tool:2"]),
        (["alpine"], ["alpine:latest"]),
        (["NONE"], ["NONE"]),
        (["ghcr.io/o/full"], ["ghcr.io/o/full:latest"]),
        (["$DOCKER_REPOSITORY/img"], ["$DOCKER_REPOSITORY/img:latest"]),
    ],
)
def test_normalize_forced(names, expected):
    assert db.normalize_forced(names, CONFIG_IMAGES, "conf") == expected


@pytest.mark.parametrize("name", ["tool", "img:1", "scratch", "none", "ghcr.io/o/img"])
def test_normalize_forced_unknown(name):
    assert fatal_message(db.normalize_forced, ["img", name], CONFIG_IMAGES, "conf") == (
        f"Image {name} not found in 'conf' configuration file"
    )


def test_check_repositories_defined():
    full = [make_image("ghcr.io/o/a")]
    assert db.check_repositories_defined(full, []) is None
    assert db.check_repositories_defined(CONFIG_IMAGES, ["user"]) is None
    images = [*full, make_image("tool:2", image="tool:2")]
    assert fatal_message(db.check_repositories_defined, images, []) == (
        "tool:2: Environment variable DOCKER_REPOSITORY is not defined"
    )


@pytest.mark.parametrize(
    ("all_flag", "forced", "expected"),
    [
        (False, [], False),
        (False, ["img:latest"], True),
        (False, ["alpine:latest"], True),  # by base image
        (False, ["other:latest"], False),
        (True, [], True),
        (True, ["img:latest"], False),
        (True, ["alpine:latest"], False),
        (True, ["other:latest"], True),
    ],
)
def test_is_forced(all_flag, forced, expected):
    assert db.is_forced(make_image("img"), all_flag, forced) is expected


def test_target_repositories():
    repositories = ["docker.io/user", "ghcr.io/o"]
    assert db.target_repositories(make_image("img"), repositories) == (
        "docker.io/user",
        "ghcr.io/o",
    )
    assert db.target_repositories(make_image("img"), []) == ()
    full = make_image("ghcr.io/o/img")
    assert db.target_repositories(full, repositories) == (None,)


@pytest.mark.parametrize(
    ("base_layers", "image_layers", "expected"),
    [
        (("sha256:b1", "sha256:b2"), ("sha256:b1", "sha256:b2", "sha256:i"), False),
        (("sha256:b1", "sha256:b2"), ("sha256:b1", "sha256:x", "sha256:i"), True),
        (("sha256:b2",), ("sha256:i", "sha256:b2"), False),  # anywhere in layers
        ((None,), ("sha256:i",), False),  # scratch / NONE
        (("",), ("sha256:i",), False),
    ],
)
def test_base_changed(base_layers, image_layers, expected):
    base = db.ImageInfo(CREATED, base_layers)
    info = db.ImageInfo(CREATED, image_layers)
    assert db.base_changed(base, info) is expected


def test_build_command_order():
    image = make_image(
        "img",
        directory="ctx/img",
        base="$DOCKER_REPOSITORY/base:latest",
        options=("--platform=linux/amd64", "--no-cache"),
    )
    assert db.build_command(image, "ghcr.io/o/img:latest") == [
        "docker",
        "buildx",
        "build",
        "--build-arg",
        "DOCKER_REPOSITORY=ghcr.io/o",
        "--platform=linux/amd64",
        "--no-cache",
        "--push",
        "--tag",
        "ghcr.io/o/img:latest",
        "ctx/img",
    ]


def test_build_command_plain_base():
    image = make_image("ghcr.io/o/img:1", image="ghcr.io/o/img:1", base="debian:12")
    assert db.build_command(image, "ghcr.io/o/img:1") == [
        "docker",
        "buildx",
        "build",
        "--push",
        "--tag",
        "ghcr.io/o/img:1",
        "d",
    ]


@pytest.fixture
def docker_script(tmp_path):
    """Install `script` as the docker command; return the environment that
    finds it first."""

    def install(script):
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        docker = bindir / "docker"
        docker.write_text("#!/bin/sh\n" + script)
        docker.chmod(0o755)
        return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}

    return install


BUILD_TARGET = db.Target(
    make_image("img", directory="ctx"), "ghcr.io/o", "ghcr.io/o/img:latest", "NONE"
)


def test_build_runs_command(capfd, docker_script):
    environ = docker_script('echo "$K:" "$@"\n')
    environ["K"] = "V"
    db.build(BUILD_TARGET, environ)
    assert capfd.readouterr().out == (
        "V: buildx build --push --tag ghcr.io/o/img:latest ctx\n\n"
    )


def test_build_runs_docker_in_a_session_of_its_own(capfd, docker_script):
    environ = docker_script('ps -o sid= -p $$ | tr -d " "; echo $$\n')
    db.build(BUILD_TARGET, environ)
    sid, pid, blank = capfd.readouterr().out.split("\n", 2)
    assert (sid, blank) == (pid, "\n")
    assert int(sid) != os.getsid(0)


@pytest.mark.parametrize("code", [1, 3, 125, 255])
def test_build_failure_exit_status(capfd, docker_script, code):
    environ = docker_script(f"echo failing; exit {code}\n")
    with pytest.raises(db.Fatal) as info:
        db.build(BUILD_TARGET, environ)
    assert (info.value.message, info.value.code) == (None, code)
    assert capfd.readouterr().out == "failing\n"  # no blank line


@pytest.mark.parametrize(
    ("signal_name", "code"), [("TERM", 143), ("KILL", 137), ("INT", 130)]
)
def test_build_killed_by_a_signal(capfd, docker_script, signal_name, code):
    environ = docker_script(f"kill -{signal_name} $$\nsleep 5\n")
    with pytest.raises(db.Fatal) as info:
        db.build(BUILD_TARGET, environ)
    assert (info.value.message, info.value.code) == (
        f"ghcr.io/o/img: docker was killed by SIG{signal_name}",
        code,
    )
    assert capfd.readouterr().out == ""


def test_build_cannot_run_docker(tmp_path):
    environ = {"PATH": str(tmp_path / "nobin")}
    assert fatal_message(db.build, BUILD_TARGET, environ) == (
        "Can't run docker: [Errno 2] No such file or directory: 'docker'"
    )


def test_build_interrupted_stops_the_process_group(
    tmp_path, capfd, docker_script, monkeypatch
):
    """An Interrupted while docker runs: its whole session gets SIGTERM, then
    SIGKILL after BUILD_STOP_TIMEOUT; the run ends with 128 + the signal."""
    pids = tmp_path / "pids"
    environ = docker_script(f"trap '' TERM\nsleep 60 &\necho $$ $! > {pids}\nwait\n")
    monkeypatch.setattr(db, "BUILD_STOP_TIMEOUT", 0.2)

    def interrupt(signum, frame):
        raise db.Interrupted(signal.SIGTERM)

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(db.Fatal) as info:
            db.build(BUILD_TARGET, environ)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert (info.value.message, info.value.code) == (
        "Interrupted by SIGTERM: build of ghcr.io/o/img stopped",
        143,
    )
    shell, sleeper = (int(pid) for pid in pids.read_text().split())
    for pid in (shell, sleeper):  # both gone (the sleeper may be a zombie
        # of init for a moment): no signal can reach a live process
        deadline = time.monotonic() + 5
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(pid)


def process_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("signum", "message"),
    [
        (9, "ghcr.io/o/img: docker was killed by SIGKILL"),
        (15, "ghcr.io/o/img: docker was killed by SIGTERM"),
        (2, "ghcr.io/o/img: docker was killed by SIGINT"),
        (11, "ghcr.io/o/img: docker was killed by SIGSEGV"),
    ],
)
def test_killed_message(signum, message):
    assert db.killed_message(BUILD_TARGET, signum) == message


def test_killed_message_shows_the_name_without_added_tag():
    target = db.image_targets(make_image("tool:2", image="tool:2"), ["user"])[0]
    assert db.killed_message(target, 9) == "user/tool:2: docker was killed by SIGKILL"


# ----------------------------------------------------------------------------
# Registry errors (dxf replaced by a fake)
# ----------------------------------------------------------------------------

OLD_URLLIB3 = (
    "HTTPSConnectionPool(host='localhost', port=5000): Max retries exceeded "
    "with url: /v2/ (Caused by NewConnectionError('<urllib3.connection."
    "HTTPSConnection object at 0x7f0123456789>: Failed to establish a new "
    "connection: [Errno 111] Connection refused'))"
)
NEW_URLLIB3 = (
    "HTTPSConnectionPool(host='localhost', port=5000): Max retries exceeded "
    'with url: /v2/ (Caused by NewConnectionError("HTTPSConnection(host='
    "'localhost', port=5000): Failed to establish a new connection: "
    '[Errno 111] Connection refused"))'
)


def test_request_error_text_old_urllib3():
    err = requests.exceptions.ConnectionError(OLD_URLLIB3)
    assert db.request_error_text(err) == (
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )


def test_request_error_text_plain_message():
    """No cause in the chain and no urllib3 wrapping: the whole text."""
    err = requests.exceptions.HTTPError(
        "404 Client Error: Not Found for url: https://reg.example/v2/"
    )
    assert db.request_error_text(err) == (
        "404 Client Error: Not Found for url: https://reg.example/v2/"
    )


def test_request_error_text_timeout_message():
    err = requests.exceptions.ReadTimeout("Read timed out. (read timeout=30)")
    assert db.request_error_text(err) == "timed out"


def test_request_error_text_double_quoted_cause_passes_through():
    """The reference regex needs a closing "')": a "\")" cause is kept whole."""
    err = requests.exceptions.ConnectionError(NEW_URLLIB3)
    assert db.request_error_text(err) == NEW_URLLIB3


def raised(error, cause=None):
    """The error as a raise statement leaves it (with its __cause__)."""
    try:
        raise error from cause
    except BaseException as caught:
        return caught


def refused_chain():
    """What requests raises for a refused connection (urllib3 2)."""
    refused = raised(ConnectionRefusedError(111, "Connection refused"))
    new_connection = raised(
        urllib3.exceptions.NewConnectionError(
            None, "Failed to establish a new connection: [Errno 111] Connection refused"
        ),
        refused,
    )
    retries = raised(
        urllib3.exceptions.MaxRetryError(None, "/v2/", new_connection), None
    )
    return raised(requests.exceptions.ConnectionError(retries)), [
        retries,
        new_connection,
        refused,
    ]


def test_exception_chain_outermost_first():
    outer, (retries, new_connection, refused) = refused_chain()
    assert db.exception_chain(outer) == [outer, retries, new_connection, refused]


def test_exception_chain_context_and_cycles():
    first, second = ValueError("first"), KeyError("second")
    first.__context__, second.__context__ = second, first
    assert db.exception_chain(first) == [first, second]
    alone = RuntimeError("alone")
    assert db.exception_chain(alone) == [alone]


def test_exception_chain_cause_before_context_before_reason_before_args():
    cause, context, reason, arg = (OSError(n) for n in range(4))
    err = Exception("text", arg, 5)
    err.__cause__, err.__context__, err.reason = cause, context, reason
    assert db.exception_chain(err) == [err, cause, context, reason, arg]


def test_request_error_text_connection_refused():
    outer, _ = refused_chain()
    assert db.request_error_text(outer) == "Connection refused"


def test_request_error_text_name_not_known():
    gaierror = raised(socket.gaierror(-2, "Name or service not known"))
    resolution = raised(
        urllib3.exceptions.NameResolutionError("nowhere.invalid", None, gaierror),
        gaierror,
    )
    retries = raised(urllib3.exceptions.MaxRetryError(None, "/v2/", resolution))
    outer = raised(requests.exceptions.ConnectionError(retries))
    assert db.request_error_text(outer) == "Name or service not known"
    assert db.request_error_text(gaierror) == "Name or service not known"


def test_request_error_text_connection_reset():
    reset = raised(ConnectionResetError(104, "Connection reset by peer"))
    protocol = raised(urllib3.exceptions.ProtocolError("Connection aborted.", reset))
    outer = raised(requests.exceptions.ConnectionError(protocol))
    assert db.request_error_text(outer) == "Connection reset by peer"


@pytest.mark.parametrize(
    "make",
    [
        lambda: requests.exceptions.ConnectTimeout("slow"),
        lambda: requests.exceptions.ReadTimeout("Read timed out. (read timeout=30)"),
        lambda: TimeoutError("timed out"),
        # a read timeout while streaming a body: requests says ConnectionError
        lambda: raised(
            requests.exceptions.ConnectionError(
                raised(
                    urllib3.exceptions.ReadTimeoutError(None, None, "Read timed out."),
                    raised(TimeoutError("The read operation timed out")),
                )
            )
        ),
        # a timeout wins over the strerror of an OSError in the chain
        lambda: raised(
            requests.exceptions.ConnectionError("x"),
            raised(TimeoutError(110, "Connection timed out")),
        ),
    ],
)
def test_request_error_text_timeout(make):
    assert db.request_error_text(make()) == "timed out"


def test_request_error_text_certificate():
    verify = ssl.SSLCertVerificationError(
        1,
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate (_ssl.c:1006)",
    )
    verify.verify_message = "self-signed certificate"
    verify.verify_code = 18
    ssl_error = raised(urllib3.exceptions.SSLError(verify), verify)
    retries = raised(urllib3.exceptions.MaxRetryError(None, "/v2/", ssl_error))
    outer = raised(requests.exceptions.SSLError(retries))
    assert db.request_error_text(outer) == (
        "certificate verify failed: self-signed certificate"
    )
    assert db.request_error_text(verify) == (
        "certificate verify failed: self-signed certificate"
    )


def test_request_error_text_os_error_without_strerror_keeps_the_text():
    assert db.request_error_text(OSError("no strerror here")) == "no strerror here"


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
ARM = ("linux/arm64",)
BOTH = ("linux/amd64", "linux/arm64")


class FakeResponse:
    def __init__(self, content, headers):
        self.content = content
        self.headers = headers


class FakeClient:
    """Stands in for dxf.DXF (no network): manifests by version (tag or
    digest) with their response headers, blobs by digest."""

    def __init__(self):
        self.manifests = {}
        self.blobs = {}
        self.error = None
        self.calls = []

    def connect(self, ref):
        """Stands in for Registry.client."""
        self.calls.append(("client", ref.registry, ref.path))
        return self

    def head_manifest_and_response(self, version):
        self.calls.append(("head", version))
        if self.error:
            raise self.error
        _, headers = self.manifests[version]
        return headers.get("Docker-Content-Digest"), FakeResponse(b"", headers)

    def get_manifest_and_response(self, version):
        self.calls.append(("manifest", version))
        if self.error:
            raise self.error
        body, headers = self.manifests[version]
        return body.decode(), FakeResponse(body, headers)

    def pull_blob(self, digest):
        self.calls.append(("blob", digest))
        data = self.blobs[digest]
        return iter([data[:5], data[5:]])

    def add_manifest(self, document, version=None, headers=None):
        """Store a manifest or index under its digest (and a tag)."""
        body = document if isinstance(document, bytes) else json.dumps(document)
        body = body.encode() if isinstance(body, str) else body
        digest = sha256(body)
        self.manifests[digest] = (body, dict(headers or {}))
        if version:
            self.manifests[version] = (
                body,
                {"Docker-Content-Digest": digest, **(headers or {})},
            )
        return digest

    def add_blob(self, data):
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_image(self, config, version=None, media_type=OCI_MANIFEST):
        """Store a config blob and its manifest; the manifest's digest."""
        blob = config if isinstance(config, bytes) else json.dumps(config).encode()
        manifest = {
            "schemaVersion": 2,
            "config": {"digest": self.add_blob(blob), "size": len(blob)},
            "layers": [],
        }
        if media_type:
            manifest["mediaType"] = media_type
        return self.add_manifest(manifest, version)


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_doc(
    arch="amd64", created="2024-01-02T03:04:05Z", layers=("sha256:a",), **more
):
    document = {"created": created, "rootfs": {"type": "layers", "diff_ids": layers}}
    if arch:
        document.update(os="linux", architecture=arch)
    document.update(more)
    return document


def entry(digest, os_name="linux", arch="amd64", **more):
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": 1,
        "platform": {"os": os_name, "architecture": arch, **more},
    }


@pytest.fixture
def client():
    """A FakeClient; `.registry` (without a cache) hands it out."""
    fake = FakeClient()
    fake.registry = db.Registry({})
    fake.registry.client = fake.connect
    return fake


def http_error(status):
    response = requests.Response()
    response.status_code = status
    return requests.exceptions.HTTPError(f"{status} Error", response=response)


def test_fetch_image_oci_manifest_without_media_type(client):
    digest = client.add_image(
        config_doc(
            created="2024-01-02T03:04:05.123456789Z", layers=["sha256:a", "sha256:b"]
        ),
        "latest",
        media_type=None,
    )
    expected = db.ImageInfo(
        datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        ("sha256:a", "sha256:b"),
    )
    assert db.fetch_image("img", AMD, client.registry) == {"linux/amd64": expected}
    config_digest = json.loads(client.manifests[digest][0])["config"]["digest"]
    assert client.calls == [
        ("client", HUB, "library/img"),
        ("manifest", "latest"),
        ("blob", config_digest),
    ]


def test_fetch_image_single_platform_image_lacks_other_platforms(client):
    client.add_image(config_doc(arch="amd64"), "1")
    assert db.fetch_image("ghcr.io/o/img:1", BOTH, client.registry) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",)),
        "linux/arm64": None,
    }


def test_fetch_image_config_without_platform_serves_every_platform(client):
    client.add_image(config_doc(arch=None), "latest")
    info = db.ImageInfo(CREATED_Z, ("sha256:a",))
    assert db.fetch_image("img", BOTH, client.registry) == {
        "linux/amd64": info,
        "linux/arm64": info,
    }


def test_fetch_image_docker_manifest_by_digest(client):
    digest = client.add_image(
        config_doc(), media_type="application/vnd.docker.distribution.manifest.v2+json"
    )
    assert db.fetch_image("img@" + digest, AMD, client.registry) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",))
    }
    assert client.calls[1] == ("manifest", digest)


def test_fetch_image_index_without_media_type(client):
    amd = client.add_image(config_doc("amd64", layers=["sha256:x"]))
    arm = client.add_image(config_doc("arm64", layers=["sha256:y"]))
    client.add_manifest(
        {"schemaVersion": 2, "manifests": [entry(amd), entry(arm, arch="arm64")]},
        "latest",
    )
    platforms = ("linux/amd64", "linux/arm64/v8", "linux/arm/v7")
    assert db.fetch_image("img", platforms, client.registry) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:x",)),
        "linux/arm64/v8": db.ImageInfo(CREATED_Z, ("sha256:y",)),
        "linux/arm/v7": None,
    }


def test_fetch_image_index_with_attestation_and_entry_without_platform(client):
    amd = client.add_image(config_doc("amd64"))
    arm = client.add_image(config_doc("arm64", created="2024-01-02T03:04:05"))
    attestation = entry("sha256:" + "1" * 64, "unknown", "unknown")
    attestation["annotations"] = {
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": amd,
    }
    no_platform = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "2" * 64}
    client.add_manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                no_platform,
                attestation,
                entry(amd),
                entry(arm, arch="arm64", variant="v8"),
            ],
        },
        "1",
    )
    assert db.fetch_image(
        "ghcr.io/o/img:1", ("linux/arm64", "linux/amd64"), client.registry
    ) == {
        "linux/arm64": db.ImageInfo(CREATED_Z, ("sha256:a",)),
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",)),
    }
    fetched = [call[1] for call in client.calls if call[0] == "manifest"]
    assert fetched == ["1", arm, amd]


def test_fetch_image_content_type_header_fallback(client):
    amd = client.add_image(config_doc("amd64"))
    client.add_manifest(
        {"schemaVersion": 2, "manifests": [entry(amd)]},
        "latest",
        headers={"Content-Type": DOCKER_LIST + "; charset=utf-8"},
    )
    assert db.fetch_image("img", AMD, client.registry) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",))
    }


def test_get_manifest_kinds(client):
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    client.add_manifest(index, "i")
    manifest = {"schemaVersion": 2, "config": {"digest": "sha256:c"}}
    client.add_manifest(manifest, "m", headers={"Content-Type": "application/json"})
    digest = sha256(json.dumps(index).encode())
    assert db.get_manifest(client, "i") == (index, True, digest)
    # by digest: the digest asked for
    assert db.get_manifest(client, digest) == (index, True, digest)
    # a tag without Docker-Content-Digest: the digest of the content
    body, _ = client.manifests["i"]
    client.manifests["bare"] = (body, {})
    assert db.get_manifest(client, "bare") == (index, True, digest)
    manifest_digest = client.add_manifest({"config": {"digest": "sha256:c"}}, "m2")
    assert db.get_manifest(client, "m2") == (
        {"config": {"digest": "sha256:c"}},
        False,
        manifest_digest,
    )
    # a Content-Type that says nothing leaves the decision to the document
    with pytest.raises(db.dxf.exceptions.DXFUnsupportedSchemaType) as info:
        db.get_manifest(client, "m")
    assert str(info.value) == 'The mediaType "application/json" is not supported'


def test_image_config_and_indexed_image(client):
    digest = client.add_image(config_doc("arm", variant="v7", layers=[]))
    manifest = json.loads(client.manifests[digest][0])
    found = db.image_config(client, manifest)
    assert found == (db.ImageInfo(CREATED_Z, ()), ("linux", "arm", "v7"))
    index = {"manifests": [entry(digest, arch="arm", variant="v7")]}
    assert db.indexed_image(client, index, "linux/arm") == found[0]
    assert db.indexed_image(client, index, "linux/arm/v6") is None
    assert db.indexed_image(client, {"manifests": []}, "linux/amd64") is None


@pytest.mark.parametrize(
    "error",
    [
        db.dxf.exceptions.DXFUnauthorizedError(),
        http_error(401),
        http_error(403),
        http_error(404),
    ],
)
def test_fetch_image_not_found(client, error):
    client.error = error
    assert db.fetch_image("ghcr.io/o/img:1", BOTH, client.registry) is None
    assert client.calls == [("client", "ghcr.io", "o/img"), ("manifest", "1")]


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (http_error(400), "ghcr.io/o/img: 400 Error"),
        (
            requests.exceptions.SSLError(OLD_URLLIB3),
            "ghcr.io/o/img: Failed to establish a new connection: "
            "[Errno 111] Connection refused",
        ),
        (db.dxf.exceptions.DXFError("bad thing"), "ghcr.io/o/img: bad thing"),
    ],
)
def test_fetch_image_request_errors(client, error, message):
    client.error = error
    assert fatal_message(db.fetch_image, "ghcr.io/o/img", AMD, client.registry) == (
        message
    )


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (http_error(500), "ghcr.io/o/img: 500 Error"),
        (
            requests.exceptions.ConnectionError(OLD_URLLIB3),
            "ghcr.io/o/img: Failed to establish a new connection: "
            "[Errno 111] Connection refused",
        ),
    ],
)
def test_fetch_image_retryable_request_errors(client, error, message):
    """What may go away is left to with_retries, which makes it the same
    Fatal once the tries are spent."""
    client.error = error
    with pytest.raises(type(error)) as raised:
        db.fetch_image("ghcr.io/o/img", AMD, client.registry)
    assert raised.value is error
    waits = []

    def operation():
        return db.fetch_image("ghcr.io/o/img", AMD, client.registry)

    assert fatal_message(
        db.with_retries, "ghcr.io/o/img", operation, waits.append, lambda: 1.0
    ) == (message)
    assert waits == [0.5, 1.0, 2.0, 4.0]
    assert client.calls.count(("manifest", "latest")) == 1 + db.RETRY_ATTEMPTS


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"{not json", "ghcr.io/o/img: Invalid JSON"),
        (b"[1, 2]", "ghcr.io/o/img: Invalid JSON"),
        (
            b'{"created": "2024-01-02T03:04:05Z"}',
            "ghcr.io/o/img: missing information from registry",
        ),
        (
            b'{"created": 5, "rootfs": {"diff_ids": []}}',
            "ghcr.io/o/img: missing information from registry",
        ),
        (
            b'{"created": "2024-01-02T03:04:05Z", "rootfs": {"diff_ids": "x"}}',
            "ghcr.io/o/img: missing information from registry",
        ),
        (
            b'{"created": "garbage", "rootfs": {"diff_ids": []}}',
            "ghcr.io/o/img: Unknown string format: garbage",
        ),
    ],
)
def test_fetch_image_config_errors(client, blob, message):
    client.add_image(blob, "latest")
    assert (
        fatal_message(db.fetch_image, "ghcr.io/o/img", AMD, client.registry) == message
    )


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"[]", {}),
        (b'"manifest"', {}),
        (b"{oops", {}),
    ],
)
def test_fetch_image_manifest_not_a_json_object(client, body, headers):
    client.add_manifest(body, "latest", headers)
    assert (
        fatal_message(db.fetch_image, "img", AMD, client.registry)
        == "img: Invalid JSON"
    )


def test_fetch_image_digest_mismatch(client):
    body = json.dumps({"schemaVersion": 2, "config": {"digest": "x"}}).encode()
    wrong = "sha256:" + "0" * 64
    client.manifests["latest"] = (body, {"Docker-Content-Digest": wrong})
    assert fatal_message(db.fetch_image, "img", AMD, client.registry) == (
        f"img: expected digest {wrong}, got {sha256(body)}"
    )
    # asked for by digest, the digest asked for is the one checked
    client.manifests[wrong] = (body, {})
    assert fatal_message(db.fetch_image, "img@" + wrong, AMD, client.registry) == (
        f"img@{wrong}: expected digest {wrong}, got {sha256(body)}"
    )


def test_fetch_image_unexpected_digest_method(client):
    body = b'{"schemaVersion": 2, "config": {"digest": "x"}}'
    client.manifests["latest"] = (body, {"Docker-Content-Digest": "md5:" + "0" * 32})
    assert fatal_message(db.fetch_image, "img", AMD, client.registry) == (
        "img: expected digest method sha256, got md5"
    )


@pytest.mark.parametrize(
    ("document", "headers"),
    [
        (
            {"schemaVersion": 1, "name": "o/img", "fsLayers": []},
            {"Content-Type": SCHEMA1},
        ),
        ({"schemaVersion": 1, "mediaType": SCHEMA1, "fsLayers": []}, {}),
    ],
)
def test_fetch_image_schema1_unsupported(client, document, headers):
    client.add_manifest(document, "old", headers)
    assert fatal_message(db.fetch_image, "ghcr.io/o/img:old", AMD, client.registry) == (
        f'ghcr.io/o/img:old: The mediaType "{SCHEMA1}" is not supported'
    )


def test_fetch_image_index_within_index(client):
    inner = client.add_manifest({"mediaType": OCI_INDEX, "manifests": []})
    client.add_manifest({"mediaType": OCI_INDEX, "manifests": [entry(inner)]}, "1")
    assert fatal_message(db.fetch_image, "ghcr.io/o/img:1", AMD, client.registry) == (
        "ghcr.io/o/img:1: index within an index"
    )


def test_fetch_image_created_without_zone_is_utc(client):
    client.add_image(config_doc(created="2024-01-02T03:04:05.5"), "latest")
    (info,) = db.fetch_image("img", AMD, client.registry).values()
    assert info.created == datetime.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert db.parse_created("2024-01-02T05:04:05+02:00") == CREATED_Z


def test_fetch_image_empty_diff_ids_base_never_changed(client):
    client.add_image(config_doc(layers=[]), "latest")
    base = db.fetch_image("base", AMD, client.registry)
    assert base == {"linux/amd64": db.ImageInfo(CREATED_Z, ())}
    image = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:i",))}
    assert db.base_changed(base["linux/amd64"], image["linux/amd64"]) is False
    assert db.registry_reason(base, image) is None


def test_fetch_image_cold_cache_fills_it_without_head(client, tmp_path):
    """An empty cache makes no HEAD request; what is read is kept under
    the manifest digest."""
    digest = client.add_image(config_doc(), "1")
    cache = db.DigestCache(str(tmp_path / "cache.json"))
    assert cache.warm is False
    client.registry.cache = cache
    found = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",)), "linux/arm64": None}
    assert db.fetch_image("ghcr.io/o/img:1", BOTH, client.registry) == found
    assert [call[0] for call in client.calls] == ["client", "manifest", "blob"]
    assert cache.get(digest, BOTH) == found


def warm_cache(tmp_path, digest, found):
    """A cache file holding one entry; the DigestCache reading it."""
    cache = db.DigestCache(str(tmp_path / "cache.json"))
    cache.put(digest, found)
    cache.save()
    return db.DigestCache(str(tmp_path / "cache.json"))


def test_fetch_image_warm_cache_answers_after_head(client, tmp_path):
    digest = client.add_image(config_doc(), "1")
    found = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:cached",))}
    client.registry.cache = warm_cache(tmp_path, digest, found)
    assert client.registry.cache.warm is True
    assert db.fetch_image("ghcr.io/o/img:1", AMD, client.registry) == found
    assert client.calls == [("client", "ghcr.io", "o/img"), ("head", "1")]
    # by digest, not even a HEAD request
    client.calls.clear()
    assert db.fetch_image("ghcr.io/o/img@" + digest, AMD, client.registry) == found
    assert client.calls == [("client", "ghcr.io", "o/img")]


def test_fetch_image_warm_cache_misses(client, tmp_path):
    """Another digest, or a platform the cache does not know: the
    manifest is read, and the cache learns it."""
    digest = client.add_image(config_doc(), "1")
    other = "sha256:" + "1" * 64
    cached = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:cached",))}
    cache = warm_cache(tmp_path, other, cached)
    client.registry.cache = cache
    info = db.ImageInfo(CREATED_Z, ("sha256:a",))
    assert db.fetch_image("ghcr.io/o/img:1", AMD, client.registry) == {
        "linux/amd64": info
    }
    assert [call[0] for call in client.calls] == ["client", "head", "manifest", "blob"]
    assert cache.get(digest, AMD) == {"linux/amd64": info}
    # the cache knows the digest for linux/amd64 only
    client.calls.clear()
    both = {"linux/amd64": info, "linux/arm64": None}
    assert db.fetch_image("ghcr.io/o/img:1", BOTH, client.registry) == both
    assert [call[0] for call in client.calls] == ["client", "head", "manifest", "blob"]
    assert cache.get(digest, BOTH) == both


def test_fetch_image_warm_cache_head_not_found(client, tmp_path):
    client.registry.cache = warm_cache(tmp_path, DIGEST, {"linux/amd64": None})
    client.error = http_error(404)
    assert db.fetch_image("ghcr.io/o/img:1", AMD, client.registry) is None
    assert client.calls == [("client", "ghcr.io", "o/img"), ("head", "1")]


def test_fetch_image_invalid_reference(client):
    assert fatal_message(db.fetch_image, "a___b", AMD, client.registry) == (
        "a___b: invalid reference format"
    )
    assert client.calls == []


@pytest.mark.parametrize(
    ("found", "platform", "expected"),
    [
        (("linux", "amd64", None), "linux/amd64", True),
        (("linux", "amd64", None), "linux/arm64", False),
        (("linux", "arm64", None), "linux/arm64/v8", True),
        (("linux", "arm64", "v8"), "linux/arm64", True),
        (("linux", "arm64", "v9"), "linux/arm64", False),
        (("linux", "arm", None), "linux/arm/v7", True),
        (("linux", "arm", "v6"), "linux/arm/v7", False),
        (("linux", "arm", "v6"), "linux/arm/v6", True),
        (("windows", "amd64", None), "linux/amd64", False),
        (("unknown", "unknown", None), "linux/amd64", False),
        ((None, None, None), "linux/s390x", True),
    ],
)
def test_platform_matches(found, platform, expected):
    assert db.platform_matches(found, platform) is expected


@pytest.mark.parametrize(
    ("arch", "variant", "expected"),
    [
        ("arm64", None, "v8"),
        ("arm", "", "v7"),
        ("arm", "v6", "v6"),
        ("amd64", None, ""),
        ("amd64", "v3", "v3"),
        (None, None, ""),
    ],
)
def test_default_variant(arch, variant, expected):
    assert db.default_variant(arch, variant) == expected


def test_registry_lookup_remembers(monkeypatch):
    calls = []
    info = db.ImageInfo(CREATED, ("sha256:a",))

    def fetch(reference, platforms, registry):
        calls.append((reference, platforms, registry))
        return dict.fromkeys(platforms, info)

    monkeypatch.setattr(db, "fetch_image", fetch)
    logins = {"ghcr.io": ("u", "p")}
    registry = db.Registry(logins)
    assert registry.logins is logins
    assert registry.lookup("scratch", BOTH) == dict.fromkeys(BOTH, db.NO_BASE)
    assert registry.lookup("NONE", AMD) == {"linux/amd64": db.NO_BASE}
    epoch = datetime.datetime(1970, 1, 1, tzinfo=UTC)
    assert (db.NO_BASE.created, db.NO_BASE.layers) == (epoch, (None,))
    assert registry.lookup("a", AMD) == {"linux/amd64": info}
    # every spelling of the same image is the same look-up
    assert registry.lookup("docker.io/library/a:latest", AMD) == {"linux/amd64": info}
    assert registry.lookup("index.docker.io/a", AMD) == {"linux/amd64": info}
    assert registry.lookup("a", BOTH) == dict.fromkeys(BOTH, info)
    # each look-up is made once in a run
    assert registry.lookup("a:latest", AMD) == {"linux/amd64": info}
    assert registry.lookup("docker.io/a", BOTH) == dict.fromkeys(BOTH, info)
    assert calls == [("a", AMD, registry), ("a", BOTH, registry)]
    assert not hasattr(registry, "forget")
    key = (HUB, "library/a", "latest")
    assert list(registry.known) == [(key, AMD), (key, BOTH)]
    assert registry.known[key, AMD].result() == {"linux/amd64": info}
    registry.close()


def test_registry_lookup_invalid_reference():
    registry = db.Registry({})
    assert fatal_message(registry.lookup, "a___b", AMD) == (
        "a___b: invalid reference format"
    )


def test_registry_reason():
    old = db.ImageInfo(CREATED, ("sha256:b",))
    new = db.ImageInfo(CREATED, ("sha256:new",))
    image = db.ImageInfo(CREATED, ("sha256:b", "sha256:i"))
    base = {"linux/amd64": old, "linux/arm64": old}
    assert db.registry_reason(base, None) == "Image missing in repository"
    assert db.registry_reason(base, {"linux/amd64": image, "linux/arm64": None}) == (
        "Image missing in repository for linux/arm64"
    )
    both = {"linux/amd64": image, "linux/arm64": image}
    assert db.registry_reason(base, both) is None
    changed = {"linux/amd64": old, "linux/arm64": new}
    assert db.registry_reason(changed, both) == "Base image has changed"
    scratch = dict.fromkeys(BOTH, db.NO_BASE)
    assert db.registry_reason(scratch, both) is None


def test_check_base():
    found = {"linux/amd64": db.ImageInfo(CREATED, ())}
    assert db.check_base("b:1", found) is found
    assert fatal_message(db.check_base, "b:1", None) == "Missing base image: b:1"
    partial = {"linux/amd64": db.ImageInfo(CREATED, ()), "linux/arm64": None}
    assert fatal_message(db.check_base, "b:1", partial) == (
        "Missing base image: b:1 for linux/arm64"
    )


def test_oldest_created():
    later = CREATED + datetime.timedelta(hours=1)
    info = {
        "linux/amd64": db.ImageInfo(later, ()),
        "linux/arm64": db.ImageInfo(CREATED, ()),
    }
    assert db.oldest_created(info) == CREATED.timestamp()


# ----------------------------------------------------------------------------
# context_change and context_mtime (real git repositories)
# ----------------------------------------------------------------------------


def git(cwd, *args, date=None):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    if date:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
    subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, env=env, capture_output=True
    )


def set_tree_mtime(directory, mtime):
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (mtime, mtime))
    os.utime(directory, (mtime, mtime))


@pytest.fixture
def environ(tmp_path):
    """An environment where git never finds a repository above tmp_path."""
    return {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)}


@pytest.fixture
def repo(tmp_path):
    """A git repo with two build dirs, committed at different times."""
    root = tmp_path / "repo"
    for directory in ("one", "two"):
        (root / directory).mkdir(parents=True)
        (root / directory / "Dockerfile").write_text("FROM alpine\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "one")
    git(root, "commit", "-q", "-m", "one", date="@1600000000 +0000")
    git(root, "add", "two")
    git(root, "commit", "-q", "-m", "two", date="@1700000000 +0200")
    return root


def test_context_change_clean_git(repo, environ):
    one = make_image("one", directory=str(repo / "one"))
    two = make_image("two", directory=str(repo / "two"))
    assert db.context_change(one, environ) == (1600000000, db.REASON_GIT)
    assert db.context_change(two, environ) == (1700000000, db.REASON_GIT)
    assert db.REASON_GIT == "Git change more recent than image"


def test_context_change_dirty_git(repo, environ):
    (repo / "one" / "Dockerfile").write_text("FROM debian\n")
    set_tree_mtime(repo / "one", 1650000000)
    os.utime(repo / "one" / "Dockerfile", (1, 1650000123.5))
    image = make_image("one", directory=str(repo / "one"))
    assert db.context_change(image, environ) == (1650000123.5, db.REASON_FILES)
    assert db.REASON_FILES == "Files in docker context more recent than image"


def test_context_change_untracked_file(repo, environ):
    (repo / "two" / "new").write_text("x")
    set_tree_mtime(repo / "two", 1234567890)
    image = make_image("two", directory=str(repo / "two"))
    assert db.context_change(image, environ) == (1234567890, db.REASON_FILES)
    # the other directory stays clean
    one = make_image("one", directory=str(repo / "one"))
    assert db.context_change(one, environ) == (1600000000, db.REASON_GIT)


def test_context_change_outside_git(tmp_path, environ):
    directory = tmp_path / "plain"
    (directory / "sub").mkdir(parents=True)
    (directory / "sub" / "file").write_text("x")
    set_tree_mtime(directory, 1500000000)
    os.utime(directory / "sub", (1, 1500000042))
    image = make_image(directory=str(directory))
    assert db.context_change(image, environ) == (1500000042, db.REASON_FILES)


def test_context_change_ignored_files_only(repo, environ):
    """Clean, but no commit touches the directory: the times of the files
    that would go into the context count; git ignores all of them, so
    none does (the reference failed with int(''))."""
    (repo / ".gitignore").write_text("three/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore", date="@1700000001 +0000")
    (repo / "three").mkdir()
    (repo / "three" / "Dockerfile").write_text("FROM alpine\n")
    set_tree_mtime(repo / "three", 1750000000)
    image = make_image("three", directory=str(repo / "three"))
    assert db.context_change(image, environ) == (0.0, db.REASON_FILES)


def test_context_change_no_commits(tmp_path, environ):
    root = tmp_path / "empty"
    (root / "ctx").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    image = make_image("img", directory=str(root / "ctx"))
    assert fatal_message(db.context_change, image, environ) == (
        "img: Can't get commit date: "
        "fatal: your current branch 'main' does not have any commits yet"
    )


def test_context_change_git_status_fails(tmp_path, environ):
    missing = str(tmp_path / "missing")
    image = make_image("img", directory=missing)
    assert fatal_message(db.context_change, image, environ) == (
        f"img: Can't get git status: fatal: cannot change to '{missing}': "
        "No such file or directory"
    )


def test_context_change_without_git(tmp_path):
    image = make_image(directory=str(tmp_path))
    environ = {"PATH": str(tmp_path / "nobin")}
    assert fatal_message(db.context_change, image, environ) == (
        "Can't run git: [Errno 2] No such file or directory: 'git'"
    )


def test_context_mtime_of_a_walked_tree(tmp_path):
    """What mtime_tree was: the newest of the directory, its files and its
    subdirectories."""
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "g").write_text("y")
    set_tree_mtime(tree, 1000)
    assert db.context_mtime(str(tree), db.walk_files(str(tree))) == 1000
    os.utime(tree / "a" / "b" / "f", (1, 3000.25))
    assert db.context_mtime(str(tree), db.walk_files(str(tree))) == 3000.25
    os.utime(tree / "a", (1, 4000))  # directories count too
    assert db.context_mtime(str(tree), db.walk_files(str(tree))) == 4000
    os.utime(tree, (1, 5000))  # and the directory itself
    assert db.context_mtime(str(tree), db.walk_files(str(tree))) == 5000
    assert db.context_mtime(str(tree), db.walk_files(str(tree)), root=False) == 4000


# ----------------------------------------------------------------------------
# needs_rebuild, check_target, decide and plan_rebuilds (registry answers
# from a dict); rebuild_in_order (subprocess.Popen replaced)
# ----------------------------------------------------------------------------


@pytest.fixture
def context():
    """A FakeContexts; set `.value` to (time, reason)."""
    return FakeContexts(
        (CREATED.timestamp() - 1, "Files in docker context more recent")
    )


BASE = "ghcr.io/o/base:latest"
TARGET = "ghcr.io/o/img:latest"
IMG = make_image("img", base="$DOCKER_REPOSITORY/base:latest")
REPOS = ["docker.io/user", "ghcr.io/o"]
HUB_BASE = "docker.io/user/base:latest"
HUB_TARGET = "docker.io/user/img:latest"


def target(image, repository="ghcr.io/o"):
    """The one target of an image for one repository."""
    (found,) = db.image_targets(image, [repository])
    return found


def test_image_targets():
    assert db.image_targets(IMG, REPOS) == (
        db.Target(IMG, "docker.io/user", HUB_TARGET, HUB_BASE),
        db.Target(IMG, "ghcr.io/o", TARGET, BASE),
    )
    assert db.image_targets(IMG, []) == ()
    full = make_image("ghcr.io/o/img", base="$DOCKER_REPOSITORY/base:latest")
    assert db.image_targets(full, REPOS) == (db.Target(full, None, TARGET, BASE),)
    tool = make_image("tool:2", image="tool:2", base="NONE")
    (only,) = db.image_targets(tool, ["user"])
    assert (only.full_name, only.base_name, only.shown_name) == (
        "user/tool:2",
        "NONE",
        "user/tool:2",
    )
    assert target(IMG).shown_name == "ghcr.io/o/img"
    assert db.image_targets(full, REPOS)[0].shown_name == "ghcr.io/o/img"


def test_needs_rebuild_missing_base(context):
    registry = FakeRegistry({BASE: None})
    assert fatal_message(needs_rebuild, target(IMG), registry, context) == (
        "Missing base image: ghcr.io/o/base:latest"
    )
    assert registry.calls == [BASE]


def test_needs_rebuild_missing_image(context):
    registry = FakeRegistry({BASE: info("sha256:b"), TARGET: None})
    reason = needs_rebuild(target(IMG), registry, context)
    assert reason == "Image missing in repository"
    assert registry.calls == [BASE, TARGET]
    assert context.calls == []


def test_needs_rebuild_base_changed(context):
    registry = FakeRegistry(
        {BASE: info("sha256:b1", "sha256:new"), TARGET: info("sha256:b1", "sha256:i")}
    )
    assert needs_rebuild(target(IMG), registry, context) == "Base image has changed"
    assert context.calls == []


@pytest.mark.parametrize(
    ("offset", "expected"), [(-1, None), (0, None), (0.5, "the reason")]
)
def test_needs_rebuild_context_time(context, offset, expected):
    """Only a change strictly after the image's creation counts."""
    context.value = (CREATED.timestamp() + offset, "the reason")
    registry = FakeRegistry(
        {BASE: info("sha256:b"), TARGET: info("sha256:b", "sha256:i")}
    )
    assert needs_rebuild(target(IMG), registry, context) == expected
    assert context.calls == ["img"]


@pytest.mark.parametrize("base", ["NONE", "scratch"])
def test_needs_rebuild_untagged_base_never_compared(context, base):
    image = make_image("img", base=base)
    registry = FakeRegistry({"user/img:latest": info("sha256:i")})
    assert needs_rebuild(target(image, "user"), registry, context) is None
    assert registry.calls == [base, "user/img:latest"]


def test_needs_rebuild_full_name_ignores_repository(context):
    image = make_image("ghcr.io/o/img", base="debian:latest")
    registry = FakeRegistry({"debian:latest": info("sha256:d"), TARGET: None})
    (only,) = db.image_targets(image, REPOS)
    assert only.repository is None
    assert needs_rebuild(only, registry, context) == "Image missing in repository"
    assert registry.calls == ["debian:latest", TARGET]


MULTI = make_image("img", base="$DOCKER_REPOSITORY/base:latest", platforms=BOTH)


def test_needs_rebuild_image_lacks_a_platform(context):
    found = {"linux/amd64": info("sha256:b", "sha256:i"), "linux/arm64": None}
    registry = FakeRegistry({BASE: info("sha256:b"), TARGET: found})
    assert needs_rebuild(target(MULTI), registry, context) == (
        "Image missing in repository for linux/arm64"
    )
    assert context.calls == []


def test_needs_rebuild_base_lacks_a_platform(context):
    base = {"linux/amd64": info("sha256:b"), "linux/arm64": None}
    registry = FakeRegistry({BASE: base, TARGET: info("sha256:b")})
    assert fatal_message(needs_rebuild, target(MULTI), registry, context) == (
        "Missing base image: ghcr.io/o/base:latest for linux/arm64"
    )


def test_needs_rebuild_oldest_platform_image_decides(context):
    context.value = (CREATED.timestamp() + 1, "the reason")
    later = CREATED + datetime.timedelta(hours=1)
    found = {
        "linux/amd64": info("sha256:b", created=later),
        "linux/arm64": info("sha256:b", created=CREATED),
    }
    registry = FakeRegistry({BASE: info("sha256:b"), TARGET: found})
    assert needs_rebuild(target(MULTI), registry, context) == "the reason"


def test_needs_rebuild_real_context_outside_git(tmp_path, environ):
    directory = tmp_path / "ctx"
    directory.mkdir()
    (directory / "Dockerfile").write_text("FROM alpine\n")
    image = make_image("img", directory=str(directory), base="NONE")
    registry = FakeRegistry({"user/img:latest": info("sha256:i")})
    set_tree_mtime(directory, CREATED.timestamp() - 10)
    # a ContextChanges asks once per image: a new one sees the new mtime
    contexts = db.ContextChanges(environ)
    assert needs_rebuild(target(image, "user"), registry, contexts) is None
    contexts.close()
    set_tree_mtime(directory, CREATED.timestamp() + 10)
    contexts = db.ContextChanges(environ)
    assert needs_rebuild(target(image, "user"), registry, contexts) == (
        "Files in docker context more recent than image"
    )
    contexts.close()


# What check_target finds for an up-to-date image (context: the default value)
CHECKED = db.Evidence(CREATED.timestamp(), True, CREATED.timestamp() - 1, "mtime")


def test_check_target_missing_image(context):
    registry = FakeRegistry({BASE: info("sha256:b"), TARGET: None})
    for complete in (False, True):
        assert db.check_target(target(IMG), registry, context, complete) == (
            "Image missing in repository",
            db.Evidence(),
        )
    assert context.calls == []


def test_check_target_image_lacks_a_platform(context):
    found = {"linux/amd64": info("sha256:b", "sha256:i"), "linux/arm64": None}
    registry = FakeRegistry({BASE: info("sha256:b"), TARGET: found})
    assert db.check_target(target(MULTI), registry, context, complete=True) == (
        "Image missing in repository for linux/arm64",
        db.Evidence(),
    )


def test_check_target_base_changed_stops_unless_complete(context):
    context.value = (CREATED.timestamp() + 5, db.REASON_GIT)
    registry = FakeRegistry({BASE: info("sha256:new"), TARGET: info("sha256:old")})
    assert db.check_target(target(IMG), registry, context) == (
        "Base image has changed",
        db.Evidence(CREATED.timestamp(), False),
    )
    assert context.calls == []
    # the complete evidence keeps the first reason
    assert db.check_target(target(IMG), registry, context, complete=True) == (
        "Base image has changed",
        db.Evidence(CREATED.timestamp(), False, CREATED.timestamp() + 5, "commit"),
    )
    assert context.calls == ["img"]


@pytest.mark.parametrize(
    ("reason", "changed_by"),
    [(db.REASON_GIT, "commit"), (db.REASON_FILES, "mtime")],
)
def test_check_target_up_to_date(context, reason, changed_by):
    context.value = (CREATED.timestamp() - 1, reason)
    registry = FakeRegistry({BASE: info("sha256:b"), TARGET: info("sha256:b")})
    assert db.check_target(target(IMG), registry, context) == (
        None,
        db.Evidence(CREATED.timestamp(), True, CREATED.timestamp() - 1, changed_by),
    )


def test_check_target_context_newer(context):
    context.value = (CREATED.timestamp() + 1, db.REASON_GIT)
    registry = FakeRegistry({BASE: info("sha256:b"), TARGET: info("sha256:b")})
    assert db.check_target(target(IMG), registry, context) == (
        "Git change more recent than image",
        db.Evidence(CREATED.timestamp(), True, CREATED.timestamp() + 1, "commit"),
    )


def test_plan_rebuilds_forced_without_lookups(context):
    registry = FakeRegistry({})
    targets = db.image_targets(IMG, REPOS)
    expected = db.Plan(
        (
            db.Decision(
                IMG, 0, targets, "Rebuild triggered by command line", frozenset()
            ),
        )
    )
    assert db.plan_rebuilds([IMG], REPOS, False, ["img:latest"], registry, context) == (
        expected
    )
    assert db.plan_rebuilds([IMG], REPOS, True, [], registry, context) == expected
    assert registry.calls == []
    assert context.calls == []
    # nor anything asked for up front
    assert registry.prefetched == []
    assert context.prefetched == []


def test_plan_rebuilds_all_except_named_is_checked(context):
    registry = FakeRegistry(
        {
            HUB_BASE: info("sha256:b"),
            HUB_TARGET: info("sha256:b"),
            BASE: info("sha256:b"),
            TARGET: info("sha256:b"),
        }
    )
    forced = ["$DOCKER_REPOSITORY/base:latest"]  # named by its base
    plan = db.plan_rebuilds([IMG], REPOS, True, forced, registry, context)
    targets = db.image_targets(IMG, REPOS)
    assert plan == db.Plan(
        (
            db.Decision(
                IMG,
                0,
                targets,
                None,
                frozenset(),
                evidence=(CHECKED, CHECKED),
                findings=(None, None),
            ),
        )
    )
    assert registry.calls == [HUB_BASE, HUB_TARGET, BASE, TARGET]
    assert registry.prefetched == [
        (HUB_BASE, AMD),
        (HUB_TARGET, AMD),
        (BASE, AMD),
        (TARGET, AMD),
    ]
    assert context.prefetched == ["img"]


def test_plan_rebuilds_second_repository_decides(context):
    registry = FakeRegistry(
        {
            HUB_BASE: info("sha256:b"),
            HUB_TARGET: info("sha256:b"),
            BASE: info("sha256:b"),
            TARGET: None,
        }
    )
    plan = db.plan_rebuilds([IMG], REPOS, False, [], registry, context)
    (decision,) = plan.decisions
    assert decision == db.Decision(
        IMG,
        0,
        db.image_targets(IMG, REPOS),
        "Image missing in repository",
        frozenset(),
        evidence=(CHECKED, db.Evidence()),
        findings=(None, "Image missing in repository"),
    )
    assert registry.calls == [HUB_BASE, HUB_TARGET, BASE, TARGET]


def test_plan_rebuilds_first_repository_decides(context):
    registry = FakeRegistry({HUB_BASE: info("sha256:new"), HUB_TARGET: info("x")})
    plan = db.plan_rebuilds([IMG], REPOS, False, [], registry, context)
    (decision,) = plan.decisions
    assert decision.reason == "Base image has changed"
    assert decision.targets == db.image_targets(IMG, REPOS)
    assert decision.evidence == (db.Evidence(CREATED.timestamp(), False),)
    assert decision.findings == ("Base image has changed",)
    assert registry.calls == [HUB_BASE, HUB_TARGET]
    # every target was asked for up front; only the first was waited for
    assert registry.prefetched == [
        (HUB_BASE, AMD),
        (HUB_TARGET, AMD),
        (BASE, AMD),
        (TARGET, AMD),
    ]
    assert context.calls == []


def test_plan_rebuilds_full_name(context):
    image = make_image("ghcr.io/o/img", base="NONE")
    registry = FakeRegistry({TARGET: None})
    plan = db.plan_rebuilds([image], REPOS, False, [], registry, context)
    assert plan == db.Plan(
        (
            db.Decision(
                image,
                0,
                (db.Target(image, None, TARGET, "NONE"),),
                "Image missing in repository",
                frozenset(),
                evidence=(db.Evidence(),),
                findings=("Image missing in repository",),
            ),
        )
    )


BASES_REBUILT = frozenset(db.parse_reference(name).key for name in (HUB_BASE, BASE))


def test_decide_base_to_be_rebuilt_without_lookups(context):
    registry = FakeRegistry({})
    targets = db.image_targets(IMG, REPOS)
    for explain in (False, True):
        decision = db.decide(
            IMG,
            3,
            targets,
            frozenset({1}),
            BASES_REBUILT,
            False,
            registry,
            context,
            explain,
        )
        # the reason of the image names its first target's base
        assert decision == db.Decision(
            IMG,
            3,
            targets,
            "Base image will be rebuilt: " + HUB_BASE,
            frozenset({1}),
            rebuilt_bases=(HUB_BASE, BASE),
        )
        # each target names its own base
        assert [decision.reason_for(t) for t in targets] == [
            "Base image will be rebuilt: " + HUB_BASE,
            "Base image will be rebuilt: " + BASE,
        ]
    # forcing wins over the base
    decision = db.decide(
        IMG, 3, targets, frozenset({1}), BASES_REBUILT, True, registry, context, True
    )
    assert decision == db.Decision(
        IMG, 3, targets, "Rebuild triggered by command line", frozenset({1})
    )
    assert [decision.reason_for(t) for t in targets] == [
        "Rebuild triggered by command line",
        "Rebuild triggered by command line",
    ]
    assert registry.calls == []
    assert context.calls == []


def test_decision_reason_for():
    targets = db.image_targets(IMG, REPOS)
    checked = db.Decision(IMG, 0, targets, "why", frozenset())
    assert [checked.reason_for(t) for t in targets] == ["why", "why"]
    up_to_date = db.Decision(IMG, 0, targets, None, frozenset())
    assert [up_to_date.reason_for(t) for t in targets] == [None, None]
    bases = tuple(t.base_name for t in targets)
    rebuilt = db.Decision(IMG, 0, targets, "why", frozenset({1}), rebuilt_bases=bases)
    assert [rebuilt.reason_for(t) for t in targets] == [
        "Base image will be rebuilt: docker.io/user/base:latest",
        "Base image will be rebuilt: ghcr.io/o/base:latest",
    ]


@pytest.mark.parametrize("explain", [False, True])
def test_decide_stops_at_the_deciding_target(context, explain):
    """--explain checks no more targets than a plain run: the second
    repository is never looked up once the first needs a rebuild."""
    registry = FakeRegistry({HUB_BASE: info("sha256:b"), HUB_TARGET: None})
    targets = db.image_targets(IMG, REPOS)
    decision = db.decide(
        IMG, 0, targets, frozenset(), frozenset(), False, registry, context, explain
    )
    assert decision == db.Decision(
        IMG,
        0,
        targets,
        "Image missing in repository",
        frozenset(),
        evidence=(db.Evidence(),),
        findings=("Image missing in repository",),
    )
    assert registry.calls == [HUB_BASE, HUB_TARGET]
    assert context.calls == []


@pytest.mark.parametrize("explain", [False, True])
def test_decide_base_changed_in_first_repository(context, explain):
    """--explain completes the deciding target's evidence (its context),
    and checks nothing more."""
    registry = FakeRegistry(
        {HUB_BASE: info("sha256:new"), HUB_TARGET: info("sha256:old")}
    )
    targets = db.image_targets(IMG, REPOS)
    decision = db.decide(
        IMG, 0, targets, frozenset(), frozenset(), False, registry, context, explain
    )
    evidence = (
        db.Evidence(CREATED.timestamp(), False, CREATED.timestamp() - 1, "mtime")
        if explain
        else db.Evidence(CREATED.timestamp(), False)
    )
    assert decision == db.Decision(
        IMG,
        0,
        targets,
        "Base image has changed",
        frozenset(),
        evidence=(evidence,),
        findings=("Base image has changed",),
    )
    assert registry.calls == [HUB_BASE, HUB_TARGET]
    assert context.calls == (["img"] if explain else [])


def test_decide_explain_every_checked_target(context):
    """Up-to-date targets are all checked, each with its own finding."""
    registry = FakeRegistry(
        {
            HUB_BASE: info("sha256:b"),
            HUB_TARGET: info("sha256:b"),
            BASE: info("sha256:new"),
            TARGET: info("sha256:old"),
        }
    )
    targets = db.image_targets(IMG, REPOS)
    decision = db.decide(
        IMG, 0, targets, frozenset(), frozenset(), False, registry, context, True
    )
    assert decision == db.Decision(
        IMG,
        0,
        targets,
        "Base image has changed",
        frozenset(),
        evidence=(
            CHECKED,
            db.Evidence(CREATED.timestamp(), False, CREATED.timestamp() - 1, "mtime"),
        ),
        findings=(None, "Base image has changed"),
    )
    assert registry.calls == [HUB_BASE, HUB_TARGET, BASE, TARGET]
    assert context.calls == ["img", "img"]


class FailingContexts(FakeContexts):
    """Every question fails as git would; the calls are counted."""

    def get(self, image):
        self.calls.append(image.name)
        raise db.Fatal(f"{image.name}: Can't get git status: fatal: broken")


@pytest.fixture
def git_fails():
    return FailingContexts()


def test_check_target_git_failure_ignored_with_a_registry_reason(git_fails):
    registry = FakeRegistry({BASE: info("sha256:new"), TARGET: info("sha256:old")})
    assert db.check_target(target(IMG), registry, git_fails, complete=True) == (
        "Base image has changed",
        db.Evidence(CREATED.timestamp(), False),
    )
    assert git_fails.calls == ["img"]


@pytest.mark.parametrize("complete", [False, True])
def test_check_target_git_failure_without_a_registry_reason(git_fails, complete):
    registry = FakeRegistry({BASE: info("sha256:b"), TARGET: info("sha256:b")})
    assert fatal_message(
        db.check_target, target(IMG), registry, git_fails, complete
    ) == ("img: Can't get git status: fatal: broken")
    assert git_fails.calls == ["img"]


def test_plan_rebuilds_explain_ignores_git_failure_of_decided_target(git_fails):
    """A plain run never waits for git about an image whose base has
    changed (it is only asked up front): neither does -v fail on it."""
    registry = FakeRegistry(
        {HUB_BASE: info("sha256:new"), HUB_TARGET: info("sha256:old")}
    )
    plain = db.plan_rebuilds([IMG], REPOS, False, [], registry, git_fails)
    assert git_fails.calls == []
    assert git_fails.prefetched == ["img"]
    explained = db.plan_rebuilds([IMG], REPOS, False, [], registry, git_fails, True)
    assert git_fails.calls == ["img"]
    targets = db.image_targets(IMG, REPOS)
    expected = db.Decision(
        IMG,
        0,
        targets,
        "Base image has changed",
        frozenset(),
        evidence=(db.Evidence(CREATED.timestamp(), False),),
        findings=("Base image has changed",),
    )
    assert plain == explained == db.Plan((expected,))
    assert registry.calls == [HUB_BASE, HUB_TARGET, HUB_BASE, HUB_TARGET]


class FakePopen:
    """Replaces subprocess.Popen: records the commands, and each waits for
    its code in `codes` (by full name, 0 for any other)."""

    def __init__(self, codes=None):
        self.codes = codes or {}
        self.calls = []

    def __call__(self, command, env, start_new_session):
        self.calls.append((command, env, start_new_session))
        code = self.codes.get(command[-2], 0)
        return types.SimpleNamespace(wait=lambda: code, pid=None)


def test_rebuild_in_order_builds_bases_first(monkeypatch, capsys, context):
    """A dependent listed before its base is built after it, and without
    look-ups: its base will be rebuilt."""
    run = FakePopen()
    monkeypatch.setattr(db.subprocess, "Popen", run)
    registry = FakeRegistry({})
    base_image = make_image("base", directory="b", base="NONE")
    plan = db.plan_rebuilds(
        [IMG, base_image], ["ghcr.io/o"], False, ["base:latest"], registry, context
    )
    environ = {"K": "V"}
    db.rebuild_in_order(plan, False, environ)
    assert capsys.readouterr().out == (
        "*** ghcr.io/o/base\nReason: Rebuild triggered by command line\n\n\n"
        "*** ghcr.io/o/img\n"
        "Reason: Base image will be rebuilt: ghcr.io/o/base:latest\n\n\n"
    )
    assert run.calls == [
        (["docker", "buildx", "build", "--push", "--tag", BASE, "b"], environ, True),
        (
            [
                "docker",
                "buildx",
                "build",
                "--build-arg",
                "DOCKER_REPOSITORY=ghcr.io/o",
                "--push",
                "--tag",
                TARGET,
                "d",
            ],
            environ,
            True,
        ),
    ]
    assert registry.calls == []


def test_rebuild_in_order_every_repository_skips_up_to_date(monkeypatch, capsys):
    run = FakePopen()
    monkeypatch.setattr(db.subprocess, "Popen", run)
    tool = make_image("tool:2", image="tool:2", directory="t", base="NONE")
    other = make_image("other", directory="o", base="NONE")
    plan = db.Plan(
        (
            db.Decision(other, 1, db.image_targets(other, REPOS), None, frozenset()),
            db.Decision(tool, 0, db.image_targets(tool, REPOS), "why", frozenset()),
        )
    )
    db.rebuild_in_order(plan, False, {})
    assert capsys.readouterr().out == (
        "*** docker.io/user/tool:2\nReason: why\n\n\n"
        "*** ghcr.io/o/tool:2\nReason: why\n\n\n"
    )
    assert [command[-2] for command, _, _ in run.calls] == [
        "docker.io/user/tool:2",
        "ghcr.io/o/tool:2",
    ]


def test_rebuild_in_order_stops_at_first_failure(monkeypatch, capsys):
    run = FakePopen({"user/b:latest": 7, "user/c:latest": 3})
    monkeypatch.setattr(db.subprocess, "Popen", run)
    images = [make_image(name, directory=name, base="NONE") for name in "abc"]
    plan = db.Plan(
        tuple(
            db.Decision(image, n, db.image_targets(image, ["user"]), "r", frozenset())
            for n, image in enumerate(images)
        )
    )
    with pytest.raises(db.Fatal) as failure:
        db.rebuild_in_order(plan, False, {})
    assert (failure.value.message, failure.value.code) == (None, 7)
    assert capsys.readouterr().out == (
        "*** user/a\nReason: r\n\n\n*** user/b\nReason: r\n\n"
    )
    assert [command[-2] for command, _, _ in run.calls] == [
        "user/a:latest",
        "user/b:latest",
    ]


def test_rebuild_in_order_dry_run(monkeypatch, capsys, context):
    monkeypatch.setattr(db.subprocess, "run", lambda *a, **k: pytest.fail("built"))
    monkeypatch.setattr(db.subprocess, "Popen", lambda *a, **k: pytest.fail("built"))
    image = make_image("tool:2", image="tool:2", base="NONE")
    registry = FakeRegistry({})
    plan = db.plan_rebuilds([image], REPOS, True, [], registry, context)
    db.rebuild_in_order(plan, True, {})
    assert capsys.readouterr().out == (
        "*** docker.io/user/tool:2\nReason: Rebuild triggered by command line\n\n"
        "*** ghcr.io/o/tool:2\nReason: Rebuild triggered by command line\n\n"
    )


# ----------------------------------------------------------------------------
# main: command line and order of the checks
# ----------------------------------------------------------------------------


def test_main_help(capsys, monkeypatch):
    """The help is the README's usage section, word for word."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as info:
        db.main(["--help"])
    assert info.value.code == 0
    readme = (ROOT / "README.md").read_text()
    usage = readme.split("## Usage\n\n```\n", 1)[1].split("```\n", 1)[0]
    out = capsys.readouterr().out
    assert out == usage
    assert out.startswith("usage: docker_build [--help] [--all] [--dir DIR]")
    assert (
        "  --explain, -v         print the evidence for every image on stderr\n" in out
    )


@pytest.mark.parametrize("option", ["-h", "-?"])
def test_main_help_short(capsys, option):
    with pytest.raises(SystemExit) as info:
        db.main([option])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: docker_build [--help]")


def test_main_unknown_option(capsys):
    with pytest.raises(SystemExit) as info:
        db.main(["--bogus"])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "docker_build: error: unrecognized arguments: --bogus\n"
    )


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith(("DOCKER_LOGIN", "DOCKER_REPOSITORY")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "Dockerfile").write_text("FROM alpine\n")
    (tmp_path / "docker_images").write_text("img\td\n")


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        (
            {},
            ["-f", "nofile"],
            "Can't read images file: [Errno 2] No such file or directory: 'nofile'",
        ),
        # DOCKER_REPOSITORY is checked before the logins and the file
        (
            {"DOCKER_REPOSITORY": "a___b", "DOCKER_LOGIN": "x"},
            ["-f", "nofile"],
            "DOCKER_REPOSITORY: a___b: invalid reference format",
        ),
        (
            {"DOCKER_LOGIN": "x"},
            ["-C", "nodir"],
            "DOCKER_LOGIN requires 3 fields: registry user password",
        ),
        (
            {},
            ["-C", "no", "-C", "dir"],
            "Can't change directory: [Errno 2] No such file or directory: 'no/dir'",
        ),
        # unknown command line images before the missing DOCKER_REPOSITORY
        ({}, ["other"], "Image other not found in 'docker_images' configuration file"),
        ({}, [], "img: Environment variable DOCKER_REPOSITORY is not defined"),
    ],
)
def test_main_fatal_errors(clean_env, monkeypatch, capsys, env, argv, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert db.main(argv) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", message + "\n")


def test_main_dry_run_all(clean_env, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DOCKER_REPOSITORY", "User ghcr.io/o")
    monkeypatch.setenv("DOCKER_LOGIN_A", "ghcr.io u p")
    monkeypatch.setattr(db, "fetch_image", lambda *a: pytest.fail("lookup"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "imgs").write_text("tool:2\t../d\tNONE\n")
    assert db.main(["-n", "-a", "--dir", "sub", "--file", "imgs"]) == 0
    assert capsys.readouterr().out == (
        "*** user/tool:2\nReason: Rebuild triggered by command line\n\n"
        "*** ghcr.io/o/tool:2\nReason: Rebuild triggered by command line\n\n"
    )


# ----------------------------------------------------------------------------
# positive_float, lock_configuration, signals in main
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.5", 2.5), ("1", 1.0), ("1e-3", 0.001), (" 7 ", 7.0), ("0.01", 0.01)],
)
def test_positive_float(text, expected):
    assert db.positive_float(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "-0.5", "0.0", "abc", "", "nan", "1s"])
def test_positive_float_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        db.positive_float(text)
    assert str(info.value) == f"not a number of seconds up to a day: '{text}'"


@pytest.mark.parametrize("text", ["inf", "1e400"])
def test_positive_float_rejects_infinity(text):
    with pytest.raises(argparse.ArgumentTypeError):
        db.positive_float(text)


@pytest.mark.parametrize("value", ["0", "x"])
def test_main_timeout_must_be_positive(capsys, value):
    with pytest.raises(SystemExit) as info:
        db.main(["--timeout", value])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "docker_build: error: argument --timeout: "
        f"not a number of seconds up to a day: '{value}'\n"
    )


def test_lock_configuration(tmp_path):
    path = tmp_path / "docker_images"
    path.write_text("img\td\n")
    first = db.lock_configuration(str(path), False)
    assert first is not None and not first.closed
    assert fatal_message(db.lock_configuration, str(path), False) == (
        f"{path}: another docker_build run is using it"
    )
    first.close()  # a closed handle releases the lock
    second = db.lock_configuration(str(path), False)
    assert second is not None
    second.close()


def test_lock_configuration_waits(tmp_path):
    path = str(tmp_path / "docker_images")
    with open(path, "w") as config:
        config.write("img\td\n")
    first = db.lock_configuration(path, True)
    got = []
    waiter = threading.Thread(
        target=lambda: got.append(db.lock_configuration(path, True))
    )
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and got == []  # still waiting
    first.close()
    waiter.join(5)
    assert not waiter.is_alive() and got[0] is not None
    got[0].close()


def test_lock_configuration_missing_file(tmp_path):
    assert db.lock_configuration(str(tmp_path / "missing"), False) is None
    assert db.lock_configuration(str(tmp_path / "missing"), True) is None


def test_main_no_wait_while_another_run_builds(clean_env, capsys, tmp_path):
    held = db.lock_configuration(str(tmp_path / "docker_images"), False)
    try:
        assert db.main(["--no-wait", "-a"]) == 1
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == (
            "",
            "docker_images: another docker_build run is using it\n",
        )
    finally:
        held.close()


def test_main_dry_run_does_not_lock(clean_env, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DOCKER_REPOSITORY", "user")
    held = db.lock_configuration(str(tmp_path / "docker_images"), False)
    try:
        assert db.main(["-n", "--no-wait", "-a"]) == 0
    finally:
        held.close()
    assert capsys.readouterr().out == (
        "*** user/img\nReason: Rebuild triggered by command line\n\n"
    )


def test_main_releases_the_lock(clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_REPOSITORY", "user")
    monkeypatch.setattr(db, "fetch_image", lambda *a: None)
    seen = []

    def rebuild(plan, dry_run, environ, results):
        seen.append(db.lock_configuration(str(tmp_path / "docker_images"), False))

    monkeypatch.setattr(db, "rebuild_in_order", rebuild)
    with pytest.raises(db.Fatal):  # held while building
        db.run(db.build_parser().parse_args(["-a", "--no-wait"]), os.environ)
    assert seen == []
    # after the run: free
    db.lock_configuration(str(tmp_path / "docker_images"), False).close()


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
)
def test_main_interrupted(monkeypatch, capsys, signum, code):
    """A signal during the run: one line, 128 + N; the handlers are restored."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    during = []

    def run(args, environ):
        during.append([signal.getsignal(sig) for sig in before])
        os.kill(os.getpid(), signum)
        time.sleep(5)
        pytest.fail("not interrupted")

    monkeypatch.setattr(db, "run", run)
    assert db.main([]) == code
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"docker_build: interrupted by {signal.Signals(signum).name}\n",
    )
    assert during == [[db.raise_interrupted, db.raise_interrupted]]
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_raise_interrupted():
    with pytest.raises(db.Interrupted) as info:
        db.raise_interrupted(signal.SIGTERM, None)
    assert (info.value.signum, info.value.name) == (signal.SIGTERM, "SIGTERM")


def test_catch_signals_outside_the_main_thread():
    found = []
    worker = threading.Thread(target=lambda: found.append(db.catch_signals()))
    worker.start()
    worker.join()
    assert found == [{}]
