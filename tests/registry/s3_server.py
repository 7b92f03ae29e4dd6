"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, nothing leaves the machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# boto's credential chain reads these: the operator's environment, as in production (fake values).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """The endpoint URL of a fresh moto S3 server (one per test module)."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def upload(client: Any, bucket: str, prefix: str, directory: Path) -> None:
    """Every file of ``directory`` under ``s3://bucket/prefix/``, as a team's CI would put it there."""
    for file in sorted(directory.iterdir()):
        if file.is_file():
            client.upload_file(str(file), bucket, f"{prefix}/{file.name}")


def delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
    for item in listed:
        client.delete_object(Bucket=bucket, Key=item["Key"])


def hub_cache(root: Path, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
    """A Hub cache laid out as ``huggingface_hub`` writes it (blobs, snapshots of symlinks, refs);
    returns the commit hash. With HF_HUB_OFFLINE=1, ``snapshot_download`` answers from it."""
    import hashlib

    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit
