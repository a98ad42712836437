"""scripts/device-study-session.sh keep: a study left running between the calls of one lease, run here
with stand-ins for python3 and nvidia-smi (the study is a shell loop that finishes a run a second)."""
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = r"""#!/usr/bin/env bash
# stands in for python3: imports succeed; `-m elmanlab study STUDY --out DIR ...` logs its start and
# finishes a run (a folder with summary.json) every second until killed
[ "$1" = "-c" ] && exit 0
if [ "$1 $2 $3" = "-m elmanlab study" ]; then
  echo start >> "$FAKE_LOG"
  out=""; prev=""
  for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done
  mkdir -p "$out"; echo '{"jobs": []}' > "$out/study.json"
  i=0
  while true; do i=$((i + 1)); mkdir -p "$out/run-$i"; echo '{}' > "$out/run-$i/summary.json"; sleep 1; done
fi
exit 0
"""


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("python3", FAKE_PYTHON), ("nvidia-smi", "#!/usr/bin/env bash\necho Fake GPU\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    e = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(tmp_path / "calls.log"),
             STUDY_WORK=str(tmp_path / "work"), START_WAIT_S="0", DEADLINE_S="2")
    yield e
    pid = tmp_path / "work" / "keep-test.pid"
    if pid.exists():                      # never leave the stand-in study running
        subprocess.run(["bash", "-c", f"kill -9 -- -$(cat {pid}) 2>/dev/null"], check=False)


def keep(env, out, **extra):
    r = subprocess.run(["bash", "scripts/device-study-session.sh", "keep", "studies/keep-test.yaml", str(out)],
                       cwd=ROOT, capture_output=True, text=True, env=dict(env, **extra), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def alive(tmp_path):
    """Whether the stand-in study runs (a killed one may linger a moment, or as a zombie where no init
    reaps it)."""
    pid = (tmp_path / "work" / "keep-test.pid").read_text().strip()
    time.sleep(0.2)
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def runs_packed(out):
    with tarfile.open(out / "keep-test.tar.gz") as t:
        return {Path(n).parts[1] for n in t.getnames() if n.endswith("summary.json")}


def test_keep_leaves_the_study_running_then_continues_it_then_stops_it(env, tmp_path):
    first = keep(env, tmp_path / "out1")
    assert "left running" in first and alive(tmp_path)
    assert (tmp_path / "out1" / "left-running").exists()                   # land-collect.sh reads it
    n1 = len(runs_packed(tmp_path / "out1"))
    assert n1 >= 1
    time.sleep(1)
    second = keep(env, tmp_path / "out2", FINISH_IN="100")
    assert "continuing the study" in second and "left running" in second and alive(tmp_path)
    assert (tmp_path / "calls.log").read_text().split() == ["start"]          # started once, not twice
    finish_at = int((tmp_path / "work" / "keep-test" / "finish-at").read_text())
    assert abs(finish_at - (time.time() + 100)) < 20
    assert len(runs_packed(tmp_path / "out2")) > n1                          # the runs went on between calls
    last = keep(env, tmp_path / "out3", WAIT_END="1")
    assert "stopped the study" in last and not alive(tmp_path)
    assert not (tmp_path / "out3" / "left-running").exists()


@pytest.mark.slow
def test_keep_starts_again_when_the_study_is_not_running(env, tmp_path):
    keep(env, tmp_path / "out1", WAIT_END="1")
    assert not alive(tmp_path)
    out = keep(env, tmp_path / "out2")
    assert "continuing" not in out and alive(tmp_path)
    assert (tmp_path / "calls.log").read_text().split() == ["start", "start"]


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def scratch_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "land-collect.sh", repo / "scripts")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def came_back(tmp_path, tag, runs, log, left_running=False, carried_sessions=None):
    """What a call returns: s.tar.gz holding study s (RUN: finished or in flight), s.log, and the
    left-running marker of a keep call; carried_sessions: files the call's tree had in sessions/."""
    study = tmp_path / f"pack-{tag}" / "s"
    jobs = []
    for run, finished in runs.items():
        (study / run).mkdir(parents=True)
        (study / run / "config.json").write_text("{}\n")
        (study / run / "metrics.jsonl").write_text('{"step": 10, "loss": 2.0}\n')
        if finished:
            (study / run / "summary.json").write_text("{}\n")
        jobs.append({"id": run, "status": "completed" if finished else "running"})
    (study / "study.json").write_text(json.dumps({"jobs": jobs}))
    for name, text in (carried_sessions or {}).items():
        (study / "sessions").mkdir(exist_ok=True)
        (study / "sessions" / name).write_text(text)
    out = tmp_path / f"came-back-{tag}"
    out.mkdir()
    with tarfile.open(out / "s.tar.gz", "w:gz") as t:
        t.add(study, arcname="s")
    (out / "s.log").write_text(log)
    if left_running:
        (out / "left-running").write_text("")
    return out


def land(repo, tmp_path, src):
    env = dict(os.environ, GIT_CONFIG_GLOBAL=str(tmp_path / "gitconfig"), **GIT_ENV)
    r = subprocess.run(["bash", "scripts/land-collect.sh", str(src), "s", "h100"], cwd=repo,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_land_collect_keeps_finished_runs_and_the_lost_runs_training_lines(tmp_path):
    """scripts/land-collect.sh in a scratch repository: the finished run lands, the run in flight is left
    out (and marked to run again) but its training lines are kept under sessions/, and it all is committed."""
    repo = scratch_repo(tmp_path)
    out = land(repo, tmp_path, came_back(tmp_path, "a", {"done-s42": True, "lost-s42": False},
                                         "progress\r[1/2] done done-s42\n"))
    assert "left out lost-s42" in out and "1 runs completed" in out
    dest = repo / "docs" / "results" / "s"
    assert (dest / "done-s42" / "summary.json").exists() and not (dest / "lost-s42").exists()
    lost = list((dest / "sessions").glob("*-h100-lost-lost-s42.metrics.jsonl"))
    assert len(lost) == 1 and json.loads(lost[0].read_text())["loss"] == 2.0
    jobs = {j["id"]: j["status"] for j in json.loads((dest / "study.json").read_text())["jobs"]}
    assert jobs == {"done-s42": "completed", "lost-s42": "interrupted"}
    log = subprocess.run(["git", "log", "--name-only", "--format=%s"], cwd=repo, capture_output=True,
                         text=True).stdout
    assert "s: the runs collected on" in log and lost[0].name in log


def test_land_collect_over_a_keep_lease(tmp_path):
    """Two calls of one lease (keep): the first left the study running, so its run in flight is not kept
    as lost; the second's log repeats the first's lines (one growing log), appended once; and the
    sessions/ each call carried (this repository's copy at the time) never overwrites what was landed."""
    repo = scratch_repo(tmp_path)
    dest = repo / "docs" / "results" / "s"
    first = land(repo, tmp_path, came_back(
        tmp_path, "a", {"r1": True, "r2": False}, "[1/2] done r1\r[2/2] start r2\n", left_running=True,
        carried_sessions={"old.log": "carried\n"}))
    assert "left out r2: in flight, left running" in first
    assert not list((dest / "sessions").glob("*lost*")) and not (dest / "sessions" / "old.log").exists()
    land(repo, tmp_path, came_back(
        tmp_path, "b", {"r1": True, "r2": True}, "[1/2] done r1\r[2/2] start r2\r[2/2] done r2\n",
        carried_sessions={next((dest / "sessions").glob("*.log")).name: "stale copy\n"}))
    logs = list((dest / "sessions").glob("*-h100.log"))
    assert len(logs) == 1
    assert logs[0].read_text().splitlines() == ["[1/2] done r1", "[2/2] start r2", "[2/2] done r2"]
    assert (dest / "r2" / "summary.json").exists()
