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

    return dxf.DXF(host, repo, auth, timeout=30)


def push_blob(registry: dxf.DXF, data: bytes) -> dict:
    digest = sha256(data)
    registry.push_blob(data=iter([data]), digest=digest)
    return {"digest": digest, "size": len(data)}


def push_platform_image(
    registry: dxf.DXF,
    created: str,
    layers: Sequence[str],
    platform: str,
) -> tuple[dict, str]:
    """Push layers, config and manifest; return its descriptor and body."""
    os_name, arch, *variant = platform.split("/")
    config = {
        "architecture": arch,
        "os": os_name,
        "created": created,
        "rootfs": {"type": "layers", "diff_ids": list(layers)},
    }
    if variant:
        config["variant"] = variant[0]
    manifest = {
        "schemaVersion": 2,
        "mediaType": SCHEMA2,
        "config": {
            "mediaType": CONFIG,
            **push_blob(registry, json.dumps(config).encode()),
        },
        "layers": [
            {"mediaType": LAYER, **push_blob(registry, layer.encode())}
            for layer in layers
        ],
    }
    body = json.dumps(manifest).encode()
    digest = sha256(body)
    registry.set_manifest(digest, body.decode())
    entry_platform = {"os": os_name, "architecture": arch}
    if variant:
        entry_platform["variant"] = variant[0]
    descriptor = {
        "mediaType": SCHEMA2,
        "digest": digest,
        "size": len(body),
        "platform": entry_platform,
    }
    return descriptor, body.decode()


def push_image(
    reference: str,
    created: str,
    layers: Sequence[str],
    platforms: Sequence[str] = ("linux/amd64",),
    login: tuple[str, str] | None = None,
    index: bool = False,
) -> None:
    """Push an image; several platforms (or index=True) make an index."""
    host, repo, tag = split_reference(reference)
    with client(host, repo, login) as registry:
        pushed = [
            push_platform_image(registry, created, layers, platform)
            for platform in platforms
        ]
        if len(pushed) == 1 and not index:
            registry.set_manifest(tag, pushed[0][1])
            return
        entries = [descriptor for descriptor, _ in pushed]
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": MANIFEST_LIST, "manifests": entries}
        )
        registry.set_manifest(tag, body)


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
