#include "core/python_regex.h"

#include <algorithm>

#include "core/error.h"

namespace qwenq {

namespace {

// The first Python-only construct of `p` (outside a character class, and not escaped), or "".
std::string python_only_construct(const std::string& p) {
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 < p.size() && !in_class && (p[i + 1] == 'A' || p[i + 1] == 'Z' || p[i + 1] == 'z'))
        return std::string("\\") + p[i + 1];
      ++i;  // the escaped character, whatever it is
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      continue;
    }
    if (c == '[') {
      in_class = true;
      if (i + 1 < p.size() && p[i + 1] == '^') ++i;
      if (i + 1 < p.size() && p[i + 1] == ']') ++i;  // a leading ']' is a literal in both grammars
      continue;
    }
    if (c != '(' || i + 1 >= p.size() || p[i + 1] != '?') continue;
    const std::string rest = p.substr(i + 2, 2);
    if (rest.rfind("P<", 0) == 0 || rest.rfind("P=", 0) == 0) return "(?" + rest + " (a named group)";
    if (rest == "<=" || rest == "<!") return "(?" + rest + " (lookbehind)";
    if (!rest.empty() && rest[0] == '<') return "(?< (a named group)";
    if (!rest.empty() && rest[0] == '#') return "(?# (a comment)";
    if (!rest.empty() && rest[0] == '>') return "(?> (an atomic group)";
    if (!rest.empty() && rest[0] == '(') return "(?( (a conditional)";
    if (!rest.empty() && rest[0] != ':' && rest[0] != '=' && rest[0] != '!') return "(?" + rest.substr(0, 1) +
                                                                                      " (inline flags)";
  }
  return "";
}

}  // namespace

std::regex compile_python_regex(const std::string& pattern, const std::string& what) {
  // std::regex compiles and matches recursively: a pattern far longer or more nested than module names need is
  // refused rather than allowed to exhaust the stack.
  int depth = 0, deepest = 0;
  for (char ch : pattern) deepest = std::max(deepest, depth += ch == '(' ? 1 : ch == ')' ? -1 : 0);
  QWENQ_CHECK(pattern.size() <= 512 && deepest <= 16,
              what << ": the pattern \"" << pattern.substr(0, 64) << (pattern.size() > 64 ? "..." : "")
                   << "\" is longer than 512 characters or nests more than 16 groups");
  const std::string bad = python_only_construct(pattern);
  QWENQ_CHECK(bad.empty(), what << ": the pattern \"" << pattern << "\" is not a regular expression qwenq can read: it "
                                << "uses " << bad << ", Python syntax that ECMAScript lacks or reads otherwise");
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    QWENQ_FAIL(what << ": the pattern \"" << pattern << "\" is not a regular expression qwenq can read: " << e.what());
  }
}

bool python_fullmatch(const std::regex& re, const std::string& s) { return std::regex_match(s, re); }

bool python_match(const std::regex& re, const std::string& s, std::string* group1) {
  std::smatch m;
  if (!std::regex_search(s, m, re, std::regex_constants::match_continuous)) return false;
  if (group1 != nullptr) *group1 = m.size() > 1 && m[1].matched ? m[1].str() : std::string();
  return true;
}

}  // namespace qwenq
