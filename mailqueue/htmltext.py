"""The plain-text alternative of an HTML body, as a reader of the HTML sees it.

One pass over the tree that lxml (libxml2, in C) parses; no CSS engine. It was
inscriptis before, whose per-character Python layout engine made the text part
the largest CPU cost of the worker (~0.3 ms per mail). This takes ~25 µs for a
2 KB mail and ~1.2 ms for 20 KB of newsletter markup, a quarter and a third of
inscriptis' time (``benchmarks/html_to_text.py --inscriptis``).

What is kept, and how:

* **Blocks** (``p``, ``div``, headings, lists, tables, ``blockquote``,
  ``pre``, ``section``...) start and end lines; paragraph-like ones (``p``,
  headings, ``table``, ``blockquote``, ``pre``, ``hr``, top-level lists) are
  separated by a blank line. ``br`` ends a line.
* **Inline text** has its whitespace collapsed as a browser does (a no-break
  space counts as a space: email layouts use ``&nbsp;`` as a spacer),
  zero-width characters and soft hyphens removed; ``pre`` keeps its
  whitespace.
* **Lists**: ``  * item``, ordered ``  1. item`` (``start`` honoured); nested
  items indented further, an item's next lines aligned under its text.
* **Tables**: one line per row, cells separated by two spaces (a cell holding
  blocks breaks into its lines: layout tables read top to bottom).
* **Blockquotes** prefix their lines with ``> `` as quoted mail does.
* **Links** become ``text <url>``: the url alone when the text is the url or
  empty (a linked image without alt text); the text alone for ``#anchors``
  and ``javascript:``. ``mailto:`` links keep their url.
* **Images** give their ``alt`` text: what a reader sees with images blocked
  (the default of many clients), and it keeps the label of an image button.
* **Not shown**: ``head``, ``script``, ``style``, ``title``, ``noscript``,
  ``template``, comments, and elements that a browser would not show:
  ``hidden`` or an inline ``display:none`` (a preheader).

Trailing spaces are stripped, runs of blank lines become one, the text ends
with a newline, and nothing visible gives ``""``. HTML nested deeper than
libxml2's limit (256) is not parsed past it: the result would be silently
incomplete, so it is ``""`` (no text part) then.
"""

from __future__ import annotations

import contextlib
import re

__all__ = ["html_to_text"]

_HIDDEN_TAGS = ("head", "script", "style", "title", "noscript", "template", "object", "iframe")
#: Elements that are blocks, and how many line breaks separate them from what is around.
_BLOCKS = {
    **dict.fromkeys(
        [
            "address", "article", "aside", "body", "caption", "center", "dd", "details", "dialog",
            "div", "dt", "figcaption", "footer", "form", "header", "hgroup", "html", "legend", "li",
            "main", "nav", "section", "summary", "tr",
        ],
        1,
    ),
    **dict.fromkeys(
        [
            "blockquote", "dl", "fieldset", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "p", "pre",
            "table",
        ],
        2,
    ),
}  # fmt: skip
#: Elements that need more than their text and line breaks.
_LIST_ITEM, _LIST, _QUOTE, _CELL, _BREAK, _PRE, _LINK, _IMAGE = range(8)
_ROLES = {
    "li": _LIST_ITEM,
    **dict.fromkeys(["ul", "ol", "menu", "dir"], _LIST),
    "blockquote": _QUOTE,
    "td": _CELL,
    "th": _CELL,
    "br": _BREAK,
    "pre": _PRE,
    "a": _LINK,
    "img": _IMAGE,
}
# Whitespace is what str.split() splits on (HTML's, the no-break space and Unicode's spaces);
# the zero-width characters and the soft hyphen vanish.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u034f\u180e\u200b\u200c\u200d\u2060\ufeff"))
_DISPLAY_NONE_RE = re.compile(r"(?:^|[;\s])display\s*:\s*none\b", re.IGNORECASE)
_URL_SPACE_RE = re.compile(r"[\t\n\r]")


class _Prefix:
    """What starts the lines of an open li or blockquote: its first line's, then the others'."""

    __slots__ = ("first", "rest", "used")

    def __init__(self, first: str, rest: str) -> None:
        self.first, self.rest, self.used = first, rest, False


class _Writer:
    """The text as it is laid out: finished lines, the line being filled, the prefixes."""

    __slots__ = ("at_space", "line", "lines", "links", "pending", "prefixes")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.line: list[str] = []
        self.at_space = True  # the line is empty or ends with a space: a leading space is dropped
        self.pending = 0  # line breaks asked for before the next line
        self.prefixes: list[_Prefix] = []  # per open li and blockquote
        self.links: list[tuple[str, list[str]]] = []  # open links: url, their text so far

    def text(self, text: str) -> None:
        if not text.isascii():  # the invisible characters are not ASCII: skip the scan when none can be
            text = text.translate(_INVISIBLE)
        words = " ".join(text.split())
        if not words:  # whitespace (the indentation between tags), or nothing
            if text and not self.at_space:
                self.line.append(" ")
                self.at_space = True
            return
        if not self.at_space and text[0].isspace():
            words = " " + words
        if text[-1].isspace():
            words += " "
            self.at_space = True
        else:
            self.at_space = False
        self.line.append(words)
        for _, parts in self.links:
            parts.append(words)

    def preformatted(self, text: str) -> None:
        first, *rest = text.translate(_INVISIBLE).replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.line.append(first)
        for part in rest:
            self.emit("".join(self.line), blank_ok=True)
            self.line = [part]
        self.at_space = False
        for _, parts in self.links:
            parts.append(text)

    def separator(self) -> None:
        """Two spaces between table cells, when the row's line already has text."""
        if self.line and not self.line[-1].endswith("  "):
            self.line.append(" " if self.at_space else "  ")
            self.at_space = True

    def flush(self) -> None:
        if self.line:
            self.emit("".join(self.line))
        self.line = []
        self.at_space = True

    def emit(self, line: str, *, blank_ok: bool = False) -> None:
        line = line.rstrip()
        if not line and not blank_ok:
            return
        if self.lines and self.pending > 1 and self.lines[-1]:
            self.lines.append("")
        prefix = []
        for entry in self.prefixes:
            prefix.append(entry.rest if entry.used else entry.first)
            entry.used = True
        line = ("".join(prefix) + line).rstrip()
        if line or (self.lines and self.lines[-1]):  # never two blank lines in a row
            self.lines.append(line)
        self.pending = 0

    def block(self, breaks: int) -> None:
        if self.line:
            self.flush()
        if breaks > self.pending:
            self.pending = breaks

    def line_break(self) -> None:
        for _, parts in self.links:
            parts.append(" ")
        if self.line:
            self.flush()
            self.pending = max(self.pending, 1)
        else:
            self.pending = min(self.pending + 1, 2)

    def end_link(self, url: str, parts: list[str]) -> None:
        text = " ".join("".join(parts).split())
        url = _URL_SPACE_RE.sub("", url).strip().replace(" ", "%20")
        if not url or url.startswith("#") or url[:11].lower() == "javascript:" or text == url:
            return
        if not text:
            self.text(f" {url} ")
        elif self.line:
            self.line.append(f" <{url}>")
            self.at_space = False
        elif self.lines:  # the link's text ended with a block: the url goes after it
            self.lines[-1] += f" <{url}>"


def html_to_text(html: str) -> str:
    """The plain-text alternative of ``html``: visible text as a browser lays it
    out (blocks, list bullets, table cells), links as ``text <url>``, no script,
    style or head content; trailing spaces and runs of blank lines removed; ``""``
    when nothing is visible (an image alone). Never raises for any ``str``."""
    from lxml import etree

    parser = etree.HTMLParser(
        encoding="utf-8", remove_comments=True, remove_pis=True, no_network=True, default_doctype=False
    )
    root = etree.fromstring(html.encode("utf-8", "replace"), parser)
    if root is None or any(error.type_name == "ERR_RESOURCE_LIMIT" for error in parser.error_log):
        return ""
    etree.strip_elements(root, *_HIDDEN_TAGS, with_tail=False)

    out = _Writer()
    write = out.text
    pre = 0  # depth of open pre elements
    list_counters: list[int | None] = []  # per open ul/ol: the next number (None: bullets)
    hidden = set()  # the elements not shown: at their end only their tail counts
    blocks, roles = _BLOCKS, _ROLES
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, element in walker:
        tag = element.tag
        if event == "start":
            style = element.get("style")
            if (style is not None and _DISPLAY_NONE_RE.search(style)) or element.get("hidden") is not None:
                walker.skip_subtree()
                hidden.add(element)
                continue
            breaks = blocks.get(tag)
            if breaks is not None:
                out.block(breaks)
            role = roles.get(tag)
            if role is None:
                pass
            elif role == _LIST_ITEM:
                number = list_counters[-1] if list_counters else None
                if number is None:
                    out.prefixes.append(_Prefix("  * ", "    "))
                else:
                    bullet = f"  {number}. "
                    list_counters[-1] = number + 1
                    out.prefixes.append(_Prefix(bullet, " " * len(bullet)))
            elif role == _LIST:
                out.block(1 if list_counters or out.prefixes else 2)
                start = 1
                if tag == "ol":
                    with contextlib.suppress(ValueError):  # not a number, or 4,300 digits
                        start = int(element.get("start", "1"))
                list_counters.append(start if tag == "ol" else None)
            elif role == _QUOTE:
                out.prefixes.append(_Prefix("> ", "> "))
            elif role == _CELL:
                out.separator()
            elif role == _BREAK:
                out.line_break()
            elif role == _PRE:
                pre += 1
                write = out.preformatted
            elif role == _LINK:
                href = element.get("href")
                if href is not None:
                    out.links.append((href, []))
            elif role == _IMAGE:
                alt = element.get("alt")
                if alt:
                    write(alt)
            content = element.text
            if content:
                # a newline right after <pre> is not content (HTML's parsing rule)
                write(content[1:] if role == _PRE and content[0] == "\n" else content)
        else:
            if element not in hidden:
                role = roles.get(tag)
                if role is None:
                    pass
                elif role == _LINK:
                    if element.get("href") is not None:
                        out.end_link(*out.links.pop())
                elif role == _LIST:
                    list_counters.pop()
                    out.block(1 if list_counters or out.prefixes else 2)
                elif role == _PRE:
                    pre -= 1
                    if not pre:
                        write = out.text
                breaks = blocks.get(tag)
                if breaks is not None:
                    out.block(breaks)
                if role in (_LIST_ITEM, _QUOTE):
                    out.prefixes.pop()
            content = element.tail
            if content:
                if pre or not content.isspace():
                    write(content)
                elif not out.at_space:  # the indentation between tags: one space at most
                    out.line.append(" ")
                    out.at_space = True
    out.flush()
    # no line ends with a space, no two blank lines follow each other
    text = "\n".join(out.lines).strip("\n")
    return text + "\n" if text.strip() else ""
