"""Change detection: when a build directory last changed. The rules of
.dockerignore, the file times of the build context, git's view of the
directory (the last commit touching it when clean, the times of what the
build would get when dirty): the fallback for images without a record of
their inputs. The digest of a build context (git blob ids, FileHashes, the
work tree's index), ContextChanges asking once per image and git once per
work tree, and end-to-end runs that rebuild (or not) because of a change
of the context, by times or by recorded inputs.

Unit tests use real git repositories in tmp_path."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import imagetools
import pytest
from conftest import (
    AMD,
    BASE_LAYER,
    BASE_LAYERS,
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

CREATED = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
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
    return db.dockerignore_patterns(str(tmp_path / ".dockerignore"))


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
        for exception, pattern in db.dockerignore_patterns(
            str(tmp_path / ".dockerignore")
        )
    ] == [(False, r"[^/]*\.log"), (True, r"keep\.log"), (False, "build")]


def test_dockerignore_patterns_missing_file(tmp_path):
    assert db.dockerignore_patterns(str(tmp_path / ".dockerignore")) == []
    assert db.dockerignore_patterns(str(tmp_path)) == []  # a directory


def test_dockerignore_patterns_not_utf8(tmp_path):
    (tmp_path / ".dockerignore").write_bytes(b"*.log\n\xff\xfe\n")
    assert db.dockerignore_patterns(str(tmp_path / ".dockerignore")) == []


@pytest.mark.parametrize(
    ("files", "dockerfile", "excluded", "sent"),
    [
        # the context's .dockerignore, sent itself whatever it says
        (
            {".dockerignore": "a\n.dockerignore\nDockerfile\n"},
            "Dockerfile",
            ["a"],
            ["b", ".dockerignore", "Dockerfile"],
        ),
        # Dockerfile.dockerignore in place of .dockerignore: both directions
        (
            {".dockerignore": "a\n", "Dockerfile.dockerignore": "b\n"},
            "Dockerfile",
            ["b"],
            ["a", ".dockerignore", "Dockerfile.dockerignore"],
        ),
        # a -f Dockerfile's own ignore file, beside it in a subdirectory
        (
            {".dockerignore": "a\n", "sub/app.Dockerfile.dockerignore": "b\n"},
            "sub/app.Dockerfile",
            ["b"],
            ["a", "sub/app.Dockerfile.dockerignore"],
        ),
        # another Dockerfile's ignore file is only a file
        (
            {".dockerignore": "a\n", "other.Dockerfile.dockerignore": "b\n"},
            "Dockerfile",
            ["a"],
            ["b", "other.Dockerfile.dockerignore"],
        ),
    ],
)
def test_context_rules(tmp_path, files, dockerfile, excluded, sent):
    """BuildKit reads <Dockerfile>.dockerignore in place of .dockerignore."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    rules = db.context_rules(str(tmp_path), str(tmp_path / dockerfile))
    assert [path for path in excluded + sent if rules.excludes(path)] == excluded


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
    assert (
        db.context_mtime(str(tree), str(tree / "Dockerfile"), db.walk_files(str(tree)))
        == 1000
    )
    os.utime(tree / "a" / "b" / "f", (1, 3000.25))
    assert (
        db.context_mtime(str(tree), str(tree / "Dockerfile"), db.walk_files(str(tree)))
        == 3000.25
    )
    os.utime(tree / "a", (1, 4000))  # directories count too
    assert (
        db.context_mtime(str(tree), str(tree / "Dockerfile"), db.walk_files(str(tree)))
        == 4000
    )
    os.utime(tree, (1, 5000))  # and the directory itself
    assert (
        db.context_mtime(str(tree), str(tree / "Dockerfile"), db.walk_files(str(tree)))
        == 5000
    )
    assert (
        db.context_mtime(
            str(tree), str(tree / "Dockerfile"), db.walk_files(str(tree)), root=False
        )
        == 4000
    )


def test_context_mtime_honours_dockerignore(tmp_path):
    touch(tmp_path / "Dockerfile", 1000)
    touch(tmp_path / "debug.log", 5000)
    touch(tmp_path / "secret" / "key", 6000)
    touch(tmp_path / "keep.log", 2000)
    touch(tmp_path / ".dockerignore", 1500, "*.log\n!keep.log\nsecret\n")
    os.utime(tmp_path / "secret", (1, 7000))
    os.utime(tmp_path, (1, 900))
    files = db.walk_files(str(tmp_path))
    assert db.context_mtime(str(tmp_path), str(tmp_path / "Dockerfile"), files) == 2000
    os.utime(tmp_path, (1, 3000))  # the directory itself counts
    assert db.context_mtime(str(tmp_path), str(tmp_path / "Dockerfile"), files) == 3000
    assert (
        db.context_mtime(str(tmp_path), str(tmp_path / "Dockerfile"), files, root=False)
        == 2000
    )


def test_context_mtime_skips_vanished_and_links(tmp_path):
    touch(tmp_path / "f", 1000)
    os.symlink("/nonexistent/target", tmp_path / "link")
    os.utime(tmp_path / "link", (1, 4000), follow_symlinks=False)
    assert (
        db.context_mtime(
            str(tmp_path),
            str(tmp_path / "Dockerfile"),
            ["f", "gone", "link"],
            root=False,
        )
        == 4000
    )
    assert (
        db.context_mtime(
            str(tmp_path), str(tmp_path / "Dockerfile"), ["gone"], root=False
        )
        == 0.0
    )
    assert (
        db.context_mtime(str(tmp_path), str(tmp_path / "Dockerfile"), [], root=False)
        == 0.0
    )


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


def test_context_change_merge_of_an_old_commit(two_commits, environ):
    """A merge that brings an older branch commit into the directory
    counts by its own date (git log --show-pulls)."""
    git(two_commits, "checkout", "-q", "-b", "topic")
    (two_commits / "one" / "file").write_text("x")
    git(two_commits, "add", "one")
    git(two_commits, "commit", "-q", "-m", "old", date="@1600000100 +0000")
    git(two_commits, "checkout", "-q", "main")
    (two_commits / "elsewhere").write_text("y")
    git(two_commits, "add", "elsewhere")
    git(two_commits, "commit", "-q", "-m", "main", date="@1700000100 +0000")
    git(
        two_commits, "merge", "-q", "--no-ff", "-m", "merge", "topic",
        date="@1800000000 +0000",
    )  # fmt: skip
    one = image_of(two_commits / "one", "one")
    assert db.context_change(one, environ) == by_commit(1800000000)


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
    os.utime(repo / "ctx", (1, 2000))
    image = image_of(repo / "ctx")
    assert (
        db.git_context_mtime(image, status(repo / "ctx", environ).stdout, environ)
        == 3000
    )
    assert db.context_change(image, environ) == by_files(3000)


@pytest.mark.parametrize(
    ("new", "directory"),
    [("ctx/new", "ctx"), ("ctx/sub/new", "ctx/sub"), ("ctx/n/e/w", "ctx/n/e")],
)
def test_git_context_mtime_new_file_counts_by_its_directory(
    repo, environ, new, directory
):
    """A new (untracked) file copied with an old time counts by its
    directory's time (the build directory itself for a file at its top)."""
    touch(repo / new, 1000)
    set_tree_mtime(repo / "ctx", 1000)
    os.utime(repo / directory, (1, 4000))
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(4000)


def test_git_context_mtime_tracked_directory_time_does_not_count(repo, environ):
    """A modified tracked file does not make its directory's time count."""
    (repo / "ctx" / "sub" / "tracked").write_text("changed")
    set_tree_mtime(repo / "ctx", 1000)
    os.utime(repo / "ctx" / "sub" / "tracked", (1, 2000))
    os.utime(repo / "ctx" / "sub", (1, 4000))
    os.utime(repo / "ctx", (1, 4000))
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(2000)


def test_git_context_mtime_git_ignored_does_not_count(repo, environ):
    """Ignored files do not count, nor the time of a directory that holds
    no new file (the new file is in sub/, the ignored ones at the top)."""
    touch(repo / "ctx" / "sub" / "new", 3000)
    touch(repo / "ctx" / "x.tmp", 9000)
    touch(repo / "ctx" / "build" / "out", 9000)
    os.utime(repo / "ctx" / "sub", (1, 3000))
    os.utime(repo / "ctx" / "build", (1, 9000))
    os.utime(repo / "ctx", (1, 9500))  # nor the directory's own time
    assert db.context_change(image_of(repo / "ctx"), environ) == by_files(3000)


def test_git_context_mtime_dockerignored_does_not_count(repo, environ):
    touch(repo / "ctx" / "new", 3000)
    touch(repo / "ctx" / "notes.md", 8000)
    touch(repo / "ctx" / "sub" / "tracked", 7000)
    touch(repo / "ctx" / ".dockerignore", 2000, "*.md\nsub/\n")
    os.utime(repo / "ctx", (1, 2500))  # new files are in it: it counts
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
    """Untracked files only: dirty, the files count (an ignored one does
    not), and so does the directory that holds the new files."""
    touch(repo / "fresh" / "Dockerfile", 2500, "FROM alpine\n")
    touch(repo / "fresh" / "junk.tmp", 9000)
    os.utime(repo / "fresh", (1, 2000))
    assert db.context_change(image_of(repo / "fresh"), environ) == by_files(2500)
    os.utime(repo / "fresh", (1, 3000))
    assert db.context_change(image_of(repo / "fresh"), environ) == by_files(3000)


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
    """One digest at a time by default; with jobs=2 the second context is
    digested while the first is still open."""
    second_asked = threading.Event()
    timeout = 30 if overlapped else 0.5

    def context_digest(directory, dockerfile, tree, hashes):
        if directory == "second":
            second_asked.set()
            return "second"
        # one job never lets the second start: the timeout only bounds the wait
        return str(second_asked.wait(timeout))

    monkeypatch.setattr(db, "context_digest", context_digest)
    monkeypatch.setattr(db, "work_tree_top", lambda directory: None)
    contexts = db.ContextChanges({}, *jobs)
    first, second = image_of("first", "first"), image_of("second", "second")
    contexts.prefetch([first, second])
    assert contexts.digest(first) == str(overlapped)
    assert contexts.digest(second) == "second"
    contexts.close()


def test_context_changes_prefetch_starts_digests_not_times(changes, monkeypatch):
    """prefetch digests the contexts; when a context last changed is asked
    only by get, once."""
    digested = []
    monkeypatch.setattr(
        db,
        "context_digest",
        lambda directory, dockerfile, tree, hashes: (
            digested.append(dockerfile) or "sha256:x"
        ),
    )
    monkeypatch.setattr(db, "work_tree_top", lambda directory: None)
    contexts = db.ContextChanges({}, jobs=2)
    found = db.Image("a", "a:latest", "a", "NONE", (), AMD, "files/a.Dockerfile")
    futures = contexts.prefetch([found, image_of("b", "b")])
    assert [future.result() for future in futures] == ["sha256:x", "sha256:x"]
    assert sorted(digested) == ["b/Dockerfile", "files/a.Dockerfile"]
    assert changes == []
    assert contexts.digest(found) == "sha256:x"
    assert len(digested) == 2  # asked once each
    assert contexts.get(found) == by_commit(5.0)
    assert changes == [("a", {})]
    contexts.close()


def test_context_changes_digest_error_waits(tmp_path):
    """A context that cannot be read fails when its digest is needed."""
    missing = tmp_path / "missing"
    contexts = db.ContextChanges({"PATH": os.environ["PATH"]})
    contexts.prefetch([image_of(missing)])  # nothing raised
    assert fatal_message(contexts.digest, image_of(missing)) == (
        f"{missing}: can't read the build context: "
        f"[Errno 2] No such file or directory: '{missing}'"
    )
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
# git_blob_id, FileHashes
# ----------------------------------------------------------------------------


def hash_object(path):
    """What git names the file's content."""
    return subprocess.run(
        ["git", "hash-object", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.parametrize(
    "content",
    [b"", b"x", b"FROM alpine\n", b"\x00\xff" * 7, bytes(range(256)) * 9000],
    ids=["empty", "one", "text", "binary", "several-chunks"],
)
def test_git_blob_id(tmp_path, content):
    path = tmp_path / "f"
    path.write_bytes(content)
    assert db.git_blob_id(str(path), len(content)) == hash_object(path)


def old_file(path, content="one\n", mtime=1000):
    """A file last changed long ago (not racy); returns its stat."""
    path.write_text(content)
    os.utime(path, (1, mtime))
    return os.stat(path)


def test_file_hashes_second_call_does_not_read(tmp_path):
    path = tmp_path / "f"
    stat = old_file(path)
    hashes = db.FileHashes(None)
    assert hashes.blob_id(str(path), stat) == hash_object(path)
    assert hashes.reads == 1
    assert hashes.blob_id(str(path), os.stat(path)) == hash_object(path)
    assert hashes.reads == 1


def replace_file(path):
    """The same content and time in a new file (another inode)."""
    new = path.with_name("new")
    new.write_text(path.read_text())
    os.utime(new, (1, os.stat(path).st_mtime))
    os.replace(new, path)


@pytest.mark.parametrize(
    "change",
    [
        lambda path: old_file(path, "longer\n"),  # size
        lambda path: old_file(path, "two\n"),  # content and size kept: not
        lambda path: os.utime(path, (1, 2000)),  # mtime
        replace_file,  # inode
    ],
    ids=["size", "same-size-and-time", "mtime", "inode"],
)
def test_file_hashes_stat_change_reads_again(tmp_path, request, change):
    """A changed size, modification time or inode reads the file again;
    the same stat with other content of the same size does not (the
    stat is what is compared)."""
    path = tmp_path / "f"
    hashes = db.FileHashes(None)
    first = hashes.blob_id(str(path), old_file(path))
    change(path)
    again = hashes.blob_id(str(path), os.stat(path))
    if request.node.callspec.id == "same-size-and-time":
        assert (again, hashes.reads) == (first, 1)
    else:
        assert (again, hashes.reads) == (hash_object(path), 2)


def test_file_hashes_racy_files_are_not_kept(tmp_path):
    """A file changed in the last RACY_SECONDS is read every time, and
    not saved."""
    path = tmp_path / "f"
    path.write_text("new\n")
    cache = tmp_path / "cache.json"
    hashes = db.FileHashes(str(cache))
    for _ in range(2):
        assert hashes.blob_id(str(path), os.stat(path)) == hash_object(path)
    assert hashes.reads == 2
    hashes.save()
    assert not cache.exists()


def test_file_hashes_save_and_load(tmp_path):
    """Saved ids serve the next run without reading the file."""
    path = tmp_path / "f"
    stat = old_file(path)
    cache = tmp_path / "sub" / "hashes.json"
    first = db.FileHashes(str(cache))
    blob = first.blob_id(str(path), stat)
    first.save()
    second = db.FileHashes(str(cache))
    assert second.blob_id(str(path), stat) == blob == hash_object(path)
    assert second.reads == 0


@pytest.mark.parametrize(
    "content",
    [
        None,  # a directory
        b"not json",
        b"[]",
        b'{"version": 1, "entries": {}}',  # an older version
        b'{"version": 2}',
        b'{"version": 3, "entries": 5}',
        b"\xff\xfe",
    ],
)
def test_file_hashes_unreadable_cache_is_ignored(tmp_path, content):
    """A cache that cannot be read, or an entry of the wrong shape, is read
    again from the file."""
    path = tmp_path / "f"
    stat = old_file(path)
    cache = tmp_path / "hashes.json"
    if content is None:
        cache.mkdir()
    else:
        cache.write_bytes(content)
    hashes = db.FileHashes(str(cache))
    assert hashes.blob_id(str(path), stat) == hash_object(path)
    assert hashes.reads == 1


@pytest.mark.parametrize(
    "entry",
    [
        lambda stat: [stat.st_size, stat.st_mtime_ns, stat.st_ino],  # short
        lambda stat: [stat.st_size, stat.st_mtime_ns, stat.st_ino, 7, 0],
        lambda stat: [str(stat.st_size), stat.st_mtime_ns, stat.st_ino, "0", 0],
    ],
    ids=["short", "blob-not-text", "size-not-a-number"],
)
def test_file_hashes_malformed_entry_is_read_again(tmp_path, entry):
    path = tmp_path / "f"
    stat = old_file(path)
    cache = tmp_path / "hashes.json"
    cache.write_text(json.dumps({"version": 3, "entries": {str(path): entry(stat)}}))
    hashes = db.FileHashes(str(cache))
    assert (hashes.blob_id(str(path), stat), hashes.reads) == (hash_object(path), 1)


def test_file_hashes_keep_the_most_recently_used(tmp_path, monkeypatch):
    """files.json keeps at most FILE_ENTRIES ids, the most recently used."""
    monkeypatch.setattr(db, "FILE_ENTRIES", 2)
    cache = tmp_path / "hashes.json"
    hashes = db.FileHashes(str(cache))
    paths = [tmp_path / name for name in "abc"]
    for path in paths:
        hashes.blob_id(str(path), old_file(path))
    hashes.blob_id(str(paths[0]), os.stat(paths[0]))  # a used again
    hashes.save()
    kept = json.loads(cache.read_text())["entries"]
    assert sorted(kept) == [str(paths[0]), str(paths[2])]


def test_file_hashes_cache_of_an_older_version_is_not_used(tmp_path):
    """An entry matching the file's stat is used only from a cache of this
    version."""
    path = tmp_path / "f"
    stat = old_file(path)
    entry = [stat.st_size, stat.st_mtime_ns, stat.st_ino, "0" * 40, 0]
    cache = tmp_path / "hashes.json"
    for version, expected, reads in ((2, hash_object(path), 1), (3, "0" * 40, 0)):
        cache.write_text(
            json.dumps({"version": version, "entries": {str(path): entry}})
        )
        hashes = db.FileHashes(str(cache))
        assert (hashes.blob_id(str(path), stat), hashes.reads) == (expected, reads)


# ----------------------------------------------------------------------------
# changed_paths, work_tree_top, read_work_tree
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("", set()),
        (" M a\0", {"a"}),
        ("M  a\0", set()),  # staged: the file is what the index holds
        ("MM a\0", {"a"}),
        (" D a\0", {"a"}),
        ("A  new\0", set()),
        ("AM new\0", {"new"}),
        (" T link\0", {"link"}),
        ("UU conflict\0", {"conflict"}),
        (" M dir with space/f\0", {"dir with space/f"}),
        # a rename or copy names the source after the path: not an entry
        ("R  new\0old\0", set()),
        ("RM new\0old\0", {"new"}),
        ("R  new\0 M x\0 M b\0", {"b"}),
        ("C  copy\0src\0 M b\0", {"b"}),
        ("M  a\0 M b\0MM c\0", {"b", "c"}),
    ],
)
def test_changed_paths(status, expected):
    assert db.changed_paths(status) == expected


def test_work_tree_top(tmp_path):
    root = tmp_path / "repo"
    (root / "a" / "b").mkdir(parents=True)
    git(root, "init", "-q")
    (tmp_path / "plain").mkdir()
    assert db.work_tree_top(str(root / "a" / "b")) == os.path.realpath(root)
    assert db.work_tree_top(str(root)) == os.path.realpath(root)
    assert db.work_tree_top(str(tmp_path / "plain")) is None


def test_read_work_tree(tmp_path, environ):
    """The blob ids of tracked regular files whose work tree content is
    what the index holds: clean and staged files, not modified, untracked
    or deleted ones, nor symbolic links."""
    root = tmp_path / "repo"
    for name in ("clean", "modified", "staged", "deleted", "sub/deep", "run.sh"):
        touch(root / name, 1000, name + "\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("clean", root / "link")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "all")
    (root / "modified").write_text("changed\n")
    (root / "staged").write_text("staged change\n")
    git(root, "add", "staged")
    touch(root / "added", 1000, "added\n")
    git(root, "add", "added")
    touch(root / "untracked", 1000)
    (root / "deleted").unlink()
    tree = db.read_work_tree(str(root), environ)
    assert tree == db.WorkTree(
        str(root),
        {
            name: hash_object(root / name)
            for name in ("added", "clean", "run.sh", "staged", "sub/deep")
        },
    )


def test_read_work_tree_file_name_not_utf8(tmp_path, environ):
    """A tracked file whose name is not UTF-8 is known clean under the name
    os.scandir gives it."""
    root = tmp_path / "repo"
    root.mkdir()
    name = os.fsdecode(b"caf\xe9")
    (root / name).write_text("x\n")
    git(root, "init", "-q")
    git(root, "-c", "core.quotepath=off", "add", ".")
    tree = db.read_work_tree(str(root), environ)
    assert tree.clean == {name: hash_object(root / name)}
    assert [entry.name for entry in os.scandir(root) if entry.is_file()] == [name]


def test_read_work_tree_without_git_answer(tmp_path, environ):
    """Not a repository, or no git: nothing is known clean."""
    assert db.read_work_tree(str(tmp_path), environ) == db.WorkTree(str(tmp_path), {})
    nogit = {"PATH": str(tmp_path / "nobin")}
    assert db.read_work_tree(str(tmp_path), nogit) == db.WorkTree(str(tmp_path), {})


# ----------------------------------------------------------------------------
# context_digest
# ----------------------------------------------------------------------------


def digest_of(directory, environ, dockerfile=None, hashes=None):
    """The context digest as ContextChanges takes it: with the work tree
    holding the directory, if any."""
    top = db.work_tree_top(str(directory))
    tree = db.read_work_tree(top, environ) if top else None
    dockerfile = str(dockerfile or directory / "Dockerfile")
    return db.context_digest(
        str(directory), dockerfile, tree, hashes or db.FileHashes(None)
    )


def write_context(directory):
    """A build context of files, an executable, a link, a subdirectory, a
    .dockerignore'd log and a git-ignored file."""
    touch(directory / "Dockerfile", 1000, "FROM alpine\nCOPY . /\n")
    touch(directory / "file", 1000, "one\n")
    touch(directory / "run.sh", 1000, "#!/bin/sh\n")
    (directory / "run.sh").chmod(0o755)
    touch(directory / "sub" / "f", 1000, "sub\n")
    touch(directory / ".dockerignore", 1000, "*.log\n")
    touch(directory / "debug.log", 1000, "log\n")
    touch(directory / "build.tmp", 1000, "ignored by git\n")
    os.symlink("file", directory / "link")


@pytest.fixture
def contexts_in_and_out(tmp_path):
    """The same context in a git repository (committed, below its top)
    and outside git."""
    root = tmp_path / "repo"
    write_context(root / "ctx")
    touch(root / ".gitignore", 1000, "*.tmp\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "all")
    write_context(tmp_path / "plain")
    return root / "ctx", tmp_path / "plain"


def test_context_digest_equal_inside_and_outside_git(contexts_in_and_out, environ):
    """Equal content gives equal digests; files clean in git are not read
    (the untracked build.tmp is)."""
    in_git, plain = contexts_in_and_out
    hashes = db.FileHashes(None)
    inside = digest_of(in_git, environ, hashes=hashes)
    assert hashes.reads == 1
    assert inside == digest_of(plain, environ)
    assert inside.startswith("sha256:") and len(inside) == 7 + 64


@pytest.mark.parametrize(
    ("change", "changed"),
    [
        (lambda c: (c / "file").write_text("two\n"), True),
        (lambda c: (c / "sub" / "f").write_text("two\n"), True),
        (lambda c: (c / "file").chmod(0o755), True),
        (lambda c: (c / "run.sh").chmod(0o644), True),
        (lambda c: ((c / "link").unlink(), os.symlink("sub", c / "link")), True),
        (lambda c: (c / "empty").mkdir(), True),
        (lambda c: (c / "build.tmp").write_text("other\n"), True),  # git-ignored
        (lambda c: (c / "new.tmp").write_text("x"), True),
        (lambda c: (c / "file").rename(c / "renamed"), True),
        (lambda c: (c / "sub" / "f").unlink(), True),
        (lambda c: (c / "Dockerfile").write_text("FROM alpine\n"), True),
        (lambda c: (c / ".dockerignore").write_text("*.log\n*.md\n"), True),
        (lambda c: (c / "debug.log").write_text("other\n"), False),
        (lambda c: (c / "new.log").write_text("x"), False),
        (lambda c: os.utime(c / "file", (1, 5000)), False),
        (lambda c: set_tree_mtime(c, 6000), False),
        (lambda c: (c / "file").write_text("one\n"), False),  # same content
    ],
    ids=[
        "content", "deep-content", "exec-bit-set", "exec-bit-cleared",
        "link-target", "new-empty-dir", "git-ignored-file", "new-git-ignored",
        "rename", "delete", "dockerfile", "dockerignore", "dockerignored-file",
        "new-dockerignored", "mtime", "all-mtimes", "rewrite-same",
    ],
)  # fmt: skip
def test_context_digest_changes(contexts_in_and_out, environ, change, changed):
    """What docker would send decides, in git and outside alike."""
    for directory in contexts_in_and_out:
        before = digest_of(directory, environ)
        change(directory)
        assert (digest_of(directory, environ) != before) is changed


def test_context_digest_staged_and_committed_change(contexts_in_and_out, environ):
    """A change gives the same digest modified, staged or committed, as
    the same content outside git."""
    in_git, plain = contexts_in_and_out
    for directory in (in_git, plain):
        (directory / "file").write_text("two\n")
    expected = digest_of(plain, environ)
    assert digest_of(in_git, environ) == expected
    git(in_git, "add", "file")
    assert digest_of(in_git, environ) == expected
    git(in_git, "commit", "-q", "-m", "two")
    assert digest_of(in_git, environ) == expected


def test_context_digest_skips_the_work_tree_git_directory(tmp_path, environ):
    """At the top of a work tree, .git is no part of the context: a
    commit does not change the digest; a .git directory deeper down is."""
    root = tmp_path / "repo"
    write_context(root)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "all")
    before = digest_of(root, environ)
    git(root, "commit", "-q", "--allow-empty", "-m", "again")
    git(root, "tag", "t")
    assert digest_of(root, environ) == before
    (root / "sub" / ".git").mkdir()
    assert digest_of(root, environ) != before


def test_context_digest_dockerfile_outside_the_context(tmp_path, environ):
    """A -f Dockerfile elsewhere is part of the digest."""
    context = tmp_path / "ctx"
    write_context(context)
    outside = tmp_path / "files" / "app.Dockerfile"
    touch(outside, 1000, "FROM alpine\n")
    inside = digest_of(context, environ)
    before = digest_of(context, environ, outside)
    assert before != inside
    outside.write_text("FROM alpine\nRUN true\n")
    changed = digest_of(context, environ, outside)
    assert changed != before
    os.utime(outside, (1, 7000))  # its time alone is no change
    assert digest_of(context, environ, outside) == changed


def test_context_digest_dockerfile_clean_in_git_is_not_read(
    contexts_in_and_out, environ
):
    """A -f Dockerfile that git tracks, unchanged, counts by its blob id in
    the index, as the context's own files do."""
    in_git, plain = contexts_in_and_out
    other = in_git.parent / "files" / "app.Dockerfile"
    touch(other, 1000, "FROM alpine\n")
    git(in_git.parent, "add", "files")
    git(in_git.parent, "commit", "-q", "-m", "dockerfile")
    hashes = db.FileHashes(None)
    digest = digest_of(in_git, environ, other, hashes)
    assert hashes.reads == 1  # the untracked build.tmp only
    copy = plain.parent / "app.Dockerfile"
    touch(copy, 1000, "FROM alpine\n")
    assert digest == digest_of(plain, environ, copy)


def test_context_digest_dockerfile_and_dockerignore_always_count(tmp_path, environ):
    """.dockerignore leaving everything out still leaves the Dockerfile
    and itself in; an exception brings a path back."""
    context = tmp_path / "ctx"
    write_context(context)
    (context / ".dockerignore").write_text("*\n!sub/f\n")
    before = digest_of(context, environ)
    (context / "file").write_text("two\n")
    assert digest_of(context, environ) == before
    for path, text in (
        ("Dockerfile", "FROM debian\n"),
        (".dockerignore", "*\n!sub/f\n\n"),
        ("sub/f", "two\n"),
    ):
        (context / path).write_text(text)
        assert digest_of(context, environ) != before, path
        before = digest_of(context, environ)


# ----------------------------------------------------------------------------
# ContextChanges: digests, git asked once per work tree
# ----------------------------------------------------------------------------


def test_context_changes_ask_git_once_per_work_tree(tmp_path, environ, monkeypatch):
    """Several images in one work tree (and one outside git): git is run
    twice per work tree, whatever the number of images; the digests are
    those of context_digest."""
    repos = []
    for name in ("one", "two"):
        root = tmp_path / name
        for directory in ("a", "b", "c/d"):
            write_context(root / directory)
        git(root, "init", "-q")
        git(root, "add", ".")
        git(root, "commit", "-q", "-m", "all")
        repos.append(root)
    write_context(tmp_path / "plain")
    runs = []
    run_git = db.run_git

    def counting(args, directory, environ):
        runs.append((directory, args[0]))
        return run_git(args, directory, environ)

    monkeypatch.setattr(db, "run_git", counting)
    images = [
        image_of(root / directory, f"{root.name}-{directory.replace('/', '-')}")
        for root in repos
        for directory in ("a", "b", "c/d")
    ] + [image_of(tmp_path / "plain", "plain")]
    contexts = db.ContextChanges(environ, jobs=4)
    contexts.prefetch(images)
    digests = [contexts.digest(found) for found in images]
    assert sorted(runs) == sorted(
        (str(root), command) for root in repos for command in ("status", "ls-files")
    )
    assert contexts.work_tree(str(repos[0] / "c" / "d")).top == str(repos[0])
    assert contexts.work_tree(str(tmp_path / "plain")) is None
    assert len(runs) == 4
    monkeypatch.setattr(db, "run_git", run_git)
    assert digests == [digest_of(Path(found.directory), environ) for found in images]
    assert len(set(digests)) == 1  # the same content everywhere
    contexts.close()


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


# ----------------------------------------------------------------------------
# End to end: decisions by recorded inputs. The tool builds its images
# (recording their inputs), the world changes, and the next run builds
# exactly what the change calls for.
# ----------------------------------------------------------------------------

CONTEXT = "Build context changed"
OPTIONS = "Build options changed"
USED = "Image used by the build changed"


def first_build(world: World, *names: str, lines: tuple[str, ...] = ()) -> None:
    """Build every image (each is missing), then check that a second run
    has nothing to do; the double's log starts empty afterwards."""
    world.registry.push(world.ref("base:1"), T_COMMIT, [BASE_LAYER])
    if lines:
        world.config(*lines)
    else:
        world.config(*(f"{name}\t{name}" for name in names))
    if (world.root / ".git").exists():
        world.commit()
    first = world.run()
    assert first.returncode == 0, first.stderr
    assert sorted(world.built()) == sorted(f"{world.ref(n)}:latest" for n in names)
    succeeded(world.run())
    world.log.unlink()


def app(world: World, text: str = "FROM {base}\nCOPY . /\n") -> None:
    world.write("app/Dockerfile", text.format(base=world.ref("base:1")))
    world.write("app/file", "one\n")


def runs_and_builds(world: World, reason: str, name: str = "app") -> None:
    """A dry run predicts the rebuild, and a real run does it, once."""
    predicted = world.run("-n")
    succeeded(predicted, announced(world.ref(name), reason))
    succeeded(world.run(), rebuilt(world.ref(name), reason))
    assert world.built() == [world.ref(name) + ":latest"]
    world.log.unlink()
    succeeded(world.run())
    assert world.calls() == []


def builds_nothing(world: World) -> None:
    succeeded(world.run())
    assert world.calls() == []


def test_label_records_the_inputs(world: World) -> None:
    """Every build gets --label docker_build.inputs=<compact JSON> before
    the tool's own options."""
    app(world)
    world.registry.push(world.ref("base:1"), T_COMMIT, [BASE_LAYER])
    world.config("app\tapp\t--build-arg X=1")
    world.commit()
    succeeded(world.run(), rebuilt(world.ref("app"), "Image missing in repository"))
    argv = world.calls()[0]["argv"]
    label = argv[argv.index("--label") + 1]
    key, _, value = label.partition("=")
    assert key == "docker_build.inputs"
    base = world.ref("base:1")
    base_labels = {
        "org.opencontainers.image.base.name": base,
        "org.opencontainers.image.base.digest": world.registry.digest(base),
    }
    assert argv[argv.index("--label") + 2 :] == [
        *(arg for item in base_labels.items() for arg in ("--label", "=".join(item))),
        "--push",
        "--tag",
        world.ref("app:latest"),
        "app",
    ]
    recorded = json.loads(value)
    assert sorted(recorded) == ["context", "images", "options", "version"]
    assert recorded["version"] == 2
    assert recorded["images"] == {base: world.registry.digest(base)}
    assert recorded["context"].startswith("sha256:")
    assert value == json.dumps(recorded, separators=(",", ":"), sort_keys=True)
    config = world.registry.config(world.ref("app"))
    # the base annotations are read back from the pushed image
    assert config["config"]["Labels"] == {"docker_build.inputs": value, **base_labels}


@pytest.mark.parametrize(
    "merge", [["--no-ff", "-m", "merge"], ["--ff-only"]], ids=["merge", "fast-forward"]
)
def test_old_branch_commit_brought_in_later(world: World, merge: list[str]) -> None:
    """A branch commit older than the image, merged (or fast-forwarded)
    later, is built."""
    app(world)
    first_build(world, "app")
    world.git("checkout", "-q", "-b", "topic")
    world.write("app/file", "two\n")
    world.commit(when=T_COMMIT)
    world.git("checkout", "-q", "-")
    world.git("merge", "-q", *merge, "topic", when=T_COMMIT)
    runs_and_builds(world, CONTEXT)


def test_git_ignored_artifact(world: World) -> None:
    """A file docker sends but git ignores is part of the context."""
    app(world, "FROM {base}\nCOPY target/app.jar /\n")
    world.write(".gitignore", "target/\n")
    world.write("app/target/app.jar", "v1\n")
    first_build(world, "app")
    world.write("app/target/app.jar", "v2\n", mtime=T_COMMIT)
    runs_and_builds(world, CONTEXT)


def test_directory_that_git_ignores(world: World) -> None:
    app(world)
    world.write(".gitignore", "app/\n")
    first_build(world, "app")
    world.write("app/Dockerfile", f"FROM {world.ref('base:1')}\nRUN true\n")
    runs_and_builds(world, CONTEXT)


def test_dockerfile_outside_the_context(world: World) -> None:
    world.write("app/file", "one\n")
    world.write("files/app.Dockerfile", f"FROM {world.ref('base:1')}\n")
    first_build(world, "app", lines=("app\tapp\t-f files/app.Dockerfile",))
    world.write("files/app.Dockerfile", f"FROM {world.ref('base:1')}\nRUN true\n")
    world.commit(when=T_COMMIT)
    runs_and_builds(world, CONTEXT)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (("app\tapp\t--build-arg X=1",), ("app\tapp\t--build-arg X=2",)),
        (("--build-arg X=1", "app\tapp"), ("--build-arg X=2", "app\tapp")),
        (("app\tapp\t--target=a",), ("app\tapp\t--target=b",)),
    ],
    ids=["image", "global", "target"],
)
def test_build_options_change(world: World, before, after) -> None:
    base = world.ref("base:1")
    app(world, "FROM {base} AS a\nFROM {base} AS b\n")
    first_build(world, "app", lines=before)
    world.config(*after)
    world.commit(when=T_COMMIT)
    runs_and_builds(world, OPTIONS)
    assert base  # the stages both start from the base


@pytest.mark.parametrize(
    "dockerfile",
    [
        "FROM {used} AS build\nRUN make\nFROM {base}\nCOPY --from=build /x /\n",
        "FROM {base}\nCOPY --from={used} /x /\n",
        "FROM {base}\nRUN --mount=type=bind,from={used},target=/t true\n",
    ],
    ids=["builder-stage", "copy-from", "run-mount"],
)
def test_image_used_by_the_build_changes(world: World, dockerfile: str) -> None:
    used = world.ref("tools:1")
    world.registry.push(used, T_COMMIT, ["sha256:" + "7" * 64])
    world.write(
        "app/Dockerfile", dockerfile.format(used=used, base=world.ref("base:1"))
    )
    first_build(world, "app")
    world.registry.push(used, T_LATER, ["sha256:" + "8" * 64])
    runs_and_builds(world, f"{USED}: {used}")


def test_build_argument_from_the_environment_changes(world: World) -> None:
    """`--build-arg NAME` takes its value from the environment: a new value
    is a change of the build options."""
    app(world)
    world.env["VERSION"] = "1.2"
    first_build(world, "app", lines=("app\tapp\t--build-arg VERSION",))
    world.env["VERSION"] = "1.3"
    runs_and_builds(world, OPTIONS)


def test_change_and_revert(world: World) -> None:
    app(world)
    first_build(world, "app")
    world.write("app/file", "two\n")
    world.commit(when=T_LATER)
    world.write("app/file", "one\n")
    world.commit(when=T_LATER)
    builds_nothing(world)


def test_commit_of_a_dockerignored_file(world: World) -> None:
    app(world)
    world.write("app/.dockerignore", "*.md\n")
    world.write("app/README.md", "one\n")
    first_build(world, "app")
    world.write("app/README.md", "two\n")
    world.commit(when=T_LATER)
    builds_nothing(world)


def test_amend_that_keeps_the_content(world: World) -> None:
    app(world)
    first_build(world, "app")
    world.git("commit", "-q", "--amend", "-m", "reworded", when=T_LATER)
    builds_nothing(world)


def test_reproducible_build_is_steady(world: World) -> None:
    """SOURCE_DATE_EPOCH=0 gives images created in 1970: no endless
    rebuilds."""
    app(world)
    first_build(world, "app", lines=("--build-arg SOURCE_DATE_EPOCH=0", "app\tapp"))
    config = world.registry.config(world.ref("app"))
    assert config["created"].startswith("1970-01-01T00:00:00")
    builds_nothing(world)


def test_base_change_still_rebuilds(world: World) -> None:
    app(world)
    first_build(world, "app")
    world.registry.push(world.ref("base:1"), T_LATER, ["sha256:" + "9" * 64])
    runs_and_builds(world, "Base image has changed")


def test_unknown_label_format_falls_back_to_times(world: World) -> None:
    """An image whose label this version cannot read is decided by times,
    as one without a label."""
    app(world)
    world.registry.push(world.ref("base:1"), T_COMMIT, [BASE_LAYER])
    world.config("app\tapp")
    world.commit(when=T_LATER)
    imagetools.push_image(
        world.ref("app"),
        imagetools.rfc3339(T_IMAGE),
        [BASE_LAYER, imagetools.new_layer("app")],
        labels={"docker_build.inputs": '{"version":99}'},
    )
    succeeded(
        world.run("-n"),
        announced(world.ref("app"), "Git change more recent than image"),
    )
