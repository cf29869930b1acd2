"""Verdicts: the study's findings as plain-language lines, computed from its rows.

Degradation between plain nets of increasing depth, the same for residual
nets, residual vs plain at each depth, nets that did not learn (near chance)
and, where several nets share a depth, their ranking by test error.
"""

from __future__ import annotations

from experiments.study import Row

# Two training errors closer than this (in percentage points) count as equal.
TOLERANCE_PP = 0.5
# How the per-pattern lines name the nets that are not plain (rows of the ResNet studies
# have no pattern: residual).
PATTERN_NOUNS = {"plain": "Plain nets", "residual": "Residual nets", "dense": "Dense nets",
                 "fractal": "Fractal nets", "inception": "Inception nets"}


def verdicts(rows: list[Row]) -> list[str]:
    """Plain-language findings from the rows (training error, mean over seeds)."""
    lines = []
    for variant, arch in sorted({(r.variant, r.arch) for r in rows}):
        group = [r for r in rows if (r.variant, r.arch) == (variant, arch)]
        suffix = f" [{variant}]" if variant else ""
        plain = sorted((r for r in group if r.plain), key=lambda r: r.depth)
        res = sorted((r for r in group if not r.plain), key=lambda r: r.depth)
        for row in group:
            if "diverged" in row.status or "failed" in row.status:
                lines.append(f"{row.label} failed to train ({row.status}).{suffix}")
        for a, b in zip(plain, plain[1:], strict=False):
            ea, eb = _effective(a), _effective(b)
            if ea is None or eb is None:
                continue
            if eb > ea + TOLERANCE_PP:
                lines.append(f"Degradation: {b.label} ends with a higher training error than "
                             f"{a.label} ({eb:.1f}% vs {ea:.1f}%).{suffix}")
            else:
                lines.append(f"No degradation: {b.label} trains as well as {a.label} "
                             f"({eb:.1f}% vs {ea:.1f}%).{suffix}")
        for a, b in zip(res, res[1:], strict=False):
            if b.pattern not in ("", "plain", "residual"):
                continue  # dense, fractal, ...: pattern_verdicts says it, once per family
            ea, eb = _effective(a), _effective(b)
            if ea is None or eb is None:
                continue
            verdict = "no worse than" if eb <= ea + TOLERANCE_PP else "worse than"
            lines.append(f"{PATTERN_NOUNS.get(b.pattern, 'Residual nets')}: {b.label} trains "
                         f"{verdict} {a.label} "
                         f"({eb:.1f}% vs {ea:.1f}% training error).{suffix}")
        for p in plain:
            r = next((x for x in res if x.depth == p.depth), None)
            ep, er = _effective(p), _effective(r) if r else None
            if r is None or ep is None or er is None:
                continue
            if er < ep - TOLERANCE_PP:
                word = "beats"
            elif er <= ep + TOLERANCE_PP:
                word = "matches"
            else:
                word = "loses to"
            test = (f", test {r.test_error:.1f}% vs {p.test_error:.1f}%"
                    if r.test_error is not None and p.test_error is not None else "")
            lines.append(f"At depth {p.depth} the residual net {word} the plain net: "
                         f"train {er:.1f}% vs {ep:.1f}%{test}.{suffix}")
    return lines + failure_verdicts(rows) + ranking_verdicts(rows) + pattern_verdicts(rows)


def failure_verdicts(rows: list[Row]) -> list[str]:
    """Nets whose final training error is within 5 points of chance: they did not learn."""
    lines = []
    for row in rows:
        classes = (row.runs[0].config.get("model") or {}).get("num_classes") if row.runs else None
        if row.train_error is None or not classes:
            continue
        chance = 100.0 * (1 - 1 / classes)
        if row.train_error >= chance - 5.0:
            lines.append(f"{row.label} fails to learn: final training error {row.train_error:.1f}% "
                         f"(chance: {chance:.1f}%).")
    return lines


def ranking_verdicts(rows: list[Row]) -> list[str]:
    """Where several nets share a depth (a knob or variant study), rank them.

    On the validation error when every net of the group has one (choosing on
    the test set would make its error a biased estimate); otherwise on the
    test error, and the line says so.
    """
    lines = []
    for depth, plain in sorted({(r.depth, r.plain) for r in rows}):
        group = [r for r in rows if (r.depth, r.plain) == (depth, plain)
                 and r.test_error is not None]
        if len(group) < 2:
            continue
        on_val = all(r.val_error is not None for r in group)
        key = (lambda r: r.val_error) if on_val else (lambda r: r.test_error)
        group.sort(key=key)
        ranked = ", ".join(f"{r.label} {key(r):.1f}%" for r in group)
        what = ("by final validation error" if on_val else
                "by final test error (no validation split: ranked on the test set)")
        lines.append(f"Depth {depth} ({'plain' if plain else 'residual'}), {what}: {ranked}.")
    return lines


def _effective(row: Row | None) -> float | None:
    """Training error for comparisons; a net that diverged or failed counts as 100%."""
    if row is None:
        return None
    if row.train_error is None and ("diverged" in row.status or "failed" in row.status):
        return 100.0
    return row.train_error


def pattern_verdicts(rows: list[Row]) -> list[str]:
    """Which connectivity patterns degrade with depth, from the shallowest and deepest net of
    each family (pattern and architecture); only for studies with patterns beyond plain and
    residual (``configs/connectivity.py``)."""
    if not any(r.pattern not in ("", "plain", "residual") for r in rows):
        return []
    families: dict[tuple, list[Row]] = {}
    for r in rows:
        if _effective(r) is not None:
            name = r.arch or PATTERN_NOUNS.get(r.pattern, r.pattern)
        families.setdefault((r.variant, r.pattern, name), []).append(r)
    lines, worse, fine = [], [], []
    for (variant, _, name), group in families.items():
        depths = sorted({r.depth for r in group})
        if len(depths) < 2:
            continue
        shallow = min((r for r in group if r.depth == depths[0]), key=_effective)
        deep = min((r for r in group if r.depth == depths[-1]), key=_effective)
        es, ed = _effective(shallow), _effective(deep)
        family = name + (f" [{variant}]" if variant else "")
        degrades = ed > es + TOLERANCE_PP
        (worse if degrades else fine).append(family if family[:1].isupper() and " nets" not in
                                             family else family.lower())
        lines.append(f"{family}: {deep.label} ends at {ed:.1f}% training error against "
                     f"{es:.1f}% for {shallow.label}: "
                     f"{'degrades' if degrades else 'no degradation'} with depth.")
    if worse or fine:
        lines.append(f"Degrade with depth: {', '.join(worse) or 'none'}. "
                     f"Do not: {', '.join(fine) or 'none'}.")
    return lines
