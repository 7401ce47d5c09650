"""Unit tests of the planning and building of docker_build: the dependency
graph, the build order, the propagation of rebuilds, --explain, and the
parallel builds.

No registry: look-ups come from a dict. No real docker: subprocess.run is
replaced, or a small shell script named docker comes first on the PATH of
the environment handed to the builds.
"""

import argparse
import datetime
import os
import stat
from typing import ClassVar

import pytest
from conftest import load_tool
from old.fakes import CREATED, FakeContexts, FakeRegistry, info

db = load_tool()

UTC = datetime.timezone.utc
AMD = ("linux/amd64",)
GHCR = ["ghcr.io/o"]
REPOS = ["docker.io/user", "ghcr.io/o"]
FORCED = "Rebuild triggered by command line"
MISSING = "Image missing in repository"


def make_image(name, base="NONE", directory="d", platforms=AMD):
    return db.Image(
        name, db.image_add_tag(name), directory, db.image_add_tag(base), (), platforms
    )


def fatal_message(func, *args, code=1):
    """Call func, expect db.Fatal with the exit code; return its message."""
    with pytest.raises(db.Fatal) as info:
        func(*args)
    assert info.value.code == code
    return info.value.message


@pytest.fixture
def context():
    """Every build directory last changed a second before CREATED, by a
    commit."""
    return FakeContexts((CREATED.timestamp() - 1, db.REASON_GIT))


def graph_of(images, repositories=GHCR):
    return db.dependency_graph([db.image_targets(i, repositories) for i in images])


# ----------------------------------------------------------------------------
# dependency_graph and base_key
# ----------------------------------------------------------------------------


def test_dependency_graph_per_repository_expansion():
    images = [
        make_image("base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("braced", "${DOCKER_REPOSITORY}/app"),
        make_image("other", "$DOCKER_REPOSITORY/elsewhere"),
    ]
    expected = [frozenset(), frozenset({0}), frozenset({1}), frozenset()]
    assert graph_of(images, REPOS) == expected
    assert graph_of(images, GHCR) == expected


def test_dependency_graph_base_in_one_repository_only():
    """The base image exists in ghcr.io/o only: the ghcr.io/o target of app
    is built on it, so app is."""
    images = [
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("ghcr.io/o/base"),
        make_image("quay.io/q/base"),
    ]
    assert graph_of(images, REPOS) == [frozenset({1}), frozenset(), frozenset()]
    assert graph_of(images, ["docker.io/user"]) == [frozenset()] * 3


def test_dependency_graph_two_producers():
    images = [
        make_image("docker.io/user/base"),
        make_image("ghcr.io/o/base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
    ]
    assert graph_of(images, REPOS) == [frozenset(), frozenset(), frozenset({0, 1})]


def test_dependency_graph_full_name_bases():
    images = [
        make_image("ghcr.io/o/tool", "ghcr.io/o/base"),
        make_image("base"),
        make_image("docker.io/user/x", "ghcr.io/o/tool"),
        make_image("y", "ghcr.io/o/tool:latest"),
    ]
    assert graph_of(images, GHCR) == [
        frozenset({1}),
        frozenset(),
        frozenset({0}),
        frozenset({0}),
    ]


def test_dependency_graph_tags_must_match():
    images = [
        make_image("base"),
        make_image("base:1"),
        make_image("one", "$DOCKER_REPOSITORY/base:1"),
        make_image("two", "$DOCKER_REPOSITORY/base:2"),
        make_image("latest", "$DOCKER_REPOSITORY/base"),
    ]
    assert graph_of(images) == [
        frozenset(),
        frozenset(),
        frozenset({1}),
        frozenset(),
        frozenset({0}),
    ]


def test_dependency_graph_untagged_bases_and_other_images():
    images = [
        make_image("a", "NONE"),
        make_image("b", "scratch"),
        make_image("c", "alpine"),
        make_image("d", "$DOCKER_REPOSITORY/a"),
    ]
    assert graph_of(images) == [frozenset(), frozenset(), frozenset(), frozenset({0})]


def test_dependency_graph_self_reference_ignored():
    """An image built on its own previous version is not its own base."""
    images = [make_image("base", "$DOCKER_REPOSITORY/base"), make_image("x")]
    assert graph_of(images, REPOS) == [frozenset(), frozenset()]
    full = [make_image("ghcr.io/o/img", "ghcr.io/o/img:latest")]
    assert graph_of(full) == [frozenset()]


def test_dependency_graph_spellings_of_one_image():
    images = [
        make_image("base"),  # docker.io/user/base:latest
        make_image("a", "user/base"),
        make_image("b", "index.docker.io/user/base:latest"),
        make_image("c", "docker.io/user/base"),
        make_image("docker.io/library/debian"),
        make_image("d", "debian"),
        make_image("e", "docker.io/debian:latest"),
        make_image("f", "ghcr.io/user/base"),  # another registry
    ]
    assert graph_of(images, ["docker.io/user"]) == [
        frozenset(),
        frozenset({0}),
        frozenset({0}),
        frozenset({0}),
        frozenset(),
        frozenset({4}),
        frozenset({4}),
        frozenset(),
    ]


def test_dependency_graph_empty():
    assert db.dependency_graph([]) == []


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("NONE", None),
        ("scratch", None),
        ("a___b:latest", None),
        ("x", ("registry-1.docker.io", "library/x", "latest")),
        ("docker.io/x:latest", ("registry-1.docker.io", "library/x", "latest")),
        ("index.docker.io/library/x", ("registry-1.docker.io", "library/x", "latest")),
        ("ghcr.io/o/x:1", ("ghcr.io", "o/x", "1")),
        ("localhost:5000/x:2", ("localhost:5000", "x", "2")),
    ],
)
def test_base_key(base, expected):
    image = db.Image("i", "i:latest", "d", base, (), ("linux/amd64",))
    assert db.Target(image, None, "ghcr.io/o/i:latest", base).base_key == expected


# ----------------------------------------------------------------------------
# build_order
# ----------------------------------------------------------------------------


def names(*letters):
    return [make_image(letter) for letter in letters]


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ([], []),
        ([set(), set(), set(), set()], [0, 1, 2, 3]),
        # a dependent listed before its base moves right after it
        ([{1}, set(), set()], [1, 0, 2]),
        ([{3}, set(), set(), set()], [1, 2, 3, 0]),
        ([{2}, set(), set(), {0}], [1, 2, 0, 3]),
        # a chain listed the wrong way round
        ([{1}, {2}, set()], [2, 1, 0]),
        # diamonds, in file order and reversed
        ([set(), {0}, {0}, {1, 2}], [0, 1, 2, 3]),
        ([{1, 2}, {3}, {3}, set()], [3, 1, 2, 0]),
        ([{2, 1}, {3}, {3}, set(), set()], [3, 1, 2, 0, 4]),
        # independent images keep their places around a moved one
        ([set(), {3}, set(), set(), set()], [0, 2, 3, 1, 4]),
    ],
)
def test_build_order(graph, expected):
    graph = [frozenset(bases) for bases in graph]
    images = names(*"abcde"[: len(graph)])
    assert db.build_order(graph, images) == expected


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ([{1}, {0}], "Dependency cycle: a -> b -> a"),
        ([{1}, {2}, {0}], "Dependency cycle: a -> b -> c -> a"),
        ([{2}, {0}, {1}], "Dependency cycle: a -> c -> b -> a"),
        # the images depending on a cycle are not part of it
        ([{1}, {2}, {1}, set()], "Dependency cycle: b -> c -> b"),
        ([set(), {2}, {1}, {2}], "Dependency cycle: b -> c -> b"),
    ],
)
def test_build_order_cycle(graph, message):
    graph = [frozenset(bases) for bases in graph]
    images = names(*"abcd"[: len(graph)])
    assert fatal_message(db.build_order, graph, images) == message


def test_build_order_cycle_of_images(context):
    """From the configuration: the names as written, before any look-up."""
    images = [
        make_image("top", "$DOCKER_REPOSITORY/a:1"),
        make_image("a:1", "$DOCKER_REPOSITORY/b:2"),
        make_image("b:2", "$DOCKER_REPOSITORY/a:1"),
    ]
    registry = FakeRegistry()
    assert fatal_message(
        db.plan_rebuilds, images, REPOS, True, [], registry, context
    ) == ("Dependency cycle: a:1 -> b:2 -> a:1")
    assert registry.calls == []


# ----------------------------------------------------------------------------
# plan_rebuilds
# ----------------------------------------------------------------------------


def reasons(plan):
    """(image name, reason) in the order of the plan."""
    return [(d.image.name, d.reason) for d in plan.decisions]


UP_TO_DATE = info("sha256:b")


def test_plan_rebuilds_propagates_without_lookups(context):
    images = [make_image("app", "$DOCKER_REPOSITORY/base"), make_image("base")]
    registry = FakeRegistry({"ghcr.io/o/base:latest": None})
    plan = db.plan_rebuilds(images, GHCR, False, [], registry, context)
    assert reasons(plan) == [
        ("base", MISSING),
        ("app", "Base image will be rebuilt: ghcr.io/o/base:latest"),
    ]
    assert [(d.position, d.bases) for d in plan.decisions] == [
        (1, frozenset()),
        (0, frozenset({1})),
    ]
    assert plan.decisions[1] == db.Decision(
        images[0],
        0,
        db.image_targets(images[0], GHCR),
        "Base image will be rebuilt: ghcr.io/o/base:latest",
        frozenset({1}),
        rebuilt_bases=("ghcr.io/o/base:latest",),
    )
    # app's missing base is never looked up: it will be built first
    assert registry.calls == ["NONE", "ghcr.io/o/base:latest"]
    # (though asked for up front, before the plan knew)
    assert registry.prefetched == [
        ("ghcr.io/o/base:latest", AMD),
        ("ghcr.io/o/app:latest", AMD),
        ("NONE", AMD),
        ("ghcr.io/o/base:latest", AMD),
    ]
    assert context.prefetched == ["app", "base"]


def test_plan_rebuilds_transitive(context):
    images = [
        make_image("top:3", "$DOCKER_REPOSITORY/mid:2"),
        make_image("mid:2", "$DOCKER_REPOSITORY/base:1"),
        make_image("base:1"),
        make_image("other"),
    ]
    registry = FakeRegistry({"ghcr.io/o/other:latest": UP_TO_DATE})
    plan = db.plan_rebuilds(images, GHCR, False, ["base:1"], registry, context)
    assert reasons(plan) == [
        ("base:1", FORCED),
        ("mid:2", "Base image will be rebuilt: ghcr.io/o/base:1"),
        ("top:3", "Base image will be rebuilt: ghcr.io/o/mid:2"),
        ("other", None),
    ]
    assert registry.calls == ["NONE", "ghcr.io/o/other:latest"]
    # the forced image is not asked for up front
    assert registry.prefetched == [
        ("ghcr.io/o/mid:2", AMD),
        ("ghcr.io/o/top:3", AMD),
        ("ghcr.io/o/base:1", AMD),
        ("ghcr.io/o/mid:2", AMD),
        ("NONE", AMD),
        ("ghcr.io/o/other:latest", AMD),
    ]
    assert context.prefetched == ["top:3", "mid:2", "other"]


def test_plan_rebuilds_up_to_date_base_and_dependent(context):
    images = [make_image("base"), make_image("app", "$DOCKER_REPOSITORY/base")]
    registry = FakeRegistry(
        {
            "ghcr.io/o/base:latest": info("sha256:b"),
            "ghcr.io/o/app:latest": info("sha256:b", "sha256:a"),
        }
    )
    plan = db.plan_rebuilds(images, GHCR, False, [], registry, context)
    assert reasons(plan) == [("base", None), ("app", None)]
    assert registry.calls == [
        "NONE",
        "ghcr.io/o/base:latest",
        "ghcr.io/o/base:latest",
        "ghcr.io/o/app:latest",
    ]
    assert context.calls == ["base", "app"]


def test_plan_rebuilds_dependent_checked_on_its_own(context):
    """A base that is not rebuilt leaves its dependent to its own checks."""
    images = [make_image("base"), make_image("app", "$DOCKER_REPOSITORY/base")]
    registry = FakeRegistry(
        {
            "ghcr.io/o/base:latest": info("sha256:new"),
            "ghcr.io/o/app:latest": info("sha256:old", "sha256:a"),
        }
    )
    plan = db.plan_rebuilds(images, GHCR, False, [], registry, context)
    assert reasons(plan) == [("base", None), ("app", "Base image has changed")]


def test_plan_rebuilds_forcing_the_base_image_propagates(context):
    images = [make_image("base"), make_image("app", "$DOCKER_REPOSITORY/base")]
    registry = FakeRegistry()
    plan = db.plan_rebuilds(images, REPOS, False, ["base:latest"], registry, context)
    assert reasons(plan) == [
        ("base", FORCED),
        ("app", "Base image will be rebuilt: docker.io/user/base:latest"),
    ]
    assert registry.calls == []


def test_plan_rebuilds_forcing_a_base_name_propagates(context):
    """Naming a base forces the images built on it, and so their own
    dependents."""
    images = [
        make_image("app", "alpine"),
        make_image("top", "$DOCKER_REPOSITORY/app"),
        make_image("lone", "debian"),
    ]
    registry = FakeRegistry(
        {"debian:latest": UP_TO_DATE, "ghcr.io/o/lone:latest": UP_TO_DATE}
    )
    plan = db.plan_rebuilds(images, GHCR, False, ["alpine:latest"], registry, context)
    assert reasons(plan) == [
        ("app", FORCED),
        ("top", "Base image will be rebuilt: ghcr.io/o/app:latest"),
        ("lone", None),
    ]


def test_plan_rebuilds_forcing_a_repository_base_name(context):
    images = [
        make_image("base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("top", "$DOCKER_REPOSITORY/app"),
    ]
    registry = FakeRegistry({"ghcr.io/o/base:latest": UP_TO_DATE})
    forced = ["$DOCKER_REPOSITORY/base:latest"]
    plan = db.plan_rebuilds(images, GHCR, False, forced, registry, context)
    assert reasons(plan) == [
        ("base", None),
        ("app", FORCED),
        ("top", "Base image will be rebuilt: ghcr.io/o/app:latest"),
    ]


def test_plan_rebuilds_all_with_excluded_dependent(context):
    images = [
        make_image("base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("tool"),
    ]
    registry = FakeRegistry()
    plan = db.plan_rebuilds(images, GHCR, True, ["app:latest"], registry, context)
    assert reasons(plan) == [
        ("base", FORCED),
        ("app", "Base image will be rebuilt: ghcr.io/o/base:latest"),
        ("tool", FORCED),
    ]
    assert registry.calls == []


def test_plan_rebuilds_all_with_excluded_base(context):
    images = [make_image("base"), make_image("app", "$DOCKER_REPOSITORY/base")]
    registry = FakeRegistry({"ghcr.io/o/base:latest": UP_TO_DATE})
    plan = db.plan_rebuilds(images, GHCR, True, ["base:latest"], registry, context)
    assert reasons(plan) == [("base", None), ("app", FORCED)]


def test_plan_rebuilds_names_the_matching_repository_base(context):
    """Only the ghcr.io/o target of app is built on an image of the file."""
    images = [
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("ghcr.io/o/base"),
    ]
    registry = FakeRegistry({"ghcr.io/o/base:latest": None})
    plan = db.plan_rebuilds(images, REPOS, False, [], registry, context)
    base, app = plan.decisions
    assert (base.image.name, base.reason) == ("ghcr.io/o/base", MISSING)
    assert (app.image.name, bool(app.rebuilt_bases), app.bases) == ("app", True, {1})
    assert app.reason_for(app.targets[1]) == (
        "Base image will be rebuilt: ghcr.io/o/base:latest"
    )
    assert registry.calls == ["NONE", "ghcr.io/o/base:latest"]


def test_plan_rebuilds_never_names_a_base_that_is_not_rebuilt(context):
    images = [
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("ghcr.io/o/base"),
    ]
    registry = FakeRegistry({"ghcr.io/o/base:latest": None})
    plan = db.plan_rebuilds(images, REPOS, False, [], registry, context)
    app = plan.decisions[1]
    assert [app.reason_for(target) for target in app.targets] == [
        "Base image will be rebuilt: ghcr.io/o/base:latest",
        "Base image will be rebuilt: ghcr.io/o/base:latest",
    ]


def test_plan_rebuilds_names_the_base_as_spelled(context):
    images = [make_image("base"), make_image("app", "user/base")]
    registry = FakeRegistry()
    forced = ["app:latest"]
    plan = db.plan_rebuilds(images, ["docker.io/user"], True, forced, registry, context)
    assert reasons(plan) == [
        ("base", FORCED),
        ("app", "Base image will be rebuilt: user/base:latest"),
    ]


def test_plan_rebuilds_explain_keeps_the_evidence(context):
    images = [make_image("base"), make_image("app", "$DOCKER_REPOSITORY/base")]
    registry = FakeRegistry(
        {
            "docker.io/user/base:latest": UP_TO_DATE,
            "ghcr.io/o/base:latest": None,
        }
    )
    plan = db.plan_rebuilds(images, REPOS, False, [], registry, context, explain=True)
    checked = db.Evidence(CREATED.timestamp(), True, CREATED.timestamp() - 1, "commit")
    assert [(d.reason, d.evidence) for d in plan.decisions] == [
        (MISSING, (checked, db.Evidence())),
        ("Base image will be rebuilt: docker.io/user/base:latest", ()),
    ]


# ----------------------------------------------------------------------------
# --explain: explain, describe_evidence, timestamp
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (CREATED.timestamp(), "2024-01-02T03:04:05Z"),
        (1767225600, "2026-01-01T00:00:00Z"),
        (1767225600.75, "2026-01-01T00:00:00Z"),
        (1767225599.999, "2025-12-31T23:59:59Z"),
    ],
)
def test_timestamp(seconds, expected):
    assert db.timestamp(seconds) == expected


T_CREATED = CREATED.timestamp()
T_CHANGED = 1767225600  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("evidence", "finding", "expected"),
    [
        (db.Evidence(), MISSING, "image missing; Image missing in repository"),
        (
            db.Evidence(T_CREATED, True, T_CREATED - 1, "commit"),
            None,
            "image created 2024-01-02T03:04:05Z; base layer found; "
            "context changed 2024-01-02T03:04:04Z (commit); up to date",
        ),
        (
            db.Evidence(T_CREATED, True, T_CHANGED, "mtime"),
            "Files in docker context more recent than image",
            "image created 2024-01-02T03:04:05Z; base layer found; "
            "context changed 2026-01-01T00:00:00Z (mtime); "
            "Files in docker context more recent than image",
        ),
        (
            db.Evidence(T_CREATED, False),
            "Base image has changed",
            "image created 2024-01-02T03:04:05Z; base layer not found; "
            "Base image has changed",
        ),
    ],
)
def test_describe_evidence(evidence, finding, expected):
    assert db.describe_evidence(evidence, finding) == expected


def test_explain_every_image_on_stderr(context, capsys):
    images = [
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("base"),
        make_image("tool"),
        make_image("ghcr.io/o/full"),
    ]
    registry = FakeRegistry(
        {
            "docker.io/user/base:latest": UP_TO_DATE,
            "ghcr.io/o/base:latest": UP_TO_DATE,
            "docker.io/user/app:latest": info("sha256:b", "sha256:a"),
            "ghcr.io/o/app:latest": info("sha256:x", "sha256:a"),
            "ghcr.io/o/full:latest": None,
        }
    )
    plan = db.plan_rebuilds(
        images, REPOS, False, ["tool:latest"], registry, context, True
    )
    db.explain(plan)
    captured = capsys.readouterr()
    assert captured.out == ""
    checked = (
        "image created 2024-01-02T03:04:05Z; base layer found; "
        "context changed 2024-01-02T03:04:04Z (commit); up to date"
    )
    # each checked target shows its own finding; the first target that
    # needs a rebuild decides for all of them
    assert captured.err == (
        f"docker.io/user/base: {checked}\n"
        f"ghcr.io/o/base: {checked}\n"
        f"docker.io/user/app: {checked}\n"
        "ghcr.io/o/app: image created 2024-01-02T03:04:05Z; base layer not found; "
        "context changed 2024-01-02T03:04:04Z (commit); Base image has changed\n"
        "docker.io/user/tool: not checked; Rebuild triggered by command line\n"
        "ghcr.io/o/tool: not checked; Rebuild triggered by command line\n"
        "ghcr.io/o/full: image missing; Image missing in repository\n"
    )


def test_explain_unchecked_targets(context, capsys):
    """Forced, base rebuilt, or after the deciding target: not checked,
    each target with its own reason."""
    images = [
        make_image("base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("top", "$DOCKER_REPOSITORY/app"),
        make_image("lone"),
        make_image("fine"),
    ]
    registry = FakeRegistry(
        {
            "docker.io/user/lone:latest": None,
            "docker.io/user/fine:latest": UP_TO_DATE,
            "ghcr.io/o/fine:latest": UP_TO_DATE,
        }
    )
    forced = ["base:latest"]
    plan = db.plan_rebuilds(images, REPOS, False, forced, registry, context, True)
    db.explain(plan)
    checked = (
        "image created 2024-01-02T03:04:05Z; base layer found; "
        "context changed 2024-01-02T03:04:04Z (commit); up to date"
    )
    assert capsys.readouterr().err == (
        "docker.io/user/base: not checked; Rebuild triggered by command line\n"
        "ghcr.io/o/base: not checked; Rebuild triggered by command line\n"
        "docker.io/user/app: not checked; "
        "Base image will be rebuilt: docker.io/user/base:latest\n"
        "ghcr.io/o/app: not checked; "
        "Base image will be rebuilt: ghcr.io/o/base:latest\n"
        "docker.io/user/top: not checked; "
        "Base image will be rebuilt: docker.io/user/app:latest\n"
        "ghcr.io/o/top: not checked; "
        "Base image will be rebuilt: ghcr.io/o/app:latest\n"
        "docker.io/user/lone: image missing; Image missing in repository\n"
        "ghcr.io/o/lone: not checked; Image missing in repository\n"
        f"docker.io/user/fine: {checked}\n"
        f"ghcr.io/o/fine: {checked}\n"
    )
    # ghcr.io/o/lone is never looked up
    assert registry.calls == [
        "NONE",
        "docker.io/user/lone:latest",
        "NONE",
        "docker.io/user/fine:latest",
        "NONE",
        "ghcr.io/o/fine:latest",
    ]


def test_explain_a_decision_without_evidence(capsys):
    """An image left unchecked and not rebuilt is up to date."""
    image = make_image("img")
    targets = db.image_targets(image, REPOS)
    db.explain(db.Plan((db.Decision(image, 0, targets, None, frozenset()),)))
    assert capsys.readouterr().err == (
        "docker.io/user/img: not checked; up to date\n"
        "ghcr.io/o/img: not checked; up to date\n"
    )


@pytest.mark.parametrize("explain", [False, True])
def test_plan_rebuilds_explain_checks_no_more_targets(context, explain):
    """-v cannot change the outcome: the targets after the deciding one
    are not looked up (ghcr.io/o/app's base is missing: a look-up would
    fail the run)."""
    images = [make_image("app", "$DOCKER_REPOSITORY/base")]
    registry = FakeRegistry(
        {
            "docker.io/user/base:latest": UP_TO_DATE,
            "docker.io/user/app:latest": info("sha256:x", "sha256:a"),
        }
    )
    plan = db.plan_rebuilds(images, REPOS, False, [], registry, context, explain)
    (app,) = plan.decisions
    assert (app.reason, app.findings) == (
        "Base image has changed",
        ("Base image has changed",),
    )
    assert registry.calls == [
        "docker.io/user/base:latest",
        "docker.io/user/app:latest",
    ]
    assert context.calls == (["app"] if explain else [])
    # all was asked for up front, in the order of the checks; what is not
    # waited for cannot fail the run
    assert registry.prefetched == [
        ("docker.io/user/base:latest", AMD),
        ("docker.io/user/app:latest", AMD),
        ("ghcr.io/o/base:latest", AMD),
        ("ghcr.io/o/app:latest", AMD),
    ]
    assert context.prefetched == ["app"]


# ----------------------------------------------------------------------------
# --build-jobs: positive_int and the command line
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("8", 8), ("12", 12)])
def test_positive_int(text, value):
    assert db.positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "x", "", "1.5", "-0"])
def test_positive_int_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        db.positive_int(text)
    assert str(error.value) == f"not a positive whole number: '{text}'"


def test_parser_defaults_and_options():
    parser = db.build_parser()
    args = parser.parse_args([])
    assert (args.build_jobs, args.explain) == (1, False)
    args = parser.parse_args(["--build-jobs", "3", "-v", "img"])
    assert (args.build_jobs, args.explain, args.image) == (3, True, ["img"])
    assert parser.parse_args(["--explain"]).explain is True


def test_parser_jobs_and_no_cache():
    parser = db.build_parser()
    args = parser.parse_args([])
    assert (args.jobs, args.no_cache) == (8, False)
    assert db.DEFAULT_JOBS == 8
    args = parser.parse_args(["--jobs", "3", "--no-cache"])
    assert (args.jobs, args.no_cache) == (3, True)
    assert parser.parse_args(["-j", "1"]).jobs == 1
    assert parser.parse_args(["-j2"]).jobs == 2


@pytest.mark.parametrize("option", ["--jobs", "-j"])
def test_main_jobs_invalid(capsys, option):
    with pytest.raises(SystemExit) as info:
        db.main([option, "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "docker_build: error: argument --jobs/-j: not a positive whole number: '0'\n"
    )


@pytest.mark.parametrize("value", ["0", "x"])
def test_main_build_jobs_invalid(capsys, value):
    with pytest.raises(SystemExit) as info:
        db.main(["--build-jobs", value])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "docker_build: error: argument --build-jobs: "
        f"not a positive whole number: '{value}'\n"
    )


# ----------------------------------------------------------------------------
# build_jobs
# ----------------------------------------------------------------------------


def forced_plan(spec, repositories=GHCR, forced=None):
    """A plan of the (name, base) images: all forced unless `forced`
    names some."""
    images = [make_image(name, base) for name, base in spec]
    return db.plan_rebuilds(
        images,
        repositories,
        forced is None,
        forced or [],
        FakeRegistry(),
        FakeContexts(),
    )


def test_build_jobs_dependencies():
    plan = forced_plan(
        [
            ("app", "$DOCKER_REPOSITORY/base"),
            ("base", "NONE"),
            ("tool", "NONE"),
            ("top", "$DOCKER_REPOSITORY/app"),
            ("two", "$DOCKER_REPOSITORY/base"),
        ],
        REPOS,
    )
    jobs = db.build_jobs(plan)
    shown = [job.target.shown_name for job in jobs]
    assert shown == [
        f"{repository}/{name}"
        for name in ("base", "app", "tool", "top", "two")
        for repository in REPOS
    ]
    by_name = {job.target.shown_name: job for job in jobs}

    def after(name):
        return [job.target.shown_name for job in by_name[name].after]

    assert after("docker.io/user/base") == []
    assert after("ghcr.io/o/tool") == []
    # every target waits for every target of its base image
    for repository in REPOS:
        assert after(f"{repository}/app") == ["docker.io/user/base", "ghcr.io/o/base"]
        assert after(f"{repository}/two") == ["docker.io/user/base", "ghcr.io/o/base"]
        assert after(f"{repository}/top") == ["docker.io/user/app", "ghcr.io/o/app"]
    assert {(job.state, job.code, job.reason) for job in jobs} == {
        ("waiting", 0, FORCED)
    }
    assert by_name["ghcr.io/o/app"].after[1] is by_name["ghcr.io/o/base"]


def test_build_jobs_base_not_rebuilt():
    base, app = make_image("base"), make_image("app", "$DOCKER_REPOSITORY/base")
    plan = db.Plan(
        (
            db.Decision(base, 0, db.image_targets(base, GHCR), None, frozenset()),
            db.Decision(app, 1, db.image_targets(app, GHCR), "why", frozenset({0})),
        )
    )
    (job,) = db.build_jobs(plan)
    assert (job.target.shown_name, job.reason, job.after) == (
        "ghcr.io/o/app",
        "why",
        [],
    )


def test_build_jobs_nothing_to_rebuild():
    image = make_image("img")
    plan = db.Plan(
        (db.Decision(image, 0, db.image_targets(image, GHCR), None, frozenset()),)
    )
    assert db.build_jobs(plan) == []


# ----------------------------------------------------------------------------
# rebuild_in_parallel with a docker double
# ----------------------------------------------------------------------------

FAKE_DOCKER = """\
#!/bin/sh
# A docker double: logs the build in $STATE, prints a line on stdout and
# one on stderr, and exits with the tag's version ("latest" counts as 0).
# NEED_<name>: a file of $STATE that must exist when the build starts.
# WAIT_<name>: a file of $STATE to wait for, at most $STEPS * 0.05 s.
while [ $# -gt 0 ]; do
    if [ "$1" = --tag ]; then tag=$2; fi
    shift
done
name=${tag##*/}
name=${name%%:*}
code=${tag##*:}
if [ "$code" = latest ]; then code=0; fi
echo "$name" >>"$STATE/log"
touch "$STATE/$name.started"
eval "need=\\${NEED_$name:-}"
if [ -n "$need" ] && [ ! -e "$STATE/$need" ]; then
    echo "started without $need"
    exit 8
fi
eval "wait=\\${WAIT_$name:-}"
if [ -n "$wait" ]; then
    steps=0
    while [ ! -e "$STATE/$wait" ]; do
        steps=$((steps + 1))
        if [ "$steps" -gt "${STEPS:-200}" ]; then
            echo "no $wait"
            exit 9
        fi
        sleep 0.05
    done
fi
echo "building $tag"
echo "warning from $name" >&2
if [ "$code" = 0 ]; then touch "$STATE/$name.done"; fi
exit "$code"
"""


@pytest.fixture
def docker(tmp_path):
    """The environment for the builds: the docker double first on PATH;
    `started()` lists the builds in the order they started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "state"
    state.mkdir()

    class Docker:
        environ: ClassVar[dict] = {
            "PATH": str(bin_dir) + os.pathsep + os.environ["PATH"],
            "STATE": str(state),
        }

        @staticmethod
        def started():
            log = state / "log"
            return log.read_text().split() if log.exists() else []

    return Docker


def block(shown, reason=FORCED, output=True):
    """What a build prints: its header, then the double's two lines."""
    text = f"*** {shown}\nReason: {reason}\n\n"
    if output:
        tag = shown if ":" in shown.rpartition("/")[2] else shown + ":latest"
        name = tag.rpartition("/")[2].partition(":")[0]
        text += f"[{shown}] building {tag}\n[{shown}] warning from {name}\n"
    return text


def summary(built="-", failed="-", skipped="-"):
    return f"\nBuilt: {built}\nFailed: {failed}\nSkipped: {skipped}\n"


def test_rebuild_in_parallel_one_worker(docker, capsys):
    plan = forced_plan(
        [("a:0", "NONE"), ("b:0", "$DOCKER_REPOSITORY/a:0"), ("c:0", "NONE")],
        forced=["a:0", "c:0"],
    )
    assert db.rebuild_in_parallel(plan, 1, docker.environ) == 0
    assert capsys.readouterr().out == (
        block("ghcr.io/o/a:0")
        + block("ghcr.io/o/b:0", "Base image will be rebuilt: ghcr.io/o/a:0")
        + block("ghcr.io/o/c:0")
        + summary("ghcr.io/o/a:0, ghcr.io/o/b:0, ghcr.io/o/c:0")
    )
    assert docker.started() == ["a", "b", "c"]


def test_rebuild_in_parallel_failure_skips_dependents(docker, capsys):
    plan = forced_plan(
        [
            ("c:0", "$DOCKER_REPOSITORY/b:0"),
            ("a:7", "NONE"),
            ("b:0", "$DOCKER_REPOSITORY/a:7"),
            ("d:0", "NONE"),
            ("e:3", "NONE"),
        ]
    )
    assert db.rebuild_in_parallel(plan, 1, docker.environ) == 7
    assert capsys.readouterr().out == (
        block("ghcr.io/o/a:7")
        + block("ghcr.io/o/d:0")
        + block("ghcr.io/o/e:3")
        + summary(
            "ghcr.io/o/d:0",
            "ghcr.io/o/a:7 (exit 7), ghcr.io/o/e:3 (exit 3)",
            "ghcr.io/o/b:0, ghcr.io/o/c:0",
        )
    )
    assert docker.started() == ["a", "d", "e"]


def test_rebuild_in_parallel_concurrent_failure(docker, capsys):
    plan = forced_plan(
        [
            ("a:7", "NONE"),
            ("b:0", "$DOCKER_REPOSITORY/a:7"),
            ("c:0", "$DOCKER_REPOSITORY/b:0"),
            ("d:0", "NONE"),
            ("e:0", "$DOCKER_REPOSITORY/d:0"),
        ]
    )
    assert db.rebuild_in_parallel(plan, 3, docker.environ) == 7
    out = capsys.readouterr().out
    closing = summary(
        "ghcr.io/o/d:0, ghcr.io/o/e:0",
        "ghcr.io/o/a:7 (exit 7)",
        "ghcr.io/o/b:0, ghcr.io/o/c:0",
    )
    expected = (
        block("ghcr.io/o/a:7")
        + block("ghcr.io/o/d:0")
        + block("ghcr.io/o/e:0", "Rebuild triggered by command line")
        + closing
    )
    assert sorted(out.splitlines()) == sorted(expected.splitlines())
    assert out.endswith(closing)
    # each build's two lines stay together
    assert (
        "[ghcr.io/o/e:0] building ghcr.io/o/e:0\n[ghcr.io/o/e:0] warning from e\n"
        in out
    )
    assert sorted(docker.started()) == ["a", "d", "e"]
    assert docker.started().index("d") < docker.started().index("e")


def test_rebuild_in_parallel_starts_dependent_as_soon_as_base_is_built(docker, capsys):
    """With two workers: a and c run together (a waits until c has
    started); b starts once a is built, while c still runs (c waits until
    b has started)."""
    plan = forced_plan(
        [("a:0", "NONE"), ("b:0", "$DOCKER_REPOSITORY/a:0"), ("c:0", "NONE")]
    )
    environ = {
        **docker.environ,
        "WAIT_a": "c.started",
        "NEED_b": "a.done",
        "WAIT_c": "b.started",
    }
    assert db.rebuild_in_parallel(plan, 2, environ) == 0
    out = capsys.readouterr().out
    expected = (
        block("ghcr.io/o/a:0")
        + block("ghcr.io/o/b:0")
        + block("ghcr.io/o/c:0")
        + summary("ghcr.io/o/a:0, ghcr.io/o/b:0, ghcr.io/o/c:0")
    )
    assert sorted(out.splitlines()) == sorted(expected.splitlines())
    assert out.endswith(summary("ghcr.io/o/a:0, ghcr.io/o/b:0, ghcr.io/o/c:0"))
    started = docker.started()
    assert sorted(started) == ["a", "b", "c"]
    assert started.index("a") < started.index("b")


def test_rebuild_in_parallel_at_most_workers(docker, capsys):
    """With one worker, c never runs while a does: a gives up waiting."""
    plan = forced_plan([("a:0", "NONE"), ("c:0", "NONE")])
    environ = {**docker.environ, "WAIT_a": "c.started", "STEPS": "4"}
    assert db.rebuild_in_parallel(plan, 1, environ) == 9
    assert capsys.readouterr().out == (
        "*** ghcr.io/o/a:0\nReason: Rebuild triggered by command line\n\n"
        "[ghcr.io/o/a:0] no c.started\n"
        + block("ghcr.io/o/c:0")
        + summary("ghcr.io/o/c:0", "ghcr.io/o/a:0 (exit 9)")
    )
    assert docker.started() == ["a", "c"]


def test_rebuild_in_parallel_every_repository(docker, capsys):
    plan = forced_plan(
        [("a:4", "NONE"), ("b:0", "$DOCKER_REPOSITORY/a:4"), ("c", "NONE")], REPOS
    )
    assert db.rebuild_in_parallel(plan, 1, docker.environ) == 4
    assert capsys.readouterr().out == (
        block("docker.io/user/a:4")
        + block("ghcr.io/o/a:4")
        + block("docker.io/user/c")
        + block("ghcr.io/o/c")
        + summary(
            "docker.io/user/c, ghcr.io/o/c",
            "docker.io/user/a:4 (exit 4), ghcr.io/o/a:4 (exit 4)",
            "docker.io/user/b:0, ghcr.io/o/b:0",
        )
    )
    assert docker.started() == ["a", "a", "c", "c"]


def test_rebuild_in_parallel_cannot_run_docker(tmp_path, capsys):
    plan = forced_plan([("a", "NONE"), ("b", "$DOCKER_REPOSITORY/a")])
    environ = {"PATH": str(tmp_path)}
    assert db.rebuild_in_parallel(plan, 2, environ) == 1
    assert capsys.readouterr().out == (
        "*** ghcr.io/o/a\nReason: Rebuild triggered by command line\n\n"
        "[ghcr.io/o/a] Can't run docker: "
        "[Errno 2] No such file or directory: 'docker'\n"
        + summary("-", "ghcr.io/o/a (exit 1)", "ghcr.io/o/b")
    )


def test_rebuild_in_parallel_nothing_to_build(docker, capsys):
    image = make_image("img")
    plan = db.Plan(
        (db.Decision(image, 0, db.image_targets(image, GHCR), None, frozenset()),)
    )
    assert db.rebuild_in_parallel(plan, 4, docker.environ) == 0
    # quiet, for cron: no summary
    assert capsys.readouterr() == ("", "")
    assert docker.started() == []


# ----------------------------------------------------------------------------
# Every target is announced with its own base (issue: the reason names the
# image it is built on, per repository)
# ----------------------------------------------------------------------------


def test_rebuild_in_order_reason_names_each_targets_base(context, capsys):
    images = [make_image("base"), make_image("app", "$DOCKER_REPOSITORY/base")]
    forced = ["base:latest"]
    plan = db.plan_rebuilds(images, REPOS, False, forced, FakeRegistry(), context)
    db.rebuild_in_order(plan, True, {})
    assert capsys.readouterr().out == (
        "*** docker.io/user/base\nReason: Rebuild triggered by command line\n\n"
        "*** ghcr.io/o/base\nReason: Rebuild triggered by command line\n\n"
        "*** docker.io/user/app\n"
        "Reason: Base image will be rebuilt: docker.io/user/base:latest\n\n"
        "*** ghcr.io/o/app\n"
        "Reason: Base image will be rebuilt: ghcr.io/o/base:latest\n\n"
    )


def test_rebuild_in_order_each_target_names_its_own_base_transitively(context, capsys):
    images = [
        make_image("top", "$DOCKER_REPOSITORY/app"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("base"),
    ]
    forced = ["base:latest"]
    plan = db.plan_rebuilds(images, REPOS, False, forced, FakeRegistry(), context)
    assert [d.reason for d in plan.decisions] == [
        FORCED,
        "Base image will be rebuilt: docker.io/user/base:latest",
        "Base image will be rebuilt: docker.io/user/app:latest",
    ]
    db.rebuild_in_order(plan, True, {})
    assert capsys.readouterr().out == (
        "*** docker.io/user/base\nReason: Rebuild triggered by command line\n\n"
        "*** ghcr.io/o/base\nReason: Rebuild triggered by command line\n\n"
        "*** docker.io/user/app\n"
        "Reason: Base image will be rebuilt: docker.io/user/base:latest\n\n"
        "*** ghcr.io/o/app\n"
        "Reason: Base image will be rebuilt: ghcr.io/o/base:latest\n\n"
        "*** docker.io/user/top\n"
        "Reason: Base image will be rebuilt: docker.io/user/app:latest\n\n"
        "*** ghcr.io/o/top\n"
        "Reason: Base image will be rebuilt: ghcr.io/o/app:latest\n\n"
    )


def test_build_jobs_each_target_names_its_own_base():
    plan = forced_plan(
        [("base", "NONE"), ("app", "$DOCKER_REPOSITORY/base")], REPOS, ["base:latest"]
    )
    assert [(j.target.shown_name, j.reason) for j in db.build_jobs(plan)] == [
        ("docker.io/user/base", FORCED),
        ("ghcr.io/o/base", FORCED),
        (
            "docker.io/user/app",
            "Base image will be rebuilt: docker.io/user/base:latest",
        ),
        ("ghcr.io/o/app", "Base image will be rebuilt: ghcr.io/o/base:latest"),
    ]


def test_rebuild_in_parallel_each_target_names_its_own_base(docker, capsys):
    plan = forced_plan(
        [("a", "NONE"), ("b", "$DOCKER_REPOSITORY/a")], REPOS, ["a:latest"]
    )
    assert db.rebuild_in_parallel(plan, 1, docker.environ) == 0
    assert capsys.readouterr().out == (
        block("docker.io/user/a")
        + block("ghcr.io/o/a")
        + block(
            "docker.io/user/b", "Base image will be rebuilt: docker.io/user/a:latest"
        )
        + block("ghcr.io/o/b", "Base image will be rebuilt: ghcr.io/o/a:latest")
        + summary("docker.io/user/a, ghcr.io/o/a, docker.io/user/b, ghcr.io/o/b")
    )


# ----------------------------------------------------------------------------
# main: the whole run
# ----------------------------------------------------------------------------


@pytest.fixture
def workdir(monkeypatch, tmp_path):
    """An empty environment of the tool in tmp_path; write(config, dirs)."""
    for key in list(os.environ):
        if key.startswith(("DOCKER_LOGIN", "DOCKER_REPOSITORY")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DOCKER_REPOSITORY", "ghcr.io/o")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(db, "fetch_image", lambda *a: pytest.fail("look-up"))

    def write(config, *dirs):
        for directory in dirs:
            (tmp_path / directory).mkdir()
            (tmp_path / directory / "Dockerfile").write_text("FROM alpine\n")
        (tmp_path / "docker_images").write_text(config)

    return write


APP_AND_BASE = "app\tapp\t$DOCKER_REPOSITORY/base\nbase\tbase\tNONE\n"


@pytest.mark.parametrize("jobs", [[], ["--build-jobs", "4"]])
def test_main_dry_run_propagates(workdir, capsys, jobs):
    workdir(APP_AND_BASE, "app", "base")
    assert db.main(["-n", *jobs, "base"]) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        "*** ghcr.io/o/base\nReason: Rebuild triggered by command line\n\n"
        "*** ghcr.io/o/app\n"
        "Reason: Base image will be rebuilt: ghcr.io/o/base:latest\n\n"
    )
    assert captured.err == ""


def test_main_dry_run_explain(workdir, capsys):
    workdir(APP_AND_BASE, "app", "base")
    assert db.main(["-n", "-v", "base"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "ghcr.io/o/base: not checked; Rebuild triggered by command line\n"
        "ghcr.io/o/app: not checked; "
        "Base image will be rebuilt: ghcr.io/o/base:latest\n"
    )


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
    """--jobs sizes the look-ups and git questions; the cache lives under
    XDG_CACHE_HOME unless --no-cache; --timeout reaches the registry; both
    are closed at the end."""
    made = []

    class Registry(db.Registry):
        def __init__(self, logins, jobs=1, cache=None, timeout=30, insecure=()):
            super().__init__(logins, jobs, cache, timeout, insecure)
            made.append(("registry", jobs, cache.path, self.timeout))

        def close(self, wait=True):
            made.append(("registry closed",))
            super().close(wait)

    class ContextChanges(db.ContextChanges):
        def __init__(self, environ, jobs=1):
            super().__init__(environ, jobs)
            made.append(("contexts", jobs))

        def close(self, wait=True):
            made.append(("contexts closed",))
            super().close(wait)

    monkeypatch.setattr(db, "Registry", Registry)
    monkeypatch.setattr(db, "ContextChanges", ContextChanges)
    workdir(APP_AND_BASE, "app", "base")
    assert db.main(["-n", "-a", *argv]) == 0
    path = str(tmp_path / "cache" / "docker_build" / "manifests.json")
    assert made == [
        ("registry", jobs, path if cached else None, timeout),
        ("contexts", jobs),
        ("contexts closed",),
        ("registry closed",),
    ]
    assert not (tmp_path / "cache").exists()  # nothing looked up: nothing kept


def test_main_dependency_cycle(workdir, capsys):
    workdir("a\ta\t$DOCKER_REPOSITORY/b\nb\tb\t$DOCKER_REPOSITORY/a\n", "a", "b")
    assert db.main(["-n", "-a"]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "Dependency cycle: a -> b -> a\n")


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_main_real_run_failure(workdir, docker, monkeypatch, capsys, jobs):
    """A failed base: its dependent is never built; docker's exit status."""
    workdir("b\tb\t$DOCKER_REPOSITORY/a:6\na:6\ta\tNONE\n", "a", "b")
    for key, value in docker.environ.items():
        monkeypatch.setenv(key, value)
    assert db.main(["-a", "--build-jobs", jobs]) == 6
    out = capsys.readouterr().out
    assert out.startswith(block("ghcr.io/o/a:6", output=False))
    assert docker.started() == ["a"]
    if jobs == "2":
        assert out.endswith(summary("-", "ghcr.io/o/a:6 (exit 6)", "ghcr.io/o/b"))
