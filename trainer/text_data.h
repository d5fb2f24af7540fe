// Reading evaluation/calibration text: a plain text file, or JSONL with one {"text": ...} object per line
// (the field name is configurable). JSONL records are joined with "\n\n", the convention of the GPTQ and
// AWQ evaluation scripts ("\n\n".join(dataset["text"])). Given a tokenizer (`chat`), a record without the field
// but with "messages" is a chat record (trainer/chat_record.h: messages, tools) rendered with its chat template,
// without a generation prompt (tokenizer.apply_chat_template(messages, tokenize=False)), as instruct models are
// calibrated on chat data.
#pragma once

#include <string>
#include <vector>

namespace qwenq {

class Tokenizer;

// JSONL when the file name ends in .jsonl or its first non-blank byte is '{'. A malformed line, or a line
// without the field, is an error naming the file and the line number. *rendered_chat (when given) says whether a
// chat record was rendered: the text then holds the template's special tokens, to be encoded as such.
std::string load_text_corpus(const std::string& path, const std::string& field = "text", const Tokenizer* chat = nullptr,
                             bool* rendered_chat = nullptr);

// The documents of a file one by one: the `field` of each JSONL record, or each non-blank line of a text file.
std::vector<std::string> load_text_documents(const std::string& path, const std::string& field = "text",
                                             const Tokenizer* chat = nullptr, bool* rendered_chat = nullptr);

}  // namespace qwenq
