#!/usr/bin/env python3
"""Writes the committed seed corpus fuzz/seeds/<target>/ (a few KB per target, never a model
file): truncated and synthetic GGUF headers, a minimal complete GGUF and safetensors model,
tiny vocabularies, the fixtures' chat templates, option objects. Deterministic; rerun after
changing it. The campaign (scripts/fuzz.sh) grows its corpus from these in fuzz/corpus/."""
import json, os, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def put(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key, value):
    if isinstance(value, str):
        return gguf_string(key) + struct.pack("<I", 8) + gguf_string(value)
    if isinstance(value, float):
        return gguf_string(key) + struct.pack("<If", 6, value)
    return gguf_string(key) + struct.pack("<II", 4, value)


def tiny_gguf():
    """A complete llama GGUF: 1 layer, dim 8, 2 heads / 1 kv head, ffn 8, vocab 16, F32."""
    dim, ffn, vocab, kv = 8, 8, 16, 4
    kvs = [("general.architecture", "llama"), ("llama.embedding_length", dim),
           ("llama.attention.head_count", 2), ("llama.attention.head_count_kv", 1),
           ("llama.block_count", 1), ("llama.feed_forward_length", ffn),
           ("llama.context_length", 64), ("llama.attention.layer_norm_rms_epsilon", 1e-5)]
    tensors = [("token_embd.weight", [dim, vocab]), ("output_norm.weight", [dim]),
               ("blk.0.attn_norm.weight", [dim]), ("blk.0.attn_q.weight", [dim, dim]),
               ("blk.0.attn_k.weight", [dim, kv]), ("blk.0.attn_v.weight", [dim, kv]),
               ("blk.0.attn_output.weight", [dim, dim]), ("blk.0.ffn_norm.weight", [dim]),
               ("blk.0.ffn_gate.weight", [dim, ffn]), ("blk.0.ffn_up.weight", [dim, ffn]),
               ("blk.0.ffn_down.weight", [ffn, dim])]
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    head += b"".join(gguf_kv(k, v) for k, v in kvs)
    offset, data = 0, b""
    for name, dims in tensors:
        n = 1
        for d in dims:
            n *= d
        head += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", 0, offset)
        blob = b"".join(struct.pack("<f", ((i * 7919) % 17 - 8) / 16) for i in range(n))
        blob += b"\0" * (-len(blob) % 32)
        data += blob
        offset += len(blob)
    head += b"\0" * (-len(head) % 32)
    return len(head), head + data


def tiny_safetensors():
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 1,
              "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
              "intermediate_size": 8, "vocab_size": 16, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
    shapes = {"model.embed_tokens.weight": [16, 8], "model.norm.weight": [8],
              "model.layers.0.input_layernorm.weight": [8], "model.layers.0.post_attention_layernorm.weight": [8],
              "model.layers.0.self_attn.q_proj.weight": [8, 8], "model.layers.0.self_attn.k_proj.weight": [4, 8],
              "model.layers.0.self_attn.v_proj.weight": [4, 8], "model.layers.0.self_attn.o_proj.weight": [8, 8],
              "model.layers.0.mlp.gate_proj.weight": [8, 8], "model.layers.0.mlp.up_proj.weight": [8, 8],
              "model.layers.0.mlp.down_proj.weight": [8, 8]}
    header, data = {}, b""
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        blob = b"".join(struct.pack("<e", ((i * 31) % 13 - 6) / 8) for i in range(n))
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    c = json.dumps(config).encode()
    return struct.pack("<H", len(c)) + c + struct.pack("<Q", len(h)) + h + data


def main():
    data_start, full = tiny_gguf()
    put("gguf_header", "tiny_llama.gguf", full)
    put("gguf_header", "tiny_llama_cut.gguf", full[:data_start])
    real = open(os.path.join(ROOT, "tests/fixtures/tiny/qwen2/model.q8_0.gguf"), "rb").read()
    put("gguf_header", "qwen2_fixture_prefix.gguf", real[:4096])
    put("gguf_stream", "tiny_llama.gguf", b"\x07" + full)
    put("gguf_stream", "tiny_llama_cut.gguf", b"\x01" + full[: len(full) * 2 // 3])
    put("safetensors", "tiny_llama", tiny_safetensors())
    tokens = ["\x01<s>", "\x01</s>", "\x01<|im_end|>", "a", "b", "c", "Ġ", "ab", "Ġa", "1", "2", "abc", "Ċ"]
    merges = ["a b", "Ġ a", "ab c"]
    for pre in ["smollm", "qwen2", "default"]:
        put("tokenizer_gguf", pre, "\n".join([pre] + tokens + [""] + merges + ["", "ab abc 12 <|im_end|>\nc"]))
    for name in ["smollm2", "qwen2.5", "qwen3", "deepseek-r1-distill"]:
        with open(os.path.join(ROOT, "tests/fixtures/chat", name + ".json")) as f:
            template = json.load(f)["template"]
        put("chat_template", name, template + "\0You are kind.\x01Hi <think>\x01Hello</think> there\x01What is 2+2?")
    put("chat_template", "loop", "{% for i in range(100) %}{% for j in range(100) %}{{ messages }}{% endfor %}{% endfor %}\0x")
    put("options_json", "generate", json.dumps({"temperature": 0.7, "top_k": 40, "top_p": 0.9, "max_tokens": 64,
        "stop": ["\n\n"], "thinking": {"min_tokens": 10, "max_tokens": 100, "continuations": ["Wait"],
        "grace_tokens": 4, "wrap_up": "So", "answer_prefix": "Final Answer:"},
        "chat_template_kwargs": {"enable_thinking": False}}))
    put("options_json", "load", json.dumps({"backend": "cpu", "max_context": 512}))
    put("options_json", "thinking", json.dumps({"min_tokens": 3, "ignore_ends": 1, "max_continuations": 2,
        "continuations": ["Wait", "Hmm"], "continuation_order": "random", "on_early_end": "suppress", "seed": 7}))
    for i, seed in enumerate([b"\x01" * 40, bytes(range(40)), bytes((i * 37) % 256 for i in range(40))]):
        put("thinking", f"case{i}", seed)


main()
