"""Unit tests of the Registry stage: the registry host (probe, challenge,
authentication, tokens, manifests, config blobs, digests, platforms in
indexes), the look-up pool and Registries, retries, the digest cache and
the error texts.

No network: every HTTP request (the host's session and dxf's token
request alike) is answered in memory by the `http` fixture, either from a
table of routes or from an in-memory registry (`images`). Cache files
live in tmp_path.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import datetime
import email.utils
import hashlib
import json
import os
import re
import socket
import ssl
import struct
import threading
import time
import types
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
import requests
import requests.adapters
import requests.exceptions
import urllib3.exceptions
from conftest import AMD, fatal_message, load_tool, response

db = load_tool()

UTC = datetime.timezone.utc
CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
CREATED_Z = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
BOTH = ("linux/amd64", "linux/arm64")
DIGEST = "sha256:" + "0123456789abcdef" * 4
OTHER = "sha256:" + "1" * 64
THIRD = "sha256:" + "2" * 64
HUB = db.DOCKER_HUB

HOST = "reg.example"
REALM = "https://auth.example/token"
CHALLENGE = {"WWW-Authenticate": f'Bearer realm="{REALM}",service="{HOST}"'}
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Registry Realm"'}
LOGIN = ("me", "secret")
BASIC = "Basic " + base64.b64encode(b"me:secret").decode()

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"


# ----------------------------------------------------------------------------
# HTTP answered in memory
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a server sends back for one request."""

    status: int = 200
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""


def http_error(status: int, headers: dict[str, str] | None = None) -> Exception:
    return requests.exceptions.HTTPError(
        f"{status} Error", response=response(status, headers)
    )


def token(value: str) -> Answer:
    return Answer(200, body=json.dumps({"token": value}).encode())


def token_url(repository: str) -> str:
    scope = f"repository%3A{repository.replace('/', '%2F')}%3Apull"
    return f"{REALM}?service={HOST}&scope={scope}"


Route = list[Answer | BaseException] | Callable[[str | None], Answer]


class FakeHttp:
    """Answers every request of the process: from `routes`, (method, url)
    -> a list of answers, one per request (the last one repeats; an
    exception is raised), or a function of the Authorization header; else
    from the in-memory registry serving the URL's host (`hosts`). The
    requests are in `calls` as (method, url, Authorization, timeout), the
    form of every POST in `forms`."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {}
        self.hosts: dict[str, Images] = {}
        self.calls: list[tuple[str, str, str | None, float | None]] = []
        self.forms: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, timeout=None, **_kwargs):
        method = (request.method or "").lower()
        url = request.url or ""
        authorization = request.headers.get("Authorization")
        with self.lock:
            self.calls.append((method, url, authorization, timeout))
            if method == "post":
                body = request.body or ""
                text = body.decode() if isinstance(body, bytes) else body
                self.forms.append(
                    dict(urllib.parse.parse_qsl(text, keep_blank_values=True))
                )
            route = self.routes.get((method, url))
            if route is None:
                answer = self.hosts[urllib.parse.urlsplit(url).netloc].answer(
                    method, url
                )
            elif callable(route):
                answer = route(authorization)
            else:
                answer = route.pop(0) if len(route) > 1 else route[0]
        if isinstance(answer, BaseException):
            raise answer
        made = response(answer.status, answer.headers, answer.body, url)
        made.request = request
        return made


@pytest.fixture
def http(monkeypatch) -> FakeHttp:
    """Every HTTP request of the test answered by a FakeHttp."""
    fake = FakeHttp()
    monkeypatch.setattr(
        requests.adapters.HTTPAdapter,
        "send",
        lambda _adapter, request, **kwargs: fake.send(request, **kwargs),
    )
    return fake


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Images:
    """A registry in memory: manifests by version (tag or digest) with
    their response headers, blobs by digest. GET /v2/ answers 200; an
    `error` (a status, or an exception raised) answers every manifest
    request. Requests in `calls`: ("probe", host), ("head" | "manifest",
    repository, version), ("blob", repository, digest)."""

    def __init__(self) -> None:
        self.manifests: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.blobs: dict[str, bytes] = {}
        self.error: int | BaseException | None = None
        self.calls: list[tuple[str, ...]] = []

    def answer(self, method: str, url: str) -> Answer | BaseException:
        parts = urllib.parse.urlsplit(url)
        if parts.path == "/v2/":
            self.calls.append(("probe", parts.netloc))
            return Answer(200)
        found = re.fullmatch(r"/v2/(.+)/(manifests|blobs)/([^/]+)", parts.path)
        assert found, f"unexpected request {method} {url}"
        repository, kind, version = found.groups()
        if kind == "blobs":
            self.calls.append(("blob", repository, version))
            return Answer(200, body=self.blobs[version])
        self.calls.append(
            ("head" if method == "head" else "manifest", repository, version)
        )
        if isinstance(self.error, BaseException):
            return self.error
        if self.error:
            return Answer(self.error)
        if version not in self.manifests:
            return Answer(404)
        body, headers = self.manifests[version]
        return Answer(200, headers, b"" if method == "head" else body)

    def add_manifest(self, document, version=None, headers=None) -> str:
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

    def add_blob(self, data: bytes) -> str:
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def add_image(self, config, version=None, media_type=OCI_MANIFEST) -> str:
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


def credentials(logins=None) -> Any:
    """Credentials from DOCKER_LOGIN alone (no Docker config file)."""
    return db.Credentials(logins or {}, {}, {})


def make_host(
    name: str = HOST,
    logins=None,
    timeout: float = db.REGISTRY_TIMEOUT,
    insecure=(),
    jobs: int = 1,
) -> Any:
    return db.RegistryHost(name, credentials(logins), jobs, timeout, set(insecure))


@pytest.fixture
def images(http: FakeHttp):
    """An in-memory registry serving ghcr.io and Docker Hub; `.fetch`
    asks the host of a reference (one host object per registry)."""
    served = Images()
    http.hosts["ghcr.io"] = http.hosts[HUB] = served
    registries = db.Registries(credentials())

    def fetch(reference, platforms=AMD, cache=None):
        host = registries.host(db.parse_reference(reference).registry)
        return host.fetch_image(reference, platforms, cache or db.DigestCache(None))

    served.fetch = fetch
    yield served
    registries.close()


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


# ----------------------------------------------------------------------------
# plain_http_allowed and the probe of GET /v2/
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "insecure", "expected"),
    [
        ("localhost", (), True),
        ("localhost:5000", (), True),
        ("127.0.0.1", (), True),
        ("127.0.0.1:5000", (), True),
        ("127.1.2.3:80", (), True),
        ("[::1]", (), True),
        ("[::1]:5000", (), True),
        ("[0:0:0:0:0:0:0:1]:5000", (), True),
        ("::1", (), True),  # bare IPv6 loopback
        ("0:0:0:0:0:0:0:1", (), True),
        ("example.com", (), False),
        ("example.com:5000", (), False),
        ("localhost.example.com", (), False),
        ("mylocalhost:5000", (), False),
        ("128.0.0.1", (), False),
        ("10.0.0.1:5000", (), False),
        ("[::2]:5000", (), False),
        ("[fe80::1]", (), False),
        # named as insecure, with or without the port
        ("example.com", ("example.com",), True),
        ("example.com:5000", ("example.com",), True),
        ("example.com:5000", ("example.com:5000",), True),
        ("example.com", ("example.com:5000",), False),
        ("example.com:5000", ("example.com:6000",), False),
        ("example.com:5000", ("other.example",), False),
        ("[fd00::5]:5000", ("[fd00::5]",), True),
        ("[fd00::5]:5000", ("[fd00::5]:5000",), True),
    ],
)
def test_plain_http_allowed(host, insecure, expected):
    assert db.plain_http_allowed(host, set(insecure)) is expected


def refused(host: str) -> Exception:
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(
            None,
            f"https://{host}/v2/",
            reason=urllib3.exceptions.NewConnectionError(None, "Connection refused"),
        )
    )


def certificate_error(host: str) -> Exception:
    cert = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    return requests.exceptions.SSLError(
        urllib3.exceptions.MaxRetryError(
            None, f"https://{host}/v2/", reason=urllib3.exceptions.SSLError(cert)
        )
    )


def wrong_version(host: str) -> Exception:
    """What a TLS handshake with a plain-HTTP server gives."""
    err = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    return requests.exceptions.SSLError(
        urllib3.exceptions.MaxRetryError(
            None, f"https://{host}/v2/", reason=urllib3.exceptions.SSLError(err)
        )
    )


def probe_routes(http: FakeHttp, host: str, https_error=None) -> None:
    """GET /v2/ answers over plain HTTP; over HTTPS too, unless it fails
    with `https_error`."""
    http.routes["get", f"https://{host}/v2/"] = [https_error or Answer(200)]
    http.routes["get", f"http://{host}/v2/"] = [Answer(200)]


def test_probe_https(http):
    probe_routes(http, "localhost:5000")
    answer, plain = make_host("localhost:5000", timeout=7.0).probe()
    assert (answer.url, plain) == ("https://localhost:5000/v2/", False)
    assert http.calls == [("get", "https://localhost:5000/v2/", None, 7.0)]


@pytest.mark.parametrize(
    ("host", "insecure", "error"),
    [
        *(
            (host, (), error)
            for host in ("localhost:5000", "localhost", "127.0.0.1:5000", "[::1]:5000")
            for error in (refused, wrong_version)
        ),
        # named as insecure, with or without the port
        ("reg.internal:5000", ("reg.internal",), refused),
        ("reg.internal:5000", ("reg.internal:5000",), refused),
    ],
)
def test_probe_falls_back_to_http(http, host, insecure, error):
    """A loopback or insecure registry that fails over HTTPS is probed,
    and then connected to, over plain HTTP."""
    probe_routes(http, host, error(host))
    registry = make_host(host, timeout=7.0, insecure=insecure)
    answer, plain = registry.probe()
    assert (answer.url, plain) == (f"http://{host}/v2/", True)
    assert http.calls == [
        ("get", f"https://{host}/v2/", None, 7.0),
        ("get", f"http://{host}/v2/", None, 7.0),
    ]
    assert registry.connect().url == f"http://{host}"


@pytest.mark.parametrize(
    ("host", "insecure", "error"),
    [
        ("reg.example", (), refused),
        ("reg.example:5000", (), refused),
        ("10.0.0.1:5000", (), refused),
        ("reg.internal:5000", ("reg.internal:6000",), refused),  # another port
        # a certificate error is never a reason for plain HTTP
        ("localhost:5000", (), certificate_error),
        ("localhost:5000", ("localhost",), certificate_error),
        ("localhost:5000", ("localhost:5000",), certificate_error),
    ],
)
def test_probe_without_fallback(http, host, insecure, error):
    """Elsewhere, or after a certificate error, connect fails with the
    probe's own error, remembers nothing, and tries HTTPS only."""
    raised = error(host)
    probe_routes(http, host, raised)
    registry = make_host(host, timeout=7.0, insecure=insecure)
    with pytest.raises(type(raised)) as info:
        registry.connect()
    assert info.value is raised
    assert registry.connection is None
    assert http.calls == [("get", f"https://{host}/v2/", None, 7.0)]


# ----------------------------------------------------------------------------
# RegistryHost.connect: the challenge and a Basic login, found once
# ----------------------------------------------------------------------------

PROBE = f"https://{HOST}/v2/"


def test_connect_challenge_remembered(http):
    http.routes["get", PROBE] = [Answer(401, CHALLENGE)]
    host = make_host(logins={HOST: LOGIN})
    connection = host.connect()
    challenge = connection.challenge
    assert (challenge.status_code, challenge.headers["WWW-Authenticate"]) == (
        401,
        CHALLENGE["WWW-Authenticate"],
    )
    assert host.connect() is connection
    assert http.calls == [("get", PROBE, None, 30)]


def test_connect_open_registry(http):
    http.routes["get", PROBE] = [Answer(200)]
    host = make_host(logins={HOST: LOGIN})
    assert host.connect().challenge is None
    assert host.connect().challenge is None
    assert host.connection == db.Connection(f"https://{HOST}", False, None, LOGIN)
    assert len(http.calls) == 1


def test_connect_error_is_not_remembered(http):
    http.routes["get", PROBE] = [Answer(503), Answer(200)]
    host = make_host(logins={HOST: LOGIN})
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        host.connect()
    assert str(raised.value) == f"503 Server Error: Error for url: {PROBE}"
    assert db.retry_wanted(raised.value) is True
    assert host.connection is None
    assert host.connect().challenge is None
    assert len(http.calls) == 2


def test_connect_basic_login_accepted(http):
    """A Basic challenge and a login: the login is tried at once, and the
    challenge is remembered as for any other."""
    http.routes["get", PROBE] = lambda authorization: (
        Answer(200) if authorization == BASIC else Answer(401, BASIC_CHALLENGE)
    )
    host = make_host(logins={HOST: LOGIN})
    challenge = host.connect().challenge
    assert (challenge.status_code, challenge.headers["WWW-Authenticate"]) == (
        401,
        'Basic realm="Registry Realm"',
    )
    assert host.connect().challenge is challenge
    assert http.calls == [("get", PROBE, None, 30), ("get", PROBE, BASIC, 30)]


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
def test_connect_basic_login_rejected(http, scheme):
    http.routes["get", PROBE] = [
        Answer(401, {"WWW-Authenticate": f'{scheme} realm="r"'})
    ]
    host = make_host(logins={HOST: LOGIN})
    assert fatal_message(host.connect) == (
        "reg.example: login failed: the registry rejected the credentials of me"
    )
    assert http.calls == [("get", PROBE, None, 30), ("get", PROBE, BASIC, 30)]
    assert host.connection is None


@pytest.mark.parametrize("logins", [{}, {"other.example": LOGIN}])
def test_connect_basic_without_a_login_of_its_own_is_not_checked(http, logins):
    """No login, or only one for another registry: nothing is tried."""
    http.routes["get", PROBE] = [Answer(401, BASIC_CHALLENGE)]
    host = make_host(logins=logins)
    assert host.connect().challenge.status_code == 401
    assert http.calls == [("get", PROBE, None, 30)]


@pytest.mark.parametrize("status", [403, 404])
def test_fetch_image_not_a_registry(http, status):
    http.routes["get", PROBE] = [Answer(status)]
    host = make_host(logins={HOST: LOGIN})
    assert fatal_message(
        host.fetch_image, f"{HOST}/o/img:1", AMD, db.DigestCache(None)
    ) == (f"{HOST}: not a registry: GET /v2/ answered {status}")


# ----------------------------------------------------------------------------
# Authentication: tokens, refusals, identity tokens
# ----------------------------------------------------------------------------


def test_timeout_reaches_every_request(http):
    manifest_url = f"https://{HOST}/v2/o/img/manifests/1"
    http.routes.update(
        {
            ("get", PROBE): [Answer(401, CHALLENGE)],
            ("get", token_url("o/img")): [token("t")],
            ("head", manifest_url): [Answer(200)],
        }
    )
    host = make_host(logins={HOST: LOGIN}, timeout=2.5)
    ref = db.parse_reference(f"{HOST}/o/img:1")
    assert host.authorization(ref, host.connect()) == {"Authorization": "Bearer t"}
    assert host.request("head", ref, "manifests/1").status_code == 200
    assert http.calls == [
        ("get", PROBE, None, 2.5),
        ("get", token_url("o/img"), BASIC, 2.5),
        ("head", manifest_url, "Bearer t", 2.5),
    ]


@pytest.mark.parametrize("logins", [{}, {HOST: LOGIN}])
def test_fetch_image_refused_by_the_registry_means_not_there(http, logins):
    http.routes.update(
        {
            ("get", PROBE): [Answer(401, CHALLENGE)],
            ("get", token_url("o/img")): [Answer(403)],
        }
    )
    host = make_host(logins=logins)
    assert host.fetch_image(f"{HOST}/o/img:1", AMD, db.DigestCache(None)) is None


def token_refused(http: FakeHttp) -> None:
    http.routes.update(
        {
            ("get", PROBE): [Answer(401, CHALLENGE)],
            ("get", token_url("o/img")): [Answer(401, CHALLENGE)],
        }
    )


def test_fetch_image_token_refused_anonymously_means_not_there(http):
    token_refused(http)
    host = make_host(logins={})
    assert host.fetch_image(f"{HOST}/o/img:1", AMD, db.DigestCache(None)) is None


def test_fetch_image_token_refused_for_a_login_is_fatal(http):
    """A token server's 401 to a login is a wrong password, not a missing
    image: every image would be rebuilt on every run."""
    token_refused(http)
    host = make_host(logins={HOST: LOGIN})
    assert fatal_message(
        host.fetch_image, f"{HOST}/o/img:1", AMD, db.DigestCache(None)
    ) == ("reg.example: login failed: the registry rejected the credentials of me")
    assert http.calls == [
        ("get", PROBE, None, 30),
        ("get", token_url("o/img"), BASIC, 30),
    ]


@pytest.mark.parametrize(
    ("registry", "user", "message"),
    [
        (
            "ghcr.io",
            "bob",
            "ghcr.io: login failed: the registry rejected the credentials of bob",
        ),
        (
            "localhost:5000",
            "a b",
            "localhost:5000: login failed: "
            "the registry rejected the credentials of a b",
        ),
    ],
)
def test_login_rejected(registry, user, message):
    assert db.login_rejected(registry, user) == message


BEARER = (
    'Bearer realm="https://auth.example/token",service="reg.example",'
    'scope="repository:team/app:pull"'
)


def exchange(http: FakeHttp, header: str, url: str, answer: Answer) -> Callable:
    """identity_token_exchange of identity-123 for team/app, answered by
    `answer` at the realm `url`, with a timeout of 9 s."""
    http.routes["post", url] = [answer]
    host = make_host(timeout=9.0)
    ref = db.parse_reference("reg.example/team/app:1")
    challenge = response(401, {"WWW-Authenticate": header})
    return lambda: host.identity_token_exchange(ref, challenge, "identity-123")


def access_token(value: str) -> Answer:
    return Answer(200, body=json.dumps({"access_token": value}).encode())


@pytest.mark.parametrize(
    ("header", "url", "service"),
    [
        (BEARER, "https://auth.example/token", "reg.example"),
        ('bearer realm="https://auth.example/t"', "https://auth.example/t", ""),
    ],
)
def test_identity_token_exchange(http, header, url, service):
    call = exchange(http, header, url, access_token("access-456"))
    assert call() == "access-456"
    assert http.calls == [("post", url, None, 9.0)]
    assert http.forms == [
        {
            "grant_type": "refresh_token",
            "refresh_token": "identity-123",
            "service": service,
            "scope": "repository:team/app:pull",
            "client_id": "docker_build",
        }
    ]


def test_identity_token_exchange_rejected(http):
    call = exchange(http, BEARER, REALM, Answer(401))
    with pytest.raises(db.dxf.exceptions.DXFUnauthorizedError):
        call()
    assert len(http.forms) == 1


def test_identity_token_exchange_server_error(http):
    call = exchange(http, BEARER, REALM, Answer(500))
    with pytest.raises(requests.exceptions.HTTPError) as info:
        call()
    assert info.value.response.status_code == 500


@pytest.mark.parametrize(
    "header",
    [
        'Basic realm="Registry Realm"',
        "",
        "Bearer",
        'Bearer service="reg.example"',
    ],
)
def test_identity_token_exchange_no_bearer_realm(http, header):
    call = exchange(http, header, REALM, Answer(200))
    with pytest.raises(db.dxf.exceptions.DXFUnauthorizedError):
        call()
    assert http.calls == []


# ----------------------------------------------------------------------------
# RegistryHost.fetch_image: manifests, indexes, config blobs, platforms
# ----------------------------------------------------------------------------


def test_fetch_image_oci_manifest_without_media_type(images):
    digest = images.add_image(
        config_doc(
            created="2024-01-02T03:04:05.123456789Z", layers=["sha256:a", "sha256:b"]
        ),
        "latest",
        media_type=None,
    )
    expected = db.ImageInfo(
        datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        ("sha256:a", "sha256:b"),
        digest,
    )
    assert images.fetch("img", AMD) == {"linux/amd64": expected}
    config_digest = json.loads(images.manifests[digest][0])["config"]["digest"]
    assert images.calls == [
        ("probe", HUB),
        ("manifest", "library/img", "latest"),
        ("blob", "library/img", config_digest),
    ]


def test_fetch_image_single_platform_image_lacks_other_platforms(images):
    digest = images.add_image(config_doc(arch="amd64"), "1")
    assert images.fetch("ghcr.io/o/img:1", BOTH) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",), digest),
        "linux/arm64": None,
    }


def test_fetch_image_config_without_platform_serves_every_platform(images):
    digest = images.add_image(config_doc(arch=None), "latest")
    info = db.ImageInfo(CREATED_Z, ("sha256:a",), digest)
    assert images.fetch("img", BOTH) == {"linux/amd64": info, "linux/arm64": info}


def test_fetch_image_docker_manifest_by_digest(images):
    digest = images.add_image(
        config_doc(), media_type="application/vnd.docker.distribution.manifest.v2+json"
    )
    assert images.fetch("img@" + digest, AMD) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",), digest)
    }
    assert images.calls[1] == ("manifest", "library/img", digest)


def test_fetch_image_index_without_media_type(images):
    amd = images.add_image(config_doc("amd64", layers=["sha256:x"]))
    arm = images.add_image(config_doc("arm64", layers=["sha256:y"]))
    images.add_manifest(
        {"schemaVersion": 2, "manifests": [entry(amd), entry(arm, arch="arm64")]},
        "latest",
    )
    platforms = ("linux/amd64", "linux/arm64/v8", "linux/arm/v7")
    assert images.fetch("img", platforms) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:x",), amd),
        "linux/arm64/v8": db.ImageInfo(CREATED_Z, ("sha256:y",), arm),
        "linux/arm/v7": None,
    }


def test_fetch_image_index_with_attestation_and_entry_without_platform(images):
    amd = images.add_image(config_doc("amd64"))
    arm = images.add_image(config_doc("arm64", created="2024-01-02T03:04:05"))
    attestation = entry("sha256:" + "1" * 64, "unknown", "unknown")
    attestation["annotations"] = {
        "vnd.docker.reference.type": "attestation-manifest",
        "vnd.docker.reference.digest": amd,
    }
    no_platform = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "2" * 64}
    images.add_manifest(
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
    assert images.fetch("ghcr.io/o/img:1", ("linux/arm64", "linux/amd64")) == {
        "linux/arm64": db.ImageInfo(CREATED_Z, ("sha256:a",), arm),
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",), amd),
    }
    fetched = [call[2] for call in images.calls if call[0] == "manifest"]
    assert fetched == ["1", arm, amd]


def test_fetch_image_content_type_header_fallback(images):
    amd = images.add_image(config_doc("amd64"))
    images.add_manifest(
        {"schemaVersion": 2, "manifests": [entry(amd)]},
        "latest",
        headers={"Content-Type": DOCKER_LIST + "; charset=utf-8"},
    )
    assert images.fetch("img", AMD) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",), amd)
    }


def test_get_manifest_kinds(images):
    host = make_host("ghcr.io")
    ref = db.parse_reference("ghcr.io/o/img")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    images.add_manifest(index, "i")
    manifest = {"schemaVersion": 2, "config": {"digest": "sha256:c"}}
    images.add_manifest(manifest, "m", headers={"Content-Type": "application/json"})
    digest = sha256(json.dumps(index).encode())
    assert host.get_manifest(ref, "i") == (index, True, digest)
    # by digest: the digest asked for
    assert host.get_manifest(ref, digest) == (index, True, digest)
    # a tag without Docker-Content-Digest: the digest of the content
    body, _ = images.manifests["i"]
    images.manifests["bare"] = (body, {})
    assert host.get_manifest(ref, "bare") == (index, True, digest)
    manifest_digest = images.add_manifest({"config": {"digest": "sha256:c"}}, "m2")
    assert host.get_manifest(ref, "m2") == (
        {"config": {"digest": "sha256:c"}},
        False,
        manifest_digest,
    )
    # a Content-Type that says nothing leaves the decision to the document
    with pytest.raises(db.dxf.exceptions.DXFUnsupportedSchemaType) as info:
        host.get_manifest(ref, "m")
    assert str(info.value) == 'The mediaType "application/json" is not supported'


def test_image_config_and_indexed_image(images):
    host = make_host("ghcr.io")
    ref = db.parse_reference("ghcr.io/o/img")
    digest = images.add_image(config_doc("arm", variant="v7", layers=[]))
    manifest = json.loads(images.manifests[digest][0])
    found = host.image_config(ref, manifest, digest)
    assert found == (db.ImageInfo(CREATED_Z, (), digest), ("linux", "arm", "v7"))
    assert found[1] == db.Platform("linux", "arm", "v7")
    index = {"manifests": [entry(digest, arch="arm", variant="v7")]}
    assert host.indexed_image(ref, index, "linux/arm") == found[0]
    assert host.indexed_image(ref, index, "linux/arm/v6") is None
    assert host.indexed_image(ref, {"manifests": []}, "linux/amd64") is None


@pytest.mark.parametrize("status", [401, 403, 404])
def test_fetch_image_not_found(images, status):
    """Refused (401, dxf's DXFUnauthorizedError), forbidden or missing:
    the registry does not have the image."""
    images.error = status
    assert images.fetch("ghcr.io/o/img:1", BOTH) is None
    assert images.calls == [("probe", "ghcr.io"), ("manifest", "o/img", "1")]


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
MANIFEST_URL = "https://ghcr.io/v2/o/img/manifests/latest"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (400, f"ghcr.io/o/img: 400 Client Error: Error for url: {MANIFEST_URL}"),
        (
            requests.exceptions.SSLError(OLD_URLLIB3),
            "ghcr.io/o/img: Failed to establish a new connection: "
            "[Errno 111] Connection refused",
        ),
        (db.dxf.exceptions.DXFError("bad thing"), "ghcr.io/o/img: bad thing"),
    ],
)
def test_fetch_image_request_errors(images, error, message):
    images.error = error
    assert fatal_message(images.fetch, "ghcr.io/o/img", AMD) == message


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (500, f"ghcr.io/o/img: 500 Server Error: Error for url: {MANIFEST_URL}"),
        (
            requests.exceptions.ConnectionError(OLD_URLLIB3),
            "ghcr.io/o/img: Failed to establish a new connection: "
            "[Errno 111] Connection refused",
        ),
    ],
)
def test_fetch_image_retryable_request_errors(images, error, message):
    """What may go away is left to with_retries, which makes it the same
    Fatal once the tries are spent."""
    images.error = error
    with pytest.raises(requests.exceptions.RequestException) as raised:
        images.fetch("ghcr.io/o/img", AMD)
    if isinstance(error, int):
        assert raised.value.response.status_code == error
    else:
        assert raised.value is error
    waits = []

    def operation():
        return images.fetch("ghcr.io/o/img", AMD)

    assert fatal_message(
        db.with_retries, "ghcr.io/o/img", operation, waits.append, lambda: 1.0
    ) == (message)
    assert waits == [0.5, 1.0, 2.0, 4.0]
    manifests = images.calls.count(("manifest", "o/img", "latest"))
    assert manifests == 1 + db.RETRY_ATTEMPTS


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
def test_fetch_image_config_errors(images, blob, message):
    images.add_image(blob, "latest")
    assert fatal_message(images.fetch, "ghcr.io/o/img", AMD) == message


@pytest.mark.parametrize("body", [b"[]", b'"manifest"', b"{oops"])
def test_fetch_image_manifest_not_a_json_object(images, body):
    images.add_manifest(body, "latest")
    assert fatal_message(images.fetch, "img", AMD) == "img: Invalid JSON"


def test_fetch_image_digest_mismatch(images):
    body = json.dumps({"schemaVersion": 2, "config": {"digest": "x"}}).encode()
    wrong = "sha256:" + "0" * 64
    images.manifests["latest"] = (body, {"Docker-Content-Digest": wrong})
    assert fatal_message(images.fetch, "img", AMD) == (
        f"img: expected digest {wrong}, got {sha256(body)}"
    )
    # asked for by digest, the digest asked for is the one checked
    images.manifests[wrong] = (body, {})
    assert fatal_message(images.fetch, "img@" + wrong, AMD) == (
        f"img@{wrong}: expected digest {wrong}, got {sha256(body)}"
    )


def test_fetch_image_unexpected_digest_method(images):
    body = b'{"schemaVersion": 2, "config": {"digest": "x"}}'
    images.manifests["latest"] = (body, {"Docker-Content-Digest": "md5:" + "0" * 32})
    assert fatal_message(images.fetch, "img", AMD) == (
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
def test_fetch_image_schema1_unsupported(images, document, headers):
    images.add_manifest(document, "old", headers)
    assert fatal_message(images.fetch, "ghcr.io/o/img:old", AMD) == (
        f'ghcr.io/o/img:old: The mediaType "{SCHEMA1}" is not supported'
    )


def test_fetch_image_index_within_index(images):
    inner = images.add_manifest({"mediaType": OCI_INDEX, "manifests": []})
    images.add_manifest({"mediaType": OCI_INDEX, "manifests": [entry(inner)]}, "1")
    assert fatal_message(images.fetch, "ghcr.io/o/img:1", AMD) == (
        "ghcr.io/o/img:1: index within an index"
    )


def test_fetch_image_created_without_zone_is_utc(images):
    images.add_image(config_doc(created="2024-01-02T03:04:05.5"), "latest")
    (info,) = images.fetch("img", AMD).values()
    assert info.created == datetime.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)
    assert db.parse_created("2024-01-02T05:04:05+02:00") == CREATED_Z


def test_fetch_image_empty_diff_ids_base_never_changed(images):
    digest = images.add_image(config_doc(layers=[]), "latest")
    base = images.fetch("base", AMD)
    assert base == {"linux/amd64": db.ImageInfo(CREATED_Z, (), digest)}
    image = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:i",))}
    assert db.base_changed(base["linux/amd64"], image["linux/amd64"]) is False
    assert db.registry_evidence(base, image).finding is None


INPUTS = '{"context":"sha256:c","images":{},"options":"sha256:o","version":1}'


@pytest.mark.parametrize(
    ("more", "inputs"),
    [
        ({"config": {"Labels": {"docker_build.inputs": INPUTS, "x": "y"}}}, INPUTS),
        ({"config": {"Labels": {"docker_build.inputs": "not json"}}}, "not json"),
        ({"config": {"Labels": {"docker_build.inputs": ""}}}, ""),
        ({}, None),  # no config section
        ({"config": None}, None),
        ({"config": {}}, None),  # no Labels
        ({"config": {"Labels": {"x": "y"}}}, None),  # no such label
        ({"config": {"Labels": None}}, None),
        ({"config": {"Labels": ["docker_build.inputs"]}}, None),
        ({"config": {"Labels": "docker_build.inputs"}}, None),
        ({"config": {"Labels": {"docker_build.inputs": 5}}}, None),
        ({"config": {"Labels": {"docker_build.inputs": None}}}, None),
        ({"config": {"Labels": {"docker_build.inputs": {"version": 1}}}}, None),
        ({"config": {"Labels": {"docker_build.inputs": [INPUTS]}}}, None),
        ({"config": {"labels": {"docker_build.inputs": INPUTS}}}, None),  # case
        ({"Labels": {"docker_build.inputs": INPUTS}}, None),  # not in config
    ],
)
def test_fetch_image_inputs_label(images, more, inputs):
    """The docker_build.inputs label of the image config's Labels, as the
    string it is; anything else (absent, Labels not an object, a value
    that is not a string) is no record."""
    digest = images.add_image(config_doc(**more), "1")
    assert images.fetch("ghcr.io/o/img:1", AMD) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",), digest, inputs)
    }


def test_fetch_image_index_digest_and_label_per_platform(images):
    """In an index, each platform's ImageInfo carries the digest of its own
    manifest (the entry's, not the index's) and the label of its own
    config."""
    amd = images.add_image(
        config_doc("amd64", config={"Labels": {"docker_build.inputs": "amd"}})
    )
    arm = images.add_image(
        config_doc("arm64", config={"Labels": {"docker_build.inputs": "arm"}})
    )
    index = images.add_manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry(amd), entry(arm, arch="arm64")],
        },
        "1",
    )
    assert len({amd, arm, index}) == 3
    assert images.fetch("ghcr.io/o/img:1", BOTH) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",), amd, "amd"),
        "linux/arm64": db.ImageInfo(CREATED_Z, ("sha256:a",), arm, "arm"),
    }
    # asked for by the index's digest: the same
    assert images.fetch("ghcr.io/o/img@" + index, ("linux/arm64",)) == {
        "linux/arm64": db.ImageInfo(CREATED_Z, ("sha256:a",), arm, "arm"),
    }


def test_fetch_image_plain_manifest_digest_without_header(images):
    """A plain manifest named by a tag whose answer has no
    Docker-Content-Digest: the digest of the manifest's content."""
    digest = images.add_image(config_doc(), "1")
    body, _ = images.manifests[digest]
    images.manifests["bare"] = (body, {})
    assert images.fetch("ghcr.io/o/img:bare", AMD) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:a",), digest)
    }


def test_fetch_image_invalid_reference(http, images):
    assert fatal_message(
        make_host("ghcr.io").fetch_image, "a___b", AMD, db.DigestCache(None)
    ) == ("a___b: invalid reference format")
    assert (images.calls, http.calls) == ([], [])


# ----------------------------------------------------------------------------
# What look-ups feed the planning: platforms, base layers, creation times
# ----------------------------------------------------------------------------


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
def test_platform_serves(found, platform, expected):
    assert db.Platform(*found).serves(platform) is expected


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
def test_platform_implied_variant(arch, variant, expected):
    assert db.Platform("linux", arch, variant).implied_variant == expected


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


def test_registry_evidence_created_is_the_oldest_platform():
    later = CREATED + datetime.timedelta(hours=1)
    pushed = {
        "linux/amd64": db.ImageInfo(later, ()),
        "linux/arm64": db.ImageInfo(CREATED, ()),
    }
    base = dict.fromkeys(pushed, db.NO_BASE)
    assert db.registry_evidence(base, pushed).created == CREATED.timestamp()


# ----------------------------------------------------------------------------
# fetch_image and the digest cache
# ----------------------------------------------------------------------------


def warm_cache(tmp_path, digest, found):
    """A cache file holding one entry; the DigestCache reading it."""
    cache = db.DigestCache(str(tmp_path / "cache.json"))
    cache.put(digest, found)
    cache.save()
    return db.DigestCache(str(tmp_path / "cache.json"))


def test_fetch_image_cold_cache_fills_it_without_head(images, tmp_path):
    """An empty cache makes no HEAD request; what is read is kept under
    the manifest digest."""
    digest = images.add_image(config_doc(), "1")
    cache = db.DigestCache(str(tmp_path / "cache.json"))
    assert cache.warm is False
    info = db.ImageInfo(CREATED_Z, ("sha256:a",), digest)
    found = {"linux/amd64": info, "linux/arm64": None}
    assert images.fetch("ghcr.io/o/img:1", BOTH, cache) == found
    assert [call[0] for call in images.calls] == ["probe", "manifest", "blob"]
    assert cache.get(digest, BOTH) == found


def test_fetch_image_warm_cache_answers_after_head(images, tmp_path):
    digest = images.add_image(config_doc(), "1")
    found = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:cached",))}
    cache = warm_cache(tmp_path, digest, found)
    assert cache.warm is True
    assert images.fetch("ghcr.io/o/img:1", AMD, cache) == found
    assert images.calls == [("probe", "ghcr.io"), ("head", "o/img", "1")]
    # by digest, not even a HEAD request
    images.calls.clear()
    assert images.fetch("ghcr.io/o/img@" + digest, AMD, cache) == found
    assert images.calls == []


def test_fetch_image_warm_cache_misses(images, tmp_path):
    """Another digest, or a platform the cache does not know: the
    manifest is read, and the cache learns it."""
    digest = images.add_image(config_doc(), "1")
    cached = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:cached",))}
    cache = warm_cache(tmp_path, OTHER, cached)
    info = db.ImageInfo(CREATED_Z, ("sha256:a",), digest)
    assert images.fetch("ghcr.io/o/img:1", AMD, cache) == {"linux/amd64": info}
    kinds = [call[0] for call in images.calls]
    assert kinds == ["probe", "head", "manifest", "blob"]
    assert cache.get(digest, AMD) == {"linux/amd64": info}
    # the cache knows the digest for linux/amd64 only
    images.calls.clear()
    both = {"linux/amd64": info, "linux/arm64": None}
    assert images.fetch("ghcr.io/o/img:1", BOTH, cache) == both
    assert [call[0] for call in images.calls] == ["head", "manifest", "blob"]
    assert cache.get(digest, BOTH) == both


def test_fetch_image_warm_cache_head_not_found(images, tmp_path):
    cache = warm_cache(tmp_path, DIGEST, {"linux/amd64": None})
    images.error = 404
    assert images.fetch("ghcr.io/o/img:1", AMD, cache) is None
    assert images.calls == [("probe", "ghcr.io"), ("head", "o/img", "1")]


# ----------------------------------------------------------------------------
# Registries and the look-up pool
# ----------------------------------------------------------------------------

PLATFORM_DIGEST = "sha256:" + "3" * 64
LABEL = '{"context":"sha256:c","images":{},"options":"sha256:o","version":1}'
INFO = db.ImageInfo(CREATED, ("sha256:a", "sha256:b"), PLATFORM_DIGEST, LABEL)
INFO_AMD = {"linux/amd64": INFO}


class Fetches:
    """RegistryHost.fetch_image's stand-in: answers from `answers` by
    reference (an exception is raised, a list answers in turn), the calls
    in `calls` as (reference, platforms) and their hosts in `hosts`."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.hosts: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, host, reference, platforms, cache):
        with self.lock:
            self.calls.append((reference, platforms))
            self.hosts.append(host)
            answer = self.answers[reference]
            if isinstance(answer, list):
                answer = answer.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(platforms)
        return answer


@pytest.fixture
def fetches(monkeypatch) -> Fetches:
    fake = Fetches()
    monkeypatch.setattr(
        db.RegistryHost,
        "fetch_image",
        lambda host, reference, platforms, cache: fake(
            host, reference, platforms, cache
        ),
    )
    return fake


def test_registries_defaults():
    registries = db.Registries(credentials())
    assert (registries.jobs, registries.cache.path, registries.timeout) == (
        1,
        None,
        db.REGISTRY_TIMEOUT,
    )
    cache = db.DigestCache(None)
    assert db.Registries(credentials(), 4, cache).cache is cache


@pytest.mark.parametrize("jobs", [1, 4])
def test_registries_look_up_jobs_at_a_time(fetches, jobs):
    """`jobs` look-ups run together, never more (the pool's size seen at
    work, not read from it)."""
    running, most = 0, 0
    lock = threading.Lock()
    together = threading.Barrier(jobs, timeout=10)

    def work(platforms):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        together.wait()  # breaks unless `jobs` run at once
        with lock:
            running -= 1
        return dict.fromkeys(platforms)

    names = [f"ghcr.io/o/img{n}" for n in range(2 * jobs)]
    fetches.answers = dict.fromkeys(names, work)
    registries = db.Registries(credentials(), jobs)
    started = registries.prefetch([(name, AMD) for name in names])
    assert [future.result() for future in started] == [{"linux/amd64": None}] * len(
        names
    )
    assert most == jobs
    registries.close()


def test_registries_lookup_remembers(fetches):
    info = db.ImageInfo(CREATED, ("sha256:a",))
    fetches.answers = {"a": lambda platforms: dict.fromkeys(platforms, info)}
    logins = credentials({"ghcr.io": ("u", "p")})
    registries = db.Registries(logins)
    assert registries.credentials is logins
    assert registries.lookup("scratch", BOTH) == dict.fromkeys(BOTH, db.NO_BASE)
    assert registries.lookup("NONE", AMD) == {"linux/amd64": db.NO_BASE}
    epoch = datetime.datetime(1970, 1, 1, tzinfo=UTC)
    assert (db.NO_BASE.created, db.NO_BASE.layers) == (epoch, (None,))
    assert registries.lookup("a", AMD) == {"linux/amd64": info}
    # every spelling of the same image is the same look-up
    assert registries.lookup("docker.io/library/a:latest", AMD) == {"linux/amd64": info}
    assert registries.lookup("index.docker.io/a", AMD) == {"linux/amd64": info}
    assert registries.lookup("a", BOTH) == dict.fromkeys(BOTH, info)
    # each look-up is made once in a run
    assert registries.lookup("a:latest", AMD) == {"linux/amd64": info}
    assert registries.lookup("docker.io/a", BOTH) == dict.fromkeys(BOTH, info)
    assert fetches.calls == [("a", AMD), ("a", BOTH)]
    assert fetches.hosts == [registries.host(HUB)] * 2
    assert registries.start("a", AMD).result() == {"linux/amd64": info}
    registries.close()


def test_registries_lookup_invalid_reference():
    registries = db.Registries(credentials())
    assert fatal_message(registries.lookup, "a___b", AMD) == (
        "a___b: invalid reference format"
    )


def test_registries_prefetch_defers_errors(fetches):
    fetches.answers = {
        "good": INFO_AMD,
        "bad": db.Fatal("bad: boom"),
        "ghcr.io/o/missing": None,
    }
    registries = db.Registries(credentials(), jobs=3)
    # nothing raised here: not the invalid reference, nor the failing fetch
    started = registries.prefetch(
        [
            ("a___b", AMD),
            ("scratch", AMD),
            ("NONE", BOTH),
            ("bad", AMD),
            ("good", AMD),
            ("ghcr.io/o/missing", AMD),
        ]
    )
    assert len(started) == 3
    concurrent.futures.wait(started)
    assert sorted(fetches.calls) == [
        ("bad", AMD),
        ("ghcr.io/o/missing", AMD),
        ("good", AMD),
    ]
    assert registries.lookup("good", AMD) == INFO_AMD
    assert registries.lookup("docker.io/library/good:latest", AMD) == INFO_AMD
    assert registries.lookup("ghcr.io/o/missing:latest", AMD) is None
    assert registries.lookup("scratch", AMD) == {"linux/amd64": db.NO_BASE}
    assert fatal_message(registries.lookup, "bad", AMD) == "bad: boom"
    assert fatal_message(registries.lookup, "bad", AMD) == "bad: boom"
    assert fatal_message(registries.lookup, "a___b", AMD) == (
        "a___b: invalid reference format"
    )
    # each look-up was made once
    assert len(fetches.calls) == 3
    registries.close()


def test_registries_prefetch_retries(fetches, monkeypatch):
    """A look-up is retried where it runs; its final error waits for
    lookup."""
    monkeypatch.setattr(db, "RETRY_FIRST_DELAY", 0.001)
    refused_error = requests.exceptions.ConnectionError("refused")
    fetches.answers = {
        "flaky": [refused_error, refused_error, INFO_AMD],
        "down": refused_error,
    }
    registries = db.Registries(credentials(), jobs=2)
    registries.prefetch([("flaky", AMD), ("down", AMD)])
    assert registries.lookup("flaky", AMD) == INFO_AMD
    assert fatal_message(registries.lookup, "down", AMD) == "down: refused"
    assert fetches.calls.count(("flaky", AMD)) == 3
    assert fetches.calls.count(("down", AMD)) == db.RETRY_ATTEMPTS
    registries.close()


def test_registries_fetch_now_asks_again(fetches):
    """fetch_now looks the image up again, in the calling thread, even
    when the same look-up was made (and remembered) before; it leaves
    what lookup remembers as it was."""
    old = {"linux/amd64": db.ImageInfo(CREATED, ("sha256:a",), DIGEST)}
    new = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:b",), OTHER)}
    newest = {"linux/amd64": db.ImageInfo(CREATED_Z, ("sha256:c",), THIRD)}
    threads = []

    def answer(found):
        def work(_platforms):
            threads.append(threading.current_thread())
            return found

        return work

    fetches.answers = {"ghcr.io/o/tool:1": [answer(old), answer(new), answer(newest)]}
    registries = db.Registries(credentials(), jobs=2)
    assert registries.lookup("ghcr.io/o/tool:1", AMD) == old
    assert registries.fetch_now("ghcr.io/o/tool:1", AMD) == new
    assert registries.fetch_now("ghcr.io/o/tool:1", AMD) == newest
    assert registries.lookup("ghcr.io/o/tool:1", AMD) == old  # the memo
    assert fetches.calls == [("ghcr.io/o/tool:1", AMD)] * 3
    assert fetches.hosts == [registries.host("ghcr.io")] * 3
    assert threads[0] is not threading.current_thread()  # the pool's
    assert threads[1:] == [threading.current_thread()] * 2
    registries.close()


def test_registries_fetch_now_retries(fetches, monkeypatch):
    """fetch_now retries what may go away, and gives up as lookup does."""
    monkeypatch.setattr(db, "RETRY_FIRST_DELAY", 0.001)
    refused_error = requests.exceptions.ConnectionError("refused")
    fetches.answers = {"flaky": [refused_error, INFO_AMD], "down": refused_error}
    registries = db.Registries(credentials())
    assert registries.fetch_now("flaky", AMD) == INFO_AMD
    assert fatal_message(registries.fetch_now, "down", AMD) == "down: refused"
    assert fetches.calls.count(("flaky", AMD)) == 2
    assert fetches.calls.count(("down", AMD)) == db.RETRY_ATTEMPTS
    registries.close()


TOOL_IMAGE = "ghcr.io/o/tool:1"
KNOWN_IMAGE = "ghcr.io/o/known:1"


def used_target(platforms, uses):
    """A target built for `platforms` that pulls `uses` besides its base."""
    image = db.Image(
        "app", "app:latest", "app", "ghcr.io/o/base:1", (), platforms, "", uses
    )
    (target,) = db.image_targets(image, ["ghcr.io/o"])
    return target


def info_of(digest):
    return db.ImageInfo(CREATED, ("sha256:a",), digest)


@pytest.mark.parametrize(
    ("platforms", "found", "completed"),
    [
        (AMD, {"linux/amd64": info_of(OTHER)}, OTHER),
        (
            BOTH,
            {"linux/amd64": info_of(OTHER), "linux/arm64": info_of(THIRD)},
            {"linux/amd64": OTHER, "linux/arm64": THIRD},
        ),
    ],
)
def test_registries_complete_fills_unknown_digests(
    fetches, platforms, found, completed
):
    """complete fills each image digest not yet known (None) from a fresh
    look-up, made even though the image was looked up before (it may have
    been built and pushed since): one digest for a build of one platform,
    one per platform otherwise. Known digests are left as they are and not
    looked up; context and options are kept."""
    stale = dict.fromkeys(platforms, info_of(DIGEST))
    fetches.answers = {TOOL_IMAGE: [stale, found]}
    uses = tuple((p, image) for image in (TOOL_IMAGE, KNOWN_IMAGE) for p in platforms)
    target = used_target(platforms, uses)
    inputs = db.Inputs(
        "sha256:c", "sha256:o", {TOOL_IMAGE: None, KNOWN_IMAGE: "sha256:known"}
    )
    registries = db.Registries(credentials())
    assert registries.lookup(TOOL_IMAGE, platforms) == stale
    assert registries.complete(target, inputs) == db.Inputs(
        "sha256:c", "sha256:o", {TOOL_IMAGE: completed, KNOWN_IMAGE: "sha256:known"}
    )
    assert fetches.calls == [(TOOL_IMAGE, platforms)] * 2
    assert inputs.images[TOOL_IMAGE] is None  # a new Inputs, this one unchanged
    registries.close()


def test_registries_complete_all_known_looks_nothing_up(fetches):
    target = used_target(AMD, (("linux/amd64", TOOL_IMAGE),))
    inputs = db.Inputs("sha256:c", "sha256:o", {TOOL_IMAGE: DIGEST})
    registries = db.Registries(credentials())
    assert registries.complete(target, inputs) == inputs
    assert fetches.calls == []


@pytest.mark.parametrize(
    ("platforms", "found", "message"),
    [
        (AMD, None, f"Missing image used by the build: {TOOL_IMAGE}"),
        (
            BOTH,
            {"linux/amd64": info_of(OTHER), "linux/arm64": None},
            f"Missing image used by the build: {TOOL_IMAGE} for linux/arm64",
        ),
        (
            AMD,
            {"linux/amd64": db.ImageInfo(CREATED, ())},
            f"Missing image used by the build: {TOOL_IMAGE} for linux/amd64",
        ),
    ],
)
def test_registries_complete_missing_image(fetches, platforms, found, message):
    """An image still missing after the build (or without a digest for a
    platform) is an error naming it."""
    fetches.answers = {TOOL_IMAGE: found}
    target = used_target(platforms, tuple((p, TOOL_IMAGE) for p in platforms))
    inputs = db.Inputs("sha256:c", "sha256:o", {TOOL_IMAGE: None})
    registries = db.Registries(credentials())
    assert fatal_message(registries.complete, target, inputs) == message
    registries.close()


@pytest.fixture
def clock(monkeypatch):
    """docker_build's time.time, set by `.now`."""
    stopped = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(db, "time", types.SimpleNamespace(time=lambda: stopped.now))
    return stopped


def test_registries_close_closes_the_hosts_and_leaves_the_cache(
    tmp_path, clock, monkeypatch
):
    """close closes every host's session; the cache is saved by whoever
    opened it (see test_main_jobs_and_cache), not by close."""
    path = tmp_path / "c.json"
    cache = db.DigestCache(str(path))
    cache.put(DIGEST, {"linux/amd64": None})
    registries = db.Registries(credentials(), 2, cache)
    closed = []
    for name in ("a.example", "b.example"):
        session = registries.host(name).session
        monkeypatch.setattr(session, "close", lambda name=name: closed.append(name))
    registries.close()
    assert closed == ["a.example", "b.example"]
    assert not path.exists()


def test_registries_host_per_name():
    """One host (and one session) per registry name. (That a host's
    connection pool holds `jobs` connections is counted at the server by
    the end-to-end tests.)"""
    registries = db.Registries(credentials(), jobs=6)
    host = registries.host("a.example")
    assert isinstance(host.session, requests.Session)
    assert registries.host("a.example") is host
    other = registries.host("b.example")
    assert other is not host
    assert other.session is not host.session
    assert (host.name, other.name) == ("a.example", "b.example")
    registries.close()


# ----------------------------------------------------------------------------
# Retries: retry_wanted, retry_delay, retry_after_seconds, with_retries
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (http_error(429), True),
        (http_error(500), True),
        (http_error(502), True),
        (http_error(503), True),
        (http_error(504), True),
        (http_error(400), False),
        (http_error(401), False),
        (http_error(403), False),
        (http_error(404), False),
        (http_error(501), False),
        (requests.exceptions.HTTPError("no response"), False),
        (requests.exceptions.ConnectionError("refused"), True),
        (requests.exceptions.ProxyError("proxy"), True),
        (requests.exceptions.ConnectTimeout("slow"), True),
        (requests.exceptions.ReadTimeout("slow"), True),
        (requests.exceptions.Timeout("slow"), True),
        (requests.exceptions.ChunkedEncodingError("cut"), True),
        (requests.exceptions.SSLError("certificate verify failed"), False),
        (requests.exceptions.TooManyRedirects("loop"), False),
        (requests.exceptions.InvalidURL("bad"), False),
        (requests.exceptions.RequestException("other"), False),
        (db.dxf.exceptions.DXFUnauthorizedError(), False),
        (ValueError("x"), False),
    ],
)
def test_retry_wanted(error, expected):
    assert db.retry_wanted(error) is expected


@pytest.mark.parametrize(
    ("jitter", "delays"),
    [
        (1.0, [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
        (0.0, [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]),
        (0.5, [0.375, 0.75, 1.5, 3.0, 6.0, 7.5, 7.5]),
    ],
)
def test_retry_delay_exponential_capped_with_jitter(jitter, delays):
    err = requests.exceptions.ConnectionError("refused")
    assert [db.retry_delay(err, attempt, jitter) for attempt in range(1, 8)] == delays


def test_retry_delay_retry_after_seconds():
    """The server's Retry-After wins, whatever the attempt and the
    jitter, and is not capped."""
    err = http_error(429, {"Retry-After": "7"})
    assert db.retry_delay(err, 1, 0.0) == 7.0
    assert db.retry_delay(err, 4, 1.0) == 7.0
    assert db.retry_delay(http_error(503, {"Retry-After": "120"}), 1, 0.5) == 120.0


@pytest.fixture
def now(monkeypatch):
    """docker_build's clock stopped at CREATED (for HTTP dates)."""

    class Stopped(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            assert tz is UTC
            return CREATED

    monkeypatch.setattr(
        db,
        "datetime",
        types.SimpleNamespace(datetime=Stopped, timezone=datetime.timezone),
    )
    return CREATED


def test_retry_delay_retry_after_http_date(now):
    later = email.utils.format_datetime(now + datetime.timedelta(seconds=30), True)
    assert later == "Tue, 02 Jan 2024 03:04:35 GMT"
    assert db.retry_delay(http_error(503, {"Retry-After": later}), 3, 0.0) == 29.876544


@pytest.mark.parametrize("value", ["soon", "", "1.5", "-1"])
def test_retry_delay_unreadable_retry_after_backs_off(value):
    err = http_error(503, {"Retry-After": value})
    assert db.retry_delay(err, 3, 1.0) == 2.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (" 5 ", 5.0),
        ("Tue, 02 Jan 2024 03:05:05 GMT", 59.876544),
        ("Tue, 02 Jan 2024 03:05:05 +0000", 59.876544),
        ("Tue, 02 Jan 2024 05:05:05 +0200", 59.876544),
        ("Tue, 02 Jan 2024 03:05:05 -0000", 59.876544),  # unknown zone: UTC
        ("Mon, 01 Jan 2024 00:00:00 GMT", 0.0),  # past: no wait
        ("soon", None),
        ("", None),
        ("1.5", None),
        ("-1", None),
    ],
)
def test_retry_after_seconds(now, value, expected):
    assert db.retry_after_seconds(value) == expected


class Flaky:
    """An operation failing with `errors` in turn, then answering."""

    def __init__(self, *errors, answer="found"):
        self.errors = list(errors)
        self.answer = answer
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.answer


def test_with_retries_succeeds_after_failures():
    waits = []
    operation = Flaky(
        requests.exceptions.ConnectionError("refused"),
        http_error(503),
        requests.exceptions.ReadTimeout("slow"),
    )
    assert db.with_retries("ghcr.io/o/img", operation, waits.append, lambda: 1.0) == (
        "found"
    )
    assert operation.calls == 4
    assert waits == [0.5, 1.0, 2.0]


def test_with_retries_first_try_succeeds():
    waits = []
    operation = Flaky()
    assert db.with_retries("img", operation, waits.append, lambda: 1.0) == "found"
    assert (operation.calls, waits) == (1, [])


def test_with_retries_gives_up_after_attempts():
    waits = []
    jitters = iter([0.0, 1.0, 0.5, 0.0, 1.0])
    operation = Flaky(*[http_error(502) for _ in range(10)])
    assert fatal_message(
        db.with_retries,
        "ghcr.io/o/img:1",
        operation,
        waits.append,
        lambda: next(jitters),
    ) == ("ghcr.io/o/img:1: 502 Error")
    assert operation.calls == db.RETRY_ATTEMPTS == 5
    assert waits == [0.25, 1.0, 1.5, 2.0]


def test_with_retries_attempts_read_at_run_time(monkeypatch):
    monkeypatch.setattr(db, "RETRY_ATTEMPTS", 2)
    waits = []
    operation = Flaky(*[requests.exceptions.ConnectionError("refused")] * 3)
    assert fatal_message(
        db.with_retries, "img", operation, waits.append, lambda: 1.0
    ) == ("img: refused")
    assert (operation.calls, waits) == (2, [0.5])


def test_with_retries_gives_up_when_the_budget_would_be_exceeded():
    """Two waits of 25 s fit in the 60 s budget, a third would not."""
    waits = []
    operation = Flaky(*[http_error(429, {"Retry-After": "25"}) for _ in range(5)])
    assert fatal_message(
        db.with_retries, "img", operation, waits.append, lambda: 1.0
    ) == ("img: 429 Error")
    assert operation.calls == 3
    assert waits == [25.0, 25.0]


def test_with_retries_retry_after_beyond_the_budget_gives_up_at_once():
    waits = []
    operation = Flaky(http_error(503, {"Retry-After": "61"}))
    assert fatal_message(
        db.with_retries, "img", operation, waits.append, lambda: 1.0
    ) == ("img: 503 Error")
    assert (operation.calls, waits) == (1, [])


@pytest.mark.parametrize(
    ("errors", "message"),
    [
        ((http_error(404),), "img: 404 Error"),
        (
            (requests.exceptions.SSLError("certificate verify failed"),),
            "img: certificate verify failed",
        ),
        ((http_error(400), http_error(400)), "img: 400 Error"),
        # a Fatal of the operation is its own; it is never retried
        ((db.Fatal("img: Invalid JSON"),), "img: Invalid JSON"),
    ],
)
def test_with_retries_not_retried(errors, message):
    waits = []
    operation = Flaky(*errors)
    assert fatal_message(
        db.with_retries, "img", operation, waits.append, lambda: 1.0
    ) == (message)
    assert (operation.calls, waits) == (1, [])


def test_with_retries_error_text_shortened():
    """The final cause is shortened as request_error_text does."""
    error = requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='h', port=443): Max retries exceeded "
        "with url: /v2/ (Caused by NewConnectionError('<x>: "
        "Failed to establish a new connection: [Errno 111] "
        "Connection refused'))"
    )
    waits = []
    operation = Flaky(*[error] * 5)
    assert fatal_message(
        db.with_retries, "img", operation, waits.append, lambda: 1.0
    ) == ("img: Failed to establish a new connection: [Errno 111] Connection refused")
    assert (operation.calls, waits) == (5, [0.5, 1.0, 2.0, 4.0])


# ----------------------------------------------------------------------------
# DigestCache, cached_info, cache_path, warn
# ----------------------------------------------------------------------------

FOUND = {"linux/amd64": INFO, "linux/arm64": None}
FOUND_JSON = {
    "linux/amd64": {
        "created": "2024-01-02T03:04:05.123456+00:00",
        "layers": ["sha256:a", "sha256:b"],
        "digest": PLATFORM_DIGEST,
        "inputs": LABEL,
    },
    "linux/arm64": None,
}


def test_digest_cache_without_path():
    cache = db.DigestCache(None)
    assert (cache.path, cache.entries, cache.warm, cache.changed) == (
        None,
        {},
        False,
        False,
    )
    cache.put(DIGEST, FOUND)
    assert cache.entries == {}
    assert cache.get(DIGEST, AMD) is None
    cache.save()  # nothing to write, nowhere


def test_digest_cache_round_trip(tmp_path, clock, capsys):
    path = tmp_path / "sub" / "dir" / "manifests.json"
    cache = db.DigestCache(str(path))
    assert (cache.entries, cache.warm, cache.changed) == ({}, False, False)
    cache.put(DIGEST, FOUND)
    assert cache.changed is True
    cache.save()  # the directories are made
    assert json.loads(path.read_text()) == {
        "version": 2,
        "entries": {DIGEST: {"platforms": FOUND_JSON, "used": 1000.0}},
    }
    assert os.listdir(path.parent) == ["manifests.json"]
    again = db.DigestCache(str(path))
    assert (again.warm, again.changed) == (True, False)
    assert again.get(DIGEST, BOTH) == FOUND
    assert again.get(DIGEST, AMD) == {"linux/amd64": INFO}
    assert again.get(DIGEST, ("linux/arm64",)) == {"linux/arm64": None}
    assert again.get(OTHER, AMD) is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("info", "facts"),
    [
        (
            db.ImageInfo(CREATED, ("sha256:a",), PLATFORM_DIGEST, LABEL),
            {"digest": PLATFORM_DIGEST, "inputs": LABEL},
        ),
        (
            db.ImageInfo(CREATED, ("sha256:a",), PLATFORM_DIGEST),
            {"digest": PLATFORM_DIGEST, "inputs": None},
        ),
        (db.ImageInfo(CREATED, ("sha256:a",)), {"digest": None, "inputs": None}),
        (
            db.ImageInfo(CREATED, (None,), None, ""),
            {"layers": [None], "digest": None, "inputs": ""},
        ),
    ],
)
def test_digest_cache_keeps_digest_and_inputs(tmp_path, clock, info, facts):
    """Each platform's manifest digest and inputs label are written to the
    cache file and read back as they were (None included)."""
    path = tmp_path / "c.json"
    cache = db.DigestCache(str(path))
    cache.put(DIGEST, {"linux/amd64": info})
    cache.save()
    written = json.loads(path.read_text())
    assert written["version"] == db.CACHE_VERSION == 2
    assert written["entries"][DIGEST]["platforms"]["linux/amd64"] == {
        "created": "2024-01-02T03:04:05.123456+00:00",
        "layers": ["sha256:a"],
        **facts,
    }
    assert db.DigestCache(str(path)).get(DIGEST, AMD) == {"linux/amd64": info}


def test_digest_cache_partial_platforms(tmp_path, clock):
    cache = db.DigestCache(str(tmp_path / "c.json"))
    cache.put(DIGEST, {"linux/amd64": INFO})
    assert cache.get(DIGEST, BOTH) is None
    assert cache.get(DIGEST, ("linux/arm64",)) is None
    # what is learnt later is added to the entry
    cache.put(DIGEST, {"linux/arm64": None})
    assert cache.get(DIGEST, BOTH) == FOUND
    assert cache.entries[DIGEST]["platforms"] == FOUND_JSON


def test_digest_cache_get_marks_use(tmp_path, clock):
    path = tmp_path / "c.json"
    cache = db.DigestCache(str(path))
    cache.put(DIGEST, FOUND)
    cache.save()
    clock.now = 2000.0
    again = db.DigestCache(str(path))
    assert again.get(OTHER, AMD) is None
    assert again.changed is False  # a miss changes nothing
    assert again.get(DIGEST, AMD) == {"linux/amd64": INFO}
    assert (again.changed, again.entries[DIGEST]["used"]) == (True, 2000.0)
    again.save()
    assert json.loads(path.read_text())["entries"][DIGEST]["used"] == 2000.0


def test_digest_cache_save_unchanged_writes_nothing(tmp_path, clock, monkeypatch):
    path = tmp_path / "c.json"
    cache = db.DigestCache(str(path))
    cache.save()
    assert not path.exists()
    cache.put(DIGEST, FOUND)
    cache.save()
    monkeypatch.setattr(db.os, "replace", lambda *a: pytest.fail("written"))
    again = db.DigestCache(str(path))
    again.get(OTHER, AMD)
    again.save()


def test_digest_cache_save_is_atomic(tmp_path, clock, monkeypatch):
    """The cache is written to a temporary file beside it, then renamed."""
    path = str(tmp_path / "c.json")
    renames = []
    real_replace = os.replace

    def replace(source, target):
        with open(source, encoding="utf-8") as file:
            renames.append((source, target, json.load(file)))
        assert not os.path.exists(target)
        real_replace(source, target)

    monkeypatch.setattr(db.os, "replace", replace)
    cache = db.DigestCache(path)
    cache.put(DIGEST, FOUND)
    cache.save()
    data = {
        "version": 2,
        "entries": {DIGEST: {"platforms": FOUND_JSON, "used": 1000.0}},
    }
    assert renames == [(f"{path}.{os.getpid()}", path, data)]
    assert sorted(os.listdir(tmp_path)) == ["c.json"]


def test_digest_cache_save_keeps_the_most_recently_used(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(db, "CACHE_ENTRIES", 2)
    path = tmp_path / "c.json"
    cache = db.DigestCache(str(path))
    for when, digest in [(1.0, DIGEST), (2.0, OTHER), (3.0, THIRD)]:
        clock.now = when
        cache.put(digest, {"linux/amd64": None})
    clock.now = 4.0
    assert cache.get(DIGEST, AMD) == {"linux/amd64": None}
    cache.save()
    data = json.loads(path.read_text())
    assert data == {
        "version": 2,
        "entries": {
            DIGEST: {"platforms": {"linux/amd64": None}, "used": 4.0},
            THIRD: {"platforms": {"linux/amd64": None}, "used": 3.0},
        },
    }
    assert list(data["entries"]) == [DIGEST, THIRD]  # newest first


def test_digest_cache_corrupt_json(tmp_path, capsys, clock):
    path = tmp_path / "c.json"
    path.write_text("{not json")
    cache = db.DigestCache(str(path))
    assert capsys.readouterr().err == (
        f"docker_build: warning: ignoring the cache {path}: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)\n"
    )
    assert (cache.entries, cache.warm, cache.changed) == ({}, False, True)
    # the bad file is replaced at the end of the run
    cache.save()
    assert json.loads(path.read_text()) == {"version": 2, "entries": {}}


OLD_CACHE_FACTS = {"created": "2024-01-02T03:04:05+00:00", "layers": ["sha256:a"]}


@pytest.mark.parametrize(
    "content",
    [
        {"version": 1, "entries": {DIGEST: {"platforms": {"linux/amd64": None}}}},
        {
            "version": 1,
            "entries": {
                DIGEST: {"used": 5.0, "platforms": {"linux/amd64": OLD_CACHE_FACTS}}
            },
        },
        {"version": 1, "entries": "what an old tool wrote"},
        {"version": 0},
        {"version": -3, "entries": {}},
    ],
)
def test_digest_cache_older_version_dropped_silently(tmp_path, capsys, clock, content):
    """The cache of an older version (knowing no digests nor labels) is
    dropped without a word, whatever it holds, and rewritten as version 2
    at the end of the run."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps(content))
    cache = db.DigestCache(str(path))
    assert capsys.readouterr().err == ""
    assert (cache.entries, cache.warm, cache.changed) == ({}, False, True)
    assert cache.get(DIGEST, AMD) is None
    cache.save()
    assert json.loads(path.read_text()) == {"version": 2, "entries": {}}
    cache.put(OTHER, FOUND)
    cache.save()
    assert json.loads(path.read_text()) == {
        "version": 2,
        "entries": {OTHER: {"platforms": FOUND_JSON, "used": 1000.0}},
    }
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("version", [3, 99])
def test_digest_cache_newer_version_warns(tmp_path, capsys, clock, version):
    """A cache of a version this tool does not know yet (a newer tool's)
    is ignored with a warning, and replaced by a version-2 one."""
    path = tmp_path / "c.json"
    entries = {DIGEST: {"platforms": {"linux/amd64": None}, "used": 5.0}}
    path.write_text(json.dumps({"version": version, "entries": entries}))
    cache = db.DigestCache(str(path))
    assert capsys.readouterr().err == (
        f"docker_build: warning: ignoring the cache {path}: unexpected content\n"
    )
    assert (cache.entries, cache.warm, cache.changed) == ({}, False, True)
    cache.save()
    assert json.loads(path.read_text()) == {"version": 2, "entries": {}}


def test_digest_cache_unreadable(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.mkdir()
    cache = db.DigestCache(str(path))
    assert capsys.readouterr().err == (
        f"docker_build: warning: ignoring the cache {path}: "
        f"[Errno 21] Is a directory: '{path}'\n"
    )
    assert (cache.entries, cache.warm) == ({}, False)


GOOD_FACTS = {"created": "2024-01-02T03:04:05+00:00", "layers": []}


@pytest.mark.parametrize(
    "content",
    [
        [],
        "cache",
        {},
        # a version this tool does not know: newer, or not a number
        {"version": 3, "entries": {}},
        {"version": "2", "entries": {}},
        {"version": "1", "entries": {}},
        {"version": 1.5, "entries": {}},
        {"version": None, "entries": {}},
        {"version": 2},
        {"version": 2, "entries": []},
        {"version": 2, "entries": {DIGEST: {"used": "now", "platforms": {}}}},
        {"version": 2, "entries": {DIGEST: {}}},
        {"version": 2, "entries": {DIGEST: {"platforms": []}}},
        {"version": 2, "entries": {DIGEST: {"platforms": {"linux/amd64": {}}}}},
        {
            "version": 2,
            "entries": {
                DIGEST: {"platforms": {"linux/amd64": {**GOOD_FACTS, "created": 5}}}
            },
        },
        {
            "version": 2,
            "entries": {
                DIGEST: {
                    "platforms": {
                        "linux/amd64": {**GOOD_FACTS, "created": "2024-01-02T03:04:05"}
                    }
                }
            },
        },
        {
            "version": 2,
            "entries": {
                DIGEST: {"platforms": {"linux/amd64": {**GOOD_FACTS, "created": "x"}}}
            },
        },
        {
            "version": 2,
            "entries": {
                DIGEST: {"platforms": {"linux/amd64": {**GOOD_FACTS, "layers": "a"}}}
            },
        },
        {
            "version": 2,
            "entries": {
                DIGEST: {"platforms": {"linux/amd64": {**GOOD_FACTS, "digest": 5}}}
            },
        },
        {
            "version": 2,
            "entries": {
                DIGEST: {"platforms": {"linux/amd64": {**GOOD_FACTS, "inputs": {}}}}
            },
        },
    ],
)
def test_digest_cache_unexpected_content(tmp_path, capsys, content):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(content))
    cache = db.DigestCache(str(path))
    assert capsys.readouterr().err == (
        f"docker_build: warning: ignoring the cache {path}: unexpected content\n"
    )
    assert (cache.entries, cache.warm, cache.changed) == ({}, False, True)


def test_digest_cache_not_utf8(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"version": 2, "entries": {"\xff": 1}}')
    db.DigestCache(str(path))
    assert capsys.readouterr().err == (
        f"docker_build: warning: ignoring the cache {path}: unexpected content\n"
    )


def test_digest_cache_good_content_is_kept(tmp_path, capsys):
    path = tmp_path / "c.json"
    entries = {
        DIGEST: {"platforms": {"linux/amd64": GOOD_FACTS, "linux/arm64": None}},
    }
    path.write_text(json.dumps({"version": 2, "entries": entries}))
    cache = db.DigestCache(str(path))
    assert (cache.entries, cache.warm, cache.changed) == (entries, True, False)
    assert cache.get(DIGEST, BOTH) == {
        "linux/amd64": db.ImageInfo(CREATED_Z, ()),
        "linux/arm64": None,
    }
    assert capsys.readouterr().err == ""


def test_digest_cache_save_failure_is_a_warning(tmp_path, capsys, clock):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "c.json"
    cache = db.DigestCache(str(path))
    assert capsys.readouterr().err == (
        f"docker_build: warning: ignoring the cache {path}: "
        f"[Errno 20] Not a directory: '{path}'\n"
    )
    cache.put(DIGEST, FOUND)
    assert cache.save() == (
        f"can't write the cache {path}: [Errno 17] File exists: '{tmp_path / 'file'}'"
    )
    assert capsys.readouterr().err == ""  # the run warns, once


def test_cached_info():
    assert db.cached_info(FOUND_JSON["linux/amd64"]) == INFO
    with pytest.raises(ValueError) as info:
        db.cached_info({"created": "2024-01-02T03:04:05", "layers": []})
    assert str(info.value) == "bad entry"
    with pytest.raises(ValueError) as info:
        db.cached_info({"created": "2024-01-02T03:04:05Z", "layers": ("a",)})
    assert str(info.value) == "bad entry"


def test_cache_path(monkeypatch):
    monkeypatch.setenv("HOME", "/home/u")
    assert db.cache_path({"XDG_CACHE_HOME": "/x/cache"}) == (
        "/x/cache/docker_build/manifests.json"
    )
    assert db.cache_path({}) == "/home/u/.cache/docker_build/manifests.json"
    assert db.cache_path({"XDG_CACHE_HOME": ""}) == (
        "/home/u/.cache/docker_build/manifests.json"
    )


def test_warn(capsys):
    db.warn("careful")
    assert capsys.readouterr() == ("", "docker_build: warning: careful\n")


# ----------------------------------------------------------------------------
# Error texts: request_error_text, exception_chain
# ----------------------------------------------------------------------------


def raised(error, cause=None):
    """The error as a raise statement leaves it (with its __cause__)."""
    try:
        raise error from cause
    except BaseException as caught:
        return caught


def refused_chain():
    """What requests raises for a refused connection (urllib3 2)."""
    refused_error = raised(ConnectionRefusedError(111, "Connection refused"))
    new_connection = raised(
        urllib3.exceptions.NewConnectionError(
            None, "Failed to establish a new connection: [Errno 111] Connection refused"
        ),
        refused_error,
    )
    retries = raised(
        urllib3.exceptions.MaxRetryError(None, "/v2/", new_connection), None
    )
    return raised(requests.exceptions.ConnectionError(retries)), [
        retries,
        new_connection,
        refused_error,
    ]


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (
            requests.exceptions.ConnectionError(OLD_URLLIB3),
            "Failed to establish a new connection: [Errno 111] Connection refused",
        ),
        # no cause in the chain and no urllib3 wrapping: the whole text
        (
            requests.exceptions.HTTPError(
                "404 Client Error: Not Found for url: https://reg.example/v2/"
            ),
            "404 Client Error: Not Found for url: https://reg.example/v2/",
        ),
        # the reference regex needs a closing "')": a "\")" cause is kept whole
        (requests.exceptions.ConnectionError(NEW_URLLIB3), NEW_URLLIB3),
        (OSError("no strerror here"), "no strerror here"),
    ],
    ids=["old_urllib3", "plain_message", "double_quoted_cause", "no_strerror"],
)
def test_request_error_text_of_the_message(error, text):
    assert db.request_error_text(error) == text


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


def test_exception_chain_outermost_first():
    outer, (retries, new_connection, refused_error) = refused_chain()
    assert db.exception_chain(outer) == [outer, retries, new_connection, refused_error]


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


# ----------------------------------------------------------------------------
# The run's registries: --jobs, --timeout, the cache
# ----------------------------------------------------------------------------

APP_AND_BASE = "app\tapp\t$DOCKER_REPOSITORY/base\nbase\tbase\tNONE\n"


@pytest.mark.parametrize(
    ("argv", "jobs", "cached", "timeout"),
    [
        ([], 8, True, 30),
        (["-j", "3"], 3, True, 30),
        (["--jobs", "2", "--no-cache"], 2, False, 30),
        (["--timeout", "2.5"], 8, True, 2.5),
        (["--timeout=0.01", "-j1"], 1, True, 0.01),
    ],
)
def test_main_jobs_and_cache(
    workdir, monkeypatch, tmp_path, argv, jobs, cached, timeout
):
    """--jobs sizes the look-ups and git questions; the caches (manifest
    digests and file hashes) live under XDG_CACHE_HOME unless --no-cache;
    --timeout reaches the registries; the contexts are closed once the
    plan is made, both are closed at the end, and then the caches are
    saved."""
    made = []

    class Registries(db.Registries):
        def __init__(
            self, credentials, jobs=1, cache=None, timeout=30, insecure=(), deadline=60
        ):
            super().__init__(credentials, jobs, cache, timeout, insecure, deadline)
            made.append(("registries", jobs, cache.path, self.timeout))

        def close(self, wait=True):
            made.append(("registries closed",))
            super().close(wait)

    class ContextChanges(db.ContextChanges):
        def __init__(self, environ, jobs=1, hashes=None):
            super().__init__(environ, jobs, hashes)
            made.append(("contexts", jobs, hashes.path))

        def close(self, wait=True):
            made.append(("contexts closed",))
            super().close(wait)

    class DigestCache(db.DigestCache):
        def save(self):
            made.append(("cache saved", self.path))
            super().save()

    class FileHashes(db.FileHashes):
        def save(self):
            made.append(("hashes saved", self.path))
            super().save()

    monkeypatch.setattr(db, "Registries", Registries)
    monkeypatch.setattr(db, "FileHashes", FileHashes)
    monkeypatch.setattr(db, "ContextChanges", ContextChanges)
    monkeypatch.setattr(db, "DigestCache", DigestCache)
    workdir(APP_AND_BASE, "app", "base")
    assert db.main(["-n", "-a", *argv]) == 0
    path = str(tmp_path / "cache" / "docker_build" / "manifests.json")
    files = str(tmp_path / "cache" / "docker_build" / "files.json")
    assert made == [
        ("registries", jobs, path if cached else None, timeout),
        ("contexts", jobs, files if cached else None),
        ("contexts closed",),  # after the builds, with the registries
        ("registries closed",),
        ("cache saved", path if cached else None),
        ("hashes saved", files if cached else None),
    ]
    # nothing looked up, and files this young are not kept: nothing written
    assert not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------
# Error texts of real exceptions: requests against sockets that misbehave
# ----------------------------------------------------------------------------


def serve_once(answer: Callable[[socket.socket], None]) -> str:
    """A server for one connection, which `answer` handles after the
    request has been read; returns its URL."""
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        connection, _ = server.accept()
        server.close()
        connection.recv(65536)
        answer(connection)

    threading.Thread(target=run, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/v2/"


def real_error(url: str, **kwargs) -> requests.exceptions.RequestException:
    with pytest.raises(requests.exceptions.RequestException) as info:
        requests.get(url, timeout=kwargs.pop("timeout", 5), **kwargs)
    return info.value


def reset(connection: socket.socket) -> None:
    # SO_LINGER on, 0 s: close sends RST
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def half_answer(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 934\r\n\r\n" + b"x" * 467)
    connection.close()


def bad_gzip(connection: socket.socket) -> None:
    connection.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nnot g"
    )
    connection.close()


def stall(connection: socket.socket) -> None:
    time.sleep(3)
    connection.close()


def plain_http(connection: socket.socket) -> None:
    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    connection.close()


def test_real_error_connection_refused():
    port = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{port.getsockname()[1]}/v2/"
    port.close()
    assert db.request_error_text(real_error(url)) == "Connection refused"


def test_real_error_connection_reset():
    error = real_error(serve_once(reset))
    assert db.request_error_text(error) == "Connection reset by peer"


def test_real_error_closed_without_an_answer():
    error = real_error(serve_once(lambda connection: connection.close()))
    assert db.request_error_text(error) == "connection closed without an answer"


def test_real_error_broken_mid_answer():
    """requests says `('Connection broken: IncompleteRead(467 bytes read,
    467 more expected)', IncompleteRead(...))`: the tool says it in words."""
    error = real_error(serve_once(half_answer))
    assert isinstance(error, requests.exceptions.ChunkedEncodingError)
    assert db.request_error_text(error) == (
        "connection closed mid-answer: 467 bytes read, 467 more expected"
    )


def test_real_error_undecodable_body():
    error = real_error(serve_once(bad_gzip))
    assert db.request_error_text(error) == (
        "Received response with content-encoding: gzip, but failed to decode it."
    )


def test_real_error_read_timeout():
    error = real_error(serve_once(stall), timeout=0.3)
    assert isinstance(error, requests.exceptions.ReadTimeout)
    assert db.request_error_text(error) == "timed out"


def test_real_error_connect_timeout():
    """A full accept queue drops the SYN: the connection times out."""
    server = socket.create_server(("127.0.0.1", 0), backlog=0)
    address = server.getsockname()
    fillers = []
    try:
        for _ in range(3):  # fill the queue (its length is backlog + 1)
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(address)
            fillers.append(filler)
        time.sleep(0.1)
        error = real_error(f"http://127.0.0.1:{address[1]}/v2/", timeout=0.3)
    finally:
        for filler in fillers:
            filler.close()
        server.close()
    assert isinstance(error, requests.exceptions.ConnectTimeout)
    assert db.request_error_text(error) == "timed out"


def test_real_error_name_not_known():
    error = real_error("https://nowhere.invalid/v2/")
    gaierror = next(
        e for e in db.exception_chain(error) if isinstance(e, socket.gaierror)
    )
    assert db.request_error_text(error) == gaierror.strerror
    assert gaierror.strerror in (
        "Name or service not known",
        "Temporary failure in name resolution",
    )


def test_real_error_tls_with_a_plain_http_server():
    url = serve_once(plain_http).replace("http://", "https://")
    error = real_error(url)
    assert isinstance(error, requests.exceptions.SSLError)
    assert db.request_error_text(error) in (
        "TLS error: wrong version number",
        "TLS error: record layer failure",
        "TLS error: packet length too long",
    )


def test_real_error_untrusted_certificate(tls):
    """The tests' TLS registry, with only the public CAs trusted."""
    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        connection, _ = server.accept()
        server.close()
        with contextlib.suppress(OSError):
            server_context.wrap_socket(connection, server_side=True).close()

    threading.Thread(target=run, daemon=True).start()
    url = f"https://127.0.0.1:{server.getsockname()[1]}/v2/"
    error = real_error(url, verify=requests.certs.where())
    assert db.request_error_text(error) == (
        "certificate verify failed: unable to get local issuer certificate"
    )


def test_real_errors_never_show_python():
    """No text of the tool shows a Python representation."""
    for error in (
        real_error(serve_once(half_answer)),
        real_error(serve_once(lambda connection: connection.close())),
    ):
        text = db.request_error_text(error)
        assert "(" not in text and "Error" not in text


@pytest.mark.parametrize("logins", [{"localhost:5000": ("u", "p")}, None])
@pytest.mark.parametrize("scheme", ['Basic realm="r"', 'Bearer realm="https://t/x"'])
def test_plain_http_registry_asking_for_a_login(http, logins, scheme):
    """A registry without TLS that asks for a login: the tool's own
    message, naming the registry (not dxf's `Auth requires HTTPS`)."""
    host = "localhost:5000"
    http.routes["get", f"https://{host}/v2/"] = [refused(host)]
    http.routes["get", f"http://{host}/v2/"] = [
        Answer(401, {"WWW-Authenticate": scheme})
    ]
    http.routes["get", f"http://{host}/v2/img/manifests/latest"] = [
        Answer(401, {"WWW-Authenticate": scheme})
    ]
    with pytest.raises(db.Fatal) as info:
        make_host(host, logins).fetch_image(
            f"{host}/img", ("linux/amd64",), db.DigestCache(None)
        )
    assert info.value.message == db.plain_http_login(host)


@pytest.mark.parametrize(
    ("status", "logins", "note"),
    [
        (
            403,
            None,
            f" ({HOST} answered 403 and no credentials are given for it:"
            " see DOCKER_LOGIN)",
        ),
        (
            401,
            None,
            f" ({HOST} answered 401 and no credentials are given for it:"
            " see DOCKER_LOGIN)",
        ),
        (404, None, ""),  # not there: nothing points at credentials
        (403, {HOST: ("u", "p")}, ""),  # credentials given: refused anyway
    ],
)
def test_refusal_of_an_anonymous_look_up(http, status, logins, note):
    """A look-up the registry refused (401/403) without credentials for it
    is missing, and `refusal` says why it may be."""
    http.routes["get", f"https://{HOST}/v2/"] = [Answer(200)]
    http.routes["get", f"https://{HOST}/v2/o/base/manifests/1"] = [Answer(status)]
    registries = db.Registries(credentials(logins))
    reference = f"{HOST}/o/base:1"
    assert registries.lookup(reference, AMD) is None
    assert registries.refusal(reference) == note
    registries.close()
