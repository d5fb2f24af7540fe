#!/usr/bin/env python3
"""Generates trainer/unicode_tables.cpp: the Unicode data the tokenizer needs, from Python's `unicodedata`.

What and why: the Qwen2 pre-tokenizer regex needs \\p{L}, \\p{N} and \\s, and Hugging Face normalizes text to NFC
before tokenizing. C++ has none of this, so we ship compact tables generated from the Unicode Character
Database that Python carries (its version is written into the generated file's header):

  * letter / number ranges (general categories L* and N*), as [first, last] pairs;
  * White_Space ranges: this is what `\\s` means in Oniguruma (the regex engine of HF tokenizers) and
    Rust's char::is_whitespace. Python's str.isspace() differs only by U+001C..U+001F, which we remove and then
    check against the PropList.txt list;
  * canonical combining classes, as [first, last, class] runs;
  * canonical decompositions (one or two code points each), with a flag saying whether the pair is a primary
    composite (used by NFC composition; composition exclusions and singletons are not);
  * "NFC-unsafe" ranges: code points that may change under NFC or affect their neighbours (non-zero combining
    class, not NFC on their own, possible second half of a composition, or decomposing to such). Text
    without any of them is already NFC, which lets ASCII and most text skip normalization entirely.

Hangul syllables are composed and decomposed algorithmically in C++ and are not in the tables.

Usage: python3 tools/gen_unicode_tables.py [OUT]   (default: trainer/unicode_tables.cpp next to this script)
"""
import os
import sys
import unicodedata

MAX_CP = 0x110000
HANGUL_S = range(0xAC00, 0xAC00 + 11172)
HANGUL_V = range(0x1161, 0x1161 + 21)
HANGUL_T = range(0x11A8, 0x11A7 + 28)

# Unicode PropList.txt White_Space (stable since Unicode 6.3).
WHITE_SPACE = {0x9, 0xA, 0xB, 0xC, 0xD, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
               *range(0x2000, 0x200B)}


def ranges_of(pred):
    """[first, last] runs of consecutive code points where pred holds."""
    out, start = [], None
    for cp in range(MAX_CP + 1):
        ok = cp < MAX_CP and pred(cp)
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append((start, cp - 1))
            start = None
    return out


def valued_runs(value_of):
    """[first, last, value] runs of consecutive code points sharing a non-zero value."""
    out, start, cur = [], None, 0
    for cp in range(MAX_CP + 1):
        v = value_of(cp) if cp < MAX_CP else 0
        if v != cur:
            if cur:
                out.append((start, cp - 1, cur))
            start, cur = cp, v
    return out


def canonical_decomposition(cp):
    d = unicodedata.decomposition(chr(cp))
    if not d or d.startswith("<"):
        return None
    return [int(x, 16) for x in d.split()]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "trainer", "unicode_tables.cpp")

    white = {cp for cp in range(MAX_CP) if chr(cp).isspace() and not 0x1C <= cp <= 0x1F}
    assert white == WHITE_SPACE, sorted(white ^ WHITE_SPACE)

    letters = ranges_of(lambda cp: unicodedata.category(chr(cp)).startswith("L"))
    numbers = ranges_of(lambda cp: unicodedata.category(chr(cp)).startswith("N"))
    spaces = ranges_of(lambda cp: cp in WHITE_SPACE)
    ccc = valued_runs(lambda cp: unicodedata.combining(chr(cp)))

    decomp = []
    seconds = set(HANGUL_V) | set(HANGUL_T)
    for cp in range(MAX_CP):
        d = canonical_decomposition(cp)
        if d is None:
            continue
        assert 1 <= len(d) <= 2, (hex(cp), d)
        composes = len(d) == 2 and unicodedata.normalize("NFC", chr(cp)) == chr(cp)
        if composes:
            seconds.add(d[1])
        decomp.append((cp, d[0], d[1] if len(d) == 2 else 0, composes))

    def unsafe(cp):
        c = chr(cp)
        if unicodedata.combining(c) or cp in seconds or unicodedata.normalize("NFC", c) != c:
            return True
        first = unicodedata.normalize("NFD", c)[0]
        return unicodedata.combining(first) != 0 or ord(first) in seconds

    nfc_unsafe = ranges_of(unsafe)

    def wrap(items, width=116):
        lines, line = [], ""
        for item in items:
            if line and len(line) + len(item) + 1 > width:
                lines.append(line)
                line = ""
            line += item + ","
        lines.append(line)
        return "\n" + "\n".join(lines) + "\n"

    def emit_pairs(name, rows):
        body = wrap(["{0x%X,0x%X}" % r for r in rows])
        return f"const uint32_t {name}[][2] = {{{body}}};\nconst size_t {name}_count = {len(rows)};\n"

    ccc_body = wrap(["{0x%X,0x%X,%d}" % r for r in ccc])
    # Decomposition rows: {code point | 0x80000000 when the pair composes, first, second (0: singleton)}.
    dec_body = wrap(["{0x%X,0x%X,0x%X}" % ((cp | (0x80000000 if comp else 0)), a, b) for cp, a, b, comp in decomp])

    text = f"""// GENERATED by tools/gen_unicode_tables.py from Python {sys.version.split()[0]}'s unicodedata
// (Unicode {unicodedata.unidata_version}). Do not edit by hand: rerun the script.
//
// Letter (L*) / number (N*) / White_Space ranges, canonical combining classes, canonical decompositions and
// NFC-unsafe ranges for the tokenizer (trainer/unicode_text.cpp). Hangul is handled algorithmically.
#include "trainer/unicode_tables.h"

namespace qwenq::unicode_tables {{

const char* const kUnicodeVersion = "{unicodedata.unidata_version}";

{emit_pairs("kLetterRanges", letters)}
{emit_pairs("kNumberRanges", numbers)}
{emit_pairs("kWhiteSpaceRanges", spaces)}
{emit_pairs("kNfcUnsafeRanges", nfc_unsafe)}
const uint32_t kCombiningClassRuns[][3] = {{{ccc_body}}};
const size_t kCombiningClassRuns_count = {len(ccc)};

const uint32_t kDecompositions[][3] = {{{dec_body}}};
const size_t kDecompositions_count = {len(decomp)};

}}  // namespace qwenq::unicode_tables
"""
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {out_path}: {len(letters)} letter, {len(numbers)} number, {len(spaces)} space, "
          f"{len(nfc_unsafe)} NFC-unsafe ranges, {len(ccc)} combining-class runs, {len(decomp)} decompositions "
          f"(Unicode {unicodedata.unidata_version})")


if __name__ == "__main__":
    main()
