"""`python -m training.stepcost [ROUNDS]`: the cost of one sentiment training step by mode.

Each round runs one step of every mode in turn on real training batches of 32 tweets, so
all modes see the same load on a shared host; the first round is a warm-up. Prints seconds
per step and the cost relative to the former quick profile's steps (random batches, 128
tokens, fp32). training/README.md records the figures.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

MODES = {  # name: (length buckets, bfloat16 autocast, max tokens)
    "random batches, 128 tokens, fp32": (False, False, 128),
    "length buckets, 64 tokens, fp32": (True, False, 64),
    "length buckets, 64 tokens, bf16": (True, True, 64),
    "random batches, 128 tokens, bf16": (False, True, 128),
}


def main(rounds: int = 25) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from training import sentiment

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    task = sentiment.load_task(None, None, None, None, 128, 42)
    model = sentiment.TextClassifier(sentiment.load_encoder(task.encoder), 3, 0.1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    lengths = np.array([len(s) for s in task.seqs])
    gen = torch.Generator().manual_seed(0)
    batches = {b: sentiment.epoch_batches(task.splits.train, np.minimum(lengths, 64), 32, b,
                                          gen) for b in (False, True)}
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode, (buckets, bf16, cut) in MODES.items():
            batch = batches[buckets][r]
            feeds = sentiment.pad([task.seqs[i][:cut] for i in batch])
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model.logits(torch.from_numpy(feeds["input_ids"]),
                                      torch.from_numpy(feeds["attention_mask"]))
            loss = torch.nn.functional.cross_entropy(logits.float(),
                                                     torch.from_numpy(task.y[batch]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if r:
                times[mode].append(time.perf_counter() - t0)
    base = sum(times[next(iter(MODES))])
    print(f"load average {os.getloadavg()[0]:.1f}, {rounds - 1} rounds")
    for mode, ts in times.items():
        print(f"{mode:36s} {np.mean(ts):.3f} s/step  relative cost {sum(ts) / base:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 25)
