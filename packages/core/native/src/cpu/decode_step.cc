// One decode step of a LLaMA block in one native call (batch 1, one token),
// so a generated token costs a few calls instead of ~25 ops each allocating
// its output. Every buffer is the caller's: the residual x (updated in place),
// the KV cache and a scratch tensor kept across tokens.
//
//   h   = rmsnorm(x) * ln1
//   q, k, v = h Wq^T, h Wk^T, h Wv^T             (decode GEMV, decode.h)
//   rope(q), rope(k) at `pos`; k, v -> cache row pos
//   a   = softmax(scale * q . K[0..pos]) V[0..pos]  per head (GQA)
//   x  += a Wo^T
//   h   = rmsnorm(x) * ln2
//   x  += (silu(h Wg^T) * (h Wu^T)) Wd^T
//
// The formulas are those of the separate ops (rmsnorm.cc, rope.cc with the
// Hugging Face rotate-half convention, attention_decode.cc, swiglu.cc); sums
// run in another order, so results agree to float rounding, not bit for bit.
// decode_head: the final norm and the LM head, logits written.
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "args.h"
#include "decode.h"
#include "fast_exp.h"
#include "operand.h"
#include "registry.h"
#include "storage.h"
#include "tensor.h"

namespace tb {
namespace {

// y = (x * rstd) * w, w f32 or bf16
void rmsnorm_row(int64_t C, const float* x, const TensorArg& w, float eps, float* y) {
  float lane[16] = {};
  int64_t c = 0;
  for (; c + 16 <= C; c += 16)
    for (int l = 0; l < 16; l++) lane[l] += x[c + l] * x[c + l];
  float ss = 0.0f;
  for (int l = 0; l < 16; l++) ss += lane[l];
  for (; c < C; c++) ss += x[c] * x[c];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
  if (w.dtype == DType::BF16) {
    const uint16_t* wv = w.as<uint16_t>();
    for (int64_t i = 0; i < C; i++) y[i] = (x[i] * r) * bf16_to_f32(wv[i]);
  } else {
    const float* wv = w.f32();
    for (int64_t i = 0; i < C; i++) y[i] = (x[i] * r) * wv[i];
  }
}

// rotate-half RoPE of H heads of D at one position, in place
void rope_heads(float* x, int64_t H, int64_t D, int32_t pos, float theta, float* cs) {
  const int64_t h = D / 2;
  const float p = static_cast<float>(pos);
  for (int64_t i = 0; i < h; i++) {
    const float inv = 1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(D));
    const double a = static_cast<double>(p * inv);
    cs[i] = static_cast<float>(std::cos(a));
    cs[h + i] = static_cast<float>(std::sin(a));
  }
  for (int64_t hd = 0; hd < H; hd++) {
    float* r = x + hd * D;
    for (int64_t i = 0; i < h; i++) {
      const float a = r[i], b = r[i + h];
      r[i] = a * cs[i] - b * cs[h + i];
      r[i + h] = b * cs[i] + a * cs[h + i];
    }
  }
}

// out [Hq, D] = attention of q [Hq, D] over cache rows [0, L) ([Tmax, Hkv, D])
void attend(int64_t Hq, int64_t Hkv, int64_t D, int64_t L, float scale, const float* q, const float* kc, const float* vc,
            float* s, float* out) {
  const int64_t group = Hq / Hkv;
  for (int64_t h = 0; h < Hq; h++) {
    const int64_t kvh = h / group;
    const float* qv = q + h * D;
    float m = -INFINITY;
    for (int64_t j = 0; j < L; j++) {
      const float* k = kc + (j * Hkv + kvh) * D;
      // 16 partial sums (a vector's lanes), not one serial chain of D adds
      float part[16] = {};
      int64_t d = 0;
      for (; d + 16 <= D; d += 16)
        for (int i = 0; i < 16; i++) part[i] += qv[d + i] * k[d + i];
      float dot = 0.0f;
      for (; d < D; d++) dot += qv[d] * k[d];
      for (int i = 0; i < 16; i++) dot += part[i];
      s[j] = dot * scale;
      m = s[j] > m ? s[j] : m;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < L; j++) { s[j] = std::exp(s[j] - m); sum += s[j]; }
    float* o = out + h * D;
    for (int64_t d = 0; d < D; d++) o[d] = 0.0f;
    for (int64_t j = 0; j < L; j++) {
      const float pj = static_cast<float>(s[j] / sum);
      const float* v = vc + (j * Hkv + kvh) * D;
      for (int64_t d = 0; d < D; d++) o[d] += pj * v[d];
    }
  }
}

// g = silu(g) * u, sigmoid from exp(-|g|) as swiglu.cc
void swiglu_inplace(int64_t n, float* g, const float* u) {
  for (int64_t i = 0; i < n; i++) {
    const float e = fast_expf(-std::fabs(g[i]));
    const float s = g[i] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    g[i] = g[i] * s * u[i];
  }
}

void gemv(const WeightOperand& w, int64_t out, int64_t in, const float* x, float* y, float beta, DecodeAct act) {
  decode_gemv(1, out, in, 1.0f, x, in, w.mat(in, true), beta, y, out, DecodeIsa::Best, act);
}

TensorArg norm_weight(const Napi::CallbackInfo& info, size_t i, const char* fn, const char* name, int64_t C) {
  TensorArg t = tensor_arg(info, i, fn, name, static_cast<size_t>(C), DType::F32, true);
  if (t.dtype != DType::F32 && t.dtype != DType::BF16) throw arg_error(info, fn, std::string("'") + name + "' must be f32 or bf16");
  return t;
}

struct BlockDims {
  int64_t C, I, Hq, Hkv, D, Tmax;
  float eps, theta, scale;
  DecodeAct act;
};

// One block's step for the token at `pos` (see the top of the file); x [C]
// is updated in place, scratch holds C + 2 Q + 2 I + Tmax + D floats.
void run_block(const BlockDims& d, float* xv, const TensorArg& ln1, const TensorArg& ln2, const WeightOperand& wq, const WeightOperand& wk,
               const WeightOperand& wv, const WeightOperand& wo, const WeightOperand& wg, const WeightOperand& wu, const WeightOperand& wd,
               float* kc, float* vc, float* scratch, int64_t pos) {
  const int64_t C = d.C, I = d.I, Q = d.Hq * d.D, KV = d.Hkv * d.D;
  float* h = scratch;                 // [C] normed input (also the MLP's)
  float* q = h + C;                   // [Q]
  float* att = q + Q;                 // [Q]
  float* g = att + Q;                 // [I]
  float* u = g + I;                   // [I]
  float* s = u + I;                   // [Tmax] scores
  float* cs = s + d.Tmax;             // [D] cos, sin
  float* krow = kc + pos * KV;        // the token's cache rows
  float* vrow = vc + pos * KV;
  rmsnorm_row(C, xv, ln1, d.eps, h);
  gemv(wq, Q, C, h, q, 0.0f, d.act);
  gemv(wk, KV, C, h, krow, 0.0f, d.act);
  gemv(wv, KV, C, h, vrow, 0.0f, d.act);
  rope_heads(q, d.Hq, d.D, static_cast<int32_t>(pos), d.theta, cs);
  rope_heads(krow, d.Hkv, d.D, static_cast<int32_t>(pos), d.theta, cs);
  attend(d.Hq, d.Hkv, d.D, pos + 1, d.scale, q, kc, vc, s, att);
  gemv(wo, C, Q, att, xv, 1.0f, d.act);  // x += a Wo^T
  rmsnorm_row(C, xv, ln2, d.eps, h);
  gemv(wg, I, C, h, g, 0.0f, d.act);
  gemv(wu, I, C, h, u, 0.0f, d.act);
  swiglu_inplace(I, g, u);
  gemv(wd, C, I, g, xv, 1.0f, d.act);  // x += m Wd^T
}

// The head: logits [V] = rmsnorm(x [C]) * norm . W^T, the normed row in
// x + C; returns the index of the largest logit (the first on ties; NaN
// never wins).
int64_t run_head(int64_t C, int64_t V, float eps, DecodeAct act, float* x, const TensorArg& norm, const WeightOperand& w, float* l) {
  float* h = x + C;
  rmsnorm_row(C, x, norm, eps, h);
  gemv(w, V, C, h, l, 0.0f, act);
  int64_t best = 0;
  for (int64_t i = 1; i < V; i++) if (l[i] > l[best]) best = i;
  return best;
}

}  // namespace

DecodeAct decode_act_arg(const Napi::CallbackInfo& info, size_t i, const char* fn);  // decode_gemv.cc

// decode_block(x, ln1, ln2, Wq, Wk, Wv, Wo, Wg, Wu, Wd, kc, vc, scratch,
//              C, I, Hq, Hkv, D, Tmax, pos, eps, theta, scale, activations?)
//   x [C] f32 (the residual, updated in place); kc, vc [Tmax, Hkv, D] (one
//   sequence); the token's k, v are written at row pos and attention runs
//   over rows 0..pos; scratch f32 of at least decode_block_scratch floats.
static Napi::Value DecodeBlockBinding(const Napi::CallbackInfo& info) {
  const char* fn = "decode_block";
  const int64_t C = int_arg(info, 13, fn, "C", 1), I = int_arg(info, 14, fn, "I", 1);
  const int64_t Hq = int_arg(info, 15, fn, "Hq", 1), Hkv = int_arg(info, 16, fn, "Hkv", 1), D = int_arg(info, 17, fn, "D", 2);
  const int64_t Tmax = int_arg(info, 18, fn, "Tmax", 1), pos = int_arg(info, 19, fn, "pos", 0);
  const float eps = static_cast<float>(num_arg(info, 20, fn, "eps"));
  const float theta = static_cast<float>(num_arg(info, 21, fn, "theta"));
  const float scale = static_cast<float>(num_arg(info, 22, fn, "scale"));
  const DecodeAct act = decode_act_arg(info, 23, fn);  // 'f32' (default) or 'i16': see decode.h
  if (Hq % Hkv != 0) throw arg_error(info, fn, "Hq must be a multiple of Hkv");
  if (D % 2 != 0) throw arg_error(info, fn, "the head dim D must be even (rotary pairs)");
  if (pos >= Tmax) throw arg_error(info, fn, "pos " + std::to_string(pos) + " is past the cache length " + std::to_string(Tmax));
  const int64_t Q = Hq * D, KV = Hkv * D;
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(C), DType::F32);
  TensorArg ln1 = norm_weight(info, 1, fn, "ln1", C), ln2 = norm_weight(info, 2, fn, "ln2", C);
  WeightOperand wq = weight_arg(info, 3, fn, "Wq", Q, C, -1, nullptr, true), wk = weight_arg(info, 4, fn, "Wk", KV, C, -1, nullptr, true);
  WeightOperand wv = weight_arg(info, 5, fn, "Wv", KV, C, -1, nullptr, true), wo = weight_arg(info, 6, fn, "Wo", C, Q, -1, nullptr, true);
  WeightOperand wg = weight_arg(info, 7, fn, "Wg", I, C, -1, nullptr, true), wu = weight_arg(info, 8, fn, "Wu", I, C, -1, nullptr, true);
  WeightOperand wd = weight_arg(info, 9, fn, "Wd", C, I, -1, nullptr, true);
  TensorArg kc = tensor_arg(info, 10, fn, "kc", static_cast<size_t>(Tmax * KV), DType::F32);
  TensorArg vc = tensor_arg(info, 11, fn, "vc", static_cast<size_t>(Tmax * KV), DType::F32);
  const int64_t need = C + 2 * Q + 2 * I + Tmax + D;
  TensorArg scratch = tensor_arg(info, 12, fn, "scratch", static_cast<size_t>(need), DType::F32);
  return guarded(info, [&]() -> Napi::Value {
    const BlockDims d{C, I, Hq, Hkv, D, Tmax, eps, theta, scale, act};
    run_block(d, x.f32(), ln1, ln2, wq, wk, wv, wo, wg, wu, wd, kc.f32(), vc.f32(), scratch.f32(), pos);
    return info.Env().Undefined();
  });
}

// decode_head(x, norm, W, logits, C, V, eps, activations?): logits [V] = rmsnorm(x) * norm . W^T,
// W [V, C] (the LM head or the tied embedding); x is left unchanged. Returns
// the index of the largest logit (the first one on ties; NaN never wins).
static Napi::Value DecodeHeadBinding(const Napi::CallbackInfo& info) {
  const char* fn = "decode_head";
  const int64_t C = int_arg(info, 4, fn, "C", 1), V = int_arg(info, 5, fn, "V", 1);
  const float eps = static_cast<float>(num_arg(info, 6, fn, "eps"));
  const DecodeAct act = decode_act_arg(info, 7, fn);
  TensorArg x = tensor_arg(info, 0, fn, "x", static_cast<size_t>(2 * C), DType::F32);
  TensorArg norm = norm_weight(info, 1, fn, "norm", C);
  WeightOperand w = weight_arg(info, 2, fn, "W", V, C, -1, nullptr, true);
  TensorArg logits = tensor_arg(info, 3, fn, "logits", static_cast<size_t>(V), DType::F32);
  int64_t best = 0;
  guarded(info, [&]() -> Napi::Value {
    best = run_head(C, V, eps, act, x.f32(), norm, w, logits.f32());
    return info.Env().Undefined();
  });
  return Napi::Number::New(info.Env(), static_cast<double>(best));
}

// ---- a whole decode step in one call: the plan ----
//
// decode_plan(blocks, x, scratch, logits, norm, head, C, I, Hq, Hkv, D, Tmax,
//             V, eps, theta, scale, activations?) parses every operand once
// (blocks: one [ln1, ln2, Wq, Wk, Wv, Wo, Wg, Wu, Wd, kc, vc] per layer; the
// rest as decode_block and decode_head take them) and returns a handle;
// decode_plan_step(plan, pos) then runs every block and the head for the
// token in x at `pos` and returns the argmax, with no argument to parse
// (reading a SmolLM-135M step's 211 weight operands cost about a tenth of
// the step). The plan holds a reference to the storage of every tensor it
// reads, so none of it can go away under it; a tensor disposed since is
// named in an error. decode_plan_release(plan) drops the references (also
// done when the handle is collected).
namespace {

struct DecodePlan {
  struct Block {
    TensorArg ln1, ln2, kc, vc;
    WeightOperand w[7];
  };
  std::vector<std::pair<Storage*, std::string>> held;
  std::vector<std::unique_ptr<Block>> blocks;
  BlockDims d{};
  int64_t V = 0;
  TensorArg x, scratch, logits, norm;
  std::unique_ptr<WeightOperand> head;
  bool released = false;
  void release() {
    if (released) return;
    for (auto& h : held) h.first->release();
    held.clear();
    released = true;
  }
  ~DecodePlan() { release(); }
};

// Takes a reference on the storage of tensor `v`, or of each tensor field of
// quantized weight object `v`.
void hold_storages(DecodePlan& plan, Napi::Value v, const std::string& name) {
  auto take = [&](Napi::Value t, const std::string& n) {
    NativeTensor* nt = NativeTensor::From(t);
    if (!nt) return;
    Storage* s = nt->storage();
    s->refs++;
    plan.held.emplace_back(s, n);
  };
  if (NativeTensor::IsTensor(v)) { take(v, name); return; }
  if (!v.IsObject()) return;
  const Napi::Object o = v.As<Napi::Object>();
  for (const char* k : {"codes", "scales", "offsets", "constants16", "packed", "absmax", "dqCodes", "dqScales"}) {
    const Napi::Value f = o.Get(k);
    if (!f.IsUndefined() && !f.IsNull()) take(f, name + "." + k);
  }
}

TensorArg norm_value(const Napi::CallbackInfo& info, Napi::Value v, const char* fn, const std::string& name, int64_t C) {
  TensorArg t = tensor_value_any_device(info, v, fn, name.c_str(), static_cast<size_t>(C), DType::F32, true);
  if (t.dev != Device::CPU) throw arg_error(info, fn, "'" + name + "' is not on the CPU");
  if (t.dtype != DType::F32 && t.dtype != DType::BF16) throw arg_error(info, fn, "'" + name + "' must be f32 or bf16");
  return t;
}

TensorArg cpu_value(const Napi::CallbackInfo& info, Napi::Value v, const char* fn, const std::string& name, size_t n) {
  TensorArg t = tensor_value_any_device(info, v, fn, name.c_str(), n, DType::F32);
  if (t.dev != Device::CPU) throw arg_error(info, fn, "'" + name + "' is not on the CPU");
  return t;
}

void finalize_plan(Napi::Env, DecodePlan* p) { delete p; }

DecodePlan* plan_arg(const Napi::CallbackInfo& info, const char* fn) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw arg_error(info, fn, "plan must be a handle from decode_plan");
  DecodePlan* p = info[0].As<Napi::External<DecodePlan>>().Data();
  if (!p || p->released) throw arg_error(info, fn, "this plan was released (make a new one)");
  return p;
}

}  // namespace

static Napi::Value DecodePlanBinding(const Napi::CallbackInfo& info) {
  const char* fn = "decode_plan";
  if (info.Length() < 1 || !info[0].IsArray()) throw arg_error(info, fn, "blocks must be an array of [ln1, ln2, Wq, Wk, Wv, Wo, Wg, Wu, Wd, kc, vc]");
  const int64_t C = int_arg(info, 6, fn, "C", 1), I = int_arg(info, 7, fn, "I", 1);
  const int64_t Hq = int_arg(info, 8, fn, "Hq", 1), Hkv = int_arg(info, 9, fn, "Hkv", 1), D = int_arg(info, 10, fn, "D", 2);
  const int64_t Tmax = int_arg(info, 11, fn, "Tmax", 1), V = int_arg(info, 12, fn, "V", 1);
  const float eps = static_cast<float>(num_arg(info, 13, fn, "eps"));
  const float theta = static_cast<float>(num_arg(info, 14, fn, "theta"));
  const float scale = static_cast<float>(num_arg(info, 15, fn, "scale"));
  const DecodeAct act = decode_act_arg(info, 16, fn);
  if (Hq % Hkv != 0) throw arg_error(info, fn, "Hq must be a multiple of Hkv");
  if (D % 2 != 0) throw arg_error(info, fn, "the head dim D must be even (rotary pairs)");
  const int64_t Q = Hq * D, KV = Hkv * D;
  auto plan = std::make_unique<DecodePlan>();
  plan->d = BlockDims{C, I, Hq, Hkv, D, Tmax, eps, theta, scale, act};
  plan->V = V;
  const Napi::Array blocks = info[0].As<Napi::Array>();
  static const char* const kW[7] = {"Wq", "Wk", "Wv", "Wo", "Wg", "Wu", "Wd"};
  const int64_t rows[7] = {Q, KV, KV, C, I, I, C}, cols[7] = {C, C, C, Q, C, C, I};
  for (uint32_t b = 0; b < blocks.Length(); b++) {
    const std::string at = "blocks[" + std::to_string(b) + "]";
    const Napi::Value e = blocks.Get(b);
    if (!e.IsArray() || e.As<Napi::Array>().Length() != 11) throw arg_error(info, fn, at + " must be [ln1, ln2, Wq, Wk, Wv, Wo, Wg, Wu, Wd, kc, vc]");
    const Napi::Array a = e.As<Napi::Array>();
    auto blk = std::make_unique<DecodePlan::Block>();
    blk->ln1 = norm_value(info, a.Get(0u), fn, at + ".ln1", C);
    blk->ln2 = norm_value(info, a.Get(1u), fn, at + ".ln2", C);
    for (uint32_t j = 0; j < 7; j++) {
      const std::string n = at + "." + kW[j];
      blk->w[j] = weight_value(info, a.Get(2 + j), SIZE_MAX, fn, n.c_str(), rows[j], cols[j], -1, nullptr, true);
    }
    blk->kc = cpu_value(info, a.Get(9u), fn, at + ".kc", static_cast<size_t>(Tmax * KV));
    blk->vc = cpu_value(info, a.Get(10u), fn, at + ".vc", static_cast<size_t>(Tmax * KV));
    static const char* const kAll[11] = {"ln1", "ln2", "Wq", "Wk", "Wv", "Wo", "Wg", "Wu", "Wd", "kc", "vc"};
    for (uint32_t j = 0; j < 11; j++) hold_storages(*plan, a.Get(j), at + "." + kAll[j]);
    plan->blocks.push_back(std::move(blk));
  }
  plan->x = cpu_value(info, info[1], fn, "x", static_cast<size_t>(2 * C));
  plan->scratch = cpu_value(info, info[2], fn, "scratch", static_cast<size_t>(C + 2 * Q + 2 * I + Tmax + D));
  plan->logits = cpu_value(info, info[3], fn, "logits", static_cast<size_t>(V));
  plan->norm = norm_value(info, info[4], fn, "norm", C);
  plan->head = std::make_unique<WeightOperand>(weight_value(info, info[5], 5, fn, "head", V, C, -1, nullptr, true));
  const char* const kRest[5] = {"x", "scratch", "logits", "norm", "head"};
  for (uint32_t j = 0; j < 5; j++) hold_storages(*plan, info[1 + j], kRest[j]);
  return Napi::External<DecodePlan>::New(info.Env(), plan.release(), finalize_plan);
}

static Napi::Value DecodePlanStepBinding(const Napi::CallbackInfo& info) {
  const char* fn = "decode_plan_step";
  DecodePlan* p = plan_arg(info, fn);
  const int64_t pos = int_arg(info, 1, fn, "pos", 0);
  if (pos >= p->d.Tmax) throw arg_error(info, fn, "pos " + std::to_string(pos) + " is past the cache length " + std::to_string(p->d.Tmax));
  for (const auto& h : p->held)
    if (h.first->freed) throw arg_error(info, fn, "'" + h.second + "' was disposed after the plan was made (make a new one)");
  int64_t best = 0;
  guarded(info, [&]() -> Napi::Value {
    float* x = p->x.f32();
    for (const auto& b : p->blocks)
      run_block(p->d, x, b->ln1, b->ln2, b->w[0], b->w[1], b->w[2], b->w[3], b->w[4], b->w[5], b->w[6], b->kc.f32(), b->vc.f32(), p->scratch.f32(), pos);
    best = run_head(p->d.C, p->V, p->d.eps, p->d.act, x, p->norm, *p->head, p->logits.f32());
    return info.Env().Undefined();
  });
  return Napi::Number::New(info.Env(), static_cast<double>(best));
}

static Napi::Value DecodePlanReleaseBinding(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal()) throw arg_error(info, "decode_plan_release", "plan must be a handle from decode_plan");
  DecodePlan* p = info[0].As<Napi::External<DecodePlan>>().Data();
  if (p) p->release();
  return info.Env().Undefined();
}

static void register_decode_step(Napi::Env env, Napi::Object exports) {
  exports.Set("decode_block", Napi::Function::New(env, DecodeBlockBinding));
  exports.Set("decode_head", Napi::Function::New(env, DecodeHeadBinding));
  exports.Set("decode_plan", Napi::Function::New(env, DecodePlanBinding));
  exports.Set("decode_plan_step", Napi::Function::New(env, DecodePlanStepBinding));
  exports.Set("decode_plan_release", Napi::Function::New(env, DecodePlanReleaseBinding));
}
TB_REGISTER_OPS(decode_step, register_decode_step);

}  // namespace tb
