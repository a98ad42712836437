"""`elmanlab report`: tables and plots of the runs in a study folder."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="tables and plots of the runs in a study folder",
        description="Read every run record under DIR and write DIR/report.md, DIR/results.csv and PNG plots under "
                    "DIR/plots/: a headline with the ranking at equal tokens and at equal time (configurations pooled over "
                    "seeds, gaps inside the seed spread printed as ties, runs that ran different kernels or "
                    "graph/eager flagged), runs ranked by last-100 loss with the gap to the baseline, scale x model tables of "
                    "loss and tokens/s, best model per scale, best loss by each swept setting, mean +- sd over "
                    "seeds, loss at equal tokens and at equal time, loss spikes and blow-ups in the first steps, and "
                    "failed runs with their reason. With --fit (and "
                    "in every report where a family ran at three sizes or more): scaling fits L = E + A x^-alpha per "
                    "family against parameters and training FLOPs at equal tokens, bootstrap intervals, where two "
                    "families' curves cross, DIR/fit.json and plots/fit_vs_params.png, fit_vs_flops.png.")
    p.add_argument("dir", help="a study's --out folder (or any folder holding run folders)")
    p.add_argument("--baseline", help="model (or run name) to measure gaps against (default: the study's "
                                      "baseline, else mamba2 or gdn when present)")
    p.add_argument("--metric", default="loss_last100", choices=("loss_last100", "val_bpb", "best_val_bpb"),
                   help="what runs are ranked and compared by, lower is better: the last-100 training loss "
                        "(nats/byte, the seeds' measure; default), the final held-out bits per byte (val_bpb) or "
                        "the best held-out bits per byte seen during training (best_val_bpb; for small corpora "
                        "that a run overfits)")
    p.add_argument("--fit", action="store_true",
                   help="fit L(N) = E + A N^-alpha (and L(C) against training FLOPs) per family to the runs at "
                        "equal tokens, with bootstrap intervals and the size where two families' curves cross; "
                        "printed and written to report.md and fit.json (a report with a family at three sizes "
                        "or more has the fits anyway, unprinted)")
    p.add_argument("--predict", action="append", metavar="SIZE",
                   help="with the fits: each family's fitted value and each pair's gap at this parameter count, "
                        "with intervals (e.g. 400M; several: 400M,1B or repeat the flag); implies --fit")
    p.add_argument("--at-step", type=int, metavar="N", dest="at_step",
                   help="with the fits: fit each run's value at step N, not at its end (loss_last100: the mean "
                        "training loss of steps N-99..N from metrics.jsonl; val_bpb: an evaluation at step N). "
                        "With Schedule-Free and no warm-up a run's state at step N is that of a run of N steps, so "
                        "longer runs predict runs of N steps (the 2,000-step scaling study at the 1,500 steps of "
                        "the 400M table); implies --fit")
    p.add_argument("--bootstrap", type=int, metavar="B",
                   help="bootstrap refits per family for the fits' intervals (default 1000, at least 50)")
    p.add_argument("--against", metavar="TABLE.csv",
                   help="set the runs beside a published table (e.g. docs/reference/seeds-400m.csv: columns model, "
                        "dim, depth, loss and optionally label, expansion, d_state, params, tok_s, memory_gb): each row "
                        "matched to the lab's configurations of the same model, dim, depth, expansion (and d_state), "
                        "pooled over seeds, with the lab's gap to the baseline beside the table's, whether the "
                        "difference exceeds the seed spread, the order by loss, tokens/s and memory ratios and the "
                        "kernel path; written as a section of report.md and DIR/against.csv")
    p.add_argument("--speed", metavar="SPEED", action="append",
                   help="with --against: where tokens/s and peak memory come from, each configuration timed alone on "
                        "its GPU: the --out folder of a speed study (studies/reference-400m-speed.yaml) or the JSON of "
                        "benchmarks/throughput.py (its rows of the runs' batch, sequence length and step mode; "
                        "repeat the flag for several files of one GPU); without it they come from the loss runs, "
                        "and tokens/s of runs that shared a GPU get no ratio")
    p.add_argument("--check-fit", metavar="FIT.json", dest="check_fit",
                   help="hold these runs against the predictions of a scaling fit (the fit.json of `elmanlab report "
                        "STUDY --fit --predict SIZE`, e.g. docs/results/scaling-small/fit-at-step-1500.json for the "
                        "400M table): each configuration of a fitted family, at the size the fit predicts and of the "
                        "shape the sizing tool picks there, pooled over seeds, and each pair's gap, against the "
                        "predicted value and its interval, with and without the runs' seed noise; a section of "
                        "report.md, DIR/prediction-check.json and DIR/plots/fit_check.png")
    p.add_argument("--quiet", action="store_true", help="print only the paths written")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from elmanlab.report import Report
    rep = Report(args.dir, args.baseline, args.metric, fit=args.fit, predict=args.predict, bootstrap=args.bootstrap,
                 against=args.against, speed=args.speed, at_step=args.at_step,
                 check_fit=args.check_fit)
    res = rep.write()
    if not args.quiet and rep.done:
        from elmanlab.report.checks import record_notes
        from elmanlab.report.headline import section_headline
        print(section_headline(rep, rep.findings(), record_notes(rep.done)))
        print()
        print(rep.section_ranked())
        print()
        if rep.fit_wanted and rep.fits() is not None:
            print(rep.section_fit())
            print()
    if not args.quiet and rep.against is not None:
        print(rep.against.short())
        print()
    if not args.quiet and rep.check is not None:
        print(rep.check.short())
        print()
    print(f"wrote {res['report']}, {res['csv']}" + (f", {res['fit']}" if res["fit"] else "")
          + (f", {res['against']}" if res["against"] else "") + (f", {res['check']}" if res["check"] else "")
          + (f" and {len(res['plots'])} plots in {res['plots'][0].parent}" if res["plots"] else ""))
    return 0
