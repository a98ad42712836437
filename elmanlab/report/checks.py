"""What ran, checked before anything is ranked: runs of one family that ran different
implementations (the ``kernel`` / ``implementations`` summary.json records), runs with and
without CUDA-graph replay, a family that ran its plain-PyTorch reference on a GPU; and the
notes a reader needs beside a ranking: non-finite steps skipped, the code that made the runs,
records too old to say what ran.

A :class:`Finding` splits runs into parts (implementation -> runs); a ranking of a scale group
that holds runs of two parts is not like-for-like (:func:`unlike_runs`), and the report says so
at the top and beside every ranking it affects.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from elmanlab.report.collect import Run
from elmanlab.report.fmt import names
from elmanlab.report.instability import BLOWUP_NATS, LATE_RISE_NATS, SPIKE_AFTER, SPIKE_NATS, SPIKE_WINDOW


@dataclass
class Finding:
    """Runs that were not made the same way. ``parts``: what ran -> the runs that ran it;
    ``affects``: the rankings a mix of parts makes unfair ("tokens": equal tokens, "time":
    equal time and throughput)."""
    kind: str                              # "kernel", "graphs" or "reference"
    text: str                              # one markdown line for the report's top
    short: str                             # a few words for a ranking's heading and a run's marker
    parts: dict[str, list[str]] = field(default_factory=dict)
    affects: tuple[str, ...] = ("tokens", "time")

    def mixes(self, run_ids) -> bool:
        """Whether ``run_ids`` hold runs of two parts or more."""
        ids = set(run_ids)
        return sum(1 for v in self.parts.values() if ids & set(v)) > 1


def _scale(r: Run):
    return (r.scale_n, r.scale)


def _kernel_findings(done: list[Run]) -> list[Finding]:
    out = []
    for model in dict.fromkeys(r.model for r in done):
        rs = [r for r in done if r.model == model and r.kernel_path is not None]
        # every op's path where every run records them; else the main op's path alone
        full = all(r.implementations() for r in rs)
        parts: dict[str, list[str]] = {}
        for r in rs:
            sig = "; ".join(f"{op}: {p}" for op, p in sorted(r.implementations().items())) if full else r.kernel_path
            parts.setdefault(sig, []).append(r.id)
        if len(parts) < 2:
            continue
        desc = "; ".join(f"`{sig}` ({names(ids)})" for sig, ids in parts.items())
        out.append(Finding("kernel", f"**{model}** ran {len(parts)} different implementations: {desc}.",
                           f"{model} ran {len(parts)} implementations", parts))
    return out


def _graph_finding(done: list[Run]) -> list[Finding]:
    used = [r.id for r in done if r.cuda_graph is True]
    eager = [r.id for r in done if r.cuda_graph is False]
    if not used or not eager:
        return []
    return [Finding("graphs", f"**CUDA graphs** replayed the steps of {names(used)} but not of {names(eager)}: "
                              f"equal-time rankings and throughput compare graph replay with eager steps (the "
                              f"equal-token rankings are unaffected: replay runs the same kernels).",
                    "graphs used by some runs only", {"graph": used, "eager": eager}, ("time",))]


def _reference_findings(done: list[Run]) -> list[Finding]:
    out = []
    ref = [r for r in done if r.kernel_fast is False and str(r.summary.get("device", "")).startswith("cuda")]
    for model in dict.fromkeys(r.model for r in ref):
        ids = [r.id for r in ref if r.model == model]
        allowed = all(r.allow_reference for r in ref if r.model == model)
        others = [r.id for r in done if r.id not in ids]
        out.append(Finding("reference", f"**{model}** ran its plain-PyTorch reference on the GPU in {names(ids)}"
                                        + (" (allowed with --allow-reference)" if allowed else "")
                                        + ": its throughput, and its place at equal time, are not the family's.",
                           f"{model} ran its reference", {"reference": ids, "fast path": others}, ("time",)))
    return out


def check_implementations(done: list[Run]) -> list[Finding]:
    """Every way the completed runs ``done`` were not made alike (see :class:`Finding`)."""
    return _kernel_findings(done) + _graph_finding(done) + _reference_findings(done)


def scale_groups(done: list[Run]) -> list[list[str]]:
    """The run ids of each scale (the groups the report ranks within)."""
    groups: dict = {}
    for r in done:
        groups.setdefault(_scale(r), []).append(r.id)
    return list(groups.values())


def unlike_runs(done: list[Run], findings: list[Finding]) -> dict[str, list[str]]:
    """Run id -> the findings (short text) that make its scale group's rankings not like-for-like."""
    out: dict[str, list[str]] = {}
    for f in findings:
        involved = {i for ids in f.parts.values() for i in ids}
        for ids in scale_groups(done):
            if f.mixes(ids):
                for i in ids:
                    if i in involved:
                        out.setdefault(i, []).append(f.short)
    return out


def record_notes(done: list[Run]) -> list[str]:
    """What a reader should know about the records: non-finite steps skipped, loss spikes, records
    that do not say what ran, the code that made the runs."""
    notes = []
    skipped = [(r.id, r.nonfinite_steps) for r in done if r.nonfinite_steps]
    if skipped:
        notes.append("**Non-finite steps skipped** (the loss or a gradient was not finite; the update was "
                     "dropped): " + ", ".join(f"{i} ({n})" for i, n in skipped) + ".")
    spikes = [(r.id, ev) for r in done for ev in r.loss_spikes()]
    if spikes:
        notes.append(f"**Loss spikes** (a training line's mean at least {SPIKE_NATS} nats above the median of the "
                     f"{SPIKE_WINDOW} lines before it, past step {SPIKE_AFTER}; each ranking includes what the spike "
                     "cost the run): " + ", ".join(
                         f"{i} at step {ev['step']} ({ev['loss']:.3f} against {ev['median_before']:.3f}"
                         + (f"; highest step {ev['loss_max']:.3f}" if ev["loss_max"] is not None else "") + ")"
                         for i, ev in spikes) + ".")
    blown = [(r.id, ev) for r in done for ev in [r.early_blowup()] if ev]
    if blown:
        notes.append(f"**Blow-ups in the first steps** (a step's loss of {BLOWUP_NATS:.2f} nats or more, twice a uniform "
                     f"guess's, by step {SPIKE_AFTER}, where spikes are not judged): " + ", ".join(
                         f"{i} (highest step loss {ev['loss_max']:.1f} in the line ending at step {ev['step']})"
                         for i, ev in blown) + ".")
    rose = [(r.id, ev) for r in done for ev in [r.late_rise()] if ev]
    if rose:
        notes.append(f"**Loss rose late** (the final last-100 loss {LATE_RISE_NATS} nats or more above its lowest at a "
                     "training line of the run's second half; it ranks by the final): " + ", ".join(
                         f"{i} ({ev['final']:.4f} at the end against {ev['best']:.4f} at step {ev['best_step']})"
                         for i, ev in rose) + ".")
    unreadable = [r.id for r in done if r.heldout_unreadable()]
    if unreadable:
        notes.append("**Held-out scores left out** (pure bf16 runs scored with Schedule-Free's average x formed "
                     "from bf16 weights and state, which falls ever further behind the weights trained; such runs "
                     "are scored with those weights since summary.json records `eval_weights`): "
                     + ", ".join(unreadable) + ". Their training losses stand.")
    no_kernel = [r.id for r in done if r.kernel_path is None]
    no_graph = [r.id for r in done if r.cuda_graph is None]
    if no_kernel and len(no_kernel) == len(done) and len(no_graph) == len(done):
        notes.append("**What ran is not recorded:** these records predate summary.json's `kernel` and `cuda_graph`, "
                     "so the report cannot check that every family ran the same implementation and that graph use "
                     "was the same for every run (shown as - below).")
    else:
        if no_kernel:
            notes.append(f"The implementation that ran is not recorded for {names(no_kernel)}: the check above "
                         f"covers only the other runs.")
        if no_graph:
            notes.append(f"Whether CUDA graphs were used is not recorded for {names(no_graph)}.")
    commits = Counter(r.commit for r in done if r.commit)
    dirty = [r.id for r in done if r.dirty]
    versions = sorted({r.elmanlab_version for r in done if r.elmanlab_version})
    if not commits and not versions:
        notes.append("The records do not say which elmanlab version or commit made them.")
    else:
        code = ", ".join(f"{c[:10]} ({n} run{'s' if n > 1 else ''})" for c, n in commits.most_common())
        unknown = [r.id for r in done if not r.commit]
        notes.append("Code: " + (f"elmanlab {', '.join(versions)}" if versions else "version not recorded")
                     + (f"; commit {code}" if code else "")
                     + (f"; **{len(commits)} different commits**" if len(commits) > 1 else "")
                     + (f"; uncommitted changes in {names(dirty)}" if dirty else "")
                     + (f"; no commit recorded for {names(unknown)}" if unknown and commits else "") + ".")
    return notes
