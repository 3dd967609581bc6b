"""The README and docs/ stay consistent: relative links and anchors resolve, every shipped
config is documented, the README stays short, and retired wording does not come back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

README_MAX_BYTES = 12288
# Built from parts so that this file does not contain the phrase it forbids.
RETIRED_PHRASE = "seed" + " " + "example"

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`+[^`\n]*`+")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, spaces to '-', other punctuation dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.strip().lower().replace(" ", "-")
    return "".join(ch for ch in text if ch.isalnum() or ch in "-_")


def _anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text(encoding="utf-8")))


def test_the_pages_exist() -> None:
    names = {p.name for p in DOCS}
    for page in (
        "configs.md",
        "freezing.md",
        "autograd.md",
        "schedules.md",
        "checkpoints.md",
        "feature-cache.md",
        "distributed.md",
        "speed-and-memory.md",
        "cost-model.md",
        "demo.md",
        "comparing.md",
    ):
        assert page in names, f"docs/{page} is missing"


def test_slug_follows_githubs_rules() -> None:
    assert _slug("The demo's report on CPU") == "the-demos-report-on-cpu"
    assert _slug("Several processes and machines (torchrun, DDP)") == "several-processes-and-machines-torchrun-ddp"
    assert _slug("Ctrl-C") == "ctrl-c"
    assert _slug("`freeze_type` rules") == "freeze_type-rules"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^(https?:|mailto:)", target, re.IGNORECASE):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.is_file():
            broken.append(f"{target}: no file {dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor.lower() not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_readme_shows_its_images() -> None:
    text = README.read_text(encoding="utf-8")
    assert "](docs/report_cpu.png)" in text


def test_every_shipped_config_is_documented() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs, "no configs found"
    missing = [
        str(c.relative_to(ROOT))
        for c in configs
        if c.relative_to(ROOT).as_posix() not in text and not re.search(rf"(?<![\w.-]){re.escape(c.name)}", text)
    ]
    assert not missing, f"configs not mentioned in README.md or docs/*.md: {missing}"


def test_readme_is_short_and_names_the_two_entry_points() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {README_MAX_BYTES})"
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text
    assert "make test" in text


def test_no_retired_wording() -> None:
    files = [README, *sorted((ROOT / "docs").rglob("*")), *sorted((ROOT / "tests").rglob("*"))]
    offenders = []
    for path in files:
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in {".png", ".pyc"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if RETIRED_PHRASE in text.lower():
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f'say "PyTorch\'s autograd tutorial example" instead of {RETIRED_PHRASE!r} in: {offenders}'
