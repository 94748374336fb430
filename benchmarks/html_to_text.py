"""Microseconds per :func:`~mailqueue.htmltext.html_to_text` call on typical mail HTML.

Times the HTML of ``worker_cpu.py`` (one 2 KB paragraph), the realistic mails
of ``tests/html_mails.py`` and a 20 KB newsletter; best of five runs. With
``--inscriptis`` (if installed) it times the converter used before, for
comparison.

    .venv/bin/python benchmarks/html_to_text.py [--inscriptis]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import html_mails
from worker_cpu import HTML

from mailqueue.htmltext import html_to_text


def inscriptis_text(html: str) -> str:
    """The text as mailqueue made it before its own converter: inscriptis, strict CSS profile, links shown."""
    import inscriptis  # type: ignore[import-not-found]
    from inscriptis.css_profiles import CSS_PROFILES  # type: ignore[import-not-found]
    from inscriptis.model.config import ParserConfig  # type: ignore[import-not-found]

    text: str = inscriptis.get_text(html, ParserConfig(css=CSS_PROFILES["strict"], display_links=True))
    return text


def per_call_us(convert: Callable[[str], str], html: str) -> float:
    number = max(20, int(200_000 / (len(html) + 1000)))
    return min(timeit.repeat(lambda: convert(html), number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inscriptis", action="store_true", help="also time inscriptis (must be installed)")
    args = parser.parse_args()
    cases = {
        "worker_cpu.HTML": HTML,
        "invoice": html_mails.INVOICE,
        "password reset": html_mails.PASSWORD_RESET,
        "alert": html_mails.ALERT,
        "marketing": html_mails.MARKETING,
        "newsletter 20 KB": html_mails.NEWSLETTER_20K,
    }
    print(f"{'html':<18}{'bytes':>7}{'us/call':>10}" + (f"{'inscriptis':>12}" if args.inscriptis else ""))
    for name, html in cases.items():
        row = f"{name:<18}{len(html.encode()):>7}{per_call_us(html_to_text, html):>10.1f}"
        if args.inscriptis:
            row += f"{per_call_us(inscriptis_text, html):>12.1f}"
        print(row)


if __name__ == "__main__":
    main()
