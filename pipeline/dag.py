"""The DVC stage graph as plain data: which stage feeds which, in a stable topological order.

Pure (no Prefect, no DVC import at module level) so it is unit-testable on a dict. Two ways in:
`stages_from_yaml` parses a plain `dvc.yaml`; `stages_from_dvc` reads the stages DVC itself resolved
(`Repo.index.stages`: templating, `foreach`/`matrix`, nested dvc.yaml files). A stage depends on
another when one of its deps lies at, under or above one of the other's outs (outs, metrics, plots).
Ties are broken by declaration order, so the order follows dvc.yaml wherever the graph allows.
"""

from __future__ import annotations

import heapq
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class DagError(ValueError):
    """Raised for an unreadable dvc.yaml, an unknown stage or a cycle."""


@dataclass(frozen=True)
class StageSpec:
    """One pipeline stage: name (DVC addressing), command, paths it reads and writes, params keys."""

    name: str
    cmd: str = ""
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    params: tuple[str, ...] = field(default=())


def _norm(wdir: str, path: str) -> str:
    return posixpath.normpath(posixpath.join(wdir, path)) if wdir not in ("", ".") else posixpath.normpath(path)


def _names(entries: Iterable[Any]) -> list[str]:
    """Paths of a dvc.yaml list whose items are `path` or `{path: {options}}`."""
    out: list[str] = []
    for item in entries or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out.extend(str(k) for k in item)
    return out


def _param_keys(entries: Iterable[Any]) -> list[str]:
    keys: list[str] = []
    for item in entries or []:
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, dict):
            for file, sub in item.items():
                keys.extend(f"{file}:{k}" for k in (sub or [file]))
    return keys


def stages_from_yaml(path: Path | str = "dvc.yaml") -> list[StageSpec]:
    """Parse a dvc.yaml without templating; use `stages_from_dvc` for `foreach`/`matrix`/`${...}`."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DagError(f"{path}: cannot read the stage graph: {exc}") from exc
    specs = []
    for name, body in (doc.get("stages") or {}).items():
        if not isinstance(body, dict) or "cmd" not in body:
            raise DagError(f"{path}: stage {name!r} has no cmd (templated stages need stages_from_dvc)")
        wdir = str(body.get("wdir", "."))
        cmd = body["cmd"] if isinstance(body["cmd"], str) else " && ".join(body["cmd"])
        outs = [*_names(body.get("outs")), *_names(body.get("metrics")), *_names(body.get("plots"))]
        specs.append(
            StageSpec(
                name=str(name),
                cmd=cmd,
                deps=tuple(_norm(wdir, d) for d in _names(body.get("deps"))),
                outs=tuple(_norm(wdir, o) for o in outs),
                params=tuple(_param_keys(body.get("params"))),
            )
        )
    return specs


def stage_name(stage: Any, root: Path) -> str:
    """A DVC stage's address as seen from the repository root (`name`, or `sub/dvc.yaml:name`)."""
    dvcfile = Path(stage.path).relative_to(root).as_posix()
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def stages_from_dvc(repo: Any) -> list[StageSpec]:
    """StageSpecs of the pipeline stages a `dvc.repo.Repo` resolved (data-only .dvc files skipped)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.stage import PipelineStage

    root = Path(repo.root_dir)
    specs = []
    for stage in repo.index.stages:
        if not isinstance(stage, PipelineStage):
            continue
        deps, params = [], []
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency):
                params.extend(dep.params or [dep.def_path])
            else:
                deps.append(Path(dep.fs_path).relative_to(root).as_posix())
        outs = [Path(o.fs_path).relative_to(root).as_posix() for o in stage.outs]
        cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd or [])
        specs.append(StageSpec(stage_name(stage, root), cmd, tuple(deps), tuple(outs), tuple(params)))
    return specs


def _overlaps(dep: str, out: str) -> bool:
    return dep == out or dep.startswith(out + "/") or out.startswith(dep + "/")


def upstream_map(stages: Sequence[StageSpec]) -> dict[str, set[str]]:
    """stage name -> names of the stages whose outs it depends on directly."""
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise DagError(f"duplicate stage names in {names}")
    ups: dict[str, set[str]] = {s.name: set() for s in stages}
    for stage in stages:
        for other in stages:
            if other.name != stage.name and any(_overlaps(d, o) for d in stage.deps for o in other.outs):
                ups[stage.name].add(other.name)
    return ups


def _closure(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def ancestors(stages: Sequence[StageSpec], name: str) -> set[str]:
    """Every stage that `name` needs, directly or indirectly (not `name` itself)."""
    ups = upstream_map(stages)
    if name not in ups:
        raise DagError(f"unknown stage {name!r}; stages: {', '.join(ups)}")
    return _closure(name, ups)


def descendants(stages: Sequence[StageSpec], name: str) -> set[str]:
    """Every stage that needs `name`, directly or indirectly (not `name` itself)."""
    ups = upstream_map(stages)
    if name not in ups:
        raise DagError(f"unknown stage {name!r}; stages: {', '.join(ups)}")
    downs: dict[str, set[str]] = {n: set() for n in ups}
    for child, parents in ups.items():
        for parent in parents:
            downs[parent].add(child)
    return _closure(name, downs)


def stages_reading_param(stages: Sequence[StageSpec], key: str) -> set[str]:
    """Stages that list params key `key` (or a section above it, or a key below it)."""
    key = key.split(":", 1)[-1]
    hit = set()
    for stage in stages:
        for p in stage.params:
            p = p.split(":", 1)[-1]
            if p == key or key.startswith(p + ".") or p.startswith(key + "."):
                hit.add(stage.name)
    return hit


def topological_order(stages: Sequence[StageSpec], target: str | None = None) -> list[str]:
    """Stage names, every stage after the ones it needs; with `target`, only it and its ancestors."""
    ups = upstream_map(stages)
    index = {s.name: i for i, s in enumerate(stages)}
    keep = set(ups) if target is None else {target} | ancestors(stages, target)
    pending = {n: len(ups[n] & keep) for n in keep}
    ready = [(index[n], n) for n, count in pending.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for child in keep:
            if name in ups[child]:
                pending[child] -= 1
                if pending[child] == 0:
                    heapq.heappush(ready, (index[child], child))
    if len(order) != len(keep):
        raise DagError(f"cycle in the stage graph among {sorted(keep - set(order))}")
    return order
