#include "quant/nf4_checkpoint.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/files.h"
#include "quant/format/nf4_pack.h"

namespace qwenq {

namespace {

using Json = nlohmann::json;

bool known_dtype(const std::string& d) { return d == "bfloat16" || d == "float16" || d == "float32"; }

// At most the first 200 bytes of `text`, control and non-ASCII bytes as \xNN: a zero-filled or binary quant_state
// (an interrupted download) is shown as what it is, not as NULs the terminal hides or megabytes of bytes.
std::string excerpt(const std::string& text) {
  static const size_t kMax = 200;
  std::string out;
  for (size_t i = 0; i < text.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\x%02X", c);
      out += hex;
    }
  }
  if (text.size() > kMax) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

// Where tensors come from: a Checkpoint directory or one safetensors file.
struct Source {
  std::function<bool(const std::string&)> has;
  std::function<const TensorView&(const std::string&)> get;
  std::function<std::string(const std::string&)> file;  // the file holding an existing tensor
  std::string where;                                     // the checkpoint, for tensors that are missing
};

class LayerReader {
 public:
  LayerReader(const Source& src, const std::string& prefix) : src_(src), prefix_(prefix) {}

  [[noreturn]] void fail(const std::string& name, const std::string& msg) const {
    QWENQ_FAIL("bnb 4-bit layer '" << prefix_ << "': tensor '" << name << "' in "
                                   << (src_.has(name) ? src_.file(name) : src_.where) << " " << msg);
  }

  const TensorView& need(const std::string& name, const std::string& why) const {
    if (!src_.has(name)) fail(name, "is missing (" + why + ")");
    return src_.get(name);
  }

  // The tensor with exactly this dtype and shape.
  const TensorView& expect(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                           const std::string& why) const {
    const TensorView& v = need(name, why);
    if (v.dtype != dtype || v.shape != shape)
      fail(name, std::string("is ") + dtype_name(v.dtype) + " " + shape_str(v.shape) + ", expected " +
                     dtype_name(dtype) + " " + shape_str(shape) + " (" + why + ")");
    return v;
  }

 private:
  const Source& src_;
  std::string prefix_;
};

int64_t json_int(const Json& j, const char* key, const LayerReader& r, const std::string& qs_name) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer())
    r.fail(qs_name, std::string("has no integer \"") + key + "\" (quant_state JSON: " + j.dump() + ")");
  return it->get<int64_t>();
}

std::string json_str(const Json& j, const char* key, const LayerReader& r, const std::string& qs_name) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string())
    r.fail(qs_name, std::string("has no string \"") + key + "\" (quant_state JSON: " + j.dump() + ")");
  return it->get<std::string>();
}

Nf4Linear read_layer(const Source& src, const std::string& prefix) {
  const LayerReader r(src, prefix);
  const std::string w_name = prefix + ".weight", base = w_name + ".";
  const std::string qs_nf4 = nf4_quant_state_name(prefix, false), qs_fp4 = nf4_quant_state_name(prefix, true);
  const bool has_nf4 = src.has(qs_nf4), has_fp4 = src.has(qs_fp4);
  if (has_nf4 == has_fp4)
    r.fail(qs_nf4, has_nf4 ? "and '" + qs_fp4 + "' are both present; bnb needs exactly one quant_state item"
                           : "is missing, and so is '" + qs_fp4 + "' (not a bnb 4-bit layer?)");
  const std::string qs_name = has_fp4 ? qs_fp4 : qs_nf4;

  // The JSON of the non-tensor fields.
  const TensorView& qs = r.need(qs_name, "quant_state JSON");
  if (qs.dtype != DType::U8 || qs.rank() != 1)
    r.fail(qs_name, std::string("is ") + dtype_name(qs.dtype) + " " + shape_str(qs.shape) + ", expected U8 [len]");
  const std::string text(static_cast<const char*>(qs.data), qs.nbytes());
  const Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) r.fail(qs_name, "does not hold a JSON object: '" + excerpt(text) + "'");
  static const char* kKeys[] = {"quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype",
                                "nested_offset"};
  for (const auto& kv : j.items()) {
    bool ok = false;
    for (const char* k : kKeys) ok = ok || kv.key() == k;
    if (!ok) r.fail(qs_name, "has the key \"" + kv.key() + "\", which bitsandbytes does not accept");
  }

  Nf4Linear out;
  Nf4Tensor& t = out.q;
  const std::string qt = json_str(j, "quant_type", r, qs_name);
  if (qt != (has_fp4 ? "fp4" : "nf4")) r.fail(qs_name, "says quant_type \"" + qt + "\", which its name contradicts");
  t.fp4 = has_fp4;
  t.blocksize = json_int(j, "blocksize", r, qs_name);
  out.dtype = json_str(j, "dtype", r, qs_name);
  if (!known_dtype(out.dtype)) r.fail(qs_name, "has dtype \"" + out.dtype + "\" (expected bfloat16, float16 or float32)");
  const auto sh = j.find("shape");
  if (sh == j.end() || !sh->is_array() || sh->size() != 2 || !(*sh)[0].is_number_integer() ||
      !(*sh)[1].is_number_integer() || (*sh)[0].get<int64_t>() <= 0 || (*sh)[1].get<int64_t>() <= 0)
    r.fail(qs_name, "needs \"shape\": [N, K] with positive N and K (quant_state JSON: " + j.dump() + ")");
  out.shape = {(*sh)[0].get<int64_t>(), (*sh)[1].get<int64_t>()};
  if (out.shape[0] > std::numeric_limits<int64_t>::max() / out.shape[1])  // N·K would wrap (to 0 for [2^32, 2^32])
    r.fail(qs_name, "has \"shape\": " + shape_str(out.shape) + ", more weights than a tensor can hold");
  t.n = out.shape[0] * out.shape[1];

  const std::string nested_name = base + "nested_absmax";
  t.double_quant = src.has(nested_name);
  const bool json_nested = j.contains("nested_offset") || j.contains("nested_blocksize") || j.contains("nested_dtype");
  if (json_nested != t.double_quant)
    r.fail(qs_name, t.double_quant ? "lacks the nested_* keys although '" + nested_name + "' exists"
                                   : "has nested_* keys but '" + nested_name + "' is missing");
  if (t.double_quant) {
    t.nested_blocksize = json_int(j, "nested_blocksize", r, qs_name);
    const std::string nd = json_str(j, "nested_dtype", r, qs_name);
    if (nd != "float32") r.fail(qs_name, "has nested_dtype \"" + nd + "\"; bnb writes float32");
    const auto off = j.find("nested_offset");
    if (off == j.end() || !off->is_number()) r.fail(qs_name, "has no numeric \"nested_offset\"");
    t.nested_offset = static_cast<float>(off->get<double>());  // bnb: torch.tensor(float(...)), float32
  }
  Nf4Options o;
  o.blocksize = t.blocksize;
  o.double_quant = t.double_quant;
  o.nested_blocksize = t.nested_blocksize;
  try {
    nf4_check_options(o, "quant_state");
  } catch (const Error& e) {
    r.fail(qs_name, std::string("is not readable: ") + e.what());
  }

  // The packed codes: any storage dtype of the right byte count, shaped [elements, 1].
  const int64_t bytes = nf4_packed_bytes(t.n), nb = t.num_blocks();
  const TensorView& wv = r.need(w_name, "packed 4-bit codes");
  if (wv.rank() != 2 || wv.shape[1] != 1 || static_cast<int64_t>(wv.nbytes()) != bytes)
    r.fail(w_name, std::string("is ") + dtype_name(wv.dtype) + " " + shape_str(wv.shape) + ", expected U8 [" +
                       std::to_string(bytes) + ", 1] for shape [" + std::to_string(out.shape[0]) + ", " +
                       std::to_string(out.shape[1]) + "]");
  const auto* wp = static_cast<const uint8_t*>(wv.data);
  t.packed.assign(wp, wp + bytes);
  release_mapped_pages(wp, bytes);  // the copy is what stays resident, not the file's pages too

  const std::string blocks_why = std::to_string(t.n) + " weights / blocksize " + std::to_string(t.blocksize);
  if (t.double_quant) {
    const TensorView& a = r.expect(base + "absmax", DType::U8, {nb}, blocks_why + ", double-quantized");
    const auto* ap = static_cast<const uint8_t*>(a.data);
    t.absmax_q.assign(ap, ap + nb);
    const int64_t nnb = t.num_nested_blocks();
    const TensorView& na = r.expect(nested_name, DType::F32, {nnb},
                                    std::to_string(nb) + " blocks / nested blocksize " + std::to_string(t.nested_blocksize));
    t.nested_absmax.resize(nnb);
    std::memcpy(t.nested_absmax.data(), na.data, nnb * sizeof(float));
    const TensorView& nq = r.expect(base + "nested_quant_map", DType::F32, {kDynamicMapSize}, "the dynamic map");
    t.nested_code.resize(kDynamicMapSize);
    std::memcpy(t.nested_code.data(), nq.data, kDynamicMapSize * sizeof(float));
  } else {
    const TensorView& a = r.expect(base + "absmax", DType::F32, {nb}, blocks_why);
    t.absmax.resize(nb);
    std::memcpy(t.absmax.data(), a.data, nb * sizeof(float));
  }
  const TensorView& qm = r.expect(base + "quant_map", DType::F32, {16}, "the code book");
  const float* book = code_book(t.fp4);
  for (int i = 0; i < 16; ++i) {
    float v;
    std::memcpy(&v, static_cast<const uint8_t*>(qm.data) + i * sizeof(float), sizeof(float));
    if (v != book[i]) {
      std::ostringstream os;
      os.precision(9);
      os << "differs from the published " << t.quant_type() << " code book at index " << i << ": " << v << " vs "
         << book[i];
      r.fail(base + "quant_map", os.str());
    }
  }
  nf4_check(t, "bnb 4-bit layer '" + prefix + "'");
  return out;
}

}  // namespace

std::string nf4_quant_state_name(const std::string& prefix, bool fp4) {
  return prefix + ".weight.quant_state.bitsandbytes__" + (fp4 ? "fp4" : "nf4");
}

std::string python_float_repr(double v) {
  QWENQ_CHECK(std::isfinite(v), "python_float_repr: " << v << " is not finite (JSON cannot hold it)");
  if (v == 0.0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits: the first precision whose correctly rounded %e output reads back as v.
  char buf[40];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof(buf), "%.*e", p - 1, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s(buf), sign;
  if (s[0] == '-') {
    sign = "-";
    s = s.substr(1);
  }
  const size_t e = s.find('e');
  const int exp10 = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out;
  if (exp10 < -4 || exp10 >= 16) {  // Python switches to scientific notation here
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ex[16];
    std::snprintf(ex, sizeof(ex), "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += ex;
  } else if (exp10 < 0) {
    out = "0." + std::string(-exp10 - 1, '0') + digits;
  } else {
    const size_t int_digits = static_cast<size_t>(exp10) + 1;
    if (digits.size() <= int_digits)
      out = digits + std::string(int_digits - digits.size(), '0') + ".0";
    else
      out = digits.substr(0, int_digits) + "." + digits.substr(int_digits);
  }
  return sign + out;
}

std::string nf4_quant_state_json(const Nf4Tensor& t, const std::vector<int64_t>& shape, const std::string& dtype) {
  QWENQ_CHECK(known_dtype(dtype), "nf4 quant_state: dtype \"" << dtype << "\" is not bfloat16, float16 or float32");
  QWENQ_CHECK(shape.size() == 2 && shape[0] > 0 && shape[1] > 0 && shape[0] * shape[1] == t.n,
              "nf4 quant_state: shape " << shape_str(shape) << " does not hold the tensor's " << t.n << " weights");
  std::ostringstream os;
  os << "{\"quant_type\": \"" << t.quant_type() << "\", \"blocksize\": " << t.blocksize << ", \"dtype\": \"" << dtype
     << "\", \"shape\": [" << shape[0] << ", " << shape[1] << "]";
  if (t.double_quant)
    os << ", \"nested_blocksize\": " << t.nested_blocksize << ", \"nested_dtype\": \"float32\", \"nested_offset\": "
       << python_float_repr(t.nested_offset);
  os << "}";
  return os.str();
}

void add_nf4_linear(SafetensorsWriter& w, const std::string& prefix, const Nf4Tensor& t,
                    const std::vector<int64_t>& shape, const std::string& dtype) {
  nf4_check(t, "add_nf4_linear '" + prefix + "'");
  const std::string json = nf4_quant_state_json(t, shape, dtype);
  const std::string base = prefix + ".weight";
  const int64_t nb = t.num_blocks();
  w.add_owned(base, DType::U8, {static_cast<int64_t>(t.packed.size()), 1}, t.packed);
  if (t.double_quant)
    w.add_owned(base + ".absmax", DType::U8, {nb}, t.absmax_q);
  else
    w.add_owned(base + ".absmax", DType::F32, {nb}, bytes_of(t.absmax.data(), t.absmax.size()));
  w.add_owned(base + ".quant_map", DType::F32, {16}, bytes_of(code_book(t.fp4), 16));
  if (t.double_quant) {
    w.add_owned(base + ".nested_absmax", DType::F32, {t.num_nested_blocks()},
                bytes_of(t.nested_absmax.data(), t.nested_absmax.size()));
    w.add_owned(base + ".nested_quant_map", DType::F32, {kDynamicMapSize},
                bytes_of(t.nested_code.data(), t.nested_code.size()));
  }
  w.add_owned(nf4_quant_state_name(prefix, t.fp4), DType::U8, {static_cast<int64_t>(json.size())},
              std::vector<uint8_t>(json.begin(), json.end()));
}

bool has_nf4_linear(const Checkpoint& ckpt, const std::string& prefix) {
  return ckpt.has(prefix + ".weight.absmax");
}

Nf4Linear read_nf4_linear(const Checkpoint& ckpt, const std::string& prefix) {
  Source src;
  src.has = [&](const std::string& n) { return ckpt.has(n); };
  src.get = [&](const std::string& n) -> const TensorView& { return ckpt.get(n); };
  src.file = [&](const std::string& n) { return path_join(ckpt.dir(), ckpt.file_of(n)); };
  src.where = "checkpoint " + ckpt.dir();
  return read_layer(src, prefix);
}

Nf4Linear read_nf4_linear(const SafetensorsFile& file, const std::string& prefix) {
  Source src;
  src.has = [&](const std::string& n) { return file.has(n); };
  src.get = [&](const std::string& n) -> const TensorView& { return file.get(n); };
  src.file = [&](const std::string&) { return file.path(); };
  src.where = file.path();
  return read_layer(src, prefix);
}

Json nf4_quantization_config_json(bool double_quant, const std::string& compute_dtype, bool fp4) {
  QWENQ_CHECK(known_dtype(compute_dtype),
              "bnb_4bit_compute_dtype \"" << compute_dtype << "\" is not bfloat16, float16 or float32");
  Json j = Json::object();
  j["quant_method"] = "bitsandbytes";
  j["_load_in_8bit"] = false;
  j["_load_in_4bit"] = true;
  j["llm_int8_threshold"] = 6.0;
  j["llm_int8_skip_modules"] = nullptr;
  j["llm_int8_enable_fp32_cpu_offload"] = false;
  j["llm_int8_has_fp16_weight"] = false;
  j["bnb_4bit_quant_type"] = fp4 ? "fp4" : "nf4";
  j["bnb_4bit_use_double_quant"] = double_quant;
  j["bnb_4bit_compute_dtype"] = compute_dtype;
  j["bnb_4bit_quant_storage"] = "uint8";
  j["load_in_4bit"] = true;
  j["load_in_8bit"] = false;
  return j;
}

}  // namespace qwenq
