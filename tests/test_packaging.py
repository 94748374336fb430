"""The package as the index serves it: version, licence, project links, and a README whose links work there.

The wheel and the sdist are built with hatchling's own build hooks in a
subprocess (no network, well under a second); ``scripts/package-check``
builds them with ``python -m build`` and installs them into fresh virtual
environments, which is too slow for the test suite.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

import mailqueue
from mailqueue.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS_SITE = "https://mailqueue.github.io/mailqueue/"
REPO = "https://github.com/mailqueue/mailqueue"

#: Where a Markdown or HTML document points: inline links and images, autolinks,
#: reference definitions, and href/src attributes.
LINK_TARGETS = [
    re.compile(r"\]\(\s*<?([^)\s>]*)"),
    re.compile(r"<([a-z][a-z0-9+.-]*:[^>\s]*)>", re.I),
    re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S*?)>?(?:\s|$)", re.M),
    re.compile(r"""\b(?:href|src)\s*=\s*["']([^"']*)""", re.I),
]
FENCED_CODE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)


@dataclass(frozen=True)
class Built:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("dist")
    script = (
        "import sys\n"
        "from hatchling.build import build_sdist, build_wheel\n"
        "print(build_wheel(sys.argv[1]))\n"
        "print(build_sdist(sys.argv[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    wheel_name, sdist_name = done.stdout.split()
    return Built(wheel=out / wheel_name, sdist=out / sdist_name)


def wheel_metadata(wheel: Path) -> email.message.Message:
    """The wheel's core metadata (``METADATA``: headers, then the README as the body)."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser(policy=email.policy.compat32).parsestr(archive.read(name).decode())


def link_targets(markdown: str) -> list[str]:
    """Every address a Markdown document (with inline HTML) links to or shows, code excluded."""
    prose = INLINE_CODE.sub("", FENCED_CODE.sub("", markdown))
    return [target for pattern in LINK_TARGETS for target in pattern.findall(prose)]


def relative_targets(markdown: str) -> list[str]:
    return [t for t in link_targets(markdown) if urlsplit(t).scheme not in ("http", "https", "mailto")]


# --- the version -------------------------------------------------------------------


def test_the_version_is_written_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["hatch"]["version"] == {"path": "mailqueue/_version.py"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?(?:\.dev\d+)?", mailqueue.__version__)


def test_the_wheel_carries_the_version_of_the_package(built: Built) -> None:
    assert wheel_metadata(built.wheel)["Version"] == mailqueue.__version__
    assert built.wheel.name.startswith(f"mailqueue-{mailqueue.__version__}-")
    assert built.sdist.name == f"mailqueue-{mailqueue.__version__}.tar.gz"


def test_the_command_prints_the_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"mailqueue, version {mailqueue.__version__}\n"


def test_the_changelog_has_a_section_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert re.search(rf"^## \[{re.escape(mailqueue.__version__)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M)


# --- licence and project links ----------------------------------------------------


def test_the_licence_is_in_the_wheel_and_the_sdist(built: Built) -> None:
    licence = (ROOT / "LICENSE").read_bytes()
    assert licence.startswith(b"MIT License")
    with zipfile.ZipFile(built.wheel) as wheel:
        dist_info = f"mailqueue-{mailqueue.__version__}.dist-info"
        assert wheel.read(f"{dist_info}/licenses/LICENSE") == licence
    with tarfile.open(built.sdist) as sdist:
        member = sdist.extractfile(f"mailqueue-{mailqueue.__version__}/LICENSE")
        assert member is not None
        assert member.read() == licence
    metadata = wheel_metadata(built.wheel)
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_the_project_links_point_to_the_docs_the_source_the_changelog_and_the_issues(built: Built) -> None:
    links = dict(entry.split(", ", 1) for entry in wheel_metadata(built.wheel).get_all("Project-URL") or [])
    assert links == {
        "Documentation": DOCS_SITE,
        "Source": REPO,
        "Changelog": f"{REPO}/blob/main/CHANGELOG.md",
        "Issues": f"{REPO}/issues",
    }
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert f"site_url: {DOCS_SITE}\n" in mkdocs
    assert f"repo_url: {REPO}\n" in mkdocs


# --- the README on the index page ---------------------------------------------------


def test_the_readme_on_the_index_has_no_relative_link(built: Built) -> None:
    metadata = wheel_metadata(built.wheel)
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert description.strip() == (ROOT / "README.md").read_text().strip()
    assert link_targets(description), "no links found: the pattern no longer matches the README"
    assert relative_targets(description) == []


@pytest.mark.parametrize(
    ("markdown", "relative"),
    [
        ("see [the API](docs/http-api.md).", ["docs/http-api.md"]),
        ("![chart](docs/img/chart.png)", ["docs/img/chart.png"]),
        ("[x]: ../deploy/README.md", ["../deploy/README.md"]),
        ('<img src="docs/img/ui.png"> <a href="#install">', ["docs/img/ui.png", "#install"]),
        ("[jump](#sending-a-mail)", ["#sending-a-mail"]),
        ("[site](https://mailqueue.github.io/mailqueue/) <https://x.org/a>", []),
        ("```\n[not a link](docs/x.md)\n```\nand `[code](y.md)`", []),
    ],
)
def test_relative_links_are_found(markdown: str, relative: list[str]) -> None:
    assert relative_targets(markdown) == relative


def test_the_readme_links_to_pages_and_files_that_exist() -> None:
    """An absolute link to the docs site or the repository is as checked as a relative one was."""
    targets = link_targets((ROOT / "README.md").read_text())
    for target in targets:
        url = urlsplit(target)
        if target.startswith(DOCS_SITE):
            page = url.path.removeprefix(urlsplit(DOCS_SITE).path).strip("/")
            candidates = [ROOT / "docs" / f"{page}.md", ROOT / "docs" / page / "index.md"]
            assert any(p.is_file() for p in candidates), f"{target}: no page docs/{page}(.md|/index.md)"
        elif target.startswith(f"{REPO}/tree/main/") or target.startswith(f"{REPO}/blob/main/"):
            path = ROOT / url.path.split("/main/", 1)[1]
            assert path.exists(), f"{target}: no {path.relative_to(ROOT)} in the repository"
    assert any(t.startswith(DOCS_SITE) for t in targets)
