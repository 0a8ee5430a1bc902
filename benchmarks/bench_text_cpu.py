"""CPU seconds of word2vec pretraining on the Rotten Tomatoes corpus of bench_text.py (its pool plus the plot
synopses, no cache). On a shared, loaded machine the wall time measures the other jobs; the CPU time of a one-worker
training is what an idle core takes (with two workers, the CPU time of both threads together).

    python benchmarks/bench_text_cpu.py
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402

import bench_text as bt  # noqa: E402
from transferkit.pretrain import pretrain_text  # noqa: E402

c = bt.load_rt()
classes = sorted(set(c["labels"]))
y = np.asarray([classes.index(v) for v in c["labels"]])
pool, test = bt.split_protocol(y, c["test_size"], False)
texts = [c["texts"][i] for i in pool] + list(c["extra"])
out = {}
SETTINGS = {"protocol 1 (epochs 15, window 10, 1 worker)": dict(bt.W2V_V1),
            "bench settings (epochs 30, window 5, 2 workers)": dict(bt.W2V),
            "bench settings with 1 worker (bit-reproducible)": {**bt.W2V, "workers": 1}}
for name, s in SETTINGS.items():
    t, w = time.process_time(), time.perf_counter()
    pretrain_text(texts, "word2vec", cache=False, **s)
    out[name] = {"cpu_s": time.process_time() - t, "wall_s": time.perf_counter() - w}
    print(name, out[name], flush=True)
print(json.dumps(out, indent=1))
(Path(__file__).resolve().parent / "results" / "bench_text_cpu.json").write_text(json.dumps(out, indent=1) + "\n")
