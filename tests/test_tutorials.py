"""The tutorials (docs/tutorials/<name>.py with its page <name>.md) against their pages.

Each script runs end to end with `--quick` (fewer steps; marked slow) and draws every
picture its page shows; without running anything, every script has a page in the site's
navigation that includes its code, and every picture a page shows is committed.
"""

import pathlib
import re
import subprocess
import sys

import pytest
import yaml


ROOT = pathlib.Path(__file__).parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("*.py"))
_PICTURE = re.compile(r"!\[[^\]]*\]\(([^/)\s]+)/([^)\s]+\.png)\)")


def _pictures(script: pathlib.Path) -> list[str]:
    """The file names of the pictures the script's page shows from its own folder."""
    page = script.with_suffix(".md").read_text(encoding="utf-8")
    return [name for folder, name in _PICTURE.findall(page) if folder == script.stem]


def _nav() -> list[str]:
    """Every page in the site's navigation (mkdocs.yml's `nav`)."""
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    return _nav_pages(config["nav"])


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [page for value in node.values() for page in _nav_pages(value)]
    return [page for item in node for page in _nav_pages(item)]


def test_every_tutorial_page_has_its_script():
    pages = [p for p in _nav() if p.startswith("tutorials/") and p != "tutorials/index.md"]
    assert pages
    missing = [p for p in pages if not (ROOT / "docs" / p).with_suffix(".py").exists()]
    assert not missing, f"tutorial pages without a script: {missing}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_tutorial_has_a_page_that_shows_its_code(script):
    page = script.with_suffix(".md")
    assert page.exists(), f"{script.name} has no page {page.name}"
    assert f'--8<-- "{script.name}:' in page.read_text(encoding="utf-8")
    assert f"tutorials/{page.name}" in _nav()
    missing = [n for n in _pictures(script) if not (TUTORIALS / script.stem / n).exists()]
    assert not missing, f"{page.name} shows pictures that are not committed: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_tutorial_runs(script, tmp_path):
    subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    missing = [n for n in _pictures(script) if not (tmp_path / n).exists()]
    assert not missing, f"{script.name} --quick did not draw {missing}"
