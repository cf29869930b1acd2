"""PyTorch reference for speed comparisons on CPU or GPU (torch is not a project dependency).

The CIFAR ResNet of the paper's Sec. 4.2 (option A shortcuts) and the SGD step
of the recipe (batch of random images, lr 0.1, momentum 0.9, weight decay
1e-4), with a device, a compute dtype and device-synchronised timing, to run
beside ``experiments.benchmark`` on the same machine, back to back:

    python -m experiments.torch_reference --depth 56 --batch-size 128 --device cuda \\
        --dtype bfloat16 --channels-last [--compile reduce-overhead]

bf16 is autocast (parameters and optimizer in float32, as in this project).
Prints one JSON line: model, batch_size, device, dtype, memory_format,
step_ms (median of --repeats chunks of --steps steps), images_per_sec.
Needs torch (e.g. ``pip install torch`` in a scratch virtualenv).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def build_net(depth: int, plain: bool = False):
    """CIFAR ResNet-``depth`` (6n+2), option A shortcuts, as in the paper's Sec. 4.2."""
    import torch.nn as nn  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415, N812

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
            if not plain:
                sc = x[:, :, ::self.stride, ::self.stride]
                if self.pad:
                    sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
                y = y + sc
            return F.relu(y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(16), nn.ReLU())
            blocks, c = [], 16
            for i, w in enumerate((16, 32, 64)):
                for j in range(n):
                    blocks.append(Block(c, w, 2 if j == 0 and i else 1))
                    c = w
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean((2, 3)))

    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 >= 8, got {depth}")
    return Net()


def benchmark(depth: int, batch_size: int, steps: int, repeats: int, device: str,
              dtype: str, channels_last: bool, compile_mode: str | None) -> dict:
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415, N812

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    dev = torch.device(device)
    net = build_net(depth).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    if compile_mode is not None:
        step = torch.compile(step, mode=compile_mode)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(5):
        step()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t) / steps)
    step_s = statistics.median(times)
    return {
        "model": f"torch-resnet-{depth}",
        "torch": torch.__version__,
        "batch_size": batch_size,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": dtype,
        "memory_format": "channels_last" if channels_last else "nchw",
        "compile_mode": compile_mode,
        "step_ms": round(1e3 * step_s, 3),
        "step_ms_min": round(1e3 * min(times), 3),
        "images_per_sec": round(batch_size / step_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.torch_reference",
                                description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="steps per timed chunk")
    p.add_argument("--repeats", type=int, default=5, help="timed chunks (median reported)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 (autocast)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the step with this mode (default: 'default'); "
                   "'reduce-overhead' fails on this SGD step in torch 2.11 (CUDA graphs)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = benchmark(args.depth, args.batch_size, args.steps, args.repeats, args.device,
                           args.dtype, args.channels_last, args.compile)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
