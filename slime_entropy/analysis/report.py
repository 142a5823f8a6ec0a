"""Everything one analysis writes, from scored samples: numbers, tables, figures and the HTML page.

Files in ``out_dir``:

==========================  ====================================================================================
``summary.json``            all numbers: percentiles, share below 0.01, tau, kept counts, per-group statistics,
                            top/bottom token tables, model overlaps
``report.md``               the same as Markdown tables
``responses.csv``           per-response statistics (tokens, mean/median/max entropy, share < 0.01, kept, reward)
``tokens_top.csv``          the most frequent top-rho (high-entropy) tokens; ``tokens_bottom.csv`` bottom-rho
``entropy_histogram.png``   log-binned histogram (log y) and cumulative share; one curve per model when comparing
``token_cloud.png``         word clouds of the top-rho and bottom-rho tokens
``entropy_by_group.png``    (several groups, e.g. rollouts) mean, median, p80, tau and the share < 0.01 per group
``report.html``             self-contained page: summary, figures, tables, responses coloured by entropy
``overlap.csv``             (when comparing models) top-rho position overlap, vs the reference and vs the previous
==========================  ====================================================================================
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from slime_entropy.analysis.config import ReportOptions
from slime_entropy.analysis.html_report import ColourScale, render_html, table_html
from slime_entropy.analysis.overlap import OverlapResult, compare_models
from slime_entropy.analysis.plots import plot_entropy_histogram, plot_group_trends, plot_token_cloud
from slime_entropy.analysis.records import AnalysisSample
from slime_entropy.analysis.statistics import (
    LOW_ENTROPY_BOUND,
    EntropySummary,
    select_bottom,
    select_top,
    summarize,
    valid_entropies,
)
from slime_entropy.analysis.tokens import TokenCount, TokenLabeler, text_pieces, token_frequencies

__all__ = ["ReportOptions", "AnalysisResult", "analyse", "write_report"]

logger = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    summary: EntropySummary
    top_tokens: list[TokenCount]
    bottom_tokens: list[TokenCount]
    groups: dict[str, dict[str, float]]
    overlaps: dict[str, list[OverlapResult]]
    files: dict[str, Path]

    def to_dict(self) -> dict:
        return {
            "summary": self.summary.to_dict(),
            "groups": self.groups,
            "top_tokens": [asdict(t) for t in self.top_tokens],
            "bottom_tokens": [asdict(t) for t in self.bottom_tokens],
            "overlaps": {k: [r.to_dict() for r in v] for k, v in self.overlaps.items()},
            "files": {k: str(v) for k, v in self.files.items()},
        }


def _group_stats(samples: Sequence[AnalysisSample], rho: float) -> dict[str, dict[str, float]]:
    """Per ``sample.group`` (when there are several): the main numbers computed within the group."""
    names = sorted({s.group for s in samples}, key=_natural_key)
    if len(names) < 2:
        return {}
    out = {}
    for name in names:
        members = [s for s in samples if s.group == name]
        values = valid_entropies(members).astype(np.float64)
        if values.size == 0:
            continue
        selection = select_top(members, rho, "all")
        out[name] = {
            "num_responses": float(len(members)),
            "num_tokens": float(values.size),
            "entropy_mean": float(values.mean()),
            "p50": float(np.percentile(values, 50)),
            "p80": float(np.percentile(values, 80)),
            "frac_below_low": float((values < LOW_ENTROPY_BOUND).mean()),
            "threshold": float(selection.threshold),
            "kept_ratio": selection.num_kept / values.size,
        }
    return out


def _natural_key(text: str):
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def analyse(
    samples: Sequence[AnalysisSample],
    options: ReportOptions,
    *,
    labeler: TokenLabeler,
    comparisons: Sequence[tuple[str, Sequence[AnalysisSample]]] = (),
) -> tuple[AnalysisResult, dict]:
    """The numbers (no files). ``comparisons``: ``(name, samples)`` of other models on the same responses; the
    reference (``samples``) comes first in the overlap tables. Returns the result and the selections."""
    top = select_top(samples, options.rho, options.scope)
    bottom = select_bottom(samples, options.rho, "all")
    summary = summarize(samples, options.rho, options.scope, selection=top)
    result = AnalysisResult(
        summary=summary,
        top_tokens=token_frequencies(samples, top.masks, labeler, limit=options.num_top_tokens),
        bottom_tokens=token_frequencies(samples, bottom.masks, labeler, limit=options.num_top_tokens),
        groups=_group_stats(samples, options.rho),
        overlaps={},
        files={},
    )
    if comparisons:
        result.overlaps = compare_models([("reference", samples), *comparisons], options.rho, options.scope)
        if len(comparisons) == 1:  # "vs previous" would repeat "vs reference"
            del result.overlaps["vs_previous"]
    return result, {"top": top, "bottom": bottom}


def _summary_rows(summary: EntropySummary, model: str) -> list[tuple[str, str]]:
    rows = [("model", model or "–")] if model else []
    rows += [
        ("responses", str(summary.num_responses)),
        ("valid response tokens", str(summary.num_tokens)),
        ("mean entropy (nats)", f"{summary.entropy_mean:.4f}"),
        (f"share of tokens with H < {LOW_ENTROPY_BOUND}", f"{summary.frac_below_low:.2%}"),
        ("share of tokens with H = 0", f"{summary.frac_zero:.2%}"),
    ]
    rows += [(f"percentile {k}", f"{v:.4g}") for k, v in summary.percentiles.items()]
    if summary.scope == "all":
        rows.append(
            (f"threshold τ of the top {summary.rho:g} (k-th largest, training rule)", f"{summary.threshold:.4g}")
        )
    rows += [
        ("kept tokens (top-ρ, ties kept)", f"{summary.num_kept} of {summary.num_tokens} ({summary.kept_ratio:.2%})"),
        ("mean entropy of kept / other tokens", f"{summary.kept_entropy_mean:.4g} / {summary.rest_entropy_mean:.4g}"),
        (f"bottom {summary.rho:g} bound (k-th smallest)", f"{summary.low_threshold:.4g}"),
        ("per response: mean of mean entropy", f"{summary.response_summary['entropy_mean']['mean']:.4g}"),
        ("per response: median share H < 0.01", f"{summary.response_summary['frac_below_low']['median']:.2%}"),
        (
            "per response: kept share min / median / max",
            "{min:.1%} / {median:.1%} / {max:.1%}".format(**summary.response_summary["kept_ratio"]),
        ),
    ]
    return rows


def _token_rows(tokens: Sequence[TokenCount]) -> list[list]:
    return [
        [t.label, t.token_id, t.count, f"{t.share:.2%}", t.occurrences, f"{t.selected_rate:.1%}", t.entropy_mean]
        for t in tokens
    ]


_TOKEN_HEADERS = ["token", "id", "count", "share of set", "occurrences", "selected when seen", "mean H"]
_OVERLAP_HEADERS = ["reference", "other", "overlap", "jaccard", "kept (ref)", "kept (other)", "common", "entropy r"]


def _overlap_rows(rows: Sequence[OverlapResult]) -> list[list]:
    return [
        [
            r.reference,
            r.other,
            f"{r.overlap:.2%}",
            f"{r.jaccard:.2%}",
            r.num_reference_kept,
            r.num_other_kept,
            r.num_common,
            r.entropy_pearson,
        ]
        for r in rows
    ]


def _markdown(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("`", "\\`")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    samples: Sequence[AnalysisSample],
    options: ReportOptions,
    *,
    tokenizer=None,
    model_name: str = "",
    comparisons: Sequence[tuple[str, Sequence[AnalysisSample]]] = (),
) -> AnalysisResult:
    """Analyse ``samples`` (scored) and write every file of the module docstring into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labeler = TokenLabeler(tokenizer)
    result, selections = analyse(samples, options, labeler=labeler, comparisons=comparisons)
    summary = result.summary
    name = model_name or "reference"
    if comparisons:  # name the reference in the overlap rows
        for rows in result.overlaps.values():
            for i, r in enumerate(rows):
                if r.reference == "reference":
                    rows[i] = OverlapResult(**{**r.to_dict(), "reference": name})

    files = result.files
    series = [(name, valid_entropies(samples))] + [(n, valid_entropies(s)) for n, s in comparisons]
    files["histogram"] = plot_entropy_histogram(
        series,
        out / "entropy_histogram.png",
        threshold=summary.threshold if options.scope == "all" else None,
        rho=options.rho,
    )
    files["token_cloud"] = plot_token_cloud(
        [
            (f"top {options.rho:g} (high-entropy) tokens", result.top_tokens),
            (f"bottom {options.rho:g} (low-entropy) tokens", result.bottom_tokens),
        ],
        out / "token_cloud.png",
    )
    if result.groups:
        files["group_trends"] = plot_group_trends(result.groups, out / "entropy_by_group.png")
    files["responses_csv"] = out / "responses.csv"
    with files["responses_csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        columns = [
            "sample_id",
            "group",
            "num_tokens",
            "entropy_mean",
            "entropy_median",
            "entropy_max",
            "frac_below_low",
            "num_kept",
            "kept_ratio",
            "reward",
        ]
        writer.writerow(columns)
        for r in summary.responses:
            writer.writerow([getattr(r, c) for c in columns])
    for key, tokens in (("tokens_top", result.top_tokens), ("tokens_bottom", result.bottom_tokens)):
        files[key] = out / f"{key}.csv"
        with files[key].open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "token_id", "count", "share", "occurrences", "selected_rate", "entropy_mean"])
            for t in tokens:
                writer.writerow(
                    [t.label, t.token_id, t.count, t.share, t.occurrences, t.selected_rate, t.entropy_mean]
                )
    overlap_rows = [r for rows in result.overlaps.values() for r in rows]
    if overlap_rows:
        files["overlap_csv"] = out / "overlap.csv"
        with files["overlap_csv"].open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["kind", *overlap_rows[0].to_dict()])
            writer.writeheader()
            for kind, rows in result.overlaps.items():
                for r in rows:
                    writer.writerow({"kind": kind, **r.to_dict()})

    summary_rows = _summary_rows(summary, model_name)
    md = [f"# {options.title}", "", _markdown(["statistic", "value"], summary_rows)]
    sections = []
    if result.groups:
        headers = ["group", "responses", "tokens", "mean H", "p50", "p80", "share H<0.01", "τ", "kept"]
        rows = [
            [
                g,
                int(v["num_responses"]),
                int(v["num_tokens"]),
                v["entropy_mean"],
                v["p50"],
                v["p80"],
                f"{v['frac_below_low']:.2%}",
                v["threshold"],
                f"{v['kept_ratio']:.2%}",
            ]
            for g, v in result.groups.items()
        ]
        md += ["", "## Per group", "", _markdown(headers, rows)]
        sections.append(("Per group", table_html(headers, rows)))
    for title, rows in (
        ("Top-ρ overlap vs the reference", result.overlaps.get("vs_reference")),
        ("Top-ρ overlap vs the previous model", result.overlaps.get("vs_previous")),
    ):
        if rows:
            md += ["", f"## {title}", "", _markdown(_OVERLAP_HEADERS, _overlap_rows(rows))]
            sections.append((title, table_html(_OVERLAP_HEADERS, _overlap_rows(rows), left=(0, 1))))
    for title, tokens in (
        (f"Most frequent top-{options.rho:g} (high-entropy) tokens", result.top_tokens),
        (f"Most frequent bottom-{options.rho:g} (low-entropy) tokens", result.bottom_tokens),
    ):
        md += ["", f"## {title}", "", _markdown(_TOKEN_HEADERS, _token_rows(tokens))]
        sections.append((title, table_html(_TOKEN_HEADERS, _token_rows(tokens))))
    files["markdown"] = out / "report.md"
    files["markdown"].write_text("\n".join(md) + "\n", encoding="utf-8")

    values = valid_entropies(samples)
    high = max(float(np.percentile(values, 99)), (summary.threshold if math.isfinite(summary.threshold) else 0) * 2)
    scale = ColourScale(LOW_ENTROPY_BOUND, max(high, LOW_ENTROPY_BOUND * 10))

    def pieces_of(sample: AnalysisSample, n: int) -> Sequence[str]:
        if sample.text_pieces is not None:
            return sample.text_pieces[:n]
        ids = sample.response_tokens[:n]
        if tokenizer is None:
            return [f"#{int(t)} " for t in ids]
        return text_pieces(tokenizer, ids)

    page = render_html(
        title=options.title,
        samples=samples,
        kept_masks=selections["top"].masks,
        pieces_of=pieces_of,
        scale=scale,
        summary_rows=summary_rows,
        sections=sections,
        images=[("Entropy distribution", files["histogram"]), ("Top-ρ vs bottom-ρ tokens", files["token_cloud"])]
        + ([("Entropy per group", files["group_trends"])] if "group_trends" in files else []),
        max_responses=options.html_max_responses,
        max_tokens_per_response=options.html_max_tokens_per_response,
    )
    files["html"] = out / "report.html"
    files["html"].write_text(page, encoding="utf-8")
    files["summary"] = out / "summary.json"
    files["summary"].write_text(json.dumps(_finite(result.to_dict()), indent=1, default=_json_default) + "\n")
    return result


def _finite(value):
    """NaN/inf -> None, recursively (strict JSON, readable by browsers and jq)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
