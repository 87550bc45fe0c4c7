"""Why a per-point [SS26] Eq. 5 fit fails under continuous batching (docs/gpu_validation.md).

A chat request's energy per output token against the mean number of sequences in the engine's steps over its
lifetime (admitted_s to finished_s), from requests.jsonl and steps.jsonl, and the chat-alone Eq. 5 fit's error per
quartile of that batch. Usage: python docs/gpu_validation/batch_effect.py /tmp/gpuval   (after `replay calibrate
/tmp/gpuval/chat --form all --folds 5 --out /tmp/gpuval/forms-chat`)
"""
import bisect
import json
import os
import sys

import numpy as np
import yaml

os.chdir(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gpuval")
req = [json.loads(line) for line in open("chat/requests.jsonl")]
steps = [json.loads(line) for line in open("chat/steps.jsonl")]
start = np.array([s["start_s"] for s in steps])
seqs = np.array([s["num_seqs"] for s in steps])
th = yaml.safe_load(open("forms-chat/theta-eq5.yaml"))["theta"]
rows = []
for r in req:
    if r["status"] != "finished" or not r["output_tokens"]:
        continue
    i, j = bisect.bisect_left(start, r["admitted_s"]), bisect.bisect_right(start, r["finished_s"])
    n_in, n_out = r["input_tokens"], r["output_tokens"]
    fit = (th["th0"] + th["th1"] * n_in**2 / n_out + th["th2"] * n_in + th["th3"] * n_in / n_out
           + th["th4"] * n_out + th["th5"] / n_out)
    rows.append((seqs[i:j].mean(), r["energy_j"] / n_out, fit))
b, e, f = map(np.array, zip(*rows))


def rank(x):
    return np.argsort(np.argsort(x))


print(f"{len(b)} chat requests; Spearman rank correlation of J/output token with mean batch: "
      f"{np.corrcoef(rank(b), rank(e))[0, 1]:+.2f}")
q = np.quantile(b, [0, .25, .5, .75, 1])
for lo, hi in zip(q[:-1], q[1:]):
    m = (b >= lo) & (b <= hi)
    print(f"  mean batch {lo:5.1f} to {hi:5.1f}: {m.sum():3d} requests, median {np.median(e[m]):.3f} J/output token, "
          f"chat Eq. 5 fit: median (measured / fit - 1) {np.median(e[m] / f[m] - 1):+.0%}")
