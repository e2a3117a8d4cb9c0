"""What the backend index answered (issue 9): a template that answers 404 everywhere is said as
such, and ``file://`` indexes are read as pip reads them (a folder per project, index.html)."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from backendpick.indexes.client import IndexClient, PageNotFound
from backendpick.inputs.pip_config import PipConfig
from backendpick.knowledge import facts as facts_mod
from backendpick.model.backend import Backend
from backendpick.model.environment import Target
from backendpick.selection.offers import Offers, gather

FACTS = facts_mod.load()
CANDIDATES = [Backend.parse("cpu"), Backend.parse("cu124"), Backend.parse("cu126")]


def target() -> Target:
    return Target(python=Path("/env/bin/python"), prefix=Path("/env"), version=(3, 11, 7),
                  markers={"sys_platform": "linux"}, tags=("py3-none-any",), pip_version="24.0",
                  purelib=Path("/env/lib/python3.11/site-packages"), installed={}, is_venv=True)


class Nowhere:
    """An index client for a template that points where no index is."""

    def project(self, index_url: str, name: str):
        raise PageNotFound(f"{index_url}/{name}/ (HTTP 404)")


def test_404_everywhere_is_said_with_the_url():
    offers = gather(FACTS, Nowhere(), "https://mirror.example/{backend}/simple", CANDIDATES, SpecifierSet(), target())
    assert offers.source == "index" and offers.versions == {}
    assert offers.unanswered() == ("https://mirror.example/cpu/simple/torch/ (HTTP 404) "
                                   "(and the same for the other 2 backend indexes asked)")


def test_some_404_is_just_a_backend_the_index_lacks():
    offers = Offers({Backend.parse("cpu"): [Version("2.5.1")]}, "index", (), ("u (HTTP 404)",), 2)
    assert offers.unanswered() is None
    assert Offers({}, "index", (), ("u (HTTP 404)",), 2).unanswered() is None  # the other one answered
    assert Offers({}, "table", (), ("u (HTTP 404)",), 1).unanswered() is None


def _static_index(root: Path) -> str:
    (root / "cpu" / "simple" / "torch").mkdir(parents=True)
    (root / "cpu" / "simple" / "torch" / "index.html").write_text(
        '<html><body><a href="../../files/torch-2.5.1%2Bcpu-py3-none-any.whl#sha256=00">torch-2.5.1+cpu-py3-none-any.whl</a>'
        '<a href="../../files/torch-2.6.0%2Bcpu-py3-none-any.whl" data-requires-python="&gt;=3.12">'
        "torch-2.6.0+cpu-py3-none-any.whl</a></body></html>")
    return (root.as_uri()) + "/{backend}/simple"


def test_file_index_is_read_like_pip_reads_it(tmp_path: Path):
    template = _static_index(tmp_path)
    client = IndexClient(PipConfig())
    files = client.project(template.replace("{backend}", "cpu"), "torch")
    assert [f.filename for f in files] == ["torch-2.5.1+cpu-py3-none-any.whl", "torch-2.6.0+cpu-py3-none-any.whl"]
    assert files[0].url.startswith((tmp_path / "cpu" / "files").as_uri())
    offers = gather(FACTS, client, template, CANDIDATES, SpecifierSet(), target())
    assert offers.source == "index" and offers.versions == {Backend.parse("cpu"): [Version("2.5.1+cpu")]}
    assert offers.unanswered() is None and len(offers.not_found) == 2


def test_file_index_without_the_folder_is_not_found(tmp_path: Path):
    with pytest.raises(PageNotFound, match="no .*index.html"):
        IndexClient(PipConfig()).project((tmp_path / "nothing").as_uri(), "torch")
    offers = gather(FACTS, IndexClient(PipConfig()), (tmp_path / "nothing").as_uri() + "/{backend}", CANDIDATES,
                    SpecifierSet(), target())
    assert offers.unanswered().startswith((tmp_path / "nothing").as_uri() + "/cpu/torch/ (no ")


# -- no index answered: the packaged table refuses what the index would (issue 20 item 5) ------------


@pytest.mark.parametrize("backend, refused", [("cpu", True), ("xpu", True), ("cu124", False), ("rocm6.2", False)])
def test_the_table_refuses_a_companion_no_index_of_the_backend_publishes(backend: str, refused: bool):
    from packaging.requirements import Requirement

    from backendpick.errors import NoBackendError
    from backendpick.selection.offers import check_family_in_table

    reqs = [Requirement("torch>=2.5"), Requirement("xformers"), Requirement("torchvision")]
    family = set(FACTS.backend_packages)
    url = f"https://mirror.example/{backend}/simple"
    if not refused:
        check_family_in_table(FACTS, url, Backend.parse(backend), reqs, family)
        return
    with pytest.raises(NoBackendError) as err:
        check_family_in_table(FACTS, url, Backend.parse(backend), reqs, family)
    assert err.value.message.startswith(f"not published for {backend}: xformers (xformers publishes cuda and rocm "
                                        f"builds only; no backend index answered at {url}")
    assert err.value.exit_code == 3
    # Outside the family (a user's backend-packages list without it) it is the user's index's business.
    check_family_in_table(FACTS, url, Backend.parse(backend), reqs, family - {"xformers"})
