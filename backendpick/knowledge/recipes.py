"""Recipes: how a GPU package beyond the torch family gets the build for torch's backend.

One schema serves the shipped recipes (``data/recipes.toml``, each with its source and the date
checked) and the user's ``[tool.backendpick.packages.NAME]`` tables, which replace a shipped
recipe of the same name or add one. Pure: parsing, validation, placeholder expansion and the
choice of a recipe's backend; nothing here reads the network (``planning/routing.py`` does).

Mechanisms, one per recipe (``build`` and ``prebuilt`` go through the build phase):

* ``index-url``: an index per backend, the package comes only from there;
* ``find-links``: a page per torch release and backend, the wheel comes only from there;
* ``name`` / ``extra``: a distribution name or an extra per CUDA major / ROCm version;
* ``build``: a no-build-isolation source build after torch;
* none of these: the package as written from the user's index, for the listed backends only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name as normalize  # config.normalize's rule; config imports this module
from packaging.version import Version

from backendpick.errors import ConfigError, NoBackendError
from backendpick.model.backend import CPU, CUDA, ROCM, XPU, Backend

KINDS = (CUDA, ROCM, CPU, XPU)
ANY = "*"  # a template given as a plain string: the same for every kind

# key -> description (the README's recipe table says the same)
KEYS: dict[str, str] = {
    "index-url": "an index per backend (template, or a table by kind); the package comes only from there",
    "find-links": "a page per torch release and backend (template, or a table by kind), installed binary-only",
    "name": "a distribution name per CUDA major or ROCm version (template, or a table by kind)",
    "extra": "an extra per CUDA major or ROCm version (template, or a table by kind)",
    "build": "a no-build-isolation source build after torch: true, or its build requirements",
    "prebuilt": 'where release wheels are looked for: URL templates with {filename}, folders, "github"',
    "cpu": 'on the cpu backend: "same", another requirement, or "refuse"',
    "backends": "the backends the project publishes, as it spells them (cu121, cu125, cpu; or cuda, rocm)",
    "versions": "the package versions this recipe is for, e.g. \">=13\"",
    "fingerprint": "the distribution an installed build adds, per kind (what verify compares with torch)",
    "fingerprint-tag": '"pt" (local tag +pt25cu124) or "cu" (+cu124): what verify reads from the version',
    "url-only": "true: only a direct URL or path installs it (the name on package indexes is another project)",
    "note": "a line shown with the recipe",
    "source": "where the facts come from (URL)",
    "checked": "the date they were checked",
    "unverified": "what is not verified (warns when used)",
}
_TEMPLATE_KEYS = ("index-url", "find-links", "name", "extra", "fingerprint")
MECHANISMS = ("index-url", "find-links", "name", "extra", "build")

PLACEHOLDERS = (
    "backend", "torch", "torch_minor", "cuda", "cuda_major", "cuda_nodot", "rocm", "rocm_major",
    "rocm_minor", "python_tag", "platform", "backend_index",
)
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")

SAME, REFUSE = "same", "refuse"


@dataclass(frozen=True)
class Recipe:
    package: str  # normalized name
    index_url: dict = field(default_factory=dict)  # kind or ANY -> template
    find_links: dict = field(default_factory=dict)
    name: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    fingerprint: dict = field(default_factory=dict)
    fingerprint_tag: str = ""
    build: tuple[str, ...] | None = None  # build requirements; None: no source build
    prebuilt: tuple[str, ...] | None = None
    cpu: str | None = None
    backends: tuple[str, ...] = ()
    versions: SpecifierSet | None = None
    note: str = ""
    source: str = ""
    checked: str = ""
    unverified: str = ""
    url_only: bool = False
    origin: str = "shipped"  # "shipped", or the pyproject.toml that defined it

    @property
    def mechanism(self) -> str:
        for key in MECHANISMS:
            if getattr(self, key.replace("-", "_")):
                return key
        return "default"

    def template(self, key: str, kind: str) -> str | None:
        table = getattr(self, key.replace("-", "_"))
        return table.get(kind, table.get(ANY))


# -- parsing and validation --------------------------------------------------------------------


def _where(origin: str, package: str, key: str | None = None) -> str:
    base = f"tool.backendpick.packages.{package}" if origin != "shipped" else f"recipes.toml recipe.{package}"
    prefix = f"{origin}: " if origin != "shipped" else ""
    return prefix + base + (f".{key}" if key else "")


def check_template(text: str, where: str) -> None:
    """Every ``{...}`` must be a known placeholder: a typo would reach pip as a literal URL."""
    for m in _PLACEHOLDER_RE.finditer(text):
        if m.group(1) not in PLACEHOLDERS:
            import difflib

            close = difflib.get_close_matches(m.group(1), PLACEHOLDERS, n=1)
            raise ConfigError(
                f"{where}: unknown placeholder {{{m.group(1)}}} in {text!r}",
                hint=(f"did you mean {{{close[0]}}}? " if close else "") + "placeholders: "
                + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS),
            )
    if text.count("{") != text.count("}"):
        raise ConfigError(f"{where}: unbalanced braces in {text!r}")


def _table(value: Any, where: str) -> dict:
    if isinstance(value, str):
        check_template(value, where)
        return {ANY: value}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a string or a table by kind ({', '.join(KINDS)}), not {type(value).__name__}")
    out = {}
    for kind, text in value.items():
        if kind not in KINDS:
            raise ConfigError(f"{where}: unknown kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}")
        if not isinstance(text, str):
            raise ConfigError(f"{where}.{kind} must be a string")
        check_template(text, f"{where}.{kind}")
        out[kind] = text
    return out


def _backend_entry(text: str, where: str) -> str:
    if text in KINDS:
        return text
    try:
        Backend.parse(text)
    except ConfigError:
        raise ConfigError(f"{where}: {text!r} is not a backend name",
                          hint="use names such as cu121, cu125, rocm6.2, cpu, or the kinds cuda, rocm, xpu") from None
    return text.lower()


def parse(package: str, row: Mapping[str, Any], origin: str = "shipped") -> Recipe:
    """One recipe table; ConfigError naming the key for anything wrong."""
    if not isinstance(row, Mapping):
        raise ConfigError(f"{_where(origin, package)} must be a table")
    for key in row:
        if key not in KEYS:
            import difflib  # only for the mistake: every start parses the shipped recipes

            close = difflib.get_close_matches(key, list(KEYS), n=1)
            raise ConfigError(f"{_where(origin, package)}: unknown key {key!r}",
                              hint=f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(KEYS)}")
    kw: dict[str, Any] = {}
    for key in _TEMPLATE_KEYS:
        if key in row:
            kw[key.replace("-", "_")] = _table(row[key], _where(origin, package, key))
    used = [k for k in MECHANISMS if k in row and k != "build"]
    if len(used) > 1 and not (set(used) == {"index-url", "name"}):
        raise ConfigError(f"{_where(origin, package)}: {' and '.join(used)} exclude each other",
                          hint="a recipe has one way to get the build")
    if "build" in row:
        value = row["build"]
        if value is True:
            from backendpick.knowledge import facts

            kw["build"] = facts.load().setuptools_fallback
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            kw["build"] = tuple(value)
        elif value is not False:
            raise ConfigError(f"{_where(origin, package, 'build')} must be true or a list of build requirements")
    if "prebuilt" in row:
        value = row["prebuilt"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{_where(origin, package, 'prebuilt')} must be a list of strings",
                              hint='e.g. prebuilt = ["https://mirror.example/wheels/{filename}", "/opt/wheels", "github"]')
        kw["prebuilt"] = tuple(value)
        if "build" not in kw:
            kw["build"] = None  # prebuilt wheels are the build phase's: config adds the package there
    if "cpu" in row:
        value = row["cpu"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{_where(origin, package, 'cpu')} must be \"same\", \"refuse\" or a requirement")
        if value not in (SAME, REFUSE):
            from packaging.requirements import InvalidRequirement, Requirement

            try:
                Requirement(value)
            except InvalidRequirement as exc:
                raise ConfigError(f"{_where(origin, package, 'cpu')}: {value!r} is not \"same\", \"refuse\" or a requirement: {exc}") from None
        kw["cpu"] = value
    if "backends" in row:
        value = row["backends"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
            raise ConfigError(f"{_where(origin, package, 'backends')} must be a non-empty list of backend names")
        kw["backends"] = tuple(_backend_entry(v, _where(origin, package, "backends")) for v in value)
    if "versions" in row:
        try:
            kw["versions"] = SpecifierSet(row["versions"])
        except (InvalidSpecifier, TypeError):
            raise ConfigError(f"{_where(origin, package, 'versions')}: {row['versions']!r} is not a version specifier",
                              hint='e.g. versions = ">=13"') from None
    if "fingerprint-tag" in row and row["fingerprint-tag"] not in ("pt", "cu"):
        raise ConfigError(f"{_where(origin, package, 'fingerprint-tag')} must be \"pt\" or \"cu\"")
    if "url-only" in row:
        if not isinstance(row["url-only"], bool):
            raise ConfigError(f"{_where(origin, package, 'url-only')} must be true or false")
        kw["url_only"] = row["url-only"]
    for key in ("note", "source", "checked", "unverified", "fingerprint-tag"):
        if key in row:
            if not isinstance(row[key], str):
                raise ConfigError(f"{_where(origin, package, key)} must be a string")
            kw[key.replace("-", "_")] = row[key]
    return Recipe(package=normalize(package), origin=origin, **kw)


def parse_many(package: str, value: Any, origin: str) -> tuple[Recipe, ...]:
    """A table, or a list of tables each limited to ``versions``."""
    rows = value if isinstance(value, list) else [value]
    recipes = tuple(parse(package, row, origin) for row in rows)
    if len(recipes) > 1 and any(r.versions is None for r in recipes):
        raise ConfigError(f"{_where(origin, package)}: with several recipes each needs `versions`")
    return recipes


@lru_cache(maxsize=1)
def shipped() -> dict[str, tuple[Recipe, ...]]:
    from backendpick.knowledge.facts import read_toml

    raw = read_toml(Path(__file__).parent / "data" / "recipes.toml")
    out: dict[str, tuple[Recipe, ...]] = {}
    for package, rows in raw.get("recipe", {}).items():
        recipes = parse_many(package, rows, "shipped")
        out[recipes[0].package] = recipes
    return out


def validate_user(table: Mapping[str, Any], path: Path) -> None:
    """``[tool.backendpick.packages]``: raises ConfigError on the first mistake."""
    for package, value in table.items():
        parse_many(package, value, str(path))


def merged(user: Mapping[str, Any], origin: str = "pyproject.toml") -> dict[str, tuple[Recipe, ...]]:
    """Shipped recipes, with the user's replacing those of the same name."""
    out = dict(shipped())
    for package, value in user.items():
        out[normalize(package)] = parse_many(package, value, origin)
    return out


def choose(recipes: Sequence[Recipe], specifier: SpecifierSet) -> Recipe | None:
    """The recipe for the versions a requirement allows: of those whose ``versions`` can meet
    ``specifier``, the last listed (recipes are listed oldest scheme first)."""
    fitting = [r for r in recipes if r.versions is None or _overlap(r.versions, specifier)]
    return fitting[-1] if fitting else None


def _overlap(a: SpecifierSet, b: SpecifierSet) -> bool:
    """Whether some version satisfies both: tried on the versions both name and their neighbours."""
    if not str(b):
        return True
    probes: set[Version] = set()
    for spec in list(a) + list(b):
        try:
            v = Version(spec.version.replace(".*", ""))
        except Exception:
            continue
        rel = list(v.release) + [0] * (3 - len(v.release))
        probes.add(v)
        probes.add(Version(f"{rel[0]}.{rel[1]}.{rel[2] + 1}"))
        probes.add(Version(f"{rel[0]}.{rel[1] + 1}"))
        probes.add(Version(f"{rel[0] + 1}"))
        if rel[2]:
            probes.add(Version(f"{rel[0]}.{rel[1]}.{rel[2] - 1}"))
        if rel[1]:
            probes.add(Version(f"{rel[0]}.{rel[1] - 1}.999"))
        if rel[0]:
            probes.add(Version(f"{rel[0] - 1}.999"))
    return any(a.contains(p, prereleases=True) and b.contains(p, prereleases=True) for p in probes)


# -- the backend a recipe serves and its placeholders ----------------------------------------------


def match_backend(recipe: Recipe, backend: Backend) -> Backend | None:
    """The recipe's backend for torch's ``backend``: itself when unlisted or listed by kind; for
    CUDA the newest listed of the same major not newer than torch's; None when none fits."""
    if not recipe.backends or backend.kind in recipe.backends:
        return backend
    listed = [Backend.parse(b) for b in recipe.backends if b not in KINDS]
    if backend.kind == CUDA:
        fits = [b for b in listed if b.kind == CUDA and b.version[0] == backend.version[0] and b.version <= backend.version]
        return max(fits) if fits else None
    return backend if backend in listed else None


def listed_text(recipe: Recipe) -> str:
    return ", ".join(recipe.backends) if recipe.backends else "every backend"


def values(backend: Backend, *, torch: str | None, python_tag: str, platform: str | None,
           backend_index: str) -> dict[str, str]:
    """Placeholder values; a placeholder without a value here (``{cuda}`` on ROCm) is absent."""
    out = {"backend": backend.name, "python_tag": python_tag, "backend_index": backend_index}
    if platform:
        out["platform"] = platform
    if torch:
        public = torch.split("+")[0]
        out["torch"] = public
        out["torch_minor"] = ".".join(public.split(".")[:2])
    if backend.kind == CUDA:
        out.update(cuda=backend.version_text, cuda_major=str(backend.version[0]),
                   cuda_nodot="".join(str(p) for p in backend.version))
    if backend.kind == ROCM:
        out.update(rocm=backend.version_text, rocm_major=str(backend.version[0]), rocm_minor=str(backend.version[1]))
    return out


def expand(template: str, vals: Mapping[str, str], package: str) -> str:
    missing = [m.group(1) for m in _PLACEHOLDER_RE.finditer(template) if m.group(1) not in vals]
    if missing:
        why = ("the torch it is for is not known: torch is not installed and the backend index did not say which "
               "one the backend phase installs") if missing[0].startswith("torch") else "this backend has none"
        raise NoBackendError(f"the recipe for {package} needs {{{missing[0]}}} ({template}), but {why}",
                             hint="add torch to the requirements (pin it, e.g. torch==2.5.1, when the index "
                                  "cannot be read)" if missing[0].startswith("torch") else
                             "choose another backend, or override the recipe in [tool.backendpick.packages]")
    return _PLACEHOLDER_RE.sub(lambda m: vals[m.group(1)], template)


def mirror(url: str, mirrors: Sequence[tuple[str, str]]) -> str:
    """``url`` with its longest configured prefix replaced ([tool.backendpick.mirrors])."""
    best = max((m for m in mirrors if url.startswith(m[0])), key=lambda m: len(m[0]), default=None)
    return best[1] + url[len(best[0]):] if best else url


def validate_mirrors(table: Mapping[str, Any], path: Path) -> None:
    from urllib.parse import urlsplit

    for prefix, replacement in table.items():
        if not isinstance(replacement, str):
            raise ConfigError(f"{path}: tool.backendpick.mirrors.{prefix!r} must be a URL string")
        for text in (prefix, replacement):
            scheme = urlsplit(text).scheme
            if scheme not in ("http", "https", "file"):
                raise ConfigError(f"{path}: tool.backendpick.mirrors: {text!r} is not an http(s) or file URL prefix",
                                  hint='e.g. "https://data.pyg.org/whl/" = "https://mirror.example/pyg/"')
