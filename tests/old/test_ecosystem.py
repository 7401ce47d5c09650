"""Unit tests of issue 6, "At home in the Docker ecosystem": Docker's
credentials (config.json, credential helpers), plain HTTP for loopback and
insecure registries, identity tokens, the progress line, the JSON plan and
the new command-line options.

No network and no registry: sessions are fakes, credential helpers are the
tests' own helper script or small shell scripts in tmp_path.
"""

import argparse
import base64
import concurrent.futures
import io
import json
import os
import ssl
import threading
import time

import dxf.exceptions
import jsonschema
import pytest
import requests
import requests.exceptions
import urllib3.exceptions
from conftest import ROOT, load_tool

db = load_tool()

HELPER = ROOT / "tests" / "docker-credential-test"
HUB_KEY = "https://index.docker.io/v1/"


def warning(text: str) -> str:
    return f"docker_build: warning: {text}\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ----------------------------------------------------------------------------
# config_key_host
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # Docker Hub, however it is spelled
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("index.docker.io", "index.docker.io"),
        ("docker.io", "index.docker.io"),
        ("https://docker.io", "index.docker.io"),
        ("registry-1.docker.io", "index.docker.io"),
        ("https://registry-1.docker.io/v2/", "index.docker.io"),
        ("HTTPS://Index.Docker.IO/v1/", "index.docker.io"),
        ("DOCKER.IO", "index.docker.io"),
        # schemes and paths
        ("reg.example", "reg.example"),
        ("https://reg.example", "reg.example"),
        ("http://reg.example/", "reg.example"),
        ("https://reg.example/v2/", "reg.example"),
        ("reg.example/some/path", "reg.example"),
        # ports stay
        ("reg.example:5000", "reg.example:5000"),
        ("https://reg.example:5000/v2/", "reg.example:5000"),
        ("localhost:5000", "localhost:5000"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("[::1]:5000", "[::1]:5000"),
        # case
        ("Reg.Example", "reg.example"),
        ("GHCR.IO", "ghcr.io"),
        ("https://GHCR.io/token", "ghcr.io"),
    ],
)
def test_config_key_host(key, expected):
    assert db.config_key_host(key) == expected


# ----------------------------------------------------------------------------
# auth_entry
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"auth": b64("user:pass")}, ("user", "pass")),
        ({"auth": b64("user:pa:ss")}, ("user", "pa:ss")),
        ({"auth": b64("user:")}, ("user", "")),
        ({"identitytoken": "tok-1"}, ("<token>", "tok-1")),
        # the identity token wins over a login
        ({"auth": b64("user:pass"), "identitytoken": "tok-2"}, ("<token>", "tok-2")),
        # an empty token is no token
        ({"auth": b64("user:pass"), "identitytoken": ""}, ("user", "pass")),
        ({"auth": b64("user:pass"), "identitytoken": None}, ("user", "pass")),
        ({}, None),
        ({"auth": ""}, None),
        ({"auth": 42}, None),
        ({"email": "someone@example.org"}, None),
        ({"identitytoken": 7}, None),
    ],
)
def test_auth_entry(entry, expected, capsys):
    assert db.auth_entry(entry, "reg.example") == expected
    assert capsys.readouterr() == ("", "")


def test_auth_entry_missing_colon():
    assert db.auth_entry({"auth": b64("userpass")}, "reg.example") is None


@pytest.mark.parametrize(
    "encoded",
    [
        "abc",  # incorrect padding
        base64.b64encode(b"\xff\xfe:secret").decode(),  # not UTF-8
    ],
    ids=["padding", "not-utf8"],
)
def test_auth_entry_malformed(encoded, capsys):
    assert db.auth_entry({"auth": encoded}, "reg.example:5000") is None
    assert capsys.readouterr() == (
        "",
        warning(
            "the Docker config's login for reg.example:5000 is unreadable; ignored"
        ),
    )


# ----------------------------------------------------------------------------
# Credentials.get
# ----------------------------------------------------------------------------


class FakeHelpers:
    """Stands in for credential_helper: answers from a table, records the
    calls, and takes its time so that concurrent callers overlap."""

    def __init__(self, answers, delay=0.0):
        self.answers = answers
        self.delay = delay
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, helper, server, environ):
        with self.lock:
            self.calls.append((helper, server))
        time.sleep(self.delay)
        return self.answers.get((helper, server))


@pytest.fixture
def helpers(monkeypatch):
    fake = FakeHelpers({})
    monkeypatch.setattr(db, "credential_helper", fake)
    return fake


def test_credentials_docker_login_first(helpers):
    helpers.answers[("store", "reg.example")] = ("store-user", "store-pw")
    config = {
        "credsStore": "store",
        "credHelpers": {"reg.example": "store"},
        "auths": {"reg.example": {"auth": b64("auth-user:auth-pw")}},
    }
    credentials = db.Credentials({"reg.example": ("env-user", "env-pw")}, config, {})
    assert credentials.get("reg.example") == ("env-user", "env-pw")
    assert helpers.calls == []


def test_credentials_cred_helpers_over_creds_store(helpers):
    helpers.answers[("special", "reg.example")] = ("special-user", "special-pw")
    helpers.answers[("store", "reg.example")] = ("store-user", "store-pw")
    helpers.answers[("store", "other.example")] = ("other-user", "other-pw")
    config = {
        "credsStore": "store",
        "credHelpers": {"reg.example": "special"},
        "auths": {"reg.example": {"auth": b64("auth-user:auth-pw")}},
    }
    credentials = db.Credentials({}, config, {})
    assert credentials.get("reg.example") == ("special-user", "special-pw")
    assert credentials.get("other.example") == ("other-user", "other-pw")
    assert helpers.calls == [
        ("special", "reg.example"),
        ("store", "other.example"),
    ]


def test_credentials_creds_store_over_auths(helpers):
    helpers.answers[("store", "reg.example")] = ("store-user", "store-pw")
    config = {
        "credsStore": "store",
        "auths": {"reg.example": {"auth": b64("auth-user:auth-pw")}},
    }
    credentials = db.Credentials({}, config, {})
    assert credentials.get("reg.example") == ("store-user", "store-pw")
    assert helpers.calls == [("store", "reg.example")]


def test_credentials_auths(helpers):
    config = {
        "credHelpers": {"other.example": "special"},
        "auths": {
            "https://reg.example/v2/": {"auth": b64("auth-user:auth-pw")},
            "tokens.example": {"identitytoken": "id-token"},
            "reg.example:5000": {"auth": b64("port-user:port-pw")},
        },
    }
    credentials = db.Credentials({}, config, {})
    assert credentials.get("reg.example") == ("auth-user", "auth-pw")
    assert credentials.get("tokens.example") == ("<token>", "id-token")
    assert credentials.get("reg.example:5000") == ("port-user", "port-pw")
    assert credentials.get("reg.example:6000") == (None, None)
    assert credentials.get("unknown.example") == (None, None)
    assert helpers.calls == []


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"auths": []},
        {"auths": {"reg.example": "not an object"}},
        {"credHelpers": ["reg.example"], "auths": {}},
        {"credsStore": ""},
        {"credsStore": 3},
    ],
)
def test_credentials_nothing_usable(config, helpers):
    credentials = db.Credentials({}, config, {})
    assert credentials.get("reg.example") == (None, None)
    assert helpers.calls == []


@pytest.mark.parametrize("key", [HUB_KEY, "docker.io", "index.docker.io"])
def test_credentials_docker_hub_auths_key(key, helpers):
    config = {"auths": {key: {"auth": b64("hub-user:hub-pw")}}}
    credentials = db.Credentials({}, config, {})
    assert credentials.get("registry-1.docker.io") == ("hub-user", "hub-pw")


def test_credentials_docker_hub_helper_server(helpers):
    helpers.answers[("store", HUB_KEY)] = ("hub-user", "hub-pw")
    credentials = db.Credentials({}, {"credsStore": "store"}, {})
    assert credentials.get("registry-1.docker.io") == ("hub-user", "hub-pw")
    assert helpers.calls == [("store", HUB_KEY)]


def test_credentials_helper_asked_lazily(helpers):
    db.Credentials({}, {"credsStore": "store"}, {})
    assert helpers.calls == []


def test_credentials_cached_per_registry(helpers):
    helpers.answers[("store", "a.example")] = ("a-user", "a-pw")
    credentials = db.Credentials({}, {"credsStore": "store"}, {})
    for _ in range(3):
        assert credentials.get("a.example") == ("a-user", "a-pw")
        assert credentials.get("b.example") == (None, None)  # cached too
    assert helpers.calls == [("store", "a.example"), ("store", "b.example")]


def ask_together(credentials, registries):
    """Ask for every registry from its own thread, all at once."""
    barrier = threading.Barrier(len(registries))

    def ask(registry):
        barrier.wait()
        return credentials.get(registry)

    with concurrent.futures.ThreadPoolExecutor(len(registries)) as pool:
        return list(pool.map(ask, registries))


def test_credentials_once_per_registry_from_threads(monkeypatch):
    fake = FakeHelpers(
        {("store", "a.example"): ("a-user", "a-pw"), ("store", "b.example"): None},
        delay=0.05,
    )
    monkeypatch.setattr(db, "credential_helper", fake)
    credentials = db.Credentials({}, {"credsStore": "store"}, {})
    answers = ask_together(credentials, ["a.example", "b.example"] * 8)
    assert answers == [("a-user", "a-pw"), (None, None)] * 8
    assert sorted(fake.calls) == [("store", "a.example"), ("store", "b.example")]


# ----------------------------------------------------------------------------
# credential_helper, with the tests' helper script
# ----------------------------------------------------------------------------


@pytest.fixture
def helper_env(tmp_path):
    """An environment whose PATH has docker-credential-test, with the
    helper's credentials file and log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker-credential-test").symlink_to(HELPER)
    known = tmp_path / "credentials.json"
    known.write_text(
        json.dumps(
            {
                "reg.example": ["helper-user", "helper-pw"],
                HUB_KEY: ["hub-user", "hub-pw"],
                "tokens.example": ["<token>", "identity"],
            }
        )
    )
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "TEST_CREDENTIALS": str(known),
        "TEST_CREDENTIALS_LOG": str(tmp_path / "helper.log"),
    }


def helper_log(env):
    path = env["TEST_CREDENTIALS_LOG"]
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as log:
        return log.read().splitlines()


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("reg.example", ("helper-user", "helper-pw")),
        (HUB_KEY, ("hub-user", "hub-pw")),
        ("tokens.example", ("<token>", "identity")),
    ],
)
def test_credential_helper_answers(server, expected, helper_env, capsys):
    assert db.credential_helper("test", server, helper_env) == expected
    assert helper_log(helper_env) == [server]
    assert capsys.readouterr() == ("", "")


def test_credential_helper_not_found_is_silent(helper_env, capsys):
    assert db.credential_helper("test", "unknown.example", helper_env) is None
    assert helper_log(helper_env) == ["unknown.example"]
    assert capsys.readouterr() == ("", "")


def test_credential_helper_exit(helper_env, capsys):
    env = {**helper_env, "TEST_HELPER_BROKEN": "exit"}
    assert db.credential_helper("test", "reg.example", env) is None
    assert capsys.readouterr() == (
        "",
        warning(
            "docker-credential-test failed for reg.example (exit 3); "
            "using anonymous access"
        ),
    )


def test_credential_helper_garbage(helper_env, capsys):
    env = {**helper_env, "TEST_HELPER_BROKEN": "garbage"}
    assert db.credential_helper("test", "reg.example", env) is None
    assert capsys.readouterr() == (
        "",
        warning(
            "docker-credential-test gave no credentials for reg.example; "
            "using anonymous access"
        ),
    )


def test_credential_helper_missing(helper_env, capsys):
    assert db.credential_helper("absent", "reg.example", helper_env) is None
    assert capsys.readouterr() == (
        "",
        warning(
            "docker-credential-absent failed for reg.example: [Errno 2] "
            "No such file or directory: 'docker-credential-absent'; "
            "using anonymous access"
        ),
    )


def test_credential_helper_hangs(tmp_path, helper_env, monkeypatch, capsys):
    script = tmp_path / "bin" / "docker-credential-slow"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    monkeypatch.setattr(db, "HELPER_TIMEOUT", 0.3)
    started = time.monotonic()
    assert db.credential_helper("slow", "reg.example", helper_env) is None
    assert time.monotonic() - started < 10
    assert capsys.readouterr() == (
        "",
        warning(
            "docker-credential-slow failed for reg.example: "
            "Command '['docker-credential-slow', 'get']' timed out after 0.3 "
            "seconds; using anonymous access"
        ),
    )


def test_credential_helper_only_its_environment(tmp_path, helper_env, monkeypatch):
    """The helper gets the environment it is given (the children's, without
    DOCKER_LOGIN*), not the process's own."""
    script = tmp_path / "bin" / "docker-credential-env"
    script.write_text(
        "#!/bin/sh\ncat >/dev/null\n"
        'printf \'{"Username": "%s", "Secret": "%s"}\' '
        '"${DOCKER_LOGIN_X:-unset}" "${MARKER:-unset}"\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("DOCKER_LOGIN_X", "leaked")
    env = {**helper_env, "MARKER": "given"}
    assert db.credential_helper("env", "reg.example", env) == ("unset", "given")


def test_credentials_with_real_helper_once_per_registry(helper_env, capsys):
    config = {"credsStore": "test"}
    credentials = db.Credentials({}, config, helper_env)
    registries = ["reg.example", "registry-1.docker.io", "unknown.example"] * 4
    answers = ask_together(credentials, registries)
    expected = [("helper-user", "helper-pw"), ("hub-user", "hub-pw"), (None, None)]
    assert answers == expected * 4
    assert sorted(helper_log(helper_env)) == sorted(
        ["reg.example", HUB_KEY, "unknown.example"]
    )
    assert capsys.readouterr() == ("", "")


def test_credentials_broken_helper_warns_once(helper_env, capsys):
    env = {**helper_env, "TEST_HELPER_BROKEN": "exit"}
    credentials = db.Credentials({}, {"credsStore": "test"}, env)
    for _ in range(3):
        assert credentials.get("reg.example") == (None, None)
    assert helper_log(env) == ["reg.example"]
    assert capsys.readouterr() == (
        "",
        warning(
            "docker-credential-test failed for reg.example (exit 3); "
            "using anonymous access"
        ),
    )


# ----------------------------------------------------------------------------
# read_docker_config
# ----------------------------------------------------------------------------

CONFIG = {"auths": {"reg.example": {"auth": b64("u:p")}}, "credsStore": "x"}


def test_read_docker_config_from_docker_config(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text('{"credsStore": "home"}')
    monkeypatch.setenv("HOME", str(home))
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(CONFIG))
    assert db.read_docker_config({"DOCKER_CONFIG": str(directory)}) == CONFIG
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("environ", [{}, {"DOCKER_CONFIG": ""}])
def test_read_docker_config_home(environ, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(json.dumps(CONFIG))
    monkeypatch.setenv("HOME", str(home))
    assert db.read_docker_config(environ) == CONFIG
    assert capsys.readouterr() == ("", "")


def test_read_docker_config_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    assert db.read_docker_config({}) == {}
    assert db.read_docker_config({"DOCKER_CONFIG": str(tmp_path / "none")}) == {}
    assert capsys.readouterr() == ("", "")


def test_read_docker_config_broken_json(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    assert db.read_docker_config({"DOCKER_CONFIG": str(tmp_path)}) == {}
    assert capsys.readouterr() == (
        "",
        warning(
            f"ignoring the Docker config {path}: Expecting property name "
            "enclosed in double quotes: line 1 column 2 (char 1)"
        ),
    )


def test_read_docker_config_unreadable(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.mkdir()
    assert db.read_docker_config({"DOCKER_CONFIG": str(tmp_path)}) == {}
    assert capsys.readouterr() == (
        "",
        warning(
            f"ignoring the Docker config {path}: [Errno 21] Is a directory: '{path}'"
        ),
    )


@pytest.mark.parametrize("text", ["[]", '"text"', "3", "null", '[{"auths": {}}]'])
def test_read_docker_config_not_an_object(text, tmp_path, capsys):
    (tmp_path / "config.json").write_text(text)
    assert db.read_docker_config({"DOCKER_CONFIG": str(tmp_path)}) == {}
    assert capsys.readouterr() == ("", "")


# ----------------------------------------------------------------------------
# plain_http_allowed
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


@pytest.mark.parametrize("host", ["::1", "0:0:0:0:0:0:0:1"])
def test_plain_http_allowed_bare_ipv6_loopback(host):
    assert db.plain_http_allowed(host, set()) is True


# ----------------------------------------------------------------------------
# Registry.probe
# ----------------------------------------------------------------------------


class FakeResponse:
    def __init__(self, url, status_code=200, headers=None, body=None):
        self.url = url
        self.status_code = status_code
        self.headers = headers or {}
        self.body = body

    def json(self):
        return self.body

    def raise_for_status(self):
        if self.status_code >= 400:
            raise requests.exceptions.HTTPError(f"{self.status_code}", response=self)


class FakeSession:
    """Answers plain HTTP; HTTPS raises `https_error` (when set)."""

    def __init__(self, https_error=None, post_answer=None):
        self.https_error = https_error
        self.post_answer = post_answer
        self.gets = []
        self.posts = []

    def get(self, url, **kwargs):
        self.gets.append((url, kwargs))
        if url.startswith("https://") and self.https_error is not None:
            raise self.https_error
        return FakeResponse(url)

    def post(self, url, **kwargs):
        self.posts.append((url, kwargs))
        return self.post_answer


def make_registry(monkeypatch, session, insecure=(), timeout=7.0):
    registry = db.Registry({}, timeout=timeout, insecure=set(insecure))
    monkeypatch.setattr(registry, "session", lambda host: session)
    return registry


def refused(host):
    return requests.exceptions.ConnectionError(
        urllib3.exceptions.MaxRetryError(
            None,
            f"https://{host}/v2/",
            reason=urllib3.exceptions.NewConnectionError(None, "Connection refused"),
        )
    )


def certificate_error(host):
    cert = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    return requests.exceptions.SSLError(
        urllib3.exceptions.MaxRetryError(
            None, f"https://{host}/v2/", reason=urllib3.exceptions.SSLError(cert)
        )
    )


def wrong_version(host):
    """What a TLS handshake with a plain-HTTP server gives."""
    err = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    return requests.exceptions.SSLError(
        urllib3.exceptions.MaxRetryError(
            None, f"https://{host}/v2/", reason=urllib3.exceptions.SSLError(err)
        )
    )


def test_probe_https(monkeypatch):
    session = FakeSession()
    registry = make_registry(monkeypatch, session)
    response = registry.probe("localhost:5000")
    assert response.url == "https://localhost:5000/v2/"
    assert session.gets == [("https://localhost:5000/v2/", {"timeout": 7.0})]
    assert registry.plain_http == {"localhost:5000": False}


@pytest.mark.parametrize(
    "host", ["localhost:5000", "localhost", "127.0.0.1:5000", "[::1]:5000"]
)
@pytest.mark.parametrize("error", [refused, wrong_version])
def test_probe_loopback_falls_back_to_http(host, error, monkeypatch):
    session = FakeSession(error(host))
    registry = make_registry(monkeypatch, session)
    response = registry.probe(host)
    assert response.url == f"http://{host}/v2/"
    assert session.gets == [
        (f"https://{host}/v2/", {"timeout": 7.0}),
        (f"http://{host}/v2/", {"timeout": 7.0}),
    ]
    assert registry.plain_http == {host: True}


@pytest.mark.parametrize("host", ["reg.example", "reg.example:5000", "10.0.0.1:5000"])
def test_probe_no_fallback_elsewhere(host, monkeypatch):
    error = refused(host)
    session = FakeSession(error)
    registry = make_registry(monkeypatch, session)
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        registry.probe(host)
    assert info.value is error
    assert session.gets == [(f"https://{host}/v2/", {"timeout": 7.0})]
    assert registry.plain_http == {}


@pytest.mark.parametrize("insecure", [(), ("localhost",), ("localhost:5000",)])
def test_probe_certificate_error_no_fallback(insecure, monkeypatch):
    error = certificate_error("localhost:5000")
    session = FakeSession(error)
    registry = make_registry(monkeypatch, session, insecure)
    with pytest.raises(requests.exceptions.SSLError) as info:
        registry.probe("localhost:5000")
    assert info.value is error
    assert session.gets == [("https://localhost:5000/v2/", {"timeout": 7.0})]
    assert registry.plain_http == {}


@pytest.mark.parametrize("insecure", [("reg.internal",), ("reg.internal:5000",)])
def test_probe_insecure_registry_falls_back(insecure, monkeypatch):
    session = FakeSession(refused("reg.internal:5000"))
    registry = make_registry(monkeypatch, session, insecure)
    response = registry.probe("reg.internal:5000")
    assert response.url == "http://reg.internal:5000/v2/"
    assert session.gets == [
        ("https://reg.internal:5000/v2/", {"timeout": 7.0}),
        ("http://reg.internal:5000/v2/", {"timeout": 7.0}),
    ]
    assert registry.plain_http == {"reg.internal:5000": True}


def test_probe_insecure_registry_other_port(monkeypatch):
    error = refused("reg.internal:5000")
    session = FakeSession(error)
    registry = make_registry(monkeypatch, session, ("reg.internal:6000",))
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        registry.probe("reg.internal:5000")
    assert info.value is error
    assert registry.plain_http == {}


# ----------------------------------------------------------------------------
# Registry.identity_token_exchange
# ----------------------------------------------------------------------------

BEARER = (
    'Bearer realm="https://auth.example/token",service="reg.example",'
    'scope="repository:team/app:pull"'
)


def exchange(monkeypatch, header, answer):
    session = FakeSession(post_answer=answer)
    registry = make_registry(monkeypatch, session, timeout=9.0)
    ref = db.parse_reference("reg.example/team/app:1")
    challenge = FakeResponse(
        "https://reg.example/v2/", 401, {"WWW-Authenticate": header}
    )
    return session, lambda: registry.identity_token_exchange(
        ref, challenge, "identity-123"
    )


def test_identity_token_exchange(monkeypatch):
    answer = FakeResponse("", 200, body={"access_token": "access-456"})
    session, call = exchange(monkeypatch, BEARER, answer)
    assert call() == "access-456"
    assert session.posts == [
        (
            "https://auth.example/token",
            {
                "data": {
                    "grant_type": "refresh_token",
                    "refresh_token": "identity-123",
                    "service": "reg.example",
                    "scope": "repository:team/app:pull",
                    "client_id": "docker_build",
                },
                "timeout": 9.0,
            },
        )
    ]
    assert session.gets == []


def test_identity_token_exchange_without_service(monkeypatch):
    answer = FakeResponse("", 200, body={"access_token": "access-456"})
    session, call = exchange(
        monkeypatch, 'bearer realm="https://auth.example/t"', answer
    )
    assert call() == "access-456"
    assert session.posts == [
        (
            "https://auth.example/t",
            {
                "data": {
                    "grant_type": "refresh_token",
                    "refresh_token": "identity-123",
                    "service": "",
                    "scope": "repository:team/app:pull",
                    "client_id": "docker_build",
                },
                "timeout": 9.0,
            },
        )
    ]


def test_identity_token_exchange_rejected(monkeypatch):
    session, call = exchange(monkeypatch, BEARER, FakeResponse("", 401))
    with pytest.raises(dxf.exceptions.DXFUnauthorizedError):
        call()
    assert len(session.posts) == 1


def test_identity_token_exchange_server_error(monkeypatch):
    _session, call = exchange(monkeypatch, BEARER, FakeResponse("", 500))
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
def test_identity_token_exchange_no_bearer_realm(header, monkeypatch):
    session, call = exchange(monkeypatch, header, FakeResponse("", 200))
    with pytest.raises(dxf.exceptions.DXFUnauthorizedError):
        call()
    assert session.posts == []


# ----------------------------------------------------------------------------
# show_progress
# ----------------------------------------------------------------------------


def done_future(value=None):
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


def test_show_progress_completed_and_pending():
    stream = io.StringIO()
    pending = [concurrent.futures.Future() for _ in range(2)]
    started = [done_future(), *pending, done_future()]
    db.show_progress(started, stream)
    assert stream.getvalue() == (
        "\rdocker_build: checking 1/4\x1b[K\rdocker_build: checking 2/4\x1b[K"
    )
    pending[1].set_exception(RuntimeError("failed look-ups count too"))
    assert stream.getvalue() == (
        "\rdocker_build: checking 1/4\x1b[K"
        "\rdocker_build: checking 2/4\x1b[K"
        "\rdocker_build: checking 3/4\x1b[K"
    )
    pending[0].set_result(None)
    assert stream.getvalue() == (
        "\rdocker_build: checking 1/4\x1b[K"
        "\rdocker_build: checking 2/4\x1b[K"
        "\rdocker_build: checking 3/4\x1b[K"
        "\r\x1b[K"
    )


def test_show_progress_all_pending_from_threads():
    stream = io.StringIO()
    started = [concurrent.futures.Future() for _ in range(3)]
    db.show_progress(started, stream)
    assert stream.getvalue() == ""
    threads = [threading.Thread(target=f.set_result, args=(None,)) for f in started]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stream.getvalue() == (
        "\rdocker_build: checking 1/3\x1b[K\rdocker_build: checking 2/3\x1b[K\r\x1b[K"
    )


def test_show_progress_single_and_none():
    stream = io.StringIO()
    db.show_progress([done_future()], stream)
    assert stream.getvalue() == "\r\x1b[K"
    stream = io.StringIO()
    db.show_progress([], stream)
    assert stream.getvalue() == ""


# ----------------------------------------------------------------------------
# plan_document
# ----------------------------------------------------------------------------


def readme_schema():
    text = (ROOT / "README.md").read_text()
    after = text.split("<!-- plan-schema -->", 1)[1]
    body = after.split("```json\n", 1)[1].split("```", 1)[0]
    return json.loads(body)


SCHEMA = readme_schema()


def check_schema(document):
    validator = jsonschema.Draft202012Validator(SCHEMA)
    validator.check_schema(SCHEMA)
    validator.validate(document)


def image(name, base, directory=None, platforms=("linux/amd64",)):
    return db.Image(
        name,
        db.image_add_tag(name),
        directory or name.rpartition("/")[2].partition(":")[0],
        base,
        (),
        platforms,
    )


REPOS = ["reg.example/a", "reg.example/b"]
BASE = image("base", "alpine:3", platforms=("linux/amd64", "linux/arm64"))
APP = image("app", "$DOCKER_REPOSITORY/base:latest")
FULL = image("ghcr.io/o/full:2", "debian:12", directory="full")
QUIET = image("quiet", "alpine:3")


def sample_plan():
    """base (rebuilt, two repositories), app (built on it), a full name
    (rebuilt), quiet (up to date)."""
    base_targets = db.image_targets(BASE, REPOS)
    app_targets = db.image_targets(APP, REPOS)
    return db.Plan(
        (
            db.Decision(BASE, 0, base_targets, db.REASON_MISSING, frozenset()),
            db.Decision(
                APP,
                1,
                app_targets,
                db.REASON_DEPENDENCY,
                frozenset({0}),
                rebuilt_bases=(
                    "reg.example/a/base:latest",
                    "reg.example/b/base:latest",
                ),
            ),
            db.Decision(
                FULL, 2, db.image_targets(FULL, REPOS), db.REASON_FORCED, frozenset()
            ),
            db.Decision(QUIET, 3, db.image_targets(QUIET, REPOS), None, frozenset()),
        )
    )


def entry(
    name,
    full_name,
    repository,
    directory,
    base,
    decision,
    reason,
    result,
    exit_code,
    platforms=("linux/amd64",),
):
    return {
        "name": name,
        "full_name": full_name,
        "repository": repository,
        "directory": directory,
        "base": base,
        "platforms": list(platforms),
        "decision": decision,
        "reason": reason,
        "result": result,
        "exit_code": exit_code,
    }


DEP_A = "Base image will be rebuilt: reg.example/a/base:latest"
DEP_B = "Base image will be rebuilt: reg.example/b/base:latest"
TWO = ("linux/amd64", "linux/arm64")


def expected_images(results):
    """The entries of sample_plan, with (result, exit_code) per full name."""
    rows = [
        ("base", "reg.example/a/base:latest", "reg.example/a", "base", "alpine:3",
         "rebuild", "Image missing in repository", TWO),
        ("base", "reg.example/b/base:latest", "reg.example/b", "base", "alpine:3",
         "rebuild", "Image missing in repository", TWO),
        ("app", "reg.example/a/app:latest", "reg.example/a", "app",
         "reg.example/a/base:latest", "rebuild", DEP_A, ("linux/amd64",)),
        ("app", "reg.example/b/app:latest", "reg.example/b", "app",
         "reg.example/b/base:latest", "rebuild", DEP_B, ("linux/amd64",)),
        ("ghcr.io/o/full:2", "ghcr.io/o/full:2", None, "full", "debian:12",
         "rebuild", "Rebuild triggered by command line", ("linux/amd64",)),
        ("quiet", "reg.example/a/quiet:latest", "reg.example/a", "quiet",
         "alpine:3", "up-to-date", None, ("linux/amd64",)),
        ("quiet", "reg.example/b/quiet:latest", "reg.example/b", "quiet",
         "alpine:3", "up-to-date", None, ("linux/amd64",)),
    ]  # fmt: skip
    return [
        entry(*row[:7], *results.get(row[1], (None, None)), platforms=row[7])
        for row in rows
    ]


def test_plan_document_dry_run():
    document = db.plan_document(sample_plan(), {}, True)
    assert document == {
        "version": 1,
        "dry_run": True,
        "images": expected_images({}),
    }
    check_schema(document)


def test_plan_document_built_failed_not_built():
    results = {
        "reg.example/a/base:latest": ("built", 0),
        "reg.example/b/base:latest": ("failed", 2),
    }
    document = db.plan_document(sample_plan(), results, False)
    assert document == {
        "version": 1,
        "dry_run": False,
        "images": expected_images(
            {
                **results,
                "reg.example/a/app:latest": ("not-built", None),
                "reg.example/b/app:latest": ("not-built", None),
                "ghcr.io/o/full:2": ("not-built", None),
            }
        ),
    }
    check_schema(document)


def test_plan_document_parallel_results():
    results = {
        "reg.example/a/base:latest": ("built", 0),
        "reg.example/b/base:latest": ("failed", 137),
        "reg.example/a/app:latest": ("built", 0),
        "reg.example/b/app:latest": ("skipped", 0),
        "ghcr.io/o/full:2": ("built", 0),
    }
    document = db.plan_document(sample_plan(), results, False)
    assert document == {
        "version": 1,
        "dry_run": False,
        "images": expected_images(results),
    }
    check_schema(document)


def test_plan_document_nothing_to_do():
    plan = db.Plan(
        (db.Decision(QUIET, 0, db.image_targets(QUIET, REPOS[:1]), None, frozenset()),)
    )
    for dry_run in (True, False):
        document = db.plan_document(plan, {}, dry_run)
        assert document == {
            "version": 1,
            "dry_run": dry_run,
            "images": [
                entry(
                    "quiet",
                    "reg.example/a/quiet:latest",
                    "reg.example/a",
                    "quiet",
                    "alpine:3",
                    "up-to-date",
                    None,
                    None,
                    None,
                )
            ],
        }
        check_schema(document)
    empty = db.plan_document(db.Plan(()), {}, False)
    assert empty == {"version": 1, "dry_run": False, "images": []}
    check_schema(empty)


def test_plan_document_is_json_and_schema_rejects_others():
    document = db.plan_document(sample_plan(), {}, True)
    assert json.loads(json.dumps(document)) == document
    broken = json.loads(json.dumps(document))
    broken["images"][0]["result"] = "done"
    with pytest.raises(jsonschema.ValidationError):
        check_schema(broken)


# ----------------------------------------------------------------------------
# rebuild_in_order fills results
# ----------------------------------------------------------------------------


def test_rebuild_in_order_results(monkeypatch, capsys):
    built = []

    def fake_build(target, environ):
        built.append(target.full_name)
        if target.full_name == "reg.example/b/base:latest":
            raise db.Fatal("build failed", 2)

    monkeypatch.setattr(db, "build", fake_build)
    results = {}
    with pytest.raises(db.Fatal) as info:
        db.rebuild_in_order(sample_plan(), False, {}, results)
    assert info.value.code == 2
    assert built == ["reg.example/a/base:latest", "reg.example/b/base:latest"]
    assert results == {
        "reg.example/a/base:latest": ("built", 0),
        "reg.example/b/base:latest": ("failed", 2),
    }
    capsys.readouterr()


def test_rebuild_in_order_dry_run_results(monkeypatch, capsys):
    monkeypatch.setattr(db, "build", lambda target, environ: pytest.fail("built"))
    results = {}
    db.rebuild_in_order(sample_plan(), True, {}, results)
    assert results == {}
    capsys.readouterr()


# ----------------------------------------------------------------------------
# Command line: --version, --json, --output
# ----------------------------------------------------------------------------


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        db.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr() == ("docker_build 0.1.0\n", "")


def test_json_is_output_json():
    parser = db.build_parser()
    short = parser.parse_args(["--json", "-n"])
    long = parser.parse_args(["--output", "json", "-n"])
    equals = parser.parse_args(["--output=json", "-n"])
    assert short == long == equals
    assert short.output == "json"
    assert parser.parse_args([]).output == "text"
    assert parser.parse_args(["--output", "text"]).output == "text"
    # the last one given wins, as for any argparse option
    assert parser.parse_args(["--json", "--output", "text"]).output == "text"
    assert parser.parse_args(["--output", "text", "--json"]).output == "json"


def test_output_xml_is_a_usage_error(capsys):
    reference = argparse.ArgumentParser(prog="docker_build")
    reference.add_argument("--output", choices=("text", "json"))
    with pytest.raises(SystemExit):
        reference.parse_args(["--output", "xml"])
    expected = capsys.readouterr().err.splitlines()[-1]
    with pytest.raises(SystemExit) as info:
        db.main(["--output", "xml"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == expected
    assert expected.startswith("docker_build: error: argument --output: ")
