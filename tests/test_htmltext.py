"""html_to_text: the generated text/plain alternative, feature by feature, on real mails, on any input."""

from __future__ import annotations

import html_mails
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailqueue.htmltext import html_to_text
from mailqueue.message import Mail

CASES = [
    # blocks, line breaks, whitespace
    ("<p>one</p><p>two</p>", "one\n\ntwo\n"),
    ("<div>one</div><div>two</div>", "one\ntwo\n"),
    ("<h1>Title</h1>text", "Title\n\ntext\n"),
    ("<section><header>a</header><article>b</article><footer>c</footer></section>", "a\nb\nc\n"),
    ("a<br>b<br><br>c", "a\nb\n\nc\n"),
    ("<p>a<br></p><p>b</p>", "a\n\nb\n"),
    ("a<hr>b", "a\n\nb\n"),
    ("  lots \n of\t\tspace  <b> here </b> !", "lots of space here !\n"),
    ("x&nbsp;&nbsp;&nbsp;y", "x y\n"),
    ("in\u200bvis\u00adible\u200c", "invisible\n"),
    ("<p>a<span></span> b</p>", "a b\n"),
    ("<pre>\n  keep   this\n\tand this\n</pre>after", "  keep   this\n\tand this\n\nafter\n"),
    ("<pre>a\n\n\n\nb</pre>", "a\n\nb\n"),
    # lists
    ("<ul><li>a</li><li>b</li></ul>", "  * a\n  * b\n"),
    ("<ol><li>a</li><li>b</li></ol>", "  1. a\n  2. b\n"),
    ("<ol start='9'><li>a</li><li>b</li></ol>", "  9. a\n  10. b\n"),
    ("<ol start='x'><li>a</li></ol>", "  1. a\n"),
    ("<ul><li>a<ul><li>b</li></ul></li><li>c</li></ul>", "  * a\n      * b\n  * c\n"),
    ("<ul><li>one<br>two</li></ul>", "  * one\n    two\n"),
    ("intro<ul><li>a</li></ul>outro", "intro\n\n  * a\n\noutro\n"),
    # tables
    ("<table><tr><th>A</th><th>B</th></tr><tr><td>1 </td><td> 2</td></tr></table>", "A  B\n1  2\n"),
    ("<table><tr><td><p>block</p></td><td>cell</td></tr></table>", "block\n\ncell\n"),
    ("<table><tr><td></td><td>only</td></tr></table>", "only\n"),
    # quotes
    ("<blockquote><p>said</p></blockquote>reply", "> said\n\nreply\n"),
    # links
    ("<a href='https://x.example/p'>page</a>", "page <https://x.example/p>\n"),
    ("<a href='https://x.example'>https://x.example</a>", "https://x.example\n"),
    ("<a href='https://x.example'></a>", "https://x.example\n"),
    ("<a href='#top'>Top</a>", "Top\n"),
    ("<a href='JavaScript:go()'>Go</a>", "Go\n"),
    ("<a href='mailto:a@example.com'>a@example.com</a>", "a@example.com <mailto:a@example.com>\n"),
    ("<a>no href</a>", "no href\n"),
    ("<a href=' https://x.example/a\nb '>t</a>", "t <https://x.example/ab>\n"),
    ("<a href='u'>Click<br>here</a> now", "Click\nhere <u> now\n"),
    ("<a href='u'><p>Block link</p></a>", "Block link <u>\n"),
    # images
    ("<p><img src='logo.png'></p>", ""),
    ("<img src='x' alt='Logo'>", "Logo\n"),
    ("<a href='https://s.example'><img src='b.png' alt='Shop now'></a>", "Shop now <https://s.example>\n"),
    ("<a href='https://s.example'><img src='b.png'></a>", "https://s.example\n"),
    # not shown
    ("<head><title>T</title><style>p{}</style></head><body>b</body>", "b\n"),
    ("a<script>x()</script>b<noscript>n</noscript>c<template>t</template>", "abc\n"),
    ("a<!-- hidden -->b", "ab\n"),
    ("<p>a<span style='display: none !important'>x</span>b</p>", "ab\n"),
    ("<p>a<span style='DISPLAY:NONE'>x</span>b</p>", "ab\n"),
    ("<p>a<span hidden>x</span>b</p><div style='display:block'>c</div>", "ab\n\nc\n"),
    ("<ul><li style='display:none'>x</li><li>y</li></ul>", "  * y\n"),
    # entities, non-ASCII, empty
    ("caf&eacute; &amp; &lt;tag&gt; &#8364; &#x1F4E8;", "café & <tag> € \U0001f4e8\n"),
    ("日本語のメール <b>太字</b>", "日本語のメール 太字\n"),
    ("", ""),
    ("   \n ", ""),
    ("<html><body></body></html>", ""),
    # malformed
    ("<p>open <b>bold <i>both</p> after", "open bold both\n\nafter\n"),
    ("</div></p>stray closers<li>loose item", "stray closers\n  * loose item\n"),
    ("<?xml version='1.0' encoding='latin-1'?><p>é</p>", "é\n"),
    ("a\x00b", "a\ufffdb\n"),
    ("lone \ud800 surrogate", "lone ? surrogate\n"),
]


@pytest.mark.parametrize(("html", "expected"), CASES)
def test_each_feature_gives_exactly_this_text(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


def test_realistic_mails_keep_their_key_lines() -> None:
    def lines(html: str) -> list[str]:
        return html_to_text(html).splitlines()

    invoice = lines(html_mails.INVOICE)
    for line in [
        "Invoice INV-2026-0042",
        "Hello Ann Müller,",
        "Thank you for your order of 3 December 2026.",
        "Item  Qty  Price",
        "Widget, blue  3  30,00 €",
        "Total  42,50 €",
        "Download the PDF: INV-2026-0042.pdf <https://billing.example.com/i/42.pdf>",
        "Questions? Write to billing@example.com <mailto:billing@example.com>.",
    ]:
        assert line in invoice
    assert not any("Your invoice" in line or "padding" in line for line in invoice)  # title, style

    reset = lines(html_mails.PASSWORD_RESET)
    assert "Reset my password <https://app.example.com/reset?token=abc123>" in reset
    assert "https://app.example.com/reset?token=abc123" in reset  # the url alone: it is its text
    assert reset[-1] == "\u2014 The Example team"

    news = html_to_text(html_mails.NEWSLETTER)
    assert "stories you should not miss" not in news  # the hidden preheader
    assert news.startswith("Example News\n")
    assert "Story number 2: what happened this week <https://news.example.com/a/2>" in news
    assert "  * Second point, with a jump\n" in news  # an #anchor link is its text
    assert "Unsubscribe <https://news.example.com/unsubscribe?u=42>" in news
    assert "\n\n\n" not in news
    assert " \n" not in news

    alert = lines(html_mails.ALERT)
    assert alert[-5:-1] == [
        "host      mount   used   free",
        "db-3      /var    94%    6.1G",
        "db-3      /       71%    12G",
        "",
    ]

    marketing = lines(html_mails.MARKETING)
    assert marketing[:3] == ["Winter sale", "", "Up to 50 % off jackets, boots & more."]
    assert "Shop the sale <https://shop.example.com/sale?utm_campaign=winter>" in marketing
    assert "Unsubscribe <https://shop.example.com/unsub> | View online" in marketing
    assert not any("50% off, this weekend" in line or "Up to 50% off" in line for line in marketing)

    assert lines(html_mails.ORDER_SHIPPED)[4:10] == [
        "  1. Coffee grinder",
        "  2. Filter papers (\u00d7200)",
        "       * brown",
        "       * unbleached",
        "",
        "> Leave it at the back door, please.",
    ]


def test_big_and_deep_markup() -> None:
    # the largest HTML body the API accepts
    big = html_mails.newsletter(200)[: Mail.BODY_MAX]
    text = html_to_text(big)
    assert text.startswith("Example News\n")
    assert "Story number 70:" in text
    # deep nesting within libxml2's limit is laid out like shallow nesting
    assert html_to_text("<div>" * 200 + "deep" + "</div>" * 200 + "<p>after</p>") == "deep\n\nafter\n"
    assert html_to_text("<ul><li>" * 100 + "x").endswith("* x\n")
    # beyond it libxml2 stops parsing: rather no text part than a silently truncated one
    assert html_to_text("<p>before</p>" + "<div>" * 300 + "deep" + "</div>" * 300 + "<p>after</p>") == ""


#: markup pieces for hypothesis to shuffle with arbitrary text
_PIECES = [
    "<p>",
    "</p>",
    "<div>",
    "</div>",
    "<br>",
    "<ul>",
    "<ol start=2>",
    "<li>",
    "</li>",
    "</ul>",
    "<table>",
    "<tr>",
    "<td>",
    "</td>",
    "<pre>",
    "</pre>",
    "<blockquote>",
    "<a href=u>",
    "<a href=#x>",
    "</a>",
    "<img alt=i>",
    "<script>",
    "<style>",
    "<span style=display:none>",
    "</span>",
    "<!--",
    "-->",
    "&amp;",
    "&nbsp;",
    "&#0;",
    "<",
    ">",
    "\n",
    "\t",
    "\u200b",
    " ",
]
markup = st.lists(st.sampled_from(_PIECES) | st.text(max_size=8), max_size=60)


@settings(max_examples=300, deadline=None)
@given(html=st.text() | markup.map("".join))
def test_any_input_gives_text_ending_in_a_newline_or_nothing(html: str) -> None:
    text = html_to_text(html)
    assert isinstance(text, str)
    assert text == "" or (text.endswith("\n") and text.strip())
    assert "\n\n\n" not in text
    assert not text.startswith("\n")
    assert all(line == line.rstrip() for line in text.split("\n"))
    assert html_to_text(html) == text
