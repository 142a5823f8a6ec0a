"""Report files: produced, non-empty, well-formed; adversarial token text stays escaped; the page renders in
headless Chromium (skipped where no Chromium is installed)."""

import html
import json
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest

from slime_entropy.analysis.records import load_responses
from slime_entropy.analysis.report import ReportOptions, write_report
from slime_entropy.analysis.statistics import select_top

NASTY = ["<script>alert('x')</script>", "&amp;", '"quoted"', "\n", "</span><b>", "$\\frac{1}{2}$", "é", ""]


def nasty_samples(rollout_file):
    """The fixture rollout with text pieces that try to break out of the HTML (and of matplotlib's mathtext)."""
    samples = load_responses(rollout_file)
    out = []
    for i, s in enumerate(samples):
        pieces = tuple(NASTY[(i + t) % len(NASTY)] for t in range(s.response_length))
        out.append(s.replace(text_pieces=pieces, prompt_text="</details><script>evil()</script> & more"))
    return out


def check_png(path):
    from PIL import Image

    assert path.stat().st_size > 5000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels.std() > 5  # not blank


def make_report(rollout_file, out_dir, **kwargs):
    samples = nasty_samples(rollout_file)
    options = ReportOptions(rho=0.2, html_max_responses=5, html_max_tokens_per_response=25, num_top_tokens=15)
    return samples, write_report(out_dir, samples, options, model_name="fixture <model>", **kwargs)


def test_files_produced_and_escaped(rollout_file, tmp_path):
    samples, result = make_report(rollout_file, tmp_path / "report")
    files = result.files
    for key in ("histogram", "token_cloud", "responses_csv", "tokens_top", "tokens_bottom", "markdown", "html"):
        assert files[key].is_file() and files[key].stat().st_size > 0, key
    check_png(files["histogram"])
    check_png(files["token_cloud"])

    summary = json.loads(files["summary"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert summary["summary"]["num_tokens"] == result.summary.num_tokens
    assert summary["summary"]["percentiles"]["p80"] == result.summary.percentiles["p80"]
    assert len(summary["top_tokens"]) == len(result.top_tokens) <= 15
    csv_lines = files["responses_csv"].read_text().splitlines()
    assert len(csv_lines) == len(samples) + 1 and csv_lines[0].startswith("sample_id,group,num_tokens")

    page = files["html"].read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "evil()" in page  # present, but only as escaped text
    assert html.escape("<script>alert('x')</script>") in page and "&lt;/span&gt;&lt;b&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch: opens offline
    assert page.count('src="data:image/png;base64,') == 2
    kept = select_top(samples, 0.2).masks
    spans = re.findall(r'<span class="(t[^"]*)" title="([^"]*)">', page)
    shown = [(s, t) for s in samples[:5] for t in range(min(s.response_length, 25))]
    assert len(spans) == len(shown)
    for (classes, title), (s, t) in zip(spans, shown, strict=True):
        is_kept = classes.endswith(" k")
        assert is_kept == bool(kept[samples.index(s)][t])
        assert f"H={float(s.entropy[t]):.4f}" in title and f"#{t}" in title
        assert ("masked out" in title) == (not s.response_mask[t])


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _run_browser(argv, timeout=90):
    """Run headless Chromium in its own process group; the whole group is killed on time-out or exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helper processes (zygote, renderer) that outlived the browser
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode("utf-8", errors="replace")


def test_renders_in_headless_chromium(rollout_file, tmp_path):
    if _chromium() is None:
        if os.environ.get("SLIME_ENTROPY_REQUIRE_CHROMIUM") == "1":
            pytest.fail("SLIME_ENTROPY_REQUIRE_CHROMIUM=1 but Chromium is not installed")
        pytest.skip("needs Chromium (Debian: apt-get install chromium)")
    samples, result = make_report(rollout_file, tmp_path / "report")
    page = result.files["html"].resolve()
    common = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--window-size=1280,2400",
    ]
    dom = _run_browser(common + [f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page.as_uri()])
    # The DOM the browser built (not the file text): every shown token became a span, none escaped its response.
    spans = re.findall(r'<span class="t[^"]*" title="', dom)  # the legend's sample span has no title
    assert len(spans) == sum(min(s.response_length, 25) for s in samples[:5])
    assert "<title>Token entropy analysis</title>" in dom and "<script" not in dom.lower()
    assert dom.count('class="resp"') == 5
    shot = tmp_path / "shot.png"
    _run_browser(common + [f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={shot}", page.as_uri()])
    check_png(shot)


def test_token_cloud_draws_labels_literally(tmp_path):
    from slime_entropy.analysis.plots import plot_token_cloud
    from slime_entropy.analysis.tokens import TokenCount

    labels = ["$\\frac{1}{2}$", "$x", "^_^", "␣wait", "\\x7f", "日本", "a" * 60, "∅"]
    words = [TokenCount(i, label, 50 - i, 0.1, 60, 0.5, 0.01 * (i + 1)) for i, label in enumerate(labels)]
    path = plot_token_cloud([("top", words), ("bottom", words[::-1]), ("empty", [])], tmp_path / "cloud.png")
    check_png(path)  # an unbalanced '$' would make mathtext raise; nothing is parsed as math


def test_degenerate_inputs_still_report(tmp_path):
    """All-zero entropies (a deterministic model), a one-token response, no log-probs, no tokenizer."""
    from slime_entropy.analysis.records import AnalysisSample

    samples = [
        AnalysisSample(sample_id="a", tokens=[1, 2, 3, 4], response_length=3, response_mask=[1, 1, 1],
                       entropy=[0.0, 0.0, 0.0]),
        AnalysisSample(sample_id="b", tokens=[5, 6], response_length=1, response_mask=[1], entropy=[0.0]),
    ]  # fmt: skip
    result = write_report(tmp_path / "r", samples, ReportOptions(rho=0.2))
    assert result.summary.frac_zero == 1.0 and result.summary.threshold == 0.0
    assert result.summary.num_kept == 4  # every token ties at tau = 0 and ties are kept
    check_png(result.files["histogram"])
    page = result.files["html"].read_text()
    assert page.count('<span class="t c0 k"') == 4 and "#1 " in page  # ids shown without a tokenizer
