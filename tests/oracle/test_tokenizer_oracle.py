"""Oracle: our tokenizer against Hugging Face `tokenizers` (and transformers when it imports), token for token.

Qwen2 byte-level BPE (../shared/data/qwen2-tokenizer: vocab.json + merges.txt + tokenizer_config.json):
  1. every row of wikitext2/wiki.test.raw, each encoded on its own INCLUDING its CRLF (so the \\r\\n handling
     of the pre-tokenizer is exercised): `qwen-quant tokenize --lines` vs the Hugging Face tokenizer that
     transformers builds for that directory (without transformers: the same pipeline spelled out with
     `tokenizers`: NFC, Split(Qwen2 regex), ByteLevel, the added tokens of tokenizer_config.json);
  2. the whole file as one text;
  3. tricky strings (Unicode letters/numbers/spaces, NFC-decomposed input, digits, contractions with odd
     case, special tokens with and without split_special_tokens, whitespace runs), 3,000 seeded random
     strings over a stress alphabet, and the 300 C4 documents, fed as JSONL;
  4. the tokenizer.json our save_hf writes for it, loaded by tokenizers.Tokenizer.from_file (and
     AutoTokenizer), encodes the WikiText rows identically.
stories260K (llama2.c tok512.bin, SentencePiece-style BPE with byte fallback):
  5. `qwen-quant tokenize --llama2c-tokenizer tok512.bin --save-hf DIR`; tokenizers.Tokenizer.from_file
     (DIR/tokenizer.json) and AutoTokenizer.from_pretrained(DIR) encode every TinyStories line (with its "\\n")
     and the whole file exactly like we do, from tok512.bin and from DIR (plus the tricky and random strings).
BOS/EOS post-processing of saved SentencePiece-style tokenizers:
  6. the TemplateProcessing in the tokenizer.json save_hf writes equals the one transformers' LlamaTokenizerFast
     rebuilds from tokenizer_config.json (ids and type ids of single and pair encodings): stories260K (BOS), and a
     llama GGUF vocabulary written here with gguf-py from it with add_bos_token false and add_eos_token true
     (`qwen-quant tokenize --model X.gguf --save-hf`; our encoding from the GGUF equals tokenizers' of the saved file).
Exit 0 pass, 1 fail (the first mismatching line is printed), 77 skip (no `tokenizers`).
"""
import json
import os
import sys

from oracle_common import parse_args, require_shared, run, skip, work_dir

QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                 r"""\s*[\r\n]+|\s+(?!\S)|\s+""")

TRICKY = [
    "Hello world", " Hello world", "Hello  world", "   leading", "trailing   ", "\t\ttabs\t", "a\n\n\nb", "\r\n\r\n",
    " \n \n\n \t", "x  \n  y", "I'm HE'S they'RE we'Ve you'LL it'D 'ſam 'S", "''''", "don't'll've",
    "1234567890 ١٢٣ ²³ Ⅻ ½", "3.14159 1e-9 0x1F", "$100,000.00!!!", "e\u0301 n\u0303 a\u030a A\u0308", "\u1100\u1161\u11a8",
    "Ω Å K ﬁ ſt", "你好，世界！ こんにちは 안녕하세요", "Привет, мир! Ελληνικά", "مرحبا بالعالم", "שלום עולם",
    "emoji 🚀🦙 😶\u200d🌫️ ✅", "zero\u200bwidth\ufeffbom", "nbsp\u00a0\u00a0x\u3000y\u2028z\u0085w", "a\x1cb\x1c\x1cc",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|><|endoftext|>x", "text<|im_end|>more",
    "<|im_start", "<|unknown|>", "    def f(x):\n        return x ** 2\n", "```python\nprint('hi')\n```",
    "ﾟ･✿ヾ╲(｡◕‿◕｡)╱✿･ﾟ", "\u0000\u0001\u007f", "A" * 300, " " * 50 + "x", "\n" * 20, "é" * 40,
]


def random_strings(n, seed=1234):
    """Short random strings over a pool chosen to stress the pre-tokenizer and NFC."""
    import random
    rng = random.Random(seed)
    pool = (list("aZ09 '\t\r\n.,!?-_") + ["'s", "'T", "'re", "'LL", "'d", "ſ", "  ", "\r\n", " \n", "\u00a0",
            "\u3000", "\u2028", "\u0085", "\x0b", "\x1c", "\u200b", "e\u0301", "\u0301", "\u0323\u0307",
            "\u1100", "\u1161", "\u11a8", "\uac00", "\u0915\u094d", "٣", "²", "Ⅻ", "你", "好", "こ", "ü", "Å",
            "\u212b", "😀", "🦙", "\u200d", "ﬁ", "<|im_end|>", "<|endoftext|>", "<|im_st", "\u0000", "$", "€"])
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def split_rows(text):
    """Rows of `text` split after each "\n" (kept), like `qwen-quant tokenize --lines`; works on str or bytes."""
    nl = "\n" if isinstance(text, str) else b"\n"
    rows = [r + nl for r in text.split(nl)]
    last = rows.pop()[:-1]
    return rows + ([last] if last else [])


def read_jsonl_ids(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["ids"] for line in f]


def first_mismatch(name, texts, ours, theirs):
    """Returns None if equal, else a message naming the first differing record."""
    if len(ours) != len(theirs):
        return f"{name}: {len(ours)} records from qwen-quant vs {len(theirs)} from Hugging Face"
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
            return (f"{name}: record {i + 1} differs: {texts[i]!r}\n  first difference at token {k}\n"
                    f"  qwen-quant:   {a[max(0, k - 3):k + 6]}\n  Hugging Face: {b[max(0, k - 3):k + 6]}")
    return None


def qwen_reference(qwen_dir):
    """The Hugging Face tokenizer for the Qwen2 directory (a tokenizers.Tokenizer)."""
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(qwen_dir)
        print(f"reference: transformers {type(tok).__name__} -> its tokenizers backend")
        return tok.backend_tokenizer
    except ImportError:
        pass
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    tok = Tokenizer(models.BPE.from_file(os.path.join(qwen_dir, "vocab.json"), os.path.join(qwen_dir, "merges.txt")))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    with open(os.path.join(qwen_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        added = json.load(f).get("added_tokens_decoder", {})
    for _, a in sorted(added.items(), key=lambda kv: int(kv[0])):
        tok.add_special_tokens([AddedToken(a["content"], special=True, normalized=False)])
    print("reference: tokenizers pipeline spelled out (transformers not importable)")
    return tok


def write_llama_gguf(tokenizer_json, path, add_bos, add_eos):
    """A llama (SentencePiece-style) GGUF vocabulary written with gguf-py from a saved tokenizer.json, in llama.cpp's
    keys: token types (UNKNOWN 2, CONTROL 3, BYTE 6, else NORMAL 1) and scores that order the merges (a merged token
    scores minus the rank of the first merge making it, single characters 0, the others -1000)."""
    import gguf
    with open(tokenizer_json, encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for piece, i in vocab.items():
        tokens[i] = piece
    types, scores = [1] * len(tokens), [0.0] * len(tokens)
    for i, piece in enumerate(tokens):
        if piece in ("<s>", "</s>"):
            types[i], scores[i] = 3, -1000.0
        elif piece == "<unk>":
            types[i], scores[i] = 2, -1000.0
        elif piece.startswith("<0x") and len(piece) == 6:
            types[i], scores[i] = 6, -1000.0
    merged = set()
    for rank, m in enumerate(tj["model"]["merges"]):
        a, b = m.split(" ") if isinstance(m, str) else m
        if a + b not in merged:
            merged.add(a + b)
            scores[vocab[a + b]] = -float(rank + 1)
    w = gguf.GGUFWriter(path, "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(vocab["<s>"])
    w.add_eos_token_id(vocab["</s>"])
    w.add_unk_token_id(vocab["<unk>"])
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def encode_all(tok, texts, add_special_tokens=True):
    return [tok.encode(t, add_special_tokens=add_special_tokens).ids for t in texts]


def main():
    args = parse_args(__doc__)
    require_shared(args.shared)
    try:
        import tokenizers  # noqa: F401
    except ImportError as e:
        skip(f"Hugging Face tokenizers not importable: {e}")
    from tokenizers import Tokenizer

    data = os.path.join(args.shared, "data")
    qq = os.path.join(args.build, "qwen-quant")
    tmp = work_dir(args.build, "tokenizer")
    failures = []

    def check(name, texts, ours, theirs):
        msg = first_mismatch(name, texts, ours, theirs)
        if msg:
            print("MISMATCH " + msg)
            failures.append(msg.splitlines()[0])
        else:
            print(f"ok {name}: {len(texts)} records, {sum(map(len, ours))} tokens identical")

    # ---- Qwen2 ------------------------------------------------------------------------------------------
    qwen_dir = os.path.join(data, "qwen2-tokenizer")
    ref = qwen_reference(qwen_dir)
    wiki_path = os.path.join(data, "wikitext2", "wiki.test.raw")
    with open(wiki_path, "rb") as f:
        raw = f.read()
    wiki_rows = [r.decode("utf-8") for r in split_rows(raw)]
    assert all(r.endswith("\r\n") for r in wiki_rows), "expected CRLF rows"
    out = os.path.join(tmp, "wiki_lines.jsonl")
    run([qq, "tokenize", "--model", qwen_dir, "--file", wiki_path, "--lines", "--out", out])
    ours = read_jsonl_ids(out)
    theirs = encode_all(ref, wiki_rows)
    check("qwen2 wikitext rows (with CRLF)", wiki_rows, ours, theirs)

    out = os.path.join(tmp, "wiki_whole.jsonl")
    run([qq, "tokenize", "--model", qwen_dir, "--file", wiki_path, "--out", out])
    text = raw.decode("utf-8")
    check("qwen2 wikitext whole file", [text[:80] + "..."], read_jsonl_ids(out), [ref.encode(text).ids])

    tricky_path = os.path.join(tmp, "tricky.jsonl")
    with open(tricky_path, "w", encoding="utf-8") as f:
        for t in TRICKY:
            f.write(json.dumps(t) + "\n")
    out = os.path.join(tmp, "tricky_ids.jsonl")
    run([qq, "tokenize", "--model", qwen_dir, "--file", tricky_path, "--jsonl", "--out", out])
    check("qwen2 tricky strings", TRICKY, read_jsonl_ids(out), encode_all(ref, TRICKY))
    run([qq, "tokenize", "--model", qwen_dir, "--file", tricky_path, "--jsonl", "--split-special", "--out", out])
    ref.encode_special_tokens = True
    check("qwen2 tricky strings, split_special_tokens", TRICKY, read_jsonl_ids(out), encode_all(ref, TRICKY))
    ref.encode_special_tokens = False

    fuzz = random_strings(3000)
    fuzz_path = os.path.join(tmp, "fuzz.jsonl")
    with open(fuzz_path, "w", encoding="utf-8") as f:
        for t in fuzz:
            f.write(json.dumps(t) + "\n")
    out = os.path.join(tmp, "fuzz_ids.jsonl")
    run([qq, "tokenize", "--model", qwen_dir, "--file", fuzz_path, "--jsonl", "--out", out])
    check("qwen2 random strings", fuzz, read_jsonl_ids(out), encode_all(ref, fuzz))

    c4_path = os.path.join(data, "c4", "c4_demo.jsonl")
    with open(c4_path, encoding="utf-8") as f:
        c4 = [json.loads(line)["text"] for line in f if line.strip()]
    out = os.path.join(tmp, "c4_ids.jsonl")
    run([qq, "tokenize", "--model", qwen_dir, "--file", c4_path, "--jsonl", "--out", out])
    check("qwen2 C4 documents", c4, read_jsonl_ids(out), encode_all(ref, c4))

    saved = os.path.join(tmp, "qwen2-saved")
    run([qq, "tokenize", "--model", qwen_dir, "--save-hf", saved, "--quiet"])
    from_file = Tokenizer.from_file(os.path.join(saved, "tokenizer.json"))
    check("qwen2 save_hf tokenizer.json (tokenizers.Tokenizer.from_file)", wiki_rows, encode_all(from_file, wiki_rows),
          theirs)
    check("qwen2 save_hf tokenizer.json, tricky", TRICKY, encode_all(from_file, TRICKY), encode_all(ref, TRICKY))
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(saved)
        check("qwen2 save_hf via AutoTokenizer", wiki_rows[:500], [auto(t).input_ids for t in wiki_rows[:500]],
              theirs[:500])
    except ImportError:
        pass

    # ---- stories260K (llama2.c) ---------------------------------------------------------------------------
    tok_bin = os.path.join(data, "stories260K", "tok512.bin")
    stories_dir = os.path.join(tmp, "stories-tokenizer")
    run([qq, "tokenize", "--llama2c-tokenizer", tok_bin, "--save-hf", stories_dir, "--quiet"])
    sp_ref = Tokenizer.from_file(os.path.join(stories_dir, "tokenizer.json"))
    tiny_path = os.path.join(data, "tinystories", "tinystories_val.txt")
    with open(tiny_path, encoding="utf-8", newline="") as f:
        tiny = f.read()
    tiny_lines = split_rows(tiny)
    sp_theirs = encode_all(sp_ref, tiny_lines)
    for source in (["--llama2c-tokenizer", tok_bin], ["--model", stories_dir]):
        out = os.path.join(tmp, "tiny_lines.jsonl")
        run([qq, "tokenize", *source, "--file", tiny_path, "--lines", "--out", out])
        check(f"stories260K tinystories lines ({source[0]})", tiny_lines, read_jsonl_ids(out), sp_theirs)
    out = os.path.join(tmp, "tiny_whole.jsonl")
    run([qq, "tokenize", "--llama2c-tokenizer", tok_bin, "--file", tiny_path, "--out", out])
    check("stories260K whole file", [tiny[:80] + "..."], read_jsonl_ids(out), [sp_ref.encode(tiny).ids])
    sp_tricky = [t for t in TRICKY if "<|" not in t] + ["<s>inside</s>", "Once upon a time"]
    with open(tricky_path, "w", encoding="utf-8") as f:
        for t in sp_tricky:
            f.write(json.dumps(t) + "\n")
    out = os.path.join(tmp, "tiny_tricky.jsonl")
    run([qq, "tokenize", "--llama2c-tokenizer", tok_bin, "--file", tricky_path, "--jsonl", "--out", out])
    check("stories260K tricky strings", sp_tricky, read_jsonl_ids(out), encode_all(sp_ref, sp_tricky))
    out = os.path.join(tmp, "tiny_fuzz.jsonl")
    run([qq, "tokenize", "--llama2c-tokenizer", tok_bin, "--file", fuzz_path, "--jsonl", "--out", out])
    check("stories260K random strings", fuzz, read_jsonl_ids(out), encode_all(sp_ref, fuzz))
    try:
        from transformers import AutoTokenizer
        auto = AutoTokenizer.from_pretrained(stories_dir)
        print(f"transformers loads the stories260K tokenizer as {type(auto).__name__}")
        check("stories260K via AutoTokenizer", tiny_lines, [auto(t).input_ids for t in tiny_lines], sp_theirs)
        decoded = [auto.decode(ids, skip_special_tokens=True) for ids in sp_theirs[:200]]
        bad = [i for i, (d, t) in enumerate(zip(decoded, tiny_lines[:200])) if d != t]
        if bad:
            failures.append(f"stories260K: transformers decode differs from the text on line {bad[0] + 1}")
    except ImportError:
        pass

    # ---- BOS/EOS post-processing of a saved SentencePiece-style tokenizer ------------------------------------
    # 6. The TemplateProcessing save_hf writes is the one transformers' LlamaTokenizerFast rebuilds from
    # tokenizer_config.json's add_bos_token/add_eos_token: ids and type ids of single and pair encodings equal, for
    # stories260K (BOS only) and for a llama GGUF made here from it with add_bos_token false, add_eos_token true.
    texts = ["Once upon a time", " leading", "", "a\nb", "<s>in</s> out"]
    pairs = [("Once upon", "a time"), ("x", ""), ("", "y")]
    variants = [("stories260K save_hf (BOS)", stories_dir, None)]
    try:
        import gguf  # noqa: F401
        gguf_path = os.path.join(tmp, "stories-eos.gguf")
        write_llama_gguf(os.path.join(stories_dir, "tokenizer.json"), gguf_path, add_bos=False, add_eos=True)
        eos_dir = os.path.join(tmp, "stories-eos-tokenizer")
        run([qq, "tokenize", "--model", gguf_path, "--save-hf", eos_dir, "--quiet"])
        variants.append(("llama GGUF add_eos, no BOS, save_hf", eos_dir, gguf_path))
    except ImportError:
        print("gguf-py not importable: the add_eos GGUF variant is not checked")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        AutoTokenizer = None
    for name, d, source in variants:
        saved_tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        if source:  # our encoding from the GGUF itself, with its BOS/EOS
            with open(tricky_path, "w", encoding="utf-8") as f:
                for t in texts:
                    f.write(json.dumps(t) + "\n")
            out = os.path.join(tmp, "eos_ids.jsonl")
            run([qq, "tokenize", "--model", source, "--file", tricky_path, "--jsonl", "--out", out])
            check(f"{name}: ours from the GGUF", texts, read_jsonl_ids(out), encode_all(saved_tok, texts))
        if AutoTokenizer is None:
            continue
        rebuilt = AutoTokenizer.from_pretrained(d).backend_tokenizer  # post-processor rebuilt by transformers
        check(f"{name}: single", texts, encode_all(saved_tok, texts), encode_all(rebuilt, texts))
        enc = lambda tok: [(e.ids, e.type_ids) for e in (tok.encode(a, b) for a, b in pairs)]  # noqa: E731
        check(f"{name}: pairs (ids, type ids)", [f"{a!r}, {b!r}" for a, b in pairs], enc(saved_tok), enc(rebuilt))

    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("PASS")


if __name__ == "__main__":
    main()
