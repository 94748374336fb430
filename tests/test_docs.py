"""The documentation site: the generated settings reference and the examples on its pages."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType

import click
import pytest
import yaml
from pydantic import BaseModel

from mailqueue import registry
from mailqueue.cli import main as cli_main
from mailqueue.protocols import BackendContext
from mailqueue.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def _load_script(name: str) -> ModuleType:
    path = ROOT / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


reference = _load_script("settings_reference")


def _keys(model: type[BaseModel], prefix: str = "") -> list[tuple[type[BaseModel], str, str]]:
    """(model, field name, dotted key) of every field, nested models and list items included."""
    found = []
    for name, info in model.model_fields.items():
        key = prefix + name
        found.append((model, name, key))
        annotation = info.annotation
        if typing.get_origin(annotation) is list:
            (item,) = typing.get_args(annotation)
            if isinstance(item, type) and issubclass(item, BaseModel):
                found.extend(_keys(item, key + "[]."))
        elif typing.get_origin(annotation) is dict:
            item = typing.get_args(annotation)[1]
            if isinstance(item, type) and issubclass(item, BaseModel):
                found.extend(_keys(item, key + ".<name>."))
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(_keys(annotation, key + "."))
    return found


def test_the_reference_has_a_row_for_every_setting() -> None:
    rendered = reference.render()
    keys = _keys(Settings)
    assert len(keys) > 50
    missing = [key for _, _, key in keys if f"| `{key}` |" not in rendered]
    assert missing == []


def test_every_setting_has_a_description() -> None:
    undocumented = [
        key for model, name, key in _keys(Settings) if not reference.field_docs(model).get(name, "").strip()
    ]
    assert undocumented == []


def test_the_reference_shows_defaults_and_environment_names() -> None:
    rendered = reference.render()
    assert (
        "| `worker.concurrency` | integer (≥ 1, ≤ 1000) | `8` | `MAILQUEUE_WORKER__CONCURRENCY` |" in rendered
    )
    assert "| `store` | string (secret) | `sqlite+aiosqlite:///./mailqueue.db` |" in rendered
    assert "`MAILQUEUE_WORKER__THROTTLE__BREAKER_COOLDOWN`" in rendered


def test_the_committed_configuration_page_is_up_to_date() -> None:
    page = reference.PAGE.read_text(encoding="utf-8")
    assert reference.updated(page) == page, "run: .venv/bin/python scripts/settings_reference.py"


def _settings_examples() -> list[tuple[str, str]]:
    """Every YAML block of the docs whose keys are mailqueue settings, as (page:block number, text)."""
    found = []
    for path in sorted((ROOT / "docs").rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        for number, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.S)):
            data = yaml.safe_load(block)
            keys = set(data) if isinstance(data, dict) else set()
            if keys & set(Settings.model_fields) or not keys:
                found.append((f"{path.relative_to(ROOT / 'docs')}:{number}", block))
    return found


EXAMPLES = _settings_examples()


def test_the_docs_have_settings_examples() -> None:
    assert len(EXAMPLES) >= 7


@pytest.mark.parametrize(("where", "block"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_every_settings_example_loads_and_its_backends_build(
    where: str, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys, values and every backend URL (scheme and query options) of the example are valid."""
    for name in [n for n in os.environ if n.startswith("MAILQUEUE_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "example.yaml"
    path.write_text(block, encoding="utf-8")
    settings = load_settings(path)
    store = registry.create_store(settings.store.get_secret_value())
    context = BackendContext(store=store)
    registry.create_queue(settings.queue.get_secret_value(), context=context)
    registry.create_attachment_store(settings.attachments.get_secret_value(), context=context)
    for url in [settings.sender, *(account.url for account in settings.senders)]:
        registry.create_sender(url.get_secret_value(), context=context)


# --- the benchmark results page (docs_hooks/benchmarks.py) ----------------------------------------

# a 1x1 PNG
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def _build_site(tmp_path: Path, results: str | None, files: dict[str, bytes] | None = None) -> Path:
    """Build the real site with --strict from a copy of the project, with these benchmark results."""
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copytree(ROOT / "docs_hooks", project / "docs_hooks")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    bench = project / "benchmarks"
    bench.mkdir()
    if results is not None:
        (bench / "RESULTS.md").write_text(results, encoding="utf-8")
    for name, data in (files or {}).items():
        (bench / name).write_bytes(data)
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return site


@pytest.mark.slow
def test_without_results_the_benchmarks_page_says_so(tmp_path: Path) -> None:
    site = _build_site(tmp_path, None)
    assert "No results committed yet" in (site / "benchmarks" / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_results_and_their_chart_are_published(tmp_path: Path) -> None:
    results = (
        "# Benchmark results\n\nWorker: 1234 mails/s.\n\n"
        "![throughput vs concurrency](worker-concurrency.png)\n\n"
        "Raw numbers: [results.json](results.json).\n"
    )
    files = {"worker-concurrency.png": PNG, "api-latency.png": PNG, "results.json": b"{}", "run.py": b""}
    site = _build_site(tmp_path, results, files)
    page = site / "benchmarks" / "index.html"
    html = page.read_text(encoding="utf-8")
    assert "1234 mails/s" in html
    for src in re.findall(r'<img[^>]*src="([^"]+)"', html) + re.findall(r'href="([^"#]+\.json)"', html):
        assert (page.parent / src).resolve().is_file(), src
    assert (site / "worker-concurrency.png").read_bytes() == PNG
    assert (site / "api-latency.png").is_file()  # every chart, linked or not
    assert not (site / "run.py").exists()  # only what the page links to, and images


# --- the conformance examples of writing-a-backend.md ---------------------------------------------

# The page's plugins are hypothetical; these stand-ins let its examples run as they are written.
STAND_INS = {
    "mailqueue_redis": (
        "from mailqueue.backends.memory import MemoryQueue\n"
        "class RedisQueue(MemoryQueue):\n"
        "    @classmethod\n"
        "    def from_url(cls, url, *, context):\n"
        "        return cls()\n"
    ),
    "mailqueue_mongo": (
        "from mailqueue.stores.memory import MemoryStore\n"
        "class MongoStore(MemoryStore):\n"
        "    @classmethod\n"
        "    def from_url(cls, url, *, context=None):\n"
        "        return cls()\n"
    ),
    "mailqueue_s3": (
        "from mailqueue.stores.memory import MemoryAttachmentStore\n"
        "class S3AttachmentStore(MemoryAttachmentStore):\n"
        "    @classmethod\n"
        "    def from_url(cls, url, *, context=None):\n"
        "        return cls()\n"
    ),
    "mailqueue_fancysmtp": "from mailqueue.backends.smtp import SMTPSender as FancySMTPSender\n",
}


@pytest.mark.slow
def test_the_conformance_examples_of_writing_a_backend_run(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "writing-a-backend.md").read_text(encoding="utf-8")
    blocks = [
        block for block in re.findall(r"```python\n(.*?)```", page, re.S) if "mailqueue.testing" in block
    ]
    assert len(blocks) == 3
    for name, source in STAND_INS.items():
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    for number, block in enumerate(blocks):
        (tmp_path / f"test_example{number}.py").write_text(block, encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 90, summary


# --- command lines on the pages -------------------------------------------------------------------

_COMMAND_LINE = re.compile(r"mailqueue((?: [a-z]+)+)((?: +[^\s`|]+)*)")


def _flags_in_docs() -> list[tuple[str, tuple[str, ...], str]]:
    """(page, command path, flag) of every ``mailqueue <command> ... --flag`` on the pages and README."""
    found = []
    for path in [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]:
        for line in path.read_text(encoding="utf-8").splitlines():
            for match in _COMMAND_LINE.finditer(line):
                words = match.group(1).split()
                if words[0] not in cli_main.commands:
                    continue
                command: tuple[str, ...] = (words[0],)
                group = cli_main.commands[words[0]]
                if isinstance(group, click.Group) and len(words) > 1 and words[1] in group.commands:
                    command = (words[0], words[1])
                rest = " ".join(words[len(command) :]) + match.group(2)
                for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", rest):
                    found.append((path.name, command, flag))
    return found


def test_every_command_line_flag_in_the_docs_exists() -> None:
    flags = _flags_in_docs()
    assert len(flags) > 30
    unknown = []
    for page, path, flag in flags:
        command: click.Command = cli_main
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        known = {"--help", "-h"}
        for param in command.params:
            known.update(getattr(param, "opts", []), getattr(param, "secondary_opts", []))
        if flag not in known:
            unknown.append((page, " ".join(path), flag))
    assert unknown == []


# --- the README's examples ------------------------------------------------------------------------

_IDEMPOTENCY_KEY = re.compile(r"Idempotency-Key: ([^'\"\s]+)|idempotency_key=\"([^\"]+)\"")


def test_each_readme_example_has_its_own_idempotency_key() -> None:
    """Followed in order, an example reusing an earlier key would print the earlier mail and send nothing."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:sh|python)\n(.*?)```", readme, re.S)
    keys = [a or b for block in blocks for a, b in _IDEMPOTENCY_KEY.findall(block)]
    assert len(keys) >= 2
    assert len(set(keys)) == len(keys), keys


# --- the site speaks to its readers ---------------------------------------------------------------

#: How the project's own work shows up in text: issue numbers, who ran what ("the lead", a helper's
#: session, the brief). Words such as "session" or "issue" alone have legitimate uses on the pages.
_PROJECT_INTERNAL = re.compile(
    r"\bissues? #?\d+\b|\b(?:by|from|to|for) the lead\b|\blead engineer\b|\bfounding engineers?\b"
    r"|\bhelper(?:'s)? sessions?\b|\bthe brief\b",
    re.I,
)


def _site_sources() -> list[Path]:
    """The site's pages: docs/ and the benchmark results (report.py copies LIMITS.md into them)."""
    return [
        *sorted((ROOT / "docs").rglob("*.md")),
        ROOT / "benchmarks" / "RESULTS.md",
        ROOT / "benchmarks" / "LIMITS.md",
    ]


def test_the_site_does_not_speak_of_the_projects_own_work() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {match.group()}"
        for path in _site_sources()
        if path.is_file()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for match in _PROJECT_INTERNAL.finditer(line)
    ]
    assert found == []


def test_the_project_internal_pattern_catches_what_it_should() -> None:
    flagged = ["## Targets (issue 6)", "final run by the lead on a machine", "see issue #12"]
    legit = ["the session cookie", "a known issue of RabbitMQ", "the leader of the group", "lead time"]
    assert all(_PROJECT_INTERNAL.search(text) for text in flagged)
    assert not any(_PROJECT_INTERNAL.search(text) for text in legit)
