#!/usr/bin/python3
"""tapegrad against PyTorch on the reference MNIST model, one side after the other, alternating.

The reference model (examples/mnist_models.c): conv 1->32 3x3 (no bias) -> BN -> ReLU ->
maxpool 2 -> conv 32->64 -> BN -> ReLU -> maxpool 2 -> linear 3136->128 (no bias) -> BN1d ->
ReLU -> linear 128->10; batch 128 on real MNIST batches; SGD with momentum 0.9 and a cosine
learning rate from 0.05 to 0 (per step), as build/examples/mnist_cnn trains it (compiled
plans). Each measurement runs each side as its own subprocess, so each side's peak RSS is its
own (taken from os.wait4's rusage of that child).

  /usr/bin/python3 bench/compare_torch.py [--threads 1,2] [--pairs 3] [--steps N]
        [--build build] [--data data/mnist] [--skip-train] [--skip-latency]
        [--time-to-accuracy] [--tta-epochs 2] [--tta-lr 0.05] [--tta-pairs 1]

Measurements (docs/speed.md says what each number means):
  train     images/s over 1 epoch (468 steps of 128, the last partial batch dropped) or
            --steps N; evaluation excluded; augmentation off (--shift 0) on both sides;
            peak RSS of the whole process (model, data, the final evaluation included).
  latency   batch-1 evaluation latency: PyTorch eval() under torch.no_grad() against
            build/bench/mnist_latency (the evaluation forward traced at batch 1, compiled with
            batch norm folded); median over --latency-runs single-image calls.
  --time-to-accuracy
            the recipe of docs/speed.md on 2 threads (or --tta-threads) on both sides: time
            spent training until the first end-of-epoch evaluation at or above 99.0% test
            accuracy (evaluation time not counted).

Exits 77 when PyTorch (python3-torch) cannot be imported: run it with /usr/bin/python3.
The last lines are key=value summaries, one per measurement and thread count.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEAN, STD = 0.1307, 0.3081
STEPS_PER_EPOCH = 60000 // 128


# ---- the PyTorch side (run as `compare_torch.py --worker ...`) ---------------------------------
def load_idx(path):
    import numpy as np
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        import gzip
        with gzip.open(path + ".gz", "rb") as f:
            data = f.read()
    else:
        with open(path, "rb") as f:
            data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def reference_model():
    import torch.nn as nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
        nn.Linear(128, 10))


def load_split(data, split):
    import torch
    images = load_idx(f"{data}/{split}-images-idx3-ubyte").astype("float32") / 255.0
    labels = load_idx(f"{data}/{split}-labels-idx1-ubyte").astype("int64")
    return torch.from_numpy((images - MEAN) / STD).unsqueeze(1), torch.from_numpy(labels)


def shift_batch(x, shift, gen):
    """Moves each image by up to `shift` pixels in x and y, filling with the background,
    as mnist_cnn's --shift does (vectorized: pad, then gather each image's window)."""
    import torch
    if shift == 0:
        return x
    n = x.shape[0]
    background = -MEAN / STD
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), value=background)
    dy = torch.randint(-shift, shift + 1, (n,), generator=gen)
    dx = torch.randint(-shift, shift + 1, (n,), generator=gen)
    rows = (torch.arange(28)[None, :] - dy[:, None] + shift)  # [n, 28]
    cols = (torch.arange(28)[None, :] - dx[:, None] + shift)
    idx_n = torch.arange(n)[:, None, None]
    return padded[idx_n, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def torch_evaluate(model, x_test, y_test):
    import torch
    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(y_test), 1000):
            logits = model(x_test[start:start + 1000])
            right += (logits.argmax(1) == y_test[start:start + 1000]).sum().item()
    model.train()
    return 100.0 * right / len(y_test)


def worker_train(args):
    """Trains as mnist_cnn does and prints its lines: 'epoch k: ... test_acc X% (S s, ...)'
    after each epoch and a key=value summary."""
    import math
    import resource
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "t10k")
    model = reference_model()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    per_epoch = len(y_train) // args.batch
    total = args.epochs * per_epoch
    step, train_seconds, images, loss = 0, 0.0, 0, float("nan")
    test_acc = 0.0
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(y_train), generator=gen)
        start = time.perf_counter()
        seen = 0
        for b in range(per_epoch):
            if args.max_steps and step >= args.max_steps:
                break
            idx = order[b * args.batch:(b + 1) * args.batch]
            x = shift_batch(x_train[idx], args.shift, gen)
            y = y_train[idx]
            lr = args.lr if args.constant_lr else \
                0.5 * args.lr * (1 + math.cos(math.pi * min(step / total, 1.0)))
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            step += 1
            seen += len(y)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        images += seen
        test_acc = torch_evaluate(model, x_test, y_test)
        print(f"epoch {epoch}: loss {loss.item():.4f} test_acc {test_acc:.2f}% "
              f"({seconds:.1f} s, {seen / seconds:.0f} img/s)", flush=True)
        if args.max_steps and step >= args.max_steps:
            break
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"framework=pytorch-{torch.__version__} steps={step} batch={args.batch} "
          f"threads={args.threads} final_loss={loss.item():.4f} test_acc={test_acc:.2f} "
          f"train_img_s={images / train_seconds:.0f} peak_rss_mb={rss:.0f}")


def worker_latency(args):
    import resource
    import torch
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_test, _ = load_split(args.data, "t10k")
    model = reference_model().eval()
    times = []
    with torch.no_grad():
        warm = args.runs // 10 + 10
        for r in range(-warm, args.runs):
            x = x_test[r % 100:r % 100 + 1]
            t0 = time.perf_counter()
            model(x)
            t1 = time.perf_counter()
            if r >= 0:
                times.append(t1 - t0)
    times.sort()
    n = len(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"framework=pytorch-{torch.__version__} mode=eval-no_grad batch=1 "
          f"threads={args.threads} runs={n} latency_us={1e6 * times[n // 2]:.1f} "
          f"p10_us={1e6 * times[n // 10]:.1f} p90_us={1e6 * times[n * 9 // 10]:.1f} "
          f"peak_rss_mb={rss:.0f}")


# ---- the driver ----------------------------------------------------------------------------------
def kv(line):
    return dict(re.findall(r"(\w+)=(\S+)", line))


def thread_env(threads):
    env = dict(os.environ)
    # Both sides get the thread count through their API too; these keep OpenMP, OpenBLAS and
    # MKL (if any) from starting more.
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    return env


def run_measured(cmd, threads):
    """Runs cmd as a child and returns (stdout, peak RSS in MB, CPU seconds), both from the
    child's own rusage (os.wait4). CPU time does not count waiting for a busy core: at 1
    thread it shows the work on a shared machine better than the wall clock does."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=thread_env(threads), cwd=ROOT)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"compare_torch: {' '.join(cmd)} failed ({p.returncode}):\n{err[-2000:]}")
    return out, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def describe_machine():
    model, flags = "unknown", ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    vec = "avx512f" if " avx512f" in flags else "avx2 (no avx512f)" if " avx2" in flags else "?"
    print(f"CPU: {model}, {os.cpu_count()} vCPUs, vector: {vec}")
    try:
        q = subprocess.run(["update-alternatives", "--query", "libblas.so.3-x86_64-linux-gnu"],
                           capture_output=True, text=True).stdout
        value = re.search(r"^Value: (.*)$", q, re.M)
        print(f"system BLAS (libblas.so.3 alternative): {value.group(1) if value else '?'}")
    except OSError:
        print("system BLAS: update-alternatives not found")
    # Which BLAS the torch process actually maps, after a product has run.
    probe = ("import torch,re\n"
             "a=torch.randn(256,256); (a@a).sum().item()\n"
             "libs=sorted({l.split()[-1] for l in open('/proc/self/maps') "
             "if re.search(r'blas|lapack|mkl|dnnl|gomp', l)})\n"
             "print('torch', torch.__version__, 'maps:', ', '.join(libs))\n"
             "print('torch config:', ' | '.join(x.strip() for x in "
             "torch.__config__.show().splitlines() if x.strip() and 'CXX_FLAGS' not in x)[:600])\n"
             "print('mkldnn enabled:', torch.backends.mkldnn.is_available())\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    print(r.stdout.strip() or r.stderr.strip())
    if "openblas" not in r.stdout:
        print("WARNING: torch is not using OpenBLAS: install libopenblas0-pthread "
              "(scripts/setup.sh libopenblas0-pthread); with the reference BLAS PyTorch is "
              "~2.5x slower and a comparison proves little")


def median(values):
    return statistics.median(values) if values else float("nan")


def train_pairs(args, threads, summary):
    steps_flag = ["--max-steps", str(args.steps)] if args.steps else []
    what = f"{args.steps} steps" if args.steps else f"1 epoch ({STEPS_PER_EPOCH} steps)"
    print(f"\n== training, {what} of batch 128, {threads} thread(s), {args.pairs} pair(s), "
          f"augmentation off on both sides")
    tg_cmd = [os.path.join(args.build, "examples", "mnist_cnn"), "--data", args.data,
              "--epochs", "1", "--batch", "128", "--shift", "0", "--threads", str(threads)] \
        + steps_flag
    pt_cmd = [sys.executable, __file__, "--worker", "train", "--data", args.data,
              "--epochs", "1", "--batch", "128", "--shift", "0", "--threads", str(threads)] \
        + steps_flag
    res = {"tapegrad": [], "pytorch": []}
    for pair in range(args.pairs):
        for side, cmd in (("tapegrad", tg_cmd), ("pytorch", pt_cmd)):
            out, rss, cpu = run_measured(cmd, threads)
            last = kv(out.strip().splitlines()[-1])
            img_s = float(last["train_img_s"])
            res[side].append((img_s, rss, float(last.get("test_acc", "nan"))))
            print(f"  pair {pair + 1} {side:9s} {img_s:8.0f} img/s  peak RSS {rss:7.0f} MB  "
                  f"test_acc {last.get('test_acc', '?')}%  (process CPU {cpu:.1f} s, "
                  f"startup, data and evaluation included)", flush=True)
    tg_img = median([r[0] for r in res["tapegrad"]])
    pt_img = median([r[0] for r in res["pytorch"]])
    tg_rss = median([r[1] for r in res["tapegrad"]])
    pt_rss = median([r[1] for r in res["pytorch"]])
    ratios = [t[0] / p[0] for t, p in zip(res["tapegrad"], res["pytorch"])]
    print(f"  median: tapegrad {tg_img:.0f} img/s, pytorch {pt_img:.0f} img/s, "
          f"ratio {tg_img / pt_img:.2f}x (pairs: {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"peak RSS {tg_rss:.0f} MB vs {pt_rss:.0f} MB ({tg_rss / pt_rss:.2f})")
    summary.append(f"measure=train threads={threads} steps={args.steps or STEPS_PER_EPOCH} "
                   f"tapegrad_img_s={tg_img:.0f} pytorch_img_s={pt_img:.0f} "
                   f"speedup={tg_img / pt_img:.2f} tapegrad_rss_mb={tg_rss:.0f} "
                   f"pytorch_rss_mb={pt_rss:.0f} rss_ratio={tg_rss / pt_rss:.2f}")


def latency_pairs(args, threads, summary):
    print(f"\n== batch-1 evaluation latency, {threads} thread(s), {args.pairs} pair(s), "
          f"{args.latency_runs} runs each (median)")
    tg_cmd = [os.path.join(args.build, "bench", "mnist_latency"), "--data", args.data,
              "--threads", str(threads), "--runs", str(args.latency_runs)]
    pt_cmd = [sys.executable, __file__, "--worker", "latency", "--data", args.data,
              "--threads", str(threads), "--runs", str(args.latency_runs)]
    res = {"tapegrad": [], "pytorch": []}
    for pair in range(args.pairs):
        for side, cmd in (("tapegrad", tg_cmd), ("pytorch", pt_cmd)):
            out, _, _ = run_measured(cmd, threads)
            last = kv(out.strip().splitlines()[-1])
            res[side].append(float(last["latency_us"]))
            print(f"  pair {pair + 1} {side:9s} {float(last['latency_us']):8.1f} us "
                  f"(p10 {last['p10_us']}, p90 {last['p90_us']})", flush=True)
    tg, pt = median(res["tapegrad"]), median(res["pytorch"])
    print(f"  median: tapegrad {tg:.1f} us, pytorch {pt:.1f} us, tapegrad/pytorch {tg / pt:.2f}")
    summary.append(f"measure=latency threads={threads} batch=1 tapegrad_us={tg:.1f} "
                   f"pytorch_us={pt:.1f} latency_ratio={tg / pt:.2f}")


EPOCH_LINE = re.compile(r"^epoch (\d+): .*test_acc ([\d.]+)% \(([\d.]+) s")


def time_to_target(out, target):
    """Training seconds until the first end-of-epoch evaluation at or above target."""
    seconds = 0.0
    for line in out.splitlines():
        m = EPOCH_LINE.match(line)
        if m:
            seconds += float(m.group(3))
            if float(m.group(2)) >= target:
                return seconds, int(m.group(1)), float(m.group(2))
    return float("nan"), None, None


def time_to_accuracy(args, summary):
    t = args.tta_threads
    recipe = ["--epochs", str(args.tta_epochs), "--batch", "128", "--lr", str(args.tta_lr),
              "--shift", str(args.tta_shift), "--threads", str(t)]
    print(f"\n== time to {args.target}% test accuracy, {t} thread(s): recipe {' '.join(recipe)} "
          f"(cosine, SGD momentum 0.9; evaluated after every epoch, evaluation not timed)")
    tg_cmd = [os.path.join(args.build, "examples", "mnist_cnn"), "--data", args.data] + recipe
    pt_cmd = [sys.executable, __file__, "--worker", "train", "--data", args.data] + recipe
    res = {"tapegrad": [], "pytorch": []}
    for pair in range(args.tta_pairs):
        for side, cmd in (("tapegrad", tg_cmd), ("pytorch", pt_cmd)):
            out, _, _ = run_measured(cmd, t)
            sec, epoch, acc = time_to_target(out, args.target)
            accs = [m.group(2) for m in map(EPOCH_LINE.match, out.splitlines()) if m]
            res[side].append(sec)
            print(f"  run {pair + 1} {side:9s} " +
                  (f"{sec:7.1f} s (reached {acc:.2f}% after epoch {epoch})" if epoch else
                   "did not reach the target") + f"; test_acc per epoch: {', '.join(accs)}",
                  flush=True)
    tg, pt = median(res["tapegrad"]), median(res["pytorch"])
    print(f"  median: tapegrad {tg:.1f} s, pytorch {pt:.1f} s")
    summary.append(f"measure=time_to_{args.target} threads={t} tapegrad_s={tg:.1f} "
                   f"pytorch_s={pt:.1f} speedup={pt / tg:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["train", "latency"], help=argparse.SUPPRESS)
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "mnist"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs per measurement")
    ap.add_argument("--steps", type=int, default=0, help="fixed steps instead of 1 epoch")
    ap.add_argument("--latency-runs", type=int, default=2000)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--time-to-accuracy", action="store_true")
    ap.add_argument("--target", type=float, default=99.0)
    ap.add_argument("--tta-threads", type=int, default=2)
    ap.add_argument("--tta-epochs", type=int, default=2)
    ap.add_argument("--tta-lr", type=float, default=0.05)
    ap.add_argument("--tta-shift", type=int, default=0)
    ap.add_argument("--tta-pairs", type=int, default=1)
    # worker options
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--shift", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--constant-lr", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        print("compare_torch: PyTorch is not importable by this interpreter "
              f"({sys.executable}); install python3-torch and run /usr/bin/python3", flush=True)
        sys.exit(77)
    if args.worker:
        args.threads = int(args.threads)
        return worker_train(args) if args.worker == "train" else worker_latency(args)

    for exe in ("examples/mnist_cnn", "bench/mnist_latency"):
        if not os.access(os.path.join(args.build, exe), os.X_OK):
            sys.exit(f"compare_torch: build first: {os.path.join(args.build, exe)} is missing")
    if not os.path.exists(os.path.join(args.data, "train-labels-idx1-ubyte")) and \
            not os.path.exists(os.path.join(args.data, "train-labels-idx1-ubyte.gz")):
        sys.exit(f"compare_torch: no MNIST in {args.data} (scripts/fetch_mnist.sh {args.data})")
    describe_machine()
    summary = []
    threads = [int(t) for t in args.threads.split(",") if t]
    for t in threads:
        if not args.skip_train:
            train_pairs(args, t, summary)
        if not args.skip_latency:
            latency_pairs(args, t, summary)
    if args.time_to_accuracy:
        time_to_accuracy(args, summary)
    print()
    for line in summary:
        print(line)


if __name__ == "__main__":
    main()
