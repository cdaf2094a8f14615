"""A web browser as a device (``--device browser``, ``browser:chromium``, ``browser:/path/to/chrome``).

The browser runs .onnx files with onnxruntime-web and .tflite files with LiteRT.js (wasm, SIMD; threads when the page
is cross-origin isolated), both in the web-demo/ page. edgeship serves that page and the artifacts from a static
server of its own (:class:`StaticServer`: loopback only, a free port, the COOP/COEP headers wasm threads need, the
right MIME types for .wasm and .mjs) and drives headless Chromium with Playwright for Python
(``pip install 'edgeship[web]'``; the browser is the system's Chromium, never a downloaded one).

The transport is the host's file system: ``tempdir()`` is a host folder the server publishes, ``push`` copies into it;
``run`` refuses (a page runs no commands). The bench method is the page (:class:`edgeship.bench.browser_bench.
BrowserPage`, chosen automatically for this device); ``edgeship verify --device browser`` runs the reference inputs
in the page (:func:`edgeship.bench.browser_bench.verify_on_device`).

Needs: Chromium (``apt-get install chromium``), Playwright for Python, and web-demo/vendor/ (``make web-setup``:
``npm ci`` and a copy of the runtimes' wasm files).
"""
from __future__ import annotations

import atexit
import base64
import contextlib
import errno
import functools
import http.server
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import unquote, urlsplit

import numpy as np

from edgeship.errors import EdgeshipError
from edgeship_runtime.formats import FORMATS, app_formats

from .base import DeviceBase, DeviceEntry, DeviceInfo
from .local import LocalDevice, _os_release_pretty, local_cpu_model

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[4]
WEB_DEMO = REPO_ROOT / "web-demo"
WEB_TARGET = "web"                                  # the app target of `edgeship package` (FormatSpec.apps)
RUNTIME_PACKAGES = {"onnx": ("onnxruntime-web", "onnxruntime-web"), "tflite": ("@litertjs/core", "LiteRT.js")}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = ("install it: apt-get install -y chromium (Debian/Ubuntu), or give its path: "
                "--device browser:/path/to/chromium")
CHROMIUM_ARGS = ("--no-sandbox",                                  # root in a container: the sandbox cannot start
                 "--enable-blink-features=ForceEagerMeasureMemory",  # measureUserAgentSpecificMemory answers at once
                 "--enable-precise-memory-info",                 # performance.memory unrounded (the fallback)
                 "--disable-dev-shm-usage")
READY_TIMEOUT_S = 60.0
CONSOLE_LINES = 30
MIME = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript", ".json": "application/json",
        ".onnx": "application/octet-stream", ".tflite": "application/octet-stream", ".html": "text/html",
        ".txt": "text/plain", ".png": "image/png", ".jpg": "image/jpeg", ".css": "text/css"}


# ------------------------------------------------------------------------------------------------ the static server

class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ``server.roots`` (URL prefix -> folder); every response carries COOP/COEP (cross-origin isolation:
    SharedArrayBuffer, so wasm threads) and no caching. A POST to .../bench-result is kept (the page's bench mode)."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}

    def translate_path(self, path: str) -> str:
        path = unquote(urlsplit(path).path)
        roots: dict[str, Path] = self.server.roots          # type: ignore[attr-defined]
        for prefix in sorted(roots, key=len, reverse=True):
            if path == prefix.rstrip("/") or path.startswith(prefix):
                root = roots[prefix].resolve()
                rel = [p for p in path[len(prefix):].split("/") if p not in ("", ".")]
                if any(p == ".." or "\\" in p or "\0" in p for p in rel):
                    return ""               # refused: send_head answers 404
                target = root.joinpath(*rel).resolve()
                if target != root and root not in target.parents:     # a link leading out: not served
                    return ""               # refused: send_head answers 404
                return str(target)
        return ""

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(n, 64 << 20))
        if self.path.split("?")[0].endswith("/bench-result"):
            with contextlib.suppress(ValueError):
                self.server.posted.append(json.loads(body))   # type: ignore[attr-defined]
            self.send_response(204)
            self.end_headers()
            return
        self.send_error(405)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("web server: " + format, *args)


class StaticServer:
    """A loopback-only static server in a thread: ``roots`` maps URL prefixes ("/", "/data/x/") to folders.

    ``port`` 0 (the default) takes a free port; a given port that is taken is reported, and another one is used."""

    def __init__(self, roots: dict[str, Path], port: int = 0, host: str = "127.0.0.1"):
        self.notes: list[str] = []
        try:
            self.httpd = http.server.ThreadingHTTPServer((host, port), _Handler)
        except OSError as e:
            if port == 0 or e.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise EdgeshipError(f"cannot start the page's web server on {host}:{port}: {e}",
                                    hint="check that the loopback interface is up") from None
            self.httpd = http.server.ThreadingHTTPServer((host, 0), _Handler)
            self.notes.append(f"port {port} was taken ({e.strerror}); served on {self.httpd.server_address[1]} instead")
            log.warning(self.notes[-1])
        self.httpd.daemon_threads = True
        self.httpd.roots = dict(roots)                 # type: ignore[attr-defined]
        self.httpd.posted = []                         # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="edgeship-web", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, prefix: str, folder: Path) -> str:
        self.httpd.roots[prefix] = Path(folder)       # type: ignore[attr-defined]
        return self.url + prefix

    def unpublish(self, prefix: str) -> None:
        self.httpd.roots.pop(prefix, None)             # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "StaticServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------------- what is here

def find_chromium(path: str | None = None) -> str | None:
    """The Chromium executable: ``path`` when given (a file, or a name on PATH), else the first of CHROMIUM_NAMES."""
    if path:
        p = Path(path).expanduser()
        return str(p) if p.is_file() and os.access(p, os.X_OK) else shutil.which(path)
    return next((w for n in CHROMIUM_NAMES if (w := shutil.which(n))), None)


@functools.lru_cache(maxsize=8)
def chromium_version(exe: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
        return out.split(" built on ")[0] or None
    return None


def vendor_versions(web_root: Path = WEB_DEMO) -> dict[str, str]:
    """{npm package: version} of the runtimes copied into web-demo/vendor/ (empty when `make web-setup` has not run)."""
    with contextlib.suppress(OSError, ValueError):
        return json.loads((web_root / "vendor" / "versions.json").read_text())
    return {}


def playwright_problem() -> str | None:
    import importlib.util
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install 'edgeship[web]')"
    return None


def format_support(web_root: Path = WEB_DEMO) -> tuple[dict[str, str | None], dict[str, str]]:
    """({format: its browser runtime and version, or None}, {format: why the browser cannot run it})."""
    versions = vendor_versions(web_root)
    runtimes: dict[str, str | None] = {}
    missing: dict[str, str] = {}
    web = app_formats(WEB_TARGET)
    for key, spec in FORMATS.items():
        title = spec.title or key
        if key not in web:
            runtimes[key] = None
            missing[key] = f"no browser runtime runs {title} ({', '.join(spec.suffixes)}) files (the browser runs {', '.join(web)})"
        elif key not in RUNTIME_PACKAGES:
            runtimes[key] = None
            missing[key] = f"the web page has no runtime for {title}"
        else:
            pkg, name = RUNTIME_PACKAGES[key]
            v = versions.get(pkg)
            runtimes[key] = f"{name} {v}" if v else None
            if not v:
                missing[key] = (f"{pkg} is not in {web_root / 'vendor'}: run `make web-setup` "
                                "(npm ci in web-demo/ and a copy of its wasm files)")
    return runtimes, missing


# -------------------------------------------------------------------------------------------------------- the device

class BrowserDevice(DeviceBase):
    """Headless Chromium on this host, driven with Playwright; the page is web-demo/ served by :class:`StaticServer`."""

    kind = "browser"
    usage = "browser[:chromium|:PATH]"
    bench_via = "browser"            # the bench method this device is measured with (edgeship.bench.browser_bench)

    def __init__(self, executable: str | None = None, *, spec: str = "browser:chromium", web_root: Path | None = None,
                 port: int = 0):
        self.executable = executable
        self.id = spec
        self.python = None
        self.web_root = Path(web_root) if web_root is not None else WEB_DEMO
        self.port = port
        self._server: StaticServer | None = None
        self._browser = None
        self.console: deque[str] = deque(maxlen=CONSOLE_LINES)
        self.notes: list[str] = []

    @classmethod
    def from_spec(cls, text: str, **_options: Any) -> "BrowserDevice":
        rest = text.partition(":")[2].strip()
        if rest in ("", "chromium", "chrome"):
            exe = find_chromium()
            return cls(exe, spec="browser:chromium")
        return cls(find_chromium(rest) or rest, spec=f"browser:{rest}")

    @classmethod
    def discover(cls, **_options: Any) -> list[DeviceEntry]:
        exe = find_chromium()
        if exe is None:
            return [DeviceEntry("browser:chromium", "browser", "missing", f"no Chromium: {INSTALL_HINT}")]
        runtimes, _ = format_support()
        runs = ", ".join(f"{k} ({v})" for k, v in runtimes.items() if v) or "nothing yet: make web-setup"
        state = "ready" if playwright_problem() is None else "missing"
        what = f"{chromium_version(exe) or exe}, headless; runs {runs}"
        if state == "missing":
            what += f"; {playwright_problem()}"
        return [DeviceEntry("browser:chromium", "browser", state, what)]

    def __repr__(self) -> str:
        return f"BrowserDevice({self.id!r})"

    # -- capabilities
    def check(self) -> str:
        """The Chromium executable, Playwright and the page's vendor files are there; returns the executable."""
        if not self.executable or not Path(self.executable).is_file():
            what = f"{self.executable!r} is not an executable file" if self.executable else \
                f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)} on PATH)"
            raise EdgeshipError(f"--device {self.id}: {what}", hint=INSTALL_HINT)
        problem = playwright_problem()
        if problem:
            raise EdgeshipError(f"--device {self.id} drives Chromium with Playwright for Python: {problem}",
                                hint="pip install 'edgeship[web]' (Playwright's own browser download is not "
                                     "needed: edgeship uses the system's Chromium)")
        if not (self.web_root / "index.html").is_file():
            raise EdgeshipError(f"the web page is not at {self.web_root}",
                                hint="run from an edgeship checkout (its web-demo/ folder)")
        if not vendor_versions(self.web_root):
            raise EdgeshipError(f"{self.web_root / 'vendor'} holds no web runtimes",
                                hint="make web-setup (npm ci in web-demo/, then node scripts/vendor.mjs)")
        return self.executable

    def info(self, *, deep: bool = False) -> DeviceInfo:
        uname = platform.uname()
        os_name = f"{uname.system} {uname.release}"
        pretty = _os_release_pretty(Path("/etc/os-release"))
        if pretty:
            os_name += f" ({pretty})"
        version = chromium_version(self.executable) if self.executable and Path(self.executable).is_file() else None
        info = DeviceInfo(id=self.id, kind=self.kind, os=os_name, arch=uname.machine, cpu=local_cpu_model(),
                          model=f"{version or 'Chromium'} (headless)", python=None, python_version=None)
        info.runtimes, info.missing = format_support(self.web_root)
        problem = None
        if version is None:
            problem = f"no Chromium ({INSTALL_HINT})"
        elif playwright_problem():
            problem = playwright_problem()
        if problem:
            for k, v in list(info.runtimes.items()):
                if v:
                    info.runtimes[k] = None
                    info.missing[k] = problem
        info.extra.update({"browser": version, "executable": self.executable, "cpu_count": os.cpu_count(),
                           "engine": "wasm"})
        return info

    # -- transport: the host's file system, published by the server
    push = LocalDevice.push          # the same file copies as the local device (the server publishes them)
    pull = LocalDevice.pull

    def run(self, argv: Sequence[str], timeout_s: float, *, cwd: str | None = None,
            env: dict[str, str] | None = None, check: bool = False) -> subprocess.CompletedProcess:
        raise EdgeshipError(f"{self.id} runs no commands: a browser runs the web page only",
                            hint="bench it with the page (the default for --device browser), not --via python/tool")

    def stream(self, argv: Sequence[str]) -> subprocess.Popen:
        return self.run(argv, 0)  # type: ignore[return-value]

    @contextlib.contextmanager
    def tempdir(self) -> Iterator[str]:
        d = tempfile.mkdtemp(prefix="edgeship-web-")
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def cleanup(self) -> bool:
        self.close()
        return True

    # -- the browser and its page
    def server(self) -> StaticServer:
        if self._server is None:
            self._server = StaticServer({"/": self.web_root}, port=self.port)
            self.notes += self._server.notes
        return self._server

    def browser(self):
        if self._browser is None:
            exe = self.check()
            from playwright.sync_api import Error as PwError
            try:
                self._browser = _playwright().chromium.launch(executable_path=exe, headless=True,
                                                              args=list(CHROMIUM_ARGS))
            except PwError as e:
                raise EdgeshipError(f"Chromium ({exe}) did not start: {str(e).strip().splitlines()[0][:400]}",
                                    hint=INSTALL_HINT) from None
        return self._browser

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._browser is not None:
                self._browser.close()
        self._browser = None
        if self._server is not None:
            self._server.close()
            self._server = None

    def __del__(self) -> None:   # a forgotten device must not leave Chromium running
        with contextlib.suppress(Exception):
            self.close()

    @contextlib.contextmanager
    def page(self, query: str = "mode=driver", timeout_s: float = READY_TIMEOUT_S) -> Iterator[Any]:
        """A fresh page (its own wasm runtimes: a thread count is fixed per page) on web-demo/index.html, ready."""
        browser = self.browser()
        server = self.server()
        page = browser.new_page()
        self.console.clear()
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))
        try:
            page.goto(f"{server.url}/index.html?{query}", timeout=timeout_s * 1000)
            self._wait(page, "window.edgeship && window.edgeship.ready === true", timeout_s, "load")
            yield page
        finally:
            with contextlib.suppress(Exception):
                page.close()

    def console_tail(self, n: int = 12) -> str:
        lines = list(self.console)[-n:]
        return " | ".join(lines) if lines else "(the console is empty)"

    def _wait(self, page: Any, expression: str, timeout_s: float, what: str) -> None:
        from playwright.sync_api import TimeoutError as PwTimeout
        try:
            page.wait_for_function(expression, timeout=timeout_s * 1000, polling=50)
        except PwTimeout:
            raise EdgeshipError(f"the web page did not {what} within {timeout_s:g} s on {self.id}; its console's last "
                                f"lines: {self.console_tail()}",
                                hint="raise --timeout; check that `make web-setup` ran (web-demo/vendor/)") from None

    def call(self, page: Any, function: str, args: dict, timeout_s: float, what: str) -> Any:
        """Run ``window.edgeship[function](...args)`` in ``page``; its result (JSON), or EdgeshipError with the page's
        message. A page that never answers fails after ``timeout_s`` with the console's last lines."""
        token = uuid.uuid4().hex
        page.evaluate("""([fn, a, token]) => {
            window.__edgeship = window.__edgeship || {};
            const f = window.edgeship[fn];
            Promise.resolve().then(() => f(...a)).then(
              (r) => { window.__edgeship[token] = {ok: r}; },
              (e) => { window.__edgeship[token] = {error: window.edgeship.errorText(e), stack: String(e && e.stack || '')}; });
        }""", [function, args["args"], token])
        self._wait(page, f"window.__edgeship && window.__edgeship[{json.dumps(token)}] !== undefined", timeout_s, what)
        out = page.evaluate(f"window.__edgeship[{json.dumps(token)}]")
        if "error" in out:
            raise PageError(out["error"], self.console_tail())
        return out["ok"]

    def publish(self, folder: str | Path) -> str:
        """Serve ``folder`` (a tempdir()) to the page; returns its URL prefix (with a trailing /)."""
        prefix = f"/data/{uuid.uuid4().hex[:12]}/"
        self.server().publish(prefix, Path(folder))
        return prefix


_PW = None


def _playwright():
    """Playwright's driver, one per process (its sync API allows one per thread): browsers of every device share it."""
    global _PW
    if _PW is None:
        from playwright.sync_api import sync_playwright
        _PW = sync_playwright().start()
        atexit.register(_stop_playwright)
    return _PW


def _stop_playwright() -> None:
    global _PW
    if _PW is not None:
        with contextlib.suppress(Exception):
            _PW.stop()
        _PW = None


class PageError(Exception):
    """The page's runtime raised: ``message`` is its text."""

    def __init__(self, message: str, console: str = ""):
        super().__init__(message)
        self.message = message
        self.console = console


def memory_hint(message: str) -> str | None:
    """A hint when a runtime's message says the model did not fit in wasm memory."""
    low = message.lower()
    if any(s in low for s in ("out of memory", "memory access out of bounds", "array buffer allocation failed",
                              "cannot enlarge memory", "could not allocate", "webassembly.memory", "oom",
                              "failed to allocate", "integer overflow")):   # wasm32: a size past 4 GiB overflows
        return ("the model does not fit in the browser's wasm memory (wasm32: at most 4 GiB, usually less in a tab): "
                "ship a smaller or quantized model (int8), or run it natively")
    return None


def encode(a: np.ndarray) -> dict:
    """An array for the page: {data (base64 of its bytes, little-endian), dims, dtype}."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return {"data": base64.b64encode(a.tobytes()).decode("ascii"), "dims": list(a.shape), "dtype": a.dtype.name}


def decode(o: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(o["data"]), dtype=np.dtype(o.get("dtype") or "float32")).reshape(o["dims"])
