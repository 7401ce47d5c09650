"""The Environment stage: where docker_build's settings and logins come
from. DOCKER_REPOSITORY, the DOCKER_LOGIN* variables, Docker's config.json
(its auths, identity tokens, credsStore and credHelpers), the credential
helpers, and the environment the children (git, docker, helpers) get,
without any password.

Unit tests run without network or registry (credential helpers are the
tests' helper script, small shell scripts or a fake); the end-to-end tests
run the tool in the worlds of conftest.py.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import threading
import time
from pathlib import Path

import pytest
import trustme
from conftest import (
    BASE_LAYERS,
    PASSWORD,
    REASON_GIT,
    ROOT,
    T_LATER,
    USER,
    World,
    failed,
    fatal_message,
    load_tool,
    rebuilt,
    succeeded,
)
from servers import free_port

db = load_tool()

HELPER = ROOT / "tests" / "docker-credential-test"
HUB = "registry-1.docker.io"
HUB_KEY = "https://index.docker.io/v1/"  # Docker Hub's key in config.json
DIGEST = "sha256:" + "0123456789abcdef" * 4


def warning(text: str) -> str:
    return f"docker_build: warning: {text}\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# ----------------------------------------------------------------------------
# DOCKER_REPOSITORY
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"DOCKER_REPOSITORY": "  Docker.IO/User  GHCR.io/Owner "},
            ["docker.io/user", "ghcr.io/owner"],
        ),
        ({"DOCKER_REPOSITORY": "user"}, ["user"]),
        ({"DOCKER_REPOSITORY": ""}, []),
        ({"DOCKER_REPOSITORY": " \t "}, []),
        ({}, []),
        # a registry's port is no tag
        ({"DOCKER_REPOSITORY": "localhost:5000/o"}, ["localhost:5000/o"]),
        ({"DOCKER_REPOSITORY": "ghcr.io/o/sub"}, ["ghcr.io/o/sub"]),
        ({"DOCKER_REPOSITORY": "localhost:5000"}, ["localhost:5000"]),
        ({"DOCKER_REPOSITORY": "user:1"}, ["user:1"]),
    ],
)
def test_docker_repositories(environ, expected):
    """The repositories, lower case, split at white space; a registry with a
    port is a repository (it makes valid names)."""
    assert db.docker_repositories(environ) == expected


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
        *(
            (
                f"docker.io/ok {value}",
                f"DOCKER_REPOSITORY: {value}: "
                "a repository must not have a tag or digest",
            )
            for value in (
                "ghcr.io/o:latest",
                "localhost:5000/o:2",
                f"ghcr.io/o@{DIGEST}",
            )
        ),
    ],
)
def test_docker_repositories_invalid(value, message):
    """An invalid repository, or one with a tag or digest, ends the run."""
    environ = {"DOCKER_REPOSITORY": value}
    assert fatal_message(db.docker_repositories, environ) == message


# ----------------------------------------------------------------------------
# DOCKER_LOGIN*
# ----------------------------------------------------------------------------


def test_login_table():
    """Every DOCKER_LOGIN* variable gives a registry (Docker Hub by any of
    its names) a user and a password, which may hold spaces."""
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


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        *(
            (
                {"DOCKER_LOGIN_X": value},
                "DOCKER_LOGIN_X requires 3 fields: registry user password",
            )
            for value in ["", "   ", "ghcr.io", "ghcr.io user"]
        ),
        (
            {
                "DOCKER_LOGIN_1": "docker.io a b",
                "DOCKER_LOGIN_2": "Registry-1.Docker.IO c d",
            },
            "DOCKER_LOGIN: registry-1.docker.io defined multiple times",
        ),
    ],
    ids=["empty", "blank", "registry-only", "no-password", "defined-twice"],
)
def test_login_table_invalid(environ, message):
    """A login needs three fields, and one registry gets one login."""
    assert fatal_message(db.login_table, environ) == message


def test_login_variable_needs_three_fields(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("app\tapp")
    result = world.run(env={"DOCKER_LOGIN_X": "registry.example only-user"})
    failed(result, "DOCKER_LOGIN_X requires 3 fields: registry user password\n")


def test_basic_auth_login(auth_world: World) -> None:
    """A DOCKER_LOGIN variable logs in to the registry; the build gets
    neither the variable nor the password."""
    world = auth_world
    world.up_to_date(base_layers=BASE_LAYERS)
    login = {"DOCKER_LOGIN_TEST": f"{world.registry.host} builder {PASSWORD}"}
    succeeded(world.run(env=login))
    world.write("app/extra", "x\n")
    world.commit(when=T_LATER)
    result = world.run(env=login)
    succeeded(result, rebuilt(world.ref("app"), REASON_GIT))
    (call,) = world.calls()
    assert not any(key.startswith("DOCKER_LOGIN") for key in call["env"])
    assert PASSWORD not in repr(call)
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.also_sequential
def test_without_login_everything_is_missing(auth_world: World) -> None:
    """The reference reads a 401 as "not there": the base is missing, and
    the message points at the missing credentials of its registry."""
    world = auth_world
    world.up_to_date(base_layers=BASE_LAYERS)
    result = world.run()
    host = world.registry.host
    failed(
        result,
        f"Missing base image: {world.ref('base:1')} ({host} answered 401 and no "
        "credentials are given for it: see DOCKER_LOGIN)\n",
    )


# ----------------------------------------------------------------------------
# The children's environment, and the password that never shows
# ----------------------------------------------------------------------------


def test_child_environment_strips_logins():
    """Git and docker get the environment without any DOCKER_LOGIN*; the
    tool's own is left alone."""
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


SERVER_ERRORS = {"times": 99, "status": 500, "headers": {"Retry-After": "0"}}


def spoil(body: bytes) -> bytes:
    return body + b" "


def test_password_never_shows(auth_registry, world_factory, tmp_path: Path) -> None:
    """Every error path with a login: the canary password appears in no
    output, in no child's environment and in no child's argv."""
    world, proxy = world_factory(auth_registry)
    world.up_to_date()
    login = {"DOCKER_LOGIN_CANARY": f"{proxy.host} {USER} {PASSWORD}"}
    other_ca = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    scenarios = [
        ([], {}, None),
        ([], {"DOCKER_LOGIN_CANARY": f"{proxy.host} {USER} x{PASSWORD}"}, None),
        ([], {"DOCKER_REPOSITORY": f"127.0.0.1:{free_port()}/x"}, None),
        ([], {"REQUESTS_CA_BUNDLE": str(other_ca)}, None),
        ([], {}, ("/manifests/", "status", SERVER_ERRORS)),
        ([], {}, ("/blobs/", "reset", {"times": 2})),
        ([], {}, ("/blobs/", "truncate", {})),
        ([], {}, ("/manifests/", "body", {"method": "GET", "rewrite": spoil})),
        (["--all"], {"DOCKER_DOUBLE_FAIL": "app=9"}, None),
        (["--all"], {"DOCKER_DOUBLE_SIGNAL": "app=SIGKILL"}, None),
        (["--all"], {}, None),
    ]  # fmt: skip
    outputs = []
    for args, extra, fault in scenarios:
        if fault:
            path, action, options = fault
            proxy.add(path, action, **options)
        result = world.run(*args, "--no-cache", env={**login, **extra})
        outputs.append(result.stdout + result.stderr)
        proxy.faults.clear()
        assert "Traceback" not in result.stderr
    assert not any(PASSWORD in output for output in outputs)
    calls = world.calls()
    assert calls
    assert not any(PASSWORD in json.dumps(call) for call in calls)
    assert not any(key.startswith("DOCKER_LOGIN") for c in calls for key in c["env"])


# ----------------------------------------------------------------------------
# config.json: its keys and its auths entries
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # Docker Hub, however it is spelled
        ("https://index.docker.io/v1/", HUB),
        ("index.docker.io", HUB),
        ("docker.io", HUB),
        ("https://docker.io", HUB),
        ("registry-1.docker.io", HUB),
        ("https://registry-1.docker.io/v2/", HUB),
        ("HTTPS://Index.Docker.IO/v1/", HUB),
        ("DOCKER.IO", HUB),
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
    """The registry host a config.json key names, with or without scheme,
    path and case; every name of Docker Hub is the host of its API."""
    assert db.config_key_host(key) == expected


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
        # no colon: no login
        ({"auth": b64("userpass")}, None),
    ],
)
def test_auth_entry(entry, expected, capsys):
    """An auths entry's login (base64 user:password) or identity token;
    whatever else it holds is no login, silently."""
    assert db.auth_entry(entry, "reg.example") == expected
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    "encoded",
    [
        "abc",  # incorrect padding
        base64.b64encode(b"\xff\xfe:secret").decode(),  # not UTF-8
    ],
    ids=["padding", "not-utf8"],
)
def test_auth_entry_malformed(encoded, capsys):
    """An auth value that does not decode is a warning, and no login."""
    assert db.auth_entry({"auth": encoded}, "reg.example:5000") is None
    assert capsys.readouterr() == (
        "",
        warning(
            "the Docker config's login for reg.example:5000 is unreadable; ignored"
        ),
    )


# ----------------------------------------------------------------------------
# read_docker_config
# ----------------------------------------------------------------------------

CONFIG = {"auths": {"reg.example": {"auth": b64("u:p")}}, "credsStore": "x"}


def test_read_docker_config_from_docker_config(tmp_path, monkeypatch, capsys):
    """$DOCKER_CONFIG/config.json, not the one in the home directory."""
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
    """Without DOCKER_CONFIG (or with it empty): ~/.docker/config.json."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(json.dumps(CONFIG))
    monkeypatch.setenv("HOME", str(home))
    assert db.read_docker_config(environ) == CONFIG
    assert capsys.readouterr() == ("", "")


def test_read_docker_config_missing(tmp_path, monkeypatch, capsys):
    """No config file: an empty config, silently."""
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    assert db.read_docker_config({}) == {}
    assert db.read_docker_config({"DOCKER_CONFIG": str(tmp_path / "none")}) == {}
    assert capsys.readouterr() == ("", "")


def test_read_docker_config_broken_json(tmp_path, capsys):
    """A config file that is no JSON is a warning, and an empty config."""
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
    """A config file that cannot be read is a warning, and an empty config."""
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
    """JSON that is no object is an empty config, silently."""
    (tmp_path / "config.json").write_text(text)
    assert db.read_docker_config({"DOCKER_CONFIG": str(tmp_path)}) == {}
    assert capsys.readouterr() == ("", "")


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
    """The servers the helper was asked about, in order."""
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
    """The helper is asked once, about the server, and its answer is the
    login (an identity token as ("<token>", token))."""
    assert db.credential_helper("test", server, helper_env) == expected
    assert helper_log(helper_env) == [server]
    assert capsys.readouterr() == ("", "")


def test_credential_helper_not_found_is_silent(helper_env, capsys):
    """A helper that does not know the server: anonymous, without warning."""
    assert db.credential_helper("test", "unknown.example", helper_env) is None
    assert helper_log(helper_env) == ["unknown.example"]
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("helper", "broken", "message"),
    [
        (
            "test",
            "exit",
            "docker-credential-test failed for reg.example (exit 3); "
            "using anonymous access",
        ),
        (
            "test",
            "garbage",
            "docker-credential-test gave no credentials for reg.example; "
            "using anonymous access",
        ),
        (
            "absent",
            None,
            "docker-credential-absent failed for reg.example: [Errno 2] "
            "No such file or directory: 'docker-credential-absent'; "
            "using anonymous access",
        ),
    ],
    ids=["exit", "garbage", "missing"],
)
def test_credential_helper_broken(helper, broken, message, helper_env, capsys):
    """A helper that fails, answers no JSON or is not installed is a
    warning, and access is anonymous."""
    env = {**helper_env, "TEST_HELPER_BROKEN": broken} if broken else helper_env
    assert db.credential_helper(helper, "reg.example", env) is None
    assert capsys.readouterr() == ("", warning(message))


def test_credential_helper_hangs(tmp_path, helper_env, monkeypatch, capsys):
    """A helper that does not answer in time is a warning, and access is
    anonymous."""
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


# ----------------------------------------------------------------------------
# Credentials.get: which source wins, and helpers asked once per registry
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


def ask_together(credentials, registries):
    """Ask for every registry from its own thread, all at once."""
    barrier = threading.Barrier(len(registries))

    def ask(registry):
        barrier.wait()
        return credentials.get(registry)

    with concurrent.futures.ThreadPoolExecutor(len(registries)) as pool:
        return list(pool.map(ask, registries))


def test_credentials_docker_login_first(helpers):
    """A DOCKER_LOGIN* login wins over everything in config.json."""
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
    """The registry's own credHelpers entry wins over credsStore, which
    serves the other registries."""
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
    """credsStore wins over the auths entry."""
    helpers.answers[("store", "reg.example")] = ("store-user", "store-pw")
    config = {
        "credsStore": "store",
        "auths": {"reg.example": {"auth": b64("auth-user:auth-pw")}},
    }
    credentials = db.Credentials({}, config, {})
    assert credentials.get("reg.example") == ("store-user", "store-pw")
    assert helpers.calls == [("store", "reg.example")]


def test_credentials_auths(helpers):
    """Without a helper for the registry, its auths entry (keyed with or
    without scheme and path; the port counts); else anonymous."""
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
    assert credentials.get("reg.example:6000") is None
    assert credentials.get("unknown.example") is None
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
    """A config without a usable entry means anonymous access."""
    credentials = db.Credentials({}, config, {})
    assert credentials.get("reg.example") is None
    assert helpers.calls == []


@pytest.mark.parametrize("key", [HUB_KEY, "docker.io", "index.docker.io"])
def test_credentials_docker_hub_auths_key(key, helpers):
    """Docker Hub's auths entry, under any of its names."""
    config = {"auths": {key: {"auth": b64("hub-user:hub-pw")}}}
    credentials = db.Credentials({}, config, {})
    assert credentials.get(HUB) == ("hub-user", "hub-pw")


def test_credentials_docker_hub_helper_server(helpers):
    """A helper is asked about Docker Hub by the key `docker login` uses."""
    helpers.answers[("store", HUB_KEY)] = ("hub-user", "hub-pw")
    credentials = db.Credentials({}, {"credsStore": "store"}, {})
    assert credentials.get(HUB) == ("hub-user", "hub-pw")
    assert helpers.calls == [("store", HUB_KEY)]


def test_credentials_helper_asked_lazily(helpers):
    """No helper is asked before a registry's login is wanted."""
    db.Credentials({}, {"credsStore": "store"}, {})
    assert helpers.calls == []


def test_credentials_cached_per_registry(helpers):
    """A helper is asked once per registry, whatever it answers."""
    helpers.answers[("store", "a.example")] = ("a-user", "a-pw")
    credentials = db.Credentials({}, {"credsStore": "store"}, {})
    for _ in range(3):
        assert credentials.get("a.example") == ("a-user", "a-pw")
        assert credentials.get("b.example") is None  # cached too
    assert helpers.calls == [("store", "a.example"), ("store", "b.example")]


def test_credentials_once_per_registry_from_threads(monkeypatch):
    """Threads asking at once: still one question per registry."""
    fake = FakeHelpers(
        {("store", "a.example"): ("a-user", "a-pw"), ("store", "b.example"): None},
        delay=0.05,
    )
    monkeypatch.setattr(db, "credential_helper", fake)
    credentials = db.Credentials({}, {"credsStore": "store"}, {})
    answers = ask_together(credentials, ["a.example", "b.example"] * 8)
    assert answers == [("a-user", "a-pw"), None] * 8
    assert sorted(fake.calls) == [("store", "a.example"), ("store", "b.example")]


def test_credentials_with_real_helper_once_per_registry(helper_env, capsys):
    """The real helper, asked from threads at once: once per registry."""
    config = {"credsStore": "test"}
    credentials = db.Credentials({}, config, helper_env)
    registries = ["reg.example", HUB, "unknown.example"] * 4
    answers = ask_together(credentials, registries)
    expected = [("helper-user", "helper-pw"), ("hub-user", "hub-pw"), None]
    assert answers == expected * 4
    assert sorted(helper_log(helper_env)) == sorted(
        ["reg.example", HUB_KEY, "unknown.example"]
    )
    assert capsys.readouterr() == ("", "")


def test_credentials_broken_helper_warns_once(helper_env, capsys):
    """A broken helper is asked, and warned about, once per registry."""
    env = {**helper_env, "TEST_HELPER_BROKEN": "exit"}
    credentials = db.Credentials({}, {"credsStore": "test"}, env)
    for _ in range(3):
        assert credentials.get("reg.example") is None
    assert helper_log(env) == ["reg.example"]
    assert capsys.readouterr() == (
        "",
        warning(
            "docker-credential-test failed for reg.example (exit 3); "
            "using anonymous access"
        ),
    )


# ----------------------------------------------------------------------------
# Docker's credentials, end to end
# ----------------------------------------------------------------------------


def docker_config(world: World, config: dict) -> Path:
    """A Docker config directory for the world, and the test helper."""
    directory = world.root.parent / "docker-config"
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    world.env["DOCKER_CONFIG"] = str(directory)
    (world.bin / "docker-credential-test").symlink_to(HELPER)
    world.env["TEST_CREDENTIALS_LOG"] = str(directory / "helper.log")
    return directory


def helper_knows(world: World, credentials: dict[str, list[str]]) -> None:
    """What the world's test helper answers: server -> [user, secret]."""
    path = world.root.parent / "credentials.json"
    path.write_text(json.dumps(credentials))
    world.env["TEST_CREDENTIALS"] = str(path)


def asked(world: World) -> list[str]:
    """The servers the world's test helper was asked about."""
    log = Path(world.env["TEST_CREDENTIALS_LOG"])
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("key", ["{host}", "https://{host}", "https://{host}/v2/"])
def test_auths_entry(auth_world: World, key: str) -> None:
    """The login `docker login` left in config.json's auths."""
    world = auth_world
    world.up_to_date()
    host = world.registry.host
    docker_config(
        world, {"auths": {key.format(host=host): {"auth": b64(f"{USER}:{PASSWORD}")}}}
    )
    succeeded(world.run())


@pytest.mark.also_sequential
def test_login_variable_comes_first(auth_world: World) -> None:
    """DOCKER_LOGIN wins over a wrong login in config.json, which is used
    without it."""
    world = auth_world
    world.up_to_date()
    host = world.registry.host
    docker_config(world, {"auths": {host: {"auth": b64(f"{USER}:wrong")}}})
    succeeded(world.run(env={"DOCKER_LOGIN": f"{host} {USER} {PASSWORD}"}))
    result = world.run()
    assert result.stderr == (
        f"{host}: login failed: the registry rejected the credentials of {USER}\n"
    )


@pytest.mark.parametrize("setting", ["credHelpers", "credsStore"])
@pytest.mark.also_sequential
def test_credential_helper(auth_world: World, setting: str) -> None:
    """A credential helper's login, asked for once; the password reaches
    no build and no output."""
    world = auth_world
    world.up_to_date()
    host = world.registry.host
    config = {"credHelpers": {host: "test"}} if setting == "credHelpers" else {
        "credsStore": "test", "auths": {host: {}}
    }  # fmt: skip
    docker_config(world, config)
    helper_knows(world, {host: [USER, PASSWORD]})
    result = world.run()
    succeeded(result)
    assert asked(world) == [host]
    world.write("app/new", "x\n")
    world.commit(when=T_LATER)
    result = world.run()
    assert result.returncode == 0
    (call,) = world.calls()
    assert PASSWORD not in json.dumps(call) + result.stdout + result.stderr


@pytest.mark.also_sequential
def test_helper_without_the_registry_means_anonymous(world: World) -> None:
    """A helper that does not know the registry: anonymous, silently."""
    world.up_to_date()
    docker_config(world, {"credsStore": "test"})
    helper_knows(world, {})
    succeeded(world.run())
    assert asked(world) == [world.registry.host]


@pytest.mark.parametrize("broken", ["exit", "garbage", "missing"])
@pytest.mark.also_sequential
def test_broken_helper_is_a_warning(world: World, broken: str) -> None:
    """A broken helper: one warning, and the run goes on anonymously."""
    world.up_to_date()
    docker_config(world, {"credsStore": "missing" if broken == "missing" else "test"})
    world.env["TEST_HELPER_BROKEN"] = broken
    result = world.run()
    host = world.registry.host
    assert (result.returncode, result.stdout) == (0, "")
    if broken == "exit":
        expected = f"docker-credential-test failed for {host} (exit 3)"
    elif broken == "garbage":
        expected = f"docker-credential-test gave no credentials for {host}"
    else:
        expected = (
            f"docker-credential-missing failed for {host}: [Errno 2] "
            "No such file or directory: 'docker-credential-missing'"
        )
    assert result.stderr == (
        f"docker_build: warning: {expected}; using anonymous access\n"
    )


@pytest.mark.also_sequential
def test_identity_token(token_world: World) -> None:
    """An identity token in config.json gets the registry's tokens; a stale
    one is a failed login."""
    world = token_world
    world.up_to_date()
    tokens = world.registry.tokens
    docker_config(
        world,
        {"auths": {world.registry.host: {"identitytoken": tokens.identity_token}}},
    )
    succeeded(world.run())
    docker_config_path = Path(world.env["DOCKER_CONFIG"]) / "config.json"
    docker_config_path.write_text(
        json.dumps({"auths": {world.registry.host: {"identitytoken": "stale"}}})
    )
    result = world.run()
    assert result.stderr == (
        f"{world.registry.host}: login failed: "
        "the registry rejected the credentials of <token>\n"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ns NS", "DOCKER_REPOSITORY: ns and NS name the same repository"),
        (
            "docker.io/x index.docker.io/x",
            "DOCKER_REPOSITORY: docker.io/x and index.docker.io/x name the same "
            "repository",
        ),
        (
            "ghcr.io/a x ghcr.io/a",
            "DOCKER_REPOSITORY: ghcr.io/a and ghcr.io/a name the same repository",
        ),
    ],
)
def test_docker_repositories_given_twice(value, message):
    """A repository given twice (as Docker compares them) is an error."""
    assert (
        fatal_message(db.docker_repositories, {"DOCKER_REPOSITORY": value}) == message
    )


@pytest.mark.parametrize(
    "key",
    [
        "https://127.0.0.1:5001",
        "https://127.0.0.1:5001/",
        "http://127.0.0.1:5001/v1/",
        "127.0.0.1:5001",
    ],
)
def test_login_keys_given_as_urls(key):
    """DOCKER_LOGIN and config.json keys written as URLs name their host."""
    assert db.login_table({"DOCKER_LOGIN": f"{key} u p"}) == {
        "127.0.0.1:5001": ("u", "p")
    }
    credentials = db.Credentials({}, {"auths": {key: {"auth": "dTpw"}}}, {})
    assert credentials.get("127.0.0.1:5001") == ("u", "p")


def test_plain_http_login_has_a_message_of_its_own():
    assert db.plain_http_login("localhost:5000") == (
        "localhost:5000: the registry asks for a login, but it is reached over "
        "plain HTTP, where no credentials are sent: give it TLS"
    )


@pytest.mark.parametrize(
    "key", ["https://{host}", "https://{host}/", "https://{host}/v1/", "{host}"]
)
def test_login_given_as_url(auth_world: World, key: str) -> None:
    """DOCKER_LOGIN names its registry by a URL too, as Docker's lookup of
    config.json keys does."""
    world = auth_world
    world.up_to_date(base_layers=BASE_LAYERS)
    registry = key.format(host=world.registry.host)
    succeeded(world.run(env={"DOCKER_LOGIN": f"{registry} {USER} {PASSWORD}"}))
