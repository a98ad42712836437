"""Studies: many training runs described by one YAML file, run over GPUs, resumable.

``spec`` turns the study file into jobs (its docstring documents the format), ``best_of`` expands
waves that repeat the best runs of an earlier one, ``job`` is one run's identity, train arguments
and status, ``runner`` is the GPU queue with the study's state in ``study.json``.
"""
from elmanlab.study.job import Job
from elmanlab.study.runner import Runner, StudyLock, check_out_dir, failure_reason, parse_gpus, plan_table
from elmanlab.study.spec import Study, load_study

__all__ = ["Job", "Runner", "Study", "StudyLock", "check_out_dir", "failure_reason", "load_study", "parse_gpus",
           "plan_table"]
