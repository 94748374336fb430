"""MkDocs hook: publish benchmarks/RESULTS.md and its charts as the page benchmarks.md.

The results live once, in benchmarks/ (written by a benchmark run); this hook
adds them to the site at build time instead of keeping a second copy in docs/.
RESULTS.md becomes ``benchmarks.md`` at the top of the site, and every file of
benchmarks/ that it links to (relative links such as ``worker-concurrency.png``),
as well as every image there, is added beside it, so those links resolve.
Without a RESULTS.md the page says that no results are committed yet.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

PAGE = "benchmarks.md"
IMAGES = {".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp"}
PLACEHOLDER = """# Benchmark results

No results committed yet. `benchmarks/RESULTS.md` (with its chart,
`benchmarks/worker-concurrency.png`) is written by a run of the benchmark
harness in `benchmarks/` of the repository; once it is committed, this page
shows it.
"""
# [text](target) and ![alt](target), with an optional title; <img src="target">
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img[^>]*\ssrc=\"([^\"]+)\"")


def _folder(config: MkDocsConfig) -> Path:
    return Path(config.config_file_path).resolve().parent / "benchmarks"


def linked_files(results: Path) -> set[Path]:
    """Files of the results' folder that ``results`` links to relatively, and every image there."""
    folder = results.parent
    found = {path for path in folder.iterdir() if path.suffix.lower() in IMAGES and path.is_file()}
    for match in _LINK.finditer(results.read_text(encoding="utf-8")):
        target = (match.group(1) or match.group(2)).split("#", 1)[0].split("?", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("/"):
            continue
        path = (folder / target).resolve()
        if path.is_file() and path.parent == folder.resolve() and path != results.resolve():
            found.add(path)
    return found


def on_config(config: MkDocsConfig, **kwargs: Any) -> MkDocsConfig:
    """Let ``mkdocs serve`` rebuild when the results change."""
    folder = _folder(config)
    if folder.is_dir() and str(folder) not in config.watch:
        config.watch.append(str(folder))
    return config


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    """Add the page (the results, or the placeholder) and the files it links to."""
    if files.get_file_from_path(PAGE) is not None:
        raise ValueError(f"docs/{PAGE} must not exist: the page is built from benchmarks/RESULTS.md")
    results = _folder(config) / "RESULTS.md"
    if not results.is_file():
        files.append(File.generated(config, PAGE, content=PLACEHOLDER))
        return files
    files.append(File.generated(config, PAGE, abs_src_path=str(results)))
    for path in sorted(linked_files(results)):
        if files.get_file_from_path(path.name) is not None:
            raise ValueError(f"benchmarks/{path.name} would replace docs/{path.name} in the site")
        files.append(File.generated(config, path.name, abs_src_path=str(path)))
    return files
