"""Unit tests of what counts as a change of the build context (issue 7):
.dockerignore rules, file times, and git's view of a dirty directory, with
real git repositories in tmp_path."""

import os
import subprocess

import pytest
from conftest import load_tool

db = load_tool()

AMD = ("linux/amd64",)


def image_of(directory, name="img"):
    return db.Image(name, name + ":latest", str(directory), "NONE", (), AMD)


def git(cwd, *args):
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_AUTHOR_DATE": "@1600000000 +0000",
        "GIT_COMMITTER_DATE": "@1600000000 +0000",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, env=env, capture_output=True
    )


def touch(path, mtime, text="x"):
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


def test_dockerignored_character_class(tmp_path):
    assert db.dockerignored("a.o", rules("*.[oa]", tmp_path=tmp_path)) is True


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
# git_context_mtime and context_change (real git repositories)
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
    return db.run_git(["status", "--porcelain", "--", "."], str(directory), environ)


def test_context_change_clean(repo, environ):
    assert db.context_change(image_of(repo / "ctx"), environ) == (
        1600000000,
        db.REASON_GIT,
    )


def test_git_context_mtime_counts_untracked(repo, environ):
    touch(repo / "ctx" / "new", 3000)
    image = image_of(repo / "ctx")
    assert (
        db.git_context_mtime(image, status(repo / "ctx", environ).stdout, environ)
        == 3000
    )
    assert db.context_change(image, environ) == (3000, db.REASON_FILES)


def test_git_context_mtime_git_ignored_does_not_count(repo, environ):
    touch(repo / "ctx" / "new", 3000)
    touch(repo / "ctx" / "x.tmp", 9000)
    touch(repo / "ctx" / "build" / "out", 9000)
    os.utime(repo / "ctx" / "build", (1, 9000))
    os.utime(repo / "ctx", (1, 9500))  # nor the directory's own time
    assert db.context_change(image_of(repo / "ctx"), environ) == (
        3000,
        db.REASON_FILES,
    )


def test_git_context_mtime_dockerignored_does_not_count(repo, environ):
    touch(repo / "ctx" / "new", 3000)
    touch(repo / "ctx" / "notes.md", 8000)
    touch(repo / "ctx" / "sub" / "tracked", 7000)
    touch(repo / "ctx" / ".dockerignore", 2000, "*.md\nsub/\n")
    assert db.context_change(image_of(repo / "ctx"), environ) == (
        3000,
        db.REASON_FILES,
    )


def test_git_context_mtime_modified_tracked_file(repo, environ):
    (repo / "ctx" / "sub" / "tracked").write_text("changed")
    os.utime(repo / "ctx" / "sub" / "tracked", (1, 4000))
    assert db.context_change(image_of(repo / "ctx"), environ) == (
        4000,
        db.REASON_FILES,
    )


def test_git_context_mtime_deleted_file_counts_by_its_directory(repo, environ):
    (repo / "ctx" / "sub" / "tracked").unlink()
    touch(repo / "ctx" / "sub" / "kept", 1000)
    os.utime(repo / "ctx" / "sub", (1, 5000))
    assert db.context_change(image_of(repo / "ctx"), environ) == (
        5000,
        db.REASON_FILES,
    )


def test_git_context_mtime_deleted_file_at_the_top(repo, environ):
    (repo / "ctx" / "Dockerfile").unlink()
    os.utime(repo / "ctx", (1, 6000))
    assert db.context_change(image_of(repo / "ctx"), environ) == (
        6000,
        db.REASON_FILES,
    )


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
    assert db.context_change(image_of(repo / "a" / "ctx"), environ) == (
        4500,
        db.REASON_FILES,
    )


def test_git_context_mtime_deleted_directory(repo, environ):
    (repo / "ctx" / "sub" / "tracked").unlink()
    (repo / "ctx" / "sub").rmdir()
    os.utime(repo / "ctx", (1, 5000))
    os.utime(repo / "ctx" / "Dockerfile", (1, 1000))
    assert db.context_change(image_of(repo / "ctx"), environ) == (
        5000,
        db.REASON_FILES,
    )


def test_git_context_mtime_deleted_file_in_a_directory_with_a_space(repo, environ):
    touch(repo / "ctx" / "my dir" / "f", 1000)
    touch(repo / "ctx" / "my dir" / "g", 1000)
    git(repo, "add", "ctx")
    git(repo, "commit", "-q", "-m", "space")
    (repo / "ctx" / "my dir" / "f").unlink()
    set_tree_mtime(repo / "ctx", 1000)
    os.utime(repo / "ctx" / "my dir", (1, 5000))
    assert db.context_change(image_of(repo / "ctx"), environ) == (
        5000,
        db.REASON_FILES,
    )


def test_context_change_directory_without_tracked_files(repo, environ):
    """Untracked files only: dirty, the files count."""
    touch(repo / "fresh" / "Dockerfile", 2500, "FROM alpine\n")
    touch(repo / "fresh" / "junk.tmp", 9000)
    os.utime(repo / "fresh", (1, 9500))
    assert db.context_change(image_of(repo / "fresh"), environ) == (
        2500,
        db.REASON_FILES,
    )


def test_context_change_all_ignored_directory(repo, environ):
    """Clean, no commit touches it: no file would be counted by git."""
    touch(repo / "build" / "Dockerfile", 2500, "FROM alpine\n")
    assert db.context_change(image_of(repo / "build"), environ) == (
        0.0,
        db.REASON_FILES,
    )


def test_context_change_empty_directory_in_git(repo, environ):
    (repo / "empty").mkdir()
    os.utime(repo / "empty", (1, 2500))
    assert db.context_change(image_of(repo / "empty"), environ) == (
        0.0,
        db.REASON_FILES,
    )


def test_context_change_outside_git_honours_dockerignore(tmp_path, environ):
    directory = tmp_path / "plain"
    touch(directory / "Dockerfile", 1000)
    touch(directory / "cache" / "big", 9000)
    touch(directory / ".dockerignore", 1100, "cache\n")
    os.utime(directory / "cache", (1, 9000))
    os.utime(directory, (1, 1200))
    assert db.context_change(image_of(directory), environ) == (1200, db.REASON_FILES)


def test_git_context_mtime_ls_files_fails(tmp_path, environ):
    missing = tmp_path / "missing"
    message = None
    with pytest.raises(db.Fatal) as info:
        db.git_context_mtime(image_of(missing), "", environ)
    message = info.value.message
    assert message == (
        f"img: Can't list files: fatal: cannot change to '{missing}': "
        "No such file or directory"
    )


def test_context_change_dockerfile_always_counts(tmp_path, environ):
    directory = tmp_path / "plain"
    touch(directory / "src" / "app", 1000)
    touch(directory / ".dockerignore", 1000, "*\n!src\n")
    touch(directory / "Dockerfile", 8000)
    os.utime(directory / "src", (1, 1000))
    os.utime(directory, (1, 1000))
    assert db.context_change(image_of(directory), environ) == (8000, db.REASON_FILES)
