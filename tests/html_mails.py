# ruff: noqa: E501, RUF001 - mail markup as it is written, long lines and typographic characters included
"""Realistic transactional and marketing HTML mails, for html_to_text's tests and benchmark."""

from __future__ import annotations

INVOICE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Your invoice</title>
<style>td { padding: 4px } .total { font-weight: bold }</style></head>
<body style="margin:0">
<table width="100%" cellpadding="0" cellspacing="0" role="presentation"><tr><td align="center">
<table width="600"><tr><td>
<h1>Invoice INV-2026-0042</h1>
<p>Hello Ann Müller,</p>
<p>Thank you for your order of 3&nbsp;December&nbsp;2026.</p>
<table class="items">
  <thead><tr><th>Item</th><th>Qty</th><th>Price</th></tr></thead>
  <tbody>
    <tr><td>Widget, blue</td><td>3</td><td>30,00&nbsp;&euro;</td></tr>
    <tr><td>Gadget</td><td>1</td><td>12,50&nbsp;&euro;</td></tr>
    <tr class="total"><td>Total</td><td></td><td>42,50&nbsp;&euro;</td></tr>
  </tbody>
</table>
<p>Download the PDF: <a href="https://billing.example.com/i/42.pdf">INV-2026-0042.pdf</a></p>
<p>Questions? Write to <a href="mailto:billing@example.com">billing@example.com</a>.</p>
</td></tr></table>
</td></tr></table>
</body></html>
"""

PASSWORD_RESET = """<html><head><style>.btn{background:#06c;color:#fff}</style></head><body>
<div class="wrapper"><div class="content">
<p>Hi Bob,</p>
<p>Someone asked to reset the password of your account. If it was you, use the button below;
   the link expires in 30 minutes.</p>
<table role="presentation"><tr><td class="btn" bgcolor="#0066cc">
  <a href="https://app.example.com/reset?token=abc123" style="color:#fff;text-decoration:none">Reset my password</a>
</td></tr></table>
<p>If the button does not work, paste this link into your browser:<br>
<a href="https://app.example.com/reset?token=abc123">https://app.example.com/reset?token=abc123</a></p>
<p>If you did not ask for this, ignore this mail.</p>
<p>&mdash; The Example team</p>
</div></div>
<img src="https://t.example.com/open.gif" width="1" height="1" alt="">
</body></html>
"""

NEWSLETTER_ISSUE = """<div class="article" style="padding:12px">
  <div class="image"><a href="https://news.example.com/a/{n}"><img src="https://cdn.example.com/{n}.jpg"
     alt="Story {n} picture" width="560"></a></div>
  <div class="body"><div class="inner">
    <h2><a href="https://news.example.com/a/{n}" style="color:#222">Story number {n}: what happened this week</a></h2>
    <p style="font-family:Georgia,serif;font-size:16px;line-height:24px;color:#444">
      Lorem ipsum dolor sit amet, <em>consectetur</em> adipiscing elit. Sed do eiusmod tempor
      incididunt ut labore et <strong>dolore magna</strong> aliqua &ndash; ut enim ad minim veniam.</p>
    <ul><li>First point of story {n}</li><li>Second point, with <a href="#top">a jump</a></li></ul>
    <p><a href="https://news.example.com/a/{n}?utm_source=mail">Read more &rarr;</a></p>
  </div></div>
</div>
"""

NEWSLETTER_HEAD = """<!DOCTYPE html><html lang="en"><head>
<meta name="viewport" content="width=device-width"><title>Weekly news</title>
<style>@media (max-width:600px){ .article { padding:0 } }</style>
<!--[if mso]><style>table {border-collapse:collapse}</style><![endif]-->
</head><body>
<div style="display:none;max-height:0;overflow:hidden">This week: stories you should not miss&zwnj;&nbsp;&zwnj;&nbsp;</div>
<div class="outer"><div class="header"><img src="https://cdn.example.com/logo.png" alt="Example News"></div>
"""

NEWSLETTER_FOOT = """<div class="footer" style="font-size:12px;color:#999">
<p>You receive this because you subscribed at example.com.
<a href="https://news.example.com/unsubscribe?u=42">Unsubscribe</a> &middot;
<a href="https://news.example.com/preferences?u=42">Preferences</a></p>
<p>Example News, 1 Example Street, 10115 Berlin</p>
</div></div></body></html>
"""


def newsletter(stories: int) -> str:
    """A newsletter of ``stories`` nested-div articles (about 820 bytes each)."""
    return (
        NEWSLETTER_HEAD
        + "".join(NEWSLETTER_ISSUE.format(n=n) for n in range(1, stories + 1))
        + NEWSLETTER_FOOT
    )


NEWSLETTER = newsletter(3)
#: About 20 KB of markup.
NEWSLETTER_20K = newsletter(23)

ALERT = """<html><body>
<h2>[FIRING] Disk almost full on db-3</h2>
<p>Alert <b>DiskSpaceLow</b> fired at 2026-12-07 10:12 UTC.</p>
<pre>
host      mount   used   free
db-3      /var    94%    6.1G
db-3      /       71%    12G
</pre>
<p>Runbook: <a href="https://wiki.example.com/runbooks/disk">https://wiki.example.com/runbooks/disk</a></p>
</body></html>
"""

MARKETING = """<html><head><style type="text/css">
body{margin:0;padding:0} .hero h1{font-size:32px}</style></head>
<body bgcolor="#f4f4f4">
<span class="preheader" style="color:transparent;display:none !important;height:0;opacity:0">
  Up to 50% off, this weekend only</span>
<table width="100%" bgcolor="#f4f4f4"><tr><td>
<table class="hero" align="center" width="600" style="background:#fff"><tr>
  <td style="padding:40px 30px;text-align:center;font-family:Helvetica,Arial,sans-serif">
    <h1 style="margin:0;color:#111">Winter sale</h1>
    <p style="margin:16px 0;color:#555;font-size:18px">Up to <span style="color:#c00">50&nbsp;%</span>
      off jackets, boots &amp; more.</p>
    <a href="https://shop.example.com/sale?utm_campaign=winter" style="display:inline-block;padding:12px 24px;
      background:#c00;color:#fff;border-radius:4px"><img src="https://cdn.example.com/btn.png" alt="Shop the sale"></a>
  </td></tr>
  <tr><td style="font-size:11px;color:#999;text-align:center">
    <a href="https://shop.example.com/unsub">Unsubscribe</a>&nbsp;|&nbsp;<a href="javascript:void(0)">View online</a>
  </td></tr></table>
</td></tr></table>
<img src="https://t.example.com/px.gif" width="1" height="1">
</body></html>
"""

ORDER_SHIPPED = """<html><body>
<p>Good news, Chloé!</p>
<p>Your order <strong>#A-1009</strong> has shipped:</p>
<ol>
  <li>Coffee grinder</li>
  <li>Filter papers (×200)
    <ul><li>brown</li><li>unbleached</li></ul>
  </li>
</ol>
<blockquote>Leave it at the back door, please.</blockquote>
<p>Track it: <a href="https://track.example.com/A-1009">track.example.com/A-1009</a></p>
</body></html>
"""
