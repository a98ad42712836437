#!/usr/bin/env bash
# The calls of the next GPU sessions (after 2026-12-06). Carry .wheels and .data
# (python3 scripts/make-corpus-slice.py --pieces 8): since 2026-12-07's eleventh session the tree 13.7 MB +
# .wheels 44.4 (TileLang's 37.2) + the 32M slice 7.8 + validation 0.4 = 66.4 MB of the 67.1 (64 MiB) a call
# carries, so GDN runs need no install-only first call; check with scripts/carry-size.sh .wheels
# .data/corpus-slice-32M.txt.zst .data/corpus-val.txt.zst before a lease (every landing grows the tree; when
# it is over, carry .wheels/core, as below). Use o (issue 20) and r (issue 19): each call starts, collects and
# stops its study by itself, so that nothing is lost when a lent machine is taken back between calls
# (on 2026-12-06 a warm machine was, with two 200M runs in flight, after the study had been
# started in one call to be collected in the next). After each call, on this
# machine: scripts/land-collect.sh FILES_AT/OUT NAME GPU (commits docs/results/NAME, which the next
# call resumes from), then the next call with DEADLINE_S and FINISH_BY fitted to the lease's
# budget_left_s (its start-up took 90 s to 6 minutes of the 30 on 2026-12-06).
#   o  everything in one call, for a short lease (a warm machine was taken back between two calls on
#      2026-12-06, losing the runs in flight): the study with FINISH_BY (default 8.4: a 200M run alone is expected at ~500 s before its family has a run) beside the bf16 GPU
#      test, the finished runs re-packed into OUTDIR every 20 s (what is under $OUT comes back even when
#      the call runs out of time), a last collect at DEADLINE_S (default 580) seconds into the call (timeout_s 600: the study starts about 65 s in, after the install)
#   r  issue 19 in one call: studies/reference-400m.yaml one run at a time (each 400M run 3-6 minutes
#      alone, recording its own tokens/s and memory), resumed from docs/results/reference-400m once a
#      collect is committed there; FINISH_BY (default 9: an E1 400M run alone took 340 s on an H100) ends the runs before DEADLINE_S (default 570)
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
# On 2026-12-07 one call (o with ONLY='mamba2-20M-*,transformer-20M-*,e88-50M-*,e42-50M-*' JOBS=6
# STOP_AFTER=1 FINISH_BY=60 DEADLINE_S=560) finished five runs: Transformer 20M in 107 s, Mamba2 20M in
# 350 s (first tuning included), E88 50M in 389 s; E42 50M was at step ~1,998 at the deadline and was lost.
# Choose a call's runs with ONLY (study --only) rather than FINISH_BY, whose expectations take shared runs
# as time-sliced (654 s for each 20M run six at a time), and give E42 (the slowest per step) room or a
# call of its own.
# The day's second session (three calls of one lease, H100): mamba2 and transformer 50M + 100M, four at
# once, all done in 281 s; then gdn 20M x2, e42 50M + 100M and e88 100M, five at once: none finished in
# ~515 s (e42 100M at step 1,000); then gdn 20M x2 alone in 95 s. What fits one call is the sum of the
# runs' times alone, not their number: at 100M, 16.4M tokens alone take ~57 s (transformer), 65 (mamba2),
# 80 (gdn), 160 (e88), 173 (e1) on an H200 (benchmarks/results/throughput-h200-2026-12-03.md, graph
# steps), plus start-up, first compilation and tuning (carried in studies/state/ since 2026-12-06). Keep a
# call's sum under ~400 s. The day's third session got one call (after eight failed starts): with
# ONLY='mamba2-200M-*,transformer-200M-s42', each alone above 150M, mamba2-200M-s42 took 244 s on an H100
# (its 200M shapes tuned first; the tuning is now in studies/state/), and s43 was lost at DEADLINE_S 530.
# Still to run (12): e42 50M and 100M, e88 100M, gdn 50M and 100M, mamba2 200M s43, e88/gdn/transformer
# 200M x2. Suggested calls: (1) ONLY='e88-100M-*,gdn-50M-*,gdn-100M-*'; (2) ONLY='e42-50M-*,e42-100M-*';
# (3) ONLY='transformer-200M-s42,mamba2-200M-s43,transformer-200M-s43' (since 2026-12-07 the runs start
# in the patterns' order: the Transformer's val_bpb_y, which settles the held-out disagreement, first); (4) ONLY='gdn-200M-*'; (5) and (6) one e88-200M each (SOLO_ABOVE applies).
# The day's fourth session (2026-12-07, H100): five failed starts (541 s), then two r calls of one lease,
# each one run alone: ONLY='mamba2-d1728x22-s42' (288 s in the study, 75 s of it tuning the 400M shapes,
# now in studies/state/), then ONLY='e1-d1760x26-s42' on the warm machine (340 s); 437 and 462 s a call.
# E1 400M had a loss spike at steps 821-830 and missed the scaling fit's prediction. Next, one r call a run
# (STOP_AFTER=2 FINISH_BY=9 DEADLINE_S=565), in this order (docs/results/reference-400m/README.md):
# 'e1-d1760x26-s43', 'e1-d1760x26-spectral_norm=true-spectral_mode=fixed-s42', 'e1-d1760x26-lr=0.00015-s42',
# 'reference-e1-d1760x26', 'mamba2-d1728x22-d_state=64-s42', 'e1-d1760x26-grad_clip=1-s42',
# 'e1-d1760x26-warmup_steps=200-s42'; then the scaling-small calls above.
# The day's fifth session (2026-12-07, H100, one lease, no failed start): three r calls, one run each:
# 'e1-d1760x26-s43' (476 s a call), 'reference-e1-d1760x26' (542 s), 'e1-d1760x26-spectral_norm=true-
# spectral_mode=fixed-s42' (430 s); then benchmarks/throughput.py for every row of the table alone (67 s and
# 174 s, Mamba2 d_state 64's first tuning 108 s of it). The tree (10.8 MB) + .wheels (45.4) + .data (8.4)
# no longer fit the 64 MiB a call carries: carry .wheels/core (6.9 MB) instead of .wheels except for GDN,
# the one family that needs TileLang (40 MB then, 37.2 since; fla's gated backward on Hopper): for GDN calls carry .wheels
# and .data/corpus-val.txt.zst in a first call that only installs (device_setup), then .wheels/core and
# the data in the next, on the warm machine (installs persist while it stays warm).
# Since the fifth session's last commits every Elman-family training line also computes w_h_norm_max
# (LM.recurrence_norm_max, between the timed steps), not yet run on a GPU: check the first r call's E1 run
# has it in metrics.jsonl (and that its tokens/s stays near 41.5K at 1760x26).
# Next r calls, in order (docs/results/reference-400m/README.md, "What is open"):
# 'e1-d1760x26-spectral_norm=true-spectral_mode=fixed-s43', 'mamba2-d1728x22-d_state=64-s42',
# 'reference-mamba2-d1728x22', 'e1-d1760x26-warmup_steps=200-s42', 'e1-d1760x26-lr=0.00015-s42',
# 'e1-d1760x26-grad_clip=1-s42', 'e1-d1760x26-init=reference-s42'; then the rest of wave table, two
# short runs a call where their times alone allow (12.3M tokens at the tok/s of
# benchmarks/results/throughput-400m-*-h100-2026-12-07.json, plus ~40 s of evaluation and graph capture
# each; a call has ~440 s for runs after its set-up): 'mingru-d2752x24-s42,minlstm-d2304x24-s42' (150 + 185 s),
# 'e1-d3584x6-s42,e1-d2560x12-s42' (185 + 235 s), 'e1-d2208x16-s42,mamba2-d1728x22-d_state=64-s43'
# (260 + 190 s, once d_state 64's tuning is in studies/state/); one a call: E1 depth 20 (290 s) and the
# expansions (345-365 s). For a pair, STOP_AFTER=4 (the second run starts only if the first has ended
# within the study's first 4 minutes).
# The day's sixth session (2026-12-07): nine refused or failed starts cost 1,276 s of the 1,800 s budget;
# the first call that started (134 s with its start) ran nothing, since --finish-by passed over both its
# runs (a family with no finished run is expected at the slowest finished family's time + a first-run
# margin: 524 s for minGRU); then one run on the warm machine:
# ONLY='mingru-d2752x24-s42' FINISH_BY=60 DEADLINE_S=330 (133 s in the study, 209 s a call). For a call
# whose runs include a family with no finished run (minLSTM; the precision wave's are of finished
# families), set FINISH_BY=60 and choose the runs by STOP_AFTER and their times alone. The first E1 run
# still has to check w_h_norm_max (above). Next, by the table's needs (docs/results/reference-400m/README.md,
# "What is open"): 'mamba2-d1728x22-d_state=64-s42' (tunes its shapes first: alone in a call, or with
# 'mingru-d2752x24-precision=bf16-s42' after it, STOP_AFTER=6); 'minlstm-d2304x24-s42,e1-d3584x6-s42'
# (FINISH_BY=60 STOP_AFTER=4); 'e1-d2560x12-s42,mingru-d2752x24-precision=bf16-s42'; then one a call:
# E1 depths 16 and 20, the expansions, 'e1-d1760x26-spectral_norm=true-spectral_mode=fixed-s43'.
# The day's seventh session (2026-12-07): MODE=keep (scripts/device-study-session.sh keep) leaves the
# study running at a call's deadline, so that the next call of the lease, on the warm machine, continues it
# with no GPU idle at the call's end (once stops the study at its deadline and loses the run in flight, so
# its STOP_AFTER leaves the GPU idle for up to a run's length each call). With keep: the first call's
# ONLY lists the lease's runs in order (a continued study keeps them) and its STOP_AFTER is in minutes of the whole lease; land each call's output at once (land-collect.sh leaves out
# the run in flight) and call again within the 30 s the machine stays warm; set FINISH_IN in later calls
# (the lease's budget_left_s less ~60) and WAIT_END=1 with DEADLINE_S in the last. Runs that share the GPU
# (JOBS > 1) time-slice it (no MPS): a call fits the sum of its runs' times alone, whatever JOBS is.
# That session: seven refused starts (991 s of the 1,800), then one lease: ONLY='mamba2-d1728x22-d_state=64-s42,
# minlstm-d2304x24-s42' (252 + 163 s in the study, 520 s a call), then 'e1-d3584x6-s42' with DEADLINE_S=228
# on the warm machine: lost at step 1,490 of 1,500 (142 s of training, ~85 s of start-up, graph capture
# and evaluation). Give an E1 run its training time (12.3M tokens at the benchmarked tok/s) plus ~100 s.
# Next r calls, by the table's needs (docs/results/reference-400m/README.md, "What is open"), MODE=keep
# over one lease: 'e1-d3584x6-s42,e1-d2560x12-s42,e1-d2208x16-s42,e1-d1984x20-s42' (~240 + 280 + 300 +
# 330 s), then the expansions 1.5/2.0/2.5 (~380-400 s each), 'mamba2-d1728x22-d_state=64-s43' (~190),
# 'e1-d1056x26-expansion=2-s43', 'e1-d1760x26-spectral_norm=true-spectral_mode=fixed-s43', then the
# precision wave and 'reference-mamba2-d1728x22', 'reference-mingru-d2752x24', 'reference-minlstm-d2304x24'.
# The day's eighth session (2026-12-07): one refused start (nvidia-h100-x1, ~90 s), then kind nvidia-h200
# gave an H100 and one lease of three keep calls: ONLY='e1-d3584x6-s42,e1-d2560x12-s42,e1-d2208x16-s42,
# e1-d1984x20-s42,mamba2-d1728x22-d_state=64-s43' STOP_AFTER=19 FINISH_BY=60 DEADLINE_S=575 (then FINISH_IN=1000,
# then WAIT_END=1 DEADLINE_S=330): 171 + 226 + 256 + 291 + 229 s of run time, calls of 577, 577 and 126 s;
# then a once call, ONLY='mingru-d2752x24-precision=bf16-s42' (101 s in the study, 217 s a call). land-collect.sh
# now reads keep's left-running marker (the run in flight goes on: not kept as lost) and never lands the
# pack's sessions/ (the carried copy had overwritten the landed log). Pure-bf16 runs are scored with y
# since 7652ed8 (the minGRU one's x score, 14.38 bits/byte, is left out by the report).
# Next r calls, by the table's needs (docs/results/reference-400m/README.md, "What is open"), MODE=keep over
# one lease: 'e1-d1312x26-expansion=1.5-s42,e1-d1056x26-expansion=2-s42,e1-d880x26-expansion=2.5-s42' (~345-365 s
# each at the benchmarked tok/s + ~40 s), then 'mamba2-d1728x22-d_state=64-precision=bf16-s42' (~150 s),
# 'e1-d1760x26-spectral_norm=true-spectral_mode=fixed-precision=bf16-s42', 'reference-e1-d3584x6',
# 'reference-e1-d1984x20', 'e1-d1760x26-spectral_norm=true-spectral_mode=fixed-s43', 'e1-d1056x26-expansion=2-s43',
# 'reference-mamba2-d1728x22', 'reference-mingru-d2752x24', 'reference-minlstm-d2304x24'. minGRU's pure-bf16
# score with y needs a run outside the study (its record is complete): `python3 -m elmanlab train mingru --dim
# 2752 --depth 24 --precision bf16 --steps 1500 --batch-size 16 --seq-len 512 --data .data/corpus-slice-32M.txt.zst
# --val-data .data/corpus-val.txt.zst --eval-every 750 --eval-bytes 2000000 --out $OUT/mingru-bf16-y` (~110 s).
# The day's ninth session (2026-12-07): one failed start (181 s) and a refusal (90 s), a wait of seven minutes,
# then an H100 (kind nvidia-h200) and one lease of three keep calls (578, 578 and 258 s; its start took
# ~300 s of the first call's lease): ONLY='e1-d1312x26-expansion=1.5-s42,e1-d1056x26-expansion=2-s42,
# e1-d880x26-expansion=2.5-s42,mamba2-d1728x22-d_state=64-precision=bf16-s42,...' STOP_AFTER=17 FINISH_BY=60
# DEADLINE_S=575, then FINISH_IN=850, then WAIT_END=1 DEADLINE_S=290: the three expansions (355, 379, 362 s
# of wall_s) and 'reference-e1-d3584x6' (189 s); --finish-by passed over the two pure-bf16 runs (expected
# 294 and 391 s, 204 left). Land each call's copy from its own files_at (copy it to a fresh folder: an
# existing /work/land/rN gets the copy as a subfolder). The minGRU rerun below is still to do.
# The day's tenth session (2026-12-07): about an hour of refused and failed starts (742 s of the 1,800), then an
# H100 (kind nvidia-h200) and one lease of two keep calls (577 and 346 s; the lease's start took most of the first
# call's budget: held_s 1,377 at its end): ONLY='e1-d1056x26-expansion=2-s43,e1-d1056x26-expansion=2-spectral_norm=true-
# spectral_mode=fixed-s42,...' STOP_AFTER=24 FINISH_BY=60 DEADLINE_S=575, then WAIT_END=1 FINISH_IN=300 DEADLINE_S=345:
# the two runs (384 and 400 s in the study). Issue 19's required runs are all done.
# Next r calls, MODE=keep over one lease, by "What is open" (docs/results/reference-400m/README.md):
# 'e1-d1760x26-spectral_norm=true-spectral_mode=fixed-s43' (~420 s), 'e1-d1056x26-expansion=2-spectral_norm=true-
# spectral_mode=fixed-s43' (~430), 'reference-e1-d1056x26-exp2' (~420), 'reference-mamba2-d1728x22' (~300),
# 'reference-e1-d2560x12' (~250), 'reference-e1-d2208x16' (~280), 'reference-e1-d1984x20' (~300),
# 'mamba2-d1728x22-d_state=64-precision=bf16-s42' (~150 s; its expectation, 294, is Mamba2's in the lab's
# precision), 'reference-mingru-d2752x24', 'reference-minlstm-d2304x24', 'e1-d880x26-expansion=2.5-spectral_norm=true-
# spectral_mode=fixed-s42' (~400), 'e1-d1312x26-expansion=1.5-spectral_norm=true-spectral_mode=fixed-s42' (~400),
# then the stability wave. minGRU's
# pure-bf16 y-score rerun (above) is still to do. Or, to close issue 20 first, the scaling-small calls above.
# The day's eleventh session (2026-12-07): eight failed or refused starts (1,096 s), then one H100 (kind nvidia-h200)
# and one keep call with everything carried (562 s; the lease's start took most of the budget: held_s 1,732 at its
# end): ONLY as below, STOP_AFTER=4: e42-50M-s42 and gdn-50M-s42 finished (296 and 192 s in the study, two at a time); e88-100M
# and gdn-100M were lost when the budget ran out. Its second call reinstalled everything (device_setup's check
# imported mamba_ssm, which always fails: fixed since, with find_spec). Still to run (10): e42 100M, e88 100M,
# gdn 100M, mamba2 200M s43, e88/gdn/transformer 200M x2: drop e42-50M and gdn-50M from the ONLY below.
# Issue 20 first now (issue 19 is resolved). Its 12 runs took ~2,600 s alone on an H100 (16.4M tokens at the
# H200 rates of studies/scaling-small.yaml less ~20%, + ~40 s of start-up and evaluation each: gdn 50M 105,
# 100M 140, 200M 205 each; e42 50M 190, 100M 260; e88 100M 230, 200M 370 each; transformer 200M 165 each;
# mamba2 200M 200), so two sessions. One MODE=keep lease a session, every call carrying .wheels and .data
# (above), JOBS 2 with SOLO_ABOVE 150M, in this order (every family reaches three sizes first; each GDN run
# beside an E run, so that the GPU works while GDN's first process compiles TileLang's kernels on the CPU):
# ONLY='e42-50M-*,gdn-50M-*,e88-100M-*,gdn-100M-*,transformer-200M-s42,e42-100M-*,mamba2-200M-s43,
# transformer-200M-s43,gdn-200M-*,e88-200M-*' with BF16_TEST=0 MODE=keep FINISH_BY=60, STOP_AFTER the lease's
# minutes less the longest run's; the next session resumes the study from docs/results/scaling-small.
# The day's twelfth session (2026-12-07): the first call was refused, the load over 64 MiB (the device counts
# more than the files' bytes: scripts/carry-size.sh now counts as tar does), so the TileLang tarball lost the
# C++ sources nothing reads at run time (35.2 MB; GDN trained through TileLang from it); three failed starts
# (361 s); then one H100 lease, three calls: ONLY='e88-100M-*,gdn-100M-*,e42-100M-*,transformer-200M-s42,
# mamba2-200M-s43,...' STOP_AFTER=4 finished e88 and gdn 100M (295, 327 s in the study), e42 100M (277) and
# transformer 200M s42 (162 s). The second call was given WAIT_END=1, which ENDS the study at its deadline:
# mamba2 200M s43 was lost in flight. A middle call of a lease takes FINISH_IN, never WAIT_END.
# Still to run (6), each alone: ONLY='mamba2-200M-s43,transformer-200M-s43,gdn-200M-*,e88-200M-*' (~200,
# 165, 205 x2, 370 x2 s + ~40 each: two leases), BF16_TEST=0 MODE=keep FINISH_BY=60, STOP_AFTER as above.
# 2026-12-08 (thirteenth session): no machine. Eight starts got none and two calls were refused (1,291 s of the
# 1,800), then new loans were paused. The calls were ONLY='gdn-200M-s42,transformer-200M-s43,e88-200M-s42,
# mamba2-200M-s43,gdn-200M-s43,e88-200M-s43' (the two runs that add a size to a family's curve, GDN's and E88's
# 200M, and the Transformer's second 200M seed, which decides whether its misfit is a seed's, first) with
# STOP_AFTER the lease's minutes less the longest run's; use that order next. With under ~700 s of device time
# left, put transformer-200M-s43 (~205 s a call) first: a lease's start can take 300 s of it.
# 2026-12-08, second, third and fourth (fourteenth to sixteenth sessions): new loans paused from each one's first
# step; no call, no device time. The order above still stands.
#   usage: ELMANLAB_SOURCE_COMMIT=<sha> scripts/device-next-session.sh o|r|f|m|v|e|h OUTDIR
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
