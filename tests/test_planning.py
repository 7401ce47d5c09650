"""Planning: the targets of an image, the image graph, the build order and
its cycles, the forced images, the pure decision functions, the Planner
(prefetching, --explain evidence) and the progress line; and the reporting
of decisions (explain, describe_evidence, timestamp).

The unit tests use no registry and no git: look-ups come from a dict
(FakeRegistries) and context changes from a fixed answer (FakeContexts).
The end-to-end tests run the tool against the real registry.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import io
import os
import subprocess
import threading
import types

import pytest
from conftest import (
    AMD,
    ARM_LAYERS,
    BASE_LAYERS,
    GHCR,
    REASON_BASE,
    REASON_FILES,
    REASON_FORCED,
    REASON_GIT,
    REASON_MISSING,
    REPOS,
    T_COMMIT,
    T_IMAGE,
    T_LATER,
    World,
    announced,
    chain,
    expected_chain,
    failed,
    fatal_message,
    load_tool,
    make_image,
    multi_base,
    rebuilt,
    succeeded,
    touch_root,
    two_images,
    utc,
)
from conftest import TOOL as EXECUTABLE
from imagetools import new_layer

db = load_tool()

UTC = datetime.timezone.utc
CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
T_CREATED = CREATED.timestamp()
BOTH = ("linux/amd64", "linux/arm64")

BASE = "ghcr.io/o/base:latest"
TARGET = "ghcr.io/o/img:latest"
HUB_BASE = "docker.io/user/base:latest"
HUB_TARGET = "docker.io/user/img:latest"

FORCED = db.Cause(db.Reason.FORCED)
MISSING = db.Cause(db.Reason.MISSING)
BASE_CHANGED = db.Cause(db.Reason.BASE)
GIT = db.Cause(db.Reason.GIT)

# The digest of every build context (FakeContexts), and another one.
CONTEXT = "sha256:" + "c" * 64
OTHER_CONTEXT = "sha256:" + "e" * 64

# sha256 of the compact JSON of no options, [], and of the options of a
# target in ghcr.io/o, ["--build-arg","DOCKER_REPOSITORY=ghcr.io/o"].
NO_OPTIONS_HEX = "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
GHCR_OPTIONS_HEX = "47f8a6e2615fa6700233123f2415518c3a3e5430a23056efb4be4bcb0066d880"

# When a build directory last changed: a second before CREATED.
BY_COMMIT = db.ContextChange(T_CREATED - 1, by_commit=True)
BY_FILES = db.ContextChange(T_CREATED - 1, by_commit=False)


IMG = make_image("img", "$DOCKER_REPOSITORY/base:latest")
MULTI = make_image("img", "$DOCKER_REPOSITORY/base:latest", platforms=BOTH)
# base, and app built on it in each repository
BASE_AND_APP = (make_image("base"), make_image("app", "$DOCKER_REPOSITORY/base"))


def manifest_digest(*layers):
    """The manifest digest the fake registry gives an image with these
    layers: another layer is another manifest."""
    return "sha256:" + hashlib.sha256(" ".join(layers).encode()).hexdigest()


def info(*layers, created=CREATED):
    return db.ImageInfo(created, layers, manifest_digest(*layers))


UP_TO_DATE = info("sha256:b")
# The manifest digest of UP_TO_DATE, the base of most tests.
BASE_DIGEST = UP_TO_DATE.digest


def inputs_of(target, images=None, context=CONTEXT, base=BASE_DIGEST):
    """What a build of the target records: FakeContexts' digest of its
    context, its options, the digests of the images it pulls: its base
    (`base`, unless scratch or NONE; `images` may say otherwise), then
    `images`."""
    pulled = {} if target.base_name in db.UNTAGGED_BASES else {target.base_name: base}
    return db.Inputs(
        context, db.options_digest(target.options), {**pulled, **(images or {})}
    )


def target(image, repository="ghcr.io/o"):
    """The one target of an image for one repository."""
    (found,) = db.image_targets(image, [repository])
    return found


def key(name):
    return db.parse_reference(name).key


def never_forced(_image):
    return False


def node(image, position=0, repositories=REPOS, bases=frozenset(), forced=False):
    return db.ImageNode(
        image, position, db.image_targets(image, repositories), bases, forced
    )


# ----------------------------------------------------------------------------
# Stand-ins for Registries and ContextChanges
# ----------------------------------------------------------------------------


class FakeRegistries:
    """Registries whose look-ups come from `infos` (an ImageInfo serves
    every platform), recorded in `calls`; what is prefetched is recorded
    in `prefetched` and nothing is started."""

    def __init__(self, infos=None):
        self.infos = infos or {}
        self.calls = []
        self.pushed_calls = []
        self.prefetched = []

    def prefetch(self, wanted):
        self.prefetched.extend(wanted)
        return []

    def pushed(self, reference, platforms):
        """An image pushed by the run, asked whether it is missing before
        its dependency decides: there unless `infos` says otherwise."""
        self.pushed_calls.append(reference)
        found = self.infos.get(reference, db.NO_BASE)
        if isinstance(found, db.ImageInfo):
            return dict.fromkeys(platforms, found)
        return found

    def refusal(self, reference):
        return ""

    def lookup(self, reference, platforms):
        self.calls.append(reference)
        if reference in db.UNTAGGED_BASES:
            # the real answer for scratch and NONE (no look-up is started)
            return db.Registries.lookup(self, reference, platforms)
        assert reference in self.infos, f"unexpected look-up of {reference}"
        found = self.infos[reference]
        if isinstance(found, db.ImageInfo):
            return dict.fromkeys(platforms, found)
        return found


class FakeContexts:
    """ContextChanges where every build directory last changed as `value`
    says and every build context's digest is `digests[directory]` (CONTEXT
    for any other); the images asked when they changed are in `calls`,
    those whose digest was asked in `digested`, those asked about up front
    in `prefetched`."""

    def __init__(self, value=None, digests=None):
        self.value = value
        self.digests = digests or {}
        self.calls = []
        self.digested = []
        self.prefetched = []

    def prefetch(self, images):
        self.prefetched.extend(image.name for image in images)
        return []

    def get(self, image):
        self.calls.append(image.name)
        assert self.value is not None, f"unexpected question about {image.name}"
        return self.value

    def digest(self, image):
        self.digested.append(image.name)
        return self.digests.get(image.directory, CONTEXT)


class FailingContexts(FakeContexts):
    """Every question about when a directory changed fails as git would
    (its digest does not need git)."""

    def get(self, image):
        self.calls.append(image.name)
        raise db.Fatal(f"{image.name}: Can't get git status: fatal: broken")


@pytest.fixture
def context():
    """Every build directory last changed a second before CREATED, by a
    commit; set `.value` to change that."""
    return FakeContexts(BY_COMMIT)


@pytest.fixture
def git_fails():
    return FailingContexts()


def plan(images, repositories, registries, contexts, forced=(), all_flag=False, **kw):
    """The Planner's plan of a configuration, as a run makes it."""
    is_forced = db.forced_images(forced, images, "conf", all_flag)
    nodes = db.image_graph(images, repositories, is_forced)
    return db.Planner(registries, contexts, **kw).plan(nodes)


def reasons(made):
    """(image name, the reason of its first target) in build order."""
    return [
        (
            image.node.image.name,
            cause.text if (cause := image.decisions[0].cause) else None,
        )
        for image in made.images
    ]


# ----------------------------------------------------------------------------
# image_targets
# ----------------------------------------------------------------------------


def test_image_targets():
    assert db.image_targets(IMG, REPOS) == (
        db.Target(
            IMG,
            "docker.io/user",
            HUB_TARGET,
            HUB_BASE,
            ("--build-arg", "DOCKER_REPOSITORY=docker.io/user"),
            ("registry-1.docker.io", "user/img", "latest"),
            ("registry-1.docker.io", "user/base", "latest"),
        ),
        db.Target(
            IMG,
            "ghcr.io/o",
            TARGET,
            BASE,
            ("--build-arg", "DOCKER_REPOSITORY=ghcr.io/o"),
            ("ghcr.io", "o/img", "latest"),
            ("ghcr.io", "o/base", "latest"),
        ),
    )
    full = make_image("ghcr.io/o/img", base="$DOCKER_REPOSITORY/base:latest")
    (only,) = db.image_targets(full, REPOS)
    assert (only.repository, only.full_name, only.base_name, only.shown_name) == (
        None,
        TARGET,
        BASE,
        "ghcr.io/o/img",
    )
    tool = make_image("tool:2", base="NONE")
    (only,) = db.image_targets(tool, ["user"])
    assert (only.full_name, only.base_name, only.shown_name, only.base_key) == (
        "user/tool:2",
        "NONE",
        "user/tool:2",
        None,
    )
    assert target(IMG).shown_name == "ghcr.io/o/img"


def test_image_targets_repositories():
    """A name-only image has a target per repository; a full name one."""
    img = make_image("img", base="alpine")
    assert [t.repository for t in db.image_targets(img, REPOS)] == REPOS
    assert db.image_targets(img, []) == ()
    full = make_image("ghcr.io/o/img", base="alpine")
    assert [t.repository for t in db.image_targets(full, REPOS)] == [None]


# ----------------------------------------------------------------------------
# forced_images
# ----------------------------------------------------------------------------

CONFIG_IMAGES = [
    make_image("img", base="alpine:latest"),
    make_image("tool:2", base="NONE"),
    make_image("ghcr.io/o/full", base="$DOCKER_REPOSITORY/img:latest"),
]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([], []),
        (["img"], ["img"]),
        (["img:latest", "tool:2"], ["img", "tool:2"]),
        (["alpine"], ["img"]),  # by its base
        (["NONE"], ["tool:2"]),
        (["ghcr.io/o/full"], ["ghcr.io/o/full"]),
        (["$DOCKER_REPOSITORY/img"], ["ghcr.io/o/full"]),
    ],
)
def test_forced_images_names_with_or_without_tag(names, expected):
    forced = db.forced_images(names, CONFIG_IMAGES, "conf", False)
    assert [image.name for image in CONFIG_IMAGES if forced(image)] == expected


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("tool", " (entries with another tag: tool:2)"),
        (  # a base named with $DOCKER_REPOSITORY/ is one named in full
            "img:1",
            " (entries with another tag: img:latest;"
            " entries with that name: $DOCKER_REPOSITORY/img:latest)",
        ),
        ("full", " (entries with that name: ghcr.io/o/full:latest)"),
        ("full:v2", " (entries with that name: ghcr.io/o/full:latest)"),
        ("o/full", " (entries with that name: ghcr.io/o/full:latest)"),
        ("ull", ""),  # a name ends after a '/'
        ("scratch", ""),
        ("none", ""),
        ("ghcr.io/o/img", ""),
    ],
)
def test_forced_images_unknown(name, hint):
    """An unknown name is an error; entries that differ only by the tag,
    and entries named in full that end in the name, are named."""
    assert fatal_message(
        db.forced_images, ["img", name], CONFIG_IMAGES, "conf", False
    ) == (f"Image {name} not found in 'conf' configuration file{hint}")


def test_forced_images_unknown_short_name_of_several():
    """Every entry the name could stand for, each kind of hint sorted."""
    images = [
        make_image("one:v1"),
        make_image("registry.example/b/one:v2"),
        make_image("ghcr.io/ns/one:v2"),
        make_image("ghcr.io/ns/someone:v2"),
    ]
    assert fatal_message(db.forced_images, ["one"], images, "conf", False) == (
        "Image one not found in 'conf' configuration file"
        " (entries with another tag: one:v1;"
        " entries with that name: ghcr.io/ns/one:v2, registry.example/b/one:v2)"
    )


@pytest.mark.parametrize(
    ("all_flag", "names", "expected"),
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
def test_forced_images_inverted_by_all(all_flag, names, expected):
    img = make_image("img", base="alpine")
    images = [img, make_image("other", base="debian")]
    assert db.forced_images(names, images, "conf", all_flag)(img) is expected


# ----------------------------------------------------------------------------
# image_graph
# ----------------------------------------------------------------------------


def graph_of(images, repositories=GHCR):
    return [n.bases for n in db.image_graph(images, repositories, never_forced)]


def test_image_graph_nodes():
    base, app = BASE_AND_APP
    forced = db.forced_images(["base"], BASE_AND_APP, "conf", False)
    assert db.image_graph(BASE_AND_APP, REPOS, forced) == [
        db.ImageNode(base, 0, db.image_targets(base, REPOS), frozenset(), True),
        db.ImageNode(app, 1, db.image_targets(app, REPOS), frozenset({0}), False),
    ]


def test_image_graph_empty():
    assert db.image_graph([], REPOS, never_forced) == []


def test_image_graph_per_repository_expansion():
    images = [
        make_image("base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("braced", "${DOCKER_REPOSITORY}/app"),
        make_image("other", "$DOCKER_REPOSITORY/elsewhere"),
    ]
    expected = [frozenset(), frozenset({0}), frozenset({1}), frozenset()]
    assert graph_of(images, REPOS) == expected
    assert graph_of(images, GHCR) == expected


def test_image_graph_base_in_one_repository_only():
    """The base image exists in ghcr.io/o only: the ghcr.io/o target of app
    is built on it, so app is."""
    images = [
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("ghcr.io/o/base"),
        make_image("quay.io/q/base"),
    ]
    assert graph_of(images, REPOS) == [frozenset({1}), frozenset(), frozenset()]
    assert graph_of(images, ["docker.io/user"]) == [frozenset()] * 3


def test_image_graph_two_producers():
    images = [
        make_image("docker.io/user/base"),
        make_image("ghcr.io/o/base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
    ]
    assert graph_of(images, REPOS) == [frozenset(), frozenset(), frozenset({0, 1})]


def test_image_graph_full_name_bases():
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


def test_image_graph_tags_must_match():
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


def test_image_graph_untagged_bases_and_other_images():
    images = [
        make_image("a", "NONE"),
        make_image("b", "scratch"),
        make_image("c", "alpine"),
        make_image("d", "$DOCKER_REPOSITORY/a"),
    ]
    assert graph_of(images) == [frozenset(), frozenset(), frozenset(), frozenset({0})]


def test_image_graph_self_reference_ignored():
    """An image built on its own previous version is not its own base."""
    images = [make_image("base", "$DOCKER_REPOSITORY/base"), make_image("x")]
    assert graph_of(images, REPOS) == [frozenset(), frozenset()]
    full = [make_image("ghcr.io/o/img", "ghcr.io/o/img:latest")]
    assert graph_of(full) == [frozenset()]


def test_image_graph_spellings_of_one_image():
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


def using(image, *used, platforms=None):
    """The image, pulling `used` (images besides its base) for each of its
    platforms."""
    return dataclasses.replace(
        image,
        uses=tuple(
            (platform, name)
            for name in used
            for platform in (platforms or image.platforms)
        ),
    )


def test_image_targets_fill_in_the_images_pulled():
    """$DOCKER_REPOSITORY is filled in per repository in what a build
    pulls; used_images groups the platforms by image."""
    image = using(
        make_image("app", platforms=BOTH), "$DOCKER_REPOSITORY/tool:1", "alpine:3"
    )
    hub, ghcr = db.image_targets(image, REPOS)
    assert hub.uses == (
        ("linux/amd64", "docker.io/user/tool:1"),
        ("linux/arm64", "docker.io/user/tool:1"),
        ("linux/amd64", "alpine:3"),
        ("linux/arm64", "alpine:3"),
    )
    assert ghcr.used_images == {"ghcr.io/o/tool:1": BOTH, "alpine:3": BOTH}
    assert target(make_image("img")).used_images == {}


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        (("$DOCKER_REPOSITORY/tool:latest",), frozenset({0})),
        (("${DOCKER_REPOSITORY}/tool",), frozenset({0})),
        (("ghcr.io/o/tool",), frozenset({0})),
        (("ghcr.io/o/tool:2",), frozenset()),  # another tag
        (("alpine:3",), frozenset()),  # not an image of the file
        (("scratch",), frozenset()),
        (("$DOCKER_REPOSITORY/app",), frozenset()),  # its own previous version
        (("$DOCKER_REPOSITORY/tool", "$DOCKER_REPOSITORY/lib:1"), frozenset({0, 2})),
    ],
)
def test_image_graph_pulled_file_images_are_bases(used, expected):
    """An image pulled by a build (COPY --from and the like) that the file
    builds is built first, as a base is."""
    images = [
        make_image("tool"),
        using(make_image("app"), *used),
        make_image("lib:1"),
    ]
    assert graph_of(images) == [frozenset(), expected, frozenset()]
    assert [
        n.position for n in db.build_order(db.image_graph(images, GHCR, never_forced))
    ] == ([0, 2, 1] if 2 in expected else [0, 1, 2])


def test_image_graph_pulled_and_base_together():
    """Built on one image of the file and pulling another: both are bases."""
    images = [
        using(make_image("app", "$DOCKER_REPOSITORY/base"), "$DOCKER_REPOSITORY/tool"),
        make_image("base"),
        make_image("tool"),
    ]
    assert graph_of(images, REPOS) == [frozenset({1, 2}), frozenset(), frozenset()]


# ----------------------------------------------------------------------------
# build_order and its cycles
# ----------------------------------------------------------------------------


def nodes_of(graph):
    """Image nodes a, b, c, ... built on the positions in `graph`."""
    return [
        db.ImageNode(
            make_image("abcde"[position]), position, (), frozenset(bases), False
        )
        for position, bases in enumerate(graph)
    ]


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
    assert [n.position for n in db.build_order(nodes_of(graph))] == expected


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
    assert fatal_message(db.build_order, nodes_of(graph)) == message


def test_build_order_cycle_of_images(context):
    """From the configuration: the names as written, before any look-up."""
    images = [
        make_image("top", "$DOCKER_REPOSITORY/a:1"),
        make_image("a:1", "$DOCKER_REPOSITORY/b:2"),
        make_image("b:2", "$DOCKER_REPOSITORY/a:1"),
    ]
    registries = FakeRegistries()
    assert fatal_message(plan, images, REPOS, registries, context, (), True) == (
        "Dependency cycle: a:1 -> b:2 -> a:1"
    )
    assert registries.calls == []


# ----------------------------------------------------------------------------
# Pure decisions: check_base, registry_evidence, context_evidence
# ----------------------------------------------------------------------------


def test_check_base():
    found = {"linux/amd64": db.ImageInfo(CREATED, ())}
    assert db.check_base("b:1", found) == found
    assert fatal_message(db.check_base, "b:1", None) == "Missing base image: b:1"
    partial = {"linux/amd64": db.ImageInfo(CREATED, ()), "linux/arm64": None}
    assert fatal_message(db.check_base, "b:1", partial) == (
        "Missing base image: b:1 for linux/arm64"
    )


def test_registry_evidence():
    old = db.ImageInfo(CREATED, ("sha256:b",))
    new = db.ImageInfo(CREATED, ("sha256:new",))
    image = db.ImageInfo(CREATED, ("sha256:b", "sha256:i"))
    base = {"linux/amd64": old, "linux/arm64": old}
    assert db.registry_evidence(base, None) == db.Evidence(MISSING)
    lacking = {"linux/amd64": image, "linux/arm64": None}
    assert db.registry_evidence(base, lacking) == db.Evidence(
        db.Cause(db.Reason.MISSING, "linux/arm64")
    )
    assert db.registry_evidence(base, lacking).finding.text == (
        "Image missing in repository for linux/arm64"
    )
    both = {"linux/amd64": image, "linux/arm64": image}
    assert db.registry_evidence(base, both) == db.Evidence(None, T_CREATED, True)
    changed = {"linux/amd64": old, "linux/arm64": new}
    assert db.registry_evidence(changed, both) == db.Evidence(
        BASE_CHANGED, T_CREATED, False
    )
    scratch = dict.fromkeys(BOTH, db.NO_BASE)
    assert db.registry_evidence(scratch, both) == db.Evidence(None, T_CREATED, True)


def test_registry_evidence_oldest_platform_image_decides():
    later = CREATED + datetime.timedelta(hours=1)
    found = {
        "linux/amd64": info("sha256:b", created=later),
        "linux/arm64": info("sha256:b"),
    }
    base = dict.fromkeys(BOTH, info("sha256:b"))
    evidence = db.registry_evidence(base, found)
    assert evidence == db.Evidence(None, T_CREATED, True)
    change = db.ContextChange(T_CREATED + 1, by_commit=True)
    assert db.context_evidence(evidence, change).finding == GIT


@pytest.mark.parametrize(
    ("offset", "by_commit", "expected"),
    [
        (-1, True, None),
        (0, True, None),
        (0.5, True, GIT),
        (0.5, False, db.Cause(db.Reason.FILES)),
    ],
)
def test_context_evidence_only_a_later_change_counts(
    context, offset, by_commit, expected
):
    """Only a change strictly after the image's creation counts; a target
    the registry finds up to date asks when its directory changed."""
    change = db.ContextChange(T_CREATED + offset, by_commit)
    evidence = db.context_evidence(db.Evidence(None, T_CREATED, True), change)
    assert evidence == db.Evidence(expected, T_CREATED, True, change)
    context.value = change
    registries = FakeRegistries(
        {BASE: info("sha256:b"), TARGET: info("sha256:b", "sha256:i")}
    )
    assert db.Planner(registries, context).check(target(IMG)) == evidence
    assert context.calls == ["img"]


def test_context_evidence_image_created_at_the_epoch():
    """An image created at 1970-01-01 (a reproducible build without the
    label) is older than any change."""
    change = db.ContextChange(T_CREATED, by_commit=True)
    evidence = db.context_evidence(db.Evidence(None, 0.0, True), change)
    assert evidence == db.Evidence(GIT, 0.0, True, change)


def test_context_evidence_keeps_the_registry_finding():
    change = db.ContextChange(T_CREATED + 5, by_commit=True)
    evidence = db.Evidence(BASE_CHANGED, T_CREATED, False)
    assert db.context_evidence(evidence, change) == db.Evidence(
        BASE_CHANGED, T_CREATED, False, change
    )


# ----------------------------------------------------------------------------
# Recorded inputs: Inputs and its label, options_digest, recorded_inputs,
# used_digests, inputs_evidence
# ----------------------------------------------------------------------------

DIGEST_1 = "sha256:" + "1" * 64
DIGEST_2 = "sha256:" + "2" * 64
TOOL = "ghcr.io/o/tool:1"
LIB = "ghcr.io/o/lib:1"
# a build on BASE that pulls LIB and TOOL
RECORDED = db.Inputs(
    CONTEXT, "sha256:o", {BASE: BASE_DIGEST, LIB: DIGEST_1, TOOL: DIGEST_2}
)


def test_inputs_label_is_compact_sorted_json():
    inputs = db.Inputs(
        "sha256:c",
        "sha256:o",
        {
            "z/tool:1": "sha256:1",
            "a/lib:1": {"linux/arm64": "sha256:3", "linux/amd64": "sha256:2"},
        },
    )
    assert inputs.label == (
        '{"context":"sha256:c","images":{"a/lib:1":{"linux/amd64":"sha256:2",'
        '"linux/arm64":"sha256:3"},"z/tool:1":"sha256:1"},"options":"sha256:o",'
        '"version":2}'
    )
    assert db.Inputs("c", "o", {}).label == (
        '{"context":"c","images":{},"options":"o","version":2}'
    )


@pytest.mark.parametrize(
    "inputs",
    [
        db.Inputs(CONTEXT, "sha256:o", {}),
        RECORDED,
        db.Inputs(CONTEXT, "sha256:o", {TOOL: {"linux/amd64": DIGEST_1}}),
        db.Inputs(CONTEXT, "sha256:o", {TOOL: None}),
    ],
)
def test_inputs_label_round_trip(inputs):
    assert db.Inputs.from_label(inputs.label) == inputs


def test_inputs_from_label_reads_what_it_says():
    assert db.Inputs.from_label(
        '{"version": 2, "options": "o", "context": "c", "images": {"t": "d"}}'
    ) == db.Inputs("c", "o", {"t": "d"})


@pytest.mark.parametrize(
    "text",
    [
        '{"version":3,"context":"c","options":"o","images":{}}',  # newer
        # older: version 1 did not record the base
        '{"version":1,"context":"c","options":"o","images":{}}',
        '{"version":0,"context":"c","options":"o","images":{}}',
        '{"version":"2","context":"c","options":"o","images":{}}',
        '{"context":"c","options":"o","images":{}}',  # no version
        '{"version":2,"options":"o","images":{}}',  # no context
        '{"version":2,"context":"c","images":{}}',  # no options
        '{"version":2,"context":"c","options":"o"}',  # no images
        '{"version":2,"context":1,"options":"o","images":{}}',
        '{"version":2,"context":"c","options":null,"images":{}}',
        '{"version":2,"context":"c","options":"o","images":[]}',
        "[1]",
        '"text"',
        "",
        "{",
        "not json",
    ],
)
def test_inputs_from_label_unknown_formats(text):
    assert db.Inputs.from_label(text) is None


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), "sha256:" + NO_OPTIONS_HEX),
        (
            ("--build-arg", "DOCKER_REPOSITORY=ghcr.io/o"),
            "sha256:" + GHCR_OPTIONS_HEX,
        ),
        (
            ["a", "b"],
            "sha256:0473ef2dc0d324ab659d3580c1134e9d812035905c4781fdd6d529b0c6860e13",
        ),
        # order matters
        (
            ["b", "a"],
            "sha256:02d8bc3008a9bb0dcc4b86d7fd3428ced792355c733c19756bec5a56dc61b2c5",
        ),
    ],
)
def test_options_digest(options, expected):
    """sha256 of the options as compact JSON, in order."""
    assert db.options_digest(options) == expected


def labelled(label, digest=None):
    return db.ImageInfo(CREATED, ("sha256:b",), digest, label)


@pytest.mark.parametrize(
    ("pushed", "expected"),
    [
        ({"linux/amd64": labelled(RECORDED.label)}, RECORDED),
        (dict.fromkeys(BOTH, labelled(RECORDED.label)), RECORDED),
        # one platform image lacks the label, or the platform
        (
            {"linux/amd64": labelled(RECORDED.label), "linux/arm64": labelled(None)},
            None,
        ),
        ({"linux/amd64": labelled(RECORDED.label), "linux/arm64": None}, None),
        ({"linux/amd64": labelled(None)}, None),
        ({"linux/amd64": labelled("")}, None),
        # they differ
        (
            {
                "linux/amd64": labelled(RECORDED.label),
                "linux/arm64": labelled(db.Inputs(CONTEXT, "sha256:o", {}).label),
            },
            None,
        ),
        # a format this version does not know: newer, or older (version 1
        # did not record the base)
        ({"linux/amd64": labelled('{"version":3}')}, None),
        (
            {
                "linux/amd64": labelled(
                    RECORDED.label.replace('"version":2', '"version":1')
                )
            },
            None,
        ),
    ],
    ids=[
        "one",
        "all-agree",
        "one-lacks-label",
        "one-lacks-platform",
        "no-label",
        "empty-label",
        "differ",
        "newer-version",
        "version-1",
    ],
)
def test_recorded_inputs(pushed, expected):
    assert db.recorded_inputs(pushed) == expected


def digested(digest):
    return db.ImageInfo(CREATED, ("sha256:t",), digest)


@pytest.mark.parametrize(
    ("platforms", "found", "built_for", "expected"),
    [
        (AMD, {"linux/amd64": digested(DIGEST_1)}, AMD, DIGEST_1),
        (
            BOTH,
            {"linux/amd64": digested(DIGEST_1), "linux/arm64": digested(DIGEST_2)},
            BOTH,
            {"linux/amd64": DIGEST_1, "linux/arm64": DIGEST_2},
        ),
        # pulled for one platform of a build for two
        (
            ("linux/arm64",),
            {"linux/arm64": digested(DIGEST_2)},
            BOTH,
            {"linux/arm64": DIGEST_2},
        ),
    ],
    ids=["one-platform", "several", "pulled-for-one-of-two"],
)
def test_used_digests(platforms, found, built_for, expected):
    """One digest for a build for one platform, else one per platform."""
    assert db.used_digests(TOOL, platforms, found, built_for) == expected


@pytest.mark.parametrize(
    ("platforms", "found", "message"),
    [
        (AMD, None, f"Missing image used by the build: {TOOL}"),
        (
            BOTH,
            {"linux/amd64": digested(DIGEST_1), "linux/arm64": None},
            f"Missing image used by the build: {TOOL} for linux/arm64",
        ),
        (
            AMD,
            {"linux/amd64": digested(None)},
            f"Missing image used by the build: {TOOL} for linux/amd64",
        ),
    ],
    ids=["image", "platform", "digest"],
)
def test_used_digests_missing(platforms, found, message):
    assert fatal_message(db.used_digests, TOOL, platforms, found, platforms) == message


UP_TO_DATE_EVIDENCE = db.Evidence(None, T_CREATED, True)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (RECORDED, None),
        (
            dataclasses.replace(RECORDED, context=OTHER_CONTEXT),
            db.Cause(db.Reason.CONTEXT),
        ),
        (
            dataclasses.replace(RECORDED, options="sha256:p"),
            db.Cause(db.Reason.OPTIONS),
        ),
        # context first, then options (before the base and the images)
        (
            db.Inputs(OTHER_CONTEXT, "sha256:p", {}),
            db.Cause(db.Reason.CONTEXT),
        ),
        (
            db.Inputs(CONTEXT, "sha256:p", {}),
            db.Cause(db.Reason.OPTIONS),
        ),
        # the base differs: before any other image, even one named first
        (
            db.Inputs(
                CONTEXT,
                "sha256:o",
                {"a/new:1": "x", BASE: DIGEST_1, LIB: DIGEST_2, TOOL: DIGEST_2},
            ),
            db.Cause(db.Reason.BASE),
        ),
        # an image differs, is added or removed: the first by name
        (
            db.Inputs(
                CONTEXT, "sha256:o", {BASE: BASE_DIGEST, LIB: DIGEST_1, TOOL: DIGEST_1}
            ),
            db.Cause(db.Reason.IMAGE, TOOL),
        ),
        (
            db.Inputs(
                CONTEXT, "sha256:o", {BASE: BASE_DIGEST, LIB: DIGEST_2, TOOL: DIGEST_1}
            ),
            db.Cause(db.Reason.IMAGE, LIB),
        ),
        (
            db.Inputs(
                CONTEXT,
                "sha256:o",
                {BASE: BASE_DIGEST, LIB: DIGEST_1, TOOL: DIGEST_2, "a/new:1": "x"},
            ),
            db.Cause(db.Reason.IMAGE, "a/new:1"),
        ),
        (
            db.Inputs(CONTEXT, "sha256:o", {BASE: BASE_DIGEST, LIB: DIGEST_1}),
            db.Cause(db.Reason.IMAGE, TOOL),
        ),
        (
            db.Inputs(
                CONTEXT,
                "sha256:o",
                {
                    BASE: BASE_DIGEST,
                    LIB: DIGEST_1,
                    TOOL: {"linux/amd64": DIGEST_2},
                },
            ),
            db.Cause(db.Reason.IMAGE, TOOL),
        ),
    ],
    ids=[
        "equal",
        "context",
        "options",
        "context-before-options",
        "options-before-images",
        "base-before-images",
        "image-differs",
        "first-by-name",
        "image-added",
        "image-removed",
        "per-platform-now",
    ],
)
def test_inputs_evidence(current, expected):
    """The first input that differs is the finding; the evidence keeps
    both records."""
    assert db.inputs_evidence(
        UP_TO_DATE_EVIDENCE, RECORDED, current, BASE
    ) == db.Evidence(expected, T_CREATED, True, recorded=RECORDED, current=current)


def test_inputs_evidence_keeps_the_registry_finding():
    evidence = db.Evidence(BASE_CHANGED, T_CREATED, False)
    current = db.Inputs(OTHER_CONTEXT, "sha256:p", {})
    assert db.inputs_evidence(evidence, RECORDED, current, BASE) == db.Evidence(
        BASE_CHANGED, T_CREATED, False, recorded=RECORDED, current=current
    )


@pytest.mark.parametrize(
    ("reason", "detail", "text"),
    [
        (db.Reason.CONTEXT, None, "Build context changed"),
        (db.Reason.OPTIONS, None, "Build options changed"),
        (db.Reason.BASE, None, REASON_BASE),
        (db.Reason.IMAGE, TOOL, f"Image used by the build changed: {TOOL}"),
    ],
)
def test_inputs_reasons_text(reason, detail, text):
    assert db.Cause(reason, detail).text == text


# ----------------------------------------------------------------------------
# Planner.check: the evidence for one target
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("explain", [False, True])
def test_check_base_changed_stops_unless_explaining(context, explain):
    context.value = db.ContextChange(T_CREATED + 5, by_commit=True)
    registries = FakeRegistries({BASE: info("sha256:new"), TARGET: info("sha256:old")})
    evidence = db.Planner(registries, context, explain).check(target(IMG))
    if explain:  # the evidence is whole and keeps the first finding
        assert evidence == db.Evidence(BASE_CHANGED, T_CREATED, False, context.value)
        assert context.calls == ["img"]
    else:
        assert evidence == db.Evidence(BASE_CHANGED, T_CREATED, False)
        assert context.calls == []


def test_check_context_newer(context):
    context.value = db.ContextChange(T_CREATED + 1, by_commit=True)
    registries = FakeRegistries({BASE: info("sha256:b"), TARGET: info("sha256:b")})
    assert db.Planner(registries, context).check(target(IMG)) == db.Evidence(
        GIT, T_CREATED, True, context.value
    )


@pytest.mark.parametrize("change", [BY_COMMIT, BY_FILES])
def test_check_up_to_date(context, change):
    context.value = change
    registries = FakeRegistries({BASE: info("sha256:b"), TARGET: info("sha256:b")})
    assert db.Planner(registries, context).check(target(IMG)) == db.Evidence(
        None, T_CREATED, True, change
    )


@pytest.mark.parametrize(
    ("image", "infos", "expected"),
    [
        (
            IMG,
            {
                BASE: info("sha256:b1", "sha256:new"),
                TARGET: info("sha256:b1", "sha256:i"),
            },
            db.Evidence(BASE_CHANGED, T_CREATED, False),
        ),
        (IMG, {BASE: info("sha256:b"), TARGET: None}, db.Evidence(MISSING)),
        (
            MULTI,
            {
                BASE: info("sha256:b"),
                TARGET: {
                    "linux/amd64": info("sha256:b", "sha256:i"),
                    "linux/arm64": None,
                },
            },
            db.Evidence(db.Cause(db.Reason.MISSING, "linux/arm64")),
        ),
    ],
    ids=["base-changed", "missing", "lacks-a-platform"],
)
@pytest.mark.parametrize("explain", [False, True])
def test_check_registry_finding_without_context(
    context, image, infos, expected, explain
):
    """What the registry finds needs no git (a missing image none even
    when explaining): base, then image, are looked up."""
    registries = FakeRegistries(infos)
    evidence = db.Planner(registries, context, explain).check(target(image))
    if explain and expected.created is not None:
        expected = db.Evidence(expected.finding, T_CREATED, False, BY_COMMIT)
    assert evidence == expected
    assert registries.calls == [BASE, TARGET]
    assert context.calls == (["img"] if explain and expected.created else [])


def test_check_git_failure_ignored_with_a_registry_finding(git_fails):
    registries = FakeRegistries({BASE: info("sha256:new"), TARGET: info("sha256:old")})
    evidence = db.Planner(registries, git_fails, explain=True).check(target(IMG))
    assert evidence == db.Evidence(BASE_CHANGED, T_CREATED, False)
    assert git_fails.calls == ["img"]


@pytest.mark.parametrize("explain", [False, True])
def test_check_git_failure_without_a_registry_finding(git_fails, explain):
    registries = FakeRegistries({BASE: info("sha256:b"), TARGET: info("sha256:b")})
    planner = db.Planner(registries, git_fails, explain)
    assert fatal_message(planner.check, target(IMG)) == (
        "img: Can't get git status: fatal: broken"
    )
    assert git_fails.calls == ["img"]


@pytest.mark.parametrize(
    ("image", "infos", "message", "calls"),
    [
        (IMG, {BASE: None}, "Missing base image: ghcr.io/o/base:latest", [BASE]),
        (
            MULTI,
            {BASE: {"linux/amd64": info("sha256:b"), "linux/arm64": None}},
            "Missing base image: ghcr.io/o/base:latest for linux/arm64",
            [BASE],
        ),
    ],
)
def test_check_missing_base(context, image, infos, message, calls):
    registries = FakeRegistries(infos)
    assert (
        fatal_message(db.Planner(registries, context).check, target(image)) == message
    )
    assert registries.calls == calls


def test_check_full_name_ignores_repository(context):
    image = make_image("ghcr.io/o/img", base="debian:latest")
    registries = FakeRegistries({"debian:latest": info("sha256:d"), TARGET: None})
    (only,) = db.image_targets(image, REPOS)
    assert only.repository is None
    assert db.Planner(registries, context).check(only).finding == MISSING
    assert registries.calls == ["debian:latest", TARGET]


def test_check_oldest_platform_image_decides(context):
    context.value = db.ContextChange(T_CREATED + 1, by_commit=True)
    later = CREATED + datetime.timedelta(hours=1)
    found = {
        "linux/amd64": info("sha256:b", created=later),
        "linux/arm64": info("sha256:b", created=CREATED),
    }
    registries = FakeRegistries({BASE: info("sha256:b"), TARGET: found})
    assert db.Planner(registries, context).check(target(MULTI)).finding == GIT


@pytest.mark.parametrize("base", ["NONE", "scratch"])
def test_check_untagged_base_never_compared(context, base):
    image = make_image("img", base=base)
    registries = FakeRegistries({"user/img:latest": info("sha256:i")})
    assert db.Planner(registries, context).check(target(image, "user")).finding is None
    assert registries.calls == [base, "user/img:latest"]


def pushed_with(label):
    """A pushed image on BASE's layer, labelled with `label`."""
    return db.ImageInfo(CREATED, ("sha256:b", "sha256:i"), "sha256:" + "9" * 64, label)


PULLS_TOOL = using(IMG, "$DOCKER_REPOSITORY/tool:1")


@pytest.mark.parametrize(
    ("image", "recorded", "expected"),
    [
        (IMG, inputs_of(target(IMG)), None),
        (
            IMG,
            inputs_of(target(IMG), context=OTHER_CONTEXT),
            db.Cause(db.Reason.CONTEXT),
        ),
        (
            IMG,
            dataclasses.replace(
                inputs_of(target(IMG)), options=db.options_digest(["--pull"])
            ),
            db.Cause(db.Reason.OPTIONS),
        ),
        # the base was pushed again: another manifest on the same layers
        (IMG, inputs_of(target(IMG), base=DIGEST_1), db.Cause(db.Reason.BASE)),
        (PULLS_TOOL, inputs_of(target(PULLS_TOOL), {TOOL: DIGEST_1}), None),
        (
            PULLS_TOOL,
            inputs_of(target(PULLS_TOOL), {TOOL: DIGEST_2}),
            db.Cause(db.Reason.IMAGE, TOOL),
        ),
        (
            PULLS_TOOL,
            inputs_of(target(PULLS_TOOL)),
            db.Cause(db.Reason.IMAGE, TOOL),
        ),
    ],
    ids=[
        "same",
        "context",
        "options",
        "base-changed",
        "image-same",
        "image-changed",
        "image-added",
    ],
)
@pytest.mark.parametrize("explain", [False, True])
def test_check_labelled_image_compares_inputs(image, recorded, expected, explain):
    """With a record of its inputs an image is decided by them: its
    context is digested, the images it pulls (its base first) looked up,
    and when its directory last changed is never asked."""
    contexts = FakeContexts()  # a question about times fails the test
    registries = FakeRegistries(
        {
            BASE: info("sha256:b"),
            TARGET: pushed_with(recorded.label),
            TOOL: digested(DIGEST_1),
        }
    )
    current = inputs_of(target(image), {TOOL: DIGEST_1} if image.uses else {})
    assert db.Planner(registries, contexts, explain).check(target(image)) == (
        db.Evidence(expected, T_CREATED, True, recorded=recorded, current=current)
    )
    assert contexts.calls == []
    assert contexts.digested == ["img"]
    assert registries.calls == [BASE, TARGET, BASE, *([TOOL] if image.uses else [])]


def test_check_labelled_image_needs_no_git(git_fails):
    """A labelled image is decided without asking git when its directory
    changed."""
    recorded = inputs_of(target(IMG))
    registries = FakeRegistries(
        {BASE: info("sha256:b"), TARGET: pushed_with(recorded.label)}
    )
    evidence = db.Planner(registries, git_fails).check(target(IMG))
    assert evidence == db.Evidence(
        None, T_CREATED, True, recorded=recorded, current=recorded
    )
    assert git_fails.calls == []


@pytest.mark.parametrize(
    "label", [None, '{"version":2}', "not json"], ids=["none", "newer", "malformed"]
)
def test_check_unlabelled_image_falls_back_to_times(context, label):
    """Without a record it can read, an image is decided by when its
    directory last changed; its context is not digested."""
    registries = FakeRegistries({BASE: info("sha256:b"), TARGET: pushed_with(label)})
    assert db.Planner(registries, context).check(target(IMG)) == db.Evidence(
        None, T_CREATED, True, BY_COMMIT
    )
    assert context.calls == ["img"]
    assert context.digested == []


@pytest.mark.parametrize("explain", [False, True])
def test_check_labelled_image_with_base_changed(explain):
    """The registry's finding stops a plain check; explaining adds the
    inputs, keeping that finding."""
    contexts = FakeContexts()
    recorded = inputs_of(target(IMG), context=OTHER_CONTEXT)
    registries = FakeRegistries(
        {BASE: info("sha256:new"), TARGET: pushed_with(recorded.label)}
    )
    evidence = db.Planner(registries, contexts, explain).check(target(IMG))
    if explain:
        assert evidence == db.Evidence(
            BASE_CHANGED,
            T_CREATED,
            False,
            recorded=recorded,
            current=inputs_of(target(IMG), base=manifest_digest("sha256:new")),
        )
        assert contexts.digested == ["img"]
    else:
        assert evidence == db.Evidence(BASE_CHANGED, T_CREATED, False)
        assert contexts.digested == []
    assert contexts.calls == []


def test_check_labelled_image_missing_a_pulled_image():
    """What a build pulls must exist (with a digest)."""
    recorded = inputs_of(target(PULLS_TOOL), {TOOL: DIGEST_1})
    registries = FakeRegistries(
        {BASE: info("sha256:b"), TARGET: pushed_with(recorded.label), TOOL: None}
    )
    planner = db.Planner(registries, FakeContexts())
    assert fatal_message(planner.check, target(PULLS_TOOL)) == (
        f"Missing image used by the build: {TOOL}"
    )
    registries.infos[TOOL] = digested(None)
    assert fatal_message(planner.check, target(PULLS_TOOL)) == (
        f"Missing image used by the build: {TOOL} for linux/amd64"
    )


# ----------------------------------------------------------------------------
# decide_image: one image's decisions
# ----------------------------------------------------------------------------

# What docker_build checks and finds for an up-to-date target whose
# build directory changed a second before its image, by the files' times.
CHECKED = db.Evidence(None, T_CREATED, True, BY_FILES)
BASES_REBUILT = frozenset({key(HUB_BASE), key(BASE)})


@pytest.fixture
def files_context():
    """Every build directory last changed a second before CREATED, by the
    files' times."""
    return FakeContexts(BY_FILES)


def test_decide_image_each_target_gets_the_cause():
    """A checked image's finding is every target's cause; a rebuilt base
    is named by each target built on it."""
    image = node(IMG)
    t0, t1 = image.targets

    def finding(cause):
        return lambda _target: db.Evidence(cause)

    assert db.decide_image(image, (), finding(MISSING)).decisions == (
        db.Decision(t0, MISSING, db.Evidence(MISSING)),
        db.Decision(t1, db.Cause(db.Reason.MISSING, where="docker.io/user"), None),
    )
    assert [d.cause for d in db.decide_image(image, (), finding(None)).decisions] == [
        None,
        None,
    ]
    rebuilt_bases = db.decide_image(image, BASES_REBUILT, finding(None))
    assert [d.cause.text for d in rebuilt_bases.decisions] == [
        "Base image will be rebuilt: docker.io/user/base:latest",
        "Base image will be rebuilt: ghcr.io/o/base:latest",
    ]


@pytest.mark.parametrize("explain", [False, True])
def test_decide_base_changed_in_first_repository(files_context, explain):
    """--explain completes the deciding target's evidence (its context),
    and checks nothing more."""
    registries = FakeRegistries(
        {HUB_BASE: info("sha256:new"), HUB_TARGET: info("sha256:old")}
    )
    image = node(IMG)
    decided = db.decide_image(
        image, frozenset(), db.Planner(registries, files_context, explain).check
    )
    evidence = (
        db.Evidence(BASE_CHANGED, T_CREATED, False, BY_FILES)
        if explain
        else db.Evidence(BASE_CHANGED, T_CREATED, False)
    )
    t0, t1 = image.targets
    assert decided == db.ImagePlan(
        image,
        (db.Decision(t0, BASE_CHANGED, evidence), db.Decision(t1, BASE_CHANGED, None)),
    )
    assert decided.rebuild
    assert registries.calls == [HUB_BASE, HUB_TARGET]
    assert files_context.calls == (["img"] if explain else [])


def test_decide_base_to_be_rebuilt_without_lookups(files_context):
    registries = FakeRegistries({})
    image = node(IMG, 3, bases=frozenset({1}))
    t0, t1 = image.targets
    for explain in (False, True):
        check = db.Planner(registries, files_context, explain).check
        # each target names its own base
        assert db.decide_image(image, BASES_REBUILT, check) == db.ImagePlan(
            image,
            (
                db.Decision(t0, db.Cause(db.Reason.DEPENDENCY, HUB_BASE)),
                db.Decision(t1, db.Cause(db.Reason.DEPENDENCY, BASE)),
            ),
        )
    # forcing wins over the base
    forced = node(IMG, 3, bases=frozenset({1}), forced=True)
    check = db.Planner(registries, files_context, True).check
    assert db.decide_image(forced, BASES_REBUILT, check) == db.ImagePlan(
        forced, (db.Decision(t0, FORCED), db.Decision(t1, FORCED))
    )
    assert [
        d.cause.text for d in db.decide_image(forced, BASES_REBUILT, check).decisions
    ] == [
        "Rebuild triggered by command line",
        "Rebuild triggered by command line",
    ]
    assert registries.calls == []
    assert files_context.calls == []


def test_decide_explain_every_checked_target(files_context):
    """Up-to-date targets are all checked, each with its own finding."""
    registries = FakeRegistries(
        {
            HUB_BASE: info("sha256:b"),
            HUB_TARGET: info("sha256:b"),
            BASE: info("sha256:new"),
            TARGET: info("sha256:old"),
        }
    )
    image = node(IMG)
    t0, t1 = image.targets
    check = db.Planner(registries, files_context, True).check
    assert db.decide_image(image, frozenset(), check) == db.ImagePlan(
        image,
        (
            db.Decision(t0, BASE_CHANGED, CHECKED),
            db.Decision(
                t1, BASE_CHANGED, db.Evidence(BASE_CHANGED, T_CREATED, False, BY_FILES)
            ),
        ),
    )
    assert registries.calls == [HUB_BASE, HUB_TARGET, BASE, TARGET]
    assert files_context.calls == ["img", "img"]


@pytest.mark.parametrize("explain", [False, True])
def test_decide_stops_at_the_deciding_target(files_context, explain):
    """--explain checks no more targets than a plain run: the second
    repository is never looked up once the first needs a rebuild."""
    registries = FakeRegistries({HUB_BASE: info("sha256:b"), HUB_TARGET: None})
    image = node(IMG)
    t0, t1 = image.targets
    check = db.Planner(registries, files_context, explain).check
    assert db.decide_image(image, frozenset(), check) == db.ImagePlan(
        image,
        (
            db.Decision(t0, MISSING, db.Evidence(MISSING)),
            db.Decision(t1, db.Cause(db.Reason.MISSING, where="docker.io/user"), None),
        ),
    )
    assert registries.calls == [HUB_BASE, HUB_TARGET]
    assert files_context.calls == []


TOOL_BASED = using(
    make_image("app", "$DOCKER_REPOSITORY/base"), "$DOCKER_REPOSITORY/tool:1"
)


@pytest.mark.parametrize(
    ("rebuilt", "expected"),
    [
        (frozenset(), []),
        (frozenset({key(TOOL)}), [TOOL]),
        (frozenset({key(BASE)}), [BASE]),
        (frozenset({key(BASE), key(TOOL)}), [BASE, TOOL]),  # the base first
        (frozenset({key("docker.io/user/tool:1")}), []),  # another repository
    ],
)
def test_rebuilt_images(rebuilt, expected):
    assert db.rebuilt_images(target(TOOL_BASED), rebuilt) == expected


def test_decide_image_names_a_rebuilt_pulled_image():
    """An image pulling an image that will be rebuilt is rebuilt after it,
    unchecked; a target that pulls none of them names the first one."""
    image = node(using(make_image("app"), "$DOCKER_REPOSITORY/tool:1"))
    t0, t1 = image.targets

    def check(checked):
        pytest.fail(f"checked {checked.full_name}")

    cause = db.Cause(db.Reason.DEPENDENCY, TOOL)
    decided = db.decide_image(image, frozenset({key(TOOL)}), check)
    assert decided == db.ImagePlan(
        image, (db.Decision(t0, cause), db.Decision(t1, cause))
    )
    assert decided.decisions[0].cause.text == f"Base image will be rebuilt: {TOOL}"
    # a rebuilt base is named before a rebuilt pulled image
    both = node(TOOL_BASED)
    rebuilt = frozenset({key(TOOL), key(BASE), key("docker.io/user/tool:1")})
    assert [d.cause for d in db.decide_image(both, rebuilt, check).decisions] == [
        db.Cause(db.Reason.DEPENDENCY, "docker.io/user/tool:1"),
        db.Cause(db.Reason.DEPENDENCY, BASE),
    ]


# ----------------------------------------------------------------------------
# Planner.plan: a whole configuration
# ----------------------------------------------------------------------------


def test_plan_all_except_named_is_checked(files_context):
    registries = FakeRegistries(
        {
            HUB_BASE: info("sha256:b"),
            HUB_TARGET: info("sha256:b"),
            BASE: info("sha256:b"),
            TARGET: info("sha256:b"),
        }
    )
    forced = ["$DOCKER_REPOSITORY/base:latest"]  # named by its base
    made = plan([IMG], REPOS, registries, files_context, forced, True)
    image = node(IMG)
    t0, t1 = image.targets
    assert made == db.Plan(
        (
            db.ImagePlan(
                image, (db.Decision(t0, None, CHECKED), db.Decision(t1, None, CHECKED))
            ),
        )
    )
    assert made.rebuilds() == []
    assert registries.calls == [HUB_BASE, HUB_TARGET, BASE, TARGET]
    assert registries.prefetched == [
        (HUB_BASE, AMD),
        (HUB_TARGET, AMD),
        (BASE, AMD),
        (TARGET, AMD),
    ]
    # a checked image's context waits for its look-up (none here: a fake)
    assert files_context.prefetched == []


def test_plan_explain_ignores_git_failure_of_decided_target(git_fails):
    """A plain run never waits for git about an image whose base has
    changed (it is only asked up front): neither does --explain fail on it.
    The unchecked target's base is looked up for what its build records."""
    registries = FakeRegistries(
        {
            HUB_BASE: info("sha256:new"),
            HUB_TARGET: info("sha256:old"),
            BASE: UP_TO_DATE,
        }
    )
    plain = plan([IMG], REPOS, registries, git_fails)
    assert git_fails.calls == []
    assert git_fails.prefetched == []
    explained = plan([IMG], REPOS, registries, git_fails, explain=True)
    assert git_fails.calls == ["img"]
    image = node(IMG)
    t0, t1 = image.targets
    expected = db.ImagePlan(
        image,
        (
            db.Decision(
                t0,
                BASE_CHANGED,
                db.Evidence(BASE_CHANGED, T_CREATED, False),
                inputs_of(t0, base=manifest_digest("sha256:new")),
            ),
            db.Decision(t1, BASE_CHANGED, None, inputs_of(t1)),
        ),
    )
    assert plain == explained == db.Plan((expected,))
    # each run: the first target checked, then each target's base for its
    # inputs (ghcr.io/o/img itself is never looked up)
    assert registries.calls == [HUB_BASE, HUB_TARGET, HUB_BASE, BASE] * 2


def test_plan_first_repository_decides(files_context):
    registries = FakeRegistries(
        {HUB_BASE: info("sha256:new"), HUB_TARGET: info("x"), BASE: UP_TO_DATE}
    )
    made = plan([IMG], REPOS, registries, files_context)
    (image,) = made.images
    assert [(d.target, d.cause, d.evidence) for d in image.decisions] == [
        (t, BASE_CHANGED, e)
        for t, e in zip(
            db.image_targets(IMG, REPOS),
            (db.Evidence(BASE_CHANGED, T_CREATED, False), None),
            strict=True,
        )
    ]
    # the first target is checked; then each target's base is looked up for
    # what its build records (the second target is never checked)
    assert registries.calls == [HUB_BASE, HUB_TARGET, HUB_BASE, BASE]
    # every target was asked for up front; only the first was waited for
    assert registries.prefetched == [
        (HUB_BASE, AMD),
        (HUB_TARGET, AMD),
        (BASE, AMD),
        (TARGET, AMD),
    ]
    assert files_context.calls == []


def test_plan_second_repository_decides(files_context):
    registries = FakeRegistries(
        {
            HUB_BASE: info("sha256:b"),
            HUB_TARGET: info("sha256:b"),
            BASE: info("sha256:b"),
            TARGET: None,
        }
    )
    made = plan([IMG], REPOS, registries, files_context)
    image = node(IMG)
    t0, t1 = image.targets
    assert made.images == (
        db.ImagePlan(
            image,
            (
                db.Decision(
                    t0,
                    db.Cause(db.Reason.MISSING, where="ghcr.io/o"),
                    CHECKED,
                    inputs_of(t0),
                ),
                db.Decision(t1, MISSING, db.Evidence(MISSING), inputs_of(t1)),
            ),
        ),
    )
    # both checked, then their bases looked up for what their builds record
    assert registries.calls == [HUB_BASE, HUB_TARGET, BASE, TARGET, HUB_BASE, BASE]


def test_plan_forced_looks_up_only_its_base(context):
    """A forced image is not checked: only its base is looked up (and asked
    for up front), for the digest its build records."""
    registries = FakeRegistries({HUB_BASE: UP_TO_DATE, BASE: UP_TO_DATE})
    image = node(IMG, forced=True)
    t0, t1 = image.targets
    decisions = (
        db.Decision(t0, FORCED, inputs=inputs_of(t0)),
        db.Decision(t1, FORCED, inputs=inputs_of(t1)),
    )
    expected = db.Plan((db.ImagePlan(image, decisions),))
    assert plan([IMG], REPOS, registries, context, ["img:latest"]) == expected
    assert plan([IMG], REPOS, registries, context, all_flag=True) == expected
    assert registries.calls == [HUB_BASE, BASE] * 2
    assert context.calls == []
    # up front, only its bases are looked up and its context is digested
    # (its build records both)
    assert registries.prefetched == [(HUB_BASE, AMD), (BASE, AMD)] * 2
    assert context.prefetched == ["img", "img"]


def test_plan_full_name(context):
    image = make_image("ghcr.io/o/img", base="NONE")
    registries = FakeRegistries({TARGET: None})
    (only,) = db.image_targets(image, REPOS)
    assert (only.repository, only.full_name, only.base_name) == (None, TARGET, "NONE")
    assert plan([image], REPOS, registries, context) == db.Plan(
        (
            db.ImagePlan(
                node(image),
                (db.Decision(only, MISSING, db.Evidence(MISSING), inputs_of(only)),),
            ),
        )
    )


def test_plan_all_with_excluded_base(context):
    registries = FakeRegistries({"ghcr.io/o/base:latest": UP_TO_DATE})
    made = plan(BASE_AND_APP, GHCR, registries, context, ["base:latest"], True)
    assert reasons(made) == [("base", None), ("app", REASON_FORCED)]


def test_plan_all_with_excluded_dependent(context):
    images = [
        make_image("base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("tool"),
    ]
    registries = FakeRegistries()
    made = plan(images, GHCR, registries, context, ["app:latest"], True)
    assert reasons(made) == [
        ("base", REASON_FORCED),
        ("app", "Base image will be rebuilt: ghcr.io/o/base:latest"),
        ("tool", REASON_FORCED),
    ]
    assert registries.calls == []


@pytest.mark.parametrize(
    ("base_layer", "app_reason", "asked"),
    [("sha256:b", None, ["base", "app"]), ("sha256:new", REASON_BASE, ["base"])],
    ids=["up-to-date", "base-changed"],
)
def test_plan_dependent_checked_on_its_own(context, base_layer, app_reason, asked):
    """A base that is not rebuilt leaves its dependent to its own checks:
    both are looked up; git is asked about each target found up to date."""
    registries = FakeRegistries(
        {
            "ghcr.io/o/base:latest": info(base_layer),
            "ghcr.io/o/app:latest": info("sha256:b", "sha256:a"),
        }
    )
    made = plan(BASE_AND_APP, GHCR, registries, context)
    assert reasons(made) == [("base", None), ("app", app_reason)]
    assert registries.calls == [
        "NONE",
        "ghcr.io/o/base:latest",
        "ghcr.io/o/base:latest",
        "ghcr.io/o/app:latest",
        # a rebuilt app's base, for what its build records
        *(["ghcr.io/o/base:latest"] if app_reason else []),
    ]
    assert context.calls == asked


@pytest.mark.parametrize("explain", [False, True])
def test_plan_explain_checks_no_more_targets(context, explain):
    """--explain cannot change the outcome: the targets after the deciding
    one are not checked (ghcr.io/o/app is not in the fake registry: a
    look-up would fail the test); only their base is looked up, for what
    their build records."""
    images = [make_image("app", "$DOCKER_REPOSITORY/base")]
    registries = FakeRegistries(
        {
            "docker.io/user/base:latest": UP_TO_DATE,
            "docker.io/user/app:latest": info("sha256:x", "sha256:a"),
            "ghcr.io/o/base:latest": UP_TO_DATE,
        }
    )
    made = plan(images, REPOS, registries, context, explain=explain)
    (app,) = made.images
    assert [d.cause for d in app.decisions] == [BASE_CHANGED, BASE_CHANGED]
    assert [d.evidence.finding for d in app.decisions if d.evidence] == [BASE_CHANGED]
    assert registries.calls == [
        "docker.io/user/base:latest",
        "docker.io/user/app:latest",
        "docker.io/user/base:latest",
        "ghcr.io/o/base:latest",
    ]
    assert context.calls == (["app"] if explain else [])
    # all was asked for up front, in the order of the checks; what is not
    # waited for cannot fail the run
    assert registries.prefetched == [
        ("docker.io/user/base:latest", AMD),
        ("docker.io/user/app:latest", AMD),
        ("ghcr.io/o/base:latest", AMD),
        ("ghcr.io/o/app:latest", AMD),
    ]
    assert context.prefetched == []  # checked: its look-up tells what to ask


def test_plan_explain_keeps_the_evidence(context):
    registries = FakeRegistries(
        {
            "docker.io/user/base:latest": UP_TO_DATE,
            "ghcr.io/o/base:latest": None,
        }
    )
    made = plan(BASE_AND_APP, REPOS, registries, context, explain=True)
    checked = db.Evidence(None, T_CREATED, True, BY_COMMIT)
    assert [
        (d.cause.text, d.evidence) for image in made.images for d in image.decisions
    ] == [
        (REASON_MISSING + " ghcr.io/o", checked),
        (REASON_MISSING, db.Evidence(MISSING)),
        ("Base image will be rebuilt: docker.io/user/base:latest", None),
        ("Base image will be rebuilt: ghcr.io/o/base:latest", None),
    ]


def test_plan_forcing_a_base_name_propagates(context):
    """Naming a base forces the images built on it, and so their own
    dependents."""
    images = [
        make_image("app", "alpine"),
        make_image("top", "$DOCKER_REPOSITORY/app"),
        make_image("lone", "debian"),
    ]
    registries = FakeRegistries(
        {
            "alpine:latest": UP_TO_DATE,
            "debian:latest": UP_TO_DATE,
            "ghcr.io/o/lone:latest": UP_TO_DATE,
        }
    )
    made = plan(images, GHCR, registries, context, ["alpine:latest"])
    assert reasons(made) == [
        ("app", REASON_FORCED),
        ("top", "Base image will be rebuilt: ghcr.io/o/app:latest"),
        ("lone", None),
    ]


def test_plan_forcing_a_repository_base_name(context):
    images = [
        make_image("base"),
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("top", "$DOCKER_REPOSITORY/app"),
    ]
    registries = FakeRegistries({"ghcr.io/o/base:latest": UP_TO_DATE})
    forced = ["$DOCKER_REPOSITORY/base:latest"]
    made = plan(images, GHCR, registries, context, forced)
    assert reasons(made) == [
        ("base", None),
        ("app", REASON_FORCED),
        ("top", "Base image will be rebuilt: ghcr.io/o/app:latest"),
    ]


def test_plan_forcing_the_base_image_propagates(context):
    registries = FakeRegistries()
    made = plan(BASE_AND_APP, REPOS, registries, context, ["base:latest"])
    assert reasons(made) == [
        ("base", REASON_FORCED),
        ("app", "Base image will be rebuilt: docker.io/user/base:latest"),
    ]
    assert registries.calls == []


def test_plan_names_the_base_as_spelled(context):
    images = [make_image("base"), make_image("app", "user/base")]
    registries = FakeRegistries()
    made = plan(images, ["docker.io/user"], registries, context, ["app:latest"], True)
    assert reasons(made) == [
        ("base", REASON_FORCED),
        ("app", "Base image will be rebuilt: user/base:latest"),
    ]


def test_plan_names_only_a_base_that_is_rebuilt(context):
    """Only the ghcr.io/o target of app is built on an image of the file:
    every target of app names that base, never its own base that is not
    rebuilt."""
    images = [
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("ghcr.io/o/base"),
    ]
    registries = FakeRegistries(
        {"ghcr.io/o/base:latest": None, "docker.io/user/base:latest": UP_TO_DATE}
    )
    made = plan(images, REPOS, registries, context)
    base, app = made.images
    assert (base.node.image.name, [d.cause for d in base.decisions]) == (
        "ghcr.io/o/base",
        [MISSING],
    )
    assert (app.node.image.name, app.rebuild, app.node.bases) == (
        "app",
        True,
        frozenset({1}),
    )
    assert [d.cause.text for d in app.decisions] == [
        "Base image will be rebuilt: ghcr.io/o/base:latest",
        "Base image will be rebuilt: ghcr.io/o/base:latest",
    ]
    # docker.io/user/app's own base is looked up only for what its build
    # records; ghcr.io/o/app's is not yet built
    assert registries.calls == [
        "NONE",
        "ghcr.io/o/base:latest",
        "docker.io/user/base:latest",
    ]
    assert [d.inputs.images for d in app.decisions] == [
        {"docker.io/user/base:latest": BASE_DIGEST},
        {"ghcr.io/o/base:latest": None},
    ]


def test_first_push_of_a_dependent_is_missing(context):
    """An image missing in its repository says so, even when its base is
    rebuilt in the same run: missing comes first, as in the reference."""
    images = [make_image("app", "$DOCKER_REPOSITORY/base"), make_image("base")]
    registries = FakeRegistries(
        {"ghcr.io/o/base:latest": None, "ghcr.io/o/app:latest": None}
    )
    made = plan(images, GHCR, registries, context)
    assert reasons(made) == [("base", REASON_MISSING), ("app", REASON_MISSING)]


class Answered:
    """Registries whose prefetch answers at once with `found`, or fails."""

    def __init__(self, found=None, error=None):
        self.future = concurrent.futures.Future()
        if error:
            self.future.set_exception(error)
        else:
            self.future.set_result(found)

    def prefetch(self, wanted):
        return [self.future]


class Started:
    """ContextChanges recording which question a planner starts."""

    def __init__(self):
        self.started = []

    def start_digest(self, image):
        return self.start("digest", image)

    def start_change(self, image):
        return self.start("change", image)

    def start(self, what, image):
        self.started.append((what, image.name))
        done = concurrent.futures.Future()
        done.set_result(None)
        return done


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (Answered({"linux/amd64": pushed_with(RECORDED.label)}), [("digest", "img")]),
        (Answered({"linux/amd64": pushed_with(None)}), [("change", "img")]),
        (Answered(None), [("digest", "img")]),  # missing: it will be built
        (Answered({"linux/amd64": None}), [("digest", "img")]),
        (Answered(error=db.Fatal("down")), []),  # the check meets the error
    ],
    ids=["labelled", "unlabelled", "missing", "missing-platform", "failed"],
)
def test_plan_prefetches_what_the_check_needs_of_the_context(answer, expected):
    """Once the pushed image's look-up answers, only what its check will
    ask of its context is started: the digest (a record to compare, or a
    build to record) or the time of its last change; none of them when
    the look-up failed."""
    contexts = Started()
    planner = db.Planner(answer, contexts)
    done = planner.prefetch_context(IMG, answer.prefetch([]))
    assert done.done()
    assert contexts.started == expected


def test_plan_propagates_without_lookups(context):
    images = [make_image("app", "$DOCKER_REPOSITORY/base"), make_image("base")]
    registries = FakeRegistries({"ghcr.io/o/base:latest": None})
    made = plan(images, GHCR, registries, context)
    assert reasons(made) == [
        ("base", REASON_MISSING),
        ("app", "Base image will be rebuilt: ghcr.io/o/base:latest"),
    ]
    assert [(i.node.position, i.node.bases) for i in made.images] == [
        (1, frozenset()),
        (0, frozenset({1})),
    ]
    app = node(images[0], 0, GHCR, frozenset({1}))
    (t0,) = app.targets
    assert made.images[1] == db.ImagePlan(
        app,
        (
            db.Decision(
                t0,
                db.Cause(db.Reason.DEPENDENCY, "ghcr.io/o/base:latest"),
                # its base is looked up once it is pushed
                inputs=inputs_of(t0, {"ghcr.io/o/base:latest": None}),
            ),
        ),
    )
    # app's missing base is never looked up: it will be built first
    assert registries.calls == ["NONE", "ghcr.io/o/base:latest"]
    # (though asked for up front, before the plan knew)
    assert registries.prefetched == [
        ("ghcr.io/o/base:latest", AMD),
        ("ghcr.io/o/app:latest", AMD),
        ("NONE", AMD),
        ("ghcr.io/o/base:latest", AMD),
    ]
    assert context.prefetched == []  # checked: their look-ups tell what to ask


def test_plan_transitive(context):
    images = [
        make_image("top:3", "$DOCKER_REPOSITORY/mid:2"),
        make_image("mid:2", "$DOCKER_REPOSITORY/base:1"),
        make_image("base:1"),
        make_image("other"),
    ]
    registries = FakeRegistries({"ghcr.io/o/other:latest": UP_TO_DATE})
    made = plan(images, GHCR, registries, context, ["base:1"])
    assert reasons(made) == [
        ("base:1", REASON_FORCED),
        ("mid:2", "Base image will be rebuilt: ghcr.io/o/base:1"),
        ("top:3", "Base image will be rebuilt: ghcr.io/o/mid:2"),
        ("other", None),
    ]
    assert registries.calls == ["NONE", "ghcr.io/o/other:latest"]
    # the forced image is not asked for up front, only its base (NONE:
    # Registries starts no look-up for it)
    assert registries.prefetched == [
        ("ghcr.io/o/mid:2", AMD),
        ("ghcr.io/o/top:3", AMD),
        ("ghcr.io/o/base:1", AMD),
        ("ghcr.io/o/mid:2", AMD),
        ("NONE", AMD),
        ("NONE", AMD),
        ("ghcr.io/o/other:latest", AMD),
    ]
    # only the forced image's context is digested up front: its build
    # records it; the checked images' look-ups tell what their checks need
    assert context.prefetched == ["base:1"]


ALPINE_DIGEST = "sha256:" + "a" * 64


def test_plan_gives_rebuilt_images_their_inputs():
    """Every decision of a rebuilt image carries the inputs its build
    records: the deciding target's from its evidence, the others' asked
    now; an image this run rebuilds is not known yet (None). Up-to-date
    images carry none."""
    images = [
        using(make_image("app", directory="a"), "$DOCKER_REPOSITORY/tool:latest"),
        make_image("tool", directory="t"),
        using(make_image("lone", directory="l"), "alpine:3"),
        make_image("fine", directory="f"),
    ]
    hub, ghcr = (target(images[2], repository) for repository in REPOS)
    contexts = FakeContexts(digests={"l": OTHER_CONTEXT})
    registries = FakeRegistries(
        {
            "docker.io/user/lone:latest": pushed_with(
                inputs_of(hub, {"alpine:3": ALPINE_DIGEST}).label
            ),
            "alpine:3": digested(ALPINE_DIGEST),
            **{
                full: pushed_with(inputs_of(target(images[3], repository)).label)
                for repository in REPOS
                for full in [f"{repository}/fine:latest"]
            },
        }
    )
    made = plan(images, REPOS, registries, contexts, ["tool"])
    assert reasons(made) == [
        ("tool", REASON_FORCED),
        ("app", "Base image will be rebuilt: docker.io/user/tool:latest"),
        ("lone", "Build context changed"),
        ("fine", None),
    ]
    tool, app, lone, fine = made.images
    assert [d.inputs for d in tool.decisions] == [
        inputs_of(t) for t in tool.node.targets
    ]
    assert [d.inputs for d in app.decisions] == [
        inputs_of(t, {f"{repository}/tool:latest": None})
        for t, repository in zip(app.node.targets, REPOS, strict=True)
    ]
    lone_inputs = [
        inputs_of(t, {"alpine:3": ALPINE_DIGEST}, OTHER_CONTEXT) for t in (hub, ghcr)
    ]
    assert [d.inputs for d in lone.decisions] == lone_inputs
    assert lone.decisions[0].evidence.current == lone_inputs[0]
    assert [d.inputs for d in fine.decisions] == [None, None]
    assert contexts.calls == []
    # the images pulled are asked for up front, for every image
    assert registries.prefetched[-4:] == [
        ("docker.io/user/tool:latest", AMD),
        ("ghcr.io/o/tool:latest", AMD),
        ("alpine:3", AMD),
        ("alpine:3", AMD),
    ]
    assert contexts.prefetched == ["tool"]  # forced


def test_plan_fails_on_a_missing_pulled_image():
    """A rebuilt image records the digests of what it pulls: one missing
    ends the run."""
    images = [using(make_image("app"), "alpine:3")]
    registries = FakeRegistries({"alpine:3": None})
    assert fatal_message(plan, images, GHCR, registries, FakeContexts(), ["app"]) == (
        "Missing image used by the build: alpine:3"
    )


# ----------------------------------------------------------------------------
# What a plan hands to the builds
# ----------------------------------------------------------------------------


def decided_plan(image, position, repositories, cause=None, bases=frozenset()):
    """The image's plan: the same decision, unchecked, for each of its
    targets (cause None: up to date)."""
    own = node(image, position, repositories, bases)
    return db.ImagePlan(own, tuple(db.Decision(t, cause) for t in own.targets))


def test_build_jobs_base_not_rebuilt():
    base, app = BASE_AND_APP
    made = db.Plan(
        (
            decided_plan(base, 0, GHCR),
            decided_plan(app, 1, GHCR, BASE_CHANGED, frozenset({0})),
        )
    )
    (job,) = db.BuildRunner.build_jobs(made)
    assert (job.target.shown_name, job.cause, job.after) == (
        "ghcr.io/o/app",
        BASE_CHANGED,
        [],
    )


def test_build_jobs_nothing_to_rebuild():
    made = db.Plan((decided_plan(make_image("img"), 0, GHCR),))
    assert db.BuildRunner.build_jobs(made) == []


class FakePopen:
    """Replaces subprocess.Popen: records the commands, and each waits for
    its code in `codes` (by full name, 0 for any other)."""

    def __init__(self, codes=None):
        self.codes = codes or {}
        self.calls = []

    def __call__(self, command, env, start_new_session, **_kwargs):
        self.calls.append((command, env, start_new_session))
        code = self.codes.get(command[-2], 0)
        return types.SimpleNamespace(wait=lambda: code, pid=None, stdout=None)


def test_build_bases_first(monkeypatch, capsys, context):
    """A dependent listed before its base is built after it, and without
    look-ups: its base will be rebuilt (its digest is looked up when the
    dependent's build starts, by `complete`)."""
    run = FakePopen()
    monkeypatch.setattr(db.subprocess, "Popen", run)
    registries = FakeRegistries({})
    base_image = make_image("base", directory="b")
    made = plan([IMG, base_image], GHCR, registries, context, ["base:latest"])
    environ = {"K": "V"}
    completed = []

    def complete(target, inputs):
        """Registries.complete, once the base is pushed as DIGEST_1."""
        completed.append((target.full_name, dict(inputs.images), len(run.calls)))
        images = {name: digest or DIGEST_1 for name, digest in inputs.images.items()}
        return dataclasses.replace(inputs, images=images)

    runner = db.BuildRunner(1, environ, False, complete)
    assert runner.run_builds(made) == db.BuildReport(
        {
            BASE: db.Outcome(db.Result.BUILT, 0),
            TARGET: db.Outcome(db.Result.BUILT, 0),
        }
    )
    assert capsys.readouterr().out == (
        "*** ghcr.io/o/base\nReason: Rebuild triggered by command line\n\n\n"
        "*** ghcr.io/o/img\n"
        "Reason: Base image will be rebuilt: ghcr.io/o/base:latest\n\n\n"
    )
    # the base's digest is completed once it is pushed, before its
    # dependent's build
    assert completed == [(BASE, {}, 0), (TARGET, {BASE: None}, 1)]
    # each build records its inputs: the context and options digests, and
    # the base's (none for NONE), also in OCI's base annotations
    assert run.calls == [
        (
            (
                "docker",
                "buildx",
                "build",
                "--label",
                f'docker_build.inputs={{"context":"{CONTEXT}","images":{{}},'
                f'"options":"sha256:{NO_OPTIONS_HEX}","version":2}}',
                "--push",
                "--tag",
                BASE,
                "b",
            ),
            environ,
            True,
        ),
        (
            (
                "docker",
                "buildx",
                "build",
                "--build-arg",
                "DOCKER_REPOSITORY=ghcr.io/o",
                "--label",
                f'docker_build.inputs={{"context":"{CONTEXT}",'
                f'"images":{{"{BASE}":"{DIGEST_1}"}},'
                f'"options":"sha256:{GHCR_OPTIONS_HEX}","version":2}}',
                "--label",
                f"org.opencontainers.image.base.name={BASE}",
                "--label",
                f"org.opencontainers.image.base.digest={DIGEST_1}",
                "--push",
                "--tag",
                TARGET,
                "d",
            ),
            environ,
            True,
        ),
    ]
    assert registries.calls == []


def test_build_dry_run(monkeypatch, capsys, context):
    monkeypatch.setattr(db.subprocess, "run", lambda *a, **k: pytest.fail("built"))
    monkeypatch.setattr(db.subprocess, "Popen", lambda *a, **k: pytest.fail("built"))
    image = make_image("tool:2")
    made = plan([image], REPOS, FakeRegistries({}), context, all_flag=True)
    assert db.BuildRunner(1, {}, True).run_builds(made) == db.BuildReport({})
    assert capsys.readouterr().out == (
        "*** docker.io/user/tool:2\nReason: Rebuild triggered by command line\n\n"
        "*** ghcr.io/o/tool:2\nReason: Rebuild triggered by command line\n\n"
    )


def test_build_every_repository_skips_up_to_date(monkeypatch, capsys):
    run = FakePopen()
    monkeypatch.setattr(db.subprocess, "Popen", run)
    tool = make_image("tool:2", directory="t")
    other = make_image("other", directory="o")
    made = db.Plan(
        (decided_plan(other, 1, REPOS), decided_plan(tool, 0, REPOS, MISSING))
    )
    db.BuildRunner(1, {}, False).run_builds(made)
    assert capsys.readouterr().out == (
        f"*** docker.io/user/tool:2\nReason: {REASON_MISSING}\n\n\n"
        f"*** ghcr.io/o/tool:2\nReason: {REASON_MISSING}\n\n\n"
    )
    assert [command[-2] for command, _, _ in run.calls] == [
        "docker.io/user/tool:2",
        "ghcr.io/o/tool:2",
    ]


def test_build_stops_at_first_failure(monkeypatch, capsys):
    run = FakePopen({"user/b:latest": 7, "user/c:latest": 3})
    monkeypatch.setattr(db.subprocess, "Popen", run)
    images = [make_image(name, directory=name) for name in "abc"]
    made = db.Plan(
        tuple(
            decided_plan(image, n, ["user"], FORCED) for n, image in enumerate(images)
        )
    )
    report = db.BuildRunner(1, {}, False).run_builds(made)
    assert (report.status, report.message) == (
        7,
        "user/b: docker failed with exit status 7",
    )
    assert capsys.readouterr().out == (
        f"*** user/a\nReason: {REASON_FORCED}\n\n\n"
        f"*** user/b\nReason: {REASON_FORCED}\n\n"
    )
    assert [command[-2] for command, _, _ in run.calls] == [
        "user/a:latest",
        "user/b:latest",
    ]


def test_build_in_parallel_nothing_to_build(monkeypatch, capsys):
    monkeypatch.setattr(db.subprocess, "Popen", lambda *a, **k: pytest.fail("built"))
    made = db.Plan((decided_plan(make_image("img"), 0, GHCR),))
    assert db.BuildRunner(4, {}, False).run_builds(made) == db.BuildReport({}, 0)
    # quiet, for cron: no summary
    assert capsys.readouterr() == ("", "")


DEPENDENTS_ANNOUNCED = (
    "*** docker.io/user/base\nReason: Rebuild triggered by command line\n\n"
    "*** ghcr.io/o/base\nReason: Rebuild triggered by command line\n\n"
    "*** docker.io/user/app\n"
    "Reason: Base image will be rebuilt: docker.io/user/base:latest\n\n"
    "*** ghcr.io/o/app\n"
    "Reason: Base image will be rebuilt: ghcr.io/o/base:latest\n\n",
    "*** docker.io/user/top\n"
    "Reason: Base image will be rebuilt: docker.io/user/app:latest\n\n"
    "*** ghcr.io/o/top\n"
    "Reason: Base image will be rebuilt: ghcr.io/o/app:latest\n\n",
)


@pytest.mark.parametrize(
    ("images", "expected"),
    [
        pytest.param(
            BASE_AND_APP,
            DEPENDENTS_ANNOUNCED[0],
            id="base-and-app",
        ),
        pytest.param(
            [
                make_image("top", "$DOCKER_REPOSITORY/app"),
                make_image("app", "$DOCKER_REPOSITORY/base"),
                make_image("base"),
            ],
            "".join(DEPENDENTS_ANNOUNCED),
            id="transitively",
        ),
    ],
)
def test_dry_run_each_target_names_its_own_base(context, capsys, images, expected):
    """Each target of an image built on a rebuilt one names its own base
    (the image's reason names its first target's)."""
    made = plan(images, REPOS, FakeRegistries(), context, ["base:latest"])
    assert (
        reasons(made)
        == [
            ("base", REASON_FORCED),
            ("app", "Base image will be rebuilt: docker.io/user/base:latest"),
            ("top", "Base image will be rebuilt: docker.io/user/app:latest"),
        ][: len(images)]
    )
    db.BuildRunner(1, {}, True).run_builds(made)
    assert capsys.readouterr().out == expected


# ----------------------------------------------------------------------------
# The progress line
# ----------------------------------------------------------------------------


def done_future(value=None):
    future = concurrent.futures.Future()
    future.set_result(value)
    return future


def test_show_progress_all_pending_from_threads():
    stream = io.StringIO()
    started = [concurrent.futures.Future() for _ in range(3)]
    wipe = db.show_progress(started, stream)
    assert stream.getvalue() == ""
    threads = [threading.Thread(target=f.set_result, args=(None,)) for f in started]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wipe(True)
    assert stream.getvalue() == (
        "\rdocker_build: checking 1/3\x1b[K"
        "\rdocker_build: checking 2/3\x1b[K"
        "\rdocker_build: checking 3/3\x1b[K\r\x1b[K"
    )


def test_show_progress_completed_and_pending():
    stream = io.StringIO()
    pending = [concurrent.futures.Future() for _ in range(2)]
    started = [done_future(), *pending, done_future()]
    wipe = db.show_progress(started, stream)
    assert stream.getvalue() == (
        "\rdocker_build: checking 1/4\x1b[K\rdocker_build: checking 2/4\x1b[K"
    )
    pending[1].set_exception(RuntimeError("failed look-ups count too"))
    assert stream.getvalue() == (
        "\rdocker_build: checking 1/4\x1b[K"
        "\rdocker_build: checking 2/4\x1b[K"
        "\rdocker_build: checking 3/4\x1b[K"
    )
    # the line ends at N/N, and waits for it before it is wiped
    waiter = threading.Thread(target=wipe, args=(True,))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()
    pending[0].set_result(None)
    waiter.join(5)
    assert stream.getvalue() == (
        "\rdocker_build: checking 1/4\x1b[K"
        "\rdocker_build: checking 2/4\x1b[K"
        "\rdocker_build: checking 3/4\x1b[K"
        "\rdocker_build: checking 4/4\x1b[K"
        "\r\x1b[K"
    )


def test_show_progress_wiped_early_writes_no_more():
    """A failed plan wipes the line at once; later look-ups write nothing."""
    stream = io.StringIO()
    pending = concurrent.futures.Future()
    wipe = db.show_progress([done_future(), pending], stream)
    wipe(False)
    pending.set_result(None)
    wipe(False)
    assert stream.getvalue() == "\rdocker_build: checking 1/2\x1b[K\r\x1b[K"


def test_show_progress_single_and_none():
    stream = io.StringIO()
    db.show_progress([done_future()], stream)(True)
    assert stream.getvalue() == "\rdocker_build: checking 1/1\x1b[K\r\x1b[K"
    stream = io.StringIO()
    db.show_progress([], stream)(True)
    assert stream.getvalue() == "\r\x1b[K"


# ----------------------------------------------------------------------------
# Reporting decisions: explain, describe_evidence, timestamp
# ----------------------------------------------------------------------------

T_CHANGED = 1767225600  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        (db.Evidence(MISSING), "image missing; Image missing in repository"),
        (
            db.Evidence(None, T_CREATED, True, db.ContextChange(T_CREATED - 1, True)),
            "image created 2024-01-02T03:04:05Z; base layer found; "
            "context changed 2024-01-02T03:04:04Z (commit); up to date",
        ),
        (
            db.Evidence(
                db.Cause(db.Reason.FILES),
                T_CREATED,
                True,
                db.ContextChange(T_CHANGED, False),
            ),
            "image created 2024-01-02T03:04:05Z; base layer found; "
            "context changed 2026-01-01T00:00:00Z (mtime); "
            "Files in docker context more recent than image",
        ),
        (
            db.Evidence(BASE_CHANGED, T_CREATED, False),
            "image created 2024-01-02T03:04:05Z; base layer not found; "
            "Base image has changed",
        ),
    ],
)
def test_describe_evidence(evidence, expected):
    assert db.describe_evidence(evidence) == expected


@pytest.mark.parametrize(
    ("recorded", "current", "finding", "facts"),
    [
        (
            db.Inputs("sha256:c", "sha256:o", {}),
            db.Inputs("sha256:c", "sha256:o", {}),
            None,
            "context sha256:c; options sha256:o; up to date",
        ),
        (
            db.Inputs("sha256:c", "sha256:o", {TOOL: "sha256:1"}),
            db.Inputs("sha256:d", "sha256:p", {TOOL: "sha256:1"}),
            db.Cause(db.Reason.CONTEXT),
            "context sha256:c -> sha256:d; options sha256:o -> sha256:p; "
            f"image {TOOL} sha256:1; Build context changed",
        ),
        (
            db.Inputs(
                "sha256:c", "sha256:o", {TOOL: "sha256:1", "a/gone:1": "sha256:g"}
            ),
            db.Inputs(
                "sha256:c",
                "sha256:o",
                {TOOL: {"linux/amd64": "sha256:2"}, LIB: None},
            ),
            db.Cause(db.Reason.IMAGE, "a/gone:1"),
            "context sha256:c; options sha256:o; image a/gone:1 sha256:g -> none; "
            f"image {LIB} none; "
            f'image {TOOL} sha256:1 -> {{"linux/amd64": "sha256:2"}}; '
            "Image used by the build changed: a/gone:1",
        ),
    ],
    ids=["equal", "context-and-options", "images"],
)
def test_describe_evidence_with_inputs(recorded, current, finding, facts):
    """A labelled image shows each input, recorded -> current where they
    differ."""
    evidence = db.Evidence(finding, T_CREATED, True, recorded=recorded, current=current)
    assert db.describe_evidence(evidence) == (
        f"image created 2024-01-02T03:04:05Z; base layer found; {facts}"
    )


def test_describe_evidence_needs_both_inputs():
    """Only the current inputs (an image without a record): no input is
    shown."""
    evidence = db.Evidence(
        None, T_CREATED, True, BY_COMMIT, current=db.Inputs("c", "o", {})
    )
    assert db.describe_evidence(evidence) == (
        "image created 2024-01-02T03:04:05Z; base layer found; "
        "context changed 2024-01-02T03:04:04Z (commit); up to date"
    )


def test_explain_a_decision_without_evidence(capsys):
    """An image left unchecked and not rebuilt is up to date."""
    db.explain(db.Plan((decided_plan(make_image("img"), 0, REPOS),)))
    assert capsys.readouterr().err == (
        "docker.io/user/img: not checked; up to date\n"
        "ghcr.io/o/img: not checked; up to date\n"
    )


CHECKED_LINE = (
    "image created 2024-01-02T03:04:05Z; base layer found; "
    "context changed 2024-01-02T03:04:04Z (commit); up to date"
)


NO_BASE_LINE = CHECKED_LINE.replace("base layer found", "no base")


def test_explain_every_image_on_stderr(context, capsys):
    """Every target, one line: its evidence (`no base` for an image built
    on NONE or scratch) or why it was not checked."""
    images = [
        make_image("app", "$DOCKER_REPOSITORY/base"),
        make_image("base", "scratch"),  # NONE: test_explain_unchecked_targets
        make_image("tool"),
        make_image("ghcr.io/o/full"),
    ]
    registries = FakeRegistries(
        {
            "docker.io/user/base:latest": UP_TO_DATE,
            "ghcr.io/o/base:latest": UP_TO_DATE,
            "docker.io/user/app:latest": info("sha256:b", "sha256:a"),
            "ghcr.io/o/app:latest": info("sha256:x", "sha256:a"),
            "ghcr.io/o/full:latest": None,
        }
    )
    made = plan(images, REPOS, registries, context, ["tool:latest"], explain=True)
    db.explain(made)
    captured = capsys.readouterr()
    assert captured.out == ""
    # each checked target shows its own finding; the first target that
    # needs a rebuild decides for all of them
    assert captured.err == (
        f"docker.io/user/base: {NO_BASE_LINE}\n"
        f"ghcr.io/o/base: {NO_BASE_LINE}\n"
        f"docker.io/user/app: {CHECKED_LINE}\n"
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
    registries = FakeRegistries(
        {
            "docker.io/user/lone:latest": None,
            "docker.io/user/fine:latest": UP_TO_DATE,
            "ghcr.io/o/fine:latest": UP_TO_DATE,
        }
    )
    made = plan(images, REPOS, registries, context, ["base:latest"], explain=True)
    db.explain(made)
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
        "ghcr.io/o/lone: not checked; Image missing in repository docker.io/user\n"
        f"docker.io/user/fine: {NO_BASE_LINE}\n"
        f"ghcr.io/o/fine: {NO_BASE_LINE}\n"
    )
    # ghcr.io/o/lone is never looked up
    assert registries.calls == [
        "NONE",
        "docker.io/user/lone:latest",
        "NONE",
        "docker.io/user/fine:latest",
        "NONE",
        "ghcr.io/o/fine:latest",
    ]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (T_CREATED, "2024-01-02T03:04:05Z"),
        (1767225600, "2026-01-01T00:00:00Z"),
        (1767225600.75, "2026-01-01T00:00:00Z"),
        (1767225599.999, "2025-12-31T23:59:59Z"),
    ],
)
def test_timestamp(seconds, expected):
    assert db.timestamp(seconds) == expected


# ----------------------------------------------------------------------------
# End to end: decisions of a run
# ----------------------------------------------------------------------------


def test_nothing_to_do(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    succeeded(world.run())
    assert world.calls() == []


def test_image_missing(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", base)
    world.config("app\tapp")
    world.commit()
    result = world.run()
    succeeded(result, rebuilt(world.ref("app"), REASON_MISSING))
    assert world.built() == [world.ref("app:latest")]
    pushed = world.registry.config(world.ref("app:latest"))
    assert pushed["rootfs"]["diff_ids"][:2] == BASE_LAYERS


def test_base_image_changed(world: World) -> None:
    base = world.up_to_date(base_layers=BASE_LAYERS)
    world.registry.push(base, T_LATER, [*BASE_LAYERS, new_layer("base")])
    succeeded(world.run(), rebuilt(world.ref("app"), REASON_BASE))
    assert world.built() == [world.ref("app:latest")]


def test_base_none_is_never_compared(world: World) -> None:
    world.dockerfile("app", world.ref("base:1"))
    world.config("app\tapp\tNONE")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [new_layer("app")])
    succeeded(world.run())


def test_base_without_layers(world: World) -> None:
    world.up_to_date(base_layers=[])
    succeeded(world.run())


def test_full_name_image_ignores_repositories(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", base)
    world.config(f"{world.ref('tool:v2')}\tapp")
    world.commit()
    result = world.run("-n", env={"DOCKER_REPOSITORY": ""})
    succeeded(result, announced(world.ref("tool:v2"), REASON_MISSING))


@pytest.mark.also_sequential
def test_second_repository_decides(world: World) -> None:
    second = world.namespace + "-mirror"
    world.up_to_date(base_layers=BASE_LAYERS)
    env = {"DOCKER_REPOSITORY": f"{world.namespace} {second}"}
    reason = REASON_MISSING
    expected = announced(world.ref("app"), f"{reason} {second}") + announced(
        f"{second}/app", reason
    )
    succeeded(world.run("-n", env=env), expected)


@pytest.mark.also_sequential
def test_two_repositories(world: World) -> None:
    second = world.namespace + "-mirror"
    base = world.up_to_date(base_layers=BASE_LAYERS)
    world.registry.push(f"{second}/app:latest", T_IMAGE, [*BASE_LAYERS, new_layer("m")])
    env = {"DOCKER_REPOSITORY": f"{world.namespace} {second}"}
    succeeded(world.run(env=env))
    world.registry.push(base, T_LATER, [new_layer("new base")])
    reason = REASON_BASE
    expected = rebuilt(world.ref("app"), reason) + rebuilt(f"{second}/app", reason)
    succeeded(world.run(env=env), expected)
    assert world.built() == [world.ref("app:latest"), f"{second}/app:latest"]


# Platforms: every platform an image is built for is checked.


@pytest.mark.parametrize(
    ("option", "platforms"),
    [
        ("--platform=linux/arm64", ["linux/arm64"]),
        ("--platform linux/amd64,linux/arm64", ["linux/amd64", "linux/arm64"]),
    ],
    ids=["arm64-only", "two-platforms"],
)
def test_change_in_the_arm64_base_rebuilds(
    world: World, option: str, platforms: list[str]
) -> None:
    """An image built for arm64 (alone or with amd64, pushed as an index)
    is checked for arm64: a change of the base's arm64 image rebuilds it."""
    base = multi_base(world)
    world.dockerfile("app", base)
    world.config(f"app\tapp\t\t{option}")
    world.commit()
    base_layers = {"linux/amd64": BASE_LAYERS, "linux/arm64": ARM_LAYERS}
    world.registry.push(
        world.ref("app"),
        T_IMAGE,
        {p: [*base_layers[p], new_layer(p)] for p in platforms},
        index=True,
    )
    succeeded(world.run())
    world.registry.push(
        base, T_LATER, {"linux/amd64": BASE_LAYERS, "linux/arm64": [new_layer("n")]}
    )
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_global_and_image_platforms_add_up(world: World) -> None:
    """buildx builds both when both flags are given."""
    base = multi_base(world)
    world.dockerfile("snmp", base)
    world.config("--platform=linux/amd64", "snmp\tsnmp\t\t--platform=linux/arm64")
    world.commit()
    world.registry.push(world.ref("snmp"), T_IMAGE, [*BASE_LAYERS, new_layer("s")])
    reason = f"{REASON_MISSING} for linux/arm64"
    succeeded(world.run(), rebuilt(world.ref("snmp"), reason))
    (call,) = world.calls()
    assert call["argv"][2:4] == ["--platform=linux/amd64", "--platform=linux/arm64"]
    amd = world.registry.config(world.ref("snmp"), "linux/amd64")
    arm = world.registry.config(world.ref("snmp"), "linux/arm64")
    assert (amd["rootfs"]["diff_ids"][:2], arm["rootfs"]["diff_ids"][:2]) == (
        BASE_LAYERS,
        ARM_LAYERS,
    )
    succeeded(world.run())


# ----------------------------------------------------------------------------
# End to end: forced images
# ----------------------------------------------------------------------------


def test_forced_by_name(world: World) -> None:
    two_images(world)
    succeeded(world.run("two"), rebuilt(world.ref("two"), REASON_FORCED))


def test_forced_by_base_name(world: World) -> None:
    base = two_images(world)
    succeeded(world.run(base), rebuilt(world.ref("one"), REASON_FORCED))


def test_all(world: World) -> None:
    two_images(world)
    expected = rebuilt(world.ref("one"), REASON_FORCED) + rebuilt(
        world.ref("two"), REASON_FORCED
    )
    succeeded(world.run("--all"), expected)
    assert world.built() == [world.ref("one:latest"), world.ref("two:latest")]


def test_all_with_exclusion(world: World) -> None:
    two_images(world)
    succeeded(world.run("-a", "one:latest"), rebuilt(world.ref("two"), REASON_FORCED))


def test_unknown_image_argument(world: World) -> None:
    two_images(world)
    result = world.run("three")
    failed(result, "Image three not found in 'docker_images' configuration file\n")


@pytest.mark.also_sequential
def test_dry_run(world: World) -> None:
    two_images(world)
    world.registry.push(world.ref("base:1"), T_LATER, [new_layer("new base")])
    result = world.run("--dry-run", "two")
    expected = announced(world.ref("one"), REASON_BASE) + announced(
        world.ref("two"), REASON_FORCED
    )
    succeeded(result, expected)
    assert world.calls() == []


def test_dry_run_into_a_closed_pipe(world: World) -> None:
    """A reader that has gone away (`| true`) ends the run quietly: no
    traceback, SIGPIPE's status."""
    two_images(world)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"'{EXECUTABLE}' -n --all | true"],
        cwd=world.root,
        env=world.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (141, "", "")


# ----------------------------------------------------------------------------
# End to end: images built on images of the file
# ----------------------------------------------------------------------------


def test_repository_base_and_dependent_image(world: World) -> None:
    """ipterm on ipterm-base: the base is rebuilt first, then the image
    built on it (the reference tool found "Base image has changed" after
    the base's build; this tool knows it before any build)."""
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("ipterm/base", base)
    world.write(
        "ipterm/cli/Dockerfile",
        "ARG DOCKER_REPOSITORY\nFROM $DOCKER_REPOSITORY/ipterm-base\n",
    )
    world.config("ipterm-base\tipterm/base", "ipterm\tipterm/cli")
    world.commit()
    world.registry.push(
        world.ref("ipterm-base"), T_IMAGE, [*BASE_LAYERS, "sha256:" + "3" * 64]
    )
    world.registry.push(
        world.ref("ipterm"),
        T_IMAGE,
        [*BASE_LAYERS, "sha256:" + "3" * 64, new_layer("i")],
    )
    succeeded(world.run())
    world.write("ipterm/base/motd", "hello\n")
    world.commit(when=T_LATER)
    expected = rebuilt(world.ref("ipterm-base"), REASON_GIT) + rebuilt(
        world.ref("ipterm"),
        f"Base image will be rebuilt: {world.ref('ipterm-base:latest')}",
    )
    succeeded(world.run(), expected)
    ipterm = world.calls()[1]["argv"]
    assert ipterm[2:4] == ["--build-arg", f"DOCKER_REPOSITORY={world.namespace}"]
    new_base = world.registry.config(world.ref("ipterm-base"))["rootfs"]["diff_ids"]
    assert (
        world.registry.config(world.ref("ipterm"))["rootfs"]["diff_ids"][:3] == new_base
    )


def test_cycle_is_an_error(world: World) -> None:
    world.dockerfile("a", "$DOCKER_REPOSITORY/b")
    world.dockerfile("b", "$DOCKER_REPOSITORY/a")
    world.config("a\ta", "b\tb")
    result = world.run("-n")
    failed(result, "Dependency cycle: a -> b -> a\n")


@pytest.mark.also_sequential
def test_dry_run_reports_dependents(world: World) -> None:
    chain(world)
    assert world.run().stdout == ""
    touch_root(world)
    result = world.run("-n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == expected_chain(world)
    assert world.calls() == []


def test_forcing_a_base_propagates(world: World) -> None:
    chain(world)
    result = world.run("-n", "middle")
    assert result.stdout == announced(world.ref("middle"), REASON_FORCED) + announced(
        world.ref("tool"), f"Base image will be rebuilt: {world.ref('middle:latest')}"
    )


@pytest.mark.also_sequential
def test_explain(world: World) -> None:
    chain(world)
    world.write("other/new", "x\n", mtime=T_LATER)
    for path in ("other", "other/Dockerfile"):
        os.utime(world.root / path, (T_COMMIT, T_COMMIT))
    result = world.run("--explain", "-n")
    assert result.returncode == 0
    assert result.stdout == announced(world.ref("other"), REASON_FILES)
    created, committed = utc(T_IMAGE), utc(T_COMMIT)
    up_to_date = (
        f"image created {created}; base layer found; "
        f"context changed {committed} (commit); up to date"
    )
    assert result.stderr.splitlines() == [
        f"{world.ref('other')}: image created {created}; base layer found; "
        f"context changed {utc(T_LATER)} (mtime); {REASON_FILES}",
        f"{world.ref('root')}: {up_to_date}",
        f"{world.ref('middle')}: {up_to_date}",
        f"{world.ref('tool')}: {up_to_date}",
    ]
