"""Property tests: whatever the input, the readers answer with a result or
one clear line naming the file (and line), never a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import load_tool
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

db = load_tool()

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
@given(st.text(max_size=300))
@example("a" * 10000)
@example("[" + ":" * 9998 + "]/x")
def test_reference_parser_answers_or_rejects(text: str) -> None:
    try:
        ref = db.parse_reference(text)
    except ValueError as err:
        assert one_line(str(err))
    else:
        assert ref.path and ref.version


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
            assert all(image.directory == "d" for image in images)
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
    options = db.read_build_options(["--build-arg", "X=y"], {})
    try:
        base = db.dockerfile_base(str(directory), options)
    except ValueError as err:
        assert one_line(str(err))
    else:
        assert base.strip() and "\n" not in base


@pytest.mark.parametrize("size", [1, 100, 100000])
def test_long_config_line(tmp_path: Path, monkeypatch, size: int) -> None:
    monkeypatch.chdir(tmp_path)
    Path("docker_images").write_text("app\t" + "d" * size + "\n")
    with pytest.raises(db.Fatal) as info:
        db.read_config("docker_images", {})
    assert (
        info.value.message == f"docker_images line 1: unknown directory '{'d' * size}'"
    )
