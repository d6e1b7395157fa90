"""Read access to the project's records as of one revision: the workspace, or a git commit.

Shared by the `register` stage, the gto registry wrapper and the lineage audit. A `View` reads
git-tracked files (dvc.lock, params.yaml, reports, registry/entry.json) and hashes DVC-tracked data,
either from the working tree (`rev=None`) or at a commit (git-tracked text via `git show`, DVC data
through `dvc.fs.DVCFileSystem` at that revision, i.e. from the DVC cache or a remote).
Also owns the file hashes, the git calls and the dvc.lock readers.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

CHUNK = 1 << 20


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as `1e-06` (dvc.lock writes them; PyYAML's YAML 1.1
    resolver would return a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class RecordError(RuntimeError):
    """A record (git revision, dvc.lock, report) the registry or the audit needs is missing or invalid."""


@dataclass(frozen=True)
class FileHash:
    """Content identity of one file."""

    md5: str
    sha256: str
    size: int


def hash_stream(fh: IO[bytes]) -> FileHash:
    md5, sha, size = hashlib.md5(), hashlib.sha256(), 0
    while block := fh.read(CHUNK):
        md5.update(block)
        sha.update(block)
        size += len(block)
    return FileHash(md5.hexdigest(), sha.hexdigest(), size)


def hash_path(path: Path | str) -> FileHash:
    with open(path, "rb") as fh:
        return hash_stream(fh)


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run git in `root` (argument list, never a shell)."""
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RecordError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def rev_parse(root: Path, rev: str) -> str:
    """Full commit sha of `rev` (tags are peeled to their commit)."""
    return git(root, "rev-parse", "--verify", f"{rev}^{{commit}}").stdout.strip()


def head_commit(root: Path) -> str | None:
    proc = git(root, "rev-parse", "--verify", "HEAD^{commit}", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def is_dirty(root: Path, paths: Iterable[str] = ()) -> bool:
    """Whether tracked files (optionally only `paths`) differ from HEAD."""
    proc = git(root, "status", "--porcelain", "--untracked-files=no", "--", *paths, check=False)
    return proc.returncode != 0 or bool(proc.stdout.strip())


def lock_outs(lock: dict | None) -> dict[str, dict[str, Any]]:
    """{path: {"stage", "md5", "size", "nfiles", "is_dir"}} for every output recorded in dvc.lock."""
    outs: dict[str, dict[str, Any]] = {}
    for stage, body in ((lock or {}).get("stages") or {}).items():
        for out in body.get("outs") or []:
            md5 = out.get("md5")
            outs[out["path"]] = {
                "stage": stage,
                "md5": md5,
                "size": out.get("size"),
                "nfiles": out.get("nfiles"),
                "is_dir": bool(md5 and md5.endswith(".dir")),
            }
    return outs


def lock_params(lock: dict | None, params_file: str = "params.yaml") -> dict[str, dict[str, Any]]:
    """{stage: {dotted key: value}} as recorded in dvc.lock for `params_file`."""
    stages = (lock or {}).get("stages") or {}
    return {name: dict(((body.get("params") or {}).get(params_file)) or {}) for name, body in stages.items()}


def dotted(params: dict, key: str) -> Any:
    """Value at a dotted key of a nested dict (KeyError when absent)."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


class View:
    """The project at one revision (`rev=None`: the workspace)."""

    def __init__(self, root: Path | str, rev: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.rev = rev
        self.commit = rev_parse(self.root, rev) if rev is not None else head_commit(self.root)
        self._fs: Any = None
        self._cache_repo: Any = None

    @property
    def label(self) -> str:
        if self.rev is None:
            return "workspace"
        return self.rev[:12] if self.rev == self.commit else f"{self.rev} ({(self.commit or '')[:10]})"

    # --- git-tracked text -------------------------------------------------------------------------
    def read_text(self, rel: str) -> str | None:
        if self.rev is None:
            path = self.root / rel
            return path.read_text() if path.is_file() else None
        proc = git(self.root, "show", f"{self.commit}:{rel}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def read_json(self, rel: str) -> dict | None:
        text = self.read_text(rel)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{rel} at {self.label}: not valid JSON: {exc}") from exc

    def read_yaml(self, rel: str) -> dict | None:
        text = self.read_text(rel)
        if text is None:
            return None
        try:
            return load_yaml(text) or {}
        except yaml.YAMLError as exc:
            raise RecordError(f"{rel} at {self.label}: not valid YAML: {exc}") from exc

    # --- data files (git- or DVC-tracked) -----------------------------------------------------------
    @property
    def fs(self) -> Any:
        if self._fs is None:
            from dvc.fs import DVCFileSystem

            self._fs = DVCFileSystem(url=str(self.root), rev=self.commit)
        return self._fs

    def hash_file(self, rel: str) -> FileHash | None:
        """Hashes of the file's bytes (None when it does not exist at this revision)."""
        if self.rev is None:
            path = self.root / rel
            return hash_path(path) if path.is_file() else None
        from dvc.exceptions import DvcException

        try:
            with self.fs.open(rel, "rb") as fh:
                return hash_stream(fh)
        except (FileNotFoundError, DvcException):  # absent at this revision, or its data is not in the cache
            return None

    def list_files(self, rel: str) -> list[str]:
        """Files under directory `rel` (paths relative to the root, sorted); [] when it is absent."""
        if self.rev is None:
            base = self.root / rel
            if not base.is_dir():
                return []
            found = [p for p in base.rglob("*") if p.is_file()]
            return sorted(p.relative_to(self.root).as_posix() for p in found)
        try:
            return sorted(str(p).lstrip("/") for p in self.fs.find(rel))
        except FileNotFoundError:
            return []

    def dir_listing(self, dir_md5: str) -> dict[str, str] | None:
        """{relpath: md5} of a DVC directory object from the local cache (None when not cached)."""
        if self._cache_repo is None:
            from dvc.repo import Repo

            self._cache_repo = Repo(str(self.root))
        path = Path(self._cache_repo.cache.local.oid_to_path(dir_md5))
        if not path.is_file():
            return None
        return {item["relpath"]: item["md5"] for item in json.loads(path.read_text())}

    def close(self) -> None:
        if self._cache_repo is not None:
            self._cache_repo.close()
            self._cache_repo = None
