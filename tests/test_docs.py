"""The documentation's examples run, and say so when they cannot.

Every fenced ``python`` block in ``docs/**/*.md`` and ``README.md`` is executed;
the blocks of one page share a namespace and run in page order, so a page reads
as one program. Fenced ``pycon`` blocks (``>>>`` prompts with their output) run
as doctests in the same namespace, so printed results shown on a page are
checked too.

A block that cannot run here (it needs a real upstream, an API key, a web
server) carries a visible marker on the line right before its fence, with the
reason::

    <!-- not-run: needs a Keepa API key -->

Such blocks are still compiled, so they cannot rot into invalid Python.

Fenced ``console`` blocks are shell sessions: each ``$ command`` line (with
``\\`` continuations) is run from the repository root with the virtualenv's
``bin`` first on ``PATH``, and its standard output must be the lines that
follow it (``...`` matches anything, as in doctests: use it only for numbers
that move in real time). Use them for the ``tokenbucket`` CLI; ``bash`` blocks
are shown, not run. ``docs/scripts/refresh_console.py PAGE`` rewrites exact
outputs after an intended change; read its diff.

A page that talks to Redis says so once, anywhere on the page::

    <!-- docs-test: redis -->           a private, empty redis-server for this page
    <!-- docs-test: redis-cluster -->   the suite's private three-node Redis Cluster

and writes its URLs as a reader would (``redis://localhost:6379/0``, and
``redis://localhost:7000/0`` for the cluster); the test replaces them with the
private servers' URLs and sets ``TOKENBUCKET_REDIS_URL`` for console blocks.

Every page runs against a fresh default `MemoryBackend`, so a bucket named on
one page never meets a bucket of the same name from another page (or test).

Also checked here: every page is in the nav and every nav entry exists, the
committed figures are what ``docs/scripts/make_figures.py`` draws from the
current code, the site builds with ``mkdocs build --strict``, and the README
keeps its set-up commands.
"""

from __future__ import annotations

import asyncio
import doctest
import gc
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tokenbucket._bucket
from tokenbucket import MemoryBackend

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<lang>[\w+-]*)[^\n]*$")
MARKER = re.compile(r"^\s*<!--\s*not-run(?P<colon>:?)(?P<reason>.*?)-->\s*$")
ANY_MARKER = re.compile(r"<!--\s*not-run")
NEEDS = re.compile(r"<!--\s*docs-test:\s*(?P<what>redis-cluster|redis)\s*-->")
READER_URLS = {"redis": "redis://localhost:6379/0", "redis-cluster": "redis://localhost:7000/0"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    skip_reason: str | None  # the not-run marker's reason, if the block carries one

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def pages() -> list[Path]:
    """The Markdown pages whose examples are checked."""
    found = sorted(DOCS.rglob("*.md")) if DOCS.is_dir() else []
    return [ROOT / "README.md", *found]


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, with the not-run marker that precedes it (if any)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    result: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m["indent"], m["ticks"], m["lang"].lower()
        end = i + 1
        while end < len(lines) and not re.match(rf"^{re.escape(indent)}{ticks}\s*$", lines[end]):
            end += 1
        inner = lines[i + 1 : end]
        body = "\n".join(line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in inner)
        skip = None
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (mm := MARKER.match(lines[j])):
            skip = mm["reason"].strip() if mm["colon"] else ""
        result.append(Block(page, i + 1, lang, textwrap.dedent(body) + "\n", skip))
        i = end + 1
    return result


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


PAGES = pages()
RUNNABLE = ("python", "py", "pycon", "console")
PAGES_WITH_EXAMPLES = [
    p for p in PAGES if any(b.lang in RUNNABLE and b.skip_reason is None for b in blocks(p))
]


@pytest.fixture
def fresh_default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buckets made without ``backend=`` share a per-process store; give each page its own."""
    monkeypatch.setattr(tokenbucket._bucket, "_DEFAULT_BACKEND", MemoryBackend())


def _servers(page: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """Reader-facing URL -> private server URL, for the servers the page asks for."""
    urls: dict[str, str] = {}
    for what in sorted({m["what"] for m in NEEDS.finditer(page.read_text(encoding="utf-8"))}):
        fixture = "private_redis_server" if what == "redis" else "redis_cluster"
        server = request.getfixturevalue(fixture)
        urls[READER_URLS[what]] = server.url if what == "redis" else f"{server.url.rstrip('/')}/0"
    return urls


def _substitute(block: Block, urls: dict[str, str]) -> Block:
    source = block.source
    for reader, private in urls.items():
        source = source.replace(reader, private)
    return Block(block.page, block.line, block.lang, source, block.skip_reason)


@pytest.mark.usefixtures("fresh_default_backend")
@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=_ids(PAGES_WITH_EXAMPLES))
def test_examples_run(page: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the page's python and pycon blocks in order, in one namespace."""
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    urls = _servers(page, request)
    if READER_URLS["redis"] in urls:
        monkeypatch.setenv("TOKENBUCKET_REDIS_URL", urls[READER_URLS["redis"]])
    ran = 0
    for block in (_substitute(b, urls) for b in blocks(page)):
        if block.lang not in RUNNABLE:
            continue
        if block.skip_reason is not None:
            if block.lang == "console":
                continue
            compile(block.source if block.lang != "pycon" else _pycon_source(block), block.where, "exec")
            continue
        if block.lang == "console":
            _run_console(block)
        elif block.lang == "pycon":
            _run_doctest(block, namespace)
        else:
            try:
                exec(compile(block.source, block.where, "exec"), namespace)
            except BaseException as exc:
                raise AssertionError(f"the example at {block.where} failed: {exc!r}") from exc
        ran += 1
    _close_redis_backends(namespace)
    namespace.clear()
    gc.collect()  # anything the page left open is reported here, not in a later test
    # Leave no event loop or task behind for the next page.
    asyncio.set_event_loop(None)
    assert ran, f"{page} was collected for its examples but none ran"


def _close_redis_backends(namespace: dict[str, Any]) -> None:
    """Close the Redis connections a page opened (pages show ``from_url`` without ``close`` for brevity)."""
    from tokenbucket import RedisBackend

    for value in list(namespace.values()):
        backend = getattr(value, "backend", value)
        if isinstance(backend, RedisBackend):
            backend.close()


def _pycon_source(block: Block) -> str:
    """The Python source of a pycon block (prompts stripped), for compiling only."""
    test = doctest.DocTestParser().get_doctest(block.source, {}, block.where, str(block.page), block.line)
    return "".join(example.source for example in test.examples)


def console_sessions(block: Block) -> list[tuple[str, str]]:
    """The ``(command, expected output)`` pairs of a console block."""
    sessions: list[tuple[str, str]] = []
    lines = block.source.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise AssertionError(f"{block.where}: a console block must start each command with '$ '")
        command = lines[i][2:]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        sessions.append((command, "\n".join(output)))
    return sessions


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _run_console(block: Block) -> None:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONWARNINGS": "ignore",
        "COLUMNS": "200",
    }
    for command, expected in console_sessions(block):
        proc = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        got = _normalise(proc.stdout)
        if not doctest.OutputChecker().check_output(_normalise(expected) + "\n", got + "\n", doctest.ELLIPSIS):
            raise AssertionError(
                f"{block.where}: `{command}` printed something else (exit {proc.returncode}).\n"
                f"Expected:\n{_normalise(expected)}\nGot:\n{got}\nstderr:\n{proc.stderr[-2000:]}"
            )


def _run_doctest(block: Block, namespace: dict[str, Any]) -> None:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(block.source, namespace, block.where, str(block.page), block.line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    runner.run(test, out=out.append, clear_globs=False)
    if runner.failures:
        raise AssertionError(f"the session at {block.where} printed something else:\n" + "".join(out))


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_not_run_markers_give_a_reason(page: Path) -> None:
    """A skipped example says why, and a marker always sits right before a code block."""
    text = page.read_text(encoding="utf-8")
    marked = {b.line for b in blocks(page) if b.skip_reason is not None}
    for b in blocks(page):
        if b.skip_reason is not None:
            assert b.skip_reason, f"{b.where}: a not-run marker needs a reason: <!-- not-run: why -->"
            if b.lang in ("python", "py", "pycon"):  # not run, but still valid Python
                compile(b.source if b.lang != "pycon" else _pycon_source(b), b.where, "exec")
    lines = text.splitlines()
    for n, line in enumerate(lines, start=1):
        if ANY_MARKER.search(line):
            # The marker must be followed (after blank lines) by a fence that picked it up.
            k = n
            while k < len(lines) and not lines[k].strip():
                k += 1
            assert k + 1 in marked, f"{page.relative_to(ROOT)}:{n}: a not-run marker must sit right before a code fence"


def test_some_examples_are_checked() -> None:
    """The collector finds the examples (a broken fence pattern would silently check nothing)."""
    runnable = [b for p in PAGES for b in blocks(p) if b.lang in ("python", "pycon") and b.skip_reason is None]
    assert len(runnable) >= 10


def test_collector_reads_markers_and_indented_fences(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n<!-- not-run: needs a key -->\n```python\nx = 1\n```\n\n"
        "!!! note\n    ```python\n    y = 2\n    ```\n\n<!-- not-run -->\n```python\nz = 3\n```\n",
        encoding="utf-8",
    )
    found = blocks(page)
    assert [(b.lang, b.source, b.skip_reason) for b in found] == [
        ("python", "x = 1\n", "needs a key"),
        ("python", "y = 2\n", None),
        ("python", "z = 3\n", ""),
    ]


def test_console_blocks_are_checked(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```console\n$ echo one \\\n    two\none two\n$ echo three\nfour\n```\n", encoding="utf-8")
    (block,) = blocks(page)
    assert console_sessions(block) == [("echo one two", "one two"), ("echo three", "four")]
    with pytest.raises(AssertionError, match="printed something else"):
        _run_console(block)


def _nav_files(entries: Any) -> list[str]:
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [f for entry in entries for f in _nav_files(entry)]
    if isinstance(entries, dict):
        return [f for value in entries.values() for f in _nav_files(value)]
    return []


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    import yaml  # PyYAML comes with mkdocs (the docs extra)

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_files(config["nav"])
    pages_on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert sorted(set(nav) - pages_on_disk) == [], "nav entries without a page"
    assert sorted(pages_on_disk - set(nav)) == [], "pages missing from the nav"


def test_figures_are_drawn_from_the_current_code(tmp_path: Path) -> None:
    """The committed SVGs are what ``docs/scripts/make_figures.py`` draws today (it is deterministic)."""
    script = DOCS / "scripts" / "make_figures.py"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, env=env, timeout=120)
    drawn = sorted(p.name for p in tmp_path.glob("*.svg"))
    assert drawn, "the script drew nothing"
    stale = [name for name in drawn if (tmp_path / name).read_bytes() != (DOCS / "img" / name).read_bytes()]
    assert not stale, f"docs/img is out of date for {stale}: run .venv/bin/python docs/scripts/make_figures.py"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no broken link, no missing page, no docstring griffe cannot read."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.exists(), "mkdocs is missing: install the docs extra (scripts/test.sh does)"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_readme_states_the_setup_commands_and_links_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "bash scripts/demo.sh" in readme
    assert "bash scripts/test.sh" in readme
    assert "mkdocs serve" in readme
    assert len(readme.splitlines()) <= 70, "the README should stay about one screen"
