"""best_of waves: the ``n`` best finished runs of an earlier wave (lower metric is better, ties in
the file's order; optionally the baseline's runs too), repeated with the wave's own train settings as
``<run id>-<wave>``, once that wave has finished in the study folder."""
from __future__ import annotations

import dataclasses
import json

from elmanlab.errors import ElmanlabError
from elmanlab.study.job import Job, job_status, merge_train, safe_id


def expand_best_of(wname: str, where: str, spec: dict, own_train: dict, wseeds: list | None, jobs: list[Job],
                   baseline: str | None, out, records: dict, retry_failed: bool, best_of_names: set[str]):
    """(jobs, record, message lines) of the best_of wave ``wname``, or None while its source wave
    is unfinished in ``out`` (the caller knows when the source is itself a best_of wave still waiting).

    ``spec``: the wave's checked ``best_of``; ``own_train`` / ``wseeds``: its train settings and
    seeds; ``jobs``: the study's jobs so far; ``records``: study.json's records by id."""
    src_wave, n, metric = spec["wave"], spec["n"], spec["metric"]
    sources: list[Job] = []
    seen_ids: set[str] = set()
    for j in jobs:
        if j.wave == src_wave and j.id not in seen_ids:
            sources.append(j)
            seen_ids.add(j.id)
    want_base = spec["baseline"]
    is_base = lambda j: baseline is not None and (j.model == baseline or j.id == baseline)  # noqa: E731
    # (a best_of source wave holds whichever runs won: no baseline there is a warning below, not an error)
    if want_base and sources and not any(is_base(j) for j in sources) and src_wave not in best_of_names:
        raise ElmanlabError(f"{where}: best_of.baseline: true, but wave {src_wave} has no run of the baseline "
                            f"{baseline}; set baseline: false or add it to that wave")
    status = {}
    for j in sources:
        if out is None:
            return None
        st, _, summ = job_status(out, j, records.get(j.id), retry_failed)
        if st == "pending":
            return None
        status[j.id] = (st, summ)
    ranking, skipped = [], []
    for i, j in enumerate(sources):
        st, summ = status[j.id]
        v = (summ or {}).get(metric)
        if st == "completed" and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v \
                and abs(v) != float("inf"):
            ranking.append((float(v), i, j))
        else:
            skipped.append(j.id if st == "completed" else f"{j.id} (failed)")
    ranking.sort(key=lambda t: (t[0], t[1]))          # lower is better; ties: the file's order
    chosen = [j for _, _, j in ranking[:n]]
    base_runs = [j for _, _, j in ranking if want_base and is_base(j) and j not in chosen]
    lines = []
    if skipped:
        lines.append(f"wave {wname}: not ranked (failed or no {metric}): {', '.join(skipped)}")
    if not ranking:
        lines.append(f"warning: wave {wname}: no run of wave {src_wave} finished with a {metric}, "
                     f"so the wave has no runs")
    else:
        vals = {j.id: v for v, _, j in ranking}
        lines.append(f"wave {wname}: best {n} of {src_wave} by {metric}: "
                     + ", ".join(f"{j.id} ({vals[j.id]:.4g})" for j in chosen)
                     + ("".join(f" + baseline {j.id}" for j in base_runs)))
        if want_base and not base_runs and not any(is_base(j) for j in chosen):
            lines.append(f"warning: wave {wname}: the baseline {baseline} has no finished run in wave "
                         f"{src_wave} with a {metric}; not repeated")
    new_jobs, same = [], []
    known = {json.dumps(j.identity(), sort_keys=True): j.id for j in jobs}
    for src in chosen + base_runs:
        for s in (wseeds or [None]):
            t = merge_train(src.train, own_train)
            jid = f"{src.id}-{wname}"
            if s is not None:
                t["seed"] = s
                jid += f"-s{s}"
            jid = safe_id(jid)
            job = dataclasses.replace(src, id=jid, where=f"{where}: best_of {src.id}", wave=wname,
                                      options=dict(src.options), train=t, size=dict(src.size))
            key = json.dumps(job.identity(), sort_keys=True)
            twin = known.get(key)
            if twin is not None:            # the study already has this very run (e.g. that seed)
                same.append(f"{jid} = {twin}")
                continue
            known[key] = jid
            new_jobs.append(job)
    if same:
        lines.append(f"wave {wname}: not run twice, the study already has them: {', '.join(same)}")
    record = {"from": src_wave, "n": n, "metric": metric, "baseline": want_base,
              "ranking": [{"id": j.id, metric: v} for v, _, j in ranking],
              "chosen": [j.id for j in chosen], "baseline_runs": [j.id for j in base_runs],
              "not_ranked": skipped, "runs": [j.id for j in new_jobs], "already_in_study": same}
    return new_jobs, record, lines

