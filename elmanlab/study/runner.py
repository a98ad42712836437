"""The GPU queue: runs a study's jobs, one ``python -m elmanlab train ... --out DIR/<job id>``
process per job, one job per GPU at a time (``CUDA_VISIBLE_DEVICES`` set per job) or in sequence on
the CPU, and keeps the study's resumable state.

The state (the expanded jobs and their status) lives in ``DIR/study.json``, written atomically after
every change; a job whose ``summary.json`` exists is skipped, so an interrupted study resumes and a
wave appended to the file runs only the new jobs. A run folder that is retried or restarted is moved
aside (``RUN.failed-N``, ``RUN.interrupted-N``); a run with a checkpoint is resumed instead. One
``elmanlab study`` process per folder (``prepare.StudyLock``); which pending job a free slot starts
is ``schedule.next_job``'s choice. Also here: the reason of a failure read from its log's tail.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from elmanlab.errors import ElmanlabError
from elmanlab.fsutil import atomic_write_json
from elmanlab.runs import GPU_JOBS_ENV, LOG_DIR, STATE_FILE, has_checkpoint, run_status
from elmanlab.study.job import job_status, same_run
from elmanlab.study.prepare import StudyLock, check_out_dir
from elmanlab.study.schedule import FINISH_AT_FILE, expected_wall_s, next_job, only_rank, only_selects, read_finish_at
from elmanlab.study.spec import Study

INTERRUPT_GRACE_S = 300      # how long a stopped study waits for its runs to write their checkpoints
# what a job's study.json record keeps from the previous invocation when the job is not run again
KEPT = ("started", "finished", "wall_s", "gpu", "gpu_jobs", "returncode", "log", "stderr_tail")


# ---------------------------------------------------------------- run folders

def _log_tail(log: Path, n: int = 15) -> list[str]:
    try:
        data = log.read_bytes()[-65536:].decode("utf-8", "replace")
    except OSError:
        return []
    lines = [ln.rstrip() for ln in re.split(r"[\r\n]+", data)]
    lines = [ln for ln in lines if ln.strip()]
    return lines[-n:]


def failure_reason(tail: list[str], returncode: int | None) -> str:
    """Why a train process failed, from the last lines of its log: an out-of-memory line, else the
    last error line, else the signal that killed it, else the last line."""
    text = "\n".join(tail)
    if "out of memory" in text.lower():
        oom = [ln for ln in tail if "out of memory" in ln.lower()]
        return oom[-1].strip()[:300]
    errs = [ln for ln in tail if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    if errs:
        return errs[-1].strip()[:300]
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    if tail:
        return tail[-1].strip()[:300]
    return f"exit code {returncode}"


def _move_aside(run_dir: Path, tag: str) -> Path:
    """Rename a run folder to ``RUN.<tag>-N`` (the first free N), keeping it beside its rerun."""
    k = 1
    while (dest := run_dir.with_name(f"{run_dir.name}.{tag}-{k}")).exists():
        k += 1
    os.replace(run_dir, dest)
    return dest


# ---------------------------------------------------------------- the queue

def _to_run(rec: dict) -> bool:
    """A state record still to run: in the study file, neither completed nor failed."""
    return rec.get("in_study_file", True) and rec["status"] not in ("completed", "failed")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Runner:
    """Runs a study's pending jobs on GPU slots (or the CPU), keeping ``study.json`` current."""

    def __init__(self, study: Study, out, gpus: list[str] | None, retry_failed: bool = False,
                 echo=None, python: str | None = None, extra_env: dict | None = None, jobs_per_gpu: int = 1,
                 stop_after_s: float | None = None, finish_by_s: float | None = None,
                 solo_above: float | None = None, only: list[str] | None = None):
        self.study = study
        self.out = Path(out)
        self.gpus = gpus
        self.jobs_per_gpu = jobs_per_gpu if gpus else 1
        self.retry_failed = retry_failed
        self.python = python or sys.executable
        self.extra_env = extra_env or {}
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen] = {}
        self.stop = threading.Event()
        self._echo = echo
        self.state: dict = {}
        self.bar = None
        self.n_started = 0
        # no job starts once this many seconds have passed since run() began (those in flight finish)
        self.stop_after_s = stop_after_s
        # no job starts that is expected to end later than this many seconds after run() began
        # (study/schedule.py: a shorter job further on in the queue may start instead)
        self.finish_by_s = finish_by_s
        self.t_run: float | None = None
        self.t_run_wall: float | None = None
        self.n_held_back = 0
        self._passed_over: set[str] = set()
        # a job of more parameters than this runs alone on its GPU (with --jobs-per-gpu > 1): it starts
        # once the GPU's other jobs have ended, and none starts there while it runs
        self.solo_above = solo_above
        self._on_gpu: dict = {}            # slot -> jobs running there
        self._solo_on: set = set()         # slots whose GPU runs a solo job
        # shell patterns (--only): only jobs whose names match one of them run; the others stay pending
        self.only = list(only) if only else None

    # -- state
    def echo(self, msg: str) -> None:
        if self._echo is not None:
            self._echo(msg)
        elif self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def save(self) -> None:
        self.state["updated"] = _now()
        atomic_write_json(self.out / STATE_FILE, self.state)

    def plan(self, previous: dict | None) -> dict:
        """Merge the study file with the previous state: what is done, what is to run."""
        prev_jobs = {j["id"]: j for j in (previous or {}).get("jobs", [])}
        jobs = []
        for job in self.study.jobs:
            rec = {**job.to_dict(), "status": "pending", "error": None}
            old = prev_jobs.pop(job.id, None)
            rdir = self.out / job.id
            if old is not None and old.get("spec_identity") is not None and run_status(rdir)[0] != "absent" \
                    and not same_run(old["spec_identity"], job):
                raise ElmanlabError(
                    f"{rdir} was trained with other settings than the study file now gives "
                    f"({job.where}); restore the file, give the run a new `name:`, or use another --out")
            status, reason, summ = job_status(self.out, job, old, self.retry_failed)
            if status != "pending":         # done, or failed and not to be retried: keep its record
                rec.update(status=status, error=reason, **{k: old[k] for k in KEPT if old and k in old})
                if "gpu_jobs" not in rec and (summ or {}).get("gpu_jobs"):
                    rec["gpu_jobs"] = summ["gpu_jobs"]      # a record from before study.json kept it
            rec["spec_identity"] = job.identity()
            rec["run_dir"] = job.id
            jobs.append(rec)
        # runs from an earlier version of the file stay recorded (their folders are kept)
        for old in prev_jobs.values():
            old = dict(old)
            old["in_study_file"] = False
            if old.get("status") in ("running", "pending"):
                old["status"] = "dropped"
            jobs.append(old)
        created = (previous or {}).get("created") or _now()
        return {"name": self.study.name, "study_file": self.study.path, "description": self.study.description,
                "baseline": self.study.baseline, "created": created, "updated": _now(),
                "gpus": self.gpus or "cpu", "jobs_per_gpu": self.jobs_per_gpu, "solo_above": self.solo_above,
                "best_of": self.study.best_of,
                "deferred": self.study.deferred_records(),
                "jobs": jobs}

    def _expand_deferred(self) -> deque:
        """Expand the study again against the output folder; the newly runnable jobs (and the
        state merged with them). Records of runs already finished in this process are kept as they are."""
        before = {r["id"]: r for r in self.state["jobs"] if r.get("in_study_file", True)}
        study = self.study.reload(self.out)
        new_lines = [m for m in study.messages if m not in self.study.messages]
        self.study = study
        state = self.plan(self.state)
        state["jobs"] = [before[r["id"]] if r["id"] in before and r.get("in_study_file", True)
                         and before[r["id"]]["status"] in ("completed", "failed") else r for r in state["jobs"]]
        self.state = state
        self.save()
        for m in new_lines:
            self.echo(m)
        todo = deque(self._ordered(r for r in self.state["jobs"] if _to_run(r) and self.selected(r)
                                   and r["id"] not in before))
        return todo

    # -- running
    def run(self) -> dict:
        from tqdm import tqdm
        self.plan(check_out_dir(self.out, self.study))     # every error before anything is written
        self.out.mkdir(parents=True, exist_ok=True)
        with StudyLock(self.out):
            self.state = self.plan(check_out_dir(self.out, self.study))
            (self.out / LOG_DIR).mkdir(exist_ok=True)
            self.save()
            todo = deque(self._ordered(r for r in self.state["jobs"] if _to_run(r) and self.selected(r)))
            n_unselected = sum(1 for r in self.state["jobs"] if _to_run(r) and not self.selected(r))
            total = sum(1 for r in self.state["jobs"] if r.get("in_study_file", True))
            done0 = total - len(todo) - n_unselected
            n_failed_before = sum(1 for r in self.state["jobs"]
                                  if r.get("in_study_file", True) and r["status"] == "failed")
            slots = [g for g in self.gpus for _ in range(self.jobs_per_gpu)] if self.gpus else [None]
            where = (f"GPUs {','.join(self.gpus)}" + (f", {self.jobs_per_gpu} jobs at once on each"
                                                      if self.jobs_per_gpu > 1 else "")
                     if self.gpus else "CPU, one job at a time")
            self.echo(f"study {self.study.name}: {total} runs, {done0} already done"
                      + (f" ({n_failed_before} failed earlier, not retried: use --retry-failed)"
                         if n_failed_before else "")
                      + f", {len(todo)} to run on {where}"
                      + (f" ({n_unselected} more left pending by --only)" if n_unselected else "")
                      + f"; state in {self.out / STATE_FILE}")
            for m in self.study.messages:
                self.echo(m)
            for d in self.study.deferred:
                self.echo(d["line"])
            self.total = total
            self.t_run, self.t_run_wall = time.monotonic(), time.time()
            (self.out / FINISH_AT_FILE).unlink(missing_ok=True)     # a deadline is one invocation's
            self.bar = tqdm(total=total - n_unselected, initial=done0, desc=self.study.name, unit="run",
                            file=sys.stderr, dynamic_ncols=True, leave=True)
            threads: list[threading.Thread] = []
            try:
                while True:
                    threads = [threading.Thread(target=self._worker, args=(slot, todo), daemon=True)
                               for slot in slots[:len(todo)]]
                    for t in threads:
                        t.start()
                    while any(t.is_alive() for t in threads):
                        for t in threads:
                            t.join(timeout=0.2)
                    if self.stop.is_set() or not self.study.deferred or self._time_up():
                        break
                    # waves that waited for others: decided now that those have finished
                    todo = self._expand_deferred()
                    if not todo:
                        for d in self.study.deferred:
                            self.echo(f"{d['line']}: still waiting, run the study again")
                        break
                    with self.lock:
                        self.total += len(todo)
                        self.bar.total = self.total
                        self.bar.refresh()
            except KeyboardInterrupt:
                self.stop.set()
                with self.lock:
                    procs = list(self.procs.values())
                # ask each run to stop after its step and save a checkpoint: SIGUSR1, which train takes
                # as that request only (a run in this process group got the SIGINT too; a forwarded
                # SIGINT arriving late under load would read as a second Ctrl-C and stop it at once)
                stop_sig = getattr(signal, "SIGUSR1", signal.SIGINT)
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(stop_sig)
                if any(p.poll() is None for p in procs):
                    self.echo(f"interrupted: waiting up to {INTERRUPT_GRACE_S} s for the runs in flight to save "
                              f"a checkpoint (interrupt again to stop at once)")
                deadline = time.time() + INTERRUPT_GRACE_S
                for p in procs:
                    try:
                        p.wait(timeout=max(0.1, deadline - time.time()))
                    except subprocess.TimeoutExpired:
                        p.kill()
                for t in threads:
                    t.join(timeout=30)
                with self.lock:
                    for r in self.state["jobs"]:
                        if r["status"] == "running":
                            r["status"] = "interrupted"
                    self.save()
                self.bar.close()
                raise
            self.bar.close()
            self.bar = None
            left = sum(1 for r in self.state["jobs"] if _to_run(r) and self.selected(r))
            unselected = sum(1 for r in self.state["jobs"] if _to_run(r) and not self.selected(r))
            if unselected:
                self.echo(f"--only: {unselected} runs not selected, still pending; run without --only (or with "
                          f"other patterns) to run them")
            finish_by = self._finish_by()
            if (self._time_up() or finish_by is not None) and (left or self.study.deferred):
                self.n_held_back = left
                limits = " / ".join(f"{flag} {s / 60:.4g} min" for flag, s in
                                    (("--stop-after", self.stop_after_s), ("--finish-by", finish_by))
                                    if s is not None)
                self.echo(f"{limits}: no more runs started; {left} left"
                          + (" (and waves waiting on them)" if self.study.deferred else "")
                          + "; run the same command again to resume")
        return self.state

    def _elapsed(self) -> float:
        return 0.0 if self.t_run is None else time.monotonic() - self.t_run

    def _finish_by(self) -> float | None:
        """Seconds after the start by which runs should end: the folder's finish-at file, else --finish-by."""
        at = read_finish_at(self.out)
        if at is not None and self.t_run_wall is not None:
            return at - self.t_run_wall
        return self.finish_by_s

    def _time_up(self) -> bool:
        """--stop-after (or --finish-by) has passed: no job starts any more."""
        return any(s is not None and self._elapsed() >= s for s in (self.stop_after_s, self._finish_by()))

    def _ordered(self, recs) -> list[dict]:
        """``recs`` in the order they start: --only's patterns in turn, the queue's order within each."""
        return sorted(recs, key=lambda r: only_rank(self.only, r["id"]))

    def selected(self, rec: dict) -> bool:
        """Whether ``rec`` is among the jobs --only selects (every job without --only)."""
        return only_selects(self.only, rec["id"])

    def is_solo(self, rec: dict) -> bool:
        """Whether ``rec`` runs alone on its GPU: --solo-above is set, --jobs-per-gpu > 1, and it is larger."""
        n = (rec.get("size") or {}).get("params")
        return self.solo_above is not None and self.jobs_per_gpu > 1 and bool(n) and n > self.solo_above

    def sharing(self, rec: dict) -> int:
        """The jobs the GPU of ``rec`` runs at once with it: 1 for a solo job, else --jobs-per-gpu."""
        return 1 if self.is_solo(rec) else self.jobs_per_gpu

    def expectations(self, previous: dict) -> dict[str, tuple[float, bool]]:
        """For a dry run: each pending job's expected seconds under this runner's sharing (what
        ``--finish-by`` would expect, from the finished runs of ``previous``, the folder's state) and
        whether it would run alone by ``--solo-above``; jobs with no expectation are left out."""
        recs = self.plan(previous)["jobs"]
        finished = [r for r in recs if r.get("status") == "completed"]
        out = {}
        for rec in recs:
            if rec.get("status") == "pending" and self.selected(rec):
                est = expected_wall_s(rec, finished, other_models=True, sharing=self.sharing(rec))
                if est is not None:
                    out[rec["id"]] = (est, self.is_solo(rec))
        return out

    def _worker(self, slot: str | None, todo: deque) -> None:
        while not self.stop.is_set():
            with self.lock:
                wait = slot in self._solo_on
                if not wait:
                    finished = [r for r in self.state["jobs"] if r.get("status") == "completed"]
                    finish_by = self._finish_by()
                    rec, passed = next_job(list(todo), finished, self._elapsed(), self.stop_after_s, finish_by,
                                           sharing=self.sharing)
                    for r, est in passed:
                        if r["id"] not in self._passed_over:
                            self._passed_over.add(r["id"])
                            self.echo(f"passed over {r['id']}: expected {est:.0f} s, "
                                      f"{finish_by - self._elapsed():.0f} s left before --finish-by")
                    if rec is None:
                        return
                    solo = self.is_solo(rec)
                    # a solo job waits for its GPU to empty (holding the queue: a smaller job taking the
                    # slot meanwhile would keep the GPU busy for ever); the others wait for it to end
                    wait = solo and self._on_gpu.get(slot, 0) > 0
                if not wait:
                    todo.remove(rec)
                    self.n_started += 1
                    k = self.n_started
                    self._on_gpu[slot] = self._on_gpu.get(slot, 0) + 1
                    if solo:
                        self._solo_on.add(slot)
            if wait:
                time.sleep(0.5)
                continue
            try:
                self._run_one(rec, slot, k)
            finally:
                with self.lock:
                    self._on_gpu[slot] -= 1
                    if solo:
                        self._solo_on.discard(slot)

    def _run_one(self, rec: dict, slot: str | None, k: int) -> None:
        job = self.study.job(rec["id"])
        rdir = self.out / job.id
        log = self.out / LOG_DIR / f"{job.id}.log"
        argv = job.argv(rdir)
        st, _, _ = run_status(rdir)
        if st != "absent":          # a failed run being retried: keep the old folder beside it
            _move_aside(rdir, "failed")
        elif rdir.exists():
            if has_checkpoint(rdir):
                argv = ["train", "--resume", str(rdir)]
            else:
                _move_aside(rdir, "interrupted")
        if self.gpus is None and "device" not in job.train and argv[1] != "--resume":
            argv[-2:-2] = ["--device", "cpu"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        sharing = self.sharing(rec)
        if sharing > 1:
            env[GPU_JOBS_ENV] = str(sharing)                # recorded by the run: its speed is shared
        where = f"GPU {slot}" if slot is not None else "CPU"
        if sharing == 1 and self.jobs_per_gpu > 1:
            where += ", alone (--solo-above)"
        size = job.size.get("params")
        from elmanlab.sizing import format_count
        self.echo(f"[{k}/{self.total}] start {job.id} on {where} ({format_count(size)} params, {job.budget})")
        t0 = time.time()
        with self.lock:
            rec.update(status="running", started=_now(), t_start=round(t0, 3), gpu=slot, gpu_jobs=sharing, error=None,
                       log=str(log.relative_to(self.out)), argv=argv)
            self.save()
        try:
            with open(log, "ab") as lf:
                cvd = f"CUDA_VISIBLE_DEVICES={slot} " if slot is not None else ""
                lf.write(f"\n# {_now()} {cvd}elmanlab {' '.join(argv)}\n".encode())
                lf.flush()
                p = subprocess.Popen([self.python, "-m", "elmanlab"] + argv, env=env, stdout=lf,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                with self.lock:
                    self.procs[job.id] = p
                rc = p.wait()
        except OSError as e:
            rc, tail = None, [f"could not start the train process: {e}"]
        else:
            tail = _log_tail(log)
        finally:
            with self.lock:
                self.procs.pop(job.id, None)
        if self.stop.is_set():
            return
        st, reason, summ = run_status(rdir)
        wall = time.time() - t0
        with self.lock:
            rec.update(finished=_now(), t_end=round(time.time(), 3), wall_s=round(wall, 1), returncode=rc)
            if rc == 0 and st == "completed":
                rec.update(status="completed", error=None, stderr_tail=None)
                loss = summ.get("loss_last100")
                tps = summ.get("tokens_per_s")
                msg = (f"[{k}/{self.total}] done  {job.id}: loss {loss:.4f}" if isinstance(loss, (int, float))
                       else f"[{k}/{self.total}] done  {job.id}")
                if isinstance(tps, (int, float)):
                    msg += f", {tps:,.0f} tok/s"
                if summ.get("val_bpb") is not None:
                    msg += f", val {summ['val_bpb']:.4f} bpb"
                msg += f", {wall:.0f} s"
            else:
                why = reason if st not in ("absent", "completed") else failure_reason(tail, rc)
                if st not in ("absent", "completed") and not (summ or {}).get("error"):
                    errs = [ln[len("error:"):].strip() for ln in tail if ln.startswith("error:")]
                    if errs:
                        why = f"{st}: {errs[-1]}"
                if st == "completed":
                    why = f"exit code {rc}: {failure_reason(tail, rc)}"
                elif st == "absent" and rc == 0:
                    why = "the train process ended without writing summary.json"
                rec.update(status="failed", error=why, stderr_tail=tail)
                msg = f"[{k}/{self.total}] FAILED {job.id} after {wall:.0f} s: {why} (log: {log})"
            self.save()
            if self.bar is not None:
                self.bar.update(1)
        self.echo(msg)
