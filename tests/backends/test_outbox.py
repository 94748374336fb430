"""OutboxSender: .eml files and .json envelopes written atomically to a folder."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mailqueue.backends import outbox as outbox_module
from mailqueue.backends.outbox import DEFAULT_FROM, OutboxSender
from mailqueue.errors import ConfigurationError, PermanentDeliveryError, TransientDeliveryError
from mailqueue.protocols import OutgoingMessage, Sender
from mailqueue.testing.options import assert_unknown_option_refused

DATA = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\n.dot line\r\nno final newline"


def message(mail_id: str = "0190abc", data: bytes = DATA) -> OutgoingMessage:
    return OutgoingMessage(
        mail_id=mail_id,
        data=data,
        envelope_from="bounce@example.com",
        recipients=("b@example.com", "hidden-bcc@example.com", "b@example.com"),
    )


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_from_url_relative_and_absolute(tmp_path: Path) -> None:
    relative = OutboxSender.from_url("outbox://./outbox")
    assert relative.path == Path("./outbox")
    assert relative.from_address == DEFAULT_FROM
    nested = OutboxSender.from_url("outbox://./var/mail%20box?from=noreply@example.com")
    assert nested.path == Path("./var/mail box")
    assert nested.from_address == "noreply@example.com"
    absolute = OutboxSender.from_url(f"outbox://{tmp_path}/box")
    assert absolute.path == tmp_path / "box"
    assert isinstance(absolute, Sender)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("outbox://", "no folder"),
        ("outbox://./x?colour=red", "'colour'"),
        ("outbox://./x?from=nobody", "from address"),
        ("outbox://./x?from=a@example.com&from=b@example.com", "twice"),
        ("file:///tmp/x", "scheme"),
    ],
)
def test_from_url_errors(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        OutboxSender.from_url(url)


def test_unknown_option_refused_with_the_valid_ones_listed(tmp_path: Path) -> None:
    assert_unknown_option_refused(OutboxSender, f"outbox://{tmp_path}/box?from=a@example.com")


async def test_relative_path_resolves_against_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with OutboxSender.from_url("outbox://./out/sub") as outbox:
        await outbox.send(message())
    assert (tmp_path / "out" / "sub" / "0190abc.eml").read_bytes() == DATA


async def test_writes_exact_bytes_and_envelope(tmp_path: Path, naming: str) -> None:
    folder = tmp_path / "outbox"
    async with OutboxSender(path=folder) as outbox:
        assert folder.is_dir()
        result = await outbox.send(message())
    assert list(result.replies) == ["b@example.com", "hidden-bcc@example.com"]
    assert result.accepted == ["b@example.com", "hidden-bcc@example.com"]
    assert {reply.code for reply in result.replies.values()} == {250}
    assert (folder / "0190abc.eml").read_bytes() == DATA
    envelope = json.loads((folder / "0190abc.json").read_text())
    assert envelope["mail_id"] == "0190abc"
    assert envelope["envelope_from"] == "bounce@example.com"
    assert envelope["recipients"] == ["b@example.com", "hidden-bcc@example.com"]
    assert envelope["size"] == len(DATA)
    assert datetime.fromisoformat(envelope["written_at"]).tzinfo is not None
    assert names(folder) == ["0190abc.eml", "0190abc.json"]


async def test_replaces_on_resend(tmp_path: Path, naming: str) -> None:
    async with OutboxSender(path=tmp_path) as outbox:
        await outbox.send(message(data=b"first\r\n"))
        await outbox.send(message(data=b"second\r\n"))
    assert (tmp_path / "0190abc.eml").read_bytes() == b"second\r\n"
    assert names(tmp_path) == ["0190abc.eml", "0190abc.json"]


async def test_concurrent_sends_of_different_mails(tmp_path: Path, naming: str) -> None:
    big = b"Subject: big\r\n\r\n" + os.urandom(3 * 1024 * 1024)
    small = b"Subject: small\r\n\r\nhello\r\n"
    async with OutboxSender(path=tmp_path) as outbox:
        await asyncio.gather(outbox.send(message("big-one", big)), outbox.send(message("small-one", small)))
    assert (tmp_path / "big-one.eml").read_bytes() == big
    assert (tmp_path / "small-one.eml").read_bytes() == small
    assert json.loads((tmp_path / "big-one.json").read_text())["size"] == len(big)
    assert names(tmp_path) == ["big-one.eml", "big-one.json", "small-one.eml", "small-one.json"]


async def test_file_appears_atomically(tmp_path: Path, naming: str) -> None:
    """A reader polling the folder never sees a partial .eml or an .eml without its .json."""
    data = b"Subject: big\r\n\r\n" + b"y" * (8 * 1024 * 1024)
    target = tmp_path / "m-atomic.eml"
    seen: list[tuple[int, bool]] = []
    done = False

    def watch() -> None:
        while not done:
            try:
                size = target.stat().st_size
            except FileNotFoundError:
                continue
            seen.append((size, (tmp_path / "m-atomic.json").exists()))

    async with OutboxSender(path=tmp_path) as outbox:
        watcher = asyncio.create_task(asyncio.to_thread(watch))
        await outbox.send(message("m-atomic", data))
        await asyncio.sleep(0.01)
        done = True
        await watcher
    assert seen, "the watcher never saw the file"
    assert all(size == len(data) and has_envelope for size, has_envelope in seen)
    assert not [name for name in names(tmp_path) if name.startswith(".")]


@pytest.mark.parametrize("mail_id", ["../escape", "a/b", ".hidden", "", "x" * 200])
async def test_unsafe_mail_id_is_refused(tmp_path: Path, mail_id: str) -> None:
    async with OutboxSender(path=tmp_path / "box") as outbox:
        with pytest.raises(PermanentDeliveryError):
            await outbox.send(message(mail_id))
    assert names(tmp_path / "box") == []
    assert names(tmp_path) == ["box"]


async def test_unwritable_folder_is_transient(tmp_path: Path, naming: str) -> None:
    folder = tmp_path / "box"
    async with OutboxSender(path=folder) as outbox:
        folder.rmdir()
        folder.write_text("now a file, not a folder")
        with pytest.raises(TransientDeliveryError):
            await outbox.send(message())


async def test_folder_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigurationError):
        await OutboxSender(path=tmp_path / "file" / "box").open()


async def test_send_requires_open(tmp_path: Path) -> None:
    outbox = OutboxSender(path=tmp_path)
    with pytest.raises(RuntimeError):
        await outbox.send(message())
    await outbox.close()
    await outbox.close()


@pytest.fixture(params=["unnamed", "renamed"])
def naming(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How files get their names: ``unnamed`` (Linux ``O_TMPFILE`` + link) or ``renamed``
    (a hidden temporary file renamed, as on a system without ``O_TMPFILE``)."""
    if request.param == "renamed":
        monkeypatch.setattr(outbox_module, "_O_TMPFILE", None)
    elif getattr(os, "O_TMPFILE", None) is None:
        pytest.skip("no O_TMPFILE on this system")
    return str(request.param)


async def test_concurrent_sends_share_folder_fsyncs_and_return_only_when_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, naming: str
) -> None:
    """Each send returns after a folder fsync that began after its files got their names;
    concurrent sends share them; each file is fsync'ed before it gets its name."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd: int) -> None:
        folder = stat.S_ISDIR(os.fstat(fd).st_mode)
        events.append(("folder sync" if folder else "file sync", ""))
        real_fsync(fd)
        if folder:
            events.append(("folder synced", ""))

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        events.append(("named", Path(dst).name))

    def link(src: str, dst: str, **kwargs: Any) -> None:
        real_link(src, dst, **kwargs)
        if not dst.startswith("."):
            events.append(("named", dst))

    # spies that note the order of the real system calls
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    count = 40
    async with OutboxSender(path=tmp_path) as outbox:

        async def send(n: int) -> None:
            await outbox.send(message(f"m{n}"))
            events.append(("returned", f"m{n}"))

        await asyncio.gather(*(send(n) for n in range(count)))
    assert names(tmp_path) == sorted(f"m{n}.{ext}" for n in range(count) for ext in ("eml", "json"))
    assert events.count(("file sync", "")) == 2 * count
    folder_syncs = events.count(("folder sync", ""))
    assert 1 <= folder_syncs < count
    assert sum(1 for e in events if e[0] == "named") == 2 * count
    # the first file gets its name only once it (and its envelope) are on disk
    assert events.index(("file sync", "")) < [e[0] for e in events].index("named")
    for n in range(count):
        renamed = events.index(("named", f"m{n}.eml"))
        assert events.index(("named", f"m{n}.json")) < renamed
        returned = events.index(("returned", f"m{n}"))
        began = [i for i, e in enumerate(events) if e[0] == "folder sync" and renamed < i < returned]
        ended = [
            i for i, e in enumerate(events) if e[0] == "folder synced" and began and began[0] < i < returned
        ]
        assert ended, f"m{n} returned before a folder fsync after its renames ended"


async def test_unnamed_files_are_linked_in_where_the_system_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Linux no temporary name ever appears in the folder: the files are linked in complete."""
    if getattr(os, "O_TMPFILE", None) is None:
        pytest.skip("no O_TMPFILE on this system")
    created: list[str] = []
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            created.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    async with OutboxSender(path=tmp_path) as outbox:
        await outbox.send(message("m1"))
        await outbox.send(message("m1", b"again\r\n"))  # replaces: linked beside, then renamed over
    assert created == []
    assert (tmp_path / "m1.eml").read_bytes() == b"again\r\n"
    assert names(tmp_path) == ["m1.eml", "m1.json"]
    assert stat.S_IMODE((tmp_path / "m1.eml").stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize(
    "recipients",
    [("b@example.com",), ("b@example.com", "zoë@exämple.com", "c@example.com"), ()],
)
async def test_envelope_is_the_indented_json_it_always_was(
    tmp_path: Path, recipients: tuple[str, ...]
) -> None:
    async with OutboxSender(path=tmp_path) as outbox:
        await outbox.send(
            OutgoingMessage(
                mail_id="m1", data=DATA, envelope_from="bounce@example.com", recipients=recipients
            )
        )
    text = (tmp_path / "m1.json").read_text(encoding="utf-8")
    envelope = json.loads(text)
    assert text == json.dumps(envelope, ensure_ascii=False, indent=2) + "\n"
    assert list(envelope) == ["mail_id", "envelope_from", "recipients", "size", "written_at"]
    assert envelope["recipients"] == list(recipients)
