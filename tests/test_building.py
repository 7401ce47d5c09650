"""Stage: building. The docker command line of a target, the BuildRunner
one build at a time and in parallel (what it prints, what docker is asked,
the outcomes, the exit status and the closing message), builds killed by a
signal or stopped by an interrupt, and the JSON document of the results.

In-process tests use a shell script as docker (first on the PATH of the
environment the runner hands to the builds); end-to-end tests run the tool
against the registry with the docker double."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import jsonschema
import pytest
from conftest import (
    AMD,
    BASE_LAYERS,
    GHCR,
    REASON_FORCED,
    REASON_GIT,
    REPOS,
    T_COMMIT,
    T_LATER,
    TOOL,
    World,
    announced,
    block,
    chain,
    check_schema,
    ended_within,
    expected_chain,
    load_tool,
    make_image,
    process_running,
    start_tool,
    summary,
    touch_root,
    two_images,
    wait_for_build,
)

db = load_tool()

TWO = ("linux/amd64", "linux/arm64")
FORCED = db.Cause(db.Reason.FORCED)


def decided(node: db.ImageNode, cause: db.Cause | None) -> db.ImagePlan:
    """The same decision for every target of the image."""
    return db.ImagePlan(node, tuple(db.Decision(t, cause) for t in node.targets))


def plan_of(
    images: Sequence[db.Image],
    repositories: Sequence[str],
    forced: Callable[[db.Image], bool],
) -> db.Plan:
    """The plan of the images in build order: the forced ones are rebuilt,
    and so is every image built on a rebuilt one, each target naming its
    own base."""
    rebuilt: set[tuple[str, str, str]] = set()
    planned = []
    for node in db.build_order(db.image_graph(images, repositories, forced)):
        if node.forced:
            image_plan = decided(node, FORCED)
        elif any(target.base_key in rebuilt for target in node.targets):
            image_plan = db.ImagePlan(
                node,
                tuple(
                    db.Decision(t, db.Cause(db.Reason.DEPENDENCY, t.base_name))
                    for t in node.targets
                ),
            )
        else:
            image_plan = decided(node, None)
        if image_plan.rebuild:
            rebuilt.update(target.key for target in node.targets)
        planned.append(image_plan)
    return db.Plan(tuple(planned))


def forced_plan(
    spec: Iterable[tuple[str, str]],
    repositories: Sequence[str] = GHCR,
    forced: Sequence[str] | None = None,
) -> db.Plan:
    """A plan of the (name, base) images: all forced unless `forced` names
    some (by their tagged names)."""
    images = [make_image(name, base) for name, base in spec]
    return plan_of(
        images,
        repositories,
        lambda image: forced is None or image.tagged in forced,
    )


# One image, img in ghcr.io/o, built from the directory ctx.
IMG = make_image("img", directory="ctx")
IMG_NAME = "ghcr.io/o/img:latest"
IMG_HEADER = announced("ghcr.io/o/img", REASON_FORCED)


def img_plan() -> db.Plan:
    return plan_of([IMG], GHCR, lambda image: True)


@pytest.fixture
def docker_script(tmp_path):
    """Install `script` as the docker command; return the environment that
    finds it first."""

    def install(script: str) -> dict[str, str]:
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        docker = bindir / "docker"
        docker.write_text("#!/bin/sh\n" + script)
        docker.chmod(0o755)
        return {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}

    return install


def run_one_at_a_time(plan: db.Plan, environ, dry_run: bool = False):
    return db.BuildRunner(1, environ, dry_run).run_builds(plan)


def run_parallel(
    plan: db.Plan,
    workers: int,
    environ,
    capsys,
    status: int,
    expected: str,
    closing: str,
) -> tuple[db.BuildReport, str]:
    """Run the plan's builds with `workers`: the report has `status` and no
    message; the output is `expected`'s lines in some order (concurrent
    builds), then the summary `closing`. Returns the report and output."""
    report = db.BuildRunner(workers, environ, False).run_builds(plan)
    assert (report.status, report.message) == (status, None)
    out = capsys.readouterr().out
    assert sorted(out.splitlines()) == sorted((expected + closing).splitlines())
    assert out.endswith(closing)
    return report, out


# ----------------------------------------------------------------------------
# build_steps: docker buildx build --push, or a build then a push per tag
# ----------------------------------------------------------------------------


def argvs(builder, target, inputs=None) -> list[list[str]]:
    """The command lines of one target's build steps."""
    return [list(step.argv) for step in db.build_steps(builder, target, inputs)]


def test_build_steps_order():
    image = make_image(
        "img",
        base="$DOCKER_REPOSITORY/base:latest",
        directory="ctx/img",
        options=("--platform=linux/amd64", "--no-cache"),
    )
    (target,) = db.image_targets(image, GHCR)
    assert argvs(db.Builder.BUILDX, target) == [
        [
            "docker",
            "buildx",
            "build",
            "--build-arg",
            "DOCKER_REPOSITORY=ghcr.io/o",
            "--platform=linux/amd64",
            "--no-cache",
            "--push",
            "--tag",
            "ghcr.io/o/img:latest",
            "ctx/img",
        ]
    ]


def test_build_steps_plain_base():
    (target,) = db.image_targets(make_image("ghcr.io/o/img:1", "debian:12"), GHCR)
    assert argvs(db.Builder.BUILDX, target) == [
        ["docker", "buildx", "build", "--push", "--tag", "ghcr.io/o/img:1", "d"]
    ]


def test_build_steps_with_inputs():
    """The label recording the inputs comes after the options, before
    --push; without inputs there is none."""
    image = make_image("img", directory="ctx/img", options=("--no-cache",))
    (target,) = db.image_targets(image, GHCR)
    inputs = db.Inputs("sha256:c", "sha256:o", {"ghcr.io/o/tool:1": "sha256:t"})
    assert argvs(db.Builder.BUILDX, target, inputs) == [[
        "docker", "buildx", "build", "--no-cache",
        "--label",
        'docker_build.inputs={"context":"sha256:c",'
        '"images":{"ghcr.io/o/tool:1":"sha256:t"},"options":"sha256:o","version":2}',
        "--push", "--tag", "ghcr.io/o/img:latest", "ctx/img",
    ]]  # fmt: skip
    assert argvs(db.Builder.BUILDX, target) == [[
        "docker", "buildx", "build", "--no-cache",
        "--push", "--tag", "ghcr.io/o/img:latest", "ctx/img",
    ]]  # fmt: skip


@pytest.mark.parametrize(
    ("builder", "pull"),
    [(db.Builder.DOCKER, "--pull"), (db.Builder.PODMAN, "--pull=always")],
)
def test_build_steps_without_buildx(builder, pull, monkeypatch):
    """A build that pulls its base from the registry, with the same options
    and labels, then a push of every tag; only the pushes leave an image
    unpushed when they fail."""
    monkeypatch.setattr(db, "image_labels", lambda target, inputs: {"L": "l"})
    image = make_image(
        "img", directory="ctx/img", options=("--no-cache", "-t", "ghcr.io/o/x:1")
    )
    (target,) = db.image_targets(image, GHCR)
    steps = db.build_steps(builder, target, None)
    program = builder.value
    assert [list(step.argv) for step in steps] == [
        [program, "build", pull, "--no-cache", "-t", "ghcr.io/o/x:1",
         "--label", "L=l", "--tag", "ghcr.io/o/img:latest", "ctx/img"],
        [program, "push", "ghcr.io/o/img:latest"],
        [program, "push", "ghcr.io/o/x:1"],
    ]  # fmt: skip
    assert [(step.name, step.pushes) for step in steps] == [
        (program, False),
        (f"{program} push", True),
        (f"{program} push", True),
    ]


@pytest.mark.parametrize(
    ("options", "platforms", "refusal"),
    [
        ((), ("linux/amd64",), None),
        (("--cache-from=x", "--secret", "id=a"), ("linux/arm64",), None),
        (
            (),
            ("linux/amd64", "linux/arm64"),
            "img: builds for linux/amd64,linux/arm64, and {program} makes one"
            " platform at a time: multi-platform images need docker buildx",
        ),
        (
            ("--provenance=true",),
            ("linux/amd64",),
            "img: --provenance needs docker buildx, which {program} is not",
        ),
        (
            ("--build-context", "x=y"),
            ("linux/amd64",),
            "img: --build-context needs docker buildx, which {program} is not",
        ),
        (
            ("-otype=local,dest=out",),
            ("linux/amd64",),
            "img: -o needs docker buildx, which {program} is not",
        ),
    ],
)
def test_builder_refusal(options, platforms, refusal):
    image = make_image("img", options=options, platforms=platforms)
    (target,) = db.image_targets(image, GHCR)
    for builder in (db.Builder.DOCKER, db.Builder.PODMAN):
        expected = refusal and refusal.format(program=f"{builder.value} build")
        assert db.builder_refusal(builder, target) == expected
    assert db.builder_refusal(db.Builder.BUILDX, target) is None


def inputs_label(option: str) -> dict:
    """The JSON of a `docker_build.inputs=...` label option; its context
    is a sha256 digest."""
    name, _, value = option.partition("=")
    assert name == "docker_build.inputs"
    inputs = json.loads(value)
    assert re.fullmatch("sha256:[0-9a-f]{64}", inputs["context"])
    return inputs


def test_options_order(world: World) -> None:
    """Global options, then the image's own, as docker gets them."""
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("app", "$DOCKER_REPOSITORY/base:1")
    world.dockerfile("tool", "scratch")
    world.config(
        "--platform=linux/amd64 --label 'a=b c'\t\t# global options",
        "app\tapp\t$DOCKER_REPOSITORY/base:1\t--build-arg X=1 --pull",
        "--no-cache",
        "tool\ttool\tscratch",
    )
    world.commit()
    world.run("--all")
    app, tool = (call["argv"] for call in world.calls())
    app_label, tool_label = app[11], tool[4]
    assert app == [
        "buildx", "build",
        "--build-arg", f"DOCKER_REPOSITORY={world.namespace}",
        "--platform=linux/amd64", "--label", "a=b c",
        "--build-arg", "X=1", "--pull",
        "--label", app_label,
        "--label", f"org.opencontainers.image.base.name={base}",
        "--label",
        f"org.opencontainers.image.base.digest={world.registry.digest(base)}",
        "--push", "--tag", world.ref("app:latest"), "app",
    ]  # fmt: skip
    assert tool == [
        "buildx", "build", "--no-cache",
        "--label", tool_label,
        "--push", "--tag", world.ref("tool:latest"), "tool",
    ]  # fmt: skip
    # the tool's own label, after the options, records them as given
    app_inputs, tool_inputs = (inputs_label(label) for label in (app_label, tool_label))
    base_digest = world.registry.digest(base)
    assert app_inputs == {
        "version": 2,
        "context": app_inputs["context"],
        "options": db.options_digest(app[2:10]),
        "images": {base: base_digest},  # the base is recorded, scratch is not
    }
    assert tool_inputs == {
        "version": 2,
        "context": tool_inputs["context"],
        "options": db.options_digest(["--no-cache"]),
        "images": {},
    }
    assert app_inputs["context"] != tool_inputs["context"]


# ----------------------------------------------------------------------------
# BuildRunner, one build at a time: docker writes to the terminal itself
# ----------------------------------------------------------------------------


def test_build_runs_command(capfd, docker_script):
    environ = docker_script('echo "$K:" "$@"\n')
    environ["K"] = "V"
    report = run_one_at_a_time(img_plan(), environ)
    assert report == db.BuildReport({IMG_NAME: db.Outcome(db.Result.BUILT, 0)}, 0)
    assert capfd.readouterr().out == IMG_HEADER + (
        "V: buildx build --push --tag ghcr.io/o/img:latest ctx\n\n"
    )


def test_build_runs_docker_in_a_session_of_its_own(capfd, docker_script):
    environ = docker_script('ps -o sid= -p $$ | tr -d " "; echo $$\n')
    assert run_one_at_a_time(img_plan(), environ).status == 0
    out = capfd.readouterr().out
    assert out.startswith(IMG_HEADER)
    sid, pid, blank = out.removeprefix(IMG_HEADER).split("\n", 2)
    assert (sid, blank) == (pid, "\n")
    assert int(sid) != os.getsid(0)


@pytest.mark.parametrize("code", [1, 3, 125, 255])
def test_build_failure_exit_status(capfd, docker_script, code):
    environ = docker_script(f"echo failing; exit {code}\n")
    report = run_one_at_a_time(img_plan(), environ)
    assert report == db.BuildReport(
        {IMG_NAME: db.Outcome(db.Result.FAILED, code)},
        code,
        f"ghcr.io/o/img: docker failed with exit status {code}",
    )
    assert capfd.readouterr().out == IMG_HEADER + "failing\n"  # no blank line


@pytest.mark.parametrize(
    ("signal_name", "code"), [("TERM", 143), ("KILL", 137), ("INT", 130)]
)
def test_build_killed_by_a_signal(capfd, docker_script, signal_name, code):
    environ = docker_script(f"kill -{signal_name} $$\nsleep 5\n")
    report = run_one_at_a_time(img_plan(), environ)
    signum = signal.Signals["SIG" + signal_name]
    assert report == db.BuildReport(
        {IMG_NAME: db.Outcome(db.Result.KILLED, code, signum=signum)},
        code,
        f"ghcr.io/o/img: docker was killed by SIG{signal_name}",
    )
    assert capfd.readouterr().out == IMG_HEADER


def test_build_cannot_run_docker(tmp_path, capsys):
    environ = {"PATH": str(tmp_path / "nobin")}
    report = run_one_at_a_time(img_plan(), environ)
    error = "Can't run docker: [Errno 2] No such file or directory: 'docker'"
    assert report == db.BuildReport(
        {IMG_NAME: db.Outcome(db.Result.FAILED, 1, error=error)}, 1, error
    )
    assert capsys.readouterr().out == IMG_HEADER


def test_build_interrupted_stops_the_process_group(
    tmp_path, capfd, docker_script, monkeypatch
):
    """An Interrupted while docker runs: its whole session gets SIGTERM, then
    SIGKILL after BUILD_STOP_TIMEOUT; the run ends with 128 + the signal."""
    pids = tmp_path / "pids"
    environ = docker_script(f"trap '' TERM\nsleep 60 &\necho $$ $! > {pids}\nwait\n")
    monkeypatch.setattr(db, "BUILD_STOP_TIMEOUT", 0.2)

    def interrupt(signum, frame):
        raise db.Interrupted(signal.SIGTERM)

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        report = run_one_at_a_time(img_plan(), environ)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert (report.message, report.status) == (
        "Interrupted by SIGTERM: build of ghcr.io/o/img stopped",
        143,
    )
    assert report.outcomes == {
        IMG_NAME: db.Outcome(db.Result.KILLED, 143, signum=signal.SIGTERM)
    }
    shell, sleeper = (int(pid) for pid in pids.read_text().split())
    for pid in (shell, sleeper):  # both gone (the sleeper may be a zombie
        # of init for a moment): no signal can reach a live process
        assert ended_within(pid, 5)


@pytest.mark.parametrize(
    ("name", "signum", "message"),
    [
        ("img", 9, "ghcr.io/o/img: docker was killed by SIGKILL"),
        ("img", 15, "ghcr.io/o/img: docker was killed by SIGTERM"),
        ("img", 2, "ghcr.io/o/img: docker was killed by SIGINT"),
        ("img", 11, "ghcr.io/o/img: docker was killed by SIGSEGV"),
        # the name as shown, without an added tag
        ("tool:2", 9, "ghcr.io/o/tool:2: docker was killed by SIGKILL"),
    ],
)
def test_killed_message(name, signum, message):
    (target,) = db.image_targets(make_image(name), GHCR)
    assert db.killed_message(target, signum) == message


# ----------------------------------------------------------------------------
# The sample plan: base (missing, two repositories), app (built on it), a
# full name (forced), quiet (up to date)
# ----------------------------------------------------------------------------

DOC_REPOS = ["reg.example/a", "reg.example/b"]
BASE = make_image("base", "alpine:3", directory="base", platforms=TWO)
APP = make_image("app", "$DOCKER_REPOSITORY/base:latest", directory="app")
FULL = make_image("ghcr.io/o/full:2", "debian:12", directory="full")
QUIET = make_image("quiet", "alpine:3", directory="quiet")


def sample_plan() -> db.Plan:
    """base (rebuilt, two repositories), app (built on it), a full name
    (rebuilt), quiet (up to date)."""
    base, app, full, quiet = db.image_graph(
        [BASE, APP, FULL, QUIET], DOC_REPOS, lambda image: image is FULL
    )
    assert app.bases == {0}
    return db.Plan(
        (
            decided(base, db.Cause(db.Reason.MISSING)),
            db.ImagePlan(
                app,
                tuple(
                    db.Decision(t, db.Cause(db.Reason.DEPENDENCY, t.base_name))
                    for t in app.targets
                ),
            ),
            decided(full, FORCED),
            decided(quiet, None),
        )
    )


def test_rebuild_in_order_results(docker_script, tmp_path, capfd):
    """One at a time, the first failure ends the run: the outcomes of the
    builds tried, docker's exit status, a line naming the image."""
    log = tmp_path / "built"
    environ = docker_script(
        'while [ $# -gt 0 ]; do [ "$1" = --tag ] && tag=$2; shift; done\n'
        f'echo "$tag" >>{log}\n'
        'if [ "$tag" = reg.example/b/base:latest ]; then exit 2; fi\n'
    )
    report = run_one_at_a_time(sample_plan(), environ)
    assert (report.status, report.message) == (
        2,
        "reg.example/b/base: docker failed with exit status 2",
    )
    assert log.read_text().split() == [
        "reg.example/a/base:latest",
        "reg.example/b/base:latest",
    ]
    assert report.outcomes == {
        "reg.example/a/base:latest": db.Outcome(db.Result.BUILT, 0),
        "reg.example/b/base:latest": db.Outcome(db.Result.FAILED, 2),
    }
    capfd.readouterr()


def test_rebuild_in_order_dry_run_results(docker, capsys):
    """A dry run prints every rebuild, builds nothing and has no outcomes."""
    report = run_one_at_a_time(sample_plan(), docker.environ, dry_run=True)
    assert report == db.BuildReport({}, 0, None)
    assert docker.started() == []
    assert capsys.readouterr().out == (
        announced("reg.example/a/base", "Image missing in repository")
        + announced("reg.example/b/base", "Image missing in repository")
        + announced(
            "reg.example/a/app",
            "Base image will be rebuilt: reg.example/a/base:latest",
        )
        + announced(
            "reg.example/b/app",
            "Base image will be rebuilt: reg.example/b/base:latest",
        )
        + announced("ghcr.io/o/full:2", REASON_FORCED)
    )


def test_build_failure_exit_code(world: World) -> None:
    two_images(world)
    result = world.run("--all", env={"DOCKER_DOUBLE_FAIL": "one=3"})
    assert result.returncode == 3
    assert result.stderr == f"{world.ref('one')}: docker failed with exit status 3\n"
    assert result.stdout == announced(world.ref("one"), REASON_FORCED) + (
        f"double: failed {world.ref('one:latest')}\n"
    )
    assert world.built() == [world.ref("one:latest")]


def test_docker_missing(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("app\tapp")
    world.commit()
    (world.bin / "docker").unlink()
    env = {"PATH": f"{world.bin}:{os.path.dirname(sys.executable)}"}
    result = world.run("--all", env=env)
    assert result.returncode == 1
    assert result.stdout == ""  # found out before the first build
    assert result.stderr == (
        "Can't run docker: [Errno 2] No such file or directory: 'docker'\n"
    )


def test_build_killed_by_a_signal_end_to_end(world: World) -> None:
    world.up_to_date()
    result = world.run("--all", env={"DOCKER_DOUBLE_SIGNAL": "app=SIGKILL"})
    assert result.returncode == 128 + signal.SIGKILL
    assert result.stderr == f"{world.ref('app')}: docker was killed by SIGKILL\n"


def test_dependents_are_built_after_their_base(world: World) -> None:
    chain(world)
    touch_root(world)
    result = world.run()
    assert (result.returncode, result.stderr) == (0, "")
    pushed = [world.ref(f"{name}:latest") for name in ("root", "middle", "tool")]
    assert world.built() == pushed
    blocks = expected_chain(world).split("\n\n")[:-1]
    assert result.stdout == "".join(
        f"{block}\n\ndouble: pushed {tag}\n\n"
        for block, tag in zip(blocks, pushed, strict=True)
    )
    assert world.run().stdout == ""


def test_failure_stops_a_sequential_run(world: World) -> None:
    chain(world)
    touch_root(world)
    result = world.run(env={"DOCKER_DOUBLE_FAIL": "/root:=7"})
    assert (result.returncode, result.stderr) == (
        7,
        f"{world.ref('root')}: docker failed with exit status 7\n",
    )
    assert result.stdout == (
        announced(world.ref("root"), REASON_GIT)
        + f"double: failed {world.ref('root:latest')}\n"
    )


# ----------------------------------------------------------------------------
# Build jobs: one per target to rebuild, each after every target of the
# images it is built on
# ----------------------------------------------------------------------------


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
    jobs = db.BuildRunner.build_jobs(plan)
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
    # every target waits for the target that pushes its base: the one of
    # its own repository
    for repository in REPOS:
        assert after(f"{repository}/app") == [f"{repository}/base"]
        assert after(f"{repository}/two") == [f"{repository}/base"]
        assert after(f"{repository}/top") == [f"{repository}/app"]
    # none has started or finished yet
    assert {(job.outcome, job.running, job.cause) for job in jobs} == {
        (None, False, FORCED)
    }
    assert by_name["ghcr.io/o/app"].after[0] is by_name["ghcr.io/o/base"]


def test_build_jobs_wait_for_the_base_they_name():
    """A full-name base of the file is waited for in whichever repository
    pushes it; an image the build pulls (COPY --from) is waited for too."""
    base = make_image("base")
    app = make_image("app", "ghcr.io/o/base")
    tool = db.Image(
        "tool",
        "tool:latest",
        "tool",
        "NONE:latest",
        (),
        AMD,
        uses=(("linux/amd64", "$DOCKER_REPOSITORY/app:latest"),),
    )
    plan = plan_of([base, app, tool], REPOS, lambda image: True)
    jobs = db.BuildRunner.build_jobs(plan)
    after = {
        job.target.shown_name: [base.target.shown_name for base in job.after]
        for job in jobs
    }
    assert after == {
        "docker.io/user/base": [],
        "ghcr.io/o/base": [],
        "docker.io/user/app": ["ghcr.io/o/base"],
        "ghcr.io/o/app": ["ghcr.io/o/base"],
        "docker.io/user/tool": ["docker.io/user/app"],
        "ghcr.io/o/tool": ["ghcr.io/o/app"],
    }


def test_build_jobs_each_target_names_its_own_base():
    plan = forced_plan(
        [("base", "NONE"), ("app", "$DOCKER_REPOSITORY/base")], REPOS, ["base:latest"]
    )
    jobs = db.BuildRunner.build_jobs(plan)
    assert [(j.target.shown_name, j.cause.text) for j in jobs] == [
        ("docker.io/user/base", REASON_FORCED),
        ("ghcr.io/o/base", REASON_FORCED),
        (
            "docker.io/user/app",
            "Base image will be rebuilt: docker.io/user/base:latest",
        ),
        ("ghcr.io/o/app", "Base image will be rebuilt: ghcr.io/o/base:latest"),
    ]


# ----------------------------------------------------------------------------
# BuildRunner in parallel: prefixed output, a failure skips only what is
# built on it, a summary closes the run
# ----------------------------------------------------------------------------


def test_rebuild_in_parallel_dependent_after_its_base(docker, capsys):
    """b, built on a, starts only once a is built; c runs beside them."""
    plan = forced_plan(
        [("a:0", "NONE"), ("b:0", "$DOCKER_REPOSITORY/a:0"), ("c:0", "NONE")],
        forced=["a:0", "c:0"],
    )
    run_parallel(
        plan,
        2,
        {**docker.environ, "NEED_b": "a.done"},
        capsys,
        0,
        block("ghcr.io/o/a:0")
        + block("ghcr.io/o/b:0", "Base image will be rebuilt: ghcr.io/o/a:0")
        + block("ghcr.io/o/c:0"),
        summary("ghcr.io/o/a:0, ghcr.io/o/b:0, ghcr.io/o/c:0"),
    )
    started = docker.started()
    assert sorted(started) == ["a", "b", "c"]
    assert started.index("a") < started.index("b")


def test_rebuild_in_parallel_failure_skips_dependents(docker, capsys):
    """a fails: b and c (built on it) are skipped, d and e still run; the
    exit status is a's, the first failure (e starts only when a is done:
    d waits for e to start)."""
    plan = forced_plan(
        [
            ("c:0", "$DOCKER_REPOSITORY/b:0"),
            ("a:7", "NONE"),
            ("b:0", "$DOCKER_REPOSITORY/a:7"),
            ("d:0", "NONE"),
            ("e:3", "NONE"),
        ]
    )
    report, _ = run_parallel(
        plan,
        2,
        {**docker.environ, "WAIT_d": "e.started"},
        capsys,
        7,
        block("ghcr.io/o/a:7") + block("ghcr.io/o/d:0") + block("ghcr.io/o/e:3"),
        summary(
            "ghcr.io/o/d:0",
            "ghcr.io/o/a:7 (exit 7), ghcr.io/o/e:3 (exit 3)",
            "ghcr.io/o/b:0, ghcr.io/o/c:0",
        ),
    )
    # d waiting for e, with two workers, shows that e ran while d did;
    # the order the builds write their start in is not fixed
    assert sorted(docker.started()) == ["a", "d", "e"]
    assert report.outcomes == {
        "ghcr.io/o/a:7": db.Outcome(db.Result.FAILED, 7),
        "ghcr.io/o/b:0": db.Outcome(db.Result.SKIPPED),
        "ghcr.io/o/c:0": db.Outcome(db.Result.SKIPPED),
        "ghcr.io/o/d:0": db.Outcome(db.Result.BUILT, 0),
        "ghcr.io/o/e:3": db.Outcome(db.Result.FAILED, 3),
    }


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
    _, out = run_parallel(
        plan,
        3,
        docker.environ,
        capsys,
        7,
        block("ghcr.io/o/a:7") + block("ghcr.io/o/d:0") + block("ghcr.io/o/e:0"),
        summary(
            "ghcr.io/o/d:0, ghcr.io/o/e:0",
            "ghcr.io/o/a:7 (exit 7)",
            "ghcr.io/o/b:0, ghcr.io/o/c:0",
        ),
    )
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
    run_parallel(
        plan,
        2,
        environ,
        capsys,
        0,
        block("ghcr.io/o/a:0") + block("ghcr.io/o/b:0") + block("ghcr.io/o/c:0"),
        summary("ghcr.io/o/a:0, ghcr.io/o/b:0, ghcr.io/o/c:0"),
    )
    started = docker.started()
    assert sorted(started) == ["a", "b", "c"]
    assert started.index("a") < started.index("b")


def test_rebuild_in_parallel_at_most_workers(docker, capsys):
    """With two workers, c never runs while a and b do: a gives up waiting
    for it; b, which waits longer, sees c start once a is done."""
    plan = forced_plan([("a:0", "NONE"), ("b:0", "NONE"), ("c:0", "NONE")])
    environ = {
        **docker.environ,
        "WAIT_a": "c.started",
        "STEPS_a": "4",
        "WAIT_b": "c.started",
    }
    run_parallel(
        plan,
        2,
        environ,
        capsys,
        9,
        block("ghcr.io/o/a:0", output=False)
        + "[ghcr.io/o/a:0] no c.started\n"
        + block("ghcr.io/o/b:0")
        + block("ghcr.io/o/c:0"),
        summary("ghcr.io/o/b:0, ghcr.io/o/c:0", "ghcr.io/o/a:0 (exit 9)"),
    )
    started = docker.started()
    assert (sorted(started[:2]), started[2:]) == (["a", "b"], ["c"])


def test_rebuild_in_parallel_every_repository(docker, capsys):
    """a fails in both repositories: b is skipped in both, c is built."""
    plan = forced_plan(
        [("a:4", "NONE"), ("b:0", "$DOCKER_REPOSITORY/a:4"), ("c", "NONE")], REPOS
    )
    run_parallel(
        plan,
        2,
        docker.environ,
        capsys,
        4,
        block("docker.io/user/a:4")
        + block("ghcr.io/o/a:4")
        + block("docker.io/user/c")
        + block("ghcr.io/o/c"),
        summary(
            "docker.io/user/c, ghcr.io/o/c",
            "docker.io/user/a:4 (exit 4), ghcr.io/o/a:4 (exit 4)",
            "docker.io/user/b:0, ghcr.io/o/b:0",
        ),
    )
    assert sorted(docker.started()) == ["a", "a", "c", "c"]


def test_rebuild_in_parallel_cannot_run_docker(tmp_path, capsys):
    plan = forced_plan([("a", "NONE"), ("b", "$DOCKER_REPOSITORY/a")])
    report = db.BuildRunner(2, {"PATH": str(tmp_path)}, False).run_builds(plan)
    assert (report.status, report.message) == (1, None)
    assert capsys.readouterr().out == (
        "*** ghcr.io/o/a\nReason: Rebuild triggered by command line\n\n"
        "[ghcr.io/o/a] Can't run docker: "
        "[Errno 2] No such file or directory: 'docker'\n"
        + summary("-", "ghcr.io/o/a (exit 1)", "ghcr.io/o/b")
    )


def test_rebuild_in_parallel_each_target_names_its_own_base(docker, capsys):
    plan = forced_plan(
        [("a", "NONE"), ("b", "$DOCKER_REPOSITORY/a")], REPOS, ["a:latest"]
    )
    run_parallel(
        plan,
        2,
        docker.environ,
        capsys,
        0,
        block("docker.io/user/a")
        + block("ghcr.io/o/a")
        + block(
            "docker.io/user/b", "Base image will be rebuilt: docker.io/user/a:latest"
        )
        + block("ghcr.io/o/b", "Base image will be rebuilt: ghcr.io/o/a:latest"),
        summary("docker.io/user/a, ghcr.io/o/a, docker.io/user/b, ghcr.io/o/b"),
    )
    assert docker.started() == ["a", "a", "b", "b"]


def test_failed_base_skips_dependents(world: World) -> None:
    chain(world)
    touch_root(world)
    world.write("other/new", "x\n")
    world.commit(when=T_LATER)
    env = {"DOCKER_DOUBLE_FAIL": "/root:=7"}
    result = world.run("--build-jobs", "2", env=env)
    assert (result.returncode, result.stderr) == (7, "")
    assert sorted(world.built()) == [
        world.ref("other:latest"),
        world.ref("root:latest"),
    ]
    assert result.stdout.endswith(
        "\nBuilt: " + world.ref("other")
        + "\nFailed: " + world.ref("root") + " (exit 7)"
        + "\nSkipped: " + world.ref("middle") + ", " + world.ref("tool") + "\n"
    )  # fmt: skip
    assert f"[{world.ref('root')}] double: failed {world.ref('root:latest')}\n" in (
        result.stdout
    )


def test_independent_images_build_concurrently(world: World) -> None:
    world.dockerfile("one", "scratch")
    world.dockerfile("two", "scratch")
    world.config("one\tone", "two\ttwo")
    world.commit()
    result = world.run("--build-jobs", "2", env={"DOCKER_DOUBLE_SLEEP": "1"})
    assert (result.returncode, result.stderr) == (0, "")
    one, two = world.calls()
    assert one["start"] < two["end"] and two["start"] < one["end"]
    assert result.stdout.endswith(
        f"\nBuilt: {world.ref('one')}, {world.ref('two')}\nFailed: -\nSkipped: -\n"
    )


def two_repositories(world: World) -> tuple[str, str]:
    """base (on scratch) and tools (on $DOCKER_REPOSITORY/base), for the
    repositories r1 and r2 of the world's namespace; returns them."""
    r1, r2 = world.ref("r1"), world.ref("r2")
    world.env["DOCKER_REPOSITORY"] = f"{r1} {r2}"
    world.dockerfile("base", "scratch")
    world.dockerfile("tools", "$DOCKER_REPOSITORY/base")
    world.config("base\tbase", "tools\ttools")
    world.commit()
    return r1, r2


def test_parallel_builds_wait_for_their_own_repository(world: World) -> None:
    """r2/tools waits for r2/base only: it starts while the slow r1/base
    (4 s) still runs; r1/tools starts after r1/base."""
    r1, r2 = two_repositories(world)
    env = {"DOCKER_DOUBLE_SLEEP": "r1/base=4"}
    result = world.run("--build-jobs", "3", env=env)
    assert (result.returncode, result.stderr) == (0, "")
    calls = {call["argv"][-2]: call for call in world.calls()}
    slow = calls[f"{r1}/base:latest"]
    assert calls[f"{r2}/tools:latest"]["start"] < slow["end"] - 1
    assert calls[f"{r1}/tools:latest"]["start"] >= slow["end"]
    assert result.stdout.endswith(
        f"\nBuilt: {r1}/base, {r2}/base, {r1}/tools, {r2}/tools\n"
        "Failed: -\nSkipped: -\n"
    )


def test_parallel_failure_skips_its_own_repository_only(world: World) -> None:
    r1, r2 = two_repositories(world)
    result = world.run(
        "--build-jobs", "3", "--json", env={"DOCKER_DOUBLE_FAIL": "r1/base=5"}
    )
    assert result.returncode == 5
    assert sorted(world.built()) == [
        f"{r1}/base:latest",
        f"{r2}/base:latest",
        f"{r2}/tools:latest",
    ]
    document = json.loads(result.stdout)
    check_schema(document)
    assert [(e["full_name"], e["result"]) for e in document["images"]] == [
        (f"{r1}/base:latest", "failed"),
        (f"{r2}/base:latest", "built"),
        (f"{r1}/tools:latest", "skipped"),
        (f"{r2}/tools:latest", "built"),
    ]
    assert result.stderr.endswith(
        f"\nBuilt: {r2}/base, {r2}/tools\nFailed: {r1}/base (exit 5)\n"
        f"Skipped: {r1}/tools\n"
    )


# ----------------------------------------------------------------------------
# Interrupts: running builds are stopped, 128 + the signal
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("build_jobs", ["1", "2"])
def test_interrupt_stops_the_build(world: World, signum: int, build_jobs: str) -> None:
    world.up_to_date()
    tool = start_tool(
        world, "--all", "--build-jobs", build_jobs, env={"DOCKER_DOUBLE_SLEEP": "60"}
    )
    (pid,) = wait_for_build(world)
    tool.send_signal(signum)
    _, stderr = tool.communicate(timeout=30)
    assert tool.returncode == 128 + signum
    what = "build" if build_jobs == "1" else "builds"
    name = signal.Signals(signum).name
    assert stderr == f"Interrupted by {name}: {what} of {world.ref('app')} stopped\n"
    assert not process_running(pid)


def test_interrupted_parallel_output_on_one_file(world: World, tmp_path) -> None:
    """SIGTERM with three builds running, stdout and stderr on one file:
    whole lines only, the builds' lines before the tool's closing line on
    stderr, no other line about the killed builds."""
    world.up_to_date("a", "b", "c")
    output = tmp_path / "output"
    with open(output, "w") as file:
        tool = subprocess.Popen(
            [sys.executable, str(TOOL), "--all", "--build-jobs", "3"],
            cwd=world.root,
            env={**world.env, "DOCKER_DOUBLE_SLEEP": "60"},
            stdout=file,
            stderr=file,
        )
    pids = wait_for_build(world, 3)
    tool.send_signal(signal.SIGTERM)
    assert tool.wait(timeout=30) == 143
    names = ", ".join(world.ref(name) for name in ("a", "b", "c"))
    text = output.read_text()
    assert text.endswith(f"\nInterrupted by SIGTERM: builds of {names} stopped\n")
    lines = text.splitlines()
    assert "docker was killed" not in text
    for name in ("a", "b", "c"):
        assert announced(world.ref(name), REASON_FORCED) in text
    # every line is a header, a blank, or the closing line
    assert all(
        line.startswith(("*** ", "Reason: ", "Interrupted by ")) or line == ""
        for line in lines
    )
    assert not any(process_running(pid) for pid in pids)


def test_json_killed_and_not_built(world: World) -> None:
    """One at a time: the build stopped by SIGTERM is "killed" with the
    signal; the one never started is "not-built"."""
    world.up_to_date("a", "b")
    tool = start_tool(world, "--all", "--json", env={"DOCKER_DOUBLE_SLEEP": "60"})
    wait_for_build(world)
    tool.send_signal(signal.SIGTERM)
    stdout, stderr = tool.communicate(timeout=30)
    assert tool.returncode == 143
    assert stderr.endswith(
        f"\nInterrupted by SIGTERM: build of {world.ref('a')} stopped\n"
    )
    document = json.loads(stdout)
    check_schema(document)
    assert [
        (e["name"], e["result"], e["exit_code"], e["signal"])
        for e in document["images"]
    ] == [("a", "killed", 143, "SIGTERM"), ("b", "not-built", None, None)]


def test_json_build_killed_by_a_signal(world: World) -> None:
    world.up_to_date()
    result = world.run("--all", "--json", env={"DOCKER_DOUBLE_SIGNAL": "app=SIGKILL"})
    assert result.returncode == 137
    document = json.loads(result.stdout)
    check_schema(document)
    ((app,),) = [document["images"]]
    assert (app["result"], app["exit_code"], app["signal"]) == (
        "killed",
        137,
        "SIGKILL",
    )
    assert result.stderr.endswith(f"{world.ref('app')}: docker was killed by SIGKILL\n")


def test_parallel_build_killed_by_a_signal_on_stderr(world: World) -> None:
    world.up_to_date("a", "b")
    result = world.run(
        "--all", "--build-jobs", "2", env={"DOCKER_DOUBLE_SIGNAL": "/a:=SIGKILL"}
    )
    assert result.returncode == 137
    line = f"[{world.ref('a')}] {world.ref('a')}: docker was killed by SIGKILL\n"
    assert result.stderr == line
    assert "docker was killed" not in result.stdout
    assert result.stdout.endswith(
        f"\nBuilt: {world.ref('b')}\nFailed: {world.ref('a')} (exit 137)\nSkipped: -\n"
    )


# ----------------------------------------------------------------------------
# plan_document: the plan and its results as JSON
# ----------------------------------------------------------------------------


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
    signal_name=None,
    platforms=AMD,
    inputs=None,
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
        "signal": signal_name,
        "inputs": inputs or {"recorded": None, "current": None},
    }


DEP_A = "Base image will be rebuilt: reg.example/a/base:latest"
DEP_B = "Base image will be rebuilt: reg.example/b/base:latest"


def expected_images(results):
    """The entries of sample_plan, with (result, exit_code) per full name."""
    rows = [
        ("base", "reg.example/a/base:latest", "reg.example/a", "base", "alpine:3",
         "rebuild", "Image missing in repository", TWO),
        ("base", "reg.example/b/base:latest", "reg.example/b", "base", "alpine:3",
         "rebuild", "Image missing in repository", TWO),
        ("app", "reg.example/a/app:latest", "reg.example/a", "app",
         "reg.example/a/base:latest", "rebuild", DEP_A, AMD),
        ("app", "reg.example/b/app:latest", "reg.example/b", "app",
         "reg.example/b/base:latest", "rebuild", DEP_B, AMD),
        ("ghcr.io/o/full:2", "ghcr.io/o/full:2", None, "full", "debian:12",
         "rebuild", "Rebuild triggered by command line", AMD),
        ("quiet", "reg.example/a/quiet:latest", "reg.example/a", "quiet",
         "alpine:3", "up-to-date", None, AMD),
        ("quiet", "reg.example/b/quiet:latest", "reg.example/b", "quiet",
         "alpine:3", "up-to-date", None, AMD),
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


def test_plan_document_nothing_to_do():
    (quiet,) = db.image_graph([QUIET], ["reg.example/a"], lambda image: False)
    made = db.Plan((decided(quiet, None),))
    for dry_run in (True, False):
        document = db.plan_document(made, {}, dry_run)
        # unchecked and up to date: neither input is known
        quiet_entry = entry(
            "quiet", "reg.example/a/quiet:latest", "reg.example/a", "quiet",
            "alpine:3", "up-to-date", None, None, None,
            inputs={"recorded": None, "current": None},
        )  # fmt: skip
        assert document == {"version": 1, "dry_run": dry_run, "images": [quiet_entry]}
        check_schema(document)
    empty = db.plan_document(db.Plan(()), {}, False)
    assert empty == {"version": 1, "dry_run": False, "images": []}
    check_schema(empty)


@pytest.mark.parametrize(
    ("outcomes", "results"),
    [
        (  # one at a time: what was not tried after a failure is not-built
            {
                "reg.example/a/base:latest": db.Outcome(db.Result.BUILT, 0),
                "reg.example/b/base:latest": db.Outcome(db.Result.FAILED, 2),
            },
            {
                "reg.example/a/base:latest": ("built", 0),
                "reg.example/b/base:latest": ("failed", 2),
                "reg.example/a/app:latest": ("not-built", None),
                "reg.example/b/app:latest": ("not-built", None),
                "ghcr.io/o/full:2": ("not-built", None),
            },
        ),
        (  # in parallel: killed (by SIGKILL, named), skipped without a code
            {
                "reg.example/a/base:latest": db.Outcome(db.Result.BUILT, 0),
                "reg.example/b/base:latest": db.Outcome(
                    db.Result.KILLED, 137, signum=9
                ),
                "reg.example/a/app:latest": db.Outcome(db.Result.BUILT, 0),
                "reg.example/b/app:latest": db.Outcome(db.Result.SKIPPED),
                "ghcr.io/o/full:2": db.Outcome(db.Result.BUILT, 0),
            },
            {
                "reg.example/a/base:latest": ("built", 0),
                "reg.example/b/base:latest": ("killed", 137, "SIGKILL"),
                "reg.example/a/app:latest": ("built", 0),
                "reg.example/b/app:latest": ("skipped", None),
                "ghcr.io/o/full:2": ("built", 0),
            },
        ),
    ],
    ids=["one-at-a-time", "parallel"],
)
def test_plan_document_results(outcomes, results):
    """Each target's result and exit code, in the manual's schema."""
    document = db.plan_document(sample_plan(), outcomes, False)
    assert document == {
        "version": 1,
        "dry_run": False,
        "images": expected_images(results),
    }
    check_schema(document)


def test_plan_document_inputs():
    """recorded: the image's label (null without one); current: what its
    build records, else what the check compared with (null when not
    asked)."""
    quiet, full = db.image_graph([QUIET, FULL], DOC_REPOS, lambda image: image is FULL)
    recorded = db.Inputs("sha256:c", "sha256:o", {})
    current = db.Inputs("sha256:d", "sha256:o", {"alpine:3": None})
    checked = db.Evidence(
        db.Cause(db.Reason.CONTEXT), 1.0, True, recorded=recorded, current=current
    )
    same = db.Evidence(None, 1.0, True, recorded=recorded, current=recorded)
    made = db.Plan(
        (
            db.ImagePlan(
                quiet,
                (
                    db.Decision(quiet.targets[0], db.Cause(db.Reason.CONTEXT), checked),
                    db.Decision(quiet.targets[1], None, same),
                ),
            ),
            db.ImagePlan(full, (db.Decision(full.targets[0], FORCED, inputs=current),)),
        )
    )
    document = db.plan_document(made, {}, True)
    recorded_json = {
        "version": 2,
        "context": "sha256:c",
        "options": "sha256:o",
        "images": {},
    }
    current_json = {
        "version": 2,
        "context": "sha256:d",
        "options": "sha256:o",
        "images": {"alpine:3": None},
    }
    assert [entry["inputs"] for entry in document["images"]] == [
        {"recorded": recorded_json, "current": current_json},
        {"recorded": recorded_json, "current": recorded_json},
        {"recorded": None, "current": current_json},
    ]
    check_schema(document)


def test_plan_document_is_json_and_schema_rejects_others():
    document = db.plan_document(sample_plan(), {}, True)
    assert json.loads(json.dumps(document)) == document
    broken = json.loads(json.dumps(document))
    broken["images"][0]["result"] = "done"
    with pytest.raises(jsonschema.ValidationError):
        check_schema(broken)


def test_json_after_a_run(world: World) -> None:
    world.up_to_date("app", "tool")
    result = world.run(
        "--all", "--output", "json", env={"DOCKER_DOUBLE_FAIL": "tool=5"}
    )
    assert result.returncode == 5
    document = json.loads(result.stdout)
    check_schema(document)
    assert [(e["name"], e["result"], e["exit_code"]) for e in document["images"]] == [
        ("app", "built", 0),
        ("tool", "failed", 5),
    ]
    # the builds' own output went to stderr with the headers
    assert f"double: pushed {world.ref('app:latest')}\n" in result.stderr
    assert f"double: failed {world.ref('tool:latest')}\n" in result.stderr


def test_json_parallel_run_reports_skipped(world: World) -> None:
    world.up_to_date("root")
    world.dockerfile("leaf", "$DOCKER_REPOSITORY/root")
    world.config("root\troot", "leaf\tleaf")
    world.commit()
    env = {"DOCKER_DOUBLE_FAIL": "/root:=4"}
    result = world.run("--all", "--json", "--build-jobs", "2", env=env)
    assert result.returncode == 4
    document = json.loads(result.stdout)
    check_schema(document)
    assert [(e["name"], e["result"], e["exit_code"]) for e in document["images"]] == [
        ("root", "failed", 4),
        ("leaf", "skipped", None),
    ]


# ----------------------------------------------------------------------------
# Without buildx: docker build, then docker push (the double's build path)
# ----------------------------------------------------------------------------


def headers(stdout: str) -> list[str]:
    """The rebuild headers of a run's output, without docker's lines."""
    return re.findall(r"^\*\*\* .*\nReason: .*$", stdout, re.M)


NO_BUILDX_NOTE = (
    "docker_build: docker buildx is missing: "
    "building with docker build, then docker push\n"
)


def test_without_buildx_same_images_labels_and_decisions(world: World):
    """Where docker has no buildx: the decisions of a dry run, docker build
    (BuildKit, --pull) with the same options and labels, then a push per
    tag, and one note; the images are those buildx makes (reproducible
    builds, SOURCE_DATE_EPOCH), and the next run finds them up to date."""
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, BASE_LAYERS)
    world.dockerfile("root", base)
    world.dockerfile("leaf", "$DOCKER_REPOSITORY/root")
    world.config("leaf\tleaf\t--build-arg X=1", "root\troot")
    world.commit()
    world.env["SOURCE_DATE_EPOCH"] = str(T_COMMIT)
    names = [world.ref(name) for name in ("root", "leaf")]
    predicted = world.run("-n")
    env = {"DOCKER_DOUBLE_NO_BUILDX": "1"}
    docker = world.run(env=env)
    assert (docker.returncode, docker.stderr) == (0, NO_BUILDX_NOTE)
    assert headers(docker.stdout) == headers(predicted.stdout)
    calls = world.calls()
    assert [call["argv"][0] for call in calls] == ["build", "push"] * len(names)
    assert all(call["env"]["DOCKER_BUILDKIT"] == "1" for call in calls)
    assert world.run(env=env).stdout == ""
    pushed = {name: world.registry.digest(name) for name in names}
    world.log.unlink()
    buildx = world.run("--all")
    assert buildx.returncode == 0
    builds = [call["argv"] for call in calls[0::2]]
    for build, argv in zip(
        (call["argv"] for call in world.calls()), builds, strict=True
    ):
        assert argv[:2] == ["build", "--pull"]
        assert build[:2] == ["buildx", "build"]
        # the same options and labels, in the same order
        assert argv[2:-3] == build[2:-4]
    assert {name: world.registry.digest(name) for name in names} == pushed


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "app\tapp\t--platform=linux/amd64,linux/arm64",
            "app: builds for linux/amd64,linux/arm64, and docker build makes one"
            " platform at a time: multi-platform images need docker buildx\n",
        ),
        (
            "app\tapp\t--provenance=mode=max",
            "app: --provenance needs docker buildx, which docker build is not\n",
        ),
    ],
)
def test_without_buildx_refusals_before_any_build(world: World, line, message):
    """What docker build cannot do as buildx would: one line, nothing built
    (a dry run with --build-with docker says the same, asking docker
    nothing)."""
    world.dockerfile("app", "scratch")
    world.write("base/Dockerfile", "FROM scratch\n")
    world.config("base\tbase", line)
    world.commit()
    result = world.run(env={"DOCKER_DOUBLE_NO_BUILDX": "1"})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == NO_BUILDX_NOTE + message
    assert world.calls() == []
    Path(str(world.log) + ".probes").unlink()
    dry = world.run("-n", "--build-with", "docker")
    assert (dry.returncode, dry.stdout, dry.stderr) == (1, "", message)
    assert not Path(str(world.log) + ".probes").exists()


def test_builder_named_by_the_environment(world: World):
    """DOCKER_BUILD_WITH picks the builder (the option wins); a name it does
    not know is one line, even when nothing is to be built."""
    world.up_to_date()
    result = world.run("--all", env={"DOCKER_BUILD_WITH": "docker"})
    assert result.returncode == 0
    assert [call["argv"][0] for call in world.calls()] == ["build", "push"]
    world.log.unlink()
    result = world.run(
        "--all", "--build-with", "buildx", env={"DOCKER_BUILD_WITH": "docker"}
    )
    assert [call["argv"][:2] for call in world.calls()] == [["buildx", "build"]]
    bad = world.run(env={"DOCKER_BUILD_WITH": "kaniko"})
    assert (bad.returncode, bad.stdout) == (1, "")
    assert (
        bad.stderr == "DOCKER_BUILD_WITH: 'kaniko' is none of buildx, docker, podman\n"
    )


def test_without_buildx_push_refused(world: World):
    """docker build succeeds, docker push fails: the image is reported not
    pushed, with the push's exit status."""
    world.up_to_date()
    env = {"DOCKER_DOUBLE_NO_BUILDX": "1", "DOCKER_DOUBLE_PUSH_FAIL": "app=3"}
    result = world.run("--all", env=env)
    assert result.returncode == 3
    assert result.stderr == (
        NO_BUILDX_NOTE + f"{world.ref('app')}: built, not pushed: "
        "docker push failed with exit status 3\n"
    )


def test_without_buildx_no_daemon(world: World):
    world.up_to_date()
    env = {"DOCKER_DOUBLE_NO_BUILDX": "1", "DOCKER_DOUBLE_NO_DAEMON": "1"}
    result = world.run("--all", env={**env, "DOCKER_HOST": "tcp://build:2375"})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == NO_BUILDX_NOTE + (
        "docker build needs a Docker daemon: Cannot connect to the Docker daemon at"
        " tcp://build:2375. Is the docker daemon running? (DOCKER_HOST=tcp://build:2375)\n"
    )
    assert world.calls() == []


def test_without_buildx_a_newer_docker_cli(world: World):
    """docker 23 and later build with BuildKit only through buildx: without
    it, one line says so before anything is built."""
    world.up_to_date()
    env = {"DOCKER_DOUBLE_NO_BUILDX": "1", "DOCKER_DOUBLE_CLIENT": "28.2.2"}
    result = world.run("--all", env=env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == NO_BUILDX_NOTE + (
        "docker 28.2.2 builds with BuildKit only through the buildx plugin,"
        " which is missing: install it, or use --build-with podman\n"
    )
    assert world.calls() == []
