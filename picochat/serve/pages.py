"""The HTML pages (static/chat.html, static/label.html) and the headers that make them safe to open.

- Content-Security-Policy: the page may run exactly its own inline <script> and <style> (allowed
  by their SHA-256, computed here from the file, so editing a page needs no second edit) and talk
  to this server only; no other script, style, frame, image or form target. An answer of the
  model that contains HTML is shown as text anyway; this is the second line of defence.
- X-Frame-Options: DENY (and frame-ancestors 'none'): another site cannot show the page in a
  frame and trick a labeler into clicking (clickjacking a ranking).
- X-Content-Type-Options: nosniff: the browser takes the declared content type at its word.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from fastapi.responses import HTMLResponse

_INLINE = {tag: re.compile(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", re.DOTALL | re.IGNORECASE)
           for tag in ("script", "style")}


def page_response(name: str) -> HTMLResponse:
    """One of the static pages, e.g. 'chat.html', with its security headers."""
    html, headers = _page(name)
    return HTMLResponse(html, headers=headers)


def message_page(html: str, status_code: int) -> HTMLResponse:
    """A short page without scripts (e.g. "labeling is off"), with the same headers."""
    return HTMLResponse(html, status_code=status_code, headers=security_headers(html))


def security_headers(html: str) -> dict[str, str]:
    csp = "; ".join([
        "default-src 'none'",
        f"script-src {_sources(html, 'script')}",
        f"style-src {_sources(html, 'style')}",
        "connect-src 'self'",  # fetch() to this server's API
        "img-src 'self'",  # the favicon request
        "base-uri 'none'",
        "form-action 'none'",  # the pages' forms are handled by script, never submitted
        "frame-ancestors 'none'",
    ])
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin"}


def _sources(html: str, tag: str) -> str:
    """CSP sources for the inline blocks of one tag: their hashes, or 'none' if there are none."""
    hashes = [base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii")
              for body in _INLINE[tag].findall(html)]
    return " ".join(f"'sha256-{h}'" for h in hashes) or "'none'"


@cache
def _page(name: str) -> tuple[str, dict[str, str]]:
    html = resources.files("picochat.serve").joinpath("static", name).read_text(encoding="utf-8")
    return html, security_headers(html)
