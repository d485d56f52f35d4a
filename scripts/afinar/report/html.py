"""``relatorio.html``: the Markdown report as one self-contained HTML page, for ``snakemake --report``.

Snakemake's HTML report shows images, HTML and PDF inline but offers anything else (Markdown included)
only as a download, so ``relatorio.md`` alone would be listed there and never seen. This renders the
same text with Python-Markdown and inlines the charts as data URIs: the page needs no other file, so it
reads the same inside the report, attached to an email or opened from disk.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
th { background: #f3f3f3; }
pre { background: #f6f8fa; padding: 0.7rem; overflow-x: auto; font-size: 0.85rem; }
code { font-size: 0.9em; }
img { max-width: 100%; }
"""

_IMG = re.compile(r'(<img\b[^>]*\bsrc=")([^"]+)(")')


def markdown_to_html(text: str, base_dir: str | Path, title: str) -> str:
    """A whole HTML page from the report's Markdown; relative ``.png`` links become data URIs."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists"], output_format="html")
    base = Path(base_dir)

    def inline(match: re.Match[str]) -> str:
        src = html.unescape(match.group(2))
        path = base / src
        if "://" in src or src.startswith("data:") or not path.is_file():
            return match.group(0)
        kind = (
            "image/svg+xml" if path.suffix.lower() == ".svg" else f"image/{path.suffix.lower().lstrip('.')}"
        )
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"{match.group(1)}data:{kind};base64,{data}{match.group(3)}"

    body = _IMG.sub(inline, body)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
