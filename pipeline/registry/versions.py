"""Versions and stages of the registered encoder: a thin layer over gto (plain git tags).

- `register_version`: tag a commit that holds `registry/entry.json` as `<artifact>@vX.Y.Z` (the first
  version is v0.1.0, later ones bump), after checking that the entry belongs to that commit's encoder.
- `promote`: assign a stage (`dev`, `staging`, `prod`) -> tag `<artifact>#<stage>#<n>`; `prod` is refused
  unless the version's entry says the quality gate passed.
- `versions` / `version_detail`: every version with its commit, active stages and headline metrics, read
  from the entry at that tag (`git show`).
- `fetch_encoder`: the weights (and architecture json) of a version or stage, materialised from the DVC
  cache/remote at the tag into `.ijepa/registry-cache/<version>/`, verified against the entry's sha256.
- `load_registered`: `fetch_encoder` + `pipeline.ijepa.export.load_encoder`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pipeline.registry.records import RecordError, View, hash_stream, head_commit, is_dirty, lock_outs, rev_parse

STAGES = ("dev", "staging", "prod")
ENTRY = "registry/entry.json"
ENCODER = "models/encoder.safetensors"
ENCODER_META = "models/encoder.json"
CACHE_DIR = Path(".ijepa/registry-cache")
VERSION_RE = re.compile(r"^v?\d+\.\d+\.\d+$")
HEADLINE = ("linear.test_top1", "baseline.random.linear.test_top1", "baseline.raw.linear.test_top1")


class RegistryError(RuntimeError):
    """A registry operation was refused or failed (message says why)."""


def _gto() -> Any:
    import gto.api

    return gto.api


def _gto_errors() -> tuple[type[Exception], ...]:
    from gto.exceptions import GTOException

    return (GTOException,)


def normalise_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise RegistryError(f"{version!r} is not a semantic version like v1.2.3")
    return version if version.startswith("v") else f"v{version}"


def read_entry(root: Path | str, rev: str) -> dict | None:
    """registry/entry.json as committed at `rev` (None when that commit has none)."""
    return View(root, rev).read_json(ENTRY)


def versions(root: Path | str, artifact: str) -> list[dict[str, Any]]:
    """Every registered version, oldest first: version, commit, tag, created_at, active stages, entry summary."""
    root = Path(root)
    from gto.exceptions import ArtifactNotFound

    try:
        shown = _gto().show(str(root), artifact)
    except ArtifactNotFound:
        return []
    except _gto_errors() as exc:
        raise RegistryError(f"gto show {artifact}: {exc}") from exc
    out = []
    for v in shown:
        if not v.get("registrations"):
            continue
        entry = read_entry(root, v["commit_hexsha"]) or {}
        linear = (entry.get("metrics") or {}).get("eval_linear") or {}
        stages = sorted(s["stage"] for s in v.get("stages", []) if s.get("is_active"))
        out.append(
            {
                "version": v["version"],
                "commit": v["commit_hexsha"],
                "tag": v["registrations"][-1].get("tag"),
                "created_at": str(v.get("created_at")),
                "stages": stages,
                "gate_passed": (entry.get("gate") or {}).get("passed"),
                "encoder_sha256": (entry.get("encoder") or {}).get("sha256"),
                "metrics": {k: linear.get(k) for k in HEADLINE},
            }
        )
    return sorted(out, key=lambda r: tuple(int(x) for x in r["version"].lstrip("v").split(".")))


def resolve(root: Path | str, artifact: str, version: str | None = None, stage: str | None = None) -> tuple[str, str]:
    """(version, commit) for a version, the version active in a stage, or (neither) the latest version."""
    root = Path(root)
    if version and stage:
        raise RegistryError("give a version or a stage, not both")
    known = versions(root, artifact)
    if not known:
        raise RegistryError(f"no registered versions of {artifact} (ijepa registry register)")
    if stage:
        hits = [v for v in known if stage in v["stages"]]
        if not hits:
            raise RegistryError(f"no version of {artifact} is in stage {stage!r}")
        # the latest assignment wins when several versions hold the stage
        try:
            vstages = _gto().find_versions_in_stage(str(root), artifact, stage) or []
        except _gto_errors() as exc:
            raise RegistryError(f"gto: {exc}") from exc
        chosen = vstages[0].version if isinstance(vstages, list) and vstages else hits[-1]["version"]
        return chosen, next(v["commit"] for v in known if v["version"] == chosen)
    if version:
        version = normalise_version(version)
        for v in known:
            if v["version"] == version:
                return version, v["commit"]
        raise RegistryError(f"{artifact} has no version {version} (known: {', '.join(v['version'] for v in known)})")
    return known[-1]["version"], known[-1]["commit"]


def register_version(
    root: Path | str,
    artifact: str,
    ref: str = "HEAD",
    version: str | None = None,
    bump: str = "minor",
    message: str | None = None,
) -> dict[str, Any]:
    """Register the commit `ref` (which must hold registry/entry.json) as a new version; returns its record."""
    root = Path(root)
    if bump not in ("major", "minor", "patch"):
        raise RegistryError(f"bump must be major, minor or patch, got {bump!r}")
    try:
        commit = rev_parse(root, ref)
    except RecordError as exc:
        raise RegistryError(str(exc)) from exc
    if commit == head_commit(root) and is_dirty(root, ["dvc.lock", "registry", "params.yaml", "dvc.yaml"]):
        raise RegistryError(
            "dvc.lock, params.yaml, dvc.yaml or registry/ has uncommitted changes: commit the run "
            "first, so the tag points at the commit that holds it"
        )
    view = View(root, commit)
    entry = view.read_json(ENTRY)
    if entry is None:
        raise RegistryError(f"{ENTRY} is not committed at {ref} ({commit[:10]}): run `dvc repro` and commit")
    if entry.get("artifact") != artifact:
        raise RegistryError(f"{ENTRY} at {ref} is for artifact {entry.get('artifact')!r}, not {artifact!r}")
    locked = lock_outs(view.read_yaml("dvc.lock")).get(ENCODER, {}).get("md5")
    if locked and locked != entry["encoder"]["md5"]:
        raise RegistryError(
            f"{ENTRY} at {ref} describes encoder md5 {entry['encoder']['md5']} but dvc.lock "
            f"records {locked}: the entry is stale, rerun `dvc repro register`"
        )
    first = not versions(root, artifact)
    if version is None and first:
        version = "v0.1.0"  # gto cannot bump a first version
    kwargs: dict[str, Any] = {"version": normalise_version(version)} if version else {f"bump_{bump}": True}
    gate = "passed" if (entry.get("gate") or {}).get("passed") else "FAILED"
    msg = message or f"register {artifact} (gate {gate}, encoder sha256 {entry['encoder']['sha256'][:12]})"
    try:
        reg = _gto().register(str(root), artifact, commit, message=msg, **kwargs)
    except _gto_errors() as exc:
        raise RegistryError(f"gto register: {exc}") from exc
    return {"version": reg.version, "commit": commit, "tag": reg.tag, "gate_passed": gate == "passed"}


def promote(
    root: Path | str, artifact: str, stage: str, version: str | None = None, message: str | None = None
) -> dict[str, Any]:
    """Assign `stage` to `version` (default: the latest); prod only for versions whose gate passed."""
    root = Path(root)
    if stage not in STAGES:
        raise RegistryError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    version, commit = resolve(root, artifact, version=version)
    entry = read_entry(root, commit) or {}
    gate = entry.get("gate") or {}
    if stage == "prod" and gate.get("passed") is not True:
        unmet = [c["name"] for c in gate.get("checks", []) if not c.get("passed")]
        raise RegistryError(
            f"refusing to promote {artifact} {version} to prod: its entry says the quality gate "
            f"did not pass (unmet: {', '.join(unmet) or 'no gate record'})"
        )
    try:
        res = _gto().assign(
            str(root), artifact, stage, version=version, message=message or f"promote {artifact} {version} to {stage}"
        )
    except _gto_errors() as exc:
        raise RegistryError(f"gto assign: {exc}") from exc
    return {"version": version, "commit": commit, "stage": stage, "tag": res.tag}


def version_detail(
    root: Path | str, artifact: str, version: str | None = None, stage: str | None = None
) -> dict[str, Any]:
    """One version's record plus its full entry."""
    version, commit = resolve(root, artifact, version=version, stage=stage)
    record = next(v for v in versions(root, artifact) if v["version"] == version)
    return {**record, "entry": read_entry(root, commit)}


def _materialise(view: View, rel: str, dest: Path, sha256: str | None) -> None:
    from dvc.exceptions import DvcException

    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with view.fs.open(rel, "rb") as src, open(tmp, "wb") as out:
            digest = hash_stream(_Tee(src, out)).sha256
    except (OSError, DvcException) as exc:
        tmp.unlink(missing_ok=True)
        raise RegistryError(
            f"{rel} at {view.label}: not available from the DVC cache or remote ({exc}); "
            "run `dvc pull` or `dvc fetch` for that revision"
        ) from exc
    if sha256 and digest != sha256:
        tmp.unlink(missing_ok=True)
        raise RegistryError(f"{rel} at {view.label}: sha256 {digest} != registry entry {sha256}")
    os.replace(tmp, dest)


class _Tee:
    """A readable stream that copies what is read into `out`."""

    def __init__(self, src: Any, out: Any) -> None:
        self.src, self.out = src, out

    def read(self, n: int = -1) -> bytes:
        block = self.src.read(n)
        self.out.write(block)
        return block


def fetch_encoder(
    root: Path | str,
    artifact: str,
    version: str | None = None,
    stage: str | None = None,
    cache_dir: Path | str | None = None,
) -> Path:
    """Path of the verified `encoder.safetensors` (with `encoder.json` beside it) of a version or stage."""
    root = Path(root).resolve()
    version, commit = resolve(root, artifact, version=version, stage=stage)
    view = View(root, commit)
    entry = view.read_json(ENTRY)
    if entry is None:
        raise RegistryError(f"{artifact} {version}: no {ENTRY} at {commit[:10]}")
    enc = entry["encoder"]
    dest_dir = (Path(cache_dir) if cache_dir else root / CACHE_DIR) / version
    dest_dir.mkdir(parents=True, exist_ok=True)
    weights, meta = dest_dir / "encoder.safetensors", dest_dir / "encoder.json"
    for rel, dest, sha in ((enc["path"], weights, enc["sha256"]), (enc["meta_path"], meta, enc.get("meta_sha256"))):
        if dest.is_file():
            with open(dest, "rb") as fh:
                if hash_stream(fh).sha256 == sha:
                    continue
        _materialise(view, rel, dest, sha)
    return weights


def load_registered(spec: str, repo: Path | str = ".", artifact: str | None = None) -> Any:
    """A timm VisionTransformer for a version ("v0.1.0", "<artifact>@v0.1.0") or a stage ("prod",
    "<artifact>#prod", "<artifact>:prod") of the registry in `repo`."""
    from pipeline.ijepa.export import load_encoder

    name, version, stage = artifact, None, None
    m = re.match(r"^(?:(?P<a>[a-z0-9-]+)[@:#])?(?P<ref>.+)$", spec)
    ref = m.group("ref") if m else spec
    if m and m.group("a"):
        name = m.group("a")
    if VERSION_RE.match(ref):
        version = ref
    elif ref in STAGES:
        stage = ref
    else:
        raise FileNotFoundError(
            f"{spec!r}: no such encoder file, and not a registry version (v1.2.3) or stage ({', '.join(STAGES)})"
        )
    if name is None:
        from pipeline.config import RegisterParams, load_section

        params_path = Path(repo) / "params.yaml"
        name = (
            load_section("register", params_path, RegisterParams).artifact
            if params_path.is_file()
            else RegisterParams().artifact
        )
    return load_encoder(fetch_encoder(repo, name, version=version, stage=stage))
