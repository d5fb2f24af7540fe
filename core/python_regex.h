// A regular expression written for Python's `re` (a PEFT config's target_modules, exclude_modules, rank_pattern keys)
// run with std::regex's ECMAScript grammar. The two agree on what such patterns use (literals, `.`, `\.`, `\d`, `\w`,
// classes, groups, `(?:...)`, alternation, `*`, `+`, `?`, `{m,n}`, lazy quantifiers, lookahead) and on how a
// backtracking match settles. What ECMAScript reads differently or not at all is refused, naming the construct,
// instead of matching other modules than Python would: named groups `(?P<n>...)` `(?P=n)`, lookbehind `(?<=` `(?<!`,
// inline flags `(?i)` ..., comments `(?#...)`, atomic groups `(?>`, conditionals `(?(`, `\A`, `\Z`, `\z`. (On ASCII
// module names `\d`, `\w` and `\s` mean the same in both.)
#pragma once

#include <regex>
#include <string>

namespace qwenq {

// `pattern` compiled; throws "<what>: the pattern ... is not a regular expression qwenq can read: ..." naming the
// construct or std::regex's complaint (also for a pattern over 512 characters or nesting over 16 groups: std::regex
// recurses). Used for PEFT's selections (lora/lora_select.h), compressed-tensors' "re:" targets and GPTQModel's
// dynamic rules (trainer/quant_config.h).
std::regex compile_python_regex(const std::string& pattern, const std::string& what);

// Python's re.fullmatch(pattern, s) is not None.
bool python_fullmatch(const std::regex& re, const std::string& s);
// Python's re.match(pattern, s): a match starting at s's first character (not necessarily reaching its end); the
// first group's text in *group1 when asked for and the pattern has one.
bool python_match(const std::regex& re, const std::string& s, std::string* group1 = nullptr);

}  // namespace qwenq
