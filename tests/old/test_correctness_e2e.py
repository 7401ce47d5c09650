"""Where docker_build agrees with docker buildx rather than with the
reference tool: the built stage's base, the platforms built, manifests
as registries really serve them. Run against the real registry."""

from __future__ import annotations

from conftest import (
    BASE_LAYER,
    REASON_BASE,
    REASON_MISSING,
    T_COMMIT,
    T_IMAGE,
    T_LATER,
    World,
    announced,
    failed,
    rebuilt,
    succeeded,
)
from imagetools import new_layer

AMD = [BASE_LAYER, "sha256:" + "2" * 64]
ARM = ["sha256:" + "3" * 64, "sha256:" + "4" * 64]


def multi_base(world: World) -> str:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, {"linux/amd64": AMD, "linux/arm64": ARM})
    return base


# ----------------------------------------------------------------------------
# Platforms
# ----------------------------------------------------------------------------


def test_arm64_only_image_is_checked_for_arm64(world: World) -> None:
    base = multi_base(world)
    world.dockerfile("snmp", base)
    world.config("snmp\tsnmp\t\t--platform=linux/arm64")
    world.commit()
    world.registry.push(
        world.ref("snmp"), T_IMAGE, {"linux/arm64": [*ARM, new_layer("s")]}, index=True
    )
    succeeded(world.run())
    world.registry.push(
        base, T_LATER, {"linux/amd64": AMD, "linux/arm64": [new_layer("n")]}
    )
    succeeded(world.run("-n"), announced(world.ref("snmp"), REASON_BASE))


def test_global_and_image_platforms_add_up(world: World) -> None:
    """buildx builds both when both flags are given."""
    base = multi_base(world)
    world.dockerfile("snmp", base)
    world.config("--platform=linux/amd64", "snmp\tsnmp\t\t--platform=linux/arm64")
    world.commit()
    world.registry.push(world.ref("snmp"), T_IMAGE, [*AMD, new_layer("s")])
    reason = f"{REASON_MISSING} for linux/arm64"
    succeeded(world.run(), rebuilt(world.ref("snmp"), reason))
    (call,) = world.calls()
    assert call["argv"][2:4] == ["--platform=linux/amd64", "--platform=linux/arm64"]
    amd = world.registry.config(world.ref("snmp"), "linux/amd64")
    arm = world.registry.config(world.ref("snmp"), "linux/arm64")
    assert (amd["rootfs"]["diff_ids"][:2], arm["rootfs"]["diff_ids"][:2]) == (AMD, ARM)
    succeeded(world.run())


def test_change_in_one_platform_rebuilds(world: World) -> None:
    base = multi_base(world)
    world.dockerfile("app", base)
    world.config("app\tapp\t\t--platform linux/amd64,linux/arm64")
    world.commit()
    world.registry.push(
        world.ref("app"),
        T_IMAGE,
        {"linux/amd64": [*AMD, new_layer("a")], "linux/arm64": [*ARM, new_layer("b")]},
    )
    succeeded(world.run())
    world.registry.push(
        base, T_LATER, {"linux/amd64": AMD, "linux/arm64": [new_layer("n")]}
    )
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_base_without_the_platform(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, AMD)
    world.dockerfile("app", base)
    world.config("app\tapp\t\t--platform=linux/arm64")
    world.commit()
    failed(world.run(), f"Missing base image: {base} for linux/arm64\n")
    assert world.calls() == []


def test_oci_without_media_types_attestations_and_bare_entries(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, AMD, oci=True, odd_entries=True)
    world.dockerfile("app", base)
    world.config("app\tapp")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [*AMD, new_layer("a")], oci=True)
    succeeded(world.run())
    world.registry.push(
        world.ref("app"), T_IMAGE, [new_layer("other")], oci=True, odd_entries=True
    )
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_plain_manifest_of_another_platform_is_missing(world: World) -> None:
    base = multi_base(world)
    world.dockerfile("app", base)
    world.config("app\tapp")
    world.commit()
    world.registry.push(
        world.ref("app"), T_IMAGE, [*ARM, new_layer("a")], platforms=["linux/arm64"]
    )
    reason = f"{REASON_MISSING} for linux/amd64"
    succeeded(world.run("-n"), announced(world.ref("app"), reason))


# ----------------------------------------------------------------------------
# The base of the built stage
# ----------------------------------------------------------------------------


def test_final_stage_base(world: World) -> None:
    """The builder stage's image is not in any registry: only the final
    stage's base counts."""
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, AMD)
    world.write(
        "app/Dockerfile",
        "FROM --platform=$BUILDPLATFORM nowhere.invalid/builder:1 AS build\n"
        "RUN make\n"
        f"FROM {base} AS runtime\n"
        "FROM runtime\n"
        "COPY --from=build /out /\n",
    )
    world.config("app\tapp")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [*AMD, new_layer("a")])
    succeeded(world.run())
    world.registry.push(base, T_LATER, [new_layer("new")])
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_target_stage_and_build_arg(world: World) -> None:
    base = world.ref("base:2")
    world.registry.push(base, T_COMMIT, AMD)
    world.write(
        "app/Dockerfile",
        f"ARG REGISTRY={world.registry.host}\nARG TAG=1\n"
        "FROM ${REGISTRY}/" + world.path("base:${TAG}") + " AS base\n"
        "FROM scratch AS other\n",
    )
    world.config("app\tapp\t\t--target base --build-arg TAG=2")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [new_layer("a")])
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


def test_undefined_variable_in_from(world: World) -> None:
    world.write("app/Dockerfile", "ARG BASE\nFROM $BASE\n")
    world.config("# images", "app\tapp")
    failed(
        world.run(),
        "docker_images line 2: app/Dockerfile line 2: "
        "FROM uses undefined variable BASE\n",
    )


def test_renamed_dockerfile(world: World) -> None:
    base = world.ref("base:1")
    world.registry.push(base, T_COMMIT, AMD)
    world.dockerfile("app", "scratch")
    world.write("app/Dockerfile.prod", f"FROM {base}\n")
    world.config("app\tapp\t\t-f app/Dockerfile.prod")
    world.commit()
    world.registry.push(world.ref("app"), T_IMAGE, [new_layer("a")])
    succeeded(world.run("-n"), announced(world.ref("app"), REASON_BASE))


# ----------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------


def test_invalid_repository_name(world: World) -> None:
    world.dockerfile("app", "scratch")
    world.config("App\tapp")
    failed(world.run(), "docker_images line 1: invalid image name 'App'\n")


def test_uppercase_first_component_is_a_registry(world: World) -> None:
    """`Myregistry/x` names a registry (Docker's rule), which this
    machine cannot reach: the error names the image."""
    world.dockerfile("app", "scratch")
    world.config("Myregistry/x\tapp")
    world.commit()
    result = world.run()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("Myregistry/x:latest: ")
    assert result.stderr.count("\n") == 1
