"""A real Postfix of its own for a test: its own config, queue and log under a temporary directory.

:func:`ensure_postfix` installs Debian's ``postfix`` package when it is missing
(as root, with ``apt-get``; "No configuration" preseeded, so the machine's own
mail setup is left alone). :class:`PostfixInstance` writes a ``main.cf`` and a
``master.cf`` into its directory and runs ``postfix -c <dir> start``: SMTP on
``127.0.0.1:<port>``, ``example.net`` delivered locally (any local part is
accepted at RCPT, and the local delivery agent bounces the ones that are no
user: ``5.1.1 unknown user``), and mail for the bounce domain relayed to the
listener by a transport map.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
#: Local destination of the test instance: mailboxes that do not exist bounce.
LOCAL_DOMAIN = "example.net"

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.example.com
mydomain = example.com
myorigin = example.com
mydestination = {local_domain}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# accept any local part at RCPT: the local delivery agent bounces unknown users later
local_recipient_maps =
alias_maps =
alias_database =
# a mailbox that does exist (a system user) is written here, never into the machine's /var/mail
mail_spool_directory = {root}/mail
transport_maps = inline:{{ {bounce_domain}=smtp:[127.0.0.1]:{listener_port} }}
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
smtputf8_enable = no
biff = no
# retry a deferred report (the listener answered 451) quickly
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 4s
"""


class PostfixUnavailable(Exception):
    """Postfix is not installed and cannot be, or does not start."""


def ensure_postfix() -> None:
    """Install Debian's ``postfix`` package if ``postfix`` is missing.

    Raises:
        PostfixUnavailable: missing and not installable here (not root, no apt-get, apt failed).
    """
    if Path(POSTFIX).exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PostfixUnavailable("postfix is not installed and this is not a root Debian/Ubuntu machine")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    selections = "postfix postfix/main_mailer_type select No configuration\n"
    steps = [
        (["debconf-set-selections"], selections),
        (["apt-get", "install", "-y", "-q", "--no-install-recommends", "postfix"], None),
    ]
    for argv, stdin in steps:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0 and argv[0] == "apt-get":
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise PostfixUnavailable(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    if not Path(POSTFIX).exists():
        raise PostfixUnavailable("apt-get install postfix did not install /usr/sbin/postfix")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostfixInstance:
    """A Postfix with its own configuration directory (``postfix -c``), started and stopped."""

    def __init__(self, *, bounce_domain: str, listener_port: int) -> None:
        # not under pytest's tmp_path: the postfix user must be able to reach the directories
        self.root = Path(tempfile.mkdtemp(prefix="mailqueue-postfix-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.config = self.root / "etc"
        self.config.mkdir()
        (self.root / "spool").mkdir()
        (self.root / "data").mkdir()
        (self.root / "mail").mkdir(mode=0o1777)
        (self.root / "mail").chmod(0o1777)
        shutil.chown(self.root / "data", "postfix")
        (self.config / "main.cf").write_text(
            _MAIN_CF.format(
                root=self.root,
                local_domain=LOCAL_DOMAIN,
                bounce_domain=bounce_domain,
                listener_port=listener_port,
            )
        )
        (self.config / "master.cf").write_text(_MASTER_CF.format(port=self.port))

    @property
    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def _postfix(self, command: str) -> subprocess.CompletedProcess[str]:
        # postfix reports its errors on stderr only when that is a terminal: the log file has them
        return subprocess.run(
            [POSTFIX, "-c", str(self.config), command], capture_output=True, text=True, check=False
        )

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait until its SMTP port answers.

        Raises:
            PostfixUnavailable: it did not start (the message holds its log).
        """
        done = self._postfix("start")
        if done.returncode != 0:
            raise PostfixUnavailable(f"postfix start failed ({done.returncode}): {done.stderr}\n{self.log}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise PostfixUnavailable(f"postfix did not listen on {self.port} within {timeout} s\n{self.log}")

    def stop(self) -> None:
        """Stop it (``postfix stop``, then ``abort`` if that fails) and remove its directory."""
        if self._postfix("stop").returncode != 0:
            self._postfix("abort")
        shutil.rmtree(self.root, ignore_errors=True)
