// Runs the simple kernel files of src/cuda (compiled, not yet run on a GPU) on
// the CPU under the CUDA emulator of cuda_emu/cuda_emu.h, through their own
// host launchers (cuda/rmsnorm.h, rope.h, swiglu.h, elementwise.h,
// embedding.h, grad_clip.h, adamw.h), every CUDA thread a fiber, shared memory
// NaN-filled, under AddressSanitizer and UBSan (see cuda_ops_emu.sh). Each
// result is compared with a float64 loop written here from the semantics of
// the CPU op (cpu/<family>.cc): ragged shapes, bf16 weights, in-place calls,
// written outputs starting as NaN and accumulated ones starting random, each
// case under several thread/block schedules. One line per case; exits 1 on a
// failure.
#include "cuda_emu.h"

#include <cstdio>
#include <string>
#include <vector>

#include "../device.h"
#include "../hd.h"
#include "adamw.h"
#include "elementwise.h"
#include "embedding.h"
#include "grad_clip.h"
#include "kernels/rope_math.h"
#include "rmsnorm.h"
#include "rope.h"
#include "swiglu.h"

// What the .cu files take from tensor.cc, device.cc and cuda/runtime.cu:
// device memory is host memory here, filled with NaN bytes when allocated.
namespace tb {
void* tracked_alloc(size_t bytes, Category, Device) {
  void* p = std::malloc(bytes ? bytes : 1);
  std::memset(p, 0xFF, bytes);
  return p;
}
void tracked_free(void* p, size_t, Category, Device) { std::free(p); }
namespace device {
void copy(void* dst, Device, const void* src, Device, size_t bytes) { std::memcpy(dst, src, bytes); }
// as cudaMemcpyAsync from pageable memory: the source is read (staged)
// before it returns, and the kernels queued after it read the copy
void upload(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
}  // namespace device
}  // namespace tb
namespace tb::cuda {
cudaStream_t stream() { return nullptr; }
void check_failed(cudaError_t err, const char* what, const char* file, int line) {
  throw DeviceError(std::string(what) + ": " + cudaGetErrorString(err) + " at " + file + ":" + std::to_string(line));
}
}  // namespace tb::cuda

namespace {

using dvec = std::vector<double>;
using fvec = std::vector<float>;

std::mt19937 rng(20261130);
float urand() { return std::uniform_real_distribution<float>(-1, 1)(rng); }
fvec randv(size_t n) {
  fvec v(n);
  for (auto& x : v) x = urand();
  return v;
}
fvec nanv(size_t n) { return fvec(n, NAN); }
std::vector<uint16_t> to_bf16(const fvec& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); i++) b[i] = tb::f32_to_bf16(v[i]);
  return b;
}
fvec widen(const std::vector<uint16_t>& b) {
  fvec v(b.size());
  for (size_t i = 0; i < b.size(); i++) v[i] = tb::bf16_to_f32(b[i]);
  return v;
}

int fails = 0, passes = 0;
constexpr int kSchedules[] = {tbemu::kForward, tbemu::kReverse, tbemu::kRandom, tbemu::kRunAhead};
const char* kSchedNames[] = {"", " [reverse]", " [random]", " [run-ahead]", " [reverse run-ahead]"};

// max |got - ref| / max(max |ref|, floor), infinite on a NaN/inf or a size
// mismatch. The floor is 0.01 (inputs are O(1)) or the size of the terms an
// output is a difference of, where they cancel.
double rel_err(const dvec& ref, const fvec& got, double floor = 0.01) {
  if (ref.size() != got.size()) return INFINITY;
  double e = 0, m = floor;
  for (size_t i = 0; i < ref.size(); i++) {
    if (!std::isfinite(got[i])) return INFINITY;
    e = std::max(e, std::fabs(got[i] - ref[i]));
    m = std::max(m, std::fabs(ref[i]));
  }
  return e / m;
}

using Errs = std::vector<std::pair<const char*, double>>;

// Runs `body` (which returns the errors of its outputs) under every schedule.
template <class F>
void run_case(const std::string& what, F body, double tol = 2e-5) {
  for (int sched : kSchedules) {
    tbemu::set_schedule(sched, static_cast<unsigned>(what.size() * 131 + sched));
    Errs errs;
    std::string thrown;
    try {
      errs = body();
    } catch (const std::exception& e) {
      thrown = e.what();
    }
    const long emu = tbemu::take_errors();
    bool ok = emu == 0 && thrown.empty();
    for (auto& e : errs) ok = ok && e.second < tol;
    (ok ? passes : fails)++;
    std::printf("%s %s%s", ok ? "ok  " : "FAIL", what.c_str(), kSchedNames[sched]);
    for (auto& e : errs) std::printf(" %s %.2g", e.first, e.second);
    if (emu) std::printf(" (%ld emulator errors)", emu);
    if (!thrown.empty()) std::printf(" (threw: %s)", thrown.c_str());
    std::printf("\n");
    std::fflush(stdout);
  }
}

// ---- rmsnorm (cpu/rmsnorm.cc: y = x * rstd * w, rstd = 1/sqrt(mean x^2 + eps);
// dx = rstd*dy*w - rstd^3 * (sum dy*w*x) / C * x; dw += sum_n dy*x*rstd) ----
void rmsnorm_cases() {
  const int64_t shapes[][2] = {{1, 1}, {3, 7}, {5, 33}, {4, 100}, {2, 513}, {9, 1000}, {70, 5}, {300, 3}, {40, 70}};
  const float eps = 1e-5f;
  for (auto& sh : shapes)
    for (int bf : {0, 1})
      for (int inplace : {0, 1}) {
        const int64_t N = sh[0], C = sh[1];
        const fvec x = randv(N * C), dy = randv(N * C), dw0 = randv(C);
        fvec w = randv(C);
        const auto wb = to_bf16(w);
        if (bf) w = widen(wb);
        const void* wp = bf ? static_cast<const void*>(wb.data()) : static_cast<const void*>(w.data());
        dvec yr(N * C), rr(N), dxr(N * C), dwr(dw0.begin(), dw0.end());
        double dx_terms = 0.01;  // dx cancels to ~0 when C = 1
        for (int64_t n = 0; n < N; n++) {
          double ss = 0, dot = 0;
          for (int64_t c = 0; c < C; c++) ss += double(x[n * C + c]) * x[n * C + c];
          const double r = 1.0 / std::sqrt(ss / C + eps);
          rr[n] = r;
          for (int64_t c = 0; c < C; c++) {
            yr[n * C + c] = x[n * C + c] * r * w[c];
            dot += double(dy[n * C + c]) * w[c] * x[n * C + c];
          }
          for (int64_t c = 0; c < C; c++) {
            dxr[n * C + c] = r * dy[n * C + c] * w[c] - r * r * r * dot / C * x[n * C + c];
            dx_terms = std::max(dx_terms, std::fabs(r * dy[n * C + c] * w[c]));
            dwr[c] += double(dy[n * C + c]) * x[n * C + c] * r;
          }
        }
        char name[128];
        std::snprintf(name, sizeof name, "rmsnorm N %lld C %lld w %s%s", (long long)N, (long long)C, bf ? "bf16" : "f32",
                      inplace ? " in place" : "");
        run_case(name, [&] {
          fvec y = inplace ? x : nanv(N * C), rstd = nanv(N);
          tb::cuda::rmsnorm_forward(N, C, inplace ? y.data() : x.data(), wp, bf, eps, y.data(), rstd.data());
          // backward with the rstd of the kernel under test, dx over dy when in place
          fvec dx = inplace ? dy : nanv(N * C), dw = dw0;
          tb::cuda::rmsnorm_backward(N, C, inplace ? dx.data() : dy.data(), x.data(), wp, bf, rstd.data(), dx.data(),
                                     dw.data());
          return Errs{{"y", rel_err(yr, y)}, {"rstd", rel_err(rr, rstd)}, {"dx", rel_err(dxr, dx, dx_terms)}, {"dw", rel_err(dwr, dw)}};
        });
      }
}

// ---- rope (cpu/rope.cc: pair (i, i + D/2) of each head rotated by pos * inv_freq[i],
// inv_freq and the f32 angle as the CPU computes them; cos and sin times the
// attention scale). Plain RoPE: the theta table and scale 1; scaled variants:
// a caller's table (random inverse frequencies here) and a scale != 1. ----
void rope_cases() {
  const int64_t shapes[][3] = {{1, 1, 2}, {5, 3, 6}, {7, 2, 130}, {33, 4, 64}, {300, 1, 8}, {3, 5, 1024}};
  for (auto& sh : shapes)
    for (int scaled : {0, 1})
      for (int inplace : {0, 1}) {
        const int64_t BT = sh[0], H = sh[1], D = sh[2], h = D / 2;
        const float theta = 10000.0f;
        fvec inv(h);
        for (int64_t i = 0; i < h; i++)
          inv[i] = scaled ? tb::math::rope_inv_freq(i, D, theta) * (0.05f + 0.5f * (urand() + 1.0f))
                          : tb::math::rope_inv_freq(i, D, theta);
        const float scale = scaled ? 1.2079442f : 1.0f;
        std::vector<int32_t> pos(BT);
        for (auto& p : pos) p = static_cast<int32_t>(rng() % 4096);
        const fvec x = randv(BT * H * D);
        dvec fr(x.size()), br(x.size());
        for (int64_t t = 0; t < BT; t++)
          for (int64_t i = 0; i < h; i++) {
            const double a = static_cast<float>(pos[t]) * inv[i];
            const double c = std::cos(a) * scale, s = std::sin(a) * scale;
            for (int64_t hd = 0; hd < H; hd++) {
              const int64_t e = (t * H + hd) * D + i;
              const double u = x[e], v = x[e + h];
              fr[e] = u * c - v * s, fr[e + h] = v * c + u * s;
              br[e] = u * c + v * s, br[e + h] = v * c - u * s;
            }
          }
        char name[128];
        std::snprintf(name, sizeof name, "rope BT %lld H %lld D %lld%s%s", (long long)BT, (long long)H, (long long)D,
                      scaled ? " scaled table" : "", inplace ? " in place" : "");
        run_case(name, [&] {
          fvec f = inplace ? x : nanv(x.size()), b = inplace ? x : nanv(x.size());
          tb::cuda::rope_forward(BT, H, D, pos.data(), inv.data(), scale, inplace ? f.data() : x.data(), f.data());
          tb::cuda::rope_backward(BT, H, D, pos.data(), inv.data(), scale, inplace ? b.data() : x.data(), b.data());
          return Errs{{"fwd", rel_err(fr, f)}, {"bwd", rel_err(br, b)}};
        });
      }
}

// ---- swiglu (out = silu(g) * u; dgate = d*u*s*(1 + g*(1-s)), dup = d*silu(g)) ----
void swiglu_cases() {
  for (int64_t n : {1, 31, 255, 257, 1000, 4099}) {
    fvec g = randv(n), u = randv(n), d = randv(n);
    for (auto& v : g) v *= 8;
    dvec o(n), dg(n), du(n);
    for (int64_t i = 0; i < n; i++) {
      const double s = 1.0 / (1.0 + std::exp(-double(g[i])));
      o[i] = g[i] * s * u[i];
      dg[i] = d[i] * u[i] * s * (1 + g[i] * (1 - s));
      du[i] = d[i] * g[i] * s;
    }
    run_case("swiglu n " + std::to_string(n), [&] {
      fvec out = nanv(n), dgate = nanv(n), dup = nanv(n);
      tb::cuda::swiglu_forward(n, g.data(), u.data(), out.data());
      tb::cuda::swiglu_backward(n, d.data(), g.data(), u.data(), dgate.data(), dup.data());
      return Errs{{"out", rel_err(o, out)}, {"dgate", rel_err(dg, dgate)}, {"dup", rel_err(du, dup)}};
    });
  }
}

// ---- elementwise (axpy y += a x; fill; group_pool p = scale/L * group sum, its
// backward broadcast, written or accumulated) ----
void elementwise_cases() {
  for (int64_t n : {1, 255, 257, 3000}) {
    const fvec x = randv(n), y0 = randv(n);
    dvec ar(n), fr(n, 0.375);
    for (int64_t i = 0; i < n; i++) ar[i] = y0[i] + 0.7 * x[i];
    run_case("axpy/fill n " + std::to_string(n), [&] {
      fvec y = y0, f = nanv(n);
      tb::cuda::axpy(n, 0.7f, x.data(), y.data());
      tb::cuda::fill(n, 0.375f, f.data());
      return Errs{{"axpy", rel_err(ar, y)}, {"fill", rel_err(fr, f)}};
    });
  }
  const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 4, 64}, {2, 300, 3}, {1, 1, 1000}};
  for (auto& sh : shapes)
    for (int acc : {0, 1}) {
      const int64_t N = sh[0], G = sh[1], L = sh[2];
      const float scale = 1.5f;
      const fvec x = randv(N * G * L), dp = randv(N * G), dx0 = randv(N * G * L);
      dvec pr(N * G, 0.0), dxr(N * G * L);
      for (int64_t i = 0; i < N * G; i++) {
        for (int64_t j = 0; j < L; j++) pr[i] += x[i * L + j];
        pr[i] *= double(scale) / L;
        for (int64_t j = 0; j < L; j++) dxr[i * L + j] = (acc ? dx0[i * L + j] : 0.0) + double(scale) / L * dp[i];
      }
      char name[128];
      std::snprintf(name, sizeof name, "group_pool N %lld G %lld L %lld%s", (long long)N, (long long)G, (long long)L,
                    acc ? " accumulate" : "");
      run_case(name, [&] {
        fvec p = nanv(N * G), dx = acc ? dx0 : nanv(N * G * L);
        tb::cuda::group_pool_forward(N, G, L, scale, x.data(), p.data());
        tb::cuda::group_pool_backward(N, G, L, scale, dp.data(), dx.data(), acc != 0);
        return Errs{{"p", rel_err(pr, p)}, {"dx", rel_err(dxr, dx)}};
      });
    }
}

// ---- embedding (out[i] = weight[ids[i]]; dweight[id] += sum of its dout rows) ----
void embedding_cases() {
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {100, 13, 64}, {33, 1000, 300}, {9, 4, 257}};
  for (auto& sh : shapes)
    for (int bf : {0, 1}) {
      const int64_t N = sh[0], V = sh[1], C = sh[2];
      std::vector<int32_t> ids(N);
      for (auto& i : ids) i = static_cast<int32_t>(rng() % V);
      fvec w = randv(V * C);
      const auto wb = to_bf16(w);
      if (bf) w = widen(wb);
      const fvec dout = randv(N * C), dw0 = randv(V * C);
      dvec fr(N * C), br(dw0.begin(), dw0.end());
      for (int64_t i = 0; i < N; i++)
        for (int64_t c = 0; c < C; c++) {
          fr[i * C + c] = w[ids[i] * C + c];
          br[ids[i] * C + c] += dout[i * C + c];
        }
      // the grouping the binding builds on the host: distinct ids, offsets, positions ascending
      std::vector<int32_t> rows, offsets{0}, pos;
      for (int32_t v = 0; v < V; v++) {
        const size_t before = pos.size();
        for (int64_t i = 0; i < N; i++)
          if (ids[i] == v) pos.push_back(static_cast<int32_t>(i));
        if (pos.size() > before) rows.push_back(v), offsets.push_back(static_cast<int32_t>(pos.size()));
      }
      char name[128];
      std::snprintf(name, sizeof name, "embedding N %lld V %lld C %lld w %s", (long long)N, (long long)V, (long long)C,
                    bf ? "bf16" : "f32");
      run_case(name, [&] {
        fvec out = nanv(N * C), dw = dw0;
        tb::cuda::embedding_forward(ids.data(), bf ? static_cast<const void*>(wb.data()) : w.data(), bf, N, C, out.data());
        tb::cuda::embedding_backward(dout.data(), static_cast<int64_t>(rows.size()), rows.data(), offsets.data(),
                                     pos.data(), C, dw.data());
        return Errs{{"out", rel_err(fr, out)}, {"dweight", rel_err(br, dw)}};
      });
    }
}

// ---- grad_clip (sum of squares in double; x *= s) ----
void grad_clip_cases() {
  for (int64_t n : {1, 255, 257, 70000, 300000}) {
    const fvec x = randv(n);
    double ss = 0;
    dvec sr(n);
    for (int64_t i = 0; i < n; i++) ss += double(x[i]) * x[i], sr[i] = x[i] * 0.25;
    run_case("grad_clip n " + std::to_string(n), [&] {
      const double got = tb::cuda::grad_sumsq(n, x.data());
      fvec y = x;
      tb::cuda::grad_scale(n, y.data(), 0.25f);
      return Errs{{"sumsq", std::isfinite(got) ? std::fabs(got - ss) / ss : INFINITY}, {"scale", rel_err(sr, y)}};
    }, 1e-12);
  }
}

// ---- adamw (cpu/adamw.cc; the step scalars from math::adamw_scalars) ----
void adamw_ref(const tb::math::AdamwScalars& s, float decay, const fvec& g, fvec p, fvec m, fvec v, dvec& pr, dvec& mr,
               dvec& vr) {
  const size_t n = g.size();
  pr.resize(n), mr.resize(n), vr.resize(n);
  for (size_t i = 0; i < n; i++) {
    mr[i] = double(s.b1) * m[i] + (1.0 - double(s.b1)) * g[i];
    vr[i] = double(s.b2) * v[i] + (1.0 - double(s.b2)) * double(g[i]) * g[i];
    pr[i] = double(p[i]) * decay - double(s.step_size) * mr[i] / (std::sqrt(vr[i]) * s.inv_bc2_sqrt + s.eps);
  }
}
fvec abs_randv(size_t n) {
  fvec v = randv(n);
  for (auto& x : v) x = std::fabs(x) * 0.01f;
  return v;
}
void adamw_cases() {
  const auto s = tb::math::adamw_scalars(1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 7);
  for (int64_t n : {1, 255, 257, 5000}) {
    const fvec p0 = randv(n), g = randv(n), m0 = randv(n), v0 = abs_randv(n);
    dvec pr, mr, vr;
    adamw_ref(s, s.decay, g, p0, m0, v0, pr, mr, vr);
    run_case("adamw_step n " + std::to_string(n), [&] {
      fvec p = p0, m = m0, v = v0;
      tb::cuda::adamw_step(n, p.data(), g.data(), m.data(), v.data(), s);
      return Errs{{"p", rel_err(pr, p)}, {"m", rel_err(mr, m)}, {"v", rel_err(vr, v)}};
    });
  }
  // multi-tensor: sizes around the 4096-element chunk, an empty tensor, per-tensor decay
  const int64_t sizes[] = {1, 4096, 0, 4097, 10000, 3, 8192};
  const int T = sizeof sizes / sizeof sizes[0];
  std::vector<fvec> p0(T), g(T), m0(T), v0(T);
  std::vector<dvec> pr(T), mr(T), vr(T);
  std::vector<float> decay(T);
  for (int t = 0; t < T; t++) {
    p0[t] = randv(sizes[t]), g[t] = randv(sizes[t]), m0[t] = randv(sizes[t]), v0[t] = abs_randv(sizes[t]);
    decay[t] = t % 2 ? 1.0f : s.decay;
    adamw_ref(s, decay[t], g[t], p0[t], m0[t], v0[t], pr[t], mr[t], vr[t]);
  }
  run_case("adamw_step_multi sizes 1 4096 0 4097 10000 3 8192", [&] {
    std::vector<fvec> p = p0, m = m0, v = v0;
    std::vector<tb::cuda::AdamwTensor> ts(T);
    for (int t = 0; t < T; t++) ts[t] = {p[t].data(), g[t].data(), m[t].data(), v[t].data(), sizes[t], decay[t]};
    tb::cuda::adamw_step_multi(ts.data(), T, s);
    double ep = 0, em = 0, ev = 0;
    for (int t = 0; t < T; t++)
      ep = std::max(ep, rel_err(pr[t], p[t])), em = std::max(em, rel_err(mr[t], m[t])), ev = std::max(ev, rel_err(vr[t], v[t]));
    return Errs{{"p", ep}, {"m", em}, {"v", ev}};
  });
}

}  // namespace

int main(int argc, char** argv) {
  std::string only = argc > 1 ? argv[1] : "";
  auto want = [&](const char* f) { return only.empty() || only == f; };
  if (want("rmsnorm")) rmsnorm_cases();
  if (want("rope")) rope_cases();
  if (want("swiglu")) swiglu_cases();
  if (want("elementwise")) elementwise_cases();
  if (want("embedding")) embedding_cases();
  if (want("grad_clip")) grad_clip_cases();
  if (want("adamw")) adamw_cases();
  std::printf("%d passed, %d failed (%ld kernel launches emulated)\n", passes, fails, tbemu::S.launches);
  return fails ? 1 : 0;
}
