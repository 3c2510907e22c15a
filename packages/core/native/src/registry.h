// Each op family file registers its bindings here from a static initializer,
// so adding an op never edits addon.cc.
#pragma once
#include <napi.h>
#include <utility>
#include <vector>

namespace tb {
using Registrar = void (*)(Napi::Env, Napi::Object);
std::vector<std::pair<const char*, Registrar>>& op_registry();
struct OpRegistration {
  OpRegistration(const char* family, Registrar fn) { op_registry().emplace_back(family, fn); }
};
}  // namespace tb

#define TB_REGISTER_OPS(family, fn) static ::tb::OpRegistration tb_registration_##family(#family, fn)
