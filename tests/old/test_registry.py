"""Unit tests of docker_build's registry machinery (issue 4): retries, the
digest cache, the shared sessions and authentication of Registry, and the
deferred errors of Registry.prefetch and ContextChanges.

No network: HTTP answers come from a fake session, look-ups from a fake
fetch_image; cache files live in tmp_path.
"""

import base64
import datetime
import email.utils
import json
import os
import threading
import types

import pytest
import requests
import requests.exceptions
from conftest import load_tool

db = load_tool()

UTC = datetime.timezone.utc
CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
AMD = ("linux/amd64",)
BOTH = ("linux/amd64", "linux/arm64")
DIGEST = "sha256:" + "0123456789abcdef" * 4
OTHER = "sha256:" + "1" * 64
THIRD = "sha256:" + "2" * 64


def fatal_message(func, *args, code=1):
    """Call func, expect db.Fatal with the exit code; return its message."""
    with pytest.raises(db.Fatal) as info:
        func(*args)
    assert info.value.code == code
    return info.value.message


def response(status, headers=None, body=b"", url="https://reg.example/v2/"):
    """A requests.Response as a server would send it."""
    made = requests.Response()
    made.status_code = status
    made.headers = requests.structures.CaseInsensitiveDict(headers or {})
    made._content = body
    made.encoding = "utf-8"
    made.url = url
    made.reason = {200: "OK", 401: "Unauthorized"}.get(status, "Error")
    return made


def http_error(status, headers=None):
    return requests.exceptions.HTTPError(
        f"{status} Error", response=response(status, headers)
    )


# ----------------------------------------------------------------------------
# retry_wanted, retry_delay, retry_after_seconds
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


def test_retry_statuses_and_bounds():
    assert db.RETRY_STATUSES == (429, 500, 502, 503, 504)
    assert (db.RETRY_ATTEMPTS, db.RETRY_BUDGET) == (5, 60.0)
    assert (db.RETRY_FIRST_DELAY, db.RETRY_MAX_DELAY) == (0.5, 10.0)


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
        ("Mon, 01 Jan 2024 00:00:00 GMT", 0.0),  # past: no wait
        ("soon", None),
        ("", None),
        ("1.5", None),
        ("-1", None),
    ],
)
def test_retry_after_seconds(now, value, expected):
    assert db.retry_after_seconds(value) == expected


def test_retry_after_seconds_unknown_zone(now):
    assert db.retry_after_seconds("Tue, 02 Jan 2024 03:05:05 -0000") == 59.876544


# ----------------------------------------------------------------------------
# with_retries
# ----------------------------------------------------------------------------


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
    ("error", "message"),
    [
        (http_error(404), "img: 404 Error"),
        (
            requests.exceptions.SSLError("certificate verify failed"),
            "img: certificate verify failed",
        ),
    ],
)
def test_with_retries_not_retried(error, message):
    waits = []
    operation = Flaky(error)
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


def test_with_retries_non_retryable_is_immediate():
    waits = []
    operation = Flaky(http_error(400), http_error(400))
    assert fatal_message(
        db.with_retries, "ghcr.io/o/img", operation, waits.append, lambda: 1.0
    ) == ("ghcr.io/o/img: 400 Error")
    assert (operation.calls, waits) == (1, [])


def test_with_retries_passes_other_errors_through():
    """A Fatal of the operation is its own; it is never retried."""
    waits = []
    operation = Flaky(db.Fatal("img: Invalid JSON"))
    assert fatal_message(
        db.with_retries, "img", operation, waits.append, lambda: 1.0
    ) == ("img: Invalid JSON")
    assert (operation.calls, waits) == (1, [])


# ----------------------------------------------------------------------------
# DigestCache, cached_info, cache_path, warn
# ----------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
    """docker_build's time.time, set by `.now`."""
    stopped = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(db, "time", types.SimpleNamespace(time=lambda: stopped.now))
    return stopped


INFO = db.ImageInfo(CREATED, ("sha256:a", "sha256:b"))
FOUND = {"linux/amd64": INFO, "linux/arm64": None}
FOUND_JSON = {
    "linux/amd64": {
        "created": "2024-01-02T03:04:05.123456+00:00",
        "layers": ["sha256:a", "sha256:b"],
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
        "version": 1,
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
        "version": 1,
        "entries": {DIGEST: {"platforms": FOUND_JSON, "used": 1000.0}},
    }
    assert renames == [(f"{path}.{os.getpid()}", path, data)]
    assert sorted(os.listdir(tmp_path)) == ["c.json"]


def test_digest_cache_save_keeps_the_most_recently_used(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(db, "CACHE_ENTRIES", 2)
    path = tmp_path / "c.json"
    cache = db.DigestCache(str(path))
    for now, digest in [(1.0, DIGEST), (2.0, OTHER), (3.0, THIRD)]:
        clock.now = now
        cache.put(digest, {"linux/amd64": None})
    clock.now = 4.0
    assert cache.get(DIGEST, AMD) == {"linux/amd64": None}
    cache.save()
    data = json.loads(path.read_text())
    assert data == {
        "version": 1,
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
    assert json.loads(path.read_text()) == {"version": 1, "entries": {}}


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
        {"version": 2, "entries": {}},
        {"version": 1},
        {"version": 1, "entries": []},
        {"version": 1, "entries": {DIGEST: {}}},
        {"version": 1, "entries": {DIGEST: {"platforms": []}}},
        {"version": 1, "entries": {DIGEST: {"platforms": {"linux/amd64": {}}}}},
        {
            "version": 1,
            "entries": {
                DIGEST: {"platforms": {"linux/amd64": {**GOOD_FACTS, "created": 5}}}
            },
        },
        {
            "version": 1,
            "entries": {
                DIGEST: {
                    "platforms": {
                        "linux/amd64": {**GOOD_FACTS, "created": "2024-01-02T03:04:05"}
                    }
                }
            },
        },
        {
            "version": 1,
            "entries": {
                DIGEST: {"platforms": {"linux/amd64": {**GOOD_FACTS, "created": "x"}}}
            },
        },
        {
            "version": 1,
            "entries": {
                DIGEST: {"platforms": {"linux/amd64": {**GOOD_FACTS, "layers": "a"}}}
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
    path.write_bytes(b'{"version": 1, "entries": {"\xff": 1}}')
    db.DigestCache(str(path))
    assert capsys.readouterr().err == (
        f"docker_build: warning: ignoring the cache {path}: unexpected content\n"
    )


def test_digest_cache_good_content_is_kept(tmp_path, capsys):
    path = tmp_path / "c.json"
    entries = {
        DIGEST: {"platforms": {"linux/amd64": GOOD_FACTS, "linux/arm64": None}},
    }
    path.write_text(json.dumps({"version": 1, "entries": entries}))
    cache = db.DigestCache(str(path))
    assert (cache.entries, cache.warm, cache.changed) == (entries, True, False)
    assert cache.get(DIGEST, BOTH) == {
        "linux/amd64": db.ImageInfo(
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), ()
        ),
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
    cache.save()
    assert capsys.readouterr().err == (
        f"docker_build: warning: can't write the cache {path}: "
        f"[Errno 17] File exists: '{tmp_path / 'file'}'\n"
    )


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
# Registry: look-ups, prefetch, close
# ----------------------------------------------------------------------------


def done(value):
    future = db.concurrent.futures.Future()
    future.set_result(value)
    return future


INFO_AMD = {"linux/amd64": INFO}


class Fetches:
    """fetch_image's stand-in: answers from `answers` by reference (an
    exception is raised, a list answers in turn), the calls in `calls`."""

    def __init__(self):
        self.answers = {}
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, reference, platforms, registry):
        with self.lock:
            self.calls.append((reference, platforms))
            answer = self.answers[reference]
            if isinstance(answer, list):
                answer = answer.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def fetches(monkeypatch):
    fake = Fetches()
    monkeypatch.setattr(db, "fetch_image", fake)
    return fake


def test_registry_defaults():
    registry = db.Registry({})
    assert (registry.jobs, registry.cache.path, registry.known) == (1, None, {})
    assert registry.pool._max_workers == 1
    cache = db.DigestCache(None)
    assert db.Registry({}, 4, cache).cache is cache
    assert db.Registry({}, 4).pool._max_workers == 4


def test_registry_lookup_uses_known_futures(fetches):
    registry = db.Registry({})
    registry.known[db.reference_key("ghcr.io/o/img:1"), AMD] = done(INFO_AMD)
    registry.known[db.reference_key("ghcr.io/o/gone:1"), AMD] = done(None)
    assert registry.lookup("ghcr.io/o/img:1", AMD) == INFO_AMD
    assert registry.lookup("ghcr.io/o/gone:1", AMD) is None
    registry.prefetch([("ghcr.io/o/img:1", AMD)])
    assert fetches.calls == []


def test_registry_prefetch_defers_errors(fetches):
    fetches.answers = {
        "good": INFO_AMD,
        "bad": db.Fatal("bad: boom"),
        "ghcr.io/o/missing": None,
    }
    registry = db.Registry({}, jobs=3)
    # nothing raised here: not the invalid reference, nor the failing fetch
    registry.prefetch(
        [
            ("a___b", AMD),
            ("scratch", AMD),
            ("NONE", BOTH),
            ("bad", AMD),
            ("good", AMD),
            ("ghcr.io/o/missing", AMD),
        ]
    )
    assert len(registry.known) == 3
    for future in list(registry.known.values()):
        future.exception()  # wait for all
    assert sorted(fetches.calls) == [
        ("bad", AMD),
        ("ghcr.io/o/missing", AMD),
        ("good", AMD),
    ]
    assert registry.lookup("good", AMD) == INFO_AMD
    assert registry.lookup("docker.io/library/good:latest", AMD) == INFO_AMD
    assert registry.lookup("ghcr.io/o/missing:latest", AMD) is None
    assert registry.lookup("scratch", AMD) == {"linux/amd64": db.NO_BASE}
    assert fatal_message(registry.lookup, "bad", AMD) == "bad: boom"
    assert fatal_message(registry.lookup, "bad", AMD) == "bad: boom"
    assert fatal_message(registry.lookup, "a___b", AMD) == (
        "a___b: invalid reference format"
    )
    # each look-up was made once
    assert len(fetches.calls) == 3
    registry.close()


def test_registry_prefetch_retries(fetches, monkeypatch):
    """A look-up is retried where it runs; its final error waits for
    lookup."""
    monkeypatch.setattr(db, "RETRY_FIRST_DELAY", 0.001)
    refused = requests.exceptions.ConnectionError("refused")
    fetches.answers = {"flaky": [refused, refused, INFO_AMD], "down": refused}
    registry = db.Registry({}, jobs=2)
    registry.prefetch([("flaky", AMD), ("down", AMD)])
    assert registry.lookup("flaky", AMD) == INFO_AMD
    assert fatal_message(registry.lookup, "down", AMD) == "down: refused"
    assert fetches.calls.count(("flaky", AMD)) == 3
    assert fetches.calls.count(("down", AMD)) == db.RETRY_ATTEMPTS
    registry.close()


def test_registry_close_saves_the_cache_and_closes_sessions(tmp_path, clock):
    path = tmp_path / "c.json"
    cache = db.DigestCache(str(path))
    cache.put(DIGEST, FOUND)
    registry = db.Registry({}, 2, cache)
    closed = []
    for host in ("a.example", "b.example"):
        registry.sessions[host] = types.SimpleNamespace(
            close=lambda host=host: closed.append(host)
        )
    registry.close()
    assert closed == ["a.example", "b.example"]
    assert json.loads(path.read_text())["entries"] == {
        DIGEST: {"platforms": FOUND_JSON, "used": 1000.0}
    }


def test_registry_session_per_host():
    registry = db.Registry({}, jobs=6)
    session = registry.session("a.example")
    assert isinstance(session, requests.Session)
    assert registry.session("a.example") is session
    assert registry.session("b.example") is not session
    assert registry.sessions == {
        "a.example": session,
        "b.example": registry.session("b.example"),
    }
    for scheme in ("https://", "http://"):
        adapter = session.get_adapter(scheme + "a.example/v2/")
        assert (adapter._pool_connections, adapter._pool_maxsize) == (4, 6)
    registry.close()


# ----------------------------------------------------------------------------
# Registry: challenge, client and tokens (a fake session answers)
# ----------------------------------------------------------------------------

HOST = "reg.example"
REALM = "https://auth.example/token"
CHALLENGE = {"WWW-Authenticate": f'Bearer realm="{REALM}",service="{HOST}"'}


class FakeSession:
    """Answers requests from `routes`: (method, url) -> a list of
    responses, one per request (the last one repeats), or a function of
    the request's Authorization header; requests in `calls` as (method,
    url, Authorization, timeout)."""

    def __init__(self, routes):
        self.routes = routes
        self.calls = []

    def request(self, method, url, headers=None, timeout=None, auth=None, **kwargs):
        authorization = (headers or {}).get("Authorization")
        if auth is not None:  # requests turns a (user, password) into this
            authorization = requests.auth._basic_auth_str(*auth)
        self.calls.append((method, url, authorization, timeout))
        route = self.routes[method, url]
        if callable(route):
            return route(authorization)
        return route.pop(0) if len(route) > 1 else route[0]

    def get(self, url, **kwargs):
        return self.request("get", url, **kwargs)

    def head(self, url, **kwargs):
        return self.request("head", url, **kwargs)


def token_url(repository, scope=None):
    scope = scope or f"repository%3A{repository.replace('/', '%2F')}%3Apull"
    return f"{REALM}?service={HOST}&scope={scope}"


def token(value):
    return response(200, body=json.dumps({"token": value}).encode())


BASIC = "Basic " + base64.b64encode(b"me:secret").decode()


def registry_with(routes, logins=None):
    registry = db.Registry(logins if logins is not None else {HOST: ("me", "secret")})
    session = FakeSession(routes)
    registry.sessions[HOST] = session
    return registry, session


def test_registry_challenge_remembered():
    registry, session = registry_with(
        {("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)]}
    )
    challenge = registry.challenge(HOST)
    assert (challenge.status_code, challenge.headers["WWW-Authenticate"]) == (
        401,
        CHALLENGE["WWW-Authenticate"],
    )
    assert registry.challenge(HOST) is challenge
    assert session.calls == [("get", f"https://{HOST}/v2/", None, 30)]


def test_registry_challenge_open_registry():
    registry, session = registry_with({("get", f"https://{HOST}/v2/"): [response(200)]})
    assert registry.challenge(HOST) is None
    assert registry.challenge(HOST) is None
    assert registry.challenges == {HOST: None}
    assert len(session.calls) == 1


def test_registry_challenge_error_is_not_remembered():
    registry, session = registry_with(
        {("get", f"https://{HOST}/v2/"): [response(503), response(200)]}
    )
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        registry.challenge(HOST)
    assert str(raised.value) == f"503 Server Error: Error for url: https://{HOST}/v2/"
    assert db.retry_wanted(raised.value) is True
    assert registry.challenges == {}
    assert registry.challenge(HOST) is None
    assert len(session.calls) == 2


BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Registry Realm"'}


def test_registry_challenge_basic_login_accepted():
    """A Basic challenge and a login: the login is tried at once, and the
    challenge is remembered as for any other."""
    registry, session = registry_with(
        {
            ("get", f"https://{HOST}/v2/"): lambda authorization: (
                response(200)
                if authorization == BASIC
                else response(401, BASIC_CHALLENGE)
            )
        }
    )
    challenge = registry.challenge(HOST)
    assert (challenge.status_code, challenge.headers["WWW-Authenticate"]) == (
        401,
        'Basic realm="Registry Realm"',
    )
    assert registry.challenge(HOST) is challenge
    assert session.calls == [
        ("get", f"https://{HOST}/v2/", None, 30),
        ("get", f"https://{HOST}/v2/", BASIC, 30),
    ]


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
def test_registry_challenge_basic_login_rejected(scheme):
    registry, session = registry_with(
        {
            ("get", f"https://{HOST}/v2/"): [
                response(401, {"WWW-Authenticate": f'{scheme} realm="r"'})
            ]
        }
    )
    assert fatal_message(registry.challenge, HOST) == (
        "reg.example: login failed: the registry rejected the credentials of me"
    )
    assert session.calls == [
        ("get", f"https://{HOST}/v2/", None, 30),
        ("get", f"https://{HOST}/v2/", BASIC, 30),
    ]
    assert registry.challenges == {}


def test_registry_challenge_basic_without_login_is_not_checked():
    registry, session = registry_with(
        {("get", f"https://{HOST}/v2/"): [response(401, BASIC_CHALLENGE)]}, logins={}
    )
    assert registry.challenge(HOST).status_code == 401
    assert session.calls == [("get", f"https://{HOST}/v2/", None, 30)]


def test_registry_challenge_login_of_another_registry_is_not_tried():
    registry, session = registry_with(
        {("get", f"https://{HOST}/v2/"): [response(401, BASIC_CHALLENGE)]},
        logins={"other.example": ("me", "secret")},
    )
    assert registry.challenge(HOST).status_code == 401
    assert len(session.calls) == 1


def test_registry_timeout_reaches_every_request():
    registry = db.Registry({HOST: ("me", "secret")}, timeout=2.5)
    session = FakeSession(
        {
            ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
            ("get", token_url("o/img")): [token("t")],
        }
    )
    registry.sessions[HOST] = session
    client = registry.client(db.parse_reference(f"{HOST}/o/img"))
    assert client.token == "t"
    assert session.calls == [
        ("get", f"https://{HOST}/v2/", None, 2.5),
        ("get", token_url("o/img"), BASIC, 2.5),
    ]


def test_registry_authenticate_directly():
    """Registry.authenticate keeps the token of the repository; a refusal of
    the login is Fatal, an anonymous refusal is dxf's own error."""
    ref = db.parse_reference(f"{HOST}/o/img")
    registry, _ = registry_with({("get", token_url("o/img")): [token("t-1")]})
    client = db.dxf.DXF(HOST, "o/img", None)
    client._sessions.insert(0, registry.session(HOST))
    registry.authenticate(client, ref, response(401, CHALLENGE), ["pull"])
    assert registry.tokens == {(HOST, "o/img"): "t-1"}

    registry, _ = registry_with(
        {("get", token_url("o/img")): [response(401, CHALLENGE, url=REALM)]}
    )
    client._sessions[0] = registry.session(HOST)
    with pytest.raises(db.Fatal) as info:
        registry.authenticate(client, ref, response(401, CHALLENGE), ["pull"])
    assert (info.value.message, info.value.code, info.value.__suppress_context__) == (
        "reg.example: login failed: the registry rejected the credentials of me",
        1,
        True,
    )

    registry, _ = registry_with(
        {("get", token_url("o/img")): [response(401, CHALLENGE, url=REALM)]},
        logins={},
    )
    client._sessions[0] = registry.session(HOST)
    with pytest.raises(db.dxf.exceptions.DXFUnauthorizedError):
        registry.authenticate(client, ref, response(401, CHALLENGE), ["pull"])
    assert registry.tokens == {}


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


def test_registry_client_authenticates_once_per_repository():
    registry, session = registry_with(
        {
            ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
            ("get", token_url("o/img")): [token("t-img")],
            ("get", token_url("o/other")): [token("t-other")],
        }
    )
    ref = db.parse_reference(f"{HOST}/o/img:1")
    client = registry.client(ref)
    assert isinstance(client, db.dxf.DXF)
    assert client.token == "t-img"
    assert registry.tokens == {(HOST, "o/img"): "t-img"}
    assert session.calls == [
        ("get", f"https://{HOST}/v2/", None, 30),
        ("get", token_url("o/img"), BASIC, 30),
    ]
    # the same repository again: its token, no request
    assert registry.client(ref).token == "t-img"
    assert len(session.calls) == 2
    # another repository: the remembered challenge, a token of its own
    other = registry.client(db.parse_reference(f"{HOST}/o/other"))
    assert other.token == "t-other"
    assert session.calls[2:] == [("get", token_url("o/other"), BASIC, 30)]
    assert registry.tokens == {(HOST, "o/img"): "t-img", (HOST, "o/other"): "t-other"}


def test_registry_client_anonymous_token():
    registry, session = registry_with(
        {
            ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
            ("get", token_url("o/img")): [token("anon")],
        },
        logins={},
    )
    assert registry.client(db.parse_reference(f"{HOST}/o/img")).token == "anon"
    assert session.calls[1] == ("get", token_url("o/img"), None, 30)


def test_registry_client_open_registry():
    registry, session = registry_with({("get", f"https://{HOST}/v2/"): [response(200)]})
    client = registry.client(db.parse_reference(f"{HOST}/o/img"))
    assert client.token is None
    assert registry.tokens == {}
    assert session.calls == [("get", f"https://{HOST}/v2/", None, 30)]


def test_registry_client_refused_token_is_replaced():
    """The registry refuses a token: dxf's callback authenticates with the
    login again, and the new token is the one reused."""
    manifest_url = f"https://{HOST}/v2/o/img/manifests/1"
    scoped = {
        "WWW-Authenticate": f'Bearer realm="{REALM}",service="{HOST}",'
        'scope="repository:o/img:pull"'
    }

    def manifest(authorization):
        if authorization == "Bearer t-new":
            return response(200, {"Docker-Content-Digest": DIGEST}, url=manifest_url)
        return response(401, scoped, url=manifest_url)

    registry, session = registry_with(
        {
            ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
            ("get", token_url("o/img")): [token("t-old"), token("t-new")],
            ("head", manifest_url): manifest,
        }
    )
    client = registry.client(db.parse_reference(f"{HOST}/o/img:1"))
    assert client.token == "t-old"
    digest, answer = client.head_manifest_and_response("1")
    assert (digest, answer.status_code) == (DIGEST, 200)
    assert registry.tokens == {(HOST, "o/img"): "t-new"}
    assert session.calls == [
        ("get", f"https://{HOST}/v2/", None, 30),
        ("get", token_url("o/img"), BASIC, 30),
        ("head", manifest_url, "Bearer t-old", 30),
        ("get", token_url("o/img"), BASIC, 30),
        ("head", manifest_url, "Bearer t-new", 30),
    ]
    assert registry.client(db.parse_reference(f"{HOST}/o/img:2")).token == "t-new"


def test_registry_client_probe_failure_is_retryable():
    """The probe's error comes out of client as requests raised it, for
    with_retries to judge; it is not remembered."""
    registry, _ = registry_with(
        {("get", f"https://{HOST}/v2/"): [response(502), response(200)]}
    )
    ref = db.parse_reference(f"{HOST}/o/img")
    with pytest.raises(requests.exceptions.HTTPError) as raised:
        registry.client(ref)
    assert db.retry_wanted(raised.value) is True
    assert registry.client(ref).token is None


# ----------------------------------------------------------------------------
# ContextChanges
# ----------------------------------------------------------------------------


def image(name):
    return db.Image(name, name + ":latest", name, "NONE", (), AMD)


@pytest.fixture
def changes(monkeypatch):
    """context_change replaced: `broken` fails, others changed at 5."""
    calls = []
    lock = threading.Lock()

    def context_change(found, environ):
        with lock:
            calls.append((found.name, environ))
        if found.name == "broken":
            raise db.Fatal("broken: Can't get git status: fatal: broken")
        return 5.0, db.REASON_GIT

    monkeypatch.setattr(db, "context_change", context_change)
    return calls


def test_context_changes_defers_errors(changes):
    environ = {"K": "V"}
    contexts = db.ContextChanges(environ, jobs=2)
    good, broken = image("good"), image("broken")
    contexts.prefetch([good, broken])  # nothing raised
    assert contexts.get(good) == (5.0, db.REASON_GIT)
    assert fatal_message(contexts.get, broken) == (
        "broken: Can't get git status: fatal: broken"
    )
    assert fatal_message(contexts.get, broken) == (
        "broken: Can't get git status: fatal: broken"
    )
    assert contexts.get(good) == (5.0, db.REASON_GIT)
    # asked once each, with the environment
    assert sorted(changes) == [("broken", environ), ("good", environ)]
    contexts.close()


def test_context_changes_get_without_prefetch(changes):
    contexts = db.ContextChanges({})
    assert contexts.pool._max_workers == 1
    assert contexts.get(image("a")) == (5.0, db.REASON_GIT)
    assert contexts.get(image("a")) == (5.0, db.REASON_GIT)
    assert changes == [("a", {})]
    contexts.close()


def test_context_changes_real_directory(tmp_path):
    directory = tmp_path / "ctx"
    directory.mkdir()
    (directory / "Dockerfile").write_text("FROM alpine\n")
    os.utime(directory / "Dockerfile", (1, 1234))
    os.utime(directory, (1, 1000))
    contexts = db.ContextChanges({"PATH": os.environ["PATH"]})
    found = db.Image("img", "img:latest", str(directory), "NONE", (), AMD)
    assert contexts.get(found) == (1234, db.REASON_FILES)
    contexts.close()


@pytest.mark.parametrize("logins", [{}, {HOST: ("me", "secret")}])
@pytest.mark.parametrize(
    "routes",
    [
        {
            ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
            ("get", token_url("o/img")): [response(403, url=REALM)],
        },
    ],
)
def test_fetch_image_refused_by_the_registry_means_not_there(routes, logins):
    registry, _ = registry_with(routes, logins)
    assert db.fetch_image(f"{HOST}/o/img:1", AMD, registry) is None


@pytest.mark.parametrize("status", [403, 404])
def test_fetch_image_not_a_registry(status):
    registry, _ = registry_with({("get", f"https://{HOST}/v2/"): [response(status)]})
    with pytest.raises(db.Fatal) as info:
        db.fetch_image(f"{HOST}/o/img:1", AMD, registry)
    assert info.value.message == f"{HOST}: not a registry: GET /v2/ answered {status}"


TOKEN_REFUSED = {
    ("get", f"https://{HOST}/v2/"): [response(401, CHALLENGE)],
    ("get", token_url("o/img")): [response(401, CHALLENGE, url=REALM)],
}


def test_fetch_image_token_refused_anonymously_means_not_there():
    registry, _ = registry_with(dict(TOKEN_REFUSED), logins={})
    assert db.fetch_image(f"{HOST}/o/img:1", AMD, registry) is None


def test_fetch_image_token_refused_for_a_login_is_fatal():
    """A token server's 401 to a login is a wrong password, not a missing
    image: every image would be rebuilt on every run."""
    registry, session = registry_with(dict(TOKEN_REFUSED))
    assert fatal_message(db.fetch_image, f"{HOST}/o/img:1", AMD, registry) == (
        "reg.example: login failed: the registry rejected the credentials of me"
    )
    assert session.calls == [
        ("get", f"https://{HOST}/v2/", None, 30),
        ("get", token_url("o/img"), BASIC, 30),
    ]
