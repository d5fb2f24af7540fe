#include "tests/support/sft_fixtures.h"

#include "core/files.h"

namespace qwenq::test {

const char* const kPlainChatml =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

std::string write_in_dir(const std::string& dir, const std::string& name, const std::string& text) {
  write_file_atomic(dir + "/" + name, text);
  return dir + "/" + name;
}

std::string masked_text(const SftExample& ex, const Tokenizer& tok) {
  std::vector<int32_t> ids;
  for (size_t t = 0; t < ex.tokens.size(); ++t)
    if (ex.loss_mask[t]) ids.push_back(ex.tokens[t]);
  return tok.decode(ids);
}

SftDataOptions no_split() {
  SftDataOptions d;
  d.max_len = 512;
  return d;
}

}  // namespace qwenq::test
