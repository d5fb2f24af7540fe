"""Oracle: the less common parts of our tokenizer against Hugging Face `tokenizers` / transformers, id for id.

Hand-written tokenizer.json files (tiny vocabularies, merges written as [a, b] pairs as newer `tokenizers`
versions save them) loaded by `qwen-quant tokenize --model DIR` and by tokenizers.Tokenizer.from_file:
  1. byte-level BPE (Qwen2 pipeline) whose added tokens use lstrip, rstrip, single_word and overlapping
     contents (leftmost match, longest at that position), special and not, encoded with and without
     split_special_tokens; a TemplateProcessing post-processor adding "<s>" and "</s>";
  2. SentencePiece-style BPE without byte_fallback (unknown characters -> "<unk>", fuse_unk true and false)
     with a Metaspace pre-tokenizer for each prepend_scheme (first, never, always) and split true/false, the
     same kind of added tokens, BOS from a TemplateProcessing post-processor; ids decoded back with
     `qwen-quant tokenize --decode` (with and without --skip-special) against Tokenizer.decode;
     each also on sequence pairs (the template's "pair"), whole and cut to max_length longest first;
  2b. added tokens marked normalized (matched in the normalized text, their contents normalized too) and not,
     in a byte-level (NFC) tokenizer and SentencePiece-style ones with Llama's Prepend + Replace normalizers or
     Replace + Metaspace(first), texts with precomposed and decomposed characters;
Qwen2 (../shared/data/qwen2-tokenizer) against the tokenizer transformers' AutoTokenizer builds:
  3. `--decode` of every WikiText row's ids (Hugging Face's ids; records written as {"ids": [...]}, bare JSON
     arrays and whitespace/comma separated numbers) and of tricky strings with special tokens, with and
     without --skip-special (transformers' decode, skip_special_tokens);
  4. `--threads 4 --lines` over the WikiText rows (the multi-threaded encode) against the reference ids.
Model directories read by transformers' AutoTokenizer:
  5. vocab.json + merges.txt with added_tokens.json (and with tokenizer_config.json's added_tokens_decoder next
     to it, which transformers then uses alone); a special role naming a vocabulary token; which added tokens
     stay normalized when special roles name them (tokenizer.json, added_tokens_decoder, added_tokens.json);
  6. the chat template given as a list with a "default" entry and as chat_template.jinja: `--chat` texts and
     ids against apply_chat_template.
Exit 0 pass, 1 fail (every mismatch is printed), 77 skip (no `tokenizers` / transformers).
"""
import json
import os
import random
import shutil

from oracle_common import check, finish, parse_args, require_shared, run, skip, work_dir

SPACE = "\u2581"
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def byte_symbols():
    """GPT-2's byte -> printable character table (printable Latin-1 bytes stand for themselves)."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def added(tid, content, special=False, lstrip=False, rstrip=False, single_word=False, normalized=False):
    return {"id": tid, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


def template_processing(first, last):
    """TemplateProcessing "single": [first] $A [last] (either end may be None)."""
    single, specials = [], {}
    if first:
        single.append({"SpecialToken": {"id": first[0], "type_id": 0}})
        specials[first[0]] = {"id": first[0], "ids": [first[1]], "tokens": [first[0]]}
    single.append({"Sequence": {"id": "A", "type_id": 0}})
    if last:
        single.append({"SpecialToken": {"id": last[0], "type_id": 0}})
        specials[last[0]] = {"id": last[0], "ids": [last[1]], "tokens": [last[0]]}
    pair = single + [{"Sequence": {"id": "B", "type_id": 1}}]
    return {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}


# Added tokens shared by both tiny tokenizers (ids after the vocabulary, no content that is also a vocabulary
# token: `tokenizers` would give it the vocabulary's id): the flags under test and overlapping contents
# ("<L" / "<L>" / "<LR>", "cat" / "catalog", "dog" both stripping and single_word).
def added_tokens(base):
    return [
        added(base + 0, "<s>", special=True), added(base + 1, "</s>", special=True),
        added(base + 2, "<L>", lstrip=True), added(base + 3, "<R>", rstrip=True),
        added(base + 4, "<LR>", special=True, lstrip=True, rstrip=True),
        added(base + 5, "cat", single_word=True), added(base + 6, "catalog"),
        added(base + 7, "<L"), added(base + 8, "dog", single_word=True, lstrip=True, rstrip=True),
        added(base + 9, "<|sw|>", special=True, single_word=True),
        added(base + 10, "<|sp|>", special=True), added(base + 11, "<|s", special=False),
    ]


ADDED_TRICKY = [
    "a <L> b", "a   <L>b", "<L>", "  <L>", " <L> ", "x<R>   y", "x <R>\n\ny", "<R><R>  <R>", "<LR>", " \t<LR>\u00a0 z",
    "word  <LR>  word", "<R>  <L>", "<R>  <LR>  <L>", "cat", "a cat.", "concat", "cats", "cat_", "_cat", "cat1",
    "1cat", "écat", "caté", "١cat", "cat١", "catalog", "a catalog b", "catalogs", "xcatalog", "cat<L>", "<L><L>",
    "<L <LR>", "<L<L>", "<Lx", "dog", "hotdog dog  dog", "  dog  ", "dog,dog", "dogdog", " dog\t\n", "über cat",
    "x\u3000<L>", "\u2028<L>\u2028", "\u0085<R>\u0085x", "\x1c<L>\x1c", "<R>\x1cx", "\u200b<L>", "<s>hi</s>",
    " <s> ", "<|sw|>", "a<|sw|>", "<|sw|>b", " <|sw|> ", "<|sp|>x<|sp|>", "<|s", "<|sp", "<|sw", "x<|sw|>y <|sp|>",
    "<LR><LR>", "  <LR>  <LR>  ", "cat cat  cat", "", " ", "\n",
]


def random_added_strings(n, seed):
    rng = random.Random(seed)
    pool = ["<L>", "<R>", "<LR>", "cat", "catalog", "<L", "dog", "<|sw|>", "<|sp|>", "<|s", "<s>", "</s>", " ",
            "  ", "\t", "\n", "\u00a0", "\u3000", "a", "x", "é", "_", "1", ".", ",", "<", ">", "|", "s"]
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def byte_level_tokenizer_json():
    """Qwen2's pipeline (NFC, Split(Qwen2 regex), ByteLevel) over the 256 byte symbols and a few merges."""
    sym = byte_symbols()
    vocab = {sym[b]: b for b in range(256)}
    merges = []
    for a, b in [("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld"), ("h", "e"), ("l", "l"),
                 ("he", "ll"), ("hell", "o"), ("c", "a"), ("Ġ", "ca"), ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ")]:
        vocab.setdefault(a + b, len(vocab))
        merges.append([a, b])
    base = len(vocab)
    toks = added_tokens(base)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": toks,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": template_processing(("<s>", base), ("</s>", base + 1)),
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def sentencepiece_tokenizer_json(prepend_scheme, split, fuse_unk, eos):
    """SentencePiece-style BPE without byte_fallback: lowercase letters and a little punctuation, everything else
    <unk>; Metaspace pre-tokenizer and decoder; BOS (and EOS when `eos`) from TemplateProcessing."""
    vocab = {"<unk>": 0, SPACE: 1}
    for c in "abcdefghijklmnopqrstuvwxyz.,'":
        vocab[c] = len(vocab)
    merges = []
    for a, b in [(SPACE, "t"), ("h", "e"), (SPACE + "t", "he"), (SPACE, SPACE), (SPACE, "a"), ("a", "t"),
                 ("c", "a"), (SPACE, "ca"), (SPACE + SPACE, SPACE + SPACE), ("o", "g"), (SPACE, "d"),
                 (SPACE + "d", "og"), ("i", "n"), (SPACE, "in")]:
        vocab.setdefault(a + b, len(vocab))
        merges.append([a, b])
    base = len(vocab)
    toks = [added(0, "<unk>", special=True)] + added_tokens(base)
    meta = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": prepend_scheme, "split": split}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": toks,
        "normalizer": None, "pre_tokenizer": meta,
        "post_processor": template_processing(("<s>", base), ("</s>", base + 1) if eos else None),
        "decoder": dict(meta),
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": fuse_unk, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


SP_TRICKY = [
    "the cat", " the cat", "the  cat", "   leading", "trailing   ", "a" + SPACE + SPACE + "b", SPACE + "at",
    SPACE, SPACE * 3, "in the dog", "Hello World", "UPPER lower", "ÄÖÜ äöü", "x1 2 34", "tab\there", "new\nline",
    "you're", "a,b.c", "ＡＢＣ", "🚀🦙", "a 🚀 b", "unk€€€unk", "€ € €", "   ", "\u00a0a", "ab\u3000cd",
] + ADDED_TRICKY


# Added tokens marked normalized (Hugging Face's AddedVocabulary): the normalized=false ones are cut out of the raw
# text first; each remaining piece then goes through the normalizer, and the normalized=true ones (their contents
# passed through the same normalizer) are matched in that normalized text, lstrip/rstrip/single_word judged there
# (within the piece). Tokens whose content NFC changes ("café" given decomposed, the Ohm sign U+2126 -> Omega), a
# raw token that wins over a normalized one starting earlier ("éy" vs "xé"), a single_word token right after a raw
# one ("zzñu": the piece starts at "ñu"), specials of both kinds.
def normalized_added_tokens(base):
    return [
        added(base + 0, "caf\u00e9", normalized=True), added(base + 1, "cafe\u0301s"),
        added(base + 2, "<\u00e9>", normalized=True, lstrip=True, rstrip=True),
        added(base + 3, "\u00f1u", normalized=True, single_word=True), added(base + 4, "\u00e9y"),
        added(base + 5, "x\u00e9", normalized=True), added(base + 6, "\u2126m", normalized=True),
        added(base + 7, "\u212bx"), added(base + 8, "<|n|>", special=True, normalized=True),
        added(base + 9, "<|r|>", special=True), added(base + 10, "zz"),
        added(base + 11, "<\u00e9", normalized=True, rstrip=True),
    ]


NORMALIZED_TRICKY = [
    "caf\u00e9", "cafe\u0301", "xcafe\u0301y", " cafe\u0301 ", "cafe\u0301s", "caf\u00e9s", "cafe\u0301\u0301",
    "a <\u00e9> b", "a  <e\u0301>  b", "a\t<e\u0301>\u00a0b", "<e\u0301><\u00e9>", "<e\u0301  x", "<\u00e9\t>",
    "\u00f1u", "n\u0303u", "an\u0303u", "a n\u0303u b", "zzn\u0303u", "zz \u00f1u", "\u00f1u_", "n\u0303u1",
    "\u00f1u\u00f1u", "x\u00e9y", "xe\u0301y", "xe\u0301", "x\u00e9", "\u2126m", "\u03a9m", "\u212bx",
    "\u00c5x", "A\u030ax", "<|n|>", "<|r|>", "<|n|><|r|>", "a<|n|>b", "zzzz", "zz  <e\u0301>", "<|r|>\u00f1u",
    "\u1e9b\u0323", "\uac00\u11a8", "", " ", "e\u0301",
]


def random_pool_strings(pool, n, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 10))) for _ in range(n)]


NORMALIZED_POOL = ["caf\u00e9", "cafe\u0301", "s", "<\u00e9>", "<e\u0301>", "<", ">", "\u00f1u", "n\u0303u",
                   "\u00e9y", "x", "e\u0301y", "\u2126m", "\u03a9", "\u212bx", "A\u030a", "<|n|>", "<|r|>", "z", " ",
                   "  ", "\t", "\u00a0", "a", "_", "1", "."]
NORMALIZED_SP_POOL = ["<x>", " zq", "zq", "<y>", "<w>", "<r>", "q<", "<|n|>", SPACE + "k", "k", " ", "  ", "\t", "a",
                      "b", "<", ">", "q", "\u00a0", SPACE]


def normalized_byte_level_tokenizer_json():
    """The byte-level tokenizer (NFC normalizer) with normalized_added_tokens instead, no post-processor."""
    tj = byte_level_tokenizer_json()
    tj["added_tokens"] = normalized_added_tokens(len(tj["model"]["vocab"]))
    tj["post_processor"] = None
    return tj


def normalized_sentencepiece_tokenizer_json(llama_normalizers):
    """SentencePiece-style BPE with normalized added tokens: either Llama's normalizers Prepend("▁") +
    Replace(" ", "▁") and no pre-tokenizer (a normalized content gets the "▁" prepended too: "<x>" is matched as
    "▁<x>", " zq" as "▁▁zq"), or Replace(" ", "▁") + a Metaspace pre-tokenizer (prepend_scheme first)."""
    tj = sentencepiece_tokenizer_json("first", True, False, eos=False)
    base = len(tj["model"]["vocab"])
    tj["added_tokens"] = [added(0, "<unk>", special=True),
                          added(base + 0, "<x>", normalized=True), added(base + 1, " zq", normalized=True),
                          added(base + 2, "<y>", normalized=True, lstrip=True, rstrip=True),
                          added(base + 3, "<w>", normalized=True, single_word=True), added(base + 4, "<r>"),
                          added(base + 5, "q<"), added(base + 6, "<|n|>", special=True, normalized=True),
                          added(base + 7, SPACE + "k", normalized=True), added(base + 8, "k k", normalized=True)]
    tj["post_processor"] = None
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    if llama_normalizers:
        tj["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]}
        tj["pre_tokenizer"] = None
        tj["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    else:
        tj["normalizer"] = replace
    return tj


NORMALIZED_SP_TRICKY = [
    "<x>", "a<x>", "a <x>", " <x>", "a <x> <x>b", "<x>ab", "ab<x>", "zq", " zq", "a zq", "a  zq", "azq", "a\t <y>\t b",
    "a <y> b", "a\t<y>\tb", "<y>", "<w>", "a <w> b", "a<w>", "<w> b", "a<r>b", "<r><x>", "<r> <x>", "<r>  zq", "q<x>",
    "a q<x>", "<|n|>", "a <|n|> b", SPACE + "k", "k", "a k", "ak", "k k", "a k k", SPACE + "<x>", "", " ", "  ",
]


def write_ids(path, rows, style):
    """Ids one record per line: {"ids": [...]}, [...] or "1 2, 3" (style cycles when 'mixed')."""
    with open(path, "w", encoding="utf-8") as f:
        for i, ids in enumerate(rows):
            s = style if style != "mixed" else ("object", "array", "plain")[i % 3]
            if s == "object":
                f.write(json.dumps({"ids": ids}) + "\n")
            elif s == "array":
                f.write(json.dumps(ids) + "\n")
            else:
                f.write(" ".join(f"{x}," if k % 2 else str(x) for k, x in enumerate(ids)).rstrip(",") + "\n")


def read_jsonl_ids(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["ids"] for line in f]


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")


def compare_ids(name, texts, ours, theirs):
    if not check(len(ours) == len(theirs), f"{name}: {len(ours)} records from qwen-quant vs {len(theirs)}"):
        return
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    for i in bad[:8]:
        check(False, f"{name}: {texts[i]!r}\n    qwen-quant:   {ours[i]}\n    Hugging Face: {theirs[i]}")
    if not bad:
        print(f"ok {name}: {len(texts)} records, {sum(map(len, ours))} ids identical")


def encode_with_cli(qq, model, tmp, texts, name, extra=()):
    src = os.path.join(tmp, name + ".jsonl")
    out = os.path.join(tmp, name + ".ids.jsonl")
    write_jsonl(src, texts)
    run([qq, "tokenize", "--model", model, "--file", src, "--jsonl", "--out", out, "--quiet", *extra])
    return read_jsonl_ids(out)


def decode_with_cli(qq, model, tmp, rows, name, style, skip_special):
    """Our --decode of a file of id records (the texts concatenated), read as bytes so that "\r\n" stays."""
    path = os.path.join(tmp, name + ".ids")
    out = os.path.join(tmp, name + ".decoded")
    write_ids(path, rows, style)
    run([qq, "tokenize", "--model", model, "--decode", "--file", path, "--out", out, "--quiet",
         *(["--skip-special"] if skip_special else [])])
    with open(out, "rb") as f:
        return f.read().decode("utf-8")


def check_decode(qq, model, tmp, name, ref_decode, rows, style, skip_special):
    """Decodes `rows` (one record per line) with the CLI; its output is the records' texts concatenated, so it
    is compared with the concatenation of the reference's per-record texts (check_decode_each goes one by one)."""
    ours = decode_with_cli(qq, model, tmp, rows, name, style, skip_special)
    theirs = "".join(ref_decode(ids, skip_special) for ids in rows)
    if ours != theirs:
        k = next((i for i in range(min(len(ours), len(theirs))) if ours[i] != theirs[i]), min(len(ours), len(theirs)))
        check(False, f"{name} (skip_special={skip_special}): decoded text differs at character {k}:\n"
                     f"    qwen-quant:   {ours[max(0, k - 20):k + 40]!r}\n"
                     f"    Hugging Face: {theirs[max(0, k - 20):k + 40]!r}")
    else:
        print(f"ok {name} (skip_special={skip_special}): {len(rows)} records decode to the same "
              f"{len(ours)} characters")


def check_decode_each(qq, model, name, ref_decode, texts, rows, skip_special):
    """--decode --text on every record alone: the texts must match record by record."""
    flags = ["--skip-special"] if skip_special else []
    bad = 0
    for text, ids in zip(texts, rows):
        ours = run_quiet([qq, "tokenize", "--model", model, "--decode", "--text", json.dumps(ids), "--quiet", *flags])
        theirs = ref_decode(ids, skip_special)
        if ours != theirs:
            bad += 1
            if bad <= 8:
                check(False, f"{name} (skip_special={skip_special}): {text!r} ids {ids}\n"
                             f"    qwen-quant:   {ours!r}\n    Hugging Face: {theirs!r}")
    if not bad:
        print(f"ok {name} (skip_special={skip_special}): {len(rows)} records decoded one by one")


def run_quiet(cmd):
    """Runs a command without echoing it; its stdout as UTF-8 text, line ends untouched."""
    import subprocess
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise SystemExit(f"FAIL: command exited {r.returncode}: {' '.join(cmd)}\n{r.stderr.decode()}")
    return r.stdout.decode("utf-8")


def tiny_tokenizer_checks(qq, tmp):
    from tokenizers import Tokenizer

    cases = [("byte-level", byte_level_tokenizer_json())]
    for scheme in ("first", "never", "always"):
        for split in (True, False):
            for fuse in (True, False):
                cases.append((f"metaspace-{scheme}-split{int(split)}-fuse{int(fuse)}",
                              sentencepiece_tokenizer_json(scheme, split, fuse, eos=(scheme == "always"))))
    # The legacy spelling (add_prefix_space, no prepend_scheme / split) that older files carry: always, split.
    legacy = sentencepiece_tokenizer_json("always", True, True, eos=False)
    legacy["pre_tokenizer"] = {"type": "Metaspace", "replacement": SPACE, "add_prefix_space": True}
    legacy["decoder"] = dict(legacy["pre_tokenizer"])
    cases.append(("metaspace-legacy-add_prefix_space", legacy))
    fuzz = random_added_strings(400, seed=20261205)
    for name, tj in cases:
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False)
        ref = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        texts = (ADDED_TRICKY if name == "byte-level" else SP_TRICKY) + fuzz
        for split_special in (False, True):
            ref.encode_special_tokens = split_special
            theirs = [ref.encode(t, add_special_tokens=True).ids for t in texts]
            ours = encode_with_cli(qq, d, tmp, texts, name, ["--split-special"] if split_special else [])
            compare_ids(f"{name}{' split_special' if split_special else ''}", texts, ours, theirs)
        ref.encode_special_tokens = False
        theirs = [ref.encode(t, add_special_tokens=False).ids for t in texts]
        compare_ids(f"{name} add_special_tokens=False", texts,
                    encode_with_cli(qq, d, tmp, texts, name + "-nospecial", ["--no-special"]), theirs)
        check_pairs(qq, d, name, ref, texts[:6])
        rows = [ref.encode(t).ids for t in texts]
        decode = lambda ids, skip: ref.decode(ids, skip_special_tokens=skip)  # noqa: E731
        for skip_special in (False, True):
            check_decode_each(qq, d, f"{name} decode", decode, texts[:len(texts) - len(fuzz)],
                              rows[:len(texts) - len(fuzz)], skip_special)
            check_decode(qq, d, tmp, f"{name} decode (random strings)", decode, rows[len(texts) - len(fuzz):],
                         "mixed", skip_special)


def check_pairs(qq, d, name, ref, texts):
    """Sequence pairs through the TemplateProcessing "pair" template ([first] $A [last] $B here), whole and cut to
    max_length longest first (tokenizers' truncation, the special tokens counted): `tokenize --text A --text-pair B
    [--max-len N]` against Tokenizer.encode(A, B)."""
    for i, a in enumerate(texts):
        b = texts[(i + 2) % len(texts)]
        for max_len in (0, 6, 9, 14):
            if max_len:
                ref.enable_truncation(max_len)
            else:
                ref.no_truncation()
            theirs = ref.encode(a, b).ids
            ours = json.loads(run_quiet([qq, "tokenize", "--model", d, "--text", a, "--text-pair", b, "--quiet",
                                         *(["--max-len", str(max_len)] if max_len else [])]))["ids"]
            check(ours == theirs, f"{name} pair ({a!r}, {b!r}) max_length {max_len}: ours {ours}, tokenizers {theirs}")
    ref.no_truncation()


def normalized_added_checks(qq, tmp):
    """Added tokens marked normalized: byte-level (NFC) and the two SentencePiece-style pipelines, each text with
    split_special_tokens off and on (add_special_tokens=False: these tokenizers add nothing anyway)."""
    from tokenizers import Tokenizer

    cases = [("normalized-byte-level", normalized_byte_level_tokenizer_json(), NORMALIZED_TRICKY),
             ("normalized-sp-llama", normalized_sentencepiece_tokenizer_json(True), NORMALIZED_SP_TRICKY),
             ("normalized-sp-metaspace", normalized_sentencepiece_tokenizer_json(False), NORMALIZED_SP_TRICKY)]
    fuzz = {"normalized-byte-level": random_pool_strings(NORMALIZED_POOL, 300, seed=20261206)}
    fuzz["normalized-sp-llama"] = fuzz["normalized-sp-metaspace"] = random_pool_strings(NORMALIZED_SP_POOL, 300,
                                                                                        seed=20261207)
    for name, tj, tricky in cases:
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False)
        ref = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        texts = tricky + fuzz[name]
        for split_special in (False, True):
            ref.encode_special_tokens = split_special
            theirs = [ref.encode(t, add_special_tokens=False).ids for t in texts]
            flags = ["--no-special"] + (["--split-special"] if split_special else [])
            ours = encode_with_cli(qq, d, tmp, texts, name, flags)
            compare_ids(f"{name}{' split_special' if split_special else ''}", texts, ours, theirs)


def qwen2_checks(qq, data, tmp):
    from transformers import AutoTokenizer

    qwen_dir = os.path.join(data, "qwen2-tokenizer")
    auto = AutoTokenizer.from_pretrained(qwen_dir)
    ref = auto.backend_tokenizer
    with open(os.path.join(data, "wikitext2", "wiki.test.raw"), "rb") as f:
        raw = f.read()
    rows = [r + "\n" for r in raw.decode("utf-8").split("\n")]
    last = rows.pop()[:-1]
    if last:
        rows.append(last)
    wiki_ids = [e.ids for e in ref.encode_batch(rows)]

    # --threads 4 over the rows: the multi-threaded encode path.
    out = os.path.join(tmp, "wiki_threads.jsonl")
    run([qq, "tokenize", "--model", qwen_dir, "--file", os.path.join(data, "wikitext2", "wiki.test.raw"), "--lines",
         "--threads", "4", "--out", out])
    compare_ids("qwen2 wikitext rows, --threads 4", rows, read_jsonl_ids(out), wiki_ids)

    decode = lambda ids, skip: auto.decode(ids, skip_special_tokens=skip)  # noqa: E731
    for style in ("object", "array", "plain"):
        check_decode(qq, qwen_dir, tmp, f"qwen2 wikitext rows decode ({style} records)", decode, wiki_ids, style, False)
    specials = ["<|im_start|>user\nHi<|im_end|>\n", "<|endoftext|><|endoftext|>x", "text<|im_end|>more",
                "e\u0301 ﬁ 🚀 你好", "\r\n\r\n", " ", "<|im_start|>"]
    rows = [ref.encode(t).ids for t in specials] + [[9707, 151643, 1879], [151645], [], [151644, 151643]]
    texts = specials + ["Hello<|endoftext|> world", "<|im_end|>", "(empty)", "two specials"]
    for skip_special in (False, True):
        check_decode_each(qq, qwen_dir, "qwen2 decode", decode, texts, rows, skip_special)
    # Pieces of one character split across records decode to U+FFFD in each, as in transformers.
    rows = [ref.encode("🚀🦙").ids[:1], ref.encode("🚀🦙").ids[1:]]
    check_decode_each(qq, qwen_dir, "qwen2 decode of split characters", decode, ["🚀 head", "🚀 tail"], rows, False)


def write_tiny_qwen_dir(d, cfg, added_tokens_json=None, chat_jinja=None):
    """A vocab.json + merges.txt tokenizer (256 byte symbols, a few merges) with the given tokenizer_config.json."""
    os.makedirs(d, exist_ok=True)
    sym = byte_symbols()
    vocab = {sym[b]: b for b in range(256)}
    merges = []
    for a, b in [("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld"), ("<", "|"), ("e", "n"),
                 ("en", "d"), ("<|", "end"), ("|", ">"), ("<|end", "|>")]:
        for piece in (a, b, a + b):
            vocab.setdefault(piece, len(vocab))
        merges.append(f"{a} {b}")
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False)
    if added_tokens_json is not None:
        with open(os.path.join(d, "added_tokens.json"), "w", encoding="utf-8") as f:
            json.dump(added_tokens_json, f, ensure_ascii=False)
    if chat_jinja is not None:
        with open(os.path.join(d, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(chat_jinja)
    return len(vocab)


def model_dir_checks(qq, data, tmp):
    from transformers import AutoTokenizer

    with open(os.path.join(data, "qwen2-tokenizer", "tokenizer_config.json"), encoding="utf-8") as f:
        qwen_cfg = json.load(f)
    chatml = qwen_cfg["chat_template"]
    texts = ["<|endoftext|>hello world<|im_end|>", "<|im_start|>user <tool>x</tool> <|end|>", "a<tool>b", "<|end",
             "end world <|end|><|end|>", "<|im_start|>system\nhi<|im_end|>\n", "<tool> <tool>  <tool>"]

    # 5a. added_tokens.json alone (transformers' legacy path): the roles of tokenizer_config.json make
    # "<|im_end|>" special; "<|end|>" is a vocabulary token named by pad_token.
    d = os.path.join(tmp, "added-json")
    shutil.rmtree(d, ignore_errors=True)
    n = write_tiny_qwen_dir(d, {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>",
                                "pad_token": "<|end|>", "bos_token": None, "unk_token": None,
                                "additional_special_tokens": ["<|im_start|>"]})
    added_json = {"<|endoftext|>": n, "<|im_start|>": n + 1, "<|im_end|>": n + 2, "<tool>": n + 3}
    with open(os.path.join(d, "added_tokens.json"), "w", encoding="utf-8") as f:
        json.dump(added_json, f)
    auto = AutoTokenizer.from_pretrained(d)
    theirs = [auto(t, add_special_tokens=True).input_ids for t in texts]
    compare_ids("added_tokens.json (AutoTokenizer)", texts, encode_with_cli(qq, d, tmp, texts, "added-json"), theirs)
    rows = theirs
    decode = lambda ids, skip: auto.decode(ids, skip_special_tokens=skip)  # noqa: E731
    for skip_special in (False, True):
        check_decode_each(qq, d, "added_tokens.json decode", decode, texts, rows, skip_special)

    # 5b. the same with tokenizer_config.json's added_tokens_decoder: transformers then ignores added_tokens.json.
    d2 = os.path.join(tmp, "added-json-and-decoder")
    shutil.rmtree(d2, ignore_errors=True)
    cfg = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "added_tokens_decoder": {str(n): {"content": "<|endoftext|>", "special": True},
                                    str(n + 1): {"content": "<|im_end|>", "special": True}}}
    write_tiny_qwen_dir(d2, cfg, added_tokens_json={"<|endoftext|>": n, "<|im_end|>": n + 1, "<tool>": n + 2})
    auto2 = AutoTokenizer.from_pretrained(d2)
    compare_ids("added_tokens_decoder + added_tokens.json (AutoTokenizer)", texts,
                encode_with_cli(qq, d2, tmp, texts, "added-json-decoder"),
                [auto2(t).input_ids for t in texts])

    # 6. chat template sources.
    messages = [
        {"messages": [{"role": "user", "content": "hello world"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi <tool>"},
                      {"role": "assistant", "content": "end world"}]},
    ]
    chats = os.path.join(tmp, "chats.jsonl")
    write_jsonl(chats, messages)
    base_cfg = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>",
                "added_tokens_decoder": {str(n): {"content": "<|endoftext|>", "special": True},
                                         str(n + 1): {"content": "<|im_start|>", "special": True},
                                         str(n + 2): {"content": "<|im_end|>", "special": True}}}
    sources = {
        "chat_template list": (dict(base_cfg, chat_template=[{"name": "tool_use", "template": "{{ 'unused' }}"},
                                                            {"name": "default", "template": chatml}]), None),
        "chat_template.jinja": (base_cfg, chatml),
    }
    for name, (cfg, jinja) in sources.items():
        d = os.path.join(tmp, name.replace(" ", "-"))
        shutil.rmtree(d, ignore_errors=True)
        write_tiny_qwen_dir(d, cfg, chat_jinja=jinja)
        auto = AutoTokenizer.from_pretrained(d)
        for gen in (False, True):
            out = run([qq, "tokenize", "--model", d, "--chat", "--file", chats, "--quiet",
                       *(["--add-generation-prompt"] if gen else [])])
            ours = [json.loads(line) for line in out.splitlines()]
            want = [auto.apply_chat_template(m["messages"], tokenize=False, add_generation_prompt=gen)
                    for m in messages]
            check([r["text"] for r in ours] == want,
                  f"{name} (add_generation_prompt={gen}): texts differ\n    ours: {[r['text'] for r in ours]!r}\n"
                  f"    transformers: {want!r}")
            compare_ids(f"{name} (add_generation_prompt={gen}) ids", want, [r["ids"] for r in ours],
                        [auto(t, add_special_tokens=False).input_ids for t in want])


def normalized_model_dir_checks(qq, tmp):
    """Which added tokens end up normalized when transformers' AutoTokenizer reads a model directory: a special
    role (eos_token, additional_special_tokens) keeps the normalized flag tokenizer.json or added_tokens_decoder
    gives the token; only added_tokens.json's tokens (transformers' legacy path) are normalized unless a role names
    them. Texts with the tokens precomposed and decomposed (NFC composes them)."""
    from transformers import AutoTokenizer

    pre, dec = "caf\u00e9", "cafe\u0301"
    s_pre, s_dec = "<|\u00e9|>", "<|e\u0301|>"
    n_pre, n_dec = "<|\u00f1|>", "<|n\u0303|>"
    u_pre, u_dec = "<|\u00fc|>", "<|u\u0308|>"
    texts = [pre, dec, s_pre, s_dec, n_pre, n_dec, u_pre, u_dec, f"a {dec}{s_dec}{n_dec}{u_dec} b",
             f"{s_pre}{pre}{n_pre}{u_pre}", ""]

    def compare(name, d):
        auto = AutoTokenizer.from_pretrained(d)
        compare_ids(f"{name} (AutoTokenizer)", texts, encode_with_cli(qq, d, tmp, texts, name.replace(" ", "-")),
                    [auto(t).input_ids for t in texts])

    # tokenizer.json's added tokens (normalized true, special or not) named by special roles.
    d = os.path.join(tmp, "normalized-roles-tokenizer-json")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    tj = byte_level_tokenizer_json()
    base = len(tj["model"]["vocab"])
    tj["added_tokens"] = [added(base, pre, normalized=True), added(base + 1, s_pre, special=True, normalized=True),
                          added(base + 2, n_pre, normalized=True), added(base + 3, u_pre, special=True)]
    tj["post_processor"] = None
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "Qwen2Tokenizer", "eos_token": s_pre, "additional_special_tokens": [n_pre]}, f,
                  ensure_ascii=False)
    compare("normalized tokens named by roles, tokenizer.json", d)

    # vocab.json + merges.txt with added_tokens_decoder (normalized given, or by default: not special).
    d = os.path.join(tmp, "normalized-roles-decoder")
    shutil.rmtree(d, ignore_errors=True)
    n = write_tiny_qwen_dir(d, {})  # the vocabulary size, for the ids below
    write_tiny_qwen_dir(d, {"tokenizer_class": "Qwen2Tokenizer", "eos_token": s_pre, "pad_token": n_pre,
                            "added_tokens_decoder": {
                                str(n): {"content": pre, "special": False},
                                str(n + 1): {"content": s_pre, "special": False, "normalized": True},
                                str(n + 2): {"content": n_pre, "special": True, "normalized": True},
                                str(n + 3): {"content": u_pre, "special": True}}})
    compare("normalized tokens named by roles, added_tokens_decoder", d)

    # added_tokens.json alone: normalized unless a role names the token.
    d = os.path.join(tmp, "normalized-roles-added-json")
    shutil.rmtree(d, ignore_errors=True)
    write_tiny_qwen_dir(d, {"tokenizer_class": "Qwen2Tokenizer", "eos_token": s_pre, "bos_token": None,
                            "unk_token": None, "additional_special_tokens": [u_pre]},
                        added_tokens_json={pre: n, s_pre: n + 1, n_pre: n + 2, u_pre: n + 3})
    compare("normalized tokens named by roles, added_tokens.json", d)


def main():
    args = parse_args(__doc__)
    require_shared(args.shared)
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        skip(f"Hugging Face tokenizers/transformers not importable: {e}")
    data = os.path.join(args.shared, "data")
    qq = os.path.join(args.build, "qwen-quant")
    tmp = work_dir(args.build, "tokenizer_features")
    tiny_tokenizer_checks(qq, tmp)
    normalized_added_checks(qq, tmp)
    qwen2_checks(qq, data, tmp)
    model_dir_checks(qq, data, tmp)
    normalized_model_dir_checks(qq, tmp)
    finish()


if __name__ == "__main__":
    main()
