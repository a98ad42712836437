#!/usr/bin/env bash
# The calls of the next GPU sessions: one phase a call, run on the device machine (run's command).
#   usage: ELMANLAB_SOURCE_COMMIT=<sha> scripts/device-next-session.sh o|r|f|m|v|e|h OUTDIR
# What each session ran and what it cost is kept beside its results, not here: the sessions table and
# sessions/ logs of docs/results/scaling-small (issue 20) and docs/results/reference-400m (issue 19); the
# history of this plan is in git log.
#
# Carry .wheels (core + TileLang's 35.2 MB tarball: scripts/build-wheelhouse.sh) and .data (python3
# scripts/make-corpus-slice.py --pieces 8: the 32M slice and the validation split). With the tree they fill
# all but 1.07 MB of the 64 MiB a call carries (at 5f38a28), so GDN runs need no install-only first call;
# every landing grows the tree, so check before a lease:
#   bash scripts/carry-size.sh .wheels .data/corpus-slice-32M.txt.zst .data/corpus-val.txt.zst
# When it is over, carry .wheels/core (7.3 MB) instead, except for Gated DeltaNet, the one family that needs
# TileLang (fla's gated backward on Hopper): then a first call that only installs (device_setup) with .wheels,
# and the runs in the next call on the warm machine (installs persist while it stays warm).
#
#   o  issue 20: studies/scaling-small.yaml, resumed from docs/results/scaling-small, beside the bf16 GPU
#      test of every family's fast kernel (BF16_TEST=0 turns it off and gives the study the whole GPU); the
#      finished runs re-packed into OUTDIR every 20 s (what is under $OUT comes back even when the call runs
#      out of time), a last collect at DEADLINE_S (default 580) seconds into the call; FINISH_BY default 8.4
#   r  issue 19: studies/reference-400m.yaml one run at a time (each 400M run 3-7 minutes alone, recording
#      its own tokens/s and memory), resumed from docs/results/reference-400m; FINISH_BY default 9,
#      DEADLINE_S 570
#   f  (two calls) studies/e42-first-step.yaml: does a warm-up or the reference's initialisation undo E42's
#      loss at 200M (worse than at 20M in scaling-small)? land it with land-collect.sh ... e42-first-step GPU
#   m  (~3 minutes, the GPU otherwise idle) what sharing the GPU gains: E1 200M and 20M, 300 steps,
#      alone then two at once (benchmarks/sharing.py), the premise of --solo-above measured on one GPU
#   v  (run on 2026-12-06, H100: 102 passed) the Elman and E88 GPU tests beside the study's start
#   e  E88 v2 and v3 side by side (correctness, then fwd+bwd beside fla's GDN)
#   h  (~5 minutes) where the Mamba2 / Transformer held-out disagreement comes from, on the GPU:
#      benchmarks/heldout_gap.py --device cuda for each at 20M, 2,000 steps of 16 x 512 (seed 42: the
#      batches of scaling-small's 20M runs, whose losses it should repeat), scoring validation and unread
#      training bytes with x and y, and the training step's loss against an evaluation-mode score of
#      the same batch (are the two paths one measurement?)
#
# How to spend a lease (learned over the sessions of 2026-12-06 to 2026-12-08):
# - A lease's start takes 90 s to 6 minutes of the session's 30; a failed start costs 90-180 s; a warm
#   machine can be taken back between calls.
# - MODE=keep (scripts/device-study-session.sh keep) leaves the study running at a call's deadline, so the
#   next call on the warm machine continues it with no GPU idle (MODE=once, the default, stops it and loses
#   the run in flight). The first call's ONLY lists the lease's runs in order (a continued study keeps them)
#   and its STOP_AFTER is in minutes of the whole lease: the lease's minutes less the longest run's.
# - Land each call's output at once, from its own files_at copied to a fresh folder (an existing one gets
#   the copy as a subfolder): cp -r FILES_AT/o /work/land/sN/oK && scripts/land-collect.sh /work/land/sN/oK
#   NAME GPU (commits docs/results/NAME, which the next call resumes from; the run in flight is left out).
#   Then call again within the 30 s the machine stays warm.
# - A middle call takes FINISH_IN (the lease's budget_left_s less ~60), never WAIT_END=1: that ends the
#   study at the deadline (mamba2-200M-s43 was lost so on 2026-12-07). The last call takes WAIT_END=1 with
#   DEADLINE_S (budget_left_s less ~40); a lease with budget for one call only, WAIT_END=1 in the first.
# - Choose a call's runs with ONLY (study --only) and FINISH_BY=60: --finish-by expects runs that share the
#   GPU as time-sliced, and a family with no finished run at the slowest family's time plus a margin, so
#   it passes over runs that would fit.
# - What fits is the sum of the runs' times alone, whatever JOBS is (runs that share the GPU time-slice it,
#   no MPS): a run's tokens at its benchmarked tok/s plus ~40-100 s of start-up, graph capture and
#   evaluation. Triton's tuning travels in studies/state/; GDN's first process compiles TileLang's kernels.
#
# Next: issue 20's last 6 runs of scaling-small (30 of 36 done), each alone (SOLO_ABOVE 150M), on an H100
# about 205 s for gdn, 165 for transformer, 370 for e88 and 200 for mamba2, each + ~40 s: two leases. Phase o:
#   ONLY='gdn-200M-s42,transformer-200M-s43,e88-200M-s42,mamba2-200M-s43,gdn-200M-s43,e88-200M-s43'
#   BF16_TEST=0 MODE=keep FINISH_BY=60 DEADLINE_S=575 STOP_AFTER=<the lease's minutes less the longest run's>
# GDN's and E88's 200M runs first add a size to their curves; the Transformer's second 200M seed decides
# whether its misfit is a seed's. With under ~700 s of device time left, put transformer-200M-s43 first.
# Then issue 19's open runs (phase r, MODE=keep), by "What is open" in docs/results/reference-400m/README.md.
# Its item 3 includes minGRU's pure-bf16 held-out score with y, a run outside the study (~110 s):
#   python3 -m elmanlab train mingru --dim 2752 --depth 24 --precision bf16 --steps 1500 --batch-size 16 --seq-len 512
#   --data .data/corpus-slice-32M.txt.zst --val-data .data/corpus-val.txt.zst --eval-every 750 --eval-bytes 2000000
#   --out $OUT/mingru-bf16-y
set -o pipefail
phase=${1:?o, r, f, m, v, e or h}
out=$(realpath -m "${2:?OUTDIR}")
t0=$(date +%s)
source scripts/device-env.sh
device_setup "$out"
# a study in one call (scripts/device-study-session.sh once); by default two runs at a time, the large ones alone
study_once() {
    CALL_T0=$t0 JOBS=${JOBS:-2} STOP_AFTER=${STOP_AFTER:-5} FINISH_BY=${FINISH_BY:-8.4} DEADLINE_S=${DEADLINE_S:-580} \
        SOLO_ABOVE=${SOLO_ABOVE-150M} bash scripts/device-study-session.sh "${MODE:-once}" "$1" "$out"
}
case $phase in
o)
    # beside the study: every family's fast kernel with bf16 weights (precision: bf16, new on 2026-12-06;
    # on 2026-12-06 at b71d8eb: e1, e33, e42, e88 and mamba2 passed, then GDN's first compilation ran past
    # the 240 s it had)
    # the test off (BF16_TEST=0) gives the study the whole GPU
    [ "${BF16_TEST:-1}" = 1 ] && (timeout 360 python3 -m pytest -v -m gpu tests/test_train_gpu.py -k pure_bf16 -p no:cacheprovider \
        > "$out/gputests-bf16.log" 2>&1; echo "pytest exit $?" >> "$out/gputests-bf16.log") &
    study_once studies/scaling-small.yaml
    [ "${BF16_TEST:-1}" = 1 ] && tail -n 14 "$out/gputests-bf16.log"
    ;;
f)
    # why E42 is worse at 200M than at 20M (docs/results/scaling-small/README.md): a warm-up or the
    # reference's initialisation, each at 20M (the pair shares the GPU) and 200M (alone); two calls
    study_once studies/e42-first-step.yaml
    ;;
r)
    JOBS=1 SOLO_ABOVE= STOP_AFTER=${STOP_AFTER:-2} FINISH_BY=${FINISH_BY:-9} DEADLINE_S=${DEADLINE_S:-570} \
        study_once studies/reference-400m.yaml
    ;;
m)
    for p in 200M 20M; do
        timeout 280 python3 benchmarks/sharing.py --model e1 --params $p --steps 300 --jobs 1,2 \
            --out "$out/sharing-e1-$p.json" 2>&1 | tee -a "$out/sharing.log" | grep -v Warning
    done
    ;;
v)
    # the study first (its runs' losses do not depend on what else runs), the tests beside it, so that
    # the lease's minutes go to the study: no new run of a model with no finished run after 15 minutes
    # (the 200M E-family pairs take ~10 minutes side by side), none expected to end after minute 26 of
    # the study (it starts 2-3 minutes into the 30-minute lease; a run in flight at the end is lost)
    JOBS=${JOBS:-2} STOP_AFTER=${STOP_AFTER:-15} FINISH_BY=${FINISH_BY:-26} \
        bash scripts/device-study-session.sh start studies/scaling-small.yaml "$out"
    timeout 300 python3 -m pytest -q -m gpu tests/ops/test_elman.py tests/ops/test_e88.py \
        tests/test_layers_fast_paths.py tests/test_train_gpu.py -k "(elman or e88 or e1 or e33 or e42) and not short_conv" \
        -p no:cacheprovider > "$out/gputests.log" 2>&1
    echo "pytest exit $?" >> "$out/gputests.log"
    tail -n 6 "$out/gputests.log"
    tail -c 2000 /tmp/elmanlab-study/scaling-small.log | tr '\r' '\n' | tail -n 6
    ;;
h)
    for m in mamba2 transformer; do
        timeout 280 python3 benchmarks/heldout_gap.py --model $m --params 20M --steps 2000 --seq-len 512 \
            --eval-bytes 2000000 --device cuda --data .data/corpus-slice-32M.txt.zst --val-data .data/corpus-val.txt.zst \
            --out "$out/heldout-gap-$m-20M-gpu.json" 2>&1 | tee -a "$out/heldout-gap.log" | grep -v Warning
    done
    ;;
e)
    timeout 420 python3 scripts/e88-ab.py --out "$out/e88-ab-h200.json" --kernels v2,v3 \
        --shapes 44:48,32:48,56:32 > "$out/e88-ab.log" 2>&1
    echo "e88-ab exit $?" >> "$out/e88-ab.log"
    grep -v TileLang "$out/e88-ab.log" | tail -n 40
    ;;
esac
ls -la "$out"
