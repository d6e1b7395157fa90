"""Shards in object storage: listing, opening and sizing shard URLs (s3://, gs://, http(s)://, …).

A shard location is a local directory or a URL that fsspec opens (`s3://bucket/ijepa/shards/train`;
s3fs reads credentials and `AWS_ENDPOINT_URL` from the environment, as boto3 does). Readers stream each
tar straight from the store: nothing is copied to local disk. Local paths keep their plain `open()`.

`IJEPA_SHARD_URL` (environment) points the training and evaluation stages at a copy of the shard
folder in object storage (the folder holding `train/`, `val/`, `test/`), instead of `data/shards`. It
is a location, not a parameter: the bytes are those of the DVC-tracked shards (publish them with
`publish_shards` / `ijepa shards publish` after `dvc repro shard`), so where a machine reads them
from changes no result and invalidates no stage. webdataset's `pipe:` URLs are not used: they run a
shell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

ENV = "IJEPA_SHARD_URL"


def is_url(location: Path | str) -> bool:
    """True for `scheme://...` locations (except file://, which is a local path)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _fs(url: str) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(url)


def join(location: Path | str, name: str) -> Path | str:
    """`location / name` for a directory or a URL."""
    return f"{str(location).rstrip('/')}/{name}" if is_url(location) else Path(location) / name


def shard_root(local: Path | str) -> Path | str:
    """The shard folder the stages read: `IJEPA_SHARD_URL` when set, else `local`."""
    url = os.environ.get(ENV, "").strip()
    if not url:
        return local
    if not is_url(url):
        raise ValueError(f"{ENV}={url!r} is not a URL (e.g. s3://bucket/ijepa/shards)")
    return url


def list_tars(url: str) -> list[str]:
    """Sorted `*.tar` URLs directly under `url`; a clear error when there are none."""
    fs, path = _fs(url)
    try:
        found = fs.glob(f"{path.rstrip('/')}/*.tar")
    except OSError as exc:
        raise FileNotFoundError(f"shard location {url} cannot be listed: {exc}") from exc
    if not found:
        raise FileNotFoundError(f"shard location {url} holds no .tar shards")
    return sorted(fs.unstrip_protocol(p) for p in found)


def open_url(url: str) -> IO[bytes]:
    """A read stream of one shard URL (the caller closes it)."""
    fs, path = _fs(url)
    return fs.open(path, "rb")


def size(location: str) -> int:
    """Size in bytes of a local file or a URL."""
    if not is_url(location):
        return os.stat(location).st_size
    fs, path = _fs(location)
    return int(fs.info(path)["size"])


def publish_shards(local: Path, url: str) -> list[str]:
    """Upload `local/{split}/*.tar` to `url/{split}/` (the layout `IJEPA_SHARD_URL` readers expect);
    returns the uploaded URLs. Existing objects of the same names are overwritten."""
    fs, base = _fs(url)
    done = []
    for tar in sorted(local.glob("*/*.tar")):
        target = f"{base.rstrip('/')}/{tar.parent.name}/{tar.name}"
        fs.put_file(str(tar), target)
        done.append(fs.unstrip_protocol(target))
    if not done:
        raise FileNotFoundError(f"{local} holds no */*.tar shards: run `dvc repro shard` (or `dvc pull`) first")
    return done
