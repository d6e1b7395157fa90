"""Lineage audit: registry version -> git commit -> encoder -> metrics -> params -> validation -> shards ->
manifest -> source dataset, built from dvc.lock, reports/shard.json, registry/entry.json and git.

`build_lineage` assembles the chain for the workspace or for a registered version/stage (read at its
tag). `verify` recomputes the hash of every file the records describe (in the workspace, or at that
revision through DVC) and compares it with every record that names it: dvc.lock (md5 of each output,
per-file md5 inside DVC directories), reports/shard.json (sha256 of each shard and of the manifest) and
the registry entry (encoder, inputs, shards, manifest, source files). It also compares the params
recorded in dvc.lock with params.yaml and with the entry. Results are per path, so one changed file
gives exactly one failing check. `render_tree` draws the chain as a rich Tree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from rich.tree import Tree

from pipeline.registry.records import View, dotted, hash_path, is_dirty, lock_outs, lock_params
from pipeline.registry.source import source_digest, source_files

ENTRY = "registry/entry.json"
RUN = "reports/timings/register.json"  # when and from which commit the entry was built
SHARD_REPORT = "reports/shard.json"
ENCODER = "models/encoder.safetensors"
SHARDS, MANIFEST = "data/shards", "data/manifest.csv"
HEADLINE = ("linear.test_top1", "linear.val_top1", "baseline.random.linear.test_top1", "baseline.raw.linear.test_top1")


@dataclass
class Check:
    """The verdict on one path (or one record): ok, mismatch, missing or skipped, with the reasons."""

    subject: str
    status: str = "ok"
    details: list[str] = field(default_factory=list)
    hashes: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "missing")


@dataclass
class _Expect:
    algo: str  # md5 | sha256 | size
    value: Any
    by: str


# persisted only so that DVC does not delete them before `register` runs: a failed run leaves them exactly as
# dvc.lock recorded them, so they are audited like any other output
PERSISTED_BUT_AUDITED = frozenset({"registry/entry.json", "registry/model_card.md"})


def _persist_outs(dvc_yaml: dict | None) -> set[str]:
    """Outputs declared `persist: true` (they change outside the run, e.g. checkpoints): not audited."""
    found: set[str] = set()
    for stage in ((dvc_yaml or {}).get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind) or []:
                if isinstance(out, dict):
                    found |= {p for p, flags in out.items() if isinstance(flags, dict) and flags.get("persist")}
    return found - PERSISTED_BUT_AUDITED


def build_lineage(
    root: Path | str, artifact: str | None = None, version: str | None = None, stage: str | None = None
) -> dict[str, Any]:
    """The chain for the workspace (no version/stage) or for a registered version or stage."""
    from pipeline.registry.versions import RegistryError, resolve, versions

    root = Path(root).resolve()
    known: list[dict] = []
    if artifact:
        try:
            known = versions(root, artifact)
        except RegistryError:
            known = []
    tag = None
    if version or stage:
        version, commit = resolve(root, artifact or "", version=version, stage=stage)
        view = View(root, commit)
        tag = next((v["tag"] for v in known if v["version"] == version), None)
    else:
        view = View(root)
    lock = view.read_yaml("dvc.lock") or {}
    entry = view.read_json(ENTRY)
    shard = view.read_json(SHARD_REPORT) or {}
    outs, lparams = lock_outs(lock), lock_params(lock)
    enc_sha = (entry or {}).get("encoder", {}).get("sha256")
    matching = [v for v in known if enc_sha and v["encoder_sha256"] == enc_sha]
    if version is None and matching:
        version = matching[-1]["version"]
    stages = next((v["stages"] for v in known if v["version"] == version), [])
    validation = view.read_json("reports/validation.json") or {}
    run = view.read_json(RUN) or entry or {}  # entries before reports/timings/register.json held these
    linear = view.read_json("reports/eval_linear.json") or {}
    lowshot = view.read_json("reports/eval_lowshot.json") or {}
    pretrain_params = lparams.get("pretrain") or {
        k: v for k, v in ((entry or {}).get("params") or {}).items() if k in ("model", "mask", "train")
    }
    src = (entry or {}).get("source") or {"name": shard.get("source"), "root": shard.get("root"), "hashed": False}
    result = {
        "artifact": artifact,
        "version": version,
        "stages": stages,
        "tag": tag,
        "revision": "workspace" if view.rev is None else view.commit,
        "commit": view.commit,
        "dirty": is_dirty(root) if view.rev is None else False,
        "entry": {
            "present": entry is not None,
            "run_commit": (run.get("git") or {}).get("commit"),
            "created_at": run.get("created_at"),
            "gate": (entry or {}).get("gate"),
        },
        "encoder": {
            "path": ENCODER,
            "md5": outs.get(ENCODER, {}).get("md5"),
            "sha256": enc_sha,
            "size": (entry or {}).get("encoder", {}).get("size") or outs.get(ENCODER, {}).get("size"),
            "timm_kwargs": ((entry or {}).get("architecture") or {}).get("timm_kwargs"),
        },
        "metrics": {
            **{k: linear.get(k) for k in HEADLINE},
            **{
                k: v
                for k, v in lowshot.items()
                if k.startswith("lowshot.") and k.endswith(".mean") and k.count(".") == 2
            },
        },
        "pretrain_params": pretrain_params,
        "validation": {"success": validation.get("success"), "md5": outs.get("reports/validation.json", {}).get("md5")},
        "shards": {
            "path": SHARDS,
            "dvc_md5": outs.get(SHARDS, {}).get("md5"),
            "nfiles": outs.get(SHARDS, {}).get("nfiles"),
            "sha256": shard.get("shard_sha256") or {},
        },
        "manifest": {
            "path": MANIFEST,
            "md5": outs.get(MANIFEST, {}).get("md5"),
            "sha256": shard.get("manifest_sha256"),
        },
        "source": src,
    }
    result["_view"] = view
    result["_records"] = {"lock": lock, "entry": entry, "shard": shard, "dvc_yaml": view.read_yaml("dvc.yaml")}
    return result


def _expectations(view: View, records: dict) -> tuple[dict[str, list[_Expect]], list[Check]]:
    """Every recorded hash, grouped by path; plus checks already decided (uncached DVC dirs, extra files)."""
    expect: dict[str, list[_Expect]] = defaultdict(list)
    decided: list[Check] = []
    persist = _persist_outs(records["dvc_yaml"])
    for path, out in lock_outs(records["lock"]).items():
        by = f"dvc.lock ({out['stage']})"
        if path in persist or not out["md5"]:
            continue
        if not out["is_dir"]:
            expect[path].append(_Expect("md5", out["md5"], by))
            continue
        listing = view.dir_listing(out["md5"])
        if listing is None:
            decided.append(Check(path + "/", "skipped", [f"{by}: directory object {out['md5']} not in the DVC cache"]))
            continue
        for rel, md5 in listing.items():
            expect[f"{path}/{rel}"].append(_Expect("md5", md5, by))
        for extra in sorted(set(view.list_files(path)) - {f"{path}/{r}" for r in listing}):
            decided.append(Check(extra, "mismatch", [f"not recorded in {by} (unexpected file)"]))
    shard = records["shard"]
    for path, sha in (shard.get("shard_sha256") or {}).items():
        expect[path].append(_Expect("sha256", sha, SHARD_REPORT))
    if shard.get("manifest_sha256"):
        expect[MANIFEST].append(_Expect("sha256", shard["manifest_sha256"], SHARD_REPORT))
    entry = records["entry"]
    if entry:
        enc = entry["encoder"]
        for algo in ("sha256", "md5", "size"):
            expect[enc["path"]].append(_Expect(algo, enc[algo], ENTRY))
        if enc.get("meta_sha256"):
            expect[enc["meta_path"]].append(_Expect("sha256", enc["meta_sha256"], ENTRY))
        for path, sha in (entry.get("inputs") or {}).items():
            expect[path].append(_Expect("sha256", sha, f"{ENTRY} (inputs)"))
        data = entry.get("data") or {}
        for path, sha in ((data.get("shards") or {}).get("sha256") or {}).items():
            expect[path].append(_Expect("sha256", sha, f"{ENTRY} (data.shards)"))
        if (data.get("manifest") or {}).get("sha256"):
            expect[MANIFEST].append(_Expect("sha256", data["manifest"]["sha256"], f"{ENTRY} (data.manifest)"))
    return expect, decided


def _compare(subject: str, found: Any, exps: list[_Expect]) -> Check:
    if found is None:
        return Check(subject, "missing", [f"recorded by {', '.join(sorted({e.by for e in exps}))}, not found"])
    got = {"md5": found.md5, "sha256": found.sha256, "size": found.size}
    bad = [f"{e.algo} {got[e.algo]} != {e.value} recorded in {e.by}" for e in exps if got[e.algo] != e.value]
    return Check(subject, "mismatch" if bad else "ok", bad, got)


def _source_checks(src: dict | None) -> list[Check]:
    if not src or not src.get("name"):
        return []
    root = Path(src.get("root") or "")
    subject = f"source:{root}"
    if not src.get("hashed"):
        return [Check(subject, "skipped", [f"source not hashed at registration ({src.get('reason', 'no entry')})"])]
    if not root.is_dir():
        return [Check(subject, "skipped", ["source root not present on this machine"])]
    files = src.get("files")
    if files is None:  # too many files to list: compare the digest over all of them
        now = {p.relative_to(root).as_posix(): hash_path(p).sha256 for p in source_files(src["name"], root)}
        ok = source_digest(now) == src.get("digest")
        return [Check(subject, "ok" if ok else "mismatch", [] if ok else ["source digest differs from the entry"])]
    checks = []
    for rel, sha in sorted(files.items()):
        path = root / rel
        found = hash_path(path) if path.is_file() else None
        checks.append(_compare(f"source:{path}", found, [_Expect("sha256", sha, f"{ENTRY} (source)")]))
    return checks


def _leaves(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for sub, val in value.items() for k, v in _leaves(f"{key}.{sub}", val).items()}
    return {key: value}


def _param_checks(view: View, records: dict) -> list[Check]:
    """Params recorded per stage in dvc.lock vs params.yaml (at this revision) and vs the entry, leaf by leaf."""
    current = view.read_yaml("params.yaml") or {}
    entry_params = (records["entry"] or {}).get("params") or {}
    checks = []
    for stage, values in lock_params(records["lock"]).items():
        for key, ran_with in (leaf for k, v in values.items() for leaf in _leaves(k, v).items()):
            bad = []
            sources = [("params.yaml", current)]
            if key.split(".")[0] in entry_params:
                sources.append((ENTRY, entry_params))
            for name, params in sources:
                try:
                    now = dotted(params, key)
                except KeyError:
                    bad.append(f"missing from {name}; dvc.lock ({stage}) ran with {ran_with!r}")
                    continue
                if now != ran_with:
                    bad.append(f"{name} has {now!r}, dvc.lock ({stage}) ran with {ran_with!r}")
            checks.append(Check(f"params:{stage}/{key}", "mismatch" if bad else "ok", bad))
    return checks


def verify(lineage: dict[str, Any]) -> list[Check]:
    """Recompute every recorded hash (see module doc); one Check per path or record."""
    view: View = lineage["_view"]
    records = lineage["_records"]
    try:
        expect, checks = _expectations(view, records)
        for path in sorted(expect):
            checks.append(_compare(path, view.hash_file(path), expect[path]))
    finally:
        view.close()
    checks += _source_checks(lineage["source"])
    checks += _param_checks(view, records)
    return checks


def to_json(lineage: dict[str, Any], checks: list[Check] | None = None) -> dict[str, Any]:
    out = {k: v for k, v in lineage.items() if not k.startswith("_")}
    if checks is not None:
        failed = [asdict(c) for c in checks if c.failed]
        out["verify"] = {
            "ok": not failed,
            "checked": len(checks),
            "failed": failed,
            "skipped": [asdict(c) for c in checks if c.status == "skipped"],
            "checks": [asdict(c) for c in checks],
        }
    return out


def _label(text: str, checks: list[Check] | None = None, prefix: str | None = None) -> Text:
    """Plain text (no markup parsing of recorded values) plus a ✓ / ✗ verdict for the checks under `prefix`."""
    label = Text(text)
    hits = (
        []
        if checks is None or prefix is None
        else [c for c in checks if c.subject == prefix or c.subject.startswith(prefix.rstrip("/") + "/")]
    )
    bad = sum(c.failed for c in hits)
    if bad:
        label.append(f"  ✗ {bad} mismatch(es)", style="bold red")
    elif hits:
        label.append("  ✓", style="green")
    return label


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render_tree(lineage: dict[str, Any], checks: list[Check] | None = None) -> Tree:
    """registry version → git commit → encoder → metrics → pretrain params → validation → shards → manifest → source."""
    lin, c = lineage, checks
    stages = f"  stages: {', '.join(lin['stages'])}" if lin["stages"] else ""
    tag = f"  tag {lin['tag']}" if lin["tag"] else ""
    where = lin["revision"][:12]
    if where == "workspace" and lin["version"]:
        where = "workspace: its encoder is this version's"
    name = f"{lin['artifact'] or 'encoder'} {lin['version'] or '(unregistered)'}"
    tree = Tree(Text(f"{name}{stages}{tag}  [{where}]", style="bold"))
    entry = lin["entry"]
    dirty = " (uncommitted changes)" if lin["dirty"] else ""
    present = "present" if entry["present"] else "MISSING"
    run_from = f"run from {(entry['run_commit'] or '?')[:12]} at {entry['created_at']}"
    node = tree.add(
        _label(f"git commit {(lin['commit'] or 'none')[:12]}{dirty}; entry {present}, {run_from}", c, ENTRY)
    )
    enc = lin["encoder"]
    node = node.add(
        _label(f"encoder {enc['path']} sha256 {enc['sha256']} md5 {enc['md5']} ({enc['size']} bytes)", c, enc["path"])
    )
    gate = entry.get("gate") or {}
    metrics = ", ".join(f"{k} {_fmt(v)}" for k, v in lin["metrics"].items() if v is not None)
    node = node.add(
        _label(
            f"eval metrics: {metrics}; gate {'passed' if gate.get('passed') else 'not passed/absent'}",
            c,
            "reports/eval_linear.json",
        )
    )
    pnode = node.add(_label("pretrain params (dvc.lock)", c, "params:pretrain"))
    for key, value in lin["pretrain_params"].items():
        pnode.add(Text(f"{key}: {value}"))
    val = lin["validation"]
    node = pnode.add(
        _label(
            f"validation: success={val['success']} (reports/validation.json md5 {val['md5']})",
            c,
            "reports/validation.json",
        )
    )
    sh = lin["shards"]
    snode = node.add(_label(f"shards {sh['path']} dvc md5 {sh['dvc_md5']}, {sh['nfiles']} files", c, SHARDS))
    for path, sha in sorted(sh["sha256"].items()):
        snode.add(_label(f"{path} sha256 {sha}", c, path))
    man = lin["manifest"]
    node = snode.add(_label(f"manifest {man['path']} sha256 {man['sha256']} md5 {man['md5']}", c, MANIFEST))
    src = lin["source"] or {}
    detail = f"{src.get('file_count', '?')} files, {src.get('bytes', '?')} bytes, digest {src.get('digest')}"
    node.add(_label(f"source dataset {src.get('name')} at {src.get('root')}: {detail}", c, f"source:{src.get('root')}"))
    return tree
