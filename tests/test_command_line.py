"""Stage: command line. Argument parsing and its types, --help and
--version, usage errors, exit statuses, --dir and --file, the lock on the
configuration file, main() as a whole, --output json sending everything
else to stderr, the progress line, and signals turned into exit codes."""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    BASE_LAYERS,
    REASON_GIT,
    REASON_MISSING,
    ROOT,
    T_COMMIT,
    T_LATER,
    TOOL,
    World,
    announced,
    block,
    check_schema,
    ended_within,
    fatal_message,
    load_tool,
    process_running,
    start_tool,
    succeeded,
    summary,
    wait_for_build,
)

db = load_tool()


# ----------------------------------------------------------------------------
# Argument types
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("8", 8), ("12", 12)])
def test_positive_int(text, value):
    assert db.positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "x", "", "1.5", "-0"])
def test_positive_int_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        db.positive_int(text)
    assert str(error.value) == f"not a positive whole number: '{text}'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.5", 2.5), ("1", 1.0), ("1e-3", 0.001), (" 7 ", 7.0), ("0.01", 0.01)],
)
def test_positive_float(text, expected):
    assert db.positive_float(text) == expected


@pytest.mark.parametrize(
    "text", ["0", "-1", "-0.5", "0.0", "abc", "", "nan", "1s", "inf", "1e400"]
)
def test_positive_float_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        db.positive_float(text)
    assert str(info.value) == f"not a number of seconds up to a day: '{text}'"


# ----------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------


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
    args = parser.parse_args(["--jobs", "3", "--no-cache"])
    assert (args.jobs, args.no_cache) == (3, True)
    assert parser.parse_args(["-j", "1"]).jobs == 1
    assert parser.parse_args(["-j2"]).jobs == 2


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


# ----------------------------------------------------------------------------
# --help and --version
# ----------------------------------------------------------------------------


def test_main_help(capsys, monkeypatch):
    """The help is the command-line section of docs/usage.md, word for word."""
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as info:
        db.main(["--help"])
    assert info.value.code == 0
    manual = (ROOT / "docs" / "usage.md").read_text()
    usage = manual.split("## Command line\n\n```\n", 1)[1].split("```\n", 1)[0]
    out = capsys.readouterr().out
    assert out == usage
    assert out.startswith("usage: docker_build [--help] [--all] [--dir DIR]")
    assert (
        "  --explain, -v         print the evidence for every image on stderr\n" in out
    )


@pytest.mark.parametrize("option", ["-h", "-?"])
def test_main_help_short(capsys, option):
    with pytest.raises(SystemExit) as info:
        db.main([option])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: docker_build [--help]")


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        db.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr() == ("docker_build 0.1.0\n", "")


def test_version_is_the_project_version() -> None:
    result = subprocess.run([str(TOOL), "--version"], capture_output=True, text=True)
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.*)"$', pyproject, re.M)
    assert version
    assert (result.returncode, result.stdout) == (0, f"docker_build {version[1]}\n")


# ----------------------------------------------------------------------------
# Usage errors: exit status 2
# ----------------------------------------------------------------------------


WHOLE = "not a positive whole number"
SECONDS = "not a number of seconds up to a day"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--jobs", "0"], f"argument --jobs/-j: {WHOLE}: '0'"),
        (["-j", "0"], f"argument --jobs/-j: {WHOLE}: '0'"),
        (["--build-jobs", "0"], f"argument --build-jobs: {WHOLE}: '0'"),
        (["--build-jobs", "x"], f"argument --build-jobs: {WHOLE}: 'x'"),
        (["--timeout", "0"], f"argument --timeout: {SECONDS}: '0'"),
        (["--timeout", "x"], f"argument --timeout: {SECONDS}: 'x'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_main_usage_error(capsys, argv, error):
    with pytest.raises(SystemExit) as info:
        db.main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(f"docker_build: error: {error}\n")


def test_output_xml_is_a_usage_error(capsys):
    reference = argparse.ArgumentParser(prog="docker_build")
    reference.add_argument("--output", choices=("text", "json", "bake"))
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


def test_exit_status_2(world: World) -> None:
    result = world.run("--no-such-option")
    assert result.returncode == 2
    assert result.stderr.endswith(
        "docker_build: error: unrecognized arguments: --no-such-option\n"
    )


# ----------------------------------------------------------------------------
# main: errors are one line and exit status 1
# ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(workdir, monkeypatch):
    """conftest's workdir with docker_images holding the name-only image
    img (directory d), and no DOCKER_REPOSITORY."""
    workdir("img\td\n", "d")
    monkeypatch.delenv("DOCKER_REPOSITORY")


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        (
            {},
            ["-f", "nofile"],
            "Can't read images file: [Errno 2] No such file or directory: 'nofile'",
        ),
        # DOCKER_REPOSITORY is checked before the logins and the file
        (
            {"DOCKER_REPOSITORY": "a___b", "DOCKER_LOGIN": "x"},
            ["-f", "nofile"],
            "DOCKER_REPOSITORY: a___b: invalid reference format",
        ),
        (
            {"DOCKER_LOGIN": "x"},
            ["-C", "nodir"],
            "DOCKER_LOGIN requires 3 fields: registry user password",
        ),
        (
            {},
            ["-C", "no", "-C", "dir"],
            "Can't change directory: [Errno 2] No such file or directory: 'no/dir'",
        ),
        # unknown command line images before the missing DOCKER_REPOSITORY
        ({}, ["other"], "Image other not found in 'docker_images' configuration file"),
        ({}, [], "img: Environment variable DOCKER_REPOSITORY is not defined"),
    ],
)
def test_main_fatal_errors(clean_env, monkeypatch, capsys, env, argv, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert db.main(argv) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", message + "\n")


def test_main_dependency_cycle(workdir, capsys):
    workdir("a\ta\t$DOCKER_REPOSITORY/b\nb\tb\t$DOCKER_REPOSITORY/a\n", "a", "b")
    assert db.main(["-n", "-a"]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "Dependency cycle: a -> b -> a\n")


def test_exit_status_0(world: World) -> None:
    world.up_to_date()
    assert world.run().returncode == 0


def test_exit_status_1(world: World) -> None:
    world.config("app\tmissing")
    result = world.run()
    assert (result.returncode, result.stderr) == (
        1,
        "docker_images line 1: unknown directory 'missing'\n",
    )


# ----------------------------------------------------------------------------
# main: a failed build's exit status
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_main_real_run_failure(workdir, docker, monkeypatch, capsys, jobs):
    """A failed base: its dependent is never built; docker's exit status."""
    workdir("b\tb\t$DOCKER_REPOSITORY/a:6\na:6\ta\tNONE\n", "a", "b")
    for key, value in docker.environ.items():
        monkeypatch.setenv(key, value)
    # no probe of docker before the builds (FAKE_DOCKER would build it)
    monkeypatch.setenv("DOCKER_BUILD_WITH", "buildx")
    assert db.main(["-a", "--build-jobs", jobs]) == 6
    out = capsys.readouterr().out
    assert out.startswith(block("ghcr.io/o/a:6", output=False))
    assert docker.started() == ["a"]
    if jobs == "2":
        assert out.endswith(summary("-", "ghcr.io/o/a:6 (exit 6)", "ghcr.io/o/b"))


def test_exit_status_of_a_failed_build(world: World) -> None:
    world.up_to_date()
    assert world.run("--all", env={"DOCKER_DOUBLE_FAIL": "app=42"}).returncode == 42


# ----------------------------------------------------------------------------
# main: dry runs, --dir and --file
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [[], ["--build-jobs", "4"]])
def test_main_dry_run_propagates(workdir, capsys, monkeypatch, jobs):
    """A forced base: its dependent (asked only whether it is missing,
    here it is there) is rebuilt with it."""
    monkeypatch.setattr(db.Registries, "pushed", present)
    workdir("app\tapp\t$DOCKER_REPOSITORY/base\nbase\tbase\tNONE\n", "app", "base")
    assert db.main(["-n", *jobs, "base"]) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        "*** ghcr.io/o/base\nReason: Rebuild triggered by command line\n\n"
        "*** ghcr.io/o/app\n"
        "Reason: Base image will be rebuilt: ghcr.io/o/base:latest\n\n"
    )
    assert captured.err == ""


def present(_registries, _reference, platforms):
    """Registries.pushed: the image is there."""
    return dict.fromkeys(platforms, db.NO_BASE)


def test_main_dry_run_explain(workdir, capsys, monkeypatch):
    monkeypatch.setattr(db.Registries, "pushed", present)
    workdir("app\tapp\t$DOCKER_REPOSITORY/base\nbase\tbase\tNONE\n", "app", "base")
    assert db.main(["-n", "-v", "base"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "ghcr.io/o/base: not checked; Rebuild triggered by command line\n"
        "ghcr.io/o/app: not checked; "
        "Base image will be rebuilt: ghcr.io/o/base:latest\n"
    )


def test_main_dry_run_all(clean_env, monkeypatch, capsys, tmp_path):
    """--dir parts are joined, --file is read there; every repository of
    DOCKER_REPOSITORY gets the image; nothing is looked up."""
    monkeypatch.setenv("DOCKER_REPOSITORY", "User ghcr.io/o")
    monkeypatch.setenv("DOCKER_LOGIN_A", "ghcr.io u p")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "imgs").write_text("tool:2\t../d\tNONE\n")
    assert db.main(["-n", "-a", "--dir", "sub", "--file", "imgs"]) == 0
    assert capsys.readouterr().out == (
        "*** user/tool:2\nReason: Rebuild triggered by command line\n\n"
        "*** ghcr.io/o/tool:2\nReason: Rebuild triggered by command line\n\n"
    )


def test_file_and_dir_options(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("sub/dir/app", base)
    world.config("app\tapp", name="sub/dir/images.conf")
    world.commit()
    result = world.run("-C", "sub", "--dir", "dir", "-f", "images.conf", "-n")
    succeeded(result, announced(world.ref("app"), REASON_MISSING))


# ----------------------------------------------------------------------------
# The configuration lock: one run builds from a file at a time
# ----------------------------------------------------------------------------


def test_lock_configuration(tmp_path):
    path = tmp_path / "docker_images"
    path.write_text("img\td\n")
    first = db.lock_configuration(str(path), False)
    assert first is not None and not first.closed
    assert fatal_message(db.lock_configuration, str(path), False) == (
        f"{path}: another docker_build run is using it"
    )
    first.close()  # a closed handle releases the lock
    second = db.lock_configuration(str(path), False)
    assert second is not None
    second.close()


def test_lock_configuration_waits(tmp_path):
    path = str(tmp_path / "docker_images")
    with open(path, "w") as config:
        config.write("img\td\n")
    first = db.lock_configuration(path, True)
    got = []
    waiter = threading.Thread(
        target=lambda: got.append(db.lock_configuration(path, True))
    )
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and got == []  # still waiting
    first.close()
    waiter.join(5)
    assert not waiter.is_alive() and got[0] is not None
    got[0].close()


def test_lock_configuration_missing_file(tmp_path):
    assert db.lock_configuration(str(tmp_path / "missing"), False) is None
    assert db.lock_configuration(str(tmp_path / "missing"), True) is None


def test_main_no_wait_while_another_run_builds(clean_env, capsys, tmp_path):
    held = db.lock_configuration(str(tmp_path / "docker_images"), False)
    try:
        assert db.main(["--no-wait", "-a"]) == 1
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == (
            "",
            "docker_images: another docker_build run is using it\n",
        )
    finally:
        held.close()


def found_alpine(_host, _reference, platforms, _cache):
    """RegistryHost.fetch_image: the base alpine:latest of clean_env's img,
    which a forced image's build records."""
    created = datetime.datetime.fromtimestamp(T_COMMIT, datetime.timezone.utc)
    image = db.ImageInfo(created, ("sha256:" + "a" * 64,), "sha256:" + "d" * 64)
    return dict.fromkeys(platforms, image)


def test_main_dry_run_does_not_lock(clean_env, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DOCKER_REPOSITORY", "user")
    monkeypatch.setattr(db.RegistryHost, "fetch_image", found_alpine)
    held = db.lock_configuration(str(tmp_path / "docker_images"), False)
    try:
        assert db.main(["-n", "--no-wait", "-a"]) == 0
    finally:
        held.close()
    assert capsys.readouterr().out == (
        "*** user/img\nReason: Rebuild triggered by command line\n\n"
    )


def test_main_releases_the_lock(clean_env, monkeypatch, tmp_path):
    """The lock is held while building, and free after the run."""
    monkeypatch.setenv("DOCKER_REPOSITORY", "user")
    monkeypatch.setenv("DOCKER_BUILD_WITH", "buildx")  # no probe of docker
    monkeypatch.setattr(db.RegistryHost, "fetch_image", found_alpine)
    seen = []

    def run_builds(runner, plan):
        seen.append(db.lock_configuration(str(tmp_path / "docker_images"), False))

    monkeypatch.setattr(db.BuildRunner, "run_builds", run_builds)
    args = db.build_parser().parse_args(["-a", "--no-wait"])
    with pytest.raises(db.Fatal, match="another docker_build run"):  # held
        db.DockerBuild(args, os.environ).run()
    assert seen == []
    # after the run: free
    db.lock_configuration(str(tmp_path / "docker_images"), False).close()


def test_overlapping_runs(world: World) -> None:
    world.up_to_date()
    first = start_tool(world, "--all", env={"DOCKER_DOUBLE_SLEEP": "3"})
    wait_for_build(world)
    result = world.run("--all", "--no-wait")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "docker_images: another docker_build run is using it\n"
    second = start_tool(world, "--all")
    assert first.wait(timeout=60) == 0
    assert second.wait(timeout=60) == 0
    one, two = world.calls()
    assert two["start"] >= one["end"]
    # a dry run does not wait
    assert world.run("-n", "--no-wait").returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP])
def test_killed_run_leaves_no_build_behind(world: World, signum: int) -> None:
    """The tool killed (SIGKILL) or hung up on (SIGHUP) during a build: the
    docker double is gone within a second, and the lock with it."""
    world.up_to_date()
    first = start_tool(world, "--all", env={"DOCKER_DOUBLE_SLEEP": "60"})
    (pid,) = wait_for_build(world)
    first.send_signal(signum)
    assert ended_within(pid, 1.0)
    _, stderr = first.communicate(timeout=30)
    if signum == signal.SIGHUP:
        assert first.returncode == 129
        assert stderr == f"Interrupted by SIGHUP: build of {world.ref('app')} stopped\n"
    else:
        assert first.returncode == -signal.SIGKILL
    result = world.run("--all", "--no-wait")
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP])
def test_second_run_waits_for_the_build_of_a_killed_run(
    world: World, signum: int
) -> None:
    """A build that takes 2 s to stop after its SIGTERM holds the lock: a
    --no-wait run gives up, a second run starts its build only once the
    first build has ended. The SIGTERM comes within a second of the kill."""
    world.up_to_date()
    env = {"DOCKER_DOUBLE_SLEEP": "60", "DOCKER_DOUBLE_LINGER": "2"}
    first = start_tool(world, "--all", env=env)
    (pid,) = wait_for_build(world)
    killed = time.time()
    first.send_signal(signum)
    if signum == signal.SIGKILL:
        first.wait(timeout=10)  # the run is gone, its build is not
    second = start_tool(world, "--all")
    terminated = Path(str(world.log) + ".terminated")
    deadline = time.monotonic() + 5
    # the file may exist before its line is written
    while time.monotonic() < deadline and not (
        terminated.exists() and terminated.read_text().endswith("\n")
    ):
        time.sleep(0.02)
    (line,) = terminated.read_text().splitlines()
    assert line.split()[0] == str(pid)
    assert float(line.split()[1]) - killed < 1.0  # SIGTERM at once
    if process_running(pid):
        with (
            open(world.root / "docker_images", "rb") as config,
            pytest.raises(BlockingIOError),  # the orphan holds the lock
        ):
            fcntl.flock(config, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert ended_within(pid, 5)
    ended = time.time()
    assert second.wait(timeout=60) == 0
    first.communicate(timeout=30)
    ((call,),) = [world.calls()]  # the lingering double never logs its call
    assert call["start"] >= ended - 0.5
    assert call["start"] >= float(line.split()[1]) + 2


# ----------------------------------------------------------------------------
# Output to stderr: --output json, the progress line
# ----------------------------------------------------------------------------


@pytest.mark.also_sequential
def test_json_dry_run(world: World) -> None:
    base = world.up_to_date("app", "tool")
    world.write("tool/new", "x\n")
    world.commit(when=T_LATER)
    result = world.run("-n", "--json")
    assert result.returncode == 0
    document = json.loads(result.stdout)
    check_schema(document)
    entry = {
        "name": "app",
        "full_name": world.ref("app:latest"),
        "repository": world.namespace,
        "directory": "app",
        "base": base,
        "platforms": ["linux/amd64"],
        "decision": "up-to-date",
        "reason": None,
        "result": None,
        "exit_code": None,
        "signal": None,
        # pushed without a label, up to date by the times: nothing asked
        "inputs": {"recorded": None, "current": None},
    }
    current = document["images"][1]["inputs"]["current"]
    assert re.fullmatch("sha256:[0-9a-f]{64}", current["context"])
    assert document == {
        "version": 1,
        "dry_run": True,
        "images": [
            entry,
            {
                **entry,
                "name": "tool",
                "full_name": world.ref("tool:latest"),
                "directory": "tool",
                "decision": "rebuild",
                "reason": REASON_GIT,
                # what its build would record: no options, its base's
                # manifest digest and no other image
                "inputs": {
                    "recorded": None,
                    "current": {
                        "version": 2,
                        "context": current["context"],
                        "options": db.options_digest([]),
                        "images": {base: world.registry.digest(base)},
                    },
                },
            },
        ],
    }
    assert result.stderr == announced(world.ref("tool"), REASON_GIT)


@pytest.mark.also_sequential
def test_progress_on_a_terminal(world: World) -> None:
    world.up_to_date("app", "tool")
    controller, terminal = pty.openpty()
    tool = subprocess.Popen(
        [sys.executable, str(TOOL), *world.options],
        cwd=world.root,
        env=world.env,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    stdout, _ = tool.communicate(timeout=60)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert (tool.returncode, stdout) == (0, b"")
    # 3 look-ups (base, app, tool) and 2 git queries
    assert b"\rdocker_build: checking 1/5\x1b[K" in seen
    # the count ends at N/N before the line is wiped
    assert seen.endswith(b"\rdocker_build: checking 5/5\x1b[K\r\x1b[K")


# ----------------------------------------------------------------------------
# Signals: SIGINT and SIGTERM end the run with 128 + N
# ----------------------------------------------------------------------------


def test_raise_interrupted():
    with pytest.raises(db.Interrupted) as info:
        db.raise_interrupted(signal.SIGTERM, None)
    assert (info.value.signum, info.value.name) == (signal.SIGTERM, "SIGTERM")


def test_catch_signals_outside_the_main_thread():
    found = []
    worker = threading.Thread(target=lambda: found.append(db.catch_signals()))
    worker.start()
    worker.join()
    assert found == [{}]


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)],
)
def test_main_interrupted(monkeypatch, capsys, signum, code):
    """A signal during the run: one line, 128 + N; the handlers are restored."""
    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {sig: signal.getsignal(sig) for sig in stops}
    during = []

    def run(self):
        during.append([signal.getsignal(sig) for sig in before])
        os.kill(os.getpid(), signum)
        time.sleep(5)
        pytest.fail("not interrupted")

    monkeypatch.setattr(db.DockerBuild, "run", run)
    assert db.main([]) == code
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"docker_build: interrupted by {signal.Signals(signum).name}\n",
    )
    assert during == [[db.raise_interrupted] * 3]
    assert {sig: signal.getsignal(sig) for sig in before} == before


# ----------------------------------------------------------------------------
# Names in messages: shortened beyond a sane length
# ----------------------------------------------------------------------------


def test_shortened():
    name = "a" * 100 + "b" * 99_900
    text = db.shortened(f"file line 1: invalid image name '{name}'")
    word = text.rpartition(" ")[2]
    assert len(word) == 200
    assert word.startswith("'aaa") and "..." in word and word.endswith("bbb'")
    assert db.shortened("short words stay") == "short words stay"


def test_main_long_name_is_shortened(clean_env, capsys, tmp_path):
    (tmp_path / "docker_images").write_text("x" * 100_000 + "\td\n")
    assert db.main(["-n"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("docker_images line 1: invalid image name 'xxx")
    assert len(err) < 300 and "..." in err and err.endswith("'\n")


# ----------------------------------------------------------------------------
# The README's quick start, run on the example project
# ----------------------------------------------------------------------------

DOCKER_OUTPUT = "(docker's build output)"


def quick_start_steps() -> list[tuple[str, str]]:
    """The commands of the README's quick-start block, each with the
    output shown after it."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- quick-start -->\n```console\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, str]] = []
    for line in block.splitlines(keepends=True):
        if line.startswith("$ "):
            steps.append((line[2:].strip(), ""))
        else:
            command, output = steps[-1]
            steps[-1] = (command, output + line)
    return steps


def test_quick_start(world: World) -> None:
    """The quick start's commands, on a copy of example/, print what the
    README shows: `debian:bookworm-slim` is an image of that name on the
    test registry, `localhost:5000/example` the test's repository, and the
    docker double's output stands for docker's."""
    public = world.ref("debian:bookworm-slim")
    world.registry.push(public, T_COMMIT, BASE_LAYERS)
    source = ROOT / "example"
    for path in sorted(source.rglob("*")):
        if path.is_file():
            copy = world.root / "example" / path.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text().replace("debian:bookworm-slim", public))
            copy.chmod(path.stat().st_mode)
    steps = quick_start_steps()
    assert [command.split()[0] for command, _ in steps] == [
        "cd",
        "export",
        "docker_build",
        "docker_build",
        "docker_build",
        "echo",
        "docker_build",
    ]
    cwd = world.root
    env: dict[str, str] = {}
    for command, shown in steps:
        expected = shown.replace("localhost:5000/example", world.namespace)
        if command.startswith("cd "):
            cwd = cwd / command.split()[1]
        elif command.startswith("export "):
            name, _, value = command.split(None, 1)[1].partition("=")
            env[name] = value.replace("localhost:5000/example", world.namespace)
        elif command.startswith("docker_build"):
            result = world.run(*command.split()[1:], cwd=cwd, env=env)
            output = "".join(
                line
                for line in result.stdout.splitlines(keepends=True)
                if not line.startswith("double: ")
            )
            expected = "".join(
                line
                for line in expected.splitlines(keepends=True)
                if line.strip() != DOCKER_OUTPUT
            )
            assert (command, result.returncode, result.stderr, output) == (
                command,
                0,
                "",
                expected,
            )
        else:
            subprocess.run(["sh", "-c", command], cwd=cwd, check=True)
    assert world.built() == [
        world.ref(f"{name}:latest") for name in ("base", "app", "report")
    ]
