"""A self-contained HTML page of explanations: image, heatmap, phrases and channel groups.

Every picture is embedded as a base64 PNG, so the file can be mailed or attached to a ticket and
opens anywhere without the images beside it.

Example::

    from textcam.runtime import Explainer
    from textcam.runtime.html_report import ReportItem, write_html_report

    explainer = Explainer("shapes.textcam")
    items = [ReportItem(path.name, Image.open(path), explainer.explain(path, groups=True))
             for path in paths]
    write_html_report("report.html", items, title="What the model saw")
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from textcam.runtime.bundle_files import write_file_atomic
from textcam.runtime.colormaps import colorize
from textcam.runtime.explanation import Explanation
from textcam.runtime.images import to_rgb

THUMBNAIL = 192
"""Display size of each picture in pixels (small images are enlarged without smoothing)."""


@dataclass
class ReportItem:
    name: str
    image: Image.Image
    explanation: Explanation
    note: str | None = None
    """Extra text under the name, e.g. the ground truth of a generated scene."""


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(image: Image.Image, caption: str) -> str:
    return (f'<figure><img src="{_png(image)}" width="{THUMBNAIL}" height="{THUMBNAIL}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _item_html(item: ReportItem) -> str:
    result, image = item.explanation, to_rgb(item.image)
    heat = Image.fromarray(colorize(result.heatmap))
    pictures = [_picture(image, "image"), _picture(heat, "heatmap"), _picture(result.overlay(image), "overlay")]
    pictures += [_picture(g.overlay(image), f"{g.phrase} ({g.share:.0%})") for g in result.groups]
    # Explanation.concepts is in selection order (weight = alpha share), not sorted by score
    phrases = "".join(f"<li>{html.escape(c.phrase)} <span class=score>score {c.score:.3f}, "
                      f"weight {c.weight:.2f}</span></li>" for c in result.concepts)
    note = f"<p class=note>{html.escape(item.note)}</p>" if item.note else ""
    return (
        f"<section><h2>{html.escape(item.name)}</h2>{note}"
        f"<p><b>{html.escape(result.label)}</b> (p = {result.score:.3f})</p>"
        + ("<p class=note>phrases in order of selection weight (fill-ins, weight 0, by score)</p>"
           f"<ol class=phrases>{phrases}</ol>" if phrases else "<p class=note>no semantics in this bundle</p>")
        + f'<div class=row>{"".join(pictures)}</div></section>'
    )


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
section { border-top: 1px solid #ccc; padding: 1em 0; }
.row { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; text-align: center; font-size: 0.85em; }
img { image-rendering: pixelated; border: 1px solid #ddd; }
.phrases { margin: 0.3em 0; } .score { color: #777; font-size: 0.85em; } .note { color: #555; }
"""


def html_report(items: Sequence[ReportItem], title: str = "textcam explanations", intro: str = "") -> str:
    body = "".join(_item_html(item) for item in items)
    intro_html = f"<p>{html.escape(intro)}</p>" if intro else ""
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro_html}{body}</body></html>\n")


def write_html_report(path: str | Path, items: Sequence[ReportItem], title: str = "textcam explanations",
                      intro: str = "") -> Path:
    """Write the page atomically (a reader never sees half a file) and return its path."""
    path = Path(path)
    write_file_atomic(path, html_report(items, title, intro).encode("utf-8"))
    return path
