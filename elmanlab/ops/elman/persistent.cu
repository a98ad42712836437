// Persistent Elman recurrence kernel (E1/E33 tanh, E42 linear), forward and backward.
//
// One cooperative launch runs all T steps. Block `blk` owns 16 output units j0..j0+15 and keeps
// its slice M[j0:j0+16, :] of the recurrent matrix resident in shared memory (fp32) for the
// whole sequence. Each step every block reads the previous state s [B, D] (fp32, from L2),
// computes its 16 columns of s @ M^T on the CUDA cores in fp32, applies the step's epilogue and
// writes its part of the new state; one grid-wide barrier (atomic counter) per step.
//
//   forward (mode 0 tanh / 1 linear):  s_t = act(X_t + bias + s_{t-1} @ M^T)      M = W_h
//   backward (mode 2 tanh / 3 linear, time reversed, X = dL/dh):
//       dpre_t = (X_t + c0 [first step only] + dpre_{t+1} @ M^T) * act'(h_t)      M = W_h^T
//
// Compiled by elmanlab/ops/_build.py with nvcc into a shared library called via ctypes.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

#define JP 16          // output units per block
#define NTH 256        // threads per block
#define BT 16          // batch rows per tile
#define KSPLIT 16      // k-splits (8 warps x 2 half-warps)
#define SU 16          // state-staging loads in flight per thread

struct ElmanParams {
  const void* X;       // [B, T, D]   TX
  const void* aux;     // [B, T, D]   TX (backward tanh: forward outputs h), else null
  const float* bias;   // [D] or null
  const float* M;      // [D, D] row-major, m[b, j] = sum_k s[b, k] M[j, k]
  const float* c0;     // [B, D] added at the first processed step, or null
  void* out;           // [B, T, D]   TO
  float* sfinal;       // [B, D] last state, or null
  float* sbuf;         // [2, B, KP] ping-pong state, zero padded beyond D
  unsigned* counter;   // zeroed before launch
  int B, T, D, KP, KC, reverse, mode, has_s0;
  int sync;            // tensor-core kernels' barrier: 0 fences + atomicAdd, 1 release reduction
};

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

__device__ __forceinline__ unsigned ld_acquire_u32(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void red_release_add_u32(unsigned* p, unsigned v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" : : "l"(p), "r"(v) : "memory");
}

// The grid-wide barrier at the end of step i of a tensor-core kernel (after the block's last
// __syncthreads of the step). sync 0: __threadfence, atomicAdd (a round trip for its return
// value), spin, __threadfence. sync 1: one fire-and-forget release reduction (the fence and the
// add in one instruction, no return value to wait for), then the acquire spin alone.
// (Measured on an H200 and dropped: per-block step flags that each warp polled for the blocks whose
// units it reads, 1.1-1.6x slower than sync 0 at every width, the polling flooded L2; a 32 ns back-off
// between polls of sync 1, within 1% of sync 1 in 14 of 15 rows, a tie: kernels-candidates/-linear
// -h200-2026-12-03 in benchmarks/results.)
__device__ __forceinline__ void step_done(const ElmanParams& p, int i, int tid) {
  if (i + 1 >= p.T) return;
  const unsigned target = (unsigned)(i + 1) * gridDim.x;
  if (tid == 0) {
    if (p.sync) {
      red_release_add_u32(p.counter, 1u);
      while (ld_acquire_u32(p.counter) < target) {
      }
    } else {
      __threadfence();
      atomicAdd(p.counter, 1u);
      while (ld_acquire_u32(p.counter) < target) {
      }
      __threadfence();
    }
  }
  __syncthreads();
}

template <typename TX, typename TO>
__global__ void __launch_bounds__(NTH, 1) elman_persistent_kernel(ElmanParams p) {
  extern __shared__ float4 smem4[];
  const int KP = p.KP, KC = p.KC, DS = KC + 8, D = p.D, B = p.B, T = p.T;
  float4* Wsm = smem4;                                  // (KP/4) chunks x 16 float4 (swizzled)
  float* Ssm = reinterpret_cast<float*>(smem4) + (size_t)KP * JP;   // BT x DS, reused for reduction
  float4* Ssm4 = reinterpret_cast<float4*>(Ssm);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kh = lane >> 4, bg = (lane >> 2) & 3, jg = lane & 3;
  const int ksi = warp * 2 + kh;                        // 0..15, parity == kh
  const int j0 = blockIdx.x * JP;

  // resident weight slice: unit (c, r) holds M[j0 + r][4c .. 4c+3]
  for (int idx = tid; idx < (KP / 4) * JP; idx += NTH) {
    const int c = idx / JP, r = idx % JP, j = j0 + r;
    float w[4];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int k = 4 * c + q;
      w[q] = (j < D && k < D) ? p.M[(size_t)j * D + k] : 0.f;
    }
    const int u = (r & ~3) | ((r & 3) ^ (r >> 2) ^ (c & 1));
    Wsm[c * JP + u] = make_float4(w[0], w[1], w[2], w[3]);
  }
  __syncthreads();

  const TX* X = reinterpret_cast<const TX*>(p.X);
  const TX* AUX = reinterpret_cast<const TX*>(p.aux);
  TO* OUT = reinterpret_cast<TO*>(p.out);
  const int ob = tid >> 4, oj = tid & 15;               // epilogue output owned by this thread
  const int j = j0 + oj;
  const float bj = (p.bias != nullptr && j < D) ? p.bias[j] : 0.f;
  const int ntiles = (B + BT - 1) / BT;

  for (int i = 0; i < T; ++i) {
    const int t = p.reverse ? T - 1 - i : i;
    const float* sprev = p.sbuf + (size_t)(i & 1) * B * KP;
    float* snext = p.sbuf + (size_t)((i + 1) & 1) * B * KP;
    const bool do_mm = (i > 0) || p.has_s0;
    for (int tile = 0; tile < ntiles; ++tile) {
      const int b0 = tile * BT;
      const int b = b0 + ob;
      const bool valid = (b < B) && (j < D);
      // issue the epilogue's loads early; their latency hides behind the matmul
      float xv = 0.f, hv = 0.f;
      if (valid) {
        const size_t off = ((size_t)b * T + t) * D + j;
        xv = to_f<TX>(X[off]);
        if (p.mode == 2) hv = to_f<TX>(AUX[off]);
        if (i == 0 && p.c0 != nullptr) xv += p.c0[(size_t)b * D + j];
      }
      float acc[4][4];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[a][c] = 0.f;
      if (do_mm) {
        for (int kc0 = 0; kc0 < KP; kc0 += KC) {
          const int kcn = min(KC, KP - kc0);
          // stage s_prev[b0:b0+16, kc0:kc0+kcn] into Ssm[b][kk]
          const int nq = kcn / 4, total = BT * nq;
          // batches of SU independent 16-byte L2 loads in flight per thread, then the stores
          for (int base = tid; base < total; base += NTH * SU) {
            float4 v4[SU];
#pragma unroll
            for (int u = 0; u < SU; ++u) {
              const int idx = base + u * NTH;
              const int rb = idx / nq, qq = idx % nq;
              v4[u] = make_float4(0.f, 0.f, 0.f, 0.f);
              if (idx < total && b0 + rb < B)
                v4[u] = __ldcg(reinterpret_cast<const float4*>(sprev + (size_t)(b0 + rb) * KP + kc0) + qq);
            }
#pragma unroll
            for (int u = 0; u < SU; ++u) {
              const int idx = base + u * NTH;
              if (idx < total) Ssm4[(idx / nq) * (DS / 4) + idx % nq] = v4[u];
            }
          }
          __syncthreads();
          const int cbase = kc0 / 4;                    // multiple of 16: parity of c == parity of ksi
          for (int c = ksi; c < nq; c += KSPLIT) {
            float4 sv[4], wv[4];
#pragma unroll
            for (int bi = 0; bi < 4; ++bi) sv[bi] = Ssm4[(bg + 4 * bi) * (DS / 4) + c];
            const int cg = cbase + c;
#pragma unroll
            for (int ji = 0; ji < 4; ++ji) wv[ji] = Wsm[cg * JP + jg * 4 + (ji ^ jg ^ (cg & 1))];
#pragma unroll
            for (int bi = 0; bi < 4; ++bi)
#pragma unroll
              for (int ji = 0; ji < 4; ++ji) {
                float a = acc[bi][ji];
                a = fmaf(sv[bi].x, wv[ji].x, a);
                a = fmaf(sv[bi].y, wv[ji].y, a);
                a = fmaf(sv[bi].z, wv[ji].z, a);
                a = fmaf(sv[bi].w, wv[ji].w, a);
                acc[bi][ji] = a;
              }
          }
          __syncthreads();
        }
        // partial sums -> red[ksi][b][j] (reuses Ssm; 16*256 floats)
#pragma unroll
        for (int bi = 0; bi < 4; ++bi)
          reinterpret_cast<float4*>(Ssm)[(ksi * 256 + (bg + 4 * bi) * 16 + jg * 4) / 4] =
              make_float4(acc[bi][0], acc[bi][1], acc[bi][2], acc[bi][3]);
        __syncthreads();
      }
      if (valid) {
        float m = 0.f;
        if (do_mm) {
#pragma unroll
          for (int s = 0; s < KSPLIT; ++s) m += Ssm[s * 256 + ob * 16 + oj];
        }
        float v = xv + bj + m;
        float sn;
        switch (p.mode) {
          case 0: sn = tanhf(v); break;
          case 2: sn = v * (1.f - hv * hv); break;
          default: sn = v; break;
        }
        OUT[((size_t)b * T + t) * D + j] = from_f<TO>(sn);
        snext[(size_t)b * KP + j] = sn;
        if (i == T - 1 && p.sfinal != nullptr) p.sfinal[(size_t)b * D + j] = sn;
      }
      __syncthreads();                                  // Ssm is reused by the next tile
    }
    // grid-wide barrier: the new state is visible to every block before the next step
    if (i + 1 < T) {
      if (tid == 0) {
        __threadfence();
        atomicAdd(p.counter, 1u);
        const unsigned target = (unsigned)(i + 1) * gridDim.x;
        while (ld_acquire_u32(p.counter) < target) {
        }
        __threadfence();
      }
      __syncthreads();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// bf16 variant on the tensor cores (mma.sync m16n8k16, fp32 accumulation). The block's weight
// slice lives in *registers* as bf16 B fragments for the whole sequence; the state is exchanged
// through L2 in bf16 (half the bytes of the fp32 kernel) and read straight into A fragments
// (no shared-memory staging). Warp w handles k-steps w, w+8, ...; partial 16x16 tiles of the
// 8 warps are summed through shared memory. The unit's own new state is computed in fp32
// (h_T is exact fp32); only the copy fed to the next matmul is rounded to bf16.
// Within a 16-wide k-step, fragment columns (2t, 2t+1, 2t+8, 2t+9) hold the actual k indices
// 4t..4t+3 for both A and B, so each lane reads 8 contiguous bytes per row.
#define MAXR 17        // k-steps per warp: KP <= 16 * 8 * MAXR = 2176

__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The B fragment (bf16 pairs) of M's row j at k-step ks for lane quad tq: M[j][16 ks + 4 tq .. + 3],
// zero beyond D and KS.
__device__ __forceinline__ uint2 w_fragment(const ElmanParams& p, int ks, int j, int tq, int KS) {
  float w[4];
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int k = ks * 16 + 4 * tq + q;
    w[q] = (ks < KS && j < p.D && k < p.D) ? p.M[(size_t)j * p.D + k] : 0.f;
  }
  return make_uint2(pack_bf16(w[0], w[1]), pack_bf16(w[2], w[3]));
}

// The block's 16 units j0 .. j0+15 as register B fragments: k-steps warp, warp + nw, ...
template <int R>
__device__ __forceinline__ void load_w_registers(uint32_t (&wr)[R][2][2], const ElmanParams& p, int warp, int nw,
                                                 int j0, int g, int tq, int KS) {
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const uint2 f = w_fragment(p, warp + nw * r, j0 + nt * 8 + g, tq, KS);
      wr[r][nt][0] = f.x;
      wr[r][nt][1] = f.y;
    }
}

// Unit j's step inputs for row b: x (+ c0 at the first step) and, backward tanh, h.
__device__ __forceinline__ void load_step_inputs(const ElmanParams& p, int b, int t, int i, int j, float& xv,
                                                 float& hv) {
  xv = 0.f;
  hv = 0.f;
  if (b < p.B && j < p.D) {
    const size_t off = ((size_t)b * p.T + t) * p.D + j;
    xv = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p.X)[off]);
    if (p.mode == 2) hv = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p.aux)[off]);
    if (i == 0 && p.c0 != nullptr) xv += p.c0[(size_t)b * p.D + j];
  }
}

// The step's epilogue for row b, unit j: v = x + bias + (state @ M^T) -> the new state, written to
// the output, the next step's bf16 state and (last step) the fp32 final state.
template <typename TO>
__device__ __forceinline__ void epilogue(const ElmanParams& p, __nv_bfloat16* snext, int b, int t, int i, int j,
                                         float v, float hv) {
  float sn;
  switch (p.mode) {
    case 0: sn = tanhf(v); break;
    case 2: sn = v * (1.f - hv * hv); break;
    default: sn = v; break;
  }
  reinterpret_cast<TO*>(p.out)[((size_t)b * p.T + t) * p.D + j] = from_f<TO>(sn);
  snext[(size_t)b * p.KP + j] = __float2bfloat16(sn);
  if (i == p.T - 1 && p.sfinal != nullptr) p.sfinal[(size_t)b * p.D + j] = sn;
}

// PROBE (timing probes for benchmarks/kernels.py --probe; the results are wrong): bit 1 skips the grid
// barrier, bit 2 the state loads, bit 4 the mma's; the production build is PROBE = 0.
// (Measured on an H200 and dropped: a "pipelined" build that loaded the next step's x and h before
// the barrier and split the mma chain in two, 1.03-1.09x slower at every B16 width,
// kernels-candidates-h200-2026-12-03 in benchmarks/results; its code is in git history, 4c8d545.)
template <typename TO, int PROBE = 0>
__global__ void __launch_bounds__(NTH, 1) elman_mma_kernel(ElmanParams p) {
  __shared__ float red[8][16 * 16];
  const int KP = p.KP, D = p.D, B = p.B, T = p.T, KS = KP / 16;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
  const int j0 = blockIdx.x * JP;
  uint32_t wr[MAXR][2][2];
  load_w_registers<MAXR>(wr, p, warp, 8, j0, g, tq, KS);
  __nv_bfloat16* sb = reinterpret_cast<__nv_bfloat16*>(p.sbuf);
  const int ob = tid >> 4, oj = tid & 15, j = j0 + oj;
  const float bj = (p.bias != nullptr && j < D) ? p.bias[j] : 0.f;
  const int ntiles = (B + BT - 1) / BT;

  for (int i = 0; i < T; ++i) {
    const int t = p.reverse ? T - 1 - i : i;
    const __nv_bfloat16* sprev = sb + (size_t)(i & 1) * B * KP;
    __nv_bfloat16* snext = sb + (size_t)((i + 1) & 1) * B * KP;
    const bool do_mm = (i > 0) || p.has_s0;
    for (int tile = 0; tile < ntiles; ++tile) {
      const int b0 = tile * BT, b = b0 + ob;
      const bool valid = (b < B) && (j < D);
      float xv, hv;
      load_step_inputs(p, b, t, i, j, xv, hv);
      if (do_mm) {
        uint2 lo[MAXR], hi[MAXR];
        const bool r0 = b0 + g < B, r1 = b0 + g + 8 < B;
        const __nv_bfloat16* p0 = sprev + (size_t)(b0 + g) * KP + 4 * tq;
        const __nv_bfloat16* p1 = sprev + (size_t)(b0 + g + 8) * KP + 4 * tq;
#pragma unroll
        for (int r = 0; r < MAXR; ++r) {
          const int ks = warp + 8 * r;
          lo[r] = make_uint2(0u, 0u);
          hi[r] = make_uint2(0u, 0u);
          if (ks < KS && !(PROBE & 2)) {
            if (r0) lo[r] = __ldcg(reinterpret_cast<const uint2*>(p0 + ks * 16));
            if (r1) hi[r] = __ldcg(reinterpret_cast<const uint2*>(p1 + ks * 16));
          }
        }
        float c[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int q = 0; q < 4; ++q) c[nt][q] = 0.f;
#pragma unroll
        for (int r = 0; r < MAXR; ++r) {
          if (warp + 8 * r < KS && !(PROBE & 4)) {
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
              mma_bf16(c[nt], lo[r].x, hi[r].x, lo[r].y, hi[r].y, wr[r][nt][0], wr[r][nt][1]);
          }
        }
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          red[warp][g * 16 + nt * 8 + 2 * tq] = c[nt][0];
          red[warp][g * 16 + nt * 8 + 2 * tq + 1] = c[nt][1];
          red[warp][(g + 8) * 16 + nt * 8 + 2 * tq] = c[nt][2];
          red[warp][(g + 8) * 16 + nt * 8 + 2 * tq + 1] = c[nt][3];
        }
        __syncthreads();
      }
      if (valid) {
        float m = 0.f;
        if (do_mm) {
#pragma unroll
          for (int w = 0; w < 8; ++w) m += red[w][ob * 16 + oj];
        }
        epilogue<TO>(p, snext, b, t, i, j, xv + bj + m, hv);
      }
      __syncthreads();
    }
    if (!(PROBE & 1)) step_done(p, i, tid);
  }
}


// ---------------------------------------------------------------------------------------------
// Multi-tile variant of elman_mma_kernel for B > 16: the same 16 units per block and W slice in
// registers, but up to MT = 4 batch tiles (64 rows) go through one pass over the k-steps: each B
// fragment of W is used for MT mma's, the MT tiles' state loads are in flight together, and one
// reduction and one epilogue (MT outputs per thread) serve them all, instead of MT serial
// load -> mma -> reduce -> epilogue chains per step. Rows beyond 64 loop over groups of 64.
#define MT 4           // batch tiles per pass
#define MG 2           // k-steps of state loaded per group (MT x MG x 4 registers)

template <typename TO>
__global__ void __launch_bounds__(NTH, 1) elman_mma_multi_kernel(ElmanParams p) {
  __shared__ float red[8][MT * 256];
  const int KP = p.KP, D = p.D, B = p.B, T = p.T, KS = KP / 16;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
  const int j0 = blockIdx.x * JP;
  uint32_t wr[MAXR][2][2];
  load_w_registers<MAXR>(wr, p, warp, 8, j0, g, tq, KS);
  __nv_bfloat16* sb = reinterpret_cast<__nv_bfloat16*>(p.sbuf);
  const int ob = tid >> 4, oj = tid & 15, j = j0 + oj;
  const float bj = (p.bias != nullptr && j < D) ? p.bias[j] : 0.f;
  const int ngroups = (B + MT * BT - 1) / (MT * BT);

  for (int i = 0; i < T; ++i) {
    const int t = p.reverse ? T - 1 - i : i;
    const __nv_bfloat16* sprev = sb + (size_t)(i & 1) * B * KP;
    __nv_bfloat16* snext = sb + (size_t)((i + 1) & 1) * B * KP;
    const bool do_mm = (i > 0) || p.has_s0;
    for (int grp = 0; grp < ngroups; ++grp) {
      const int b0 = grp * MT * BT;
      float xv[MT], hv[MT];
#pragma unroll
      for (int u = 0; u < MT; ++u) load_step_inputs(p, b0 + u * BT + ob, t, i, j, xv[u], hv[u]);
      if (do_mm) {
        float c[MT][2][4];
#pragma unroll
        for (int u = 0; u < MT; ++u)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int q = 0; q < 4; ++q) c[u][nt][q] = 0.f;
#pragma unroll
        for (int rg = 0; rg < MAXR; rg += MG) {
          uint2 lo[MT][MG], hi[MT][MG];
#pragma unroll
          for (int u = 0; u < MT; ++u) {
            const int rb = b0 + u * BT + g;
            const bool r0 = rb < B, r1 = rb + 8 < B;
            const __nv_bfloat16* p0 = sprev + (size_t)rb * KP + 4 * tq;
            const __nv_bfloat16* p1 = sprev + (size_t)(rb + 8) * KP + 4 * tq;
#pragma unroll
            for (int v = 0; v < MG; ++v) {
              const int r = rg + v, ks = warp + 8 * r;
              lo[u][v] = make_uint2(0u, 0u);
              hi[u][v] = make_uint2(0u, 0u);
              if (r < MAXR && ks < KS) {
                if (r0) lo[u][v] = __ldcg(reinterpret_cast<const uint2*>(p0 + ks * 16));
                if (r1) hi[u][v] = __ldcg(reinterpret_cast<const uint2*>(p1 + ks * 16));
              }
            }
          }
#pragma unroll
          for (int v = 0; v < MG; ++v) {
            const int r = rg + v;
            if (r < MAXR && warp + 8 * r < KS) {
#pragma unroll
              for (int u = 0; u < MT; ++u)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
                  mma_bf16(c[u][nt], lo[u][v].x, hi[u][v].x, lo[u][v].y, hi[u][v].y, wr[r][nt][0], wr[r][nt][1]);
            }
          }
        }
#pragma unroll
        for (int u = 0; u < MT; ++u)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt) {
            float* rw = red[warp] + u * 256;
            rw[g * 16 + nt * 8 + 2 * tq] = c[u][nt][0];
            rw[g * 16 + nt * 8 + 2 * tq + 1] = c[u][nt][1];
            rw[(g + 8) * 16 + nt * 8 + 2 * tq] = c[u][nt][2];
            rw[(g + 8) * 16 + nt * 8 + 2 * tq + 1] = c[u][nt][3];
          }
        __syncthreads();
      }
#pragma unroll
      for (int u = 0; u < MT; ++u) {
        const int b = b0 + u * BT + ob;
        if (b < B && j < D) {
          float m = 0.f;
          if (do_mm) {
#pragma unroll
            for (int w = 0; w < 8; ++w) m += red[w][u * 256 + ob * 16 + oj];
          }
          epilogue<TO>(p, snext, b, t, i, j, xv[u] + bj + m, hv[u]);
        }
      }
      __syncthreads();
    }
    step_done(p, i, tid);
  }
}

// ---------------------------------------------------------------------------------------------
// Wide bf16 variant (d_inner up to 4096, and at most 32 x SMs). Block `blk` owns 32 output units
// j0 = 32 blk .. j0 + 31 (four n8 tiles). The block's slice of M, 32 x KP bf16, is split between
// the register file (tiles 0-1: units j0 .. j0+15, as in elman_mma_kernel) and shared memory
// (tiles 2-3: units j0+16 .. j0+31), each stored as B fragments in the order the lanes read them.
// 16 warps; warp w handles k-steps w, w+16, ... (at most WMAXR = 16 each, KP <= 4096)
// and reads each A fragment of the state once for all four tiles. The state is loaded in groups of
// WG k-steps (registers stay under 128 per thread at 512 threads). The 16 warps' partial 16 x 32
// tiles are summed through shared memory (row stride 40 floats: conflict-free float2 stores).
#define WNW 16         // warps per block
#define WTH (WNW * 32) // threads per block
#define WJP 32         // output units per block
#define WG 4           // k-steps of state loaded per group
#define WRS 40         // row stride of the reduction tile (floats)
#define WMAXR 16       // k-steps per warp: KP <= 16 * 16 * 16 = 4096

static int wide_smem_bytes(int KP) {
  return (KP / 16) * 2 * 32 * 8 + WNW * 16 * WRS * 4;
}

template <typename TO>
__global__ void __launch_bounds__(WTH, 1) elman_mma_wide_kernel(ElmanParams p) {
  extern __shared__ uint2 wsm[];                       // [KS][2][32] B fragments of tiles 2-3
  const int KP = p.KP, D = p.D, B = p.B, T = p.T, KS = KP / 16;
  float* red = reinterpret_cast<float*>(wsm + (size_t)KS * 2 * 32);   // [WNW][16][WRS]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, tq = lane & 3;
  const int j0 = blockIdx.x * WJP;
  uint32_t wr[WMAXR][2][2];
  load_w_registers<WMAXR>(wr, p, warp, WNW, j0, g, tq, KS);     // units j0 .. j0+15
  for (int r = 0; r < WMAXR; ++r) {                              // units j0+16 .. j0+31
    const int ks = warp + WNW * r;
    if (ks < KS)
      for (int nt = 0; nt < 2; ++nt) wsm[((size_t)ks * 2 + nt) * 32 + lane] = w_fragment(p, ks, j0 + 16 + nt * 8 + g, tq, KS);
  }
  __syncthreads();
  __nv_bfloat16* sb = reinterpret_cast<__nv_bfloat16*>(p.sbuf);
  const int ob = tid >> 5, oj = tid & 31, j = j0 + oj;          // epilogue: one output per thread
  const float bj = (p.bias != nullptr && j < D) ? p.bias[j] : 0.f;
  const int ntiles = (B + BT - 1) / BT;

  for (int i = 0; i < T; ++i) {
    const int t = p.reverse ? T - 1 - i : i;
    const __nv_bfloat16* sprev = sb + (size_t)(i & 1) * B * KP;
    __nv_bfloat16* snext = sb + (size_t)((i + 1) & 1) * B * KP;
    const bool do_mm = (i > 0) || p.has_s0;
    for (int tile = 0; tile < ntiles; ++tile) {
      const int b0 = tile * BT, b = b0 + ob;
      const bool valid = (b < B) && (j < D);
      float xv, hv;
      load_step_inputs(p, b, t, i, j, xv, hv);
      if (do_mm) {
        const bool r0 = b0 + g < B, r1 = b0 + g + 8 < B;
        const __nv_bfloat16* p0 = sprev + (size_t)(b0 + g) * KP + 4 * tq;
        const __nv_bfloat16* p1 = sprev + (size_t)(b0 + g + 8) * KP + 4 * tq;
        float c[4][4];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int q = 0; q < 4; ++q) c[nt][q] = 0.f;
#pragma unroll
        for (int rg = 0; rg < WMAXR; rg += WG) {
          uint2 lo[WG], hi[WG];
#pragma unroll
          for (int u = 0; u < WG; ++u) {
            const int r = rg + u, ks = warp + WNW * r;
            lo[u] = make_uint2(0u, 0u);
            hi[u] = make_uint2(0u, 0u);
            if (r < WMAXR && ks < KS) {
              if (r0) lo[u] = __ldcg(reinterpret_cast<const uint2*>(p0 + ks * 16));
              if (r1) hi[u] = __ldcg(reinterpret_cast<const uint2*>(p1 + ks * 16));
            }
          }
#pragma unroll
          for (int u = 0; u < WG; ++u) {
            const int r = rg + u, ks = warp + WNW * r;
            if (r < WMAXR && ks < KS) {
              const uint2 w2 = wsm[((size_t)ks * 2) * 32 + lane];
              const uint2 w3 = wsm[((size_t)ks * 2 + 1) * 32 + lane];
              mma_bf16(c[0], lo[u].x, hi[u].x, lo[u].y, hi[u].y, wr[r][0][0], wr[r][0][1]);
              mma_bf16(c[1], lo[u].x, hi[u].x, lo[u].y, hi[u].y, wr[r][1][0], wr[r][1][1]);
              mma_bf16(c[2], lo[u].x, hi[u].x, lo[u].y, hi[u].y, w2.x, w2.y);
              mma_bf16(c[3], lo[u].x, hi[u].x, lo[u].y, hi[u].y, w3.x, w3.y);
            }
          }
        }
        float* rw = red + (size_t)warp * 16 * WRS;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          *reinterpret_cast<float2*>(rw + g * WRS + nt * 8 + 2 * tq) = make_float2(c[nt][0], c[nt][1]);
          *reinterpret_cast<float2*>(rw + (g + 8) * WRS + nt * 8 + 2 * tq) = make_float2(c[nt][2], c[nt][3]);
        }
        __syncthreads();
      }
      if (valid) {
        float m = 0.f;
        if (do_mm) {
#pragma unroll
          for (int w = 0; w < WNW; ++w) m += red[((size_t)w * 16 + ob) * WRS + oj];
        }
        epilogue<TO>(p, snext, b, t, i, j, xv + bj + m, hv);
      }
      __syncthreads();
    }
    step_done(p, i, tid);
  }
}

static int smem_bytes(int KP, int KC) {
  int s_floats = BT * (KC + 8);
  if (s_floats < KSPLIT * 256) s_floats = KSPLIT * 256;
  return (KP * JP + s_floats) * 4;
}

extern "C" {

const char* elk_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

// Largest k-chunk that fits the shared memory; 0 when even the weight slice does not fit.
int elman_plan(int device, int D, int* KP_out, int* KC_out, int* smem_out, int* blocks_out, int* sms_out) {
  int maxsm = 0, sms = 0;
  cudaError_t e = cudaDeviceGetAttribute(&maxsm, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return (int)e;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return (int)e;
  const int KP = ((D + 63) / 64) * 64;
  int KC = KP;
  while (KC >= 64 && smem_bytes(KP, KC) > maxsm) KC -= 64;
  *KP_out = KP;
  *KC_out = KC >= 64 ? KC : 0;
  *smem_out = KC >= 64 ? smem_bytes(KP, KC) : 0;
  *blocks_out = (D + JP - 1) / JP;
  *sms_out = sms;
  return 0;
}

// dtype codes: 0 = float32, 1 = bfloat16
int elman_persistent_launch(int device, void* stream, int xdtype, int odtype, const void* X, const void* aux,
                            const float* bias, const float* M, const float* c0, void* out, float* sfinal,
                            float* sbuf, unsigned* counter, int B, int T, int D, int KP, int KC,
                            int reverse, int mode, int has_s0) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return (int)e;
  ElmanParams p;
  p.X = X; p.aux = aux; p.bias = bias; p.M = M; p.c0 = c0; p.out = out; p.sfinal = sfinal;
  p.sbuf = sbuf; p.counter = counter; p.B = B; p.T = T; p.D = D; p.KP = KP; p.KC = KC;
  p.reverse = reverse; p.mode = mode; p.has_s0 = has_s0; p.sync = 0;
  const void* fn = nullptr;
  if (xdtype == 0 && odtype == 0) fn = (const void*)elman_persistent_kernel<float, float>;
  else if (xdtype == 1 && odtype == 1) fn = (const void*)elman_persistent_kernel<__nv_bfloat16, __nv_bfloat16>;
  else if (xdtype == 1 && odtype == 0) fn = (const void*)elman_persistent_kernel<__nv_bfloat16, float>;
  else return (int)cudaErrorInvalidValue;
  const int smem = smem_bytes(KP, KC);
  e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return (int)e;
  void* args[] = {&p};
  dim3 grid((D + JP - 1) / JP), block(NTH);
  e = cudaLaunchCooperativeKernel(fn, grid, block, args, (size_t)smem, (cudaStream_t)stream);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaGetLastError();
}

// bf16 inputs on the tensor cores; sbuf is bf16 [2, B, KP]. odtype: 1 = bf16 (forward), 0 = fp32.
// multi: 0 = elman_mma_kernel, 1 = elman_mma_multi_kernel (up to 4 batch tiles per pass; for B > 16).
// probe: 0, or 1, 2, 6, 7 (PROBE; wrong results).
int elman_mma_launch(int device, void* stream, int odtype, const void* X, const void* aux, const float* bias,
                     const float* M, const float* c0, void* out, float* sfinal, void* sbuf, unsigned* counter,
                     int B, int T, int D, int KP, int reverse, int mode, int has_s0, int sync, int multi,
                     int probe) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return (int)e;
  if (KP / 16 > 8 * MAXR) return (int)cudaErrorInvalidValue;
  ElmanParams p;
  p.X = X; p.aux = aux; p.bias = bias; p.M = M; p.c0 = c0; p.out = out; p.sfinal = sfinal;
  p.sbuf = reinterpret_cast<float*>(sbuf); p.counter = counter; p.B = B; p.T = T; p.D = D; p.KP = KP;
  p.KC = KP; p.reverse = reverse; p.mode = mode; p.has_s0 = has_s0; p.sync = sync;
  const void* fn;
  if (multi == 1)
    fn = odtype == 1 ? (const void*)elman_mma_multi_kernel<__nv_bfloat16> : (const void*)elman_mma_multi_kernel<float>;
  else
    fn = odtype == 1 ? (const void*)elman_mma_kernel<__nv_bfloat16> : (const void*)elman_mma_kernel<float>;
  if (probe != 0 && multi == 0) {      // timing probes (wrong results): see PROBE
    const bool bf = odtype == 1;
    switch (probe) {
      case 1: fn = bf ? (const void*)elman_mma_kernel<__nv_bfloat16, 1> : (const void*)elman_mma_kernel<float, 1>; break;
      case 2: fn = bf ? (const void*)elman_mma_kernel<__nv_bfloat16, 2> : (const void*)elman_mma_kernel<float, 2>; break;
      case 6: fn = bf ? (const void*)elman_mma_kernel<__nv_bfloat16, 6> : (const void*)elman_mma_kernel<float, 6>; break;
      case 7: fn = bf ? (const void*)elman_mma_kernel<__nv_bfloat16, 7> : (const void*)elman_mma_kernel<float, 7>; break;
      default: return (int)cudaErrorInvalidValue;
    }
  }
  void* args[] = {&p};
  dim3 grid((D + JP - 1) / JP), block(NTH);
  e = cudaLaunchCooperativeKernel(fn, grid, block, args, 0, (cudaStream_t)stream);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaGetLastError();
}

// The wide variant: 32 units per block, (D + 31) / 32 blocks, 512 threads, dynamic shared memory
// wide_smem_bytes(KP). Returns cudaErrorInvalidValue when KP > 4096 or the smem does not fit.
int elman_mma_wide_smem(int KP) { return wide_smem_bytes(KP); }

int elman_mma_wide_launch(int device, void* stream, int odtype, const void* X, const void* aux, const float* bias,
                          const float* M, const float* c0, void* out, float* sfinal, void* sbuf, unsigned* counter,
                          int B, int T, int D, int KP, int reverse, int mode, int has_s0, int sync) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return (int)e;
  if (KP % 16 != 0 || KP / 16 > WNW * WMAXR) return (int)cudaErrorInvalidValue;
  ElmanParams p;
  p.X = X; p.aux = aux; p.bias = bias; p.M = M; p.c0 = c0; p.out = out; p.sfinal = sfinal;
  p.sbuf = reinterpret_cast<float*>(sbuf); p.counter = counter; p.B = B; p.T = T; p.D = D; p.KP = KP;
  p.KC = KP; p.reverse = reverse; p.mode = mode; p.has_s0 = has_s0; p.sync = sync;
  const void* fn = odtype == 1 ? (const void*)elman_mma_wide_kernel<__nv_bfloat16>
                               : (const void*)elman_mma_wide_kernel<float>;
  const int smem = wide_smem_bytes(KP);
  e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return (int)e;
  void* args[] = {&p};
  dim3 grid((D + WJP - 1) / WJP), block(WTH);
  e = cudaLaunchCooperativeKernel(fn, grid, block, args, (size_t)smem, (cudaStream_t)stream);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaGetLastError();
}

}  // extern "C"
