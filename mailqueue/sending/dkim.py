"""DKIM signing (RFC 6376) as a step of the sending chain, with dkimpy.

Settings (``dkim``, see :class:`~mailqueue.settings.DKIMKeySettings` and
``docs/deliverability.md``)::

    dkim:
      - {domain: example.com, selector: mq2026r, key_file: /etc/mailqueue/example.com.rsa.pem}
      - {domain: example.com, selector: mq2026e, key_file: /etc/mailqueue/example.com.ed25519,
         algorithm: ed25519-sha256}

What is signed, and how:

- **Which key**: every key whose ``domain`` is the From header's domain,
  exactly (``d=`` equals the From domain, so the signature is aligned for
  DMARC in strict and relaxed mode alike). Two keys for a domain (RSA and
  Ed25519, RFC 8463 §1) give two signatures. A mail whose From domain has no
  key goes out unsigned, logged at debug; :func:`dkim_step` warns once at
  start when the sender's own From domain has none.
- **The bytes on the wire**: the step sits inside the other steps and
  outside the account router (:data:`~mailqueue.sending.pipeline.STEPS`), so
  a failover re-sends the signed bytes and no later step changes them. It
  prepends the ``DKIM-Signature`` header(s) to :attr:`OutgoingMessage.data`
  and changes nothing else; the rendered message already has CRLF line ends
  (the SMTP sender rewrites bare CR/LF only, then dot-stuffs, which
  the receiver undoes).
- **Canonicalization** ``relaxed/relaxed``: survives the header refolding and
  trailing-space changes that relays make; no ``l=`` (a body length would
  let anyone append to the body).
- **Signed headers** (RFC 6376 §5.4): :data:`OVERSIGNED` are listed once more
  than they occur, even when absent (§5.4.2, §8.15): a From, Subject, To, ...
  added after signing breaks the signature instead of being shown to the
  reader. :data:`SIGNED_WHEN_PRESENT` are signed (and oversigned) when the
  message has them and left out otherwise, so a mailing list may add its own
  ``List-*`` headers to a mail that had none. ``List-Unsubscribe`` and
  ``List-Unsubscribe-Post`` are signed, as RFC 8058 §4 requires for one-click
  unsubscribe. Trace and other headers (``Received``, ``Return-Path``,
  ``X-*``) are not.

A message that dkimpy cannot sign (a header it cannot parse, possible only
for bytes changed by a third-party step) fails for good with
:class:`~mailqueue.errors.PermanentDeliveryError`: every attempt would
render the same bytes, and sending it unsigned is not what was asked.

Keys are loaded, checked (type, size, a trial signature) and kept by
:func:`load_key` when the chain is built, so a key that cannot be used stops
the worker at start with a :class:`~mailqueue.errors.ConfigurationError`
naming the file and the domain.

Cost, measured with dkimpy 1.1.8 on the 2-core development machine: an
RSA-2048 signature takes 16-25 ms (dkimpy computes RSA in Python), Ed25519
under 1 ms, and the relaxed body hash about 60 ms per MB. Each signer signs
in one thread of its own, one message at a time: the GIL stays held during
the RSA computation and the body regexes, so more threads would sign no
faster and would hold up the event loop longer (8 concurrent RSA sends of
3 KB: loop delays up to 176 ms with the default thread pool, 47 ms with
one thread; 70 mails/s either way). With RSA keys a worker process signs at
most about 40-70 mails/s: run more worker processes for more.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mailqueue.errors import ConfigurationError, MissingDependencyError, PermanentDeliveryError
from mailqueue.protocols import OutgoingMessage, Sender, SendResult
from mailqueue.sending.step import SendingStep
from mailqueue.settings import DKIMKeySettings, Settings

__all__ = [
    "OVERSIGNED",
    "SIGNED_WHEN_PRESENT",
    "DKIMKey",
    "DKIMSigner",
    "dkim_step",
    "from_domain",
    "load_key",
    "signed_headers",
]

logger = logging.getLogger("mailqueue.dkim")

#: Signed once more than they occur, also when absent: adding one breaks the signature.
OVERSIGNED = (
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
)
#: Signed once more than they occur when the message has them; left out when absent.
SIGNED_WHEN_PRESENT = (
    "in-reply-to",
    "references",
    "sender",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
)

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

# PKCS#8 (RFC 5958) of an Ed25519 key (RFC 8410): this prefix, then the 32-byte seed
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")
_RSA_OID = bytes.fromhex("06092a864886f70d010101")  # rsaEncryption
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_HEADER_NAME_RE = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_MIN_RSA_BITS = 1024  # RFC 8301 §3.2: verifiers must not accept less
# what the trial signature signs when a key is loaded
_PROBE = b"From: probe@example.com\r\nSubject: probe\r\n\r\nprobe\r\n"


@dataclass(frozen=True, slots=True)
class DKIMKey:
    """A loaded signing key. Build it with :func:`load_key`.

    Attributes:
        domain: the signing domain (``d=``), lower case ASCII.
        selector: the selector (``s=``).
        algorithm: ``rsa-sha256`` or ``ed25519-sha256``.
        private_key: the key as dkimpy takes it (PEM for RSA, the base64 seed for Ed25519).
        bits: the RSA modulus size; 256 for Ed25519.
        source: the file it was read from (for messages).
    """

    domain: str
    selector: str
    algorithm: Algorithm
    private_key: bytes
    bits: int
    source: str = ""

    def __repr__(self) -> str:  # never the key itself
        return f"DKIMKey(domain={self.domain!r}, selector={self.selector!r}, algorithm={self.algorithm!r})"


def _dkimpy() -> Any:
    try:
        import dkim  # type: ignore[import-untyped]
    except ImportError:
        raise MissingDependencyError("dkimpy", "dkim") from None
    return dkim


def _key_material(raw: bytes) -> tuple[str, bytes]:
    """``("rsa", PEM)`` or ``("ed25519", base64 seed)`` from a key file's bytes.

    Raises:
        ValueError: not a private key in a form this reads (the reason).
    """
    text = raw.replace(b"\r\n", b"\n").strip()
    match = _PEM_RE.search(text)
    if match is None:
        try:
            seed = base64.b64decode(b"".join(text.split()), validate=True)
        except binascii.Error:
            seed = b""
        if len(seed) == 32:  # dknewkey --ktype ed25519
            return "ed25519", base64.b64encode(seed)
        raise ValueError("holds no PEM private key and no base64 Ed25519 seed (the dknewkey format)")
    label = match.group(1).decode()
    if label == "RSA PRIVATE KEY":
        if b"ENCRYPTED" in match.group(2):
            raise ValueError("holds an encrypted key; decrypt it with: openssl pkey -in FILE -out FILE")
        return "rsa", match.group(0) + b"\n"
    if label == "ENCRYPTED PRIVATE KEY":
        raise ValueError("holds an encrypted key; decrypt it with: openssl pkey -in FILE -out FILE")
    if label == "PUBLIC KEY":
        raise ValueError("holds a public key; key_file must be the private key")
    if label != "PRIVATE KEY":
        raise ValueError(f"holds a PEM {label!r} block; DKIM signs with RSA or Ed25519 private keys")
    try:
        der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
    except binascii.Error:
        raise ValueError("holds a PEM block that is not base64") from None
    if len(der) == 48 and der.startswith(_ED25519_PKCS8):
        return "ed25519", base64.b64encode(der[16:])
    if _RSA_OID in der[:32]:
        # dkimpy reads PKCS#8 RSA keys in PEM form with LF line ends
        return "rsa", match.group(0) + b"\n"
    raise ValueError("holds a private key that is neither RSA nor Ed25519")


def load_key(entry: DKIMKeySettings) -> DKIMKey:
    """Read, check and keep the key of one ``dkim`` entry.

    The key must be of the entry's algorithm, an RSA key at least 1024 bits
    (RFC 8301), and it must sign a trial message.

    Raises:
        ConfigurationError: the file cannot be read, holds no usable key, or a key of
            the other algorithm; the message names the file and the domain.
        MissingDependencyError: dkimpy (or pynacl, for Ed25519) is not installed.
    """
    dkim = _dkimpy()
    where = f"DKIM key file {str(entry.key_file)!r} (domain {entry.domain}, selector {entry.selector})"
    try:
        raw = Path(entry.key_file).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        kind, material = _key_material(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{where} {exc}") from None
    wanted = "rsa" if entry.algorithm == "rsa-sha256" else "ed25519"
    if kind != wanted:
        other = "rsa-sha256" if kind == "rsa" else "ed25519-sha256"
        raise ConfigurationError(
            f"{where} holds an {'RSA' if kind == 'rsa' else 'Ed25519'} key, but its algorithm is "
            f"{entry.algorithm}; say algorithm: {other}, or give a key of that kind"
        )
    bits = 256
    if kind == "ed25519":
        try:
            import nacl.signing  # noqa: F401  (dkimpy signs Ed25519 with it)
        except ImportError:
            raise MissingDependencyError("pynacl", "dkim") from None
    else:
        from dkim.crypto import UnparsableKeyError, parse_pem_private_key  # type: ignore[import-untyped]

        try:
            bits = int(parse_pem_private_key(material)["modulus"]).bit_length()
        except (UnparsableKeyError, ValueError, IndexError, KeyError, TypeError) as exc:
            raise ConfigurationError(f"{where} holds an RSA key that cannot be read: {exc}") from None
        if bits < _MIN_RSA_BITS:
            raise ConfigurationError(
                f"{where} holds a {bits}-bit RSA key; receivers ignore signatures of keys under "
                f"{_MIN_RSA_BITS} bits (RFC 8301), use 2048"
            )
    key = DKIMKey(entry.domain, entry.selector, entry.algorithm, material, bits, str(entry.key_file))
    try:
        _signature(key, _PROBE, ["from"], dkim)
    except dkim.DKIMException as exc:
        raise ConfigurationError(f"{where} cannot sign: {exc}") from None
    return key


def _signature(key: DKIMKey, data: bytes, names: Sequence[str], dkim: Any) -> bytes:
    signature: bytes = dkim.sign(
        data,
        key.selector.encode("ascii"),
        key.domain.encode("ascii"),
        key.private_key,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=key.algorithm.encode("ascii"),
        include_headers=[name.encode("ascii") for name in names],
        linesep=b"\r\n",
    )
    return signature


def _header_fields(data: bytes) -> list[tuple[str, bytes]]:
    """The message's header fields: (lower-case name, unfolded value), in order."""
    end = data.find(b"\r\n\r\n")
    block = data if end < 0 else data[: end + 2]
    fields: list[tuple[str, bytes]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + line)
            continue
        match = _HEADER_NAME_RE.match(line)
        if match is not None:
            fields.append((match.group(1).decode("ascii").lower(), line[match.end() :]))
    return fields


def signed_headers(fields: Sequence[tuple[str, bytes]]) -> list[str]:
    """The ``h=`` list for a message with these header fields (see the module docs)."""
    counts: dict[str, int] = {}
    for name, _ in fields:
        counts[name] = counts.get(name, 0) + 1
    names: list[str] = []
    for name in OVERSIGNED:
        names += [name] * (counts.get(name, 0) + 1)
    for name in SIGNED_WHEN_PRESENT:
        if name in counts:
            names += [name] * (counts[name] + 1)
    return names


def from_domain(fields: Sequence[tuple[str, bytes]]) -> str | None:
    """The domain of the one address in the one From header, lower case; ``None`` if the
    message has no such From."""
    values = [value for name, value in fields if name == "from"]
    if len(values) != 1:
        return None
    addresses = email.utils.getaddresses([values[0].decode("ascii", "replace")])
    if len(addresses) != 1 or "@" not in addresses[0][1]:
        return None
    return addresses[0][1].rpartition("@")[2].rstrip(".").lower()


class DKIMSigner(SendingStep):
    """Signs each message with the keys of its From domain, then hands it to ``inner``.

    Args:
        inner: the Sender that gets the signed message.
        keys: loaded keys (:func:`load_key`); several for one domain give several signatures.
    """

    def __init__(self, inner: Sender, keys: Sequence[DKIMKey]) -> None:
        super().__init__(inner)
        self._dkim = _dkimpy()
        self._thread: ThreadPoolExecutor | None = None
        self.keys: dict[str, list[DKIMKey]] = {}
        for key in keys:
            self.keys.setdefault(key.domain, []).append(key)

    async def close(self) -> None:
        """Close ``inner`` and stop the signing thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)
        await super().close()

    def sign(self, data: bytes) -> bytes:
        """``data`` with a ``DKIM-Signature`` header before it for each key of its From
        domain (the first listed on top); ``data`` itself when there is none.

        Raises:
            dkim.DKIMException: the message cannot be signed (a header dkimpy cannot parse).
        """
        fields = _header_fields(data)
        domain = from_domain(fields)
        keys = self.keys.get(domain or "", [])
        if not keys:
            return data
        names = signed_headers(fields)
        return b"".join([_signature(key, data, names, self._dkim) for key in keys]) + data

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Sign ``message`` (in the signing thread) and send it through ``inner``.

        Raises:
            PermanentDeliveryError: dkimpy cannot sign the message (it cannot parse a
                header); the same message would fail again, so it is not retried.
        """
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="mailqueue-dkim")
        try:
            signed = await asyncio.get_running_loop().run_in_executor(self._thread, self.sign, message.data)
        except self._dkim.DKIMException as exc:
            raise PermanentDeliveryError(f"DKIM signing failed: {exc}") from exc
        if signed is message.data:
            logger.debug("mail id=%s not DKIM-signed: no key for its From domain", message.mail_id)
            return await self.inner.send(message)
        return await self.inner.send(replace(message, data=signed))


def dkim_step(inner: Sender, settings: Settings) -> Sender:
    """The :data:`~mailqueue.sending.pipeline.STEPS` entry: a :class:`DKIMSigner` with the
    keys of ``settings.dkim`` around ``inner``, or ``inner`` itself when there are none.

    Raises:
        ConfigurationError: a key cannot be used (see :func:`load_key`).
    """
    if not settings.dkim:
        return inner
    keys = [load_key(entry) for entry in settings.dkim]
    for key in keys:
        logger.info(
            "DKIM: signing mail from %s with selector %s (%s, %d bits)",
            key.domain,
            key.selector,
            key.algorithm,
            key.bits,
        )
    own = inner.from_address.rpartition("@")[2].lower()
    if own not in {key.domain for key in keys}:
        logger.warning(
            "DKIM: no key for %s, the sender's From domain: its mail goes out unsigned (keys for: %s)",
            own,
            ", ".join(sorted({key.domain for key in keys})),
        )
    return DKIMSigner(inner, keys)
