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
