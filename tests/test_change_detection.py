"""Change detection: when a build directory last changed. The rules of
.dockerignore, the file times of the build context, git's view of the
directory (the last commit touching it when clean, the times of what the
build would get when dirty), ContextChanges asking once per image, and
end-to-end runs that rebuild (or not) because of a change of the context.

Unit tests use real git repositories in tmp_path."""

from __future__ import annotations

import datetime
import os
import subprocess
import threading
import time

import pytest
from conftest import (
    BASE_LAYER,
    REASON_FILES,
    REASON_GIT,
    T_COMMIT,
    T_IMAGE,
    T_LATER,
    World,
    announced,
    fatal_message,
    load_tool,
    rebuilt,
    succeeded,
)
from imagetools import new_layer

db = load_tool()

AMD = ("linux/amd64",)
CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
BASE_LAYERS = [BASE_LAYER, "sha256:" + "2" * 64]
COMMITTED = "@1600000000 +0000"  # when the test repositories commit


def image_of(directory, name="img"):
    """An image built in `directory`, on no base."""
    return db.Image(name, name + ":latest", str(directory), "NONE", (), AMD)


def by_files(when: float):
    return db.ContextChange(when, by_commit=False)


def by_commit(when: float):
    return db.ContextChange(when, by_commit=True)


def git(cwd, *args, date=COMMITTED):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_DATE": date,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, env=env, capture_output=True
    )


def touch(path, mtime, text="x"):
    """A file (made when missing) modified at `mtime`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(text)
    os.utime(path, (1, mtime))


def set_tree_mtime(directory, mtime):
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (1, mtime))
    os.utime(directory, (1, mtime))


@pytest.fixture
def environ(tmp_path):
    """An environment where git never finds a repository above tmp_path."""
    return {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)}


# ----------------------------------------------------------------------------
# glob_regex, dockerignored, dockerignore_patterns
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "regex"),
    [
        ("*.log", r"[^/]*\.log"),
        ("a?c", "a[^/]c"),
        ("**/tmp", "(?:.*/)?tmp"),
        ("a/**", "a/.*"),
        ("a/**/b", "a/(?:.*/)?b"),
        ("x+y(1)", r"x\+y\(1\)"),
        ("", ""),
    ],
)
def test_glob_regex(pattern, regex):
    assert db.glob_regex(pattern) == regex


def rules(*lines, tmp_path):
    (tmp_path / ".dockerignore").write_text("".join(line + "\n" for line in lines))
    return db.dockerignore_patterns(str(tmp_path))


@pytest.mark.parametrize(
    ("lines", "path", "expected"),
    [
        (["*.log"], "a.log", True),
        (["*.log"], "sub/a.log", False),  # * stays in its directory
        (["*.log"], "a.logx", False),
        (["*/*.log"], "sub/a.log", True),
        (["**/*.log"], "a.log", True),
        (["**/*.log"], "sub/deep/a.log", True),
        (["secret/"], "secret", True),
        (["secret/"], "secret/key", True),  # a parent rule covers its contents
        (["secret/"], "secret/a/b/key", True),
        (["secret/"], "secrets", False),
        (["secret/"], "sub/secret", False),
        (["**/tmp"], "tmp", True),
        (["**/tmp"], "a/b/tmp", True),
        (["**/tmp"], "a/b/tmp/file", True),
        (["**/tmp"], "a/tmpx", False),
        (["*.log", "!keep.log"], "keep.log", False),
        (["*.log", "!keep.log"], "other.log", True),
        (["!keep.log", "*.log"], "keep.log", True),  # the last rule wins
        (["secret", "!secret/public"], "secret/public", False),
        (["secret", "!secret/public"], "secret/public/x", False),
        (["secret", "!secret/public"], "secret/private", True),
        (["./x"], "x", True),
        (["/x"], "x", True),
        (["/x"], "y/x", False),
        (["a/../b"], "b", True),
        (["  *.log  "], "a.log", True),
        (["?"], "a", True),
        (["?"], "ab", False),
        (["*"], "any/thing", True),
        (["a/**"], "a/b/c", True),
        (["a/**"], "ab", False),
        (["*.[oa]"], "a.o", True),  # a character class
    ],
)
def test_dockerignored(tmp_path, lines, path, expected):
    assert db.dockerignored(path, rules(*lines, tmp_path=tmp_path)) is expected


def test_dockerignored_without_rules():
    assert db.dockerignored("anything", []) is False


def test_dockerignore_patterns(tmp_path):
    (tmp_path / ".dockerignore").write_text(
        "# a comment\n\n   \n*.log\n  # indented comment\n!keep.log\n/build/\n"
    )
    assert [
        (exception, pattern.pattern)
        for exception, pattern in db.dockerignore_patterns(str(tmp_path))
    ] == [(False, r"[^/]*\.log"), (True, r"keep\.log"), (False, "build")]


def test_dockerignore_patterns_missing_file(tmp_path):
    assert db.dockerignore_patterns(str(tmp_path)) == []
    assert db.dockerignore_patterns(str(tmp_path / "missing")) == []


def test_dockerignore_patterns_not_utf8(tmp_path):
    (tmp_path / ".dockerignore").write_bytes(b"*.log\n\xff\xfe\n")
    assert db.dockerignore_patterns(str(tmp_path)) == []


# ----------------------------------------------------------------------------
# walk_files, context_mtime
# ----------------------------------------------------------------------------


def test_walk_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "g").write_text("y")
    (tmp_path / "empty").mkdir()
    assert sorted(db.walk_files(str(tmp_path))) == [
        "a",
        "a/b",
        "a/b/f",
        "empty",
        "g",
    ]


def test_walk_files_empty_and_missing(tmp_path):
    assert db.walk_files(str(tmp_path)) == []
    assert db.walk_files(str(tmp_path / "missing")) == []


def test_context_mtime_of_a_walked_tree(tmp_path):
    """The newest of the directory, its files and its subdirectories."""
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


def test_context_mtime_honours_dockerignore(tmp_path):
    touch(tmp_path / "Dockerfile", 1000)
    touch(tmp_path / "debug.log", 5000)
    touch(tmp_path / "secret" / "key", 6000)
    touch(tmp_path / "keep.log", 2000)
    touch(tmp_path / ".dockerignore", 1500, "*.log\n!keep.log\nsecret\n")
    os.utime(tmp_path / "secret", (1, 7000))
    os.utime(tmp_path, (1, 900))
    files = db.walk_files(str(tmp_path))
    assert db.context_mtime(str(tmp_path), files) == 2000
    os.utime(tmp_path, (1, 3000))  # the directory itself counts
    assert db.context_mtime(str(tmp_path), files) == 3000
    assert db.context_mtime(str(tmp_path), files, root=False) == 2000


def test_context_mtime_skips_vanished_and_links(tmp_path):
    touch(tmp_path / "f", 1000)
    os.symlink("/nonexistent/target", tmp_path / "link")
    os.utime(tmp_path / "link", (1, 4000), follow_symlinks=False)
    assert db.context_mtime(str(tmp_path), ["f", "gone", "link"], root=False) == 4000
    assert db.context_mtime(str(tmp_path), ["gone"], root=False) == 0.0
    assert db.context_mtime(str(tmp_path), [], root=False) == 0.0


# ----------------------------------------------------------------------------
# context_change outside git
# ----------------------------------------------------------------------------


def test_context_change_outside_git(tmp_path, environ):
    directory = tmp_path / "plain"
    (directory / "sub").mkdir(parents=True)
    (directory / "sub" / "file").write_text("x")
    set_tree_mtime(directory, 1500000000)
    os.utime(directory / "sub", (1, 1500000042))
    image = image_of(directory)
    assert db.context_change(image, environ) == by_files(1500000042)


def test_context_change_outside_git_honours_dockerignore(tmp_path, environ):
    directory = tmp_path / "plain"
    touch(directory / "Dockerfile", 1000)
    touch(directory / "cache" / "big", 9000)
    touch(directory / ".dockerignore", 1100, "cache\n")
    os.utime(directory / "cache", (1, 9000))
    os.utime(directory, (1, 1200))
    assert db.context_change(image_of(directory), environ) == by_files(1200)


def test_context_change_dockerfile_always_counts(tmp_path, environ):
    directory = tmp_path / "plain"
    touch(directory / "src" / "app", 1000)
    touch(directory / ".dockerignore", 1000, "*\n!src\n")
    touch(directory / "Dockerfile", 8000)
    os.utime(directory / "src", (1, 1000))
    os.utime(directory, (1, 1000))
    assert db.context_change(image_of(directory), environ) == by_files(8000)


# ----------------------------------------------------------------------------
# context_change in git: clean directories go by their last commit
# ----------------------------------------------------------------------------


@pytest.fixture
def two_commits(tmp_path):
    """A git repo with two build dirs, one/ and two/, committed at
    different times."""
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


def test_context_change_clean_git(two_commits, environ):
    one = image_of(two_commits / "one", "one")
    two = image_of(two_commits / "two", "two")
    assert db.context_change(one, environ) == by_commit(1600000000)
    assert db.context_change(two, environ) == by_commit(1700000000)


def test_context_change_dirty_git(two_commits, environ):
    (two_commits / "one" / "Dockerfile").write_text("FROM debian\n")
    set_tree_mtime(two_commits / "one", 1650000000)
    os.utime(two_commits / "one" / "Dockerfile", (1, 1650000123.5))
    image = image_of(two_commits / "one", "one")
    assert db.context_change(image, environ) == by_files(1650000123.5)


def test_context_change_untracked_file(two_commits, environ):
    (two_commits / "two" / "new").write_text("x")
    set_tree_mtime(two_commits / "two", 1234567890)
    image = image_of(two_commits / "two", "two")
    assert db.context_change(image, environ) == by_files(1234567890)
    # the other directory stays clean
    one = image_of(two_commits / "one", "one")
    assert db.context_change(one, environ) == by_commit(1600000000)


def test_context_change_ignored_files_only(two_commits, environ):
    """Clean, but no commit touches the directory: the times of the files
    that would go into the context count; git ignores all of them, so
    none does (the reference failed with int(''))."""
    (two_commits / ".gitignore").write_text("three/\n")
    git(two_commits, "add", ".gitignore")
    git(two_commits, "commit", "-q", "-m", "ignore", date="@1700000001 +0000")
    (two_commits / "three").mkdir()
    (two_commits / "three" / "Dockerfile").write_text("FROM alpine\n")
    set_tree_mtime(two_commits / "three", 1750000000)
    image = image_of(two_commits / "three", "three")
    assert db.context_change(image, environ) == by_files(0.0)


# ----------------------------------------------------------------------------
# context_change in git: dirty directories go by what the build gets
# (git_context_mtime)
# ----------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path):
    """A repository with ctx/ (Dockerfile, sub/tracked) and other/, all
    committed, every time at 1000."""
    root = tmp_path / "repo"
    touch(root / "ctx" / "Dockerfile", 1000, "FROM alpine\n")
    touch(root / "ctx" / "sub" / "tracked", 1000)
    touch(root / "other" / "Dockerfile", 1000, "FROM alpine\n")
    touch(root / ".gitignore", 1000, "*.tmp\nbuild/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "all")
    set_tree_mtime(root / "ctx", 1000)
    return root


def status(directory, environ):
    """git status of the directory, as context_change asks for it."""
    return db.run_git(
        ["status", "--porcelain", "-z", "--", "."], str(directory), environ
    )


def test_context_change_clean(repo, environ):
    assert db.context_change(image_of(repo / "ctx"), environ) == by_commit(1600000000)


def test_git_context_mtime_counts_untracked(repo, environ):
    touch(repo / "ctx" / "new", 3000)
    image = image_of(repo / "ctx")
    assert (
        db.git_context_mtime(image, status(repo / "ctx", environ).stdout, environ)
        == 3000
    )
    assert db.context_change(image, environ) == by_files(3000)


def test_git_context_mtime_git_ignored_does_not_count(repo, environ):
    touch(repo / "ctx" / "new", 3000)
    touch(repo / "ctx" / "x.tmp", 9000)
    touch(repo / "ctx" / "build" / "out", 9000)
    os.utime(repo / "ctx" / "build", (1, 9000))
    os.utime(repo / "ctx", (1, 9500))  # nor the directory's own time
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(3000)


def test_git_context_mtime_dockerignored_does_not_count(repo, environ):
    touch(repo / "ctx" / "new", 3000)
    touch(repo / "ctx" / "notes.md", 8000)
    touch(repo / "ctx" / "sub" / "tracked", 7000)
    touch(repo / "ctx" / ".dockerignore", 2000, "*.md\nsub/\n")
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(3000)


def test_git_context_mtime_modified_tracked_file(repo, environ):
    (repo / "ctx" / "sub" / "tracked").write_text("changed")
    os.utime(repo / "ctx" / "sub" / "tracked", (1, 4000))
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(4000)


def test_git_context_mtime_deleted_file_counts_by_its_directory(repo, environ):
    (repo / "ctx" / "sub" / "tracked").unlink()
    touch(repo / "ctx" / "sub" / "kept", 1000)
    os.utime(repo / "ctx" / "sub", (1, 5000))
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(5000)


def test_git_context_mtime_deleted_file_at_the_top(repo, environ):
    (repo / "ctx" / "Dockerfile").unlink()
    os.utime(repo / "ctx", (1, 6000))
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(6000)


def test_git_context_mtime_deleted_file_of_a_context_below_the_top(repo, environ):
    """git status names the file from the repository's top; the context is
    deeper."""
    touch(repo / "a" / "ctx" / "Dockerfile", 1000, "FROM alpine\n")
    touch(repo / "a" / "ctx" / "d" / "f", 1000)
    git(repo, "add", "a")
    git(repo, "commit", "-q", "-m", "a")
    (repo / "a" / "ctx" / "d" / "f").unlink()
    os.utime(repo / "a" / "ctx" / "d", (1, 4500))
    set_tree_mtime(repo / "a" / "ctx", 1000)
    os.utime(repo / "a" / "ctx" / "d", (1, 4500))
    assert db.context_change(image_of(repo / "a" / "ctx"), environ) == by_files(4500)


def test_git_context_mtime_deleted_directory(repo, environ):
    (repo / "ctx" / "sub" / "tracked").unlink()
    (repo / "ctx" / "sub").rmdir()
    os.utime(repo / "ctx", (1, 5000))
    os.utime(repo / "ctx" / "Dockerfile", (1, 1000))
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(5000)


def test_git_context_mtime_deleted_file_in_a_directory_with_a_space(repo, environ):
    touch(repo / "ctx" / "my dir" / "f", 1000)
    touch(repo / "ctx" / "my dir" / "g", 1000)
    git(repo, "add", "ctx")
    git(repo, "commit", "-q", "-m", "space")
    (repo / "ctx" / "my dir" / "f").unlink()
    set_tree_mtime(repo / "ctx", 1000)
    os.utime(repo / "ctx" / "my dir", (1, 5000))
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(5000)


def test_context_change_directory_without_tracked_files(repo, environ):
    """Untracked files only: dirty, the files count."""
    touch(repo / "fresh" / "Dockerfile", 2500, "FROM alpine\n")
    touch(repo / "fresh" / "junk.tmp", 9000)
    os.utime(repo / "fresh", (1, 9500))
    assert db.context_change(image_of(repo / "fresh"), environ) == by_files(2500)


def test_context_change_all_ignored_directory(repo, environ):
    """Clean, no commit touches it: no file would be counted by git."""
    touch(repo / "build" / "Dockerfile", 2500, "FROM alpine\n")
    assert db.context_change(image_of(repo / "build"), environ) == by_files(0.0)


def test_context_change_empty_directory_in_git(repo, environ):
    (repo / "empty").mkdir()
    os.utime(repo / "empty", (1, 2500))
    assert db.context_change(image_of(repo / "empty"), environ) == by_files(0.0)


# ----------------------------------------------------------------------------
# context_change and git_context_mtime: git fails
# ----------------------------------------------------------------------------


def test_context_change_no_commits(tmp_path, environ):
    root = tmp_path / "empty"
    (root / "ctx").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    image = image_of(root / "ctx")
    assert fatal_message(db.context_change, image, environ) == (
        "img: Can't get commit date: "
        "fatal: your current branch 'main' does not have any commits yet"
    )


def test_context_change_git_status_fails(tmp_path, environ):
    missing = str(tmp_path / "missing")
    image = image_of(missing)
    assert fatal_message(db.context_change, image, environ) == (
        f"img: Can't get git status: fatal: cannot change to '{missing}': "
        "No such file or directory"
    )


def test_git_context_mtime_ls_files_fails(tmp_path, environ):
    missing = tmp_path / "missing"
    assert fatal_message(db.git_context_mtime, image_of(missing), "", environ) == (
        f"img: Can't list files: fatal: cannot change to '{missing}': "
        "No such file or directory"
    )


def test_context_change_without_git(tmp_path):
    image = image_of(tmp_path)
    environ = {"PATH": str(tmp_path / "nobin")}
    assert fatal_message(db.context_change, image, environ) == (
        "Can't run git: [Errno 2] No such file or directory: 'git'"
    )


# ----------------------------------------------------------------------------
# ContextChanges
# ----------------------------------------------------------------------------


@pytest.fixture
def changes(monkeypatch):
    """context_change replaced: `broken` fails, others changed at 5 (by a
    commit); the calls are recorded."""
    calls = []
    lock = threading.Lock()

    def context_change(found, environ):
        with lock:
            calls.append((found.name, environ))
        if found.name == "broken":
            raise db.Fatal("broken: Can't get git status: fatal: broken")
        return by_commit(5.0)

    monkeypatch.setattr(db, "context_change", context_change)
    return calls


def test_context_changes_defers_errors(changes):
    environ = {"K": "V"}
    contexts = db.ContextChanges(environ, jobs=2)
    good, broken = image_of("good", "good"), image_of("broken", "broken")
    contexts.prefetch([good, broken])  # nothing raised
    assert contexts.get(good) == by_commit(5.0)
    assert fatal_message(contexts.get, broken) == (
        "broken: Can't get git status: fatal: broken"
    )
    assert fatal_message(contexts.get, broken) == (
        "broken: Can't get git status: fatal: broken"
    )
    assert contexts.get(good) == by_commit(5.0)
    # asked once each, with the environment
    assert sorted(changes) == [("broken", environ), ("good", environ)]
    contexts.close()


def test_context_changes_get_without_prefetch(changes):
    contexts = db.ContextChanges({})
    assert contexts.get(image_of("a", "a")) == by_commit(5.0)
    assert contexts.get(image_of("a", "a")) == by_commit(5.0)
    assert changes == [("a", {})]
    contexts.close()


@pytest.mark.parametrize(("jobs", "overlapped"), [((), False), ((2,), True)])
def test_context_changes_ask_jobs_at_a_time(monkeypatch, jobs, overlapped):
    """One question at a time by default; with jobs=2 the second question
    is asked while the first is still open."""
    second_asked = threading.Event()
    timeout = 30 if overlapped else 0.5

    def context_change(found, environ):
        if found.name == "second":
            second_asked.set()
            return by_files(2.0)
        # one job never lets the second start: the timeout only bounds the wait
        return by_files(float(second_asked.wait(timeout)))

    monkeypatch.setattr(db, "context_change", context_change)
    contexts = db.ContextChanges({}, *jobs)
    first, second = image_of("first", "first"), image_of("second", "second")
    contexts.prefetch([first, second])
    assert contexts.get(first) == by_files(float(overlapped))
    assert contexts.get(second) == by_files(2.0)
    contexts.close()


def test_context_changes_real_directory(tmp_path):
    directory = tmp_path / "ctx"
    directory.mkdir()
    (directory / "Dockerfile").write_text("FROM alpine\n")
    os.utime(directory / "Dockerfile", (1, 1234))
    os.utime(directory, (1, 1000))
    contexts = db.ContextChanges({"PATH": os.environ["PATH"]})
    assert contexts.get(image_of(directory)) == by_files(1234)
    contexts.close()


class FakeRegistries(db.Registries):
    """Registries whose look-ups come from `infos` (an ImageInfo serves
    every platform)."""

    def __init__(self, infos):
        super().__init__(db.Credentials({}, {}, {}))
        self.infos = infos

    def lookup(self, reference, platforms):
        if reference in db.UNTAGGED_BASES:
            return super().lookup(reference, platforms)
        return dict.fromkeys(platforms, self.infos[reference])


def test_planner_check_real_context_outside_git(tmp_path, environ):
    """A ContextChanges asks once per image: a new one sees the new time,
    and the files are then newer than the pushed image."""
    directory = tmp_path / "ctx"
    directory.mkdir()
    (directory / "Dockerfile").write_text("FROM alpine\n")
    (target,) = db.image_targets(image_of(directory), ["user"])
    registries = FakeRegistries({"user/img:latest": db.ImageInfo(CREATED, ("i",))})
    set_tree_mtime(directory, CREATED.timestamp() - 10)
    contexts = db.ContextChanges(environ)
    assert db.Planner(registries, contexts).check(target).finding is None
    contexts.close()
    set_tree_mtime(directory, CREATED.timestamp() + 10)
    contexts = db.ContextChanges(environ)
    assert db.Planner(registries, contexts).check(target).finding.text == (REASON_FILES)
    contexts.close()
    registries.close()


# ----------------------------------------------------------------------------
# End to end: a run rebuilds for a change of the context, and only for one
# ----------------------------------------------------------------------------


def test_newer_commit(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    world.write("app/extra.txt", "more\n")
    world.commit(when=T_LATER)
    succeeded(world.run(), rebuilt(world.ref("app"), REASON_GIT))


def test_commit_elsewhere_is_ignored(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    world.write("other/file.txt", "x\n")
    world.commit(when=T_LATER)
    succeeded(world.run())


def test_dirty_tree(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    world.write("app/new.txt", "uncommitted\n", mtime=T_LATER)
    succeeded(world.run(), rebuilt(world.ref("app"), REASON_FILES))


def test_dirty_tree_older_than_image(world: World) -> None:
    world.up_to_date(base_layers=BASE_LAYERS)
    world.write("app/new.txt", "uncommitted\n", mtime=T_COMMIT)
    for path in ("app/Dockerfile", "app"):
        os.utime(world.root / path, (T_COMMIT, T_COMMIT))
    succeeded(world.run())


def test_dirty_tree_counts_only_the_build_context(world: World) -> None:
    """Ignored files (by git or .dockerignore) and .git do not count."""
    world.up_to_date()
    world.write(".gitignore", "*.o\n")
    world.write("app/.dockerignore", "*.log\nsecret/\n")
    world.commit()
    created = time.time() + 1000  # after every file written so far
    layers = ["sha256:" + "1" * 64, new_layer("a")]
    world.registry.push(world.ref("app"), created, layers)
    world.write("app/notes.txt", "untracked\n", mtime=T_COMMIT)  # dirty now
    later = created + 500
    world.write("app/main.o", "ignored by git\n", mtime=later)
    world.write("app/debug.log", "ignored by docker\n", mtime=later)
    world.write("app/secret/key", "ignored by docker\n", mtime=later)
    result = world.run()
    succeeded(result)
    world.write("app/main.c", "counts\n", mtime=later)
    result = world.run("-n")
    assert result.stdout == announced(world.ref("app"), REASON_FILES)


def test_directory_without_tracked_files(world: World) -> None:
    """git knows nothing of the directory (all ignored): the reference
    tool stopped with "Can't get commit date"."""
    world.write(".gitignore", "app/\n")
    world.up_to_date()
    result = world.run()
    succeeded(result)


def test_directory_outside_git(plain_world: World) -> None:
    world = plain_world
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", base, mtime=T_COMMIT)
    world.config("app\tapp")
    os.utime(world.root / "app", (T_COMMIT, T_COMMIT))
    world.registry.push(
        world.ref("app:latest"), T_IMAGE, [*BASE_LAYERS, new_layer("a")]
    )
    succeeded(world.run())
    world.write("app/late.txt", "x\n", mtime=T_LATER)
    succeeded(world.run(), rebuilt(world.ref("app"), REASON_FILES))
