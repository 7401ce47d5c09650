"""The real-engine tier: the tool builds with a real dockerd (Debian's
docker.io: BuildKit, no buildx plugin) and pushes to a real registry, and
fresh real builds judge its decisions. An image is out of date exactly when
a fresh build of the whole graph (--pull --no-cache, in dependency order)
makes an image whose content differs from what the registry holds: its
files (path, type, mode, owner, link, bytes; not times) and its config
(Env, Cmd, Entrypoint, User, WorkingDir, ports, volumes, labels other than
the tool's own)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import T_COMMIT, Registry, World, plain_http, rootfs_tar
from servers import DOCKER_CLIENT, DockerEngine, start_registry

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("engine")]

TOOL_LABELS = ("docker_build.", "org.opencontainers.image.base.")
CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "User", "WorkingDir")
CONFIG_KEYS += ("ExposedPorts", "Volumes")


def engine_world(
    tmp_path: Path, engine: DockerEngine, registry: Registry, name: str
) -> World:
    """A git project whose docker is Debian's client, talking to the
    tests' dockerd."""
    root = tmp_path / "project"
    root.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(DOCKER_CLIENT)
    namespace = f"{registry.host}/{name}"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DOCKER_", "GIT_", "CONTAINERS_"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        DOCKER_HOST=engine.host,
        DOCKER_REPOSITORY=namespace,
        LC_ALL="C",
        XDG_CACHE_HOME=str(tmp_path / "cache"),
    )
    world = World(root, bin_dir, tmp_path / "unused.log", registry, namespace, env)
    world.git("init", "-q")
    return world


def rebuilt_names(stdout: str) -> list[str]:
    """The images a run rebuilt, by the short name of its headers."""
    return [
        name.rpartition("/")[2].partition(":")[0]
        for name in re.findall(r"^\*\*\* (\S+)$", stdout, re.M)
    ]


def image_content(engine: DockerEngine, reference: str) -> dict:
    """What a user of the image gets: its config and its files."""
    (inspected,) = json.loads(engine.docker("image", "inspect", reference))
    config = {key: inspected["Config"].get(key) for key in CONFIG_KEYS}
    labels = inspected["Config"].get("Labels") or {}
    config["Labels"] = {
        key: value for key, value in labels.items() if not key.startswith(TOOL_LABELS)
    }
    container = engine.docker("create", reference, "true").strip()
    try:
        exported = engine.run("export", container)
    finally:
        engine.docker("rm", container)
    files = {}
    with tarfile.open(fileobj=io.BytesIO(exported)) as archive:
        for member in archive:
            data = archive.extractfile(member).read() if member.isfile() else b""
            files[member.name] = (
                member.type,
                member.mode,
                member.uid,
                member.gid,
                member.linkname,
                hashlib.sha256(data).hexdigest(),
            )
    return {"config": config, "files": files}


class Graph:
    """Images of one configuration file, in build order: (name, the
    options of its line)."""

    def __init__(self, world: World, engine: DockerEngine, images: list[tuple]):
        self.world = world
        self.engine = engine
        self.images = images
        self.judge_namespace = world.namespace + "-judge"

    def config(self) -> None:
        self.world.config(
            "--network=none\t\t# no bridge on the tests' dockerd",
            *(
                f"{name}\t{name}" + (f"\t{opts}" if opts else "")
                for name, opts in self.images
            ),
        )

    def out_of_date(self) -> list[str]:
        """The judge: build the whole graph afresh into a namespace of its
        own, in order, and name the images whose content differs from the
        registry's (or that the registry lacks)."""
        changed = []
        for name, options in self.images:
            fresh = f"{self.judge_namespace}/{name}"
            self.engine.docker(
                "build", "--pull", "--no-cache", "--network", "none",
                "--build-arg", f"DOCKER_REPOSITORY={self.judge_namespace}",
                *options.split(), "--tag", fresh, str(self.world.root / name),
            )  # fmt: skip
            self.engine.docker("push", fresh)
            pushed = self.world.ref(name)
            try:
                self.engine.docker("pull", pushed)
            except RuntimeError:
                changed.append(name)  # not in the registry
                continue
            if image_content(self.engine, fresh) != image_content(self.engine, pushed):
                changed.append(name)
        return changed


def push_tool_image(engine: DockerEngine, reference: str, text: bytes) -> None:
    """An image the graph copies from, with one file, /tool."""
    engine.docker("import", "-", reference, input=rootfs_tar({"tool": text}))
    engine.docker("push", reference)


def graph_world(
    tmp_path: Path, engine: DockerEngine, registry: Registry, busybox: str, name: str
) -> tuple[World, Graph]:
    """base FROM busybox; child FROM $DOCKER_REPOSITORY/base, with both a
    .dockerignore and a Dockerfile.dockerignore; multi, a multi-stage image
    that copies from base's stage and from another image, `tool`."""
    world = engine_world(tmp_path, engine, registry, name)
    tool = f"{world.namespace}-ext/tool:1"
    push_tool_image(engine, tool, b"tool 1\n")
    world.write("base/Dockerfile", f"FROM {busybox}\nENV LEVEL=base\nCOPY . /base/\n")
    world.write("base/data", "base data 1\n")
    world.write(
        "child/Dockerfile",
        "ARG DOCKER_REPOSITORY\nFROM $DOCKER_REPOSITORY/base\nARG GREETING=none\n"
        "COPY . /child/\nRUN cat /base/data > /child/seen && "
        "echo $GREETING > /child/greeting\n",
    )
    world.write("child/.dockerignore", "only-dockerignore\n")
    world.write("child/Dockerfile.dockerignore", "only-per-dockerfile\n")
    world.write("child/file", "child 1\n")
    world.write(
        "multi/Dockerfile",
        "ARG DOCKER_REPOSITORY\nFROM $DOCKER_REPOSITORY/base AS src\n"
        f"FROM {busybox}\nCOPY --from=src /base /from-base\n"
        f"COPY --from={tool} /tool /tool\nCOPY . /multi/\n",
    )
    world.write("multi/file", "multi 1\n")
    graph = Graph(world, engine, [("base", ""), ("child", ""), ("multi", "")])
    graph.config()
    world.commit()
    return world, graph


def registry_digests(world: World, names: list[str]) -> dict[str, str]:
    return {name: world.registry.digest(world.ref(name)) for name in names}


def test_first_build_then_nothing(tmp_path, engine, engine_registry, busybox):
    """A first run builds and pushes the graph in dependency order, as
    fresh builds would make it, saying once which path it takes; the next
    run builds nothing and says nothing."""
    world, graph = graph_world(tmp_path, engine, engine_registry, busybox, "first")
    assert graph.out_of_date() == ["base", "child", "multi"]
    result = world.run()
    assert result.returncode == 0, result.stderr
    assert rebuilt_names(result.stdout) == ["base", "child", "multi"]
    assert result.stdout.count("Reason: Image missing in repository\n") == 3
    assert result.stderr.startswith(
        "docker_build: docker buildx is missing: "
        "building with docker build, then docker push\n"
    )
    assert graph.out_of_date() == []
    # the label records the base's digest, as looked up
    config = world.registry.config(world.ref("child"))
    labels = config["config"]["Labels"]
    base = world.ref("base:latest")
    assert json.loads(labels["docker_build.inputs"])["images"] == {
        base: world.registry.digest(base)
    }
    # and the base annotations, read back from the pushed image
    assert labels["org.opencontainers.image.base.name"] == base
    assert labels["org.opencontainers.image.base.digest"] == world.registry.digest(base)
    pushed = registry_digests(world, ["base", "child", "multi"])
    again = world.run()
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert registry_digests(world, ["base", "child", "multi"]) == pushed


def change_base_file(world: World, engine: DockerEngine, busybox: str) -> None:
    world.write("base/data", "base data 2\n")
    world.commit()


def add_untracked_file(world: World, engine: DockerEngine, busybox: str) -> None:
    world.write("child/new", "sent, though git does not know it\n")


def change_per_dockerfile_ignored(world: World, engine, busybox) -> None:
    world.write("child/only-per-dockerfile", "BuildKit leaves this out\n")
    world.commit()


def change_dockerignored(world: World, engine, busybox) -> None:
    world.write("child/only-dockerignore", "BuildKit sends this\n")
    world.commit()


def touch_only(world: World, engine, busybox) -> None:
    os.utime(world.root / "child" / "file", (T_COMMIT + 99, T_COMMIT + 99))


def commit_elsewhere(world: World, engine, busybox) -> None:
    world.write("README", "not in any context\n")
    world.commit()


def change_base_config(world: World, engine: DockerEngine, busybox: str) -> None:
    """busybox pushed again: the same layer, a new config."""
    engine.docker(
        "import", "--change", "ENV FLAVOUR=2", "-", busybox, input=rootfs_tar({})
    )
    engine.docker("push", busybox)


def change_used_image(world: World, engine: DockerEngine, busybox: str) -> None:
    push_tool_image(engine, f"{world.namespace}-ext/tool:1", b"tool 2\n")


def change_build_option(world: World, engine, busybox) -> None:
    world.config(
        "--network=none",
        "base\tbase",
        "child\tchild\t--build-arg GREETING=hello",
        "multi\tmulti",
    )
    world.commit()


# Each change, in turn on one graph, and what fresh builds would change.
CHANGES: list[tuple[Callable, list[str]]] = [
    (change_base_file, ["base", "child", "multi"]),
    (add_untracked_file, ["child"]),
    (change_per_dockerfile_ignored, []),
    (change_dockerignored, ["child"]),
    (touch_only, []),
    (commit_elsewhere, []),
    (change_used_image, ["multi"]),
    (change_build_option, ["child"]),
    (change_base_config, ["base", "child", "multi"]),
]


def test_each_change_rebuilds_what_a_fresh_build_changes(
    tmp_path, engine, engine_registry, busybox
):
    """After each change the tool rebuilds exactly the images whose fresh
    build differs from the registry's, and then the registry holds what
    fresh builds make."""
    world, graph = graph_world(tmp_path, engine, engine_registry, busybox, "changes")
    assert world.run().returncode == 0
    for change, expected in CHANGES:
        change(world, engine, busybox)
        if change is change_build_option:
            graph.images[1] = ("child", "--build-arg GREETING=hello")
        assert graph.out_of_date() == expected, change.__name__
        result = world.run()
        assert result.returncode == 0, (change.__name__, result.stderr)
        assert rebuilt_names(result.stdout) == expected, change.__name__
    assert graph.out_of_date() == []
    # busybox's new config reached every image built on it, by inheritance
    child = world.registry.config(world.ref("child"))
    assert "FLAVOUR=2" in child["config"]["Env"]


def test_build_failure_in_the_middle(tmp_path, engine, engine_registry, busybox):
    """One build at a time: a failure ends the run with docker's status and
    one line naming the image; nothing after it is built or pushed."""
    world = engine_world(tmp_path, engine, engine_registry, "failing")
    world.write("base/Dockerfile", f"FROM {busybox}\nCOPY . /base/\n")
    world.write("broken/Dockerfile", f"FROM {busybox}\nRUN false\n")
    world.write("last/Dockerfile", f"FROM {busybox}\nCOPY . /last/\n")
    world.config("--network=none", "base\tbase", "broken\tbroken", "last\tlast")
    world.commit()
    result = world.run()
    assert result.returncode == 1
    assert rebuilt_names(result.stdout) == ["base", "broken"]
    assert result.stderr.endswith(
        f"\n{world.ref('broken')}: docker failed with exit status 1\n"
    )
    assert world.registry.config(world.ref("base")) is not None
    assert world.registry.config(world.ref("broken")) is None
    assert world.registry.config(world.ref("last")) is None


def test_daemon_not_running(tmp_path, engine, engine_registry, busybox):
    """No daemon behind DOCKER_HOST: one line naming it, before any build."""
    world = engine_world(tmp_path, engine, engine_registry, "nodaemon")
    world.write("app/Dockerfile", f"FROM {busybox}\n")
    world.config("app\tapp")
    world.commit()
    host = f"unix://{tmp_path}/none.sock"
    result = world.run(env={"DOCKER_HOST": host})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        "docker_build: docker buildx is missing: "
        "building with docker build, then docker push\n"
        f"docker build needs a Docker daemon: Cannot connect to the Docker daemon"
        f" at {host}. Is the docker daemon running? (DOCKER_HOST={host})\n"
    )


@pytest.fixture(scope="module")
def readonly_registry(tmp_path_factory, engine_registry) -> Registry:
    """The engine registry's storage, served read-only: pushes are refused."""
    server = start_registry(tmp_path_factory.mktemp("readonly"), None, readonly=True)
    plain_http(server.host)
    yield Registry(server.host, server.process, server.log)
    server.stop()


def test_push_refused(tmp_path, engine, engine_registry, readonly_registry, busybox):
    """A build that succeeds but whose push the registry refuses: reported
    not pushed, and the next run builds it again."""
    world = engine_world(tmp_path, engine, readonly_registry, "refused")
    world.write("app/Dockerfile", f"FROM {busybox}\nCOPY . /app/\n")
    world.config("--network=none", "app\tapp")
    world.commit()
    for _ in range(2):
        result = world.run()
        assert result.returncode == 1
        assert result.stdout.startswith(
            f"*** {world.ref('app')}\nReason: Image missing in repository\n"
        )
        assert result.stderr.endswith(
            f"\n{world.ref('app')}: built, not pushed: "
            "docker push failed with exit status 1\n"
        )
    assert world.registry.config(world.ref("app")) is None


@pytest.fixture
def podman_env(tmp_path, engine_registry) -> dict[str, str]:
    """podman with storage of its own (vfs) and the registry as insecure."""
    if not shutil.which("podman"):
        if os.environ.get("CI") == "true":
            pytest.fail("podman is not installed on CI")
        pytest.skip("podman is not installed (apt-get install podman)")
    storage = tmp_path / "storage.conf"
    storage.write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path}/graph"\n'
        f'runroot = "{tmp_path}/run"\n'
    )
    registries = tmp_path / "registries.conf"
    registries.write_text(
        f'[[registry]]\nlocation = "{engine_registry.host}"\ninsecure = true\n'
    )
    return {
        "CONTAINERS_STORAGE_CONF": str(storage),
        "CONTAINERS_REGISTRIES_CONF": str(registries),
    }


def test_podman_builds_the_graph(
    tmp_path, engine, engine_registry, busybox, podman_env
):
    """--build-with podman: podman build, then podman push; the same
    labels, and a second run that builds nothing."""
    world, _graph = graph_world(tmp_path, engine, engine_registry, busybox, "podman")
    world.env.update(podman_env)
    result = world.run("--build-with", "podman")
    assert result.returncode == 0, result.stderr
    assert rebuilt_names(result.stdout) == ["base", "child", "multi"]
    # podman's images carry marks of their own (the label io.buildah.version,
    # a /run directory after RUN), so dockerd's builds are not their judge
    config = world.registry.config(world.ref("child"))
    labels = config["config"]["Labels"]
    assert labels["io.buildah.version"]
    inputs = json.loads(labels["docker_build.inputs"])
    base = world.ref("base:latest")
    assert inputs["images"] == {base: world.registry.digest(base)}
    again = world.run("--build-with", "podman")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    # and the docker path agrees that they are up to date
    assert world.run().stdout == ""


def test_newer_docker_cli_without_buildx(tmp_path, engine, engine_registry, busybox):
    """A docker CLI of 23 or later builds with BuildKit only through buildx:
    without it, one line says so before anything is built."""
    newer = shutil.which("docker", path="/usr/local/bin")
    if newer is None:
        pytest.skip("no newer docker CLI in /usr/local/bin on this machine")
    answer = subprocess.run(
        [newer, "version", "--format", "{{.Client.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    version = answer.stdout.strip()
    if int(version.partition(".")[0]) < 23:
        pytest.skip(f"docker {version} in /usr/local/bin is older than 23")
    world = engine_world(tmp_path, engine, engine_registry, "newcli")
    (world.bin / "docker").unlink()
    (world.bin / "docker").symlink_to(newer)
    world.write("app/Dockerfile", f"FROM {busybox}\n")
    world.config("app\tapp")
    world.commit()
    result = world.run()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.endswith(
        f"docker {version} builds with BuildKit only through the buildx plugin,"
        " which is missing: install it, or use --build-with podman\n"
    )


def test_unlabelled_image_by_the_reference_rules(
    tmp_path, engine, engine_registry, busybox
):
    """An image made by hand before the label existed (no record): the
    reference rule decides by times, and the base's last layer."""
    world = engine_world(tmp_path, engine, engine_registry, "unlabelled")
    world.write("app/Dockerfile", f"FROM {busybox}\nCOPY . /app/\n")
    world.config("--network=none", "app\tapp")
    world.commit()
    engine.docker(
        "build", "--network", "none", "--tag", world.ref("app"), str(world.root / "app")
    )
    engine.docker("push", world.ref("app"))
    result = world.run()
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
