"""Studies: many training runs described by one YAML file, run over GPUs, resumable.

``spec`` turns the study file into jobs (its docstring documents the format), ``values`` reads the
file and checks its keys and values, ``best_of`` expands waves that repeat the best runs of an earlier
one, ``job`` is one run's identity, train arguments and status, ``prepare`` the GPUs, the output
folder, its lock and the dry run, ``runner`` the GPU queue with the study's state in ``study.json`` and
``schedule`` which job it starts next.
"""
from elmanlab.study.job import Job
from elmanlab.study.prepare import StudyLock, check_out_dir, parse_gpus, plan_table
from elmanlab.study.runner import Runner, failure_reason
from elmanlab.study.spec import Study, load_study

__all__ = ["Job", "Runner", "Study", "StudyLock", "check_out_dir", "failure_reason", "load_study", "parse_gpus",
           "plan_table"]
