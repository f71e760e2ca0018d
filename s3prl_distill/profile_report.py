"""Reading a profile (:func:`s3prl_distill.profiler.profile_upstreams`'s result): ratios to the reference upstream
and the plain-text table ``s3prl-distill profile`` prints. Nothing here measures."""

from __future__ import annotations

from typing import Any, Dict, Optional


def _ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def ratios(row: Dict[str, Any], reference: Dict[str, Any]) -> Dict[str, Any]:
    """``row`` / ``reference`` for parameters, MACs, latency and peak memory, per length."""
    keys = list(row["macs"])
    out: Dict[str, Any] = {
        "parameters_backbone": _ratio(row["parameters"]["backbone"], reference["parameters"]["backbone"]),
        "parameters_with_heads": _ratio(row["parameters"]["with_heads"], reference["parameters"]["with_heads"]),
        "macs": {k: _ratio(row["macs"][k], reference["macs"][k]) for k in keys},
        "latency": {k: _ratio(row["latency_s"][k], reference["latency_s"][k]) for k in keys},
    }
    if "memory" in row and "memory" in reference:
        out["peak_memory"] = {k: _ratio(row["memory"]["forward_peak_bytes"][k],
                                        reference["memory"]["forward_peak_bytes"][k]) for k in keys}
    return out


def _cell(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(result: Dict[str, Any]) -> str:
    """The profile as a plain-text table (one row per upstream and audio length)."""
    env, settings = result["environment"], result["settings"]
    lines = [
        f"device {env['device']}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}, threads {env['threads']} "
        f"(torch.set_num_threads), torch {env['torch']}, {env['machine']}, {env.get('cpu') or '?'}",
        f"batch {settings['batch']} for latency (MACs: 1 utterance), warm-up {settings['warmup']}, "
        f"median of {settings['repeats']}; RTF = latency / audio seconds; each call = forward + reading "
        f"{settings.get('feature') or 'nothing'}",
    ]
    reference = result.get("reference")
    if reference:
        lines.append(f"ratios (x) are to {reference}, measured in this run")
    peak = result.get("peak")
    if peak:
        lines.append(f"peak: {peak['dtype']} GEMM {peak['size']}^3 at {peak['gflops']:.1f} GFLOP/s on {peak['threads']} "
                     f"thread(s), this run; '% peak' = 2 x MACs x batch / latency / that rate")
    header = ["upstream", "backbone M", "w/ heads M", "audio", "GMACs", "GMACs/s", "latency ms", "RTF", "peak MiB"]
    if peak:
        header.append("% peak")
    if reference:
        header += ["x backbone", "x MACs", "x latency", "x memory"]
    table = [header]
    for row in result["upstreams"]:
        params = row["parameters"]
        for index, key in enumerate(row["macs"]):
            memory = row.get("memory", {}).get("forward_peak_bytes", {}).get(key)
            cells = [row["label"] if index == 0 else "",
                     f"{params['backbone'] / 1e6:.3f}" if index == 0 else "",
                     f"{params['with_heads'] / 1e6:.3f}" if index == 0 else "",
                     key, f"{row['macs'][key] / 1e9:.3f}", f"{row['gmacs_per_audio_second'][key]:.3f}",
                     f"{row['latency_s'][key] * 1e3:.1f}", f"{row['rtf'][key]:.4f}",
                     _cell(None if memory is None else memory / 2**20, ".1f")]
            if peak:
                fraction = row.get("fraction_of_peak", {}).get(key)
                cells.append(_cell(None if fraction is None else 100 * fraction, ".1f"))
            if reference:
                vs = row["vs_reference"]
                cells += [_cell(vs["parameters_backbone"], ".3f") if index == 0 else "",
                          _cell(vs["macs"][key], ".3f"), _cell(vs["latency"][key], ".3f"),
                          _cell(vs.get("peak_memory", {}).get(key), ".3f")]
            table.append(cells)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for number, cells in enumerate(table):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [f"{row['label']}: {row['parameters']['split']}" for row in result["upstreams"]]
    lines += ["", "parameters: " + "; ".join(notes),
              "MACs: torch FlopCounterMode (matmul, convolution, attention only; elementwise ops and norms are not "
              "counted), FLOPs / 2"]
    if settings.get("memory"):
        lines.append(f"peak memory: {settings['memory']}")
    return "\n".join(lines)
