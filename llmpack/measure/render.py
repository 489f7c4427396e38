"""Rendering a measurement :class:`~llmpack.measure.report.Report`: the Markdown and HTML tables and the PNG plot.

:class:`~llmpack.measure.report.Report`'s ``to_markdown`` / ``to_html`` / ``plot`` call these; the report holds
the figures, this module only lays them out (it does not import the report: ``report`` is typed ``Any``).

Example:
    >>> from llmpack.measure.report import Report
    >>> to_markdown(Report.example()).splitlines()[2]
    '**bf16: 0.50× size, 2.0× faster (b1), +0.3% ppl**'
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from llmpack._atomic import atomic_path, atomic_write

__all__ = ["to_markdown", "to_html", "plot", "size_rows", "latency_rows", "accuracy_rows", "env_line"]


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return b / a


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def _fmt(x: float | None, spec: str = ".4g", suffix: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:{spec}}{suffix}"


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}×"



def size_rows(report: Any) -> list[tuple[str, str, str, str]]:
    """(label, baseline, candidate, ratio) rows of the size table."""
    a, b = report.size_baseline, report.size_candidate
    rows = []
    if a.disk_bytes is not None or b.disk_bytes is not None:
        rows.append(("weight files on disk", _fmt_bytes(a.weight_file_bytes), _fmt_bytes(b.weight_file_bytes),
                     _fmt_ratio(report.disk_ratio)))
        rows.append(("all files on disk", _fmt_bytes(a.disk_bytes), _fmt_bytes(b.disk_bytes),
                     _fmt_ratio(_ratio(a.disk_bytes, b.disk_bytes))))
    rows.append(("parameters + buffers", _fmt_bytes(a.total_param_bytes), _fmt_bytes(b.total_param_bytes),
                 _fmt_ratio(report.param_ratio)))
    for dt in sorted(set(a.param_bytes_by_dtype) | set(b.param_bytes_by_dtype)):
        rows.append((f"  {dt}", _fmt_bytes(a.param_bytes_by_dtype.get(dt, 0)),
                     _fmt_bytes(b.param_bytes_by_dtype.get(dt, 0)), ""))
    rows.append(("peak memory, loading", _fmt_bytes(a.load_peak_bytes), _fmt_bytes(b.load_peak_bytes),
                 _fmt_ratio(_ratio(a.load_peak_bytes, b.load_peak_bytes))))
    rows.append(("peak memory, running", _fmt_bytes(a.run_peak_bytes), _fmt_bytes(b.run_peak_bytes),
                 _fmt_ratio(_ratio(a.run_peak_bytes, b.run_peak_bytes))))
    return rows


def no_latency(report: Any) -> str:
    """The sentence shown instead of the latency table (the note that says why it was not measured)."""
    why = next((n for n in report.notes if n.startswith("latency not measured")), "latency not measured")
    return why[0].upper() + why[1:] + "."


def latency_rows(report: Any) -> list[tuple[str, ...]]:
    """(phase, batch×seq, baseline, candidate, tokens/s, speedup, runs) rows of the latency table."""
    rows = []
    for e in report.latency:
        shape = f"{e.batch_size}×{e.seq_len}" + (f" +{e.new_tokens}" if e.new_tokens else "")
        unit = "ms/step" if e.phase == "decode" else "ms"
        rows.append((e.phase, shape, f"{e.baseline.p50_ms:.2f} / {e.baseline.p95_ms:.2f} {unit}",
                     f"{e.candidate.p50_ms:.2f} / {e.candidate.p95_ms:.2f} {unit}",
                     f"{e.baseline.tokens_per_s:.1f} → {e.candidate.tokens_per_s:.1f}",
                     f"{e.speedup:.2f}×", str(len(e.baseline.samples_ms))))
    return rows


def accuracy_rows(report: Any) -> list[tuple[str, str, str, str]]:
    """(label, baseline, candidate, delta) rows of the accuracy table, per task."""
    a = report.accuracy
    if a.task == "causal-lm":
        return [
            ("perplexity", _fmt(a.ppl_baseline), _fmt(a.ppl_candidate), _fmt(a.ppl_delta_pct, "+.2f", "%")),
            ("KL divergence mean / p99 (nats)", "", f"{_fmt(a.kl_mean, '.3g')} / {_fmt(a.kl_p99, '.3g')}", ""),
            ("top-1 agreement", "", _fmt(a.top1, ".4f"), ""),
            ("scored tokens / windows", "", f"{a.tokens} / {a.windows} (window {a.window}, stride {a.stride})", ""),
        ]
    return [
        ("embedding cosine mean / min", "", f"{_fmt(a.cosine_mean, '.5f')} / {_fmt(a.cosine_min, '.5f')}", ""),
        ("paraphrase pair similarity", _fmt(a.paraphrase_sim_baseline, ".3f"),
         _fmt(a.paraphrase_sim_candidate, ".3f"), ""),
        ("unrelated pair similarity", _fmt(a.unrelated_sim_baseline, ".3f"),
         _fmt(a.unrelated_sim_candidate, ".3f"), ""),
        ("sentences", "", str(a.sentences), ""),
    ]


def env_line(report: Any) -> str:
    """One line: device, threads, library versions and the measurement's wall time."""
    e = report.environment
    return (f"{e.get('device', '?')} ({e.get('device_name', '?')}), {e.get('threads', '?')} threads, "
            f"torch {e.get('torch', '?')}, transformers {e.get('transformers', '?')}, "
            f"llmpack {e.get('llmpack', '?')}; measured in {report.duration_s:.1f} s")


def to_markdown(report: Any, path: str | os.PathLike[str] | None = None) -> str:
    """A Markdown report (summary, size, latency, accuracy, gates, environment, notes).

    Example:
        >>> from llmpack.measure.report import Report
        >>> to_markdown(Report.example()).splitlines()[0]
        '## llmpack measure: base → cand'
    """
    def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return out

    b, c = report.baseline, report.candidate
    lines = [f"## llmpack measure: {b.name} → {c.name}", "", f"**{report.summary()}**", ""]
    lines.append(f"Baseline `{b.name}` ({b.architecture}, {b.dtype}); candidate `{c.name}` "
                 f"({c.architecture}, {c.dtype}{', method ' + c.method if c.method else ''}); task {report.task}.")
    lines += ["", "### Size", ""]
    lines += table(("", "baseline", "candidate", "ratio"), size_rows(report))
    lines += ["", "### Latency (p50 / p95, interleaved)", ""]
    if report.latency:
        lines += table(("phase", "batch×seq", "baseline", "candidate", "tokens/s", "speedup", "runs"),
                       latency_rows(report))
    else:
        lines.append(no_latency(report))
    lines += ["", "### Accuracy", ""]
    lines += table(("", "baseline", "candidate", "delta"), accuracy_rows(report))
    if report.gate_results:
        lines += ["", f"### Gates: {'passed' if report.passed else 'FAILED'}", ""]
        lines += [f"- {g.line()}" for g in report.gate_results]
    lines += ["", "### Environment", "", env_line(report)]
    if report.notes:
        lines += ["", "### Notes", ""] + [f"- {n}" for n in report.notes]
    text = "\n".join(lines) + "\n"
    if path is not None:
        _write_text(Path(path), text)
    return text


def to_html(report: Any) -> str:
    """A self-contained HTML fragment (what notebooks show).

    Example:
        >>> from llmpack.measure.report import Report
        >>> "<table" in to_html(Report.example())
        True
    """
    esc = html.escape

    def table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
        h = "".join(f"<th>{esc(x)}</th>" for x in head)
        body = "".join("<tr>" + "".join(f"<td>{esc(x)}</td>" for x in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"

    colour = "#1a7f37" if report.passed else "#cf222e"
    parts = [
        "<div class=\"llmpack-report\">",
        f"<h3>llmpack measure: {esc(report.baseline.name)} → {esc(report.candidate.name)}</h3>",
        f"<p style=\"font-weight:bold;color:{colour}\">{esc(report.summary())}</p>",
        "<h4>Size</h4>", table(("", "baseline", "candidate", "ratio"), size_rows(report)),
        "<h4>Latency (p50 / p95, interleaved)</h4>",
        table(("phase", "batch×seq", "baseline", "candidate", "tokens/s", "speedup", "runs"),
              latency_rows(report)) if report.latency else f"<p>{esc(no_latency(report))}</p>",
        "<h4>Accuracy</h4>", table(("", "baseline", "candidate", "delta"), accuracy_rows(report)),
    ]
    if report.gate_results:
        parts.append(f"<h4>Gates: {'passed' if report.passed else 'FAILED'}</h4><ul>"
                     + "".join(f"<li>{esc(g.line())}</li>" for g in report.gate_results) + "</ul>")
    parts.append(f"<p><small>{esc(env_line(report))}</small></p>")
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</div>")
    return "\n".join(parts)


def plot(report: Any, path: str | os.PathLike[str]) -> Path:
    """Write a PNG: latency distributions (box plots per phase and batch size) and size bars.

    Example:
        >>> import tempfile, os
        >>> from llmpack.measure.report import Report
        >>> p = plot(Report.example(), os.path.join(tempfile.mkdtemp(), "r.png"))
        >>> p.stat().st_size > 1000
        True
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), dpi=100)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    data, labels, colours = [], [], []
    for e in report.latency:
        tag = f"{e.phase}\nb{e.batch_size}"
        for who, t, col in (("A", e.baseline, "#8c959f"), ("B", e.candidate, "#0969da")):
            data.append(t.samples_ms or [t.p50_ms])
            labels.append(f"{tag} {who}")
            colours.append(col)
    if data:
        bp = ax1.boxplot(data, patch_artist=True, showfliers=True)
        for patch, col in zip(bp["boxes"], colours):
            patch.set_facecolor(col)
        ax1.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
        ax1.set_yscale("log")
    ax1.set_ylabel("ms (decode: ms per step)")
    ax1.set_title(f"latency — A = {report.baseline.label}, B = {report.candidate.label}")
    a, b = report.size_baseline, report.size_candidate
    cats = [("weights on disk", a.weight_file_bytes, b.weight_file_bytes),
            ("params+buffers", a.total_param_bytes, b.total_param_bytes),
            ("peak load", a.load_peak_bytes, b.load_peak_bytes),
            ("peak run", a.run_peak_bytes, b.run_peak_bytes)]
    cats = [c for c in cats if c[1] is not None or c[2] is not None]
    xs = list(range(len(cats)))
    ax2.bar([x - 0.2 for x in xs], [(c[1] or 0) / 2**20 for c in cats], 0.4, label=report.baseline.label,
            color="#8c959f")
    ax2.bar([x + 0.2 for x in xs], [(c[2] or 0) / 2**20 for c in cats], 0.4, label=report.candidate.label,
            color="#0969da")
    ax2.set_xticks(xs, [c[0] for c in cats], fontsize=8)
    ax2.set_ylabel("MiB")
    ax2.set_title("size and memory")
    ax2.legend()
    fig.suptitle(report.summary(), fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
