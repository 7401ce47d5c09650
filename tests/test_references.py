"""References: image references as Docker reads them (ParseNormalizedNamed),
and the registry host a reference's repository is looked up on: a table of
valid and invalid references, a bound on the parsing time of hostile input
(the parser must stay linear in the length of the reference), the look-up of
a reference once per key, and the bearer token a registry host keeps per
repository."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import json
import time

import pytest
import requests
from conftest import AMD, FakeSession, World, failed, load_tool, response
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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


# ----------------------------------------------------------------------------
# parse_reference
# ----------------------------------------------------------------------------


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
    # upper case only matters when the path is otherwise valid
    ("A___B", INVALID),
    ("Img..x", INVALID),
    ("user/-Img", INVALID),
    ("user/Img:1", lowercase("user/Img")),
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


# ----------------------------------------------------------------------------
# parse_reference on hostile input: rejected in linear time
# ----------------------------------------------------------------------------

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


# A backtracking parser takes seconds on 10,000 characters, a quadratic one
# tens of milliseconds and a linear one about one: the bound lies between,
# far enough from a linear parser for a loaded machine (four test workers on
# two cores).
LINEAR_BOUND = 0.05


def average_seconds(text, repetitions=5):
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
    assert average_seconds(text) < LINEAR_BOUND


def test_parse_reference_long_ipv6_literal_in_linear_time():
    """Docker's IPv6 pattern is [hex and colons]: this one is well-formed,
    and the registry does not count in the 255-character limit."""
    text = "[" + ":" * 9998 + "]/x"
    reference = db.parse_reference(text)
    assert (reference.registry, reference.path) == ("[" + ":" * 9998 + "]", "x")
    assert average_seconds(text) < LINEAR_BOUND


FAST = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FAST
@given(st.text(max_size=300))
@example("a" * 10000)
@example("[" + ":" * 9998 + "]/x")
def test_reference_parser_answers_or_rejects(text: str) -> None:
    """Whatever the text: a reference, or one clear line."""
    try:
        ref = db.parse_reference(text)
    except ValueError as err:
        assert "\n" not in str(err) and "Traceback" not in str(err)
    else:
        assert ref.path and ref.version


# ----------------------------------------------------------------------------
# Registries: a reference is looked up once per key
# ----------------------------------------------------------------------------

CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=datetime.timezone.utc)
INFO_AMD = {"linux/amd64": db.ImageInfo(CREATED, ("sha256:a", "sha256:b"))}


def test_registry_lookup_uses_known_futures(monkeypatch):
    """A look-up already started for a reference's key answers every later
    look-up and prefetch of it: the registry is not asked again."""
    fetched = []
    monkeypatch.setattr(
        db.RegistryHost,
        "fetch_image",
        lambda host, reference, platforms, cache: fetched.append(reference),
    )
    registries = db.Registries(db.Credentials({}, {}, {}))
    try:
        for reference, answer in (
            ("ghcr.io/o/img:1", INFO_AMD),
            ("ghcr.io/o/gone:1", None),
        ):
            key = db.parse_reference(reference).key
            registries.lookups.start((key, AMD), lambda answer=answer: answer).result()
        assert registries.lookup("ghcr.io/o/img:1", AMD) == INFO_AMD
        assert registries.lookup("ghcr.io/o/gone:1", AMD) is None
        concurrent.futures.wait(registries.prefetch([("ghcr.io/o/img:1", AMD)]))
        assert fetched == []
    finally:
        registries.close()


# ----------------------------------------------------------------------------
# RegistryHost: the challenge and the bearer tokens of a repository (a fake
# session answers the registry, and the token server that dxf asks)
# ----------------------------------------------------------------------------

HOST = "reg.example"
REALM = "https://auth.example/token"
CHALLENGE = {"WWW-Authenticate": f'Bearer realm="{REALM}",service="{HOST}"'}
BASIC = "Basic " + base64.b64encode(b"me:secret").decode()
LOGIN = ("me", "secret")


def token_url(repository, scope=None):
    scope = scope or f"repository%3A{repository.replace('/', '%2F')}%3Apull"
    return f"{REALM}?service={HOST}&scope={scope}"


def token(value):
    return response(200, body=json.dumps({"token": value}).encode())


@pytest.fixture
def host_with(monkeypatch):
    """Makes the RegistryHost of HOST (logged in as LOGIN unless told)
    whose requests, and dxf's token requests, the fake session answers."""

    def make(routes, login=LOGIN, timeout=30):
        logins = {HOST: login} if login else {}
        host = db.RegistryHost(HOST, db.Credentials(logins, {}, {}), 1, timeout, ())
        session = FakeSession(routes)
        host.session = session
        monkeypatch.setattr(requests, "get", session.get)  # dxf's token request
        return host, session

    return make


def test_registry_authenticate_directly(host_with):
    """authenticate keeps the token of the repository; a refusal of the
    login is Fatal, an anonymous refusal is dxf's own error."""
    ref = db.parse_reference(f"{HOST}/o/img")
    challenge = response(401, CHALLENGE)
    host, _ = host_with({("get", token_url("o/img")): [token("t-1")]})
    connection = db.Connection(f"https://{HOST}", False, challenge, LOGIN)
    assert host.authenticate(ref, connection, challenge, ["pull"]) == {
        "Authorization": "Bearer t-1"
    }
    assert host.tokens == {"o/img": "t-1"}

    refused = {("get", token_url("o/img")): [response(401, CHALLENGE, url=REALM)]}
    host, _ = host_with(refused)
    with pytest.raises(db.Fatal) as info:
        host.authenticate(ref, connection, challenge, ["pull"])
    assert (info.value.message, info.value.code, info.value.__suppress_context__) == (
        "reg.example: login failed: the registry rejected the credentials of me",
        1,
        True,
    )
    assert host.tokens == {}

    host, _ = host_with(refused, login=None)
    anonymous = db.Connection(f"https://{HOST}", False, challenge, None)
    with pytest.raises(db.dxf.exceptions.DXFUnauthorizedError):
        host.authenticate(ref, anonymous, challenge, ["pull"])
    assert host.tokens == {}


def authorization(host, reference):
    """The Authorization header for a reference's repository, the registry
    contacted first when it was not yet."""
    return host.authorization(db.parse_reference(reference), host.connect())


def test_registry_client_authenticates_once_per_repository(host_with):
    host, session = host_with(
        {
            ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
            ("get", token_url("o/img")): [token("t-img")],
            ("get", token_url("o/other")): [token("t-other")],
        }
    )
    assert authorization(host, f"{HOST}/o/img:1") == {"Authorization": "Bearer t-img"}
    assert host.tokens == {"o/img": "t-img"}
    assert session.calls == [
        ("get", f"https://{HOST}/v2/", None, 30),
        ("get", token_url("o/img"), BASIC, 30),
    ]
    # the same repository again: its token, no request
    assert authorization(host, f"{HOST}/o/img:1") == {"Authorization": "Bearer t-img"}
    assert len(session.calls) == 2
    # another repository: the remembered challenge, a token of its own
    assert authorization(host, f"{HOST}/o/other") == {"Authorization": "Bearer t-other"}
    assert session.calls[2:] == [("get", token_url("o/other"), BASIC, 30)]
    assert host.tokens == {"o/img": "t-img", "o/other": "t-other"}


def test_registry_client_anonymous_token(host_with):
    host, session = host_with(
        {
            ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
            ("get", token_url("o/img")): [token("anon")],
        },
        login=None,
    )
    assert authorization(host, f"{HOST}/o/img") == {"Authorization": "Bearer anon"}
    assert session.calls[1] == ("get", token_url("o/img"), None, 30)


def test_registry_client_open_registry(host_with):
    host, session = host_with({("get", f"https://{HOST}/v2/"): [response(200)]})
    assert authorization(host, f"{HOST}/o/img") == {}
    assert host.tokens == {}
    assert session.calls == [("get", f"https://{HOST}/v2/", None, 30)]


def test_registry_client_refused_token_is_replaced(host_with):
    """The registry refuses a token: the host authenticates with the login
    again, and the new token is the one reused."""
    manifest_url = f"https://{HOST}/v2/o/img/manifests/1"
    digest = "sha256:" + "0123456789abcdef" * 4
    scoped = {
        "WWW-Authenticate": f'Bearer realm="{REALM}",service="{HOST}",'
        'scope="repository:o/img:pull"'
    }

    def manifest(header):
        if header == "Bearer t-new":
            return response(200, {"Docker-Content-Digest": digest}, url=manifest_url)
        return response(401, scoped, url=manifest_url)

    host, session = host_with(
        {
            ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
            ("get", token_url("o/img")): [token("t-old"), token("t-new")],
            ("head", manifest_url): manifest,
        }
    )
    assert authorization(host, f"{HOST}/o/img:1") == {"Authorization": "Bearer t-old"}
    assert host.manifest_digest(db.parse_reference(f"{HOST}/o/img:1")) == digest
    assert host.tokens == {"o/img": "t-new"}
    assert session.calls == [
        ("get", f"https://{HOST}/v2/", None, 30),
        ("get", token_url("o/img"), BASIC, 30),
        ("head", manifest_url, "Bearer t-old", 30),
        ("get", token_url("o/img"), BASIC, 30),
        ("head", manifest_url, "Bearer t-new", 30),
    ]
    assert authorization(host, f"{HOST}/o/img:2") == {"Authorization": "Bearer t-new"}


def test_registry_client_probe_failure_is_retryable(host_with):
    """The probe's error comes out as requests raised it, for with_retries
    to judge; it is not remembered."""
    host, _ = host_with(
        {("get", f"https://{HOST}/v2/"): [response(502), response(200)]}
    )
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        host.connect()
    assert db.retry_wanted(raised.value) is True
    assert authorization(host, f"{HOST}/o/img") == {}


# ----------------------------------------------------------------------------
# End to end: image names as a run reads them
# ----------------------------------------------------------------------------


def test_invalid_repository_name(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("App\tapp")
    failed(world.run(), "docker_images line 1: invalid image name 'App'\n")


def test_uppercase_first_component_is_a_registry(world: World) -> None:
    """`Myregistry/x` names a registry (Docker's rule), which this
    machine cannot reach: the error names the image."""
    world.dockerfile("app", "scratch")
    world.config("Myregistry/x\tapp")
    world.commit()
    result = world.run()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("Myregistry/x:latest: ")
    assert result.stderr.count("\n") == 1
