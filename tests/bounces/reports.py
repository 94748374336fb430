"""Bounce and complaint reports as MTAs and mailbox providers write them."""

from __future__ import annotations


def dsn(
    to: str,
    recipient: str,
    *,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    report_type: str = "delivery-status",
) -> bytes:
    """An RFC 3464 DSN to ``to`` (the return path) about ``recipient``, as Postfix writes one."""
    diagnostic = diagnostic.format(rcpt=recipient)
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={report_type}; boundary="B0"\r\n'
        "\r\n"
        "--B0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n"
        "\r\n"
        "--B0\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n"
        "Arrival-Date: Mon,  7 Dec 2026 09:00:00 +0000 (UTC)\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Original-Recipient: rfc822;{recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: {diagnostic}\r\n"
        "\r\n"
        "--B0\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"Return-Path: <{to}>\r\n"
        "Subject: hello\r\n"
        "\r\n"
        "--B0--\r\n"
    ).encode()


def arf(to: str, recipient: str, *, feedback_type: str = "abuse", original_mail_from: str = "") -> bytes:
    """An RFC 5965 feedback report (a complaint) about a mail to ``recipient``."""
    mail_from = f"Original-Mail-From: <{original_mail_from}>\r\n" if original_mail_from else ""
    return (
        "From: feedback@provider.example.net\r\n"
        f"To: {to}\r\n"
        "Subject: FW: hello\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="F0"\r\n'
        "\r\n"
        "--F0\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "This is an email abuse report.\r\n"
        "--F0\r\n"
        "Content-Type: message/feedback-report\r\n"
        "\r\n"
        f"Feedback-Type: {feedback_type}\r\n"
        "User-Agent: SomeGenerator/1.0\r\n"
        "Version: 1\r\n"
        f"{mail_from}"
        f"Original-Rcpt-To: <{recipient}>\r\n"
        "\r\n"
        "--F0\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        "Subject: hello\r\n"
        "\r\n"
        "--F0--\r\n"
    ).encode()
