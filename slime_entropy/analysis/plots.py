"""PNG figures with matplotlib (Agg backend, no display): the entropy histogram and a word cloud of tokens.

The word cloud is laid out here (no word-cloud package): words are placed largest first along an Archimedean
spiral from the panel centre at the first position where their rendered bounding box overlaps no placed word and
fits the panel; font size grows with the square root of the count. Token text is drawn literally
(``parse_math=False``), so ``$`` or ``\\frac`` never trigger mathtext.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slime_entropy.analysis.tokens import TokenCount

__all__ = ["plot_entropy_histogram", "plot_token_cloud", "HISTOGRAM_FLOOR"]

HISTOGRAM_FLOOR = 1e-4
"""Lower edge of the log-spaced bins; smaller entropies (and zeros) are counted in the first bin."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_entropy_histogram(
    series: Sequence[tuple[str, np.ndarray]],
    path: str | Path,
    *,
    threshold: float | None = None,
    rho: float | None = None,
    low_bound: float = 0.01,
    num_bins: int = 60,
) -> Path:
    """Histogram of token entropies on log-spaced bins (log-scale y) and the cumulative share (log x).

    ``series``: ``(label, entropies)`` pairs, e.g. one per model; the first gets the threshold line ``threshold``
    (tau of the top-``rho`` selection). Values below ``HISTOGRAM_FLOOR`` land in the first bin.
    """
    plt = _pyplot()
    if not series or all(v.size == 0 for _, v in series):
        raise ValueError("no entropy values to plot")
    top = max(float(np.max(v)) for _, v in series if v.size)
    edges = np.logspace(math.log10(HISTOGRAM_FLOOR), math.log10(max(top, HISTOGRAM_FLOOR * 10) * 1.05), num_bins + 1)
    fig, (ax_hist, ax_cdf) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, values) in enumerate(series):
        clipped = np.clip(values.astype(np.float64), edges[0], edges[-1])
        color = colors[i % len(colors)]
        ax_hist.hist(
            clipped,
            bins=edges,
            histtype="stepfilled" if len(series) == 1 else "step",
            alpha=0.6 if len(series) == 1 else 1.0,
            color=color,
            linewidth=1.5,
            label=f"{label} ({values.size} tokens)",
        )
        xs = np.sort(np.maximum(values.astype(np.float64), edges[0]))
        ax_cdf.plot(xs, np.arange(1, xs.size + 1) / xs.size, color=color, label=label)
    ax_hist.set_xscale("log")
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel(f"token entropy (nats; values < {HISTOGRAM_FLOOR:g} in the first bin)")
    ax_hist.set_ylabel("tokens")
    ax_hist.set_title("Entropy of response tokens")
    first = series[0][1].astype(np.float64)
    share_low = float((first < low_bound).mean()) if first.size else math.nan
    for ax in (ax_hist, ax_cdf):
        ax.axvline(low_bound, color="tab:blue", linestyle=":", linewidth=1.2)
        if threshold is not None and math.isfinite(threshold) and threshold > 0:
            ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1.2)
    ymax = ax_hist.get_ylim()[1]
    ax_hist.text(low_bound, ymax, f" H<{low_bound:g}: {share_low:.1%}", color="tab:blue", va="top", fontsize=8)
    if threshold is not None and math.isfinite(threshold) and threshold > 0:
        label = f" top {rho:.0%}: H≥{threshold:.3g}" if rho is not None else f" τ={threshold:.3g}"
        ax_hist.text(threshold, ymax / 8, label, color="tab:red", va="top", fontsize=8)
    ax_cdf.set_xscale("log")
    ax_cdf.set_ylim(0, 1)
    ax_cdf.set_xlabel("token entropy (nats)")
    ax_cdf.set_ylabel("share of tokens with entropy ≤ x")
    ax_cdf.set_title("Cumulative share")
    ax_cdf.grid(True, which="major", alpha=0.3)
    if len(series) > 1 or series[0][0]:
        ax_hist.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _layout_words(ax, renderer, words: Sequence[TokenCount], cmap, norm, *, fill: float = 0.3) -> int:
    """Place ``words`` in ``ax`` (whose data units become display pixels). Returns how many were placed.

    Font sizes are ~ sqrt(count), scaled so that the words' boxes cover about ``fill`` of the panel.
    """
    bbox = ax.get_window_extent(renderer)
    width, height = bbox.width, bbox.height
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    top_count = max(w.count for w in words)
    texts = []
    for word in words:
        color = cmap(norm(max(word.entropy_mean, 1e-6))) if math.isfinite(word.entropy_mean) else "0.3"
        size = 8 + 22 * math.sqrt(word.count / top_count)
        texts.append(ax.text(0, 0, word.label, fontsize=size, ha="center", va="center", color=color, parse_math=False))
    area = sum(t.get_window_extent(renderer).width * t.get_window_extent(renderer).height for t in texts)
    scale = min(3.0, max(0.5, math.sqrt(fill * width * height / max(area, 1.0))))
    placed = np.zeros((0, 4))  # x0, y0, x1, y1
    num_placed = 0
    pad = 2.0
    for text in texts:
        text.set_fontsize(text.get_fontsize() * scale)
        extent = text.get_window_extent(renderer)
        w, h = extent.width + pad, extent.height + pad
        position = None
        if w <= width and h <= height:
            for step in range(6000):
                t = 0.2 * step
                x = width / 2 + 2.0 * t * math.cos(t)
                y = height / 2 + 1.4 * t * math.sin(t)
                if 2.0 * t > width and 1.4 * t > height:
                    break
                box = np.array([x - w / 2, y - h / 2, x + w / 2, y + h / 2])
                if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
                    continue
                if placed.size and np.any(
                    (placed[:, 0] < box[2])
                    & (placed[:, 2] > box[0])
                    & (placed[:, 1] < box[3])
                    & (placed[:, 3] > box[1])
                ):
                    continue
                position = (x, y)
                placed = np.vstack([placed, box])
                break
        if position is None:
            text.remove()
            continue
        text.set_position(position)
        num_placed += 1
    return num_placed


def plot_token_cloud(
    panels: Sequence[tuple[str, Sequence[TokenCount]]],
    path: str | Path,
    *,
    entropy_range: tuple[float, float] | None = None,
    max_words: int = 60,
) -> Path:
    """Word clouds side by side (e.g. top-rho tokens and bottom-rho tokens); size ~ sqrt(count), colour = mean
    entropy of the token's selected occurrences (log scale, shared by the panels)."""
    plt = _pyplot()
    from matplotlib.colors import LogNorm, Normalize

    if not panels:
        raise ValueError("no word-cloud panel to draw")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.2), dpi=110, squeeze=False)
    all_means = [w.entropy_mean for _, words in panels for w in words if math.isfinite(w.entropy_mean)]
    low, high = entropy_range or (
        max(min(all_means, default=1e-3), 1e-4),
        max(max(all_means, default=1.0), 1e-3),
    )
    if high <= low:
        high = low * 10
    norm = LogNorm(vmin=low, vmax=high, clip=True) if high / low > 10 else Normalize(vmin=low, vmax=high, clip=True)
    cmap = plt.get_cmap("viridis")
    # The colour bar changes the axes' size, so it comes first: the layout below works in final display pixels.
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=list(axes[0]), fraction=0.025, pad=0.01, label="mean entropy (nats)")
    for ax, (title, _) in zip(axes[0], panels, strict=True):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=10)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        for ax, (title, words) in zip(axes[0], panels, strict=True):
            words = list(words)[:max_words]
            placed = _layout_words(ax, renderer, words, cmap, norm) if words else 0
            ax.set_title(f"{title} ({placed} of {len(words)} shown)", fontsize=10)
        path = Path(path)
        fig.savefig(path)
    plt.close(fig)
    return path


def plot_group_trends(groups: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Entropy statistics per group (e.g. per rollout of a training run), in the given order: mean, median, 80th
    percentile and the top-rho threshold (left), the share of tokens below 0.01 (right)."""
    plt = _pyplot()
    import re

    names = list(groups)
    if len(names) < 2:
        raise ValueError("a trend needs at least two groups")
    numbers = [re.findall(r"\d+", n) for n in names]
    if all(numbers) and len({int(n[-1]) for n in numbers}) == len(names):
        xs, xlabel = [int(n[-1]) for n in numbers], "rollout" if all(n.startswith("rollout") for n in names) else ""
    else:
        xs, xlabel = list(range(len(names))), "group"
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for key, label, style in (
        ("entropy_mean", "mean", "-"),
        ("p50", "median", ":"),
        ("p80", "80th percentile", "--"),
        ("threshold", "top-ρ threshold τ", "-."),
    ):
        ax.plot(xs, [groups[n][key] for n in names], style, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("token entropy (nats)")
    right = ax.twinx()
    right.plot(xs, [groups[n]["frac_below_low"] for n in names], color="0.4", linewidth=1, label="share H < 0.01")
    right.set_ylabel("share of tokens with H < 0.01")
    right.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
    if xlabel == "group":
        ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=8)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Entropy statistics per group")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
