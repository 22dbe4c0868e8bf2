#!/usr/bin/env python3
"""Writes the text and safetensors seeds of tests/fuzz/corpus: small inputs
that are valid for their format, so the fuzzer starts inside it (the binary
container, model and statistics seeds come from make_seeds.c).

usage: make_seeds.py REPO_ROOT OUT_DIR
"""
import json
import os
import struct
import sys

SEP = b"\n@@@@\n"  # tests/fuzz/fuzz_util.h


def safetensors(tensors, metadata=None, gap=0, trailing=b""):
    """tensors: [(name, dtype, shape, bytes)]; data laid out in order, `gap`
    zero bytes between tensors (readers accept gaps)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        begin = len(data)
        data += raw
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, len(data)]}
        data += b"\0" * gap
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data + trailing


def write(out, sub, name, data):
    d = os.path.join(out, sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def main():
    root, out = sys.argv[1], sys.argv[2]

    # ---- safetensors headers ----
    write(out, "safetensors", "mixed_dtypes", safetensors([
        ("model.embed_tokens.weight", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6)),
        ("b", "BF16", [4], b"\x80\x3f" * 4),
        ("empty", "I8", [0, 5], b""),
        ("scalar", "F16", [], b"\x00\x3c"),
        ("u", "U8", [3], b"abc"),
    ], metadata={"format": "pt", "note": "seed"}))
    write(out, "safetensors", "gaps_and_trailing", safetensors(
        [("x", "F64", [1], struct.pack("<d", 1.5)), ("y", "I32", [2, 1], b"\1\0\0\0\2\0\0\0")],
        gap=3, trailing=b"tail"))
    write(out, "safetensors", "empty_header", safetensors([]))
    write(out, "safetensors", "4d", safetensors([("t", "F8_E4M3", [1, 2, 1, 2], b"\1\2\3\4")]))

    # ---- sharded index + shards a/b/c ----
    a = safetensors([("w1", "F32", [2], f32(1, 2)), ("w2", "BF16", [1], b"\0\0")], {"format": "pt"})
    b = safetensors([("w3", "F16", [2, 2], b"\0" * 8)])
    c = safetensors([("w4", "U8", [1], b"\7")])
    index = {"metadata": {"total_size": 24},
             "weight_map": {"w1": "a.safetensors", "w2": "a.safetensors", "w3": "b.safetensors"}}
    write(out, "safetensors_index", "two_shards", json.dumps(index, indent=2).encode() + SEP + a + SEP + b)
    index["weight_map"]["w4"] = "c.safetensors"
    write(out, "safetensors_index", "three_shards", json.dumps(index).encode() + SEP + a + SEP + b + SEP + c)
    write(out, "safetensors_index", "one_shard",
          json.dumps({"weight_map": {"w3": "b.safetensors"}}).encode() + SEP + a + SEP + b)

    # ---- config.json ----
    for name, path in [("mixtral_tiny", "models/mixtral-tiny/config.json"),
                       ("qwen2moe", "tests/fixtures/qwen2moe-random/config.json"),
                       ("qwen3moe", "tests/fixtures/qwen3moe-random/config.json")]:
        with open(os.path.join(root, path), "rb") as f:
            write(out, "config", name, f.read())
    real = os.path.join(root, "..", "shared", "fixtures", "realconfigs")
    if os.path.isdir(real):
        for fn in sorted(os.listdir(real)):
            with open(os.path.join(real, fn), "rb") as f:
                write(out, "config", "real_" + fn.replace(".json", ""), f.read())
    write(out, "config", "olmoe", json.dumps({
        "architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "vocab_size": 50, "hidden_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 8, "num_experts": 4,
        "num_experts_per_tok": 2, "norm_topk_prob": False, "eos_token_id": [3, 4], "bos_token_id": None,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 128}))
    write(out, "config", "mixtral_layer_experts", json.dumps({
        "model_type": "mixtral", "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 3,
        "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 4, "num_local_experts": 4,
        "num_experts_per_tok": 2, "moec_layer_experts": [4, 2, 3], "sliding_window": None}))
    write(out, "config", "qwen2_sparse_step", json.dumps({
        "architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 4,
        "num_attention_heads": 2, "intermediate_size": 16, "moe_intermediate_size": 4,
        "shared_expert_intermediate_size": 8, "num_experts": 4, "num_experts_per_tok": 2,
        "decoder_sparse_step": 2, "mlp_only_layers": [3], "use_sliding_window": False,
        "tie_word_embeddings": True}))

    # ---- tokenizer.json + text ----
    text = "Hello, World! 12345 café  naïve\tline\n<|end|> ÆØÅ 日本語 🙂 don't".encode()
    for name in ["tok_bytelevel", "tokenizer_sp"]:
        with open(os.path.join(root, "tests/data", name + ".json"), "rb") as f:
            write(out, "tokenizer", name, f.read() + SEP + text)

    def tok(normalizer, pre, decoder, model, added=None):
        return json.dumps({"version": "1.0", "added_tokens": added or [], "normalizer": normalizer,
                           "pre_tokenizer": pre, "decoder": decoder, "model": model})

    letters = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}
    vocab = dict(letters)
    for m in ["ab", "abc", "th", "the", "he"]:
        vocab[m] = len(vocab)
    bpe = {"type": "BPE", "vocab": vocab, "merges": [["a", "b"], ["ab", "c"], "t h", "th e", "h e"]}
    write(out, "tokenizer", "split_regex_lowercase", tok(
        {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"},
                                             {"type": "Strip", "strip_left": True, "strip_right": True}]},
        {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": False},
            {"type": "Digits", "individual_digits": True}, {"type": "Punctuation", "behavior": "Removed"}]},
        {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "_"}, "content": " "},
                                          {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1,
                                                             "stop": 0}]},
        dict(bpe, unk_token="a", fuse_unk=True),
        [{"id": 40, "content": "<pad>", "special": True, "lstrip": True, "rstrip": True},
         {"id": 41, "content": "word", "single_word": True, "normalized": True}]) .encode() + SEP +
        b"The  Caf\xc3\xa9 abc <pad> word words 42!")
    sp_vocab = {"<unk>": 0, "\u2581": 1, "a": 2, "b": 3, "\u2581a": 4, "ab": 5}
    for i in range(256):
        sp_vocab["<0x%02X>" % i] = 6 + i
    write(out, "tokenizer", "metaspace_bytefallback", tok(
        None,
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
        {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                                          {"type": "ByteFallback"}, {"type": "Fuse"},
                                          {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        {"type": "BPE", "vocab": sp_vocab, "merges": ["\u2581 a", "a b"], "unk_token": "<unk>",
         "byte_fallback": True, "fuse_unk": True}).encode() + SEP + "a ab b 🙂 x".encode())
    write(out, "tokenizer", "wordlevel_suffix", tok(
        {"type": "Replace", "pattern": {"Regex": "[0-9]+"}, "content": "#"},
        {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Whitespace"},
                                               {"type": "CharDelimiterSplit", "delimiter": "-"}]},
        {"type": "BPEDecoder", "suffix": "</w>"},
        {"type": "BPE", "vocab": {"a</w>": 0, "b": 1, "a": 2, "b</w>": 3, "ab</w>": 4, "#</w>": 5, "#": 6},
         "merges": ["a b</w>"], "end_of_word_suffix": "</w>", "continuing_subword_prefix": None,
         "ignore_merges": True}).encode() + SEP + b"ab a-b 12 b")
    write(out, "tokenizer", "prefix_nfkc", tok(
        {"type": "NFKC"}, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        {"type": "ByteLevel"},
        {"type": "BPE", "vocab": {"a": 0, "##b": 1, "a##b": 2, "b": 3}, "merges": ["a ##b"],
         "continuing_subword_prefix": "##"}).encode() + SEP + b"ab \xef\xbc\xa1")
    write(out, "tokenizer", "invalid_utf8_text", tok(
        None, None, None, {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}).encode() + SEP +
        b"ab\xff\xfe\xc3(")

    # ---- text for the real tokenizers: first byte picks one ----
    samples = [b"def main():\n    return 42  # done",
               "Ünïcödé — “quotes” 𝔘 ﬁ Å".encode(),
               b"<|endoftext|>Hello<|endoftext|> world",
               b"\xff\xfe invalid \xc3\x28 bytes",
               b"\x00\x01\x02 control\r\n\ttabs",
               "   leading spaces and ▁ metaspace 🙂".encode()]
    for i, s in enumerate(samples):
        for t in range(3):
            write(out, "tokenize", "t%d_%d" % (t, i), bytes([t]) + s)

    # ---- multiple-choice JSONL ----
    write(out, "mc_jsonl", "items", "\n".join(json.dumps(x) for x in [
        {"context": "To be or not", "choices": [" to be", " to sing", " 42"], "label": 0, "domain": "drama"},
        {"context": "int main(", "choices": ["void)", "int argc"], "label": 1},
        {"context": "Ünï", "choices": ["cödé"], "label": 0.0, "extra": [1, 2, {"x": None}]},
    ]) + "\n\n  \r\n")
    write(out, "mc_jsonl", "crlf", b'{"context": "a", "choices": ["b", "c"], "label": 1}\r\n' * 2)


if __name__ == "__main__":
    main()
