"""The built book in a real browser: every page, as a reader's headless Chromium shows it, offline.

The book's ``_build/html`` is served from a local http.server and every page opened once, on a
full-HD desktop screen; what each page shows is collected then and checked by the tests below:
figures load and have alt texts, the mathematics is typeset by the book's own MathJax (loaded
once), nothing fails in the console or on the network (requests that leave the machine are
refused and reported), internal links and anchors resolve, code cells fit their column, the
Colab links open the chapter's own notebook, and axe-core finds no serious accessibility problem.

The pages are those of the ``built_book`` fixture (tests/conftest.py, shared with test_book.py),
or of an already built book: ``BUILT_BOOK_HTML=/path/to/book/_build/html``. Chromium is
``/usr/bin/chromium`` (or ``$CHROMIUM``); without it or playwright the tests are skipped, except
in CI (``CI`` set), where they fail. A failing check saves full-page screenshots of the pages at
fault, their culprits outlined in red, under ``$BROWSER_ARTIFACTS``
(default: build/browser-artifacts).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("BROWSER_ARTIFACTS") or REPO / "build" / "browser-artifacts")
VIEWPORT = {"width": 1920, "height": 1080}  # a full-HD desktop screen
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The file names MathJax is started from (its combined components, or v2's MathJax.js).
MATHJAX_ENTRY = re.compile(
    r"(^|/)((tex|mml|tex-mml)-(chtml|svg)(-full)?|MathJax|startup)\.js$", re.IGNORECASE
)
#: Chromium asks every site for /favicon.ico by itself; the book declares no favicon.
BROWSER_PROBES = {"/favicon.ico"}
SERIOUS = {"serious", "critical"}
TYPESET_SECONDS = 15  # MathJax typesets a chapter in about a second

pytestmark = [pytest.mark.slow, pytest.mark.book]


# ----------------------------------------------------------------------------- what a page shows

#: Starts waiting for MathJax's first typesetting and the fonts; ``window.__courseTypeset`` then
#: becomes "done", "failed" or "absent" (no MathJax on the page).
TYPESET = r"""() => {
  window.__courseTypeset = null;
  const mathjax = window.MathJax && MathJax.startup && MathJax.startup.promise;
  Promise.all([mathjax || Promise.resolve(), document.fonts.ready]).then(
    () => { window.__courseTypeset = mathjax ? 'done' : 'absent'; },
    () => { window.__courseTypeset = 'failed'; });
}"""

#: Run in the page once it has loaded and typeset: describes the page.
COLLECT = r"""() => {
  const shown = el => el.checkVisibility({visibilityProperty: true});
  const short = (text, n = 70) => {
    text = text.replace(/\s+/g, ' ').trim();
    return text.length > n ? text.slice(0, n) + '…' : text;
  };

  const images = [...document.images].map((img, index) => ({
    index, src: img.currentSrc || img.src, alt: img.getAttribute('alt'), complete: img.complete,
    naturalWidth: img.naturalWidth, shown: shown(img)}));

  // Text a reader sees, outside code, with TeX delimiters MathJax should have replaced.
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
    if (!parent || parent.closest(skip) || !shown(parent)) continue;
    const match = /\\\(|\\\[|\$\$/.exec(node.data);
    if (match) raw.push(short(node.data.slice(Math.max(0, match.index - 30), match.index + 40)));
  }
  const maths = [...document.querySelectorAll('.math')];
  const scripts = [...document.querySelectorAll('script[src]')].map(s => s.src);

  const pres = [...document.querySelectorAll('div.cell div.cell_input pre')];
  const codeCells = pres.map((pre, index) => ({
    index, shown: shown(pre), scrollWidth: pre.scrollWidth, clientWidth: pre.clientWidth,
    firstLine: short(pre.textContent.split('\n')[0], 60),
    longestLine: Math.max(...pre.textContent.split('\n').map(line => line.length))}));

  const links = [...document.querySelectorAll('a[href]')].map((a, index) => ({
    index, href: a.href, raw: a.getAttribute('href'),
    text: short(a.textContent, 50) || a.title || a.getAttribute('aria-label') || ''}));
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id)
    .concat([...document.querySelectorAll('a[name]')].map(a => a.name));

  return {
    url: location.href, title: document.title, images, raw, codeCells, links, ids, scripts,
    mathElements: maths.length,
    untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => short(m.textContent)),
    mjxContainers: document.querySelectorAll('mjx-container').length,
    mathErrors: [...document.querySelectorAll('mjx-merror')]
      .map(e => short(e.getAttribute('data-mjx-error') || e.textContent)),
    mathjaxVersion: (window.MathJax && window.MathJax.version) || null,
  };
}"""

#: Outlines the elements given as [[selector, index], ...] in red, for a screenshot.
OUTLINE = """marks => { for (const [selector, index] of marks) {
  const el = document.querySelectorAll(selector)[index];
  if (el) { el.style.outline = '4px solid red'; el.style.outlineOffset = '2px'; }
} }"""

CODE_CELL = "div.cell div.cell_input pre"
#: Marks the first code cells of a page for axe's colour-contrast check of the code's highlighting
#: (the same stylesheet on every page: checking every token of every page would take a minute).
SAMPLE_CODE = """() => {
  const cells = [...document.querySelectorAll('div.cell div.cell_input')].slice(0, 8);
  cells.forEach(cell => cell.setAttribute('data-axe-sample', ''));
  return cells.length;
}"""


@dataclass
class Page:
    """One page of the book as the browser showed it."""

    path: str  # e.g. "chapters/01_transfer_learning.html"
    url: str = ""
    redirect_to: str | None = None  # a page that only sends the reader elsewhere
    info: dict = field(default_factory=dict)  # what COLLECT returned
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    responses: dict[str, int] = field(default_factory=dict)
    axe: list[dict] = field(default_factory=list)  # axe-core violations
    loading: bool = True  # console and network are watched while the page loads


class Site:
    """The served book, its pages as seen, and the browser (for screenshots of failing pages)."""

    def __init__(self, html_dir: Path, base: str, browser, axe):
        self.html_dir, self.base, self.axe = html_dir, base, axe
        self.context = browser.new_context(viewport=VIEWPORT, service_workers="block")
        self.context.set_default_timeout(30_000)
        self.context.route(lambda url: not url.startswith(base), self._refuse)
        self.pages: dict[str, Page] = {}
        self._current: Page | None = None
        self._code_sampled = False

    def _axe(self, tab, context: dict, **options) -> list[dict]:
        """axe-core's violations in ``context`` of the page open in ``tab``."""
        return self.axe.run(
            tab, context=context, options={"resultTypes": ["violations"], **options}
        ).response["violations"]

    def _refuse(self, route):
        """Nothing leaves the machine: the book must work offline."""
        if self._current is not None:
            self._current.external_requests.append(route.request.url)
        route.abort("blockedbyclient")

    def visit(self, path: str) -> Page:
        page = Page(path)
        self._current = page
        tab = self.context.new_page()
        tab.on("console", lambda msg: self._on_console(page, msg))
        tab.on("pageerror", lambda error: self._on_page_error(page, error))
        tab.on("requestfailed", lambda request: self._on_failed(page, request))
        tab.on("response", lambda response: self._on_response(page, response))
        try:
            tab.goto(self.base + path, wait_until="load")
            target = _refresh_target(self.html_dir, path)
            if target is not None:
                page.redirect_to = target
                tab.wait_for_url(self.base + target, timeout=10_000)
                tab.wait_for_load_state("load")
            page.url = tab.url
            mathjax = _typeset(tab)
            page.info = {**tab.evaluate(COLLECT), "typeset": mathjax}
            page.loading = False  # axe fetches the stylesheets again, its own way
            if self.axe is not None and target is None:
                page.axe = self._axe(tab, {"exclude": [["div.cell_input"]]})
                if not self._code_sampled and tab.evaluate(SAMPLE_CODE):
                    page.axe += self._axe(
                        tab, {"include": [["[data-axe-sample]"]]}, runOnly=["color-contrast"]
                    )
                    self._code_sampled = True
        finally:
            tab.close()
            self._current = None
        page.failed_requests += [
            f"{url} (HTTP {status})"
            for url, status in page.responses.items()
            if status >= 400 and not self._is_probe(url)
        ]
        self.pages[path] = page
        return page

    def _on_console(self, page: Page, msg) -> None:
        where = msg.location.get("url", "")
        if page.loading and msg.type == "error" and not self._is_probe(where):
            page.console_errors.append(
                f"console.error: {msg.text}"
                + (f" [{where}:{msg.location.get('lineNumber')}]" if where else "")
            )

    def _on_page_error(self, page: Page, error) -> None:
        if page.loading:
            page.console_errors.append(f"uncaught {error.name}: {error.message}")

    def _on_response(self, page: Page, response) -> None:
        if page.loading:
            page.responses[response.url] = response.status

    def _on_failed(self, page: Page, request) -> None:
        if (
            page.loading
            and not self._is_probe(request.url)
            and request.url not in page.external_requests
        ):
            page.failed_requests.append(f"{request.url} ({request.failure})")

    def _is_probe(self, url: str) -> bool:
        return url.startswith(self.base) and urlsplit(url).path in BROWSER_PROBES

    def screenshot(self, check: str, path: str, marks: list[tuple[str, int]] = ()) -> Path:
        """A full-page screenshot of ``path``, ``marks`` (selector, index) outlined; its file."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        target = ARTIFACTS / f"{check}--{path.removesuffix('.html').replace('/', '--')}.png"
        tab = self.context.new_page()
        try:
            tab.goto(self.base + path, wait_until="load")
            _typeset(tab)
            tab.evaluate(OUTLINE, [list(mark) for mark in marks])
            tab.screenshot(path=target, full_page=True)
        finally:
            tab.close()
        return target

    def report(
        self, check: str, problems: dict[str, list[str]], marks: dict[str, list] | None = None
    ) -> str:
        """An assertion message: the problems page by page, and where their screenshots went."""
        lines = []
        for path, found in problems.items():
            shown = self.pages[path].redirect_to or path if path in self.pages else path
            try:
                shot = f"screenshot: {self.screenshot(check, shown, (marks or {}).get(path, []))}"
            except Exception as error:  # noqa: BLE001 - the report matters more than the picture
                shot = f"no screenshot ({error})"
            lines += [f"{path} ({shot}):", *(f"    {problem}" for problem in found)]
        return "\n".join(lines)


def _typeset(tab) -> str:
    """Wait (at most TYPESET_SECONDS) for MathJax, fonts: "done", "failed", "absent", "timeout"."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tab.evaluate(TYPESET)
    try:
        return tab.wait_for_function(
            "() => window.__courseTypeset", timeout=TYPESET_SECONDS * 1000
        ).json_value()
    except PlaywrightTimeout:
        return "timeout"


class _RefreshFinder(html.parser.HTMLParser):
    target: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "refresh":
            match = re.search(r"url=(.+)$", attrs.get("content") or "", re.IGNORECASE)
            self.target = match.group(1).strip().strip("'\"") if match else None


def _refresh_target(html_dir: Path, path: str) -> str | None:
    """Where a ``<meta http-equiv="refresh">`` page sends the reader (from the root), or None."""
    finder = _RefreshFinder()
    finder.feed((html_dir / path).read_text(errors="replace"))
    if finder.target is None:
        return None
    return (PurePosixPath(path).parent / finder.target).as_posix().removeprefix("./")


def book_pages(html_dir: Path) -> list[str]:
    """The book's pages: every .html file but those in Sphinx's folders (_static, _sources, ...)."""
    return sorted(
        path.relative_to(html_dir).as_posix()
        for path in html_dir.rglob("*.html")
        if not any(part.startswith("_") for part in path.relative_to(html_dir).parts[:-1])
    )


# ----------------------------------------------------------------------------- fixtures


def _browser_tools():
    """playwright's sync API and the Chromium to drive; skip (fail in CI) when either is missing."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed (pip install -r requirements.txt)"
    else:
        if not CHROMIUM.exists():
            missing = (
                f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM=/path/to/it)"
            )
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(f"browser test needs a browser: {missing}")
    try:
        from axe_playwright_python.sync_playwright import Axe
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("axe-playwright-python is not installed (pip install -r requirements.txt)")
        Axe = None
    return sync_playwright, Axe


@pytest.fixture(scope="module")
def book_html(request) -> Path:
    """The built book's HTML folder: $BUILT_BOOK_HTML, else the ``built_book`` fixture's."""
    given = os.environ.get("BUILT_BOOK_HTML")
    if given:
        folder = Path(given).expanduser().resolve()
        assert (folder / "index.html").is_file(), f"BUILT_BOOK_HTML={given}: no index.html there"
        return folder
    return Path(request.getfixturevalue("built_book")["book_dir"]) / "_build" / "html"


@pytest.fixture(scope="module")
def site(request) -> Iterator[Site]:
    """Every page of the book opened once in headless Chromium, served from a local http.server."""
    sync_playwright, Axe = _browser_tools()  # before building anything
    html_dir = request.getfixturevalue("book_html")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(html_dir))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as playwright:  # a fresh, temporary profile
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                site = Site(html_dir, base, browser, Axe() if Axe else None)
                for path in book_pages(html_dir):
                    site.visit(path)
                yield site
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def repository() -> dict:
    """book/_config.yml's repository and launch settings."""
    config = yaml.safe_load((REPO / "book" / "_config.yml").read_text())
    return {
        "url": config["repository"]["url"].rstrip("/"),
        "path_to_book": (config["repository"].get("path_to_book") or "").strip("/"),
        "colab_url": config["launch_buttons"]["colab_url"].rstrip("/"),
    }


def _content(site: Site) -> list[Page]:
    """The pages with content of their own (not redirects)."""
    return [page for page in site.pages.values() if page.redirect_to is None]


# ----------------------------------------------------------------------------- the checks


def test_the_book_has_pages(site):
    paths = set(site.pages)
    assert "intro.html" in paths and any(path.startswith("chapters/") for path in paths), sorted(
        paths
    )
    for page in site.pages.values():
        if page.redirect_to is not None:
            assert page.url == site.base + page.redirect_to and page.redirect_to in paths, (
                f"{page.path} sends the reader to {page.redirect_to}: not a page of the book"
            )


def test_every_image_loads_and_has_an_alt_text(site):
    problems, marks = {}, {}
    for page in _content(site):
        for img in page.info["images"]:
            found = []
            if not (img["complete"] and img["naturalWidth"] > 0):
                found.append("did not load")
            if not (img["alt"] or "").strip():
                found.append("has no alt text")
            if found:
                problems.setdefault(page.path, []).append(
                    f"image {img['index']} ({img['src']}) " + " and ".join(found)
                )
                marks.setdefault(page.path, []).append(("img", img["index"]))
    assert not problems, "images that did not load or have no alt text:\n" + site.report(
        "images", problems, marks
    )


def test_math_is_typeset_by_the_books_own_mathjax_loaded_once(site):
    problems = {}
    for page in _content(site):
        info, found = page.info, []
        mathjax = [src for src in info["scripts"] if MATHJAX_ENTRY.search(urlsplit(src).path)]
        if info["mathElements"] and not mathjax:
            found.append("has mathematics but loads no MathJax")
        if len(mathjax) > 1:
            found.append(f"loads MathJax {len(mathjax)} times: {mathjax}")
        found += [
            f"MathJax from outside the book: {src}"
            for src in mathjax
            if not src.startswith(site.base)
        ]
        found += [
            f"MathJax script {src} answered HTTP {page.responses[src]}"
            for src in mathjax
            if page.responses.get(src, 200) != 200
        ]
        if info["typeset"] in ("failed", "timeout"):
            outcome = "failed" if info["typeset"] == "failed" else "did not finish"
            found.append(f"MathJax's typesetting {outcome} (waited {TYPESET_SECONDS} s)")
        if info["mathElements"] and not info["mjxContainers"]:
            found.append(f"{info['mathElements']} formulas but no MathJax output (mjx-container)")
        found += [f"formula not typeset: {text}" for text in info["untypeset"]]
        found += [f"TeX left in the text: {text}" for text in info["raw"]]
        found += [f"MathJax error: {text}" for text in info["mathErrors"]]
        if found:
            problems[page.path] = found
    assert not problems, "mathematics not rendered as it should be:\n" + site.report(
        "math", problems
    )
    pages_with_math = [page.path for page in _content(site) if page.info["mathElements"]]
    assert pages_with_math, "no page of the book has mathematics: is the book's text there?"


def test_pages_load_without_console_errors_or_failed_requests(site):
    problems = {}
    for page in _content(site):  # a redirect shows its target's, reported there
        found = page.console_errors + [f"failed request: {text}" for text in page.failed_requests]
        found += [
            f"request leaving the machine (the book must work offline): {url}"
            for url in page.external_requests
        ]
        if found:
            problems[page.path] = list(dict.fromkeys(found))
    assert not problems, "errors while loading pages:\n" + site.report("console", problems)


def test_internal_links_and_anchors_resolve(site):
    ids = {path: set(page.info["ids"]) for path, page in site.pages.items() if page.info}
    problems, marks = {}, {}
    for page in _content(site):
        for link in page.info["links"]:
            if not link["href"].startswith(site.base):
                continue  # external, or javascript:/mailto:
            parts = urlsplit(link["href"])
            target = unquote(parts.path).removeprefix("/") or "index.html"
            if target.endswith("/"):
                target += "index.html"
            file = site.html_dir / target
            fragment = unquote(parts.fragment)
            problem = None
            if not file.is_file():
                problem = f"{target} does not exist"
            elif fragment and target.endswith(".html"):
                known = ids.get(target)
                if known is None:  # a page not visited: read its ids from the file
                    known = set(re.findall(r'\sid="([^"]+)"', file.read_text(errors="replace")))
                if fragment not in known:
                    problem = f"{target} has no element with id {fragment!r}"
            if problem:
                problems.setdefault(page.path, []).append(
                    f"link {link['raw']!r} ({link['text']!r}): {problem}"
                )
                marks.setdefault(page.path, []).append(("a[href]", link["index"]))
    assert not problems, "internal links that lead nowhere:\n" + site.report(
        "links", problems, marks
    )


def test_code_cells_fit_their_column(site):
    problems, marks = {}, {}
    for page in _content(site):
        for cell in page.info["codeCells"]:
            if cell["shown"] and cell["scrollWidth"] > cell["clientWidth"] + 1:
                problems.setdefault(page.path, []).append(
                    f"code cell {cell['index'] + 1} ({cell['firstLine']!r}): "
                    f"{cell['scrollWidth']} px of code in a {cell['clientWidth']} px column "
                    f"(longest line {cell['longestLine']} characters)"
                )
                marks.setdefault(page.path, []).append((CODE_CELL, cell["index"]))
    assert not problems, (
        f"code cells wider than their column at {VIEWPORT['width']}x{VIEWPORT['height']} "
        "(they scroll sideways):\n" + site.report("code-width", problems, marks)
    )


def test_colab_links_open_the_chapters_own_notebook(site, repository):
    owner_repo = urlsplit(repository["url"]).path.strip("/")
    colab = urlsplit(repository["colab_url"]).netloc
    pattern = re.compile(r"^/github/(?P<repo>[^/]+/[^/]+)/blob/(?P<ref>[^/]+)/(?P<path>.+)$")
    problems, marks = {}, {}
    for page in _content(site):
        notebook = "/".join(
            filter(None, [repository["path_to_book"], page.path.removesuffix(".html") + ".ipynb"])
        )
        launch = [link for link in page.info["links"] if urlsplit(link["href"]).netloc == colab]
        found = []
        if page.path.startswith("chapters/") and not launch:
            found.append("no Colab link")
        for link in launch:
            match = pattern.match(urlsplit(link["href"]).path)
            if not match or match["repo"] != owner_repo or match["path"] != notebook:
                found.append(
                    f"Colab link {link['href']} ({link['text']!r}) "
                    f"does not open {notebook} of {owner_repo}"
                )
                marks.setdefault(page.path, []).append(("a[href]", link["index"]))
        if found:
            problems[page.path] = found
    assert not problems, "wrong launch links:\n" + site.report("colab", problems, marks)


def test_no_serious_accessibility_violations(site):
    if site.axe is None:
        pytest.skip("axe-playwright-python is not installed (pip install -r requirements.txt)")
    problems, marks = {}, {}
    for page in _content(site):
        for violation in page.axe:
            if violation.get("impact") not in SERIOUS:
                continue
            targets = [node["target"] for node in violation["nodes"]]
            shown = ", ".join(" >> ".join(map(str, target)) for target in targets[:3])
            problems.setdefault(page.path, []).append(
                f"[{violation['impact']}] {violation['id']}: {violation['help']} "
                f"({len(targets)}x: {shown}{', ...' if len(targets) > 3 else ''})"
            )
            marks.setdefault(page.path, []).extend(
                (target[0], 0)
                for target in targets[:50]
                if len(target) == 1 and isinstance(target[0], str)
            )
    assert not problems, "serious or critical axe-core violations:\n" + site.report(
        "axe", problems, marks
    )
