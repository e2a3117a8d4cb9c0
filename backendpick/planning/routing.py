"""Route the requirements that have a recipe: what each one installs, from where, in which phase.

Runs in ``prepare`` between the backend choice and ``planner.make_plan``, and turns each requirement with
a recipe into the requirement the plan installs:

* ``name`` / ``extra``: ``cupy`` -> ``cupy-cuda12x``, ``jax`` -> ``jax[cuda12]`` (rest phase, the
  stack pinned);
* ``find-links`` / ``index-url``: the page or index is read now and the wheel chosen, so the rest
  phase gets ``torch-scatter @ <that wheel's URL>``: pip takes it from there and nowhere else (a
  higher version or an sdist on the user's index cannot win), and ``--dry-run`` shows the file;
* ``index-url = "{backend_index}"``: the backend phase (triton -> pytorch-triton-rocm on ROCm);
* ``build``: the build phase (inputs/config.py put the package into no-build-isolation).

Everything that can fail does so here, before anything changes: a backend the recipe does not
cover, a missing page for this torch, the cpu backend for a GPU-only package. Recipe names the
plan does not install are fenced in the later phases' constraints (``name<0``): a dependency
that pulls one in makes pip stop, and ``install`` routes it on its retry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from backendpick.errors import NoBackendError
from backendpick.indexes.client import FileLink, IndexClient, IndexUnavailable, PageNotFound, installable
from backendpick.inputs.config import Settings
from backendpick.knowledge import recipes as rc
from backendpick.model.backend import CPU, Backend
from backendpick.model.environment import Target
from backendpick.model.names import normalize
from backendpick.redaction import redact

BACKEND_PHASE, BUILD_PHASE, REST_PHASE = "backend", "build", "rest"

WHY = {
    "index-url": "index per backend",
    "find-links": "find-links page per torch and backend",
    "name": "name per CUDA major",
    "extra": "extra per CUDA major",
    "build": "source build after torch, no build isolation",
    "default": "as published on your index",
}


@dataclass(frozen=True)
class Route:
    package: str  # as requested
    requirement: str  # what the plan installs
    phase: str
    why: str  # in words: the mechanism, or the cpu rule
    url: str = ""  # the page or index read, after mirroring
    source: str = ""
    checked: str = ""  # the date the recipe was checked against its source (a lock names it)

    def line(self) -> str:
        target = Requirement(self.requirement)
        shown = target.name + (f"[{','.join(sorted(target.extras))}]" if target.extras else "")
        if target.url:
            from urllib.parse import unquote

            try:
                shown += f" {parse_wheel_filename(unquote(target.url.rsplit('/', 1)[-1]))[1]}"
            except (InvalidWheelFilename, InvalidVersion):
                shown += f" {target.url}"
        elif str(target.specifier):
            shown += str(target.specifier)
        where = f"; from {redact(self.url)}" if self.url else ""
        return f"{self.package} -> {redact(shown)} (recipe: {self.why}{where}; {self.phase} phase)"

    def to_json(self) -> dict:
        return {"package": self.package, "requirement": redact(self.requirement), "phase": self.phase,
                "why": self.why, "url": redact(self.url) if self.url else None, "source": self.source}


@dataclass(frozen=True)
class Routed:
    requirements: tuple  # the requirements with each recipe applied (Requirement objects)
    routes: tuple = ()
    fences: tuple = ()  # "name<0" lines for recipe names the plan does not install
    family: tuple = ()  # names the backend phase gets (renamed backend-index packages)
    remove: tuple = ()  # installed variants for another backend (cupy-cuda11x), removed first
    warnings: tuple = ()


def _text(name: str, extras: Iterable[str], spec: SpecifierSet | str, marker) -> str:
    out = name + (f"[{','.join(sorted(extras))}]" if extras else "") + str(spec)
    return out + (f"; {marker}" if marker is not None else "")


def variant_pattern(template: str) -> re.Pattern:
    """A regex matching every name a ``name`` template can give (cupy-cuda{cuda_major}x)."""
    out, seen = [], set()
    for part in re.split(r"(\{[a-z_]+\})", template.lower()):
        if part.startswith("{") and part.endswith("}"):
            key = part[1:-1]
            out.append(f"(?P<{key}>[a-z0-9.]+?)" if key not in seen else "[a-z0-9.]+?")
            seen.add(key)
        elif part:
            out.append(re.escape(re.sub(r"[-_.]+", "-", part)))
    return re.compile("^" + "".join(out) + "$")


def variants(recipe: rc.Recipe, installed: Iterable[str]) -> dict[str, str]:
    """Installed distributions that are builds named by the recipe's ``name``/``fingerprint``
    templates: normalized name -> the kind whose template matched."""
    out = {}
    tables = recipe.fingerprint or recipe.name
    for kind, template in tables.items():
        if "{" not in template and kind == rc.ANY:
            continue
        pattern = variant_pattern(template)
        for n in installed:
            if pattern.match(n):
                out.setdefault(n, kind)
    return out


def passthrough(recipe: rc.Recipe, backend: Backend) -> bool:
    """Whether the recipe installs the package as written on this backend (nothing to route)."""
    if backend.kind == CPU and recipe.cpu is not None:
        return recipe.cpu == rc.SAME
    if recipe.build is not None or recipe.prebuilt is not None:
        return True  # the build phase's own fences route it
    return recipe.mechanism == "default" and rc.match_backend(recipe, backend) is not None


def route(
    requirements: Sequence[Requirement],
    *,
    settings: Settings,
    backend: Backend,
    target: Target,
    torch: str | None,
    backend_index: str,
    client: IndexClient,
    markers_ok,
    extra: Sequence[str] = (),
) -> Routed:
    """``extra``: recipe names a dependency pulled in (install's retry), routed as if requested."""
    from backendpick.build.wheel_names import platform_tag

    recipes = settings.recipes
    family = set(settings.backend_packages)
    nbi = set(settings.no_build_isolation)
    present = {normalize(r.name) for r in requirements}
    reqs = list(requirements) + [Requirement(n) for n in extra if normalize(Requirement(n).name) not in present]
    out: list[Requirement] = []
    routes: list[Route] = []
    warnings: list[str] = []
    new_family: list[str] = []
    remove: list[str] = []
    vals_base = dict(torch=torch, python_tag=target.python_tag, platform=platform_tag(target.markers),
                     backend_index=backend_index)
    for req in reqs:
        name = normalize(req.name)
        recipe = _recipe_for(req, recipes, markers_ok)
        if recipe is None or req.url:
            out.append(req)
            continue
        if recipe.unverified:
            warnings.append(f"the recipe for {req.name} is partly unverified: {recipe.unverified} "
                            f"(source: {recipe.source or recipe.origin})")
        if name in nbi:
            out.append(req)
            routes.append(Route(req.name, str(req), BUILD_PHASE, WHY["build"], source=recipe.source, checked=recipe.checked))
            continue
        if backend.kind == CPU and recipe.cpu is not None:
            out.append(_cpu(req, recipe, routes))
            continue
        matched = _matched_backend(req, recipe, backend)
        requirement, one = _route_recipe(req, recipe, matched, settings=settings, backend=backend, target=target,
                                         torch=torch, backend_index=backend_index, client=client,
                                         vals=rc.values(matched, **vals_base), remove=remove)
        out.append(requirement)
        routes.append(one)
        if one.phase == BACKEND_PHASE and normalize(requirement.name) not in family:
            new_family.append(normalize(requirement.name))

    fences = _fences(recipes, {normalize(r.name) for r in out}, family, nbi, target, backend)
    return Routed(tuple(out), tuple(routes), tuple(fences), tuple(dict.fromkeys(new_family)),
                  tuple(dict.fromkeys(remove)), tuple(warnings))


def _recipe_for(req: Requirement, recipes, markers_ok) -> rc.Recipe | None:
    """The recipe row for this requirement, None without one; a URL-only package named by version is
    an error."""
    rows = recipes.get(normalize(req.name))
    recipe = rc.choose(rows, req.specifier) if rows and markers_ok(req) else None
    if recipe is not None and recipe.url_only and not req.url:
        raise NoBackendError(
            f"{req.name} comes only from a direct URL or a local checkout"
            + (f" ({recipe.note})" if recipe.note else ""),
            hint=f"name it as a URL, e.g. '{req.name} @ git+https://...', or a path to a checkout "
                 f"(source: {recipe.source or recipe.origin})",
        )
    return recipe


def _matched_backend(req: Requirement, recipe: rc.Recipe, backend: Backend):
    """The recipe's entry for this backend; a backend the recipe does not cover is an error."""
    name = normalize(req.name)
    matched = rc.match_backend(recipe, backend)
    if matched is None:
        raise NoBackendError(
            f"{req.name} has no build for {backend}: its recipe lists {rc.listed_text(recipe)}"
            + (f" ({recipe.note})" if recipe.note else ""),
            hint="choose another backend, leave the package out, or override its recipe in "
                 f"[tool.backendpick.packages.{name}] (source: {recipe.source or recipe.origin})",
        )
    for key in ("index-url", "find-links", "name", "extra"):
        table = getattr(recipe, key.replace("-", "_"))
        if table and recipe.template(key, backend.kind) is None:
            raise NoBackendError(
                f"{req.name} has no {backend.kind} build: its recipe's {key} covers {', '.join(sorted(table))}",
                hint=f"choose another backend, or override the recipe in [tool.backendpick.packages.{name}]",
            )
    return matched


def _route_recipe(req: Requirement, recipe: rc.Recipe, matched, *, settings: Settings, backend: Backend,
                  target: Target, torch: str | None, backend_index: str, client: IndexClient, vals,
                  remove: list[str]) -> tuple[Requirement, Route]:
    """The requirement a name/extra/index/find-links recipe installs, and its route. Installed
    variants for another backend (cupy-cuda11x) join ``remove``."""
    name = normalize(req.name)
    dist = req.name
    extras = set(req.extras)
    why = WHY[recipe.mechanism]
    if recipe.name:
        dist = rc.expand(recipe.template("name", backend.kind), vals, req.name)
        if normalize(dist) != name:
            why = WHY["name"] if backend.kind != "rocm" else "name per ROCm version"
        for other in variants(recipe, target.installed):
            if other != normalize(dist):
                remove.append(target.installed[other].name)
    if recipe.extra:
        extras.add(rc.expand(recipe.template("extra", backend.kind), vals, req.name))
    spec = req.specifier & recipe.versions if recipe.versions is not None else req.specifier
    if recipe.index_url and recipe.template("index-url", backend.kind) == "{backend_index}":
        text = _text(dist, extras, spec, req.marker)
        return Requirement(text), Route(req.name, text, BACKEND_PHASE, "the backend index", redact(backend_index),
                                        recipe.source, recipe.checked)
    if recipe.index_url or recipe.find_links:
        key = "index-url" if recipe.index_url else "find-links"
        url = rc.mirror(rc.expand(recipe.template(key, backend.kind), vals, req.name), settings.mirrors)
        link = _wheel(client, key, url, dist, spec, target, req.name, backend, torch)
        version = _version(link)
        have = target.get(dist)
        if have is not None and have.version == str(version):
            text = _text(dist, extras, f"=={version}", req.marker)  # installed: pip keeps it
        else:
            text = _text(dist, extras, "", None) + f" @ {rc.mirror(link.url, settings.mirrors)}"
            if req.marker is not None:
                text += f" ; {req.marker}"
        return Requirement(text), Route(req.name, text, REST_PHASE, WHY[key], url, recipe.source, recipe.checked)
    text = _text(dist, extras, spec, req.marker)
    return Requirement(text), Route(req.name, text, REST_PHASE, why if (recipe.name or recipe.extra) else
                                    f"{WHY['default']}, built for {matched}", source=recipe.source, checked=recipe.checked)


def _fences(recipes, requested: set, family: set, nbi: set, target: Target, backend: Backend) -> list[str]:
    """``name<0`` for each recipe name the plan does not install and that would need routing."""
    return sorted(
        f"{n}<0" for n, rows in recipes.items()
        if n not in requested and n not in family and n not in nbi and n not in target.installed
        and not passthrough(rc.choose(rows, SpecifierSet()) or rows[-1], backend)
    )


def _cpu(req: Requirement, recipe: rc.Recipe, routes: list) -> Requirement:
    if recipe.cpu == rc.REFUSE:
        raise NoBackendError(
            f"{req.name} is GPU-only: the cpu backend has no build of it"
            + (f" ({recipe.note})" if recipe.note else ""),
            hint="choose a GPU backend with --backend, or leave it out of the requirements for CPU installs",
        )
    if recipe.cpu == rc.SAME:
        routes.append(Route(req.name, str(req), REST_PHASE, "cpu: as written", source=recipe.source, checked=recipe.checked))
        return req
    other = Requirement(recipe.cpu)
    text = _text(other.name, set(other.extras) | set(req.extras), other.specifier & req.specifier, req.marker)
    routes.append(Route(req.name, text, REST_PHASE, f"cpu build is {other.name}", source=recipe.source, checked=recipe.checked))
    return Requirement(text)


def _version(link: FileLink) -> Version:
    return parse_wheel_filename(link.filename)[1]


def _wheel(client: IndexClient, key: str, url: str, dist: str, spec: SpecifierSet, target: Target,
           package: str, backend: Backend, torch: str | None) -> FileLink:
    """The newest wheel of ``dist`` on the page or index that installs on the target."""
    try:
        files = client.project(url, dist) if key == "index-url" else client.page(url)
    except PageNotFound:
        what = f"no page for torch {(torch or '').split('+')[0]} and {backend}" if key == "find-links" else f"no {dist} for {backend}"
        raise NoBackendError(f"{package}: {what} at {redact(url)}",
                             hint="choose another backend or torch release that the project publishes builds for, "
                                  f"or override its recipe in [tool.backendpick.packages.{normalize(package)}]") from None
    except IndexUnavailable as exc:
        raise NoBackendError(f"{package}: cannot read {exc}",
                             hint="check the network or point [tool.backendpick.mirrors] at a reachable copy") from None
    names = {str(c.version) for c in installable(files, dist)}
    best: tuple | None = None
    for c in installable(files, dist, tags=target.tags):
        if not spec.contains(c.version, prereleases=True):
            continue
        key_ = (c.version, -c.rank)
        if best is None or key_ > best[0]:
            best = (key_, c.file)
    if best is None:
        seen = f"versions there: {', '.join(sorted(names, key=Version)[-5:])}" if names else f"no {dist} wheels there"
        raise NoBackendError(
            f"{package}: no wheel of {dist}{spec} for Python {target.python_version_text} on this platform at {redact(url)}",
            hint=f"{seen}; choose another version or backend",
        )
    return best[1]
