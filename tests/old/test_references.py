"""Image references as Docker reads them (ParseNormalizedNamed): a table of
valid and invalid references, and a bound on the parsing time of hostile
input (the parser must stay linear in the length of the reference)."""

import time

import pytest
from conftest import load_tool

db = load_tool()

HUB = "registry-1.docker.io"
HEX64 = "0123456789abcdef" * 4
DIGEST = "sha256:" + HEX64
INVALID = "invalid reference format"
TOO_LONG = "repository name must not be more than 255 characters"

# reference, registry, path, tag, digest
VALID = [
    # Docker Hub: every spelling is the same image
    ("img", HUB, "library/img", None, None),
    ("img:1.0", HUB, "library/img", "1.0", None),
    ("docker.io/img", HUB, "library/img", None, None),
    ("index.docker.io/img", HUB, "library/img", None, None),
    ("docker.io/library/img", HUB, "library/img", None, None),
    ("index.docker.io/library/img:2", HUB, "library/img", "2", None),
    ("user/img", HUB, "user/img", None, None),
    ("docker.io/user/img", HUB, "user/img", None, None),
    ("user/sub/img", HUB, "user/sub/img", None, None),
    # the API host is an ordinary registry: no library/ prefix
    ("registry-1.docker.io/img", HUB, "img", None, None),
    # the first component is a registry: localhost, '.', ':' or upper case
    ("localhost/img", "localhost", "img", None, None),
    ("localhost:5000/img", "localhost:5000", "img", None, None),
    ("Localhost/img", "localhost", "img", None, None),
    ("Foo/bar", "foo", "bar", None, None),
    ("a:5000/b", "a:5000", "b", None, None),
    ("a.b/c", "a.b", "c", None, None),
    ("ghcr.io/o/a:tag", "ghcr.io", "o/a", "tag", None),
    ("GHCR.IO/o/a", "ghcr.io", "o/a", None, None),
    ("example.com:443/a/b/c", "example.com:443", "a/b/c", None, None),
    ("my-host.example.com/a", "my-host.example.com", "a", None, None),
    ("1.2.3.4:5000/img", "1.2.3.4:5000", "img", None, None),
    ("x-1.y/z", "x-1.y", "z", None, None),
    # IPv6 literals in brackets
    ("[::1]:5000/img", "[::1]:5000", "img", None, None),
    ("[::1]/img", "[::1]", "img", None, None),
    ("[2001:db8::1]:443/o/img:1", "[2001:db8::1]:443", "o/img", "1", None),
    # otherwise the first component is part of the Docker Hub path
    ("a_b/c", HUB, "a_b/c", None, None),
    # a name without '/' is always Docker Hub
    ("localhost", HUB, "library/localhost", None, None),
    ("localhost:5000", HUB, "library/localhost", "5000", None),
    ("a.b", HUB, "library/a.b", None, None),
    # separators inside a component
    ("a_b", HUB, "library/a_b", None, None),
    ("a__b", HUB, "library/a__b", None, None),
    ("a-b", HUB, "library/a-b", None, None),
    ("a---b", HUB, "library/a---b", None, None),
    ("a0.b1_c2__d3-e4", HUB, "library/a0.b1_c2__d3-e4", None, None),
    # 64 hex digits are only refused as the whole reference
    (HEX64 + ":tag", HUB, "library/" + HEX64, "tag", None),
    ("user/" + HEX64, HUB, "user/" + HEX64, None, None),
    ("ghcr.io/" + HEX64, "ghcr.io", HEX64, None, None),
    # tags: first char [A-Za-z0-9_], up to 128 chars, upper case allowed
    ("img:Tag_1.0-rc", HUB, "library/img", "Tag_1.0-rc", None),
    ("img:_x", HUB, "library/img", "_x", None),
    ("img:" + "t" * 128, HUB, "library/img", "t" * 128, None),
    # digests
    ("img@" + DIGEST, HUB, "library/img", None, DIGEST),
    ("img:1.0@" + DIGEST, HUB, "library/img", "1.0", DIGEST),
    ("ghcr.io/o/a:t@" + DIGEST, "ghcr.io", "o/a", "t", DIGEST),
    ("img@sha384:" + "a" * 96, HUB, "library/img", None, "sha384:" + "a" * 96),
    ("img@sha512:" + "b" * 128, HUB, "library/img", None, "sha512:" + "b" * 128),
    # the path, library/ included but not the registry, is at most 255
    ("a" * 247, HUB, "library/" + "a" * 247, None, None),
    ("a" * 247 + ":" + "t" * 128, HUB, "library/" + "a" * 247, "t" * 128, None),
    ("user/" + "a" * 250, HUB, "user/" + "a" * 250, None, None),
    ("ghcr.io/" + "a" * 255, "ghcr.io", "a" * 255, None, None),
    ("registry-1.docker.io/" + "a" * 255, HUB, "a" * 255, None, None),
    ("[::1]:5000/" + "a" * 255, "[::1]:5000", "a" * 255, None, None),
]


@pytest.mark.parametrize(("text", "registry", "path", "tag", "digest"), VALID)
def test_parse_reference_valid(text, registry, path, tag, digest):
    reference = db.parse_reference(text)
    assert (reference.registry, reference.path) == (registry, path)
    assert (reference.tag, reference.digest) == (tag, digest)
    assert reference.version == (digest or tag or "latest")
    assert reference.key == (registry, path, digest or tag or "latest")


def lowercase(path):
    return f"{INVALID}: repository name ({path}) must be lowercase"


INVALID_REFERENCES = [
    ("", "repository name must have at least one component"),
    # upper case in the path
    ("Img", lowercase("Img")),
    ("user/Img", lowercase("user/Img")),
    ("ghcr.io/O/a", lowercase("O/a")),
    ("localhost/Img:1", lowercase("Img")),
    ("Foo/Bar", lowercase("Bar")),
    # a 64-hex-digit name without registry
    (
        HEX64,
        f"invalid repository name ({HEX64}), "
        "cannot specify 64-byte hexadecimal strings",
    ),
    # path components
    ("a___b", INVALID),
    ("a-_b", INVALID),
    ("-a", INVALID),
    ("a-", INVALID),
    ("_a", INVALID),
    ("a..b", INVALID),
    ("a.-b", INVALID),
    ("a//b", INVALID),
    ("/a", INVALID),
    ("a/", INVALID),
    ("ghcr.io/", INVALID),
    ("a b", INVALID),
    ("é/img", INVALID),
    ("http://host/a", INVALID),
    # registries
    ("host:abc/a", INVALID),
    ("host:/a", INVALID),
    ("-host.io/a", INVALID),
    ("host-.io/a", INVALID),
    ("a..b/c", INVALID),
    (".a/b", INVALID),
    ("a_b.io/c", INVALID),
    ("[::1]:/img", INVALID),
    ("[g::1]/img", INVALID),
    ("[::1]", INVALID),
    ("[::1]:5000", INVALID),
    # tags
    ("img:", INVALID),
    (":tag", INVALID),
    ("img:.tag", INVALID),
    ("img:-tag", INVALID),
    ("img:" + "t" * 129, INVALID),
    ("img:tag:tag", INVALID),
    ("img:ta/g", INVALID),
    ("img:é", INVALID),
    # digests
    ("img@", INVALID),
    ("@" + DIGEST, INVALID),
    ("img@" + HEX64, INVALID),
    ("img@:" + HEX64, INVALID),
    ("img@sha256:" + "a" * 31, INVALID),
    ("img@sha256:" + "g" * 64, INVALID),
    ("img@" + DIGEST + "@" + DIGEST, INVALID),
    ("img@" + DIGEST + ":tag", INVALID),
    ("img@sha256:" + HEX64.upper(), "invalid checksum digest format"),
    ("img@sha256:" + "a" * 63, "invalid checksum digest length"),
    ("img@sha256:" + "a" * 65, "invalid checksum digest length"),
    ("img@sha512:" + "a" * 64, "invalid checksum digest length"),
    ("img@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("img@Sha256:" + HEX64, "unsupported digest algorithm"),
    # the path, library/ included, is more than 255 characters
    ("a" * 248, TOO_LONG),
    ("a" * 248 + ":tag", TOO_LONG),
    ("docker.io/" + "a" * 248, TOO_LONG),
    ("user/" + "a" * 251, TOO_LONG),
    ("ghcr.io/" + "a" * 256, TOO_LONG),
    ("registry-1.docker.io/" + "a" * 256, TOO_LONG),
]


@pytest.mark.parametrize(("text", "message"), INVALID_REFERENCES)
def test_parse_reference_invalid(text, message):
    with pytest.raises(ValueError) as info:
        db.parse_reference(text)
    assert str(info.value) == message


def test_reference_table_size():
    assert len(VALID) + len(INVALID_REFERENCES) >= 60


HOSTILE = [
    ("a" * 10000 + "!", INVALID),
    ("a-" * 5000 + "!", INVALID),
    ("a_" * 5000 + "!", INVALID),
    ("a." * 5000 + "/x", INVALID),
    ("a/" * 5000 + "!", INVALID),
    ("a" * 9999 + "A", lowercase("a" * 9999 + "A")),
    ("a" * 10000, TOO_LONG),
    ("img:" + "t" * 10000, INVALID),
    ("img:" + "t" * 9995 + "!", INVALID),
    ("img@sha256:" + "a" * 10000, "invalid checksum digest length"),
    ("img@" + "a-" * 5000 + ":" + HEX64, INVALID),
    ("img@sha256:" + "a" * 9988 + "!", INVALID),
    ("[" + "1:" * 4999 + "/x", INVALID),
    ("a" * 9990 + "-.io:5000/b", INVALID),
]


def parse_error(text):
    try:
        db.parse_reference(text)
    except ValueError as err:
        return str(err)
    return None


def average_seconds(text, repetitions=20):
    start = time.perf_counter()
    for _ in range(repetitions):
        parse_error(text)
    return (time.perf_counter() - start) / repetitions


@pytest.mark.parametrize(("text", "message"), HOSTILE, ids=range(len(HOSTILE)))
def test_parse_reference_hostile_input_is_rejected_in_linear_time(text, message):
    """A correctness bound on the algorithm, not a speed figure: a
    backtracking parser takes seconds on these; a linear one microseconds.
    The bound (5 ms per parse) is generous so that it cannot flake."""
    assert parse_error(text) == message
    assert average_seconds(text) < 0.005


def test_parse_reference_long_ipv6_literal_in_linear_time():
    """Docker's IPv6 pattern is [hex and colons]: this one is well-formed,
    and the registry does not count in the 255-character limit."""
    text = "[" + ":" * 9998 + "]/x"
    reference = db.parse_reference(text)
    assert (reference.registry, reference.path) == ("[" + ":" * 9998 + "]", "x")
    assert average_seconds(text) < 0.005
