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
                    "seeds, loss at equal tokens and at equal time, and failed runs with their reason.")
    p.add_argument("dir", help="a study's --out folder (or any folder holding run folders)")
    p.add_argument("--baseline", help="model (or run name) to measure gaps against (default: the study's "
                                      "baseline, else mamba2 or gdn when present)")
    p.add_argument("--metric", default="loss_last100", choices=("loss_last100", "val_bpb", "best_val_bpb"),
                   help="what runs are ranked and compared by, lower is better: the last-100 training loss "
                        "(nats/byte, the seeds' measure; default), the final held-out bits per byte (val_bpb) or "
                        "the best held-out bits per byte seen during training (best_val_bpb; for small corpora "
                        "that a run overfits)")
    p.add_argument("--quiet", action="store_true", help="print only the paths written")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from elmanlab.report import Report
    rep = Report(args.dir, args.baseline, args.metric)
    res = rep.write()
    if not args.quiet and rep.done:
        from elmanlab.report.checks import record_notes
        from elmanlab.report.headline import section_headline
        print(section_headline(rep, rep.findings(), record_notes(rep.done)))
        print()
        print(rep.section_ranked())
        print()
    print(f"wrote {res['report']}, {res['csv']}" + (f" and {len(res['plots'])} plots in {res['plots'][0].parent}"
                                                   if res["plots"] else ""))
    return 0
