"""`elmanlab study`: run a study file's jobs over the GPUs of a machine, resumable."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from elmanlab.cli.common import print_json, text_table


def register(sub) -> None:
    p = sub.add_parser(
        "study", help="run a study file: many training runs over GPUs, resumable",
        description="Run every job of a study file (YAML: name, baseline, train defaults, runs, grid, seeds, "
                    "waves, best_of waves; see README 'Studies and reports'). Jobs run one per GPU at a time, "
                    "each in its own `elmanlab train` process (in sequence on CPU); a failing job is recorded and the rest go on. "
                    "Re-running skips every job whose summary.json exists, so an interrupted study resumes. "
                    "Ends by writing the report (see `elmanlab report`).")
    p.add_argument("study", help="the study file (YAML)")
    p.add_argument("--out", required=True, help="output folder: one folder per run, study.json (state), logs/, "
                                                "report.md; reuse it to resume")
    p.add_argument("--gpus", default=None,
                   help="GPU indices to use, one job per GPU at a time, e.g. 0,1,2,3; `cpu` runs jobs in "
                        "sequence on the CPU (default: every visible GPU, else the CPU)")
    p.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                   help="start no new run after MINUTES minutes (the runs in flight finish); the rest stay "
                        "pending and the same command resumes them later: for a study split over time-limited "
                        "sessions")
    p.add_argument("--finish-by", type=float, default=None, metavar="MINUTES",
                   help="start a run only if it is expected to end within MINUTES minutes of the study's start, "
                        "from the wall times of the finished runs of its model in the output folder (the nearest "
                        "size scaled by tokens and parameters); a shorter run later in the queue may start "
                        "instead. A model with no finished run is expected to take what the slowest finished "
                        "model would at its size, plus 2 minutes for its kernels' first compilation and tuning; before any run has finished, runs start only before --stop-after. "
                        "A file OUT/finish-at holding a Unix time, written while the study runs, replaces this "
                        "deadline. For sessions of fixed length, where a run in flight at the end is lost")
    p.add_argument("--jobs-per-gpu", type=int, default=1, metavar="N",
                   help="run N jobs at once on each GPU (default 1). For loss studies of models that leave the GPU "
                        "idle: losses do not depend on what else runs, but tokens/s and training time then measure "
                        "the sharing; each run records it (gpu_jobs) and the report ranks such runs at equal "
                        "tokens only")
    p.add_argument("--solo-above", default=None, metavar="SIZE",
                   help="with --jobs-per-gpu N > 1: a run of more parameters than SIZE (e.g. 150M) runs alone on "
                        "its GPU, starting once the GPU's other runs have ended, and records gpu_jobs 1: large runs "
                        "keep the GPU busy by themselves (the GPU time-slices between processes), and one that "
                        "runs alone ends sooner, before a time-limited session does; small runs still share")
    p.add_argument("--only", default=None, metavar="PATTERNS",
                   help="run only the jobs whose names match one of these comma-separated shell patterns, e.g. "
                        "'mamba2-20M-*,gdn-20M-*' (names as --dry-run lists them); the others stay pending for a "
                        "later invocation. The selected jobs start in the patterns' order (every job of the first "
                        "pattern, then of the second...), so that a session that may end early runs the most "
                        "wanted first. With --dry-run: mark the others `not selected`")
    p.add_argument("--data", help="training data file for every job (overrides `data` in the study file)")
    p.add_argument("--val-data", dest="val_data", help="validation data file (overrides `val_data` in the file)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the expanded jobs with their sizes and parameter counts; run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the jobs as JSON")
    p.add_argument("--retry-failed", action="store_true",
                   help="run failed jobs again (their old folders are kept as RUN.failed-N); a best_of wave "
                        "over their wave is decided after they have run")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(func=cmd_study)


DRY_RUN_GPUS = 1024       # --dry-run --gpus 0,1: indices of the machine the study is planned for


def parse_only(text: str | None, study) -> list[str] | None:
    """--only's patterns, each checked to match some job of ``study``."""
    from elmanlab.errors import ElmanlabError
    from elmanlab.study.schedule import only_selects
    if text is None:
        return None
    pats = [p.strip() for p in text.split(",") if p.strip()]
    if not pats:
        raise ElmanlabError(f"--only takes comma-separated run-name patterns such as 'e1-20M-*', got {text!r}")
    names = [j.id for j in study.jobs]
    for p in pats:
        if not any(only_selects([p], n) for n in names):
            raise ElmanlabError(f"--only pattern {p!r} matches no run of study {study.name}; "
                                f"`elmanlab study FILE --out DIR --dry-run` lists their names")
    return pats


def _expected_times(rows: list[dict], study, out: Path, gpus, jobs_per_gpu: int, solo_above,
                    only=None) -> None:
    """--dry-run: each run still to run gets the seconds ``--finish-by`` would expect of it (rows'
    ``expected`` and ``expected_s``), from the finished runs in ``out``; nothing when none has finished."""
    from elmanlab.study import Runner, check_out_dir
    previous = check_out_dir(out, study) if out.exists() else None
    if not previous:
        return
    runner = Runner(study, out, gpus, jobs_per_gpu=jobs_per_gpu, solo_above=solo_above, only=only)
    expected = runner.expectations(previous)
    for row in rows:
        if row["status"] == "to run" and row["run"] in expected:
            est, alone = expected[row["run"]]
            row["expected_s"] = round(est)
            row["expected"] = f"{est:,.0f} s" + (" alone" if alone else "")


def cmd_study(args) -> int:
    from elmanlab.errors import ElmanlabError
    from elmanlab.study import Runner, check_out_dir, load_study, parse_gpus, plan_table
    out = Path(args.out)
    study = load_study(args.study, data=args.data, val_data=args.val_data, out=out,
                       retry_failed=args.retry_failed)
    solo_above = None
    if args.solo_above is not None:
        from elmanlab.sizing import parse_count
        try:
            solo_above = parse_count(args.solo_above)
        except (ValueError, ElmanlabError):
            solo_above = None
        if not solo_above or solo_above <= 0:
            raise ElmanlabError(f"--solo-above takes a parameter count such as 150M, got {args.solo_above!r}")
        if args.jobs_per_gpu < 2:
            raise ElmanlabError("--solo-above decides which runs do not share a GPU: it needs --jobs-per-gpu 2 or more")
    # a dry run plans for the machine the study will run on: GPU indices are not checked against this one
    gpus = parse_gpus(args.gpus, count=DRY_RUN_GPUS if args.dry_run and args.gpus not in (None, "auto") else None)
    if args.jobs_per_gpu < 1:
        raise ElmanlabError(f"--jobs-per-gpu must be >= 1, got {args.jobs_per_gpu}")
    if args.jobs_per_gpu > 1 and gpus is None:
        raise ElmanlabError("--jobs-per-gpu shares GPUs; on the CPU jobs run one at a time: drop it")
    for flag, v in (("--stop-after", args.stop_after), ("--finish-by", args.finish_by)):
        if v is not None and not v > 0:
            raise ElmanlabError(f"{flag} takes a positive number of minutes, got {v:g}")
    check_out_dir(out, study)
    only = parse_only(args.only, study)
    if args.dry_run:
        rows = plan_table(study, out if out.exists() else None)
        from elmanlab.study.schedule import only_selects
        for r in rows:
            if r["status"] == "to run" and not only_selects(only, r["run"]):
                r["status"] = "not selected"
        _expected_times(rows, study, out, gpus, args.jobs_per_gpu, solo_above, only)
        if args.json:
            print_json({"name": study.name, "baseline": study.baseline, "gpus": gpus or "cpu",
                        "jobs": [{**j.to_dict(), "status": r["status"],
                                  **({"expected_s": r["expected_s"]} if "expected_s" in r else {})}
                                 for j, r in zip(study.jobs, rows)],
                        "best_of": study.best_of,
                        "deferred": study.deferred_records()})
            return 0
        data = study.jobs[0].train.get("data") if study.jobs else None
        print(f"study {study.name}: {len(study.jobs)} runs, baseline {study.baseline or '-'}, "
              f"on {'GPUs ' + ','.join(gpus) if gpus else 'CPU (in sequence)'}, "
              f"data {data or 'the train default (embedded corpus)'}")
        cols = ["#", "run", "model", "target", "params_h", "dim", "depth", "heads", "d_inner", "state/layer",
                "budget", "seed", "status"]
        if any(r["wave"] for r in rows):
            cols.insert(2, "wave")
        if any("expected" in r for r in rows):
            cols.append("expected")
        print(text_table(rows, cols))
        if any("expected" in r for r in rows):
            print("expected: the wall time --finish-by would expect of each run still to run, from the finished "
                  "runs in --out, sharing its GPU as --jobs-per-gpu and --solo-above say (alone: --solo-above)")
        for line in study.messages + [d["line"] for d in study.deferred]:
            print(line)
        return 0
    # Ctrl-C / SIGINT stops the study gracefully even where it was started with SIGINT ignored (a
    # shell's background job: `study ... &` in a script), as train's own handler does for its runs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        runner = Runner(study, out, gpus, retry_failed=args.retry_failed, jobs_per_gpu=args.jobs_per_gpu,
                        stop_after_s=None if args.stop_after is None else 60 * args.stop_after,
                        finish_by_s=None if args.finish_by is None else 60 * args.finish_by,
                        solo_above=solo_above, only=only)
        state = runner.run()
    except KeyboardInterrupt:
        sys.stderr.write(f"error: interrupted; state saved in {out / 'study.json'}, run the same command to "
                         f"resume\n")
        return 130
    jobs = [j for j in state["jobs"] if j.get("in_study_file", True)]
    n_ok = sum(j["status"] == "completed" for j in jobs)
    failed = [j for j in jobs if j["status"] == "failed"]
    print(f"study {study.name}: {n_ok}/{len(jobs)} runs completed, {len(failed)} failed"
          + (f", {runner.n_held_back} not started (--stop-after / --finish-by)" if runner.n_held_back else ""))
    for j in failed:
        print(f"  failed {j['id']}: {j.get('error')}")
    if not args.no_report:
        try:
            from elmanlab.report import write_report
            res = write_report(out, None)
            print(f"report: {res['report']} ({len(res['plots'])} plots, {res['csv'].name})")
        except ElmanlabError as e:
            print(f"no report: {e}")
    return 1 if failed else 0
