"""The README and docs/*.md: every Python example runs as written, every local link resolves."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README] + DOCS

# [text](target) links; images and autolinks are not used in these pages
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)


def anchors(page):
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    out = set()
    for line in page.read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_the_docs_exist_and_the_readme_links_each():
    assert DOCS, "docs/ has no .md file"
    targets = {(README.parent / t.split("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    for name in ("datatype", "interpose", "gather", "io", "offload", "kv", "bench", "settings", "setup", "gpu"):
        assert (ROOT / "docs" / f"{name}.md").resolve() in targets, f"README does not link docs/{name}.md"


def broken_links(page):
    """Links to files of the repository that name no existing file, or an #anchor no heading has."""
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading '{anchor}' in {dest.name})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_local_links_resolve(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links: {broken_links(page)}"


def test_link_checker_sees_broken_links(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Here it is\n")
    page.write_text("[a](there.md#here-it-is) [b](missing.md) [c](there.md#nowhere) [d](https://x.org/y)\n")
    assert broken_links(page) == ["missing.md (no such file)", "there.md#nowhere (no heading 'nowhere' in there.md)"]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_python_examples_run(page, tmp_path, monkeypatch):
    """The page's ```python blocks run in order in one namespace (a later block may use an earlier
    one's names), from a scratch working directory."""
    monkeypatch.chdir(tmp_path)
    scope = {"__name__": "__doc_example__"}
    for i, code in enumerate(python_blocks(page)):
        exec(compile(code, f"{page.relative_to(ROOT)} block {i + 1}", "exec"), scope)


def test_the_readme_or_the_docs_have_examples():
    assert sum(len(python_blocks(p)) for p in PAGES) >= 6
