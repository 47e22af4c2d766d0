"""An executed notebook as one self-contained HTML page, for the report (the .ipynb is kept beside it).

Markdown cells through markdown-it, code highlighted by Pygments, outputs as the notebook holds them: text,
HTML, PNG/JPEG/SVG images (embedded), errors with their traceback (terminal colours removed). Only packages of
the lock; nbconvert is not needed.

    python -m <package>.notebook_html results/notebooks/prepare.ipynb results/notebooks/prepare.html
"""

from __future__ import annotations

import argparse
import html
import re
from pathlib import Path

import nbformat
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1rem auto; padding: 0 1rem; }
.cell { margin: 0.8rem 0; }
.prompt { color: #888; font: 0.8rem monospace; }
.code .highlight { background: #f6f8fa; border: 1px solid #ddd; padding: 0.3rem 0.6rem; overflow-x: auto; }
.output pre { background: #fff; border-left: 3px solid #ddd; padding: 0.2rem 0.6rem; overflow-x: auto; margin: 0.2rem 0; }
.output pre.stderr { background: #fff5f5; }
.output pre.error { background: #fdd; border-left-color: #c00; }
.output img { max-width: 100%; }
.tags { color: #888; font-size: 0.8rem; }
"""


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _output(output) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        name = output.get("name", "stdout")
        return f'<pre class="{name}">{html.escape(_text(output.get("text", "")))}</pre>'
    if kind == "error":
        trace = ANSI.sub("", "\n".join(output.get("traceback", [])))
        return f'<pre class="error">{html.escape(trace or output.get("ename", "error"))}</pre>'
    data = output.get("data", {})
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            payload = _text(data[mime]).replace("\n", "")
            return f'<img src="data:{mime};base64,{payload}" alt="output image">'
    if "image/svg+xml" in data:
        return _text(data["image/svg+xml"])
    if "text/html" in data:
        return f'<div class="html">{_text(data["text/html"])}</div>'
    if "text/plain" in data:
        return f"<pre>{html.escape(_text(data['text/plain']))}</pre>"
    return ""


def render(notebook: nbformat.NotebookNode, title: str) -> str:
    markdown = MarkdownIt("commonmark").enable("table")
    formatter = HtmlFormatter()
    cells = []
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        tag_line = f'<div class="tags">tags: {html.escape(", ".join(tags))}</div>' if tags else ""
        if cell.cell_type == "markdown":
            cells.append(f'<div class="cell markdown">{markdown.render(cell.source)}</div>')
        elif cell.cell_type == "code":
            count = cell.get("execution_count") or " "
            outputs = "".join(_output(output) for output in cell.get("outputs", []))
            cells.append(
                f'<div class="cell">{tag_line}<div class="prompt">In [{count}]:</div>'
                f'<div class="code">{highlight(cell.source, PythonLexer(), formatter)}</div>'
                f'<div class="output">{outputs}</div></div>'
            )
        else:
            cells.append(f'<div class="cell raw"><pre>{html.escape(cell.source)}</pre></div>')
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}{formatter.get_style_defs('.highlight')}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n" + "\n".join(cells) + "\n</body></html>\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", help="the executed .ipynb")
    parser.add_argument("html", help="where the HTML page goes")
    args = parser.parse_args(argv)
    notebook = nbformat.read(args.notebook, as_version=4)
    out = Path(args.html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(notebook, f"{Path(args.notebook).name} (executed)"), encoding="utf-8")


if __name__ == "__main__":
    main()
