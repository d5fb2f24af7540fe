// The entry of every CUDA benchmark: its `--name value` options, then the measurement on the device.
//
// Args: each option is bound to a variable, whose value when add() is called is the default. The usage line,
// "usage: <argv0> [--name shown] ...", lists the options in the order they were added; `shown` is the default
// unless a text is given ("out.csv", "GB/s", "extrapolate|full|none"). parse() returns -1 when the program goes
// on, else its exit code: 0 after --help or -h (the usage line on stdout); 2 after an unknown option (the usage
// line on stderr), a missing value or a value that is not a number of the option's type ("<name>: --reps takes an
// integer, got 'x'", then the usage line, on stderr).
//
// run_on_device(argv0, fn): when cuda_device_query finds no device, prints
// "<name>: no CUDA device (<why>); nothing to measure" on stdout and returns 0; else calls fn(stamp) with the stamp
// of benchmarks/cuda_bench.h and returns 0, or, when fn throws, prints "<name>: <what>" on stderr and returns 1.
// <name> is the last path component of argv0. The benchmarks are built only with CUDA (benchmarks/CMakeLists.txt),
// so there is no built-without-CUDA branch.
#pragma once

#include <cstdint>
#include <cstdio>
#include <exception>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "benchmarks/cuda_bench.h"
#include "kernels/device.h"

namespace qwenq::bench {

// "build/benchmarks/bench_qgemm_cuda" -> "bench_qgemm_cuda".
inline std::string program_name(const char* argv0) {
  const std::string path = argv0 ? argv0 : "benchmark";
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

class Args {
 public:
  void add(const char* name, std::string* value, const char* shown = nullptr) {
    add_option(name, shown ? shown : *value, "a value", [value](const std::string& v) {
      *value = v;
      return true;
    });
  }
  void add(const char* name, int* value, const char* shown = nullptr) {
    add_option(name, shown ? shown : std::to_string(*value), "an integer", [value](const std::string& v) {
      int64_t x = 0;
      if (!parse_integer(v, &x) || x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
        return false;
      *value = static_cast<int>(x);
      return true;
    });
  }
  void add(const char* name, int64_t* value, const char* shown = nullptr) {
    add_option(name, shown ? shown : std::to_string(*value), "an integer",
               [value](const std::string& v) { return parse_integer(v, value); });
  }
  void add(const char* name, double* value, const char* shown = nullptr) {
    std::ostringstream def;
    def << *value;
    add_option(name, shown ? shown : def.str(), "a number", [value](const std::string& v) {
      size_t used = 0;
      try {
        *value = std::stod(v, &used);
      } catch (const std::exception&) {
        return false;
      }
      return used == v.size();
    });
  }

  std::string usage(const char* argv0) const {
    std::string u = std::string("usage: ") + argv0;
    for (const Option& o : options_) u += " [" + o.name + " " + o.shown + "]";
    return u + "\n";
  }

  // See the top of this file: -1 to go on, else the exit code.
  int parse(int argc, char** argv) const {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--help" || a == "-h") {
        std::fputs(usage(argv[0]).c_str(), stdout);
        return 0;
      }
      const Option* o = find(a);
      if (!o) return fail(argv[0], "");
      if (i + 1 >= argc) return fail(argv[0], a + " needs a value");
      const std::string v = argv[++i];
      if (!o->set(v)) return fail(argv[0], a + " takes " + o->kind + ", got '" + v + "'");
    }
    return -1;
  }

 private:
  struct Option {
    std::string name, shown, kind;
    std::function<bool(const std::string&)> set;
  };
  std::vector<Option> options_;

  // kind: what the value must be, for the message when set() refuses it ("an integer").
  void add_option(const char* name, std::string shown, const char* kind,
                  std::function<bool(const std::string&)> set) {
    options_.push_back({name, std::move(shown), kind, std::move(set)});
  }

  static bool parse_integer(const std::string& v, int64_t* out) {
    size_t used = 0;
    try {
      *out = std::stoll(v, &used);
    } catch (const std::exception&) {
      return false;
    }
    return used == v.size();
  }

  const Option* find(const std::string& name) const {
    for (const Option& o : options_)
      if (o.name == name) return &o;
    return nullptr;
  }

  int fail(const char* argv0, const std::string& why) const {
    if (!why.empty()) std::fprintf(stderr, "%s: %s\n", program_name(argv0).c_str(), why.c_str());
    std::fputs(usage(argv0).c_str(), stderr);
    return 2;
  }
};

// See the top of this file.
template <typename F>
int run_on_device(const char* argv0, F&& fn) {
  const std::string name = program_name(argv0);
  std::string device;
  if (!cuda_device_query(&device)) {
    std::printf("%s: no CUDA device (%s); nothing to measure\n", name.c_str(), device.c_str());
    return 0;
  }
  try {
    fn(make_stamp(device));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), e.what());
    return 1;
  }
  return 0;
}

}  // namespace qwenq::bench
