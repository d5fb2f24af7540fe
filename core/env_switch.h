// A 0/1 switch read from the environment (QWENQ_WGMMA, QWENQ_DECODE_MMA, QWENQ_QGEMM_DENSE, QWENQ_GPTQ_TRACE):
// 0 or 1 when the variable is exactly "0" or "1", -1 when it is unset or anything else (the default applies).
// Read at each call: tests set and unset the variables.
#pragma once

namespace qwenq {

int env_switch(const char* name);

}  // namespace qwenq
