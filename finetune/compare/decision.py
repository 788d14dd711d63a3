""""Adapter or prompt?": one recommendation from a typed report, with the evidence behind each clause.

Pure: reads the schema models (style, answer quality, drift, retained ability, arena ratings, latency and
break-even) and returns a Decision. docs/compare.md states the rules.
"""

from __future__ import annotations

import math

from finetune.arena.report import arena_reason  # the arena's words, also when its votes arrive later
from finetune.compare.analysis import CONTENT_MARGIN, LOOP_ALERT, find_difference
from finetune.compare.schema import ArmMetrics, Decision, Difference, Estimate, Reason, Report
from finetune.compare.stats import MIN_SIGNIFICANT_N

# "Not enough evidence" asks for the prompts that would detect the observed style gap with 80% power,
# but never for fewer than this many more (a handful more prompts settles nothing).
MIN_MORE_PROMPTS = 8


def _pct(value: float | None) -> str:
    """0.4 -> '40%'."""
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _est(e: Estimate | None, digits: int = 2) -> str:
    """'0.85 [0.78, 0.91]' or 'n/a'."""
    if e is None or e.mean is None:
        return "n/a"
    if e.ci_low is None or e.ci_high is None:
        return f"{e.mean:.{digits}f} (n={e.n}, no interval)"
    return f"{e.mean:.{digits}f} [{e.ci_low:.{digits}f}, {e.ci_high:.{digits}f}]"


def _diff(report: Report, metric: str, a: str, b: str) -> Difference | None:
    """The paired difference a vs b (flipped if it was computed as b vs a)."""
    return find_difference(report.differences, metric, a, b)


def _wins(d: Difference | None, arm: str) -> bool:
    """Whether `arm` significantly wins this difference."""
    return d is not None and d.significant and d.better == arm


def _style_metric(report: Report) -> str:
    """The style measure to decide on: the classifier's score, else the marker rate."""
    return "style" if report.classifier.available else "marker_rate"


def _diff_text(d: Difference | None) -> str:
    """'+0.41 [0.30, 0.52], n=24, p=0.001 (Holm)' for a reason line."""
    if d is None or d.mean is None:
        return "no data"
    if d.ci_low is None or d.ci_high is None:
        return f"{d.mean:+.2f}, n={d.n} (not enough data for an interval)"
    text = f"{d.mean:+.2f} [{d.ci_low:+.2f}, {d.ci_high:+.2f}], n={d.n}"
    if d.p_holm is not None:
        text += f", p={d.p_holm:.2g} Holm"
    elif d.p_value is not None:
        text += f", p={d.p_value:.2g}"
    return text


def _unmerged_note(arm: _Arm, report: Report) -> str:
    """For an adapter arm: its decoding speed unmerged beside that of the arm a merged adapter would decode as.

    compare runs adapters as PEFT runs them, unmerged: every decoding step adds each LoRA layer's two small
    products (40-50% a token for the bundled 135M model on a CPU, docs/compare.md). Merged into the weights the
    adapter costs nothing a token: `adapter` then decodes as `base` does (the same input), `adapter+prompt` as
    `prompt` does, so their latency as deployed is that arm's, not the figure beside it.
    """
    if not arm.name.startswith("adapter"):
        return ""
    like = "prompt" if arm.name.endswith("+prompt") else "base"
    ours = arm.metrics.s_per_token
    theirs = report.arms[like].s_per_token if like in report.arms else None
    if not ours or not theirs or ours.mean is None or theirs.mean is None:
        return ""
    return (f" ({1000 * ours.mean:.0f} ms a token with the adapter unmerged, the {like} arm {1000 * theirs.mean:.0f}: "
            f"merged into the weights, `finetune export --merge`, it decodes as the {like} arm does)")


class _Arm:
    """What the decision needs to know about one candidate arm (adapter, prompt or both)."""

    def __init__(self, report: Report, name: str) -> None:
        self.name = name
        self.metrics: ArmMetrics = report.arms[name]
        style = _style_metric(report)
        self.style_vs_base = _diff(report, style, name, "base") if "base" in report.arms else None
        self.voiced = _wins(self.style_vs_base, name) if self.style_vs_base else None
        sets = (self.metrics.loop_share, self.metrics.loop_share_multi, self.metrics.loop_share_long)
        loops = [m for m in sets if m and m.mean is not None]
        self.loop = max(loops, key=lambda m: m.mean) if loops else None
        self.loops = self.loop is not None and self.loop.mean > LOOP_ALERT
        base = report.arms.get("base")
        self.content = self.metrics.content_ref or self.metrics.content_base
        base_content = base.content_ref if base and self.metrics.content_ref else None
        # On fewer prompts than any comparison needs, a gap in content kept is a reply or two: not a fault yet.
        self.content_lost = (
            self.content is not None
            and base_content is not None
            and self.content.n >= MIN_SIGNIFICANT_N
            and self.content.mean is not None
            and base_content.mean is not None
            and self.content.mean < base_content.mean - CONTENT_MARGIN
        )
        self.lost_ability = [
            name_
            for name_ in report.multiple_choice
            if "base" in report.arms and _wins(_diff(report, f"mc:{name_}", name, "base"), "base")
        ]

    @property
    def good(self) -> bool:
        """Speaks in the voice, keeps answering (no loops, content kept) and keeps its ability."""
        return bool(self.voiced) and not self.loops and not self.content_lost and not self.lost_ability


def _quality_text(arm: _Arm) -> str:
    """'adapter: loops in 4% of replies [1%, 20%], 92% ended at end-of-turn, content kept 0.71 [...]'."""
    m = arm.metrics
    parts = []
    if arm.loop is not None:
        parts.append(f"loops in {_pct(arm.loop.mean)} of replies [{_pct(arm.loop.ci_low)}, {_pct(arm.loop.ci_high)}]")
    if m.ended_share and m.ended_share.mean is not None:
        parts.append(f"{_pct(m.ended_share.mean)} ended at end-of-turn")
    if arm.content is not None and arm.content.mean is not None:
        parts.append(f"content kept {_est(arm.content)}")
    verdict = "LOOPS" if arm.loops else ("loses content" if arm.content_lost else "answers hold")
    return f"{arm.name}: {verdict} ({', '.join(parts) or 'not measured'})"


def _more_prompts(d: Difference | None) -> int | None:
    """More paired prompts needed to detect the observed difference with 80% power (from the MDE at n)."""
    if d is None or d.mean is None or d.n < MIN_SIGNIFICANT_N or not d.mde or d.mean == 0:
        return None
    needed = math.ceil(d.n * (d.mde / abs(d.mean)) ** 2)  # the MDE shrinks as 1/sqrt(n)
    return max(MIN_MORE_PROMPTS, needed - d.n)


def _reasons(report: Report, adapter: _Arm, prompt: _Arm | None, both: _Arm | None) -> list[Reason]:
    """One line of evidence per topic."""
    style = _style_metric(report)
    label = "style score" if style == "style" else "marker rate"
    reasons = []
    arms = [x for x in (adapter, prompt, both) if x]
    voice = [
        f"{x.name} vs base {_diff_text(x.style_vs_base)}" for x in arms if x.style_vs_base is not None
    ]
    if prompt:
        voice.append(f"adapter vs prompt {_diff_text(_diff(report, style, adapter.name, prompt.name))}")
    reasons.append(Reason(topic="style", text=f"{label}: " + "; ".join(voice)))
    reasons.append(Reason(topic="quality", text="; ".join(_quality_text(x) for x in arms)))
    drift = []
    for x in arms:
        for kind, where in (("multi", "over a conversation"), ("long", "to the end of long answers")):
            section = getattr(report.drift, kind).get(x.name)
            if section and section.change.mean is not None:
                c = section.change
                p = c.p_holm if c.p_holm is not None else c.p_value
                if c.n < MIN_SIGNIFICANT_N or p is None:
                    moved = "not enough data"
                elif p < 0.05:
                    moved = "falls" if c.mean < 0 else "rises"
                else:  # not the same as "holds" when few conversations were run
                    moved = "no significant change"
                numbers = f"{c.mean:+.2f}, n={c.n}" + (f", p={p:.2g}" if p is not None else "")
                drift.append(f"{x.name}: {moved} {where} ({numbers})")
    reasons.append(Reason(topic="drift", text="; ".join(drift) or "not measured (no conversations or long prompts)"))
    ability = []
    for name in report.multiple_choice:
        for x in arms:
            d = _diff(report, f"mc:{name}", x.name, "base")
            if d is not None:
                lost = " (lost)" if name in x.lost_ability else ""
                ability.append(f"{x.name} vs base on {name} {_diff_text(d)}{lost}")
    missing = "no base arm" if "base" not in report.arms else "no multiple-choice set"
    reasons.append(Reason(topic="ability", text="; ".join(ability) or f"not measured ({missing})"))
    reasons.append(Reason(topic="arena", text=arena_reason(report.arena)))
    latency = []
    for x in arms:
        m = x.metrics
        if m.latency_s and m.latency_s.mean is not None and m.prompt_tokens and m.prompt_tokens.mean is not None:
            text = f"{x.name} {m.prompt_tokens.mean:.0f} input tokens, {m.latency_s.mean:.2f} s per request"
            latency.append(text + _unmerged_note(x, report))
    reasons.append(Reason(topic="latency", text="; ".join(latency) or "not measured"))
    cost = report.cost.adapters.get(adapter.name)
    reasons.append(Reason(topic="cost", text=cost.text if cost and cost.text else "break-even not computed"))
    return reasons


def decide(report: Report) -> Decision | None:
    """The recommendation for the first plain adapter arm (None when the report has no adapter arm)."""
    names = list(report.arms)
    adapters = [a for a in names if a.startswith("adapter") and not a.endswith("+prompt")]
    if not adapters:
        return None
    adapter = _Arm(report, adapters[0])
    prompt = _Arm(report, "prompt") if "prompt" in names else None
    both = _Arm(report, f"{adapter.name}+prompt") if f"{adapter.name}+prompt" in names else None
    reasons = _reasons(report, adapter, prompt, both)
    style = _style_metric(report)
    more = None

    if adapter.good and prompt and prompt.good:
        vs = _diff(report, style, adapter.name, prompt.name)
        cost = report.cost.adapters.get(adapter.name)
        pays = cost is not None and cost.break_even is not None and cost.break_even.status != "never"
        if _wins(vs, adapter.name):
            choice, why = "adapter", "the adapter speaks the persona better than the prompt and answers as well"
        elif _wins(vs, prompt.name):
            choice, why = "prompt", "the prompt speaks the persona better than the adapter and answers as well"
        elif pays:
            choice = "adapter"
            why = "adapter and prompt are level on style and quality; the adapter saves the prompt's tokens"
        else:
            choice, why = "prompt", "adapter and prompt are level, and the adapter never pays back its cost"
    elif adapter.good and not (both and both.good and _wins(_diff(report, style, both.name, adapter.name), both.name)):
        # adapter+prompt outvoicing the adapter only matters when it also answers soundly: else the adapter stands.
        choice, why = "adapter", "only the adapter carries the voice with sound answers"
    elif both and both.good:
        choice, why = "both", "the adapter with the prompt carries the voice best with sound answers"
    elif prompt and prompt.good:
        choice, why = "prompt", "only the prompt carries the voice with sound answers"
    elif "base" not in names:
        # Every clause about the voice and retained ability is measured against the base model: without that
        # arm nothing qualifies, and reading the missing comparisons as failures would misreport both arms.
        choice = "not enough evidence"
        why = "the voice and retained ability are judged against the base model: add base to --arms"
    elif few := [x.style_vs_base.n for x in (adapter, prompt, both)
                 if x and x.style_vs_base is not None and x.style_vs_base.n < MIN_SIGNIFICANT_N]:
        # Fewer paired prompts than any test needs: no arm can be voiced, and none can be faulted either.
        more = MIN_SIGNIFICANT_N - min(few)
        choice = "not enough evidence"
        why = (f"{min(few)} paired prompt{'s' if min(few) != 1 else ''}, and every comparison needs at least "
               f"{MIN_SIGNIFICANT_N} (--samples, --eval)")
    else:
        # Nothing qualifies. Unsure about the voice (no significant gap yet) -> more prompts; else neither.
        unsure = [x for x in (adapter, prompt, both) if x and x.voiced is False and not x.loops and not x.content_lost]
        needs = [n for n in (_more_prompts(x.style_vs_base) for x in unsure) if n]
        if unsure and needs:
            more = min(needs)
            choice, why = "not enough evidence", f"{more} more prompts needed to tell whether the voice carries"
        else:
            faults = []
            for x in (adapter, prompt, both):
                if x is None:
                    continue
                if x.loops:
                    faults.append(f"{x.name} loops")
                elif x.content_lost:
                    faults.append(f"{x.name} loses the answers' content")
                elif x.lost_ability:
                    faults.append(f"{x.name} loses multiple-choice ability")
                elif not x.voiced:
                    faults.append(f"{x.name} does not carry the voice")
            choice, why = "neither", "; ".join(faults) or "no arm carries the voice with sound answers"
    headline = {
        "adapter": f"Use the adapter: {why}.",
        "prompt": f"Use the system prompt: {why}.",
        "both": f"Use both: {why}.",
        "neither": f"Neither, as they stand: {why}.",
        "not enough evidence": f"Not enough evidence: {why}.",
    }[choice]
    return Decision(recommendation=choice, arm=adapter.name, headline=headline, reasons=reasons, more_prompts=more)
