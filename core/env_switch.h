// A 0/1 switch read from the environment (QWENQ_WGMMA, QWENQ_DECODE_MMA, QWENQ_QGEMM_DENSE, QWENQ_GPTQ_TRACE):
// 0 or 1 when the variable is exactly "0" or "1", -1 when it is unset or anything else (the default applies).
// Read at each call: tests set and unset the variables.
#pragma once

#include <cstdint>

namespace qwenq {

int env_switch(const char* name);

// An integer setting from the environment (QWENQ_LOGITS_CHUNK): `fallback` when the variable is unset or empty,
// else its decimal value, which must lie in [lo, hi] (qwenq::Error naming the variable, its text and the range
// otherwise: a mistyped tuning knob is not silently ignored). Read at each call.
int64_t env_int(const char* name, int64_t fallback, int64_t lo, int64_t hi);

}  // namespace qwenq
