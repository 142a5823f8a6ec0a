"""A self-contained HTML page: responses with every token coloured by entropy and the kept (top-rho) tokens marked.

No script and no external resource (a Content-Security-Policy forbids fetching anything; figures are embedded as
data URIs), so the file opens offline in any browser. All text (tokens, prompts, labels) is HTML-escaped. Each
response token is one ``<span class="t cB">`` (``B`` = colour bucket), kept tokens also carry ``k``; hovering shows
the entropy, log-prob, id and position.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from slime_entropy.analysis.records import AnalysisSample

__all__ = ["render_html", "table_html", "ColourScale", "NUM_BUCKETS"]

NUM_BUCKETS = 24


class ColourScale:
    """Entropy -> bucket 0..NUM_BUCKETS-1 on a log scale between ``low`` and ``high`` (bucket 0: H <= low)."""

    def __init__(self, low: float, high: float):
        if not (0 < low < high):
            raise ValueError(f"colour scale needs 0 < low < high, got {low}, {high}")
        self.low, self.high = low, high
        self._log_low, self._span = math.log(low), math.log(high) - math.log(low)

    def bucket(self, entropy: float) -> int:
        if not entropy > self.low:
            return 0
        position = (math.log(entropy) - self._log_low) / self._span
        return min(NUM_BUCKETS - 1, 1 + int(position * (NUM_BUCKETS - 1)))

    def bucket_floor(self, bucket: int) -> float:
        """Smallest entropy of ``bucket`` (for the legend)."""
        if bucket == 0:
            return 0.0
        return math.exp(self._log_low + (bucket - 1) / (NUM_BUCKETS - 1) * self._span)

    def colours(self) -> list[str]:
        from matplotlib import colormaps

        cmap = colormaps["YlOrRd"]
        out = ["transparent"]
        for b in range(1, NUM_BUCKETS):
            # The pale-yellow-to-orange-red part of the map: dark text stays readable on every bucket.
            r, g, bl, _ = cmap(0.05 + 0.6 * (b - 1) / (NUM_BUCKETS - 2))
            out.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(bl * 255):02x}")
        return out


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; font-family: ui-monospace, monospace; }
img { max-width: 100%; border: 1px solid #eee; margin: 6px 0; }
.resp { border: 1px solid #ccc; border-radius: 6px; margin: 14px 0; padding: 8px 12px; }
.meta { font-size: 0.85em; color: #555; margin-bottom: 6px; }
.text { font-family: ui-monospace, 'SFMono-Regular', Menlo, monospace; font-size: 0.9em; line-height: 1.75;
        white-space: pre-wrap; word-break: break-word; }
.t { border-radius: 2px; }
.t.k { border-bottom: 2px solid #1238a8; font-weight: 700; }
.legend { display: flex; align-items: center; gap: 0; font-size: 0.8em; margin: 6px 0; flex-wrap: wrap; }
.legend span { display: inline-block; padding: 2px 4px; min-width: 34px; text-align: center; }
details pre { white-space: pre-wrap; background: #fafafa; padding: 6px; font-size: 0.85em; }
.more { color: #888; font-style: italic; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence], left: Sequence[int] = (0,)) -> str:
    head = "".join(f'<th class="{"l" if i in left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"l" if i in left else ""}">{html.escape(_fmt(v))}</td>' for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.4g}"
    return str(value)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _response_block(
    index: int,
    sample: AnalysisSample,
    kept: np.ndarray,
    pieces: Sequence[str],
    scale: ColourScale,
    max_tokens: int,
) -> str:
    valid = sample.response_mask
    h = sample.entropy
    n_show = min(sample.response_length, max_tokens)
    spans = []
    log_probs = sample.log_probs
    for t in range(n_show):
        entropy = float(h[t])
        tip = f"H={entropy:.4f}"
        if log_probs is not None:
            tip += f" · logp={float(log_probs[t]):.3f}"
        tip += f" · id={int(sample.response_tokens[t])} · #{t}"
        classes = f"t c{scale.bucket(entropy)}"
        if kept[t]:
            classes += " k"
            tip += " · kept"
        if not valid[t]:
            tip += " · masked out"
            classes = "t"
        spans.append(f'<span class="{classes}" title="{html.escape(tip)}">{html.escape(pieces[t])}</span>')
    if n_show < sample.response_length:
        spans.append(f'<span class="more"> … {sample.response_length - n_show} more tokens not shown</span>')
    num_valid = int(valid.sum())
    mean = float(h[valid].mean()) if num_valid else math.nan
    meta = [
        f"#{index}",
        f"id {sample.sample_id}",
        f"{num_valid} tokens",
        f"mean H {_fmt(mean)}",
        f"kept {int(kept.sum())} ({kept.sum() / max(num_valid, 1):.1%})",
    ]
    if sample.reward is not None:
        meta.append(f"reward {_fmt(float(sample.reward))}")
    prompt = ""
    if sample.prompt_text:
        prompt = f"<details><summary>prompt</summary><pre>{html.escape(sample.prompt_text)}</pre></details>"
    return (
        f'<div class="resp" id="r{index}"><div class="meta">{html.escape(" · ".join(meta))}</div>{prompt}'
        f'<div class="text">{"".join(spans)}</div></div>'
    )


def render_html(
    *,
    title: str,
    samples: Sequence[AnalysisSample],
    kept_masks: Sequence[np.ndarray],
    pieces_of: Callable[[AnalysisSample, int], Sequence[str]],
    scale: ColourScale,
    summary_rows: Sequence[tuple[str, str]],
    sections: Sequence[tuple[str, str]] = (),
    images: Sequence[tuple[str, Path]] = (),
    max_responses: int = 20,
    max_tokens_per_response: int = 3000,
) -> str:
    """The page as a string.

    ``pieces_of(sample, n)``: the text pieces of the sample's first ``n`` response tokens. ``summary_rows``: key/value
    pairs for the summary table. ``sections``: ``(heading, html)`` pairs inserted after the figures (their HTML must
    already be escaped, e.g. from :func:`table_html`). ``images``: ``(caption, png path)`` embedded as data URIs.
    """
    colours = scale.colours()
    css = _CSS + "".join(f".c{b} {{ background: {c}; }}\n" for b, c in enumerate(colours))
    legend = "".join(
        f'<span class="c{b}">{"≤" if b == 0 else "≥"}{scale.bucket_floor(max(b, 1)):.2g}</span>'
        for b in range(0, NUM_BUCKETS, 3)
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title><style>{css}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        _table(["statistic", "value"], summary_rows, left=(0, 1)),
    ]
    for caption, path in images:
        parts.append(f"<h2>{html.escape(caption)}</h2>{_image(path, caption)}")
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    shown = min(len(samples), max_responses)
    parts.append(f"<h2>Responses ({shown} of {len(samples)})</h2>")
    parts.append(
        '<div class="legend">entropy:&nbsp;'
        + legend
        + '&nbsp;&nbsp;<span class="t k">kept (top-ρ)</span></div>'
        + '<p class="meta">Each token is coloured by its entropy (log scale); the kept tokens are bold and '
        "underlined. "
        "Hover a token for its entropy, log-prob, id and position.</p>"
    )
    for i in range(shown):
        sample = samples[i]
        n = min(sample.response_length, max_tokens_per_response)
        pieces = list(pieces_of(sample, n))
        if len(pieces) != n:
            raise ValueError(f"pieces_of returned {len(pieces)} pieces for {n} tokens of sample {sample.sample_id}")
        parts.append(_response_block(i, sample, kept_masks[i], pieces, scale, max_tokens_per_response))
    parts.append("</body></html>")
    return "\n".join(parts)


def table_html(headers: Sequence[str], rows: Sequence[Sequence], left: Sequence[int] = (0,)) -> str:
    """An escaped HTML table (for ``render_html`` sections)."""
    return _table(headers, rows, left)
