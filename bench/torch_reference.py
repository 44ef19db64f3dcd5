#!/usr/bin/env python3
"""Baseline for the MNIST example: the same reference network and step in PyTorch
(Debian's python3-torch), trained on the same real MNIST batches for a fixed number of
steps, with the same thread count. Prints train_img_s in the example's key=value form.

    /usr/bin/python3 bench/torch_reference.py [--data DIR] [--steps N] [--threads N]
    build/examples/mnist_cnn --max-steps N --threads N     # the tapegrad side
"""
import argparse
import time

import numpy as np
import torch
import torch.nn as nn


def load_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def reference_model():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
        nn.Linear(128, 10))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/mnist")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    images = load_idx(f"{args.data}/train-images-idx3-ubyte").astype(np.float32) / 255.0
    labels = load_idx(f"{args.data}/train-labels-idx1-ubyte").astype(np.int64)
    x_all = torch.from_numpy((images - 0.1307) / 0.3081).unsqueeze(1)
    y_all = torch.from_numpy(labels)
    model = reference_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.randperm(len(y_all))
    start = time.perf_counter()
    for step in range(args.steps):
        idx = order[(step * args.batch) % (len(order) - args.batch):][:args.batch]
        x, y = x_all[idx], y_all[idx]
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    print(f"framework=pytorch-{torch.__version__} steps={args.steps} batch={args.batch} "
          f"threads={args.threads} final_loss={loss.item():.4f} "
          f"train_img_s={args.steps * args.batch / seconds:.0f}")


if __name__ == "__main__":
    main()
