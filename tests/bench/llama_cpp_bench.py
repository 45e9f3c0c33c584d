#!/usr/bin/env python3
"""llama.cpp's side of scripts/bench-cpu.sh, through llama-cpp-python (0.3.36).

Measures what `pensive bench` measures, the same way: synthetic prompt ids
((i * 7919 + 13) % vocab, as `pensive bench` makes them), the prefill of the prompt up to
the first greedy token, then `gen` greedy decode steps of one token each; one warm-up
round (--warmup), then the fastest of `repeats` rounds. Prints one JSON line with the same keys as
`pensive bench` (prefill_tok_s, decode_tok_s, peak_rss_mb).
"""
import argparse
import json
import resource
import time

import numpy as np
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    args = ap.parse_args()

    t0 = time.perf_counter()
    llm = Llama(
        model_path=args.model,
        n_ctx=args.prompt_tokens + args.gen_tokens + 8,
        # The whole prompt in one batch, as Pensive prefills up to 256 tokens per pass.
        n_batch=min(512, args.prompt_tokens),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    vocab = llm.n_vocab()
    prompt = [(i * 7919 + 13) % vocab for i in range(args.prompt_tokens)]

    def greedy():
        # Logits of the last evaluated position: without logits_all, llama-cpp-python
        # keeps none in llm.scores, so read the context's own buffer (the batch's last row).
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))
        return int(np.argmax(logits))

    def round_():
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        nxt = greedy()
        prefill_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.gen_tokens):
            llm.eval([nxt])
            nxt = greedy()
        return prefill_s, time.perf_counter() - t

    for _ in range(args.warmup):
        round_()  # page faults, first-use allocations
    best_prefill, best_decode = float("inf"), float("inf")
    for _ in range(max(1, args.repeats)):
        p, d = round_()
        best_prefill, best_decode = min(best_prefill, p), min(best_decode, d)
    print(json.dumps({
        "model": args.model,
        "backend": f"llama.cpp (llama-cpp-python, {args.threads} threads)",
        "load_s": load_s,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "prefill_tok_s": args.prompt_tokens / best_prefill,
        "decode_tok_s": args.gen_tokens / best_decode if args.gen_tokens else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
