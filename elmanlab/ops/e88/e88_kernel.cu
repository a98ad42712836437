// E88 matrix-state scan: forward with state checkpoints, backward by chunked recomputation.
//
// One block per (batch, head). Thread (i, cs) holds row i of the state S [m, n], columns
// cs*NPT .. cs*NPT+NPT-1 (four threads per row, NPT = n / 4), in registers for the whole
// sequence. Per step:  r = S k;  S = act(a S + (v - r) k^T);  o = S q;  y = o * gate(g).
// Row reductions (over n) are two warp shuffles. The forward stores S every C steps
// (memory B H (T / C) m n); the backward walks the chunks in reverse, recomputes the chunk's
// states from its checkpoint into shared memory (each thread keeps only its own elements) and
// runs the reverse step. Column reductions (dq, dk over m) go through warp shuffles and one
// shared-memory pass per chunk.
//
// Two variants of it: the kernels right below (v2, entry points e88_plan / e88_launch) and v3
// further down (inputs staged in shared memory; e88v3_plan / e88v3_launch; the default). v2 stays as
// the fallback for the shapes v3's backward does not take (its registers allow fewer threads at
// n = 8 and n = 24: see elmanlab/ops/e88/fused.py).
//
// Compiled by elmanlab/ops/_build.py with nvcc into a shared library called via ctypes.
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

struct E88Params {
  const void *q, *k, *v, *g;   // q, k [B,T,H,N]; v, g [B,T,H,M]  (TI)
  const float* a;              // [B,T,H]
  const float* S0;             // [B,H,M,N] or null
  void* y;                     // [B,T,H,M] (TI)
  float* ST;                   // [B,H,M,N]
  float* ckpt;                 // [B,H,NC,M,N]: state before step c*C
  const void* dy;              // [B,T,H,M] (TI)
  const float* dST;            // [B,H,M,N] or null
  float *dq, *dk, *dv, *da, *dg, *dS0;
  int B, T, H, N, M, C, NC, tanh_on, gate;   // gate: 0 none, 1 silu, 2 sigmoid
};

__device__ __forceinline__ float row_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

template <int NPT, typename TI>
struct StepIn {
  float k[NPT], q[NPT], v, a, g;
  __device__ __forceinline__ void load(const E88Params& p, int b, int h, int t, int i, int cs, bool rok, bool need_q) {
    const size_t tk = ((size_t)b * p.T + t) * p.H + h;
    const TI* K = reinterpret_cast<const TI*>(p.k);
    const TI* Q = reinterpret_cast<const TI*>(p.q);
    const TI* V = reinterpret_cast<const TI*>(p.v);
    const TI* G = reinterpret_cast<const TI*>(p.g);
#pragma unroll
    for (int jj = 0; jj < NPT; ++jj) k[jj] = to_f<TI>(K[tk * p.N + cs * NPT + jj]);
    if (need_q) {
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) q[jj] = to_f<TI>(Q[tk * p.N + cs * NPT + jj]);
    }
    v = rok ? to_f<TI>(V[tk * p.M + i]) : 0.f;
    a = p.a[tk];
    g = (p.gate && rok && need_q) ? to_f<TI>(G[tk * p.M + i]) : 0.f;
  }
};

// tanh: the accurate libm version for fp32 inputs; for bf16 inputs the hardware tanh.approx
// (max relative error ~2^-11, far below bf16's 2^-8) -- the state itself stays fp32.
template <typename TI> __device__ __forceinline__ float act_tanh(float x);
template <> __device__ __forceinline__ float act_tanh<float>(float x) { return tanhf(x); }
template <> __device__ __forceinline__ float act_tanh<__nv_bfloat16>(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <int NPT, typename TI>
__device__ __forceinline__ void state_step(float (&S)[NPT], const float (&k)[NPT], float v, float a, int tanh_on) {
  float r = 0.f;
#pragma unroll
  for (int jj = 0; jj < NPT; ++jj) r = fmaf(S[jj], k[jj], r);
  r = row_sum(r);
  const float d = v - r;
#pragma unroll
  for (int jj = 0; jj < NPT; ++jj) {
    const float pv = fmaf(a, S[jj], d * k[jj]);
    S[jj] = tanh_on ? act_tanh<TI>(pv) : pv;
  }
}

template <int NPT, typename TI>
__global__ void e88_fwd_kernel(E88Params p) {
  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, i = tid >> 2, cs = tid & 3;
  const bool rok = i < p.M;
  const int N = p.N, M = p.M, T = p.T, C = p.C;
  float S[NPT];
  const size_t sb = ((size_t)bh * M + i) * N + cs * NPT;
#pragma unroll
  for (int jj = 0; jj < NPT; ++jj) S[jj] = (rok && p.S0 != nullptr) ? p.S0[sb + jj] : 0.f;
  TI* Y = reinterpret_cast<TI*>(p.y);
  StepIn<NPT, TI> cur, nxt;
  if (T > 0) cur.load(p, b, h, 0, i, cs, rok, true);
  for (int t = 0; t < T; ++t) {
    if (t + 1 < T) nxt.load(p, b, h, t + 1, i, cs, rok, true);   // prefetch the next step
    if (t % C == 0 && rok) {
      float* ck = p.ckpt + (((size_t)bh * p.NC + t / C) * M + i) * N + cs * NPT;
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) ck[jj] = S[jj];
    }
    state_step<NPT, TI>(S, cur.k, cur.v, cur.a, p.tanh_on);
    float o = 0.f;
#pragma unroll
    for (int jj = 0; jj < NPT; ++jj) o = fmaf(S[jj], cur.q[jj], o);
    o = row_sum(o);
    if (cs == 0 && rok) {
      float yv = o;
      if (p.gate) {
        const float sg = sigmoidf_(cur.g);
        yv *= (p.gate == 1) ? cur.g * sg : sg;
      }
      Y[(((size_t)b * T + t) * p.H + h) * M + i] = from_f<TI>(yv);
    }
    cur = nxt;
  }
  if (rok) {
#pragma unroll
    for (int jj = 0; jj < NPT; ++jj) p.ST[sb + jj] = S[jj];
  }
}

template <int NPT, typename TI>
__global__ void e88_bwd_kernel(E88Params p) {
  extern __shared__ float sm[];
  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, i = tid >> 2, cs = tid & 3;
  const int nth = blockDim.x, nwarps = nth >> 5;
  const bool rok = i < p.M;
  const int N = p.N, M = p.M, T = p.T, C = p.C, PW = 2 * N + 1;
  float* Sb = sm;                                        // (C+1) x NPT x nth, own elements only
  float* part = sm + (size_t)(C + 1) * NPT * nth;        // C x nwarps x (2N+1)
  const TI* DY = reinterpret_cast<const TI*>(p.dy);
  const size_t sb = ((size_t)bh * M + i) * N + cs * NPT;
  float dS[NPT];
#pragma unroll
  for (int jj = 0; jj < NPT; ++jj) dS[jj] = (rok && p.dST != nullptr) ? p.dST[sb + jj] : 0.f;

  for (int ch = p.NC - 1; ch >= 0; --ch) {
    const int t0 = ch * C, L = min(C, T - t0);
    {  // recompute the chunk's states from its checkpoint
      float S[NPT];
      const float* ck = p.ckpt + (((size_t)bh * p.NC + ch) * M + i) * N + cs * NPT;
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) {
        S[jj] = rok ? ck[jj] : 0.f;
        Sb[jj * nth + tid] = S[jj];
      }
      StepIn<NPT, TI> in;
      for (int l = 0; l < L; ++l) {
        in.load(p, b, h, t0 + l, i, cs, rok, false);
        state_step<NPT, TI>(S, in.k, in.v, in.a, p.tanh_on);
#pragma unroll
        for (int jj = 0; jj < NPT; ++jj) Sb[((size_t)(l + 1) * NPT + jj) * nth + tid] = S[jj];
      }
    }
    StepIn<NPT, TI> cur, nxt;
    cur.load(p, b, h, t0 + L - 1, i, cs, rok, true);
    for (int l = L - 1; l >= 0; --l) {
      const int t = t0 + l;
      const size_t tk = ((size_t)b * T + t) * p.H + h;
      const float dyi = rok ? to_f<TI>(DY[tk * M + i]) : 0.f;
      if (l > 0) nxt.load(p, b, h, t - 1, i, cs, rok, true);
      float Sc[NPT], Sp[NPT];
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) {
        Sc[jj] = Sb[((size_t)(l + 1) * NPT + jj) * nth + tid];
        Sp[jj] = Sb[((size_t)l * NPT + jj) * nth + tid];
      }
      float doi = dyi, dgi = 0.f;
      if (p.gate) {
        float o = 0.f;
#pragma unroll
        for (int jj = 0; jj < NPT; ++jj) o = fmaf(Sc[jj], cur.q[jj], o);
        o = row_sum(o);
        const float gi = cur.g, sg = sigmoidf_(gi);
        const float gv = (p.gate == 1) ? gi * sg : sg;
        const float gp = (p.gate == 1) ? sg * (1.f + gi * (1.f - sg)) : sg * (1.f - sg);
        doi = dyi * gv;
        dgi = dyi * o * gp;
      }
      float dqp[NPT], dkp[NPT], dP[NPT];
      float dap = 0.f, rr = 0.f, ddp = 0.f;
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) {
        dS[jj] = fmaf(doi, cur.q[jj], dS[jj]);
        dqp[jj] = Sc[jj] * doi;
        dP[jj] = p.tanh_on ? dS[jj] * (1.f - Sc[jj] * Sc[jj]) : dS[jj];
        dap = fmaf(dP[jj], Sp[jj], dap);
        rr = fmaf(Sp[jj], cur.k[jj], rr);
        ddp = fmaf(dP[jj], cur.k[jj], ddp);
      }
      rr = row_sum(rr);
      ddp = row_sum(ddp);
      const float delta = cur.v - rr;
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) {
        dkp[jj] = dP[jj] * delta - Sp[jj] * ddp;
        dS[jj] = cur.a * dP[jj] - ddp * cur.k[jj];
      }
      if (cs == 0 && rok) {
        p.dv[tk * M + i] = ddp;
        if (p.gate) p.dg[tk * M + i] = dgi;
      }
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) dap += __shfl_xor_sync(0xffffffffu, dap, off);
      float* pw = part + ((size_t)l * nwarps + warp) * PW;
      if constexpr ((2 * NPT) % 8 == 0) {
        // transposed reduction over the warp's 8 rows: each level sends half of what is left,
        // 7/8 x 2NPT shuffles instead of 3 x 2NPT; lane ends with 2NPT/8 fully reduced values
        constexpr int V = 2 * NPT;
        float vv[V];
#pragma unroll
        for (int jj = 0; jj < NPT; ++jj) { vv[jj] = dqp[jj]; vv[NPT + jj] = dkp[jj]; }
#pragma unroll
        for (int lev = 0; lev < 3; ++lev) {
          const int o = 4 << lev;
          const int half = V >> (lev + 1);
          const bool up = (lane & o) != 0;
#pragma unroll
          for (int x = 0; x < V / 2; ++x) {
            if (x < half) {
              const float send = up ? vv[x] : vv[x + half];
              const float keep = up ? vv[x + half] : vv[x];
              vv[x] = keep + __shfl_xor_sync(0xffffffffu, send, o);
            }
          }
        }
        const int base = ((lane & 4) ? V / 2 : 0) + ((lane & 8) ? V / 4 : 0) + ((lane & 16) ? V / 8 : 0);
#pragma unroll
        for (int x = 0; x < V / 8; ++x) {
          const int orig = base + x;
          pw[orig < NPT ? cs * NPT + orig : N + cs * NPT + (orig - NPT)] = vv[x];
        }
      } else {
#pragma unroll
        for (int jj = 0; jj < NPT; ++jj) {
#pragma unroll
          for (int off = 4; off < 32; off <<= 1) {
            dqp[jj] += __shfl_xor_sync(0xffffffffu, dqp[jj], off);
            dkp[jj] += __shfl_xor_sync(0xffffffffu, dkp[jj], off);
          }
        }
        if (lane < 4) {
#pragma unroll
          for (int jj = 0; jj < NPT; ++jj) {
            pw[cs * NPT + jj] = dqp[jj];
            pw[N + cs * NPT + jj] = dkp[jj];
          }
        }
      }
      if (lane == 0) pw[2 * N] = dap;
      if (l > 0) cur = nxt;
    }
    __syncthreads();
    for (int idx = tid; idx < L * PW; idx += nth) {
      const int l = idx / PW, c = idx % PW;
      float s = 0.f;
      for (int w = 0; w < nwarps; ++w) s += part[((size_t)l * nwarps + w) * PW + c];
      const size_t tk = ((size_t)b * T + t0 + l) * p.H + h;
      if (c < N) p.dq[tk * N + c] = s;
      else if (c < 2 * N) p.dk[tk * N + (c - N)] = s;
      else p.da[tk] = s;
    }
    __syncthreads();
  }
  if (rok) {
#pragma unroll
    for (int jj = 0; jj < NPT; ++jj) p.dS0[sb + jj] = dS[jj];
  }
}

static size_t bwd_smem(int npt, int nth, int N, int C) {
  return ((size_t)(C + 1) * npt * nth + (size_t)C * (nth / 32) * (2 * N + 1)) * 4;
}

#define NPT_SWITCH(npt, KERNEL, TI, OUT)                       \
  switch (npt) {                                               \
    case 2: OUT = (const void*)KERNEL<2, TI>; break;           \
    case 4: OUT = (const void*)KERNEL<4, TI>; break;           \
    case 6: OUT = (const void*)KERNEL<6, TI>; break;           \
    case 8: OUT = (const void*)KERNEL<8, TI>; break;           \
    case 10: OUT = (const void*)KERNEL<10, TI>; break;         \
    case 12: OUT = (const void*)KERNEL<12, TI>; break;         \
    case 14: OUT = (const void*)KERNEL<14, TI>; break;         \
    case 16: OUT = (const void*)KERNEL<16, TI>; break;         \
    default: OUT = nullptr;                                    \
  }

static const void* pick(int fwd, int dtype, int npt) {
  const void* fn = nullptr;
  if (fwd) {
    if (dtype == 0) { NPT_SWITCH(npt, e88_fwd_kernel, float, fn) }
    else { NPT_SWITCH(npt, e88_fwd_kernel, __nv_bfloat16, fn) }
  } else {
    if (dtype == 0) { NPT_SWITCH(npt, e88_bwd_kernel, float, fn) }
    else { NPT_SWITCH(npt, e88_bwd_kernel, __nv_bfloat16, fn) }
  }
  return fn;
}

extern "C" {

const char* elk_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

// Chooses the checkpoint interval C (largest of 16, 8, 4, 2, 1 whose backward shared memory
// stays within `budget` bytes, else the largest that fits the device) and checks the kernels'
// thread limits. Returns 0 and C = 0 when the shape is not supported.
int e88_plan(int device, int dtype, int N, int M, int budget, int* C_out, int* smem_out, int* nth_out) {
  *C_out = 0; *smem_out = 0;
  if (N % 8 != 0 || N < 8 || N > 64 || M < 1) return 0;
  const int npt = N / 4;
  const int nth = ((4 * M + 31) / 32) * 32;
  *nth_out = nth;
  int maxsm = 0;
  cudaError_t e = cudaDeviceGetAttribute(&maxsm, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return (int)e;
  for (int f = 1; f >= 0; --f) {
    cudaFuncAttributes attr;
    e = cudaFuncGetAttributes(&attr, pick(f, dtype, npt));
    if (e != cudaSuccess) return (int)e;
    if (attr.maxThreadsPerBlock < nth) return 0;
  }
  int C = 0;
  for (int c = 16; c >= 1; c >>= 1)
    if (bwd_smem(npt, nth, N, c) <= (size_t)budget) { C = c; break; }
  if (C == 0)
    for (int c = 16; c >= 1; c >>= 1)
      if (bwd_smem(npt, nth, N, c) <= (size_t)maxsm) { C = c; break; }
  if (C == 0) return 0;
  *C_out = C;
  *smem_out = (int)bwd_smem(npt, nth, N, C);
  return 0;
}

int e88_launch(int fwd, int device, void* stream, int dtype, const void* q, const void* k, const void* v,
               const void* g, const float* a, const float* S0, void* y, float* ST, float* ckpt,
               const void* dy, const float* dST, float* dq, float* dk, float* dv, float* da, float* dg,
               float* dS0, int B, int T, int H, int N, int M, int C, int NC, int tanh_on, int gate) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return (int)e;
  E88Params p;
  p.q = q; p.k = k; p.v = v; p.g = g; p.a = a; p.S0 = S0; p.y = y; p.ST = ST; p.ckpt = ckpt;
  p.dy = dy; p.dST = dST; p.dq = dq; p.dk = dk; p.dv = dv; p.da = da; p.dg = dg; p.dS0 = dS0;
  p.B = B; p.T = T; p.H = H; p.N = N; p.M = M; p.C = C; p.NC = NC; p.tanh_on = tanh_on; p.gate = gate;
  const int npt = N / 4;
  const int nth = ((4 * M + 31) / 32) * 32;
  const void* fn = pick(fwd, dtype, npt);
  if (fn == nullptr) return (int)cudaErrorInvalidValue;
  size_t smem = 0;
  if (!fwd) {
    smem = bwd_smem(npt, nth, N, C);
    e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) return (int)e;
  }
  void* args[] = {&p};
  e = cudaLaunchKernel(fn, dim3(B * H), dim3(nth), args, smem, (cudaStream_t)stream);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaGetLastError();
}

}  // extern "C"

// =====================================================================================
// v3: the same algorithm and state layout (thread (i, cs): row i, columns cs*NPT..+NPT), with
//  * inputs staged in shared memory a chunk at a time with cp.async, double-buffered: the loads
//    of chunk c+1 (forward) / c-1 (backward) are in flight while chunk c runs (v2 prefetched one
//    step ahead in registers in the forward and in the reverse step, and not at all in the
//    backward's recompute, so every step waited on global memory);
//  * the backward's recompute keeps delta = v - S_prev k per step (shared memory), so the reverse
//    step does not recompute r = S_prev k (NPT FMAs and two shuffles less per step);
//  * the reverse step reuses S_prev of step l as S_cur of step l-1 (registers), the chunk's last
//    state comes from the recompute's registers: C states in shared memory instead of C + 1,
//    read as float2 (half the shared-memory instructions);
//  * no per-thread input prefetch registers (v2's bwd used 158 registers at n = 48: 2 blocks/SM);
//  * the checkpoint interval C is chosen per shape and batch (e88v3_plan): fewest waves of
//    blocks over the GPU, then the largest C (less checkpoint traffic).
// =====================================================================================

__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int NG> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(NG) : "memory");
}

__host__ __device__ __forceinline__ size_t al16(size_t x) { return (x + 15) & ~(size_t)15; }

// One input slot: `rows` steps of k, q [rows][N], v, g, dy [rows][M] (input dtype), a [rows] fp32.
struct V3Slot {
  size_t k, q, v, g, dy, a, size;
};
__host__ __device__ __forceinline__ V3Slot v3_slot(int rows, int N, int M, int tisz) {
  V3Slot s;
  s.k = 0;
  s.q = al16((size_t)rows * N * tisz);
  s.v = s.q + al16((size_t)rows * N * tisz);
  s.g = s.v + al16((size_t)rows * M * tisz);
  s.dy = s.g + al16((size_t)rows * M * tisz);
  s.a = s.dy + al16((size_t)rows * M * tisz);
  s.size = s.a + al16((size_t)rows * 4);
  return s;
}

// Backward shared memory: states C x NPT x nth (fp32), per-warp partials C x nwarps x (2N+1),
// delta C x M, two input slots.
struct V3Bwd {
  size_t sb, part, dl, in0, in1, total;
  V3Slot slot;
};
__host__ __device__ __forceinline__ V3Bwd v3_bwd_layout(int npt, int nth, int N, int M, int C, int tisz) {
  V3Bwd L;
  L.slot = v3_slot(C, N, M, tisz);
  L.sb = 0;
  L.part = al16((size_t)C * npt * nth * 4);
  L.dl = L.part + al16((size_t)C * (nth / 32) * (2 * N + 1) * 4);
  L.in0 = L.dl + al16((size_t)C * M * 4);
  L.in1 = L.in0 + L.slot.size;
  L.total = L.in1 + L.slot.size;
  return L;
}

constexpr int V3_FWD_CHUNK = 16;    // forward: steps of input per staged chunk

// dst[l][e] = src[row0 + l*H][e] for l < len, e < E: 4-byte cp.async where rows and the pointer
// allow it (always for k, q: N % 8 == 0), else plain element copies (bf16 rows of odd length).
template <typename TI>
__device__ __forceinline__ void stage_rows(char* dst, const void* src, size_t row0, int H, int len, int E,
                                           int tid, int nth) {
  const TI* s = reinterpret_cast<const TI*>(src);
  const int rowbytes = E * (int)sizeof(TI);
  if ((rowbytes & 3) == 0 && (reinterpret_cast<uintptr_t>(src) & 3) == 0) {
    const int wpr = rowbytes >> 2;
    for (int idx = tid; idx < len * wpr; idx += nth) {
      const int l = idx / wpr, w = idx - l * wpr;
      cp_async4(dst + (size_t)l * rowbytes + 4 * w,
                reinterpret_cast<const char*>(s + (row0 + (size_t)l * H) * E) + 4 * w);
    }
  } else {
    TI* d = reinterpret_cast<TI*>(dst);
    for (int idx = tid; idx < len * E; idx += nth) {
      const int l = idx / E, e = idx - l * E;
      d[(size_t)l * E + e] = s[(row0 + (size_t)l * H) * E + e];
    }
  }
}

// Steps t0 .. t0+len-1 of (b, h) into a slot; dy only in the backward (fwd == false).
template <typename TI>
__device__ __forceinline__ void stage_chunk(const E88Params& p, char* slot, const V3Slot& L, int b, int h, int t0,
                                            int len, bool fwd, int tid, int nth) {
  const size_t row0 = ((size_t)b * p.T + t0) * p.H + h;
  stage_rows<TI>(slot + L.k, p.k, row0, p.H, len, p.N, tid, nth);
  stage_rows<TI>(slot + L.q, p.q, row0, p.H, len, p.N, tid, nth);
  stage_rows<TI>(slot + L.v, p.v, row0, p.H, len, p.M, tid, nth);
  if (p.gate) stage_rows<TI>(slot + L.g, p.g, row0, p.H, len, p.M, tid, nth);
  if (!fwd) stage_rows<TI>(slot + L.dy, p.dy, row0, p.H, len, p.M, tid, nth);
  stage_rows<float>(slot + L.a, p.a, row0, p.H, len, 1, tid, nth);
  cp_async_commit();
}

// x[jj] = row[jj], jj < NPT (NPT even; row 4-byte aligned), as pairs
template <int NPT, typename TI> struct Lds;
template <int NPT> struct Lds<NPT, __nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&x)[NPT], const __nv_bfloat16* row) {
    const __nv_bfloat162* r2 = reinterpret_cast<const __nv_bfloat162*>(row);
#pragma unroll
    for (int j = 0; j < NPT / 2; ++j) {
      const float2 f = __bfloat1622float2(r2[j]);
      x[2 * j] = f.x;
      x[2 * j + 1] = f.y;
    }
  }
};
template <int NPT> struct Lds<NPT, float> {
  static __device__ __forceinline__ void run(float (&x)[NPT], const float* row) {
    const float2* r2 = reinterpret_cast<const float2*>(row);
#pragma unroll
    for (int j = 0; j < NPT / 2; ++j) {
      const float2 f = r2[j];
      x[2 * j] = f.x;
      x[2 * j + 1] = f.y;
    }
  }
};

template <int NPT, typename TI>
__global__ void e88v3_fwd_kernel(E88Params p) {
  extern __shared__ __align__(16) char smraw[];
  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, nth = blockDim.x, i = tid >> 2, cs = tid & 3;
  const bool rok = i < p.M;
  const int N = p.N, M = p.M, T = p.T, C = p.C;
  const V3Slot L = v3_slot(V3_FWD_CHUNK, N, M, (int)sizeof(TI));
  auto slot = [&](int c) { return smraw + (c & 1) * L.size; };   // no local array: dynamic index
  float S[NPT];
  const size_t sb = ((size_t)bh * M + i) * N + cs * NPT;
#pragma unroll
  for (int jj = 0; jj < NPT; ++jj) S[jj] = (rok && p.S0 != nullptr) ? p.S0[sb + jj] : 0.f;
  TI* Y = reinterpret_cast<TI*>(p.y);
  const int nch = (T + V3_FWD_CHUNK - 1) / V3_FWD_CHUNK;
  if (nch > 0) stage_chunk<TI>(p, slot(0), L, b, h, 0, min(V3_FWD_CHUNK, T), true, tid, nth);
  for (int c = 0; c < nch; ++c) {
    const int t0 = c * V3_FWD_CHUNK, len = min(V3_FWD_CHUNK, T - t0);
    if (c + 1 < nch) {
      stage_chunk<TI>(p, slot(c + 1), L, b, h, t0 + V3_FWD_CHUNK, min(V3_FWD_CHUNK, T - t0 - V3_FWD_CHUNK),
                      true, tid, nth);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const char* sl = slot(c);
    const TI* Ks = reinterpret_cast<const TI*>(sl + L.k);
    const TI* Qs = reinterpret_cast<const TI*>(sl + L.q);
    const TI* Vs = reinterpret_cast<const TI*>(sl + L.v);
    const TI* Gs = reinterpret_cast<const TI*>(sl + L.g);
    const float* As = reinterpret_cast<const float*>(sl + L.a);
    for (int l = 0; l < len; ++l) {
      const int t = t0 + l;
      if (t % C == 0 && rok) {
        float* ck = p.ckpt + (((size_t)bh * p.NC + t / C) * M + i) * N + cs * NPT;
#pragma unroll
        for (int jj = 0; jj < NPT; ++jj) ck[jj] = S[jj];
      }
      float k[NPT], q[NPT];
      Lds<NPT, TI>::run(k, Ks + (size_t)l * N + cs * NPT);
      const float v = rok ? to_f<TI>(Vs[(size_t)l * M + i]) : 0.f;
      state_step<NPT, TI>(S, k, v, As[l], p.tanh_on);
      Lds<NPT, TI>::run(q, Qs + (size_t)l * N + cs * NPT);
      float o = 0.f;
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) o = fmaf(S[jj], q[jj], o);
      o = row_sum(o);
      if (cs == 0 && rok) {
        float yv = o;
        if (p.gate) {
          const float gi = to_f<TI>(Gs[(size_t)l * M + i]);
          const float sg = sigmoidf_(gi);
          yv *= (p.gate == 1) ? gi * sg : sg;
        }
        Y[(((size_t)b * T + t) * p.H + h) * M + i] = from_f<TI>(yv);
      }
    }
    __syncthreads();   // the slot is staged again two chunks on
  }
  if (rok) {
#pragma unroll
    for (int jj = 0; jj < NPT; ++jj) p.ST[sb + jj] = S[jj];
  }
}

// Register caps of the backward: at m = n (4n threads) 5 blocks/SM at n = 32, 3 at n = 48, 2 at n = 64
// (uncapped the compiler takes 108, 126, 157 there; at n <= 16 it would take up to 109 without need).
template <int NPT> struct V3BwdRegs { static constexpr int value = 128; };
template <> struct V3BwdRegs<8> { static constexpr int value = 96; };
template <> struct V3BwdRegs<12> { static constexpr int value = 112; };   // spills ~20 bytes
template <> struct V3BwdRegs<4> { static constexpr int value = 80; };
template <> struct V3BwdRegs<2> { static constexpr int value = 96; };

template <int NPT, typename TI>
__global__ void __maxnreg__(V3BwdRegs<NPT>::value) e88v3_bwd_kernel(E88Params p) {
  extern __shared__ __align__(16) char smraw[];
  const int bh = blockIdx.x, b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, i = tid >> 2, cs = tid & 3;
  const int nth = blockDim.x, nwarps = nth >> 5;
  const bool rok = i < p.M;
  const int N = p.N, M = p.M, T = p.T, C = p.C, PW = 2 * N + 1;
  const V3Bwd LY = v3_bwd_layout(NPT, nth, N, M, C, (int)sizeof(TI));
  float2* Sb = reinterpret_cast<float2*>(smraw + LY.sb);        // [l][NPT/2][nth] float2, own elements
  float* part = reinterpret_cast<float*>(smraw + LY.part);      // [l][nwarps][2N+1]
  float* dl = reinterpret_cast<float*>(smraw + LY.dl);          // [l][M]: delta = v - S_prev k
  auto slot = [&](int c) { return smraw + ((c & 1) ? LY.in1 : LY.in0); };
  const V3Slot& L = LY.slot;
  const size_t sb = ((size_t)bh * M + i) * N + cs * NPT;
  float dS[NPT];
#pragma unroll
  for (int jj = 0; jj < NPT; ++jj) dS[jj] = (rok && p.dST != nullptr) ? p.dST[sb + jj] : 0.f;

  {
    const int t0 = (p.NC - 1) * C;
    stage_chunk<TI>(p, slot(p.NC - 1), L, b, h, t0, min(C, T - t0), false, tid, nth);
  }
  for (int ch = p.NC - 1; ch >= 0; --ch) {
    const int t0 = ch * C, len = min(C, T - t0);
    // this chunk's checkpoint (its latency overlaps the staging wait below)
    float S[NPT];
    {
      const float* ck = p.ckpt + (((size_t)bh * p.NC + ch) * M + i) * N + cs * NPT;
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) S[jj] = rok ? ck[jj] : 0.f;
    }
    if (ch > 0) {
      stage_chunk<TI>(p, slot(ch - 1), L, b, h, t0 - C, C, false, tid, nth);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const char* sl = slot(ch);
    const TI* Ks = reinterpret_cast<const TI*>(sl + L.k);
    const TI* Qs = reinterpret_cast<const TI*>(sl + L.q);
    const TI* Vs = reinterpret_cast<const TI*>(sl + L.v);
    const TI* Gs = reinterpret_cast<const TI*>(sl + L.g);
    const TI* DYs = reinterpret_cast<const TI*>(sl + L.dy);
    const float* As = reinterpret_cast<const float*>(sl + L.a);

    // recompute the chunk's states S_{t0} .. S_{t0+len-1} into shared memory (S_{t0+len} stays in S)
    for (int l = 0; l < len; ++l) {
#pragma unroll
      for (int j = 0; j < NPT / 2; ++j)
        Sb[((size_t)l * (NPT / 2) + j) * nth + tid] = make_float2(S[2 * j], S[2 * j + 1]);
      float k[NPT];
      Lds<NPT, TI>::run(k, Ks + (size_t)l * N + cs * NPT);
      const float v = rok ? to_f<TI>(Vs[(size_t)l * M + i]) : 0.f;
      float r = 0.f;
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) r = fmaf(S[jj], k[jj], r);
      r = row_sum(r);
      const float d = v - r;
      if (cs == 0 && rok) dl[(size_t)l * M + i] = d;
      const float a = As[l];
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) {
        const float pv = fmaf(a, S[jj], d * k[jj]);
        S[jj] = p.tanh_on ? act_tanh<TI>(pv) : pv;
      }
    }
    __syncwarp();   // delta of row i is read by the row's four lanes (one warp)

    float Sc[NPT];
#pragma unroll
    for (int jj = 0; jj < NPT; ++jj) Sc[jj] = S[jj];
    for (int l = len - 1; l >= 0; --l) {
      const int t = t0 + l;
      const size_t tk = ((size_t)b * T + t) * p.H + h;
      float Sp[NPT], k[NPT], q[NPT];
#pragma unroll
      for (int j = 0; j < NPT / 2; ++j) {
        const float2 f = Sb[((size_t)l * (NPT / 2) + j) * nth + tid];
        Sp[2 * j] = f.x;
        Sp[2 * j + 1] = f.y;
      }
      Lds<NPT, TI>::run(k, Ks + (size_t)l * N + cs * NPT);
      Lds<NPT, TI>::run(q, Qs + (size_t)l * N + cs * NPT);
      const float dyi = rok ? to_f<TI>(DYs[(size_t)l * M + i]) : 0.f;
      const float delta = rok ? dl[(size_t)l * M + i] : 0.f;
      const float a = As[l];
      float doi = dyi, dgi = 0.f;
      if (p.gate) {
        float o = 0.f;
#pragma unroll
        for (int jj = 0; jj < NPT; ++jj) o = fmaf(Sc[jj], q[jj], o);
        o = row_sum(o);
        const float gi = rok ? to_f<TI>(Gs[(size_t)l * M + i]) : 0.f, sg = sigmoidf_(gi);
        const float gv = (p.gate == 1) ? gi * sg : sg;
        const float gp = (p.gate == 1) ? sg * (1.f + gi * (1.f - sg)) : sg * (1.f - sg);
        doi = dyi * gv;
        dgi = dyi * o * gp;
      }
      float dqp[NPT], dkp[NPT], dP[NPT];
      float dap = 0.f, ddp = 0.f;
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) {
        dS[jj] = fmaf(doi, q[jj], dS[jj]);
        dqp[jj] = Sc[jj] * doi;
        dP[jj] = p.tanh_on ? dS[jj] * fmaf(-Sc[jj], Sc[jj], 1.f) : dS[jj];
        dap = fmaf(dP[jj], Sp[jj], dap);
        ddp = fmaf(dP[jj], k[jj], ddp);
      }
      ddp = row_sum(ddp);
#pragma unroll
      for (int jj = 0; jj < NPT; ++jj) {
        dkp[jj] = fmaf(dP[jj], delta, -Sp[jj] * ddp);
        dS[jj] = fmaf(a, dP[jj], -ddp * k[jj]);
        Sc[jj] = Sp[jj];
      }
      if (cs == 0 && rok) {
        p.dv[tk * M + i] = ddp;
        if (p.gate) p.dg[tk * M + i] = dgi;
      }
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) dap += __shfl_xor_sync(0xffffffffu, dap, off);
      float* pw = part + ((size_t)l * nwarps + warp) * PW;
      if constexpr ((2 * NPT) % 8 == 0) {
        constexpr int V = 2 * NPT;
        float vv[V];
#pragma unroll
        for (int jj = 0; jj < NPT; ++jj) { vv[jj] = dqp[jj]; vv[NPT + jj] = dkp[jj]; }
#pragma unroll
        for (int lev = 0; lev < 3; ++lev) {
          const int o = 4 << lev;
          const int half = V >> (lev + 1);
          const bool up = (lane & o) != 0;
#pragma unroll
          for (int x = 0; x < V / 2; ++x) {
            if (x < half) {
              const float send = up ? vv[x] : vv[x + half];
              const float keep = up ? vv[x + half] : vv[x];
              vv[x] = keep + __shfl_xor_sync(0xffffffffu, send, o);
            }
          }
        }
        const int base = ((lane & 4) ? V / 2 : 0) + ((lane & 8) ? V / 4 : 0) + ((lane & 16) ? V / 8 : 0);
#pragma unroll
        for (int x = 0; x < V / 8; ++x) {
          const int orig = base + x;
          pw[orig < NPT ? cs * NPT + orig : N + cs * NPT + (orig - NPT)] = vv[x];
        }
      } else {
#pragma unroll
        for (int jj = 0; jj < NPT; ++jj) {
#pragma unroll
          for (int off = 4; off < 32; off <<= 1) {
            dqp[jj] += __shfl_xor_sync(0xffffffffu, dqp[jj], off);
            dkp[jj] += __shfl_xor_sync(0xffffffffu, dkp[jj], off);
          }
        }
        if (lane < 4) {
#pragma unroll
          for (int jj = 0; jj < NPT; ++jj) {
            pw[cs * NPT + jj] = dqp[jj];
            pw[N + cs * NPT + jj] = dkp[jj];
          }
        }
      }
      if (lane == 0) pw[2 * N] = dap;
    }
    __syncthreads();
    for (int idx = tid; idx < len * PW; idx += nth) {
      const int l = idx / PW, c = idx % PW;
      float s = 0.f;
      for (int w = 0; w < nwarps; ++w) s += part[((size_t)l * nwarps + w) * PW + c];
      const size_t tk = ((size_t)b * T + t0 + l) * p.H + h;
      if (c < N) p.dq[tk * N + c] = s;
      else if (c < 2 * N) p.dk[tk * N + (c - N)] = s;
      else p.da[tk] = s;
    }
    // the next chunk's reverse phase writes part and dl only after its own __syncthreads, and its
    // staging (two chunks on) targets this chunk's slot only after that barrier as well
  }
  if (rok) {
#pragma unroll
    for (int jj = 0; jj < NPT; ++jj) p.dS0[sb + jj] = dS[jj];
  }
}

static const void* pick_v3(int fwd, int dtype, int npt) {
  const void* fn = nullptr;
  if (fwd) {
    if (dtype == 0) { NPT_SWITCH(npt, e88v3_fwd_kernel, float, fn) }
    else { NPT_SWITCH(npt, e88v3_fwd_kernel, __nv_bfloat16, fn) }
  } else {
    if (dtype == 0) { NPT_SWITCH(npt, e88v3_bwd_kernel, float, fn) }
    else { NPT_SWITCH(npt, e88v3_bwd_kernel, __nv_bfloat16, fn) }
  }
  return fn;
}

static size_t v3_fwd_smem(int N, int M, int tisz) { return 2 * v3_slot(V3_FWD_CHUNK, N, M, tisz).size; }

extern "C" {

// The checkpoint interval C for v3 at key dim N, value dim M and B*H = BH blocks: among
// cmin <= C <= cmax whose backward fits the device, the fewest waves of blocks over the SMs
// (blocks per SM from the occupancy calculator: registers and shared memory), then the largest C.
// Returns 0 and C = 0 when the shape is not supported; *blocks_out: backward blocks per SM.
int e88v3_plan(int device, int dtype, int N, int M, int BH, int cmin, int cmax, int* C_out, int* smem_out,
               int* nth_out, int* blocks_out) {
  *C_out = 0; *smem_out = 0; *blocks_out = 0;
  if (N % 8 != 0 || N < 8 || N > 64 || M < 1 || cmin < 1 || cmax < cmin) return 0;
  const int npt = N / 4, tisz = dtype == 0 ? 4 : 2;
  const int nth = ((4 * M + 31) / 32) * 32;
  *nth_out = nth;
  int maxsm = 0, nsm = 0;
  cudaError_t e = cudaDeviceGetAttribute(&maxsm, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return (int)e;
  e = cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return (int)e;
  for (int f = 1; f >= 0; --f) {
    cudaFuncAttributes attr;
    const void* fn = pick_v3(f, dtype, npt);
    e = cudaFuncGetAttributes(&attr, fn);
    if (e != cudaSuccess) return (int)e;
    if (attr.maxThreadsPerBlock < nth) return 0;
    e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, maxsm);
    if (e != cudaSuccess) return (int)e;
  }
  if (v3_fwd_smem(N, M, tisz) > (size_t)maxsm) return 0;
  const void* bwd = pick_v3(0, dtype, npt);
  long best_waves = -1;
  int best_C = 0, best_nb = 0;
  for (int c = cmin; c <= cmax; ++c) {
    const size_t sm = v3_bwd_layout(npt, nth, N, M, c, tisz).total;
    if (sm > (size_t)maxsm) break;
    int nb = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, bwd, nth, sm);
    if (e != cudaSuccess) return (int)e;
    if (nb < 1) break;
    const long per_wave = (long)nb * nsm;
    const long waves = (BH + per_wave - 1) / per_wave;
    if (best_waves < 0 || waves <= best_waves) { best_waves = waves; best_C = c; best_nb = nb; }
  }
  if (best_C == 0) return 0;
  *C_out = best_C;
  *smem_out = (int)v3_bwd_layout(npt, nth, N, M, best_C, tisz).total;
  *blocks_out = best_nb;
  return 0;
}

int e88v3_launch(int fwd, int device, void* stream, int dtype, const void* q, const void* k, const void* v,
                 const void* g, const float* a, const float* S0, void* y, float* ST, float* ckpt,
                 const void* dy, const float* dST, float* dq, float* dk, float* dv, float* da, float* dg,
                 float* dS0, int B, int T, int H, int N, int M, int C, int NC, int tanh_on, int gate) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return (int)e;
  E88Params p;
  p.q = q; p.k = k; p.v = v; p.g = g; p.a = a; p.S0 = S0; p.y = y; p.ST = ST; p.ckpt = ckpt;
  p.dy = dy; p.dST = dST; p.dq = dq; p.dk = dk; p.dv = dv; p.da = da; p.dg = dg; p.dS0 = dS0;
  p.B = B; p.T = T; p.H = H; p.N = N; p.M = M; p.C = C; p.NC = NC; p.tanh_on = tanh_on; p.gate = gate;
  if (C < 1 || NC != (T + C - 1) / C || T < 1) return (int)cudaErrorInvalidValue;
  const int npt = N / 4, tisz = dtype == 0 ? 4 : 2;
  const int nth = ((4 * M + 31) / 32) * 32;
  const void* fn = pick_v3(fwd, dtype, npt);
  if (fn == nullptr) return (int)cudaErrorInvalidValue;
  const size_t smem = fwd ? v3_fwd_smem(N, M, tisz) : v3_bwd_layout(npt, nth, N, M, C, tisz).total;
  e = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return (int)e;
  void* args[] = {&p};
  e = cudaLaunchKernel(fn, dim3(B * H), dim3(nth), args, smem, (cudaStream_t)stream);
  if (e != cudaSuccess) return (int)e;
  return (int)cudaGetLastError();
}

}  // extern "C"
