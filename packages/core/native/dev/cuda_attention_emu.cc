// Runs src/cuda/attention.cu (compiled, not yet run on a GPU) on the CPU under
// the CUDA emulator of cuda_emu/cuda_emu.h: the file's own kernels and host
// launchers (attention_forward, attention_backward with its delta, dq and
// dk/dv kernels, attention_decode, segment bounds), compiled with g++ after
// cuda_attention_emu.sh rewrites its `<<<...>>>` launches and its
// `extern __shared__` declarations, every CUDA thread a fiber, shared memory
// NaN-filled, under AddressSanitizer and UBSan. Each result is compared with
// a float64 evaluation of cpu/attention.cc's and cpu/attention_decode.cc's
// semantics (causal, grouped-query heads, packed segments, sliding windows,
// lse, written outputs that start as NaN here). One line per case; exits 1 on a failure.
#include "cuda_emu.h"

#include "attention_cu_host.inc"

#include <cstdio>
#include <string>
#include <vector>

// What the .cu takes from tensor.cc and cuda/runtime.cu: device memory is
// host memory here, filled with NaN bytes like an uninitialised buffer.
namespace tb {
void* tracked_alloc(size_t bytes, Category, Device) {
  void* p = std::malloc(bytes ? bytes : 1);
  std::memset(p, 0xFF, bytes);
  return p;
}
void tracked_free(void* p, size_t, Category, Device) { std::free(p); }
}  // namespace tb
namespace tb::cuda {
cudaStream_t stream() { return nullptr; }
void check_failed(cudaError_t err, const char* what, const char* file, int line) {
  throw DeviceError(std::string(what) + ": " + cudaGetErrorString(err) + " at " + file + ":" + std::to_string(line));
}
}  // namespace tb::cuda

namespace {

std::mt19937 rng(20261124);
float urand() { return std::uniform_real_distribution<float>(-1, 1)(rng); }
std::vector<float> randv(size_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = urand();
  return v;
}

int fails = 0, passes = 0;

// max |got - ref| / max(max |ref|, 0.01), infinite if got has a NaN or inf.
// The floor: inputs are O(1), so every output's terms are too, but some
// outputs are 0 up to rounding (dq and dk with T = 1: p = 1 and dO.v = delta);
// a wrong index gives errors far above it. With a window of 1 every query
// sees only itself and dq, dk are 0 up to rounding in every row, whose noise
// grows with D: those are measured against their natural scale, 1 (floor).
double rel_err(const std::vector<double>& ref, const float* got, size_t n, double floor = 0.01) {
  double e = 0, m = floor;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(got[i])) return INFINITY;
    e = std::max(e, std::fabs(got[i] - ref[i]));
    m = std::max(m, std::fabs(ref[i]));
  }
  return e / m;
}

void verdict(const std::string& what, std::initializer_list<std::pair<const char*, double>> errs, long emu_errors,
             const char* thrown = nullptr) {
  constexpr double kTol = 2e-5;
  bool ok = emu_errors == 0 && !thrown;
  for (auto& e : errs) ok = ok && e.second < kTol;
  (ok ? passes : fails)++;
  std::printf("%s %s", ok ? "ok  " : "FAIL", what.c_str());
  for (auto& e : errs) std::printf(" %s %.2g", e.first, e.second);
  if (emu_errors) std::printf(" (%ld emulator errors)", emu_errors);
  if (thrown) std::printf(" (threw: %s)", thrown);
  std::printf("\n");
  std::fflush(stdout);
}

struct Problem {
  int64_t B, T, Hq, Hkv, D;
  std::vector<int32_t> seg;  // [B, T] or empty
  std::vector<float> q, k, v, dout;
  float scale;
  int64_t W = 0;  // sliding window (0: none): query t sees keys t - W + 1 .. t
  int64_t start(int64_t b, int64_t t) const {
    int64_t s = t;
    if (seg.empty()) s = 0;
    else
      while (s > 0 && seg[b * T + s - 1] == seg[b * T + t]) s--;
    return W > 0 ? std::max(s, t - W + 1) : s;
  }
};

// Packed rows: random segment lengths, ids non-decreasing from a random base.
std::vector<int32_t> make_segments(int64_t B, int64_t T) {
  std::vector<int32_t> seg(B * T);
  for (int64_t b = 0; b < B; b++) {
    int32_t id = static_cast<int32_t>(rng() % 5);
    int64_t t = 0;
    while (t < T) {
      const int64_t len = 1 + static_cast<int64_t>(rng() % static_cast<unsigned>(b == 0 ? 40 : 9));
      for (int64_t i = 0; i < len && t < T; i++) seg[b * T + t++] = id;
      id += 1 + static_cast<int32_t>(rng() % 2);
    }
  }
  return seg;
}

// float64 forward: out [B,T,Hq,D], lse [B,Hq,T]
void ref_forward(const Problem& P, std::vector<double>& out, std::vector<double>& lse) {
  const int64_t B = P.B, T = P.T, Hq = P.Hq, Hkv = P.Hkv, D = P.D, G = Hq / Hkv;
  out.assign(B * T * Hq * D, 0.0);
  lse.assign(B * Hq * T, 0.0);
  std::vector<double> s(T);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t t = 0; t < T; t++) {
        const int64_t g = h / G, st = P.start(b, t);
        const float* qr = &P.q[((b * T + t) * Hq + h) * D];
        double m = -INFINITY;
        for (int64_t j = st; j <= t; j++) {
          const float* kr = &P.k[((b * T + j) * Hkv + g) * D];
          double d = 0;
          for (int64_t c = 0; c < D; c++) d += static_cast<double>(qr[c]) * kr[c];
          s[j] = d * P.scale;
          m = std::max(m, s[j]);
        }
        double l = 0;
        for (int64_t j = st; j <= t; j++) l += std::exp(s[j] - m);
        double* o = &out[((b * T + t) * Hq + h) * D];
        for (int64_t j = st; j <= t; j++) {
          const double p = std::exp(s[j] - m) / l;
          const float* vr = &P.v[((b * T + j) * Hkv + g) * D];
          for (int64_t c = 0; c < D; c++) o[c] += p * vr[c];
        }
        lse[(b * Hq + h) * T + t] = m + std::log(l);
      }
}

// float64 backward from the exact out and lse
void ref_backward(const Problem& P, const std::vector<double>& out, const std::vector<double>& lse,
                  std::vector<double>& dq, std::vector<double>& dk, std::vector<double>& dv) {
  const int64_t B = P.B, T = P.T, Hq = P.Hq, Hkv = P.Hkv, D = P.D, G = Hq / Hkv;
  dq.assign(B * T * Hq * D, 0.0);
  dk.assign(B * T * Hkv * D, 0.0);
  dv.assign(B * T * Hkv * D, 0.0);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++)
      for (int64_t t = 0; t < T; t++) {
        const int64_t g = h / G, st = P.start(b, t), row = (b * T + t) * Hq + h;
        const float* qr = &P.q[row * D];
        const float* dor = &P.dout[row * D];
        double delta = 0;
        for (int64_t c = 0; c < D; c++) delta += dor[c] * out[row * D + c];
        for (int64_t j = st; j <= t; j++) {
          const int64_t kv = ((b * T + j) * Hkv + g) * D;
          double qk = 0, dov = 0;
          for (int64_t c = 0; c < D; c++) qk += static_cast<double>(qr[c]) * P.k[kv + c], dov += static_cast<double>(dor[c]) * P.v[kv + c];
          const double p = std::exp(qk * P.scale - lse[(b * Hq + h) * T + t]);
          const double ds = p * (dov - delta) * P.scale;
          for (int64_t c = 0; c < D; c++) {
            dq[row * D + c] += ds * P.k[kv + c];
            dk[kv + c] += ds * qr[c];
            dv[kv + c] += p * dor[c];
          }
        }
      }
}

std::vector<float> to_f32(const std::vector<double>& x) { return std::vector<float>(x.begin(), x.end()); }

std::string name_of(const char* op, const Problem& P, const char* sched) {
  char buf[200], win[32] = "";
  if (P.W > 0) std::snprintf(win, sizeof win, " window=%lld", (long long)P.W);
  std::snprintf(buf, sizeof buf, "%s B=%lld T=%lld Hq=%lld Hkv=%lld D=%lld %s%s%s", op, (long long)P.B, (long long)P.T,
                (long long)P.Hq, (long long)P.Hkv, (long long)P.D, P.seg.empty() ? "dense" : "segments", win, sched);
  return buf;
}

const char* sched_name(int s) {
  static const char* names[] = {"", " [reverse schedule]", " [random schedule]", " [run-ahead schedule]",
                                " [reverse run-ahead schedule]"};
  return names[s];
}

void train_case(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, bool segs, int sched, int64_t window = 0) {
  tbemu::set_schedule(sched, static_cast<unsigned>(T * 131 + D));
  Problem P{B, T, Hq, Hkv, D, segs ? make_segments(B, T) : std::vector<int32_t>{}, randv(B * T * Hq * D),
            randv(B * T * Hkv * D), randv(B * T * Hkv * D), randv(B * T * Hq * D), 1.0f / std::sqrt(static_cast<float>(D)), window};
  std::vector<double> out, lse, dq, dk, dv;
  ref_forward(P, out, lse);
  ref_backward(P, out, lse, dq, dk, dv);
  const int32_t* seg = segs ? P.seg.data() : nullptr;
  // forward: out and lse start as NaN (written, not accumulated)
  {
    std::vector<float> o(out.size(), NAN), l(lse.size(), NAN);
    const char* thrown = nullptr;
    std::string why;
    try {
      tb::cuda::attention_forward(P.q.data(), P.k.data(), P.v.data(), o.data(), l.data(), B, T, Hq, Hkv, D, P.scale, seg, window);
    } catch (const std::exception& e) { why = e.what(); thrown = why.c_str(); }
    verdict(name_of("forward ", P, sched_name(sched)), {{"out", rel_err(out, o.data(), o.size())}, {"lse", rel_err(lse, l.data(), l.size())}},
            tbemu::take_errors(), thrown);
  }
  // backward from the (float-rounded) exact out and lse
  {
    const std::vector<float> of = to_f32(out), lf = to_f32(lse);
    std::vector<float> gq(dq.size(), NAN), gk(dk.size(), NAN), gv(dv.size(), NAN);
    const char* thrown = nullptr;
    std::string why;
    try {
      tb::cuda::attention_backward(P.dout.data(), P.q.data(), P.k.data(), P.v.data(), of.data(), lf.data(), gq.data(),
                                   gk.data(), gv.data(), B, T, Hq, Hkv, D, P.scale, seg, window);
    } catch (const std::exception& e) { why = e.what(); thrown = why.c_str(); }
    verdict(name_of("backward", P, sched_name(sched)),
            {{"dq", rel_err(dq, gq.data(), gq.size(), window == 1 ? 1.0 : 0.01)},
             {"dk", rel_err(dk, gk.data(), gk.size(), window == 1 ? 1.0 : 0.01)}, {"dv", rel_err(dv, gv.data(), gv.size())}},
            tbemu::take_errors(), thrown);
  }
}

void decode_case(int64_t B, int64_t L, int64_t Hq, int64_t Hkv, int64_t D, int sched, int64_t window = 0) {
  tbemu::set_schedule(sched, static_cast<unsigned>(L * 7 + D));
  const int64_t Tmax = L + 5, G = Hq / Hkv, first = window > 0 && L > window ? L - window : 0;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  std::vector<float> q = randv(B * Hq * D), kc = randv(B * Tmax * Hkv * D), vc = randv(B * Tmax * Hkv * D);
  for (int64_t b = 0; b < B; b++)  // cache rows past L, and before the window, must never be read
    for (int64_t j = 0; j < Tmax; j++)
      if (j >= L || j < first)
        for (int64_t x = 0; x < Hkv * D; x++) kc[(b * Tmax + j) * Hkv * D + x] = vc[(b * Tmax + j) * Hkv * D + x] = NAN;
  std::vector<double> ref(B * Hq * D, 0.0);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < Hq; h++) {
      std::vector<double> s(L);
      double m = -INFINITY, l = 0;
      for (int64_t j = first; j < L; j++) {
        double d = 0;
        for (int64_t c = 0; c < D; c++) d += static_cast<double>(q[(b * Hq + h) * D + c]) * kc[((b * Tmax + j) * Hkv + h / G) * D + c];
        s[j] = d * scale;
        m = std::max(m, s[j]);
      }
      for (int64_t j = first; j < L; j++) l += std::exp(s[j] - m);
      for (int64_t j = first; j < L; j++)
        for (int64_t c = 0; c < D; c++)
          ref[(b * Hq + h) * D + c] += std::exp(s[j] - m) / l * vc[((b * Tmax + j) * Hkv + h / G) * D + c];
    }
  std::vector<float> out(ref.size(), NAN);
  const char* thrown = nullptr;
  std::string why;
  try {
    tb::cuda::attention_decode(B, Hq, Hkv, D, Tmax, L, scale, q.data(), kc.data(), vc.data(), out.data(), window);
  } catch (const std::exception& e) { why = e.what(); thrown = why.c_str(); }
  char buf[160];
  std::snprintf(buf, sizeof buf, "decode   B=%lld L=%lld Tmax=%lld Hq=%lld Hkv=%lld D=%lld window=%lld%s", (long long)B,
                (long long)L, (long long)Tmax, (long long)Hq, (long long)Hkv, (long long)D, (long long)window, sched_name(sched));
  verdict(buf, {{"out", rel_err(ref, out.data(), out.size())}}, tbemu::take_errors(), thrown);
}

// D above kAttentionMaxHeadDim is refused with a DeviceError before any launch.
void head_dim_limit_case() {
  std::vector<float> x(257 * 2, 0.0f), o(257 * 2), l(2);
  bool threw = false;
  try {
    tb::cuda::attention_forward(x.data(), x.data(), x.data(), o.data(), l.data(), 1, 2, 1, 1, 257, 1.0f, nullptr);
  } catch (const tb::DeviceError&) { threw = true; }
  (threw ? passes : fails)++;
  std::printf("%s forward D=257 throws DeviceError\n", threw ? "ok  " : "FAIL");
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
  const struct { int64_t Hq, Hkv; } heads[] = {{4, 2}, {3, 3}};  // GQA, MHA
  for (int64_t T : {1, 7, 33, 127})
    for (int64_t D : {16, 40, 64, 128})
      for (auto hd : heads)
        for (bool segs : {false, true}) {
          if (quick && (T == 127 || D == 128)) continue;
          train_case(2, T, hd.Hq, hd.Hkv, D, segs, tbemu::kForward);
        }
  // the other head-dim variants (DPL 1 at its edge, DPL 8) and MQA
  train_case(2, 45, 2, 2, 32, true, tbemu::kForward);
  train_case(1, 70, 8, 1, 256, true, tbemu::kForward);
  train_case(1, 50, 4, 2, 200, false, tbemu::kForward);
  // other schedules: a missing barrier or a block depending on another changes the result
  for (int sched : {tbemu::kReverse, tbemu::kRandom, tbemu::kRunAhead, tbemu::kRunAheadReverse}) {
    train_case(2, 33, 4, 2, 40, true, sched);
    train_case(1, 100, 4, 2, 64, true, sched);
    train_case(2, 20, 3, 3, 16, false, sched);
  }
  for (int64_t L : {1, 7, 33, 127, 300})
    for (int64_t D : {16, 40, 64, 128})
      for (auto hd : heads) {
        if (quick && (L == 300 || D == 128)) continue;
        decode_case(2, L, hd.Hq, hd.Hkv, D, tbemu::kForward);
      }
  decode_case(1, 129, 8, 1, 256, tbemu::kForward);
  decode_case(2, 77, 4, 2, 40, tbemu::kReverse);
  decode_case(2, 77, 4, 2, 40, tbemu::kRandom);
  decode_case(2, 77, 4, 2, 40, tbemu::kRunAhead);
  decode_case(2, 77, 4, 2, 40, tbemu::kRunAheadReverse);
  // sliding windows (Mistral): windows shorter and longer than a tile, with and
  // without segments, under two schedules; decode over the last W cached keys
  for (int64_t W : {1, 5, 20, 40})
    for (bool segs : {false, true}) {
      train_case(2, 77, 4, 2, 40, segs, tbemu::kForward, W);
      if (!quick) train_case(1, 100, 3, 3, 64, segs, tbemu::kRandom, W);
    }
  for (int64_t W : {1, 9, 33, 100}) {
    decode_case(2, 77, 4, 2, 40, tbemu::kForward, W);
    decode_case(1, 130, 8, 1, 64, tbemu::kRandom, W);
  }
  head_dim_limit_case();
  std::printf("%d passed, %d failed (%ld kernel launches emulated)\n", passes, fails, tbemu::S.launches);
  return fails != 0;
}
