#!/usr/bin/python3
"""Writes tests/fixtures/torch_fixtures.h: reference values from PyTorch for
tests/test_torch_agreement.c. Run by hand (not by CI) from the repository root:

    /usr/bin/python3 tests/make_torch_fixtures.py

Everything is deterministic (fixed seeds, no randomness in the network), and every value is
computed in float64 from inputs that are exactly representable in float32, so the C test can
run the same network in f32 and in f64 and compare both against one reference.

What it records:
  * a network using every tapegrad_nn layer, in training mode, for one forward/backward:
      conv(3->4, k3, s1, p1, bias) -> BN2d -> ReLU -> maxpool 2 -> conv(4->4, k3, s2, p1, no
      bias) -> BN2d -> ReLU -> avgpool 2 -> flatten -> linear(16->10) -> BN1d -> ReLU ->
      dropout(p=0.3, fixed mask) -> linear(10->5) -> cross_entropy
    its inputs, parameters, logits, loss, the gradient of every parameter and of the input, the
    BN running estimates after that step, and the logits in eval mode afterwards;
  * a few steps of SGD (momentum + Nesterov + weight decay; momentum + dampening), Adam and
    AdamW on fixed parameters and gradients, with one skipped gradient and a learning-rate
    change, recording the parameters after every step.
"""
import os
import sys

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "torch_fixtures.h")


def f32_exact(t):
    """Rounds to float32 and back, so the C side can load the value into f32 exactly."""
    return t.to(torch.float32).to(torch.float64)


def gen(seed, *shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return f32_exact(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)


class Entries:
    def __init__(self):
        self.items = []

    def add(self, name, tensor, f32_input=False):
        """f32_input: the value is exactly a float32 (an input); 9 digits recover it once the
        C side rounds it to float. Results get 15 digits, far below the test tolerances."""
        t = tensor.detach().to(torch.float64).contiguous()
        digits = 9 if f32_input else 15
        text = [f"{v:.{digits}g}" for v in t.flatten().tolist()]
        self.items.append((name, list(t.shape), text))


def network(entries):
    n, p_drop = 4, 0.3
    x = gen(1, n, 3, 14, 14)
    labels = torch.tensor([0, 3, 1, 4])
    g = torch.Generator().manual_seed(2)
    mask = (torch.rand(n, 10, generator=g, dtype=torch.float64) >= p_drop).to(torch.float64)

    # Parameters: PyTorch's default initialization of each layer, then BN affine values that
    # are not 1 and 0 so that their gradients are exercised.
    torch.manual_seed(3)
    conv1 = torch.nn.Conv2d(3, 4, 3, stride=1, padding=1, bias=True)
    conv2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False)
    fc1 = torch.nn.Linear(16, 10)
    fc2 = torch.nn.Linear(10, 5)
    bn1, bn2 = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    bn3 = torch.nn.BatchNorm1d(10)
    for i, bn in enumerate((bn1, bn2, bn3)):
        c = bn.num_features
        with torch.no_grad():
            bn.weight.copy_(1 + gen(10 + i, c, scale=0.2))
            bn.bias.copy_(gen(20 + i, c, scale=0.2))
    modules = {"conv1": conv1, "bn1": bn1, "conv2": conv2, "bn2": bn2, "fc1": fc1, "bn3": bn3,
               "fc2": fc2}
    with torch.no_grad():
        for m in modules.values():
            for p in m.parameters():
                p.copy_(f32_exact(p))
    params = [(f"{m}.{k}", p) for m, mod in modules.items() for k, p in mod.named_parameters()]

    def forward(x, training):
        for m in modules.values():
            m.train(training)
        h = F.relu(bn1(conv1(x)))
        h = F.max_pool2d(h, 2)
        h = F.relu(bn2(conv2(h)))
        h = F.avg_pool2d(h, 2)
        h = F.relu(bn3(fc1(torch.flatten(h, 1))))
        if training:  # F.dropout with this mask: zero the dropped, scale the kept
            h = h * mask / (1 - p_drop)
        return fc2(h)

    entries.add("x", x, True)
    entries.add("labels", labels.to(torch.float64), True)
    entries.add("dropout_mask", mask, True)
    for name, p in params:
        entries.add(name, p, True)
    x.requires_grad_(True)
    logits = forward(x, True)
    loss = F.cross_entropy(logits, labels)
    grads = torch.autograd.grad(loss, [x] + [p for _, p in params])
    entries.add("logits", logits)
    entries.add("loss", loss.reshape(()))
    entries.add("grad.x", grads[0])
    for (name, _), gp in zip(params, grads[1:]):
        entries.add("grad." + name, gp)
    for name in ("bn1", "bn2", "bn3"):
        entries.add(name + ".running_mean", modules[name].running_mean)
        entries.add(name + ".running_var", modules[name].running_var)
    with torch.no_grad():
        entries.add("eval_logits", forward(x, False))


def optimizers(entries):
    p0, p1 = gen(40, 3, 4), gen(41, 5)
    steps = 4
    grads = [(gen(50 + s, 3, 4), gen(60 + s, 5)) for s in range(steps)]
    entries.add("opt.p0", p0, True)
    entries.add("opt.p1", p1, True)
    for s, (g0, g1) in enumerate(grads):
        entries.add(f"opt.g0.{s}", g0, True)
        entries.add(f"opt.g1.{s}", g1, True)
    # The C test must use the same settings; see optim_cases in test_torch_agreement.c.
    cases = {
        "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                                   weight_decay=0.01),
        "sgd_dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.8, dampening=0.25,
                                                    weight_decay=0.001),
        "adam": lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.99), eps=1e-6,
                                            weight_decay=0.01),
        "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                                              weight_decay=0.1),
    }
    for name, make in cases.items():
        ps = [p0.clone().requires_grad_(True), p1.clone().requires_grad_(True)]
        opt = make(ps)
        for s, (g0, g1) in enumerate(grads):
            if s == 2:  # the learning rate is halved before the third step
                for group in opt.param_groups:
                    group["lr"] *= 0.5
            ps[0].grad = g0.clone()
            ps[1].grad = None if s == 1 else g1.clone()  # p1 skips the second step
            opt.step()
            entries.add(f"opt.{name}.p0.{s}", ps[0])
            entries.add(f"opt.{name}.p1.{s}", ps[1])


def c_double(text):
    return text if ("e" in text or "." in text or "n" in text) else text + ".0"


def write(entries):
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    lines = [
        "/* Generated by tests/make_torch_fixtures.py with torch %s; do not edit. Values are"
        % torch.__version__,
        " * float64 results (15 digits) from inputs exactly representable in float32 (9 digits:",
        " * round them to float to recover them exactly). */",
        "#ifndef TG_TORCH_FIXTURES_H",
        "#define TG_TORCH_FIXTURES_H",
        "",
        "#include <stdint.h>",
        "",
        "typedef struct {",
        "    const char *name;",
        "    int ndim;",
        "    int64_t shape[4];",
        "    int64_t numel;",
        "    const double *data;",
        "} fx_tensor;",
        "",
    ]
    for i, (name, shape, data) in enumerate(entries.items):
        lines.append(f"/* {name} {shape} */")
        lines.append(f"static const double fx_data_{i}[] = {{")
        for k in range(0, len(data), 6):
            lines.append("    " + ", ".join(c_double(v) for v in data[k:k + 6]) + ",")
        lines.append("};")
    lines.append("")
    lines.append("static const fx_tensor fx_tensors[] = {")
    for i, (name, shape, data) in enumerate(entries.items):
        dims = ", ".join(str(d) for d in shape) if shape else "0"
        lines.append(f'    {{"{name}", {len(shape)}, {{{dims}}}, {len(data)}, fx_data_{i}}},')
    lines.append("};")
    lines.append("#define FX_COUNT ((int)(sizeof fx_tensors / sizeof fx_tensors[0]))")
    lines.append("")
    lines.append("#endif")
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    total = sum(len(d) for _, _, d in entries.items)
    print(f"wrote {OUT}: {len(entries.items)} tensors, {total} values", file=sys.stderr)


def main():
    entries = Entries()
    network(entries)
    optimizers(entries)
    write(entries)


if __name__ == "__main__":
    main()
