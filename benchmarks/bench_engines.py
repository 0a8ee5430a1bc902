"""Inference engines side by side on the CPU: eager PyTorch vs channels-last, ONNX Runtime (fp32 and dynamic int8),
optionally torch.compile, and the whole extraction / predict pipeline with the engine ``auto`` chooses.

Every measure runs in this one process with the same torch / ONNX Runtime thread count (``--threads``), in
interleaved rounds (round r measures every engine once, in turn), and the table reports medians over rounds, so that
load from other processes on a shared machine hits all of them alike. Ratios are to the eager raw rate.

* raw rates: ready tensors (images transformed, texts tokenised beforehand, untimed), batches of ``--batch-size``,
  only the engine's forward timed (after a warm-up batch).
* pipeline: ``FeatureStore(<fresh folder>).get(..., engine="auto")``: decode + transform in DataLoader workers (pool
  sized by the package from measured rates), forward, shard writes and the view. The ONNX export and the auto check
  are done once before the rounds (they are per backbone and remembered; their one-time cost is reported).
* predict: ``load_run(run).predict(images, engine=...)`` of a probe run fitted once, fresh feature cache each time.
* decode + transform alone: load + eval transform of the same images in this process (one worker's rate).
* accuracy: the default probe run (``fit_run``: 10 labels per class, logreg, seeds ``--seeds``) on features from
  eager PyTorch, from the auto engine and from int8, each extracted into its own cache under ``--cache``.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/bench_engines.py --threads 2 --n 320 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, atomic_write_text, command_line, log, machine_info, machine_line, md_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="clipart")
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--text-data", default="drug-reviews")
    ap.add_argument("--text-backbone", default="minilm")
    ap.add_argument("--n", type=int, default=320, help="images (and texts) in the speed rounds")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--skip-image", action="store_true")
    ap.add_argument("--image-rounds", type=int, default=None, help="speed rounds of the image engines (default "
                    "--rounds; 0 skips them: accuracy, predict and text only)")
    ap.add_argument("--predict-n", type=int, default=None, help="images predicted per predict round (default --n)")
    ap.add_argument("--no-image-int8", action="store_true", help="skip int8 on images (its speed rounds and its "
                    "features of the whole dataset: slow where ONNX Runtime's int8 convolutions are)")
    ap.add_argument("--cache", default="/work/bench-cache-speed/engines")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_engines.md"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from transferkit.backbones import create_backbone
    from transferkit.data import load_data
    from transferkit.features import FeatureStore
    from transferkit.features.engines import OnnxEngine, TorchEngine, engine_folder, features_close, TOLERANCE
    from transferkit.pipeline import fit_run

    torch.set_num_threads(args.threads)
    info, cmd = machine_info(), command_line()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    doc: dict = {"command": cmd, "machine": info, "threads": args.threads, "n": args.n, "batch_size": args.batch_size,
                 "rounds": args.rounds, "tolerance": TOLERANCE}
    sections = []

    def write() -> str:
        """Write what is measured so far (after each section: a late failure keeps the earlier results)."""
        text = f"### bench_engines\n\ncommand: `{cmd}`\n\n{machine_line(info)}\n\n" + "\n".join(sections)
        atomic_write_text(args.out, text)
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(doc, indent=1, default=str))
        return text

    def rate(fn, n):
        t = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t)

    def fresh_store(engines_from: Path) -> tuple[FeatureStore, Path]:
        tmp = Path(tempfile.mkdtemp(prefix="tk-bench-engines-"))
        (tmp / "engines").symlink_to(engines_from / "engines")  # the export and the check are per backbone, once
        return FeatureStore(tmp), tmp

    def linked(path: Path) -> Path:
        """A cache folder sharing this benchmark's exported models and remembered checks (``engines/``)."""
        path.mkdir(parents=True, exist_ok=True)
        (cache / "engines").mkdir(exist_ok=True)
        if not (path / "engines").exists():
            (path / "engines").symlink_to(cache / "engines")
        return path

    def setup(data, backbone):
        """All of ``data``, its first ``--n`` items, the backbone, and the engine ``auto`` picks for it (timed once)."""
        everything = load_data(data)
        src = everything.subset(np.arange(min(args.n, len(everything))))
        model = create_backbone(backbone).eval()
        model.weights_digest()
        t = time.perf_counter()
        ch = FeatureStore(cache).resolve_engine(model, "auto", "cpu", items=10_000, log=log)
        return everything, src, len(src), model, ch.engine, time.perf_counter() - t

    def probe(tag, engine, precision="32", data=args.data, backbone=args.backbone):
        accs = []
        for s in seeds:
            out = Path(tempfile.mkdtemp(prefix="tk-bench-run-"))
            shutil.rmtree(out)
            r = fit_run(data, backbone=backbone, seed=s, out=out, cache_dir=linked(cache / f"features-{tag}"), baseline=False,
                        report=False, progress=False, engine=engine, feature_precision=precision, num_workers=1)
            accs.append(100 * r.metrics["accuracy"])
            shutil.rmtree(out, ignore_errors=True)
        return accs

    # ------------------------------------------------------------------ images
    if not args.skip_image:
        source_all, source, n, bb, chosen, auto_s = setup(args.data, args.backbone)
        log(f"auto chose {chosen.describe()} ({auto_s:.1f}s, one time)")
        tf = bb.transform()
        tensors = [tf(source.load(i)) for i in range(n)]
        batches = [torch.stack(tensors[i:i + args.batch_size]) for i in range(0, n, args.batch_size)]
        del tensors
        folder = engine_folder(cache, bb)
        engines = {"eager": TorchEngine(bb, torch.device("cpu")),
                   "channels-last": TorchEngine(bb, torch.device("cpu"), channels_last=True),
                   "onnxruntime": OnnxEngine(bb, folder, torch.device("cpu"))}
        if not args.no_image_int8:
            engines["onnxruntime int8"] = OnnxEngine(bb, folder, torch.device("cpu"), precision="int8")
        if args.compile:
            compiled = TorchEngine(bb, torch.device("cpu"))
            t = time.perf_counter()
            compiled._module = torch.compile(bb)
            with compiled.session():
                compiled(batches[0])
            compiled.variant = "torch.compile"
            engines["torch.compile"] = compiled
            doc["compile_s"] = time.perf_counter() - t
            log(f"torch.compile warm-up {doc['compile_s']:.1f}s")

        def raw(engine) -> float:
            with engine.session():
                engine(batches[0])  # warm-up
                return rate(lambda: [engine(b) for b in batches], n)

        def pipeline(workers=None) -> float:
            store, tmp = fresh_store(cache)
            try:
                t = time.perf_counter()
                f = store.get(bb, source, batch_size=args.batch_size, num_workers=workers, device="cpu", engine="auto",
                              log=log if workers is None else None)
                wall = time.perf_counter() - t
                assert f.extracted == n and not f.bad
                return f.extracted / wall
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        def decode() -> float:
            return rate(lambda: [tf(source.load(i)) for i in range(n)], n)

        res: dict[str, list[float]] = {k: [] for k in [*engines, "pipeline (auto, workers sized)", "pipeline (auto, 1 worker process)",
                                                       "decode + transform, 1 process"]}
        image_rounds = args.rounds if args.image_rounds is None else args.image_rounds
        for r in range(image_rounds):
            for name, e in engines.items():
                res[name].append(raw(e))
                log(f"round {r} raw {name}: {res[name][-1]:.1f} images/s (load {os.getloadavg()[0]:.2f})")
            res["pipeline (auto, workers sized)"].append(pipeline(None))
            res["pipeline (auto, 1 worker process)"].append(pipeline(1))
            res["decode + transform, 1 process"].append(decode())
            log(f"round {r} pipeline {res['pipeline (auto, workers sized)'][-1]:.1f} / "
                f"{res['pipeline (auto, 1 worker process)'][-1]:.1f}, decode {res['decode + transform, 1 process'][-1]:.1f}")
        med = {k: statistics.median(v) for k, v in res.items() if v}
        eager = med.get("eager", float("nan"))
        engine_rate = med.get(chosen.variant if chosen.variant != "eager" else "eager", eager)
        chosen_name = chosen.variant

        # features of the full dataset per engine (own caches), drift and probe accuracy


        def feats(tag, engine, precision="32"):
            return FeatureStore(linked(cache / f"features-{tag}")).get(bb, source_all, batch_size=args.batch_size, device="cpu",
                                                               engine=engine, feature_precision=precision)

        f_eager, f_auto = feats("eager", "torch"), feats("auto", "auto")
        ok, diff, tol = features_close(np.asarray(f_eager.X), np.asarray(f_auto.X))
        diff8 = cos8 = float("nan")
        if not args.no_image_int8:
            f_int8 = feats("int8", "onnx", "int8")
            _, diff8, _ = features_close(np.asarray(f_eager.X), np.asarray(f_int8.X))
            a, b = np.asarray(f_eager.X, np.float64), np.asarray(f_int8.X, np.float64)
            cos8 = float(np.min((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

        acc = {"eager": probe("eager", "torch"), "auto": probe("auto", "auto")}
        if not args.no_image_int8:
            acc["int8"] = probe("int8", "onnx", "int8")
        log(f"probe accuracy {acc}")

        # predict: a probe run fitted once (eager features), predicting the speed subset with a fresh cache
        from transferkit.runs import load_run

        run_dir = cache / "predict-run"
        if not (run_dir / "model").is_dir():
            shutil.rmtree(run_dir, ignore_errors=True)
            fit_run(args.data, backbone=args.backbone, seed=0, out=run_dir, cache_dir=linked(cache / "features-eager"),
                    baseline=False, report=False, progress=False, engine="torch", num_workers=1)
        run = load_run(run_dir)
        pred: dict[str, list[float]] = {"predict (engine torch)": [], "predict (engine auto)": []}
        psrc = source.subset(np.arange(min(args.predict_n or n, n)))
        pn = len(psrc)
        frames = {}
        for r in range(args.rounds):
            for label, eng in (("predict (engine torch)", "torch"), ("predict (engine auto)", "auto")):
                store, tmp = fresh_store(cache)
                try:
                    t = time.perf_counter()
                    frames[label] = run.predict(psrc, cache_dir=tmp, device="cpu", engine=eng)
                    pred[label].append(pn / (time.perf_counter() - t))
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                log(f"round {r} {label}: {pred[label][-1]:.1f} images/s")
        pmed = {k: statistics.median(v) for k, v in pred.items()}
        pa, pb = frames["predict (engine torch)"], frames["predict (engine auto)"]
        same_pred = float((pa["prediction"] == pb["prediction"]).mean())
        pcols = [c for c in pa.columns if c.startswith("p_")]
        pdiff = float(np.abs(pa[pcols].to_numpy(float) - pb[pcols].to_numpy(float)).max())

        rows = []
        for k, v in res.items():
            if not v:
                continue
            rows.append([k, f"{med[k]:.1f}", ", ".join(f"{x:.1f}" for x in v), f"{med[k] / eager:.2f}"])
        for k, v in pred.items():
            rows.append([k, f"{pmed[k]:.1f}", ", ".join(f"{x:.1f}" for x in v), f"{pmed[k] / eager:.2f}"])
        img_table = md_table(["measure (images/s)", "median", "rounds", "x eager raw"], rows)
        pipe = med.get("pipeline (auto, workers sized)", float("nan"))
        acc_rows = [[k, ", ".join(f"{x:.1f}" for x in v), f"{statistics.mean(v):.2f}",
                     f"{statistics.mean(v) - statistics.mean(acc['eager']):+.2f}"] for k, v in acc.items()]
        acc_table = md_table(["features", f"probe accuracy % (seeds {args.seeds})", "mean", "vs eager (points)"], acc_rows)
        sections.append(
            f"#### {args.backbone} on {args.data}, {args.threads} threads\n\n"
            f"{n} images at {bb.preprocessing.input_size} px, batch {args.batch_size}, {image_rounds} interleaved rounds "
            f"(predict: {pn} images, {args.rounds} rounds). "
            f"`auto` chose **{chosen.describe()}** (one-time export + check {auto_s:.1f}s, remembered).\n\n{img_table}\n\n"
            f"- pipeline (auto) / eager raw: **{pipe / eager:.2f}x** (target >= 4); pipeline / {chosen_name} raw: "
            f"**{pipe / engine_rate:.2f}x** (target >= 0.9)\n"
            f"- predict (auto) / eager raw: **{pmed['predict (engine auto)'] / eager:.2f}x**; predictions identical to "
            f"engine torch on {100 * same_pred:.1f}% of {pn} images, max |p diff| {pdiff:.2g}\n"
            f"- features on all {len(source_all)} images, auto vs eager: max |diff| {diff:.3g} (tolerance {tol:.3g}: "
            f"{'within' if ok else 'NOT within'}); int8 vs eager: max |diff| {diff8:.3g}, min cosine {cos8:.4f}\n\n"
            f"{acc_table}\n")
        doc["image"] = {"raw_and_pipeline": res, "predict": pred, "median": med, "predict_median": pmed,
                        "chosen": chosen.describe(), "auto_s": auto_s, "diff": diff, "tol": tol, "diff_int8": diff8,
                        "min_cos_int8": cos8, "accuracy": acc, "same_prediction": same_pred, "max_p_diff": pdiff}
        write()

    # ------------------------------------------------------------------ text
    if not args.skip_text:
        tsrc_all, tsrc, tn, tb, tchosen, tauto_s = setup(args.text_data, args.text_backbone)
        texts = [tsrc.load(i) for i in range(tn)]
        tbatches = [tb.collate(texts[i:i + args.batch_size]) for i in range(0, tn, args.batch_size)]
        tfolder = engine_folder(cache, tb)
        tengines = {"eager": TorchEngine(tb, torch.device("cpu")), "onnxruntime": OnnxEngine(tb, tfolder, torch.device("cpu")),
                    "onnxruntime int8": OnnxEngine(tb, tfolder, torch.device("cpu"), precision="int8")}

        def traw(e):
            with e.session():
                e(tbatches[0])
                return rate(lambda: [e(b) for b in tbatches], tn)

        def tpipe():
            store, tmp = fresh_store(cache)
            try:
                t = time.perf_counter()
                f = store.get(tb, tsrc, batch_size=args.batch_size, device="cpu", engine="auto")
                return f.extracted / (time.perf_counter() - t)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        tres: dict[str, list[float]] = {k: [] for k in [*tengines, "pipeline (auto)"]}
        for r in range(args.rounds):
            for k, e in tengines.items():
                tres[k].append(traw(e))
            tres["pipeline (auto)"].append(tpipe())
            log(f"text round {r}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in tres.items()))
        tmed = {k: statistics.median(v) for k, v in tres.items()}

        def tfeats(tag, engine, precision="32"):
            return FeatureStore(linked(cache / f"features-{tag}")).get(tb, tsrc_all, batch_size=args.batch_size, device="cpu",
                                                               engine=engine, feature_precision=precision)

        te, ta, t8 = tfeats("eager", "torch"), tfeats("auto", "auto"), tfeats("int8", "onnx", "int8")
        tok, tdiff, ttol = features_close(np.asarray(te.X), np.asarray(ta.X))
        _, tdiff8, _ = features_close(np.asarray(te.X), np.asarray(t8.X))
        tacc = {"eager": probe("eager", "torch", data=args.text_data, backbone=args.text_backbone),
                "auto": probe("auto", "auto", data=args.text_data, backbone=args.text_backbone),
                "int8": probe("int8", "onnx", "int8", data=args.text_data, backbone=args.text_backbone)}
        teager = tmed["eager"]
        trows = [[k, f"{tmed[k]:.1f}", ", ".join(f"{x:.1f}" for x in v), f"{tmed[k] / teager:.2f}"]
                 for k, v in tres.items()]
        tacc_rows = [[k, ", ".join(f"{x:.1f}" for x in v), f"{statistics.mean(v):.2f}",
                      f"{statistics.mean(v) - statistics.mean(tacc['eager']):+.2f}"] for k, v in tacc.items()]
        sections.append(
            f"#### {args.text_backbone} on {args.text_data}, {args.threads} threads\n\n"
            f"{tn} texts, batch {args.batch_size}, {args.rounds} interleaved rounds. `auto` chose "
            f"**{tchosen.describe()}** (one-time export + check {tauto_s:.1f}s).\n\n"
            f"{md_table(['measure (texts/s)', 'median', 'rounds', 'x eager raw'], trows)}\n\n"
            f"- pipeline (auto) / eager raw: **{tmed['pipeline (auto)'] / teager:.2f}x**; features on all "
            f"{len(tsrc_all)} texts, auto vs eager: max |diff| {tdiff:.3g} (tolerance {ttol:.3g}: "
            f"{'within' if tok else 'NOT within'}); int8 vs eager max |diff| {tdiff8:.3g}\n\n"
            f"{md_table(['features', f'probe accuracy % (seeds {args.seeds})', 'mean', 'vs eager (points)'], tacc_rows)}\n")
        doc["text"] = {"rates": tres, "median": tmed, "chosen": tchosen.describe(), "auto_s": tauto_s, "diff": tdiff,
                       "tol": ttol, "diff_int8": tdiff8, "accuracy": tacc}

    print(write())


if __name__ == "__main__":
    main()
