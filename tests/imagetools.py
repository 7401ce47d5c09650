"""Synthetic images in a real registry, shared by the fixtures and the
docker test double: layers are small blobs, the config carries the facts
docker_build reads (created, rootfs.diff_ids, platform)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from collections.abc import Sequence

import dxf
import dxf.exceptions
import requests

SCHEMA2 = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def new_layer(label: str) -> str:
    """A fresh diff_id, unique for every call."""
    return sha256(label.encode() + os.urandom(16))


def rfc3339(when: datetime.datetime | float) -> str:
    """Docker's form: UTC with nanoseconds."""
    if not isinstance(when, datetime.datetime):
        when = datetime.datetime.fromtimestamp(when, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def split_reference(reference: str) -> tuple[str, str, str]:
    """host, repository, tag of a full test reference (host:port/repo:tag)."""
    host, _, rest = reference.partition("/")
    repo, _, tag = rest.rpartition(":") if ":" in rest else (rest, "", "latest")
    return host, repo, tag or "latest"


def client(host: str, repo: str, login: tuple[str, str] | None = None) -> dxf.DXF:
    def auth(registry: dxf.DXF, response) -> None:
        user, password = login if login else (None, None)
        registry.authenticate(user, password, response=response)

    # Test registries without TLS are named in this variable, which the
    # docker double inherits.
    plain = host in os.environ.get("TEST_PLAIN_HTTP_HOSTS", "").split()
    return dxf.DXF(host, repo, auth, insecure=plain, timeout=30)


def push_blob(registry: dxf.DXF, data: bytes) -> dict:
    digest = sha256(data)
    registry.push_blob(data=iter([data]), digest=digest)
    return {"digest": digest, "size": len(data)}


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def put_manifest(
    registry: dxf.DXF, version: str, document: dict, media_type: str
) -> str:
    """PUT a manifest as given (dxf insists on a mediaType field)."""
    body = json.dumps(document).encode()
    registry._request(
        "put", "manifests/" + version, data=body, headers={"Content-Type": media_type}
    )
    return sha256(body), len(body)


def push_platform_image(
    registry: dxf.DXF,
    created: str,
    layers: Sequence[str],
    platform: str,
    oci: bool,
    labels: dict[str, str] | None = None,
) -> dict:
    """Push layers, config and manifest; return the index entry for it."""
    os_name, arch, *variant = platform.split("/")
    described = {"os": os_name, "architecture": arch}
    if variant:
        described["variant"] = variant[0]
    config = {
        **described,
        "created": created,
        "rootfs": {"type": "layers", "diff_ids": list(layers)},
    }
    if labels:
        config["config"] = {"Labels": labels}
    media_type = OCI_MANIFEST if oci else SCHEMA2
    manifest = {
        "schemaVersion": 2,
        "config": {
            "mediaType": OCI_CONFIG if oci else CONFIG,
            **push_blob(registry, json.dumps(config).encode()),
        },
        "layers": [
            {
                "mediaType": OCI_LAYER if oci else LAYER,
                **push_blob(registry, layer.encode()),
            }
            for layer in layers
        ],
    }
    if not oci:  # OCI makes mediaType optional: leave it out
        manifest["mediaType"] = SCHEMA2
    digest = sha256(json.dumps(manifest).encode())
    _, size = put_manifest(registry, digest, manifest, media_type)
    return {
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "platform": described,
    }


def push_image(
    reference: str,
    created: str,
    layers: Sequence[str] | dict[str, Sequence[str]],
    platforms: Sequence[str] = ("linux/amd64",),
    login: tuple[str, str] | None = None,
    index: bool = False,
    oci: bool = False,
    odd_entries: bool = False,
    labels: dict[str, str] | None = None,
) -> None:
    """Push an image. `layers` may differ per platform (a dict). Several
    platforms, index=True or odd_entries make an index; odd_entries adds
    an attestation entry (unknown/unknown) and an entry without platform,
    as buildx and other tools write them."""
    host, repo, tag = split_reference(reference)
    per_platform = (
        layers if isinstance(layers, dict) else dict.fromkeys(platforms, layers)
    )
    with client(host, repo, login) as registry:
        entries = [
            push_platform_image(
                registry, created, platform_layers, platform, oci, labels
            )
            for platform, platform_layers in per_platform.items()
        ]
        if len(entries) == 1 and not (index or odd_entries):
            manifest_body = registry.get_manifest_and_response(entries[0]["digest"])
            put_manifest(
                registry, tag, json.loads(manifest_body[0]), entries[0]["mediaType"]
            )
            return
        if odd_entries:
            attestation = push_platform_image(
                registry, created, ["sha256:" + "a" * 64], "unknown/unknown", oci
            )
            unlabelled = push_platform_image(
                registry, created, ["sha256:" + "b" * 64], "linux/s390x", oci
            )
            del unlabelled["platform"]
            entries += [attestation, unlabelled]
        document = {"schemaVersion": 2, "manifests": entries}
        if not oci:
            document["mediaType"] = MANIFEST_LIST
        put_manifest(registry, tag, document, OCI_INDEX if oci else MANIFEST_LIST)


def image_config(
    reference: str,
    platform: str = "linux/amd64",
    login: tuple[str, str] | None = None,
) -> dict | None:
    """The config of one platform of an image, or None when missing."""
    host, repo, tag = split_reference(reference)
    with client(host, repo, login) as registry:
        try:
            digest = registry.get_digest(tag, platform=platform)
        except (dxf.exceptions.DXFUnauthorizedError, requests.HTTPError):
            return None
        return json.loads(b"".join(registry.pull_blob(digest)))


def manifest_digest(
    reference: str,
    platform: str = "linux/amd64",
    login: tuple[str, str] | None = None,
) -> str:
    """The digest of the manifest of one platform of an image: the entry's
    in an index, else the manifest's own."""
    host, repo, tag = split_reference(reference)
    with client(host, repo, login) as registry:
        text, response = registry.get_manifest_and_response(tag)
        document = json.loads(text)
        if "manifests" not in document:
            return response.headers["Docker-Content-Digest"]
        os_name, _, arch = platform.partition("/")
        for entry in document["manifests"]:
            described = entry.get("platform") or {}
            if (described.get("os"), described.get("architecture")) == (os_name, arch):
                return entry["digest"]
        raise KeyError(platform)


def push_raw_config(
    reference: str, config: bytes, login: tuple[str, str] | None = None
) -> None:
    """Push an image whose config blob is exactly `config` (valid or not)."""
    host, repo, tag = split_reference(reference)
    with client(host, repo, login) as registry:
        manifest = {
            "schemaVersion": 2,
            "mediaType": SCHEMA2,
            "config": {"mediaType": CONFIG, **push_blob(registry, config)},
            "layers": [],
        }
        registry.set_manifest(tag, json.dumps(manifest))
