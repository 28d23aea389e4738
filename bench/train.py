"""Training throughput: does the data pipeline cost anything, and how fast is a GPU run?

CPU part (always), measured in one process with every loop interleaved (the machine is noisy):
  bare      the model step alone on one batch already in memory (forward, backward, clip, AdamW)
  full      the same step fed by laser-tool's BatchLoader: uint8 data on the device, batched augmentation
  naive     the same step fed by a torchvision DataLoader with per-image PIL transforms
  fused     bare with the fused AdamW step (one kernel over all parameters)
  compiled  bare with the model under torch.compile (inductor's CPU backend) and the optimizer `train` uses
            on the CPU (single-tensor AdamW, torch's CPU default, as bare)
  gemm      fp32 matrix products: 2048x2048 squares, and exactly the products a training step of the quick
            model makes (each Linear's forward, input gradient and weight gradient at batch --batch)
  attention the model's attention kernel alone (SDPA forward and backward, once per block, at its shapes),
            and the same as two batched matrix products around a softmax
  optimizer the step's gradient clipping and AdamW update alone, single-tensor (train's on the CPU; foreach
            is bitwise equal and measured no faster, docs/recipe.md) and fused
Goals: full / bare >= 0.9 (the pipeline costs at most 10%); a training step's FLOP rate (torch's counted
FLOPs per image x images/s) >= 0.8 of the GEMM rate at the model's own shapes (issue 18). The ceiling is
that ratio for a step that spent time only on its matrix products, its attention and its optimizer step
(the faster of the two ways of each; every elementwise op, norm and copy free): no fusion of the rest can
take a step past it.

GPU part (with --gpu, on a CUDA machine): laser-tool's real `train()` on CIFAR-shaped data written in
the real CIFAR format, for ViT-tiny and xt-vit (--presets), bf16 autocast, with and without torch.compile; the
images/s of the epochs after the first. Goal: >= 50,000 images/s for ViT-tiny on one H100/H200.

    python bench/train.py            # CPU, writes bench/results/train.json
    python bench/train.py --gpu      # adds the GPU runs (writes bench/results/train_gpu.json)
    python bench/train.py --tiny --out FILE [--gpu]   # smoke test of the same code (CPU part: seconds;
                                                      # --gpu --device cpu: minutes, torch.compile included)
"""
import argparse
import hashlib
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny  # noqa: E402
from laser_tool.data import Augment, BatchLoader  # noqa: E402
from laser_tool.models import ModelSpec, build_model, count_params  # noqa: E402
from trainers.optim import make_optimizer  # noqa: E402
from trainers.presets import PRESETS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# --tiny: the same code paths in seconds (the numbers mean nothing). CPU part: one round of two steps of 16
# images; GPU part: two epochs of 2,000 fake CIFAR images.
TINY = dict(reps=1, steps=2, batch=16, epochs=2, n_train=2000, val_size=200)


def update(model, opt):
    """A step's gradient clipping and AdamW update."""
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    update(model, opt)
    opt.zero_grad(set_to_none=True)


def linear_shapes(model, x) -> list:
    """(M, K, N) of every nn.Linear product in one forward pass on `x`: (M, K) inputs times (K, N)."""
    shapes = []
    hook = lambda m, i, o: shapes.append((i[0].numel() // i[0].shape[-1], i[0].shape[-1], o.shape[-1]))
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes


def gemm_work(shapes):
    """A function doing a training step's Linear products (forward y = x W^T, input gradient g W, weight
    gradient g^T x, in the layouts autograd uses) and its FLOP count."""
    g = torch.Generator().manual_seed(0)
    mats = [(torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(m, n, generator=g))
            for m, k, n in shapes]

    def work():
        for x, w, gy in mats:
            x @ w.T, gy @ w, gy.T @ x
    return work, sum(3 * 2 * m * k * n for m, k, n in shapes)


def attention_work(spec, batch, matmuls=False):
    """A function running the model's attention kernel forward and backward once per block, at its
    shapes: q, k and v are (b, n, heads, d) tensors seen as (b, heads, n, d), as vit-tiny's LSA slices
    them from to_qkv's output. The kernel alone: the q/k/v split and the scaling count outside it.
    matmuls=True: the same attention as two batched matrix products around a masked softmax."""
    n = (spec.image_size // spec.patch_size) ** 2 + 1
    qkv = [torch.randn(batch, n, spec.heads, spec.dim_head, requires_grad=True) for _ in range(3)]
    keep = ~torch.eye(n, dtype=torch.bool)
    grad = torch.randn(batch, spec.heads, n, spec.dim_head)

    def work():
        for _ in range(spec.depth):
            q, k, v = (t.transpose(1, 2) for t in qkv)
            if matmuls:
                out = (q @ k.transpose(-1, -2)).masked_fill(~keep, float("-inf")).softmax(-1) @ v
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=1.0)
            out.backward(grad)
    return work


def optimizer_work(model, opt, x, y):
    """A function doing the step's gradient clipping and AdamW update alone (on gradients made once)."""
    F.cross_entropy(model(x), y).backward()
    return lambda: update(model, opt)


def profile_step(model, opt, x, y, steps: int, top: int = 10) -> dict:
    """Where a bare step's time goes: each op's share of the self CPU time over `steps` steps (the `top`
    largest, the matrix products summed too), from torch's profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(model, opt, x, y)
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages() if not e.key.startswith(("Optimizer.", "autograd::"))}
    total = sum(ops.values())
    share = {k: round(v / total, 3) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:top]}
    gemm = sum(v for k, v in ops.items() if k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"))
    return {"matrix_products": round(gemm / total, 3), "top_ops": share}


def naive_loader(x_uint8, y, batch_size):
    """The usual torchvision way: PIL images, per-image transforms, a DataLoader with workers."""
    import torchvision.transforms as T
    from PIL import Image

    class DS(torch.utils.data.Dataset):
        tf = T.Compose([T.RandomCrop(28, padding=2), T.RandomHorizontalFlip(), T.ToTensor()])

        def __len__(self):
            return len(x_uint8)

        def __getitem__(self, i):
            return self.tf(Image.fromarray(x_uint8[i, 0].numpy())), y[i]
    return torch.utils.data.DataLoader(DS(), batch_size=batch_size, shuffle=True, num_workers=1,
                                       drop_last=True, persistent_workers=True)


def interleaved(loops: dict, reps: int, steps: int) -> dict:
    """Seconds per step of each loop (each runs `steps` steps): the median of `reps` rounds in which every
    loop runs once in turn, so machine noise hits every loop alike, after one warm-up round (torch.compile
    compiles there)."""
    for fn in loops.values():
        fn()
    times = {k: [] for k in loops}
    for _ in range(reps):
        for name, fn in loops.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) / steps for k, v in times.items()}


# loops that time a part of a step, not a whole one
PARTS = ("gemm_model_shapes", "gemm_2048", "attention", "attention_matmuls", "optimizer", "optimizer_fused")


def ceiling(sec: dict, step_flops: float, gemm_rate: float) -> dict:
    """The parts' times, and the FLOP-rate ratio of a step that spent time on its matrix products, its
    attention and its optimizer step only (the faster torch way of each), every other op free."""
    fastest = lambda *ks: min(sec[k] for k in ks)
    floor = sec["gemm_model_shapes"] + fastest("attention", "attention_matmuls") + fastest("optimizer", "optimizer_fused")
    names = {"matrix_products": "gemm_model_shapes", "attention_kernel": "attention", "attention_as_matmuls":
             "attention_matmuls", "optimizer": "optimizer", "optimizer_fused": "optimizer_fused", "bare_step": "bare"}
    return {"step_parts_ms": {k: round(sec[v] * 1e3, 2) for k, v in names.items()},
            "ceiling_train_over_gemm_model_shapes": round(step_flops / floor / 1e9 / gemm_rate, 3)}


def cpu_bench(reps, steps, batch, compile_=True):
    from laser_tool.analysis.costs import step_flops
    spec = ModelSpec(**{**PRESETS["quick"]["model"], "image_size": 28, "channels": 1})

    def make(fused):
        torch.manual_seed(0)
        m = build_model(spec)
        return m, make_optimizer(m, 1e-3, 0.05, fused=fused)
    model, opt = make(False)
    n = batch * steps * 2
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    loader = BatchLoader(x, y, batch, augment=Augment(crop_padding=2, flip_p=0.5), seed=0)
    naive = naive_loader(x, y, batch)
    xb, yb = x[:batch].float() / 255, y[:batch]
    fused_model, fused_opt = make(True)
    compiled_model, compiled_opt = make(False)  # train's CPU optimizer (fused=True only on CUDA)
    compiled = torch.compile(compiled_model) if compile_ else None
    gemm_shapes, shape_flops = gemm_work(linear_shapes(model, xb))
    square = torch.randn(2048, 2048)
    attention, attention_mm = attention_work(spec, batch), attention_work(spec, batch, matmuls=True)
    # the optimizer loops' own models: bare's and fused's weights stay untouched
    optimizer, optimizer_fused = (optimizer_work(*make(fused), xb, yb) for fused in (False, True))

    def bare():
        for _ in range(steps):
            step(model, opt, xb, yb)

    def full(epoch=[0]):
        epoch[0] += 1
        for i, (xf, yf) in enumerate(loader.epoch(epoch[0])):
            if i == steps:
                break
            step(model, opt, xf, yf)

    naive_iter = [iter(naive)]

    def naive_loop():
        for _ in range(steps):
            try:
                xn, yn = next(naive_iter[0])
            except StopIteration:
                naive_iter[0] = iter(naive)
                xn, yn = next(naive_iter[0])
            step(model, opt, xn, yn)

    loops = {"bare": bare, "full": full, "naive": naive_loop,
             "fused": lambda: [step(fused_model, fused_opt, xb, yb) for _ in range(steps)],
             "gemm_model_shapes": lambda: [gemm_shapes() for _ in range(steps)],
             "gemm_2048": lambda: [square @ square for _ in range(steps)],
             "attention": lambda: [attention() for _ in range(steps)],
             "attention_matmuls": lambda: [attention_mm() for _ in range(steps)],
             "optimizer": lambda: [optimizer() for _ in range(steps)],
             "optimizer_fused": lambda: [optimizer_fused() for _ in range(steps)]}
    if compiled is not None:
        loops["compiled"] = lambda: [step(compiled, compiled_opt, xb, yb) for _ in range(steps)]
    sec = interleaved(loops, reps, steps)
    ips = {k: batch / sec[k] for k in sec if k not in PARTS}
    per_image = step_flops(spec)[0]
    gemm = {"model_shapes": shape_flops / sec["gemm_model_shapes"] / 1e9, "2048": 2 * 2048 ** 3 / sec["gemm_2048"] / 1e9}
    train = {k: v * per_image / 1e9 for k, v in ips.items()}
    best = max((k for k in train if k in ("bare", "fused", "compiled")), key=train.get)
    return {
        "model": "quick preset ViT (Fashion-MNIST shape 1x28x28)", "params": count_params(model),
        "batch": batch, "steps_per_rep": steps, "reps": reps,
        "images_per_s": {k: round(v, 1) for k, v in ips.items()},
        "full_over_bare": round(ips["full"] / ips["bare"], 3),
        "naive_over_bare": round(ips["naive"] / ips["bare"], 3),
        "goal_full_over_bare_at_least": 0.9, "goal_met": ips["full"] / ips["bare"] >= 0.9,
        "train_mflop_per_image": round(per_image / 1e6, 2),
        "train_gflop_per_s": {k: round(v, 1) for k, v in train.items()},
        "gemm_gflop_per_s": {k: round(v, 1) for k, v in gemm.items()},
        "train_over_gemm_model_shapes": {k: round(v / gemm["model_shapes"], 3) for k, v in train.items()},
        "train_over_gemm_2048": {k: round(v / gemm["2048"], 3) for k, v in train.items()},
        "fastest_step": best,
        "bare_step_self_time_shares": profile_step(model, opt, xb, yb, steps),
        **ceiling(sec, batch * per_image, gemm["model_shapes"]),
        "goal_train_over_gemm_at_least": 0.8,
        "goal_train_over_gemm_met": train[best] / gemm["model_shapes"] >= 0.8,
    }


def write_fake_cifar(root: Path, n_train=50000, n_test=10000):
    """Random images in the real cifar-10-batches-py format; returns the md5 table for them."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    md5 = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else n_train // 5
        d = {b"data": torch.randint(0, 256, (n, 3072), dtype=torch.uint8, generator=g).numpy(),
             b"labels": torch.randint(0, 10, (n,), generator=g).tolist()}
        blob = pickle.dumps(d)
        (folder / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    return md5


def gpu_bench(epochs, n_train=50000, val_size=5000, device="cuda", presets=("seed-vit-tiny", "seed-xt")):
    from laser_tool.data import files as data
    from trainers.config import build_config
    from trainers.train import train
    root = Path(tempfile.mkdtemp())
    md5 = write_fake_cifar(root, n_train, max(1000, n_train // 5))
    data.CIFAR_MD5["cifar10"].update(md5)  # our random files stand in for the real ones
    rows = []
    for preset in presets:
        for compile_ in (False, True):
            cfg = build_config(preset, dict(epochs=epochs, data_dir=str(root), compile=compile_, device=device,
                                            val_size=val_size, out=str(root / "runs"), name=f"{preset}-{compile_}"))
            t = time.perf_counter()
            run = train(cfg, progress=False)
            wall = time.perf_counter() - t
            hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            later = [h["images_per_s"] for h in hist[1:]] or [hist[0]["images_per_s"]]
            rows.append({"preset": preset, "compile": compile_, "amp": json.loads((run / "config.json").read_text())["amp"],
                         "batch_size": cfg.batch_size, "epochs": epochs, "wall_s": round(wall, 1),
                         "images_per_s_after_first_epoch": round(statistics.median(later), 0),
                         "first_epoch_images_per_s": round(hist[0]["images_per_s"], 0)})
            print(rows[-1], flush=True)
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__, "runs": rows,
            "goal": "ViT-tiny >= 50,000 training images/s on one H100/H200"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--n-train", type=int, default=50000, help="GPU part: fake CIFAR training images")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--no-compile", action="store_true", help="CPU part: leave out the torch.compile loop")
    ap.add_argument("--threads", type=int, help="CPU part: torch threads (default: torch's own)")
    ap.add_argument("--presets", default="seed-vit-tiny,seed-xt", help="GPU part: the presets to train")
    ap.add_argument("--device", default="cuda", help="GPU part: device (cpu only to smoke-test the script)")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/train.json; with --gpu "
                    "$OUT/train_gpu.json, or bench/results/train_gpu.json when $OUT is not set)")
    args = tiny.parse(ap, argv, TINY, "bench/results")
    if args.gpu:
        out = gpu_bench(args.epochs, args.n_train, args.val_size, args.device, args.presets.split(","))
        tiny.write(out, args, Path(os.environ.get("OUT", RESULTS)) / "train_gpu.json")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    from laser_tool.device import cpu_name
    out = {"machine": {"processor": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                       "torch": torch.__version__},
           "cpu": cpu_bench(args.reps, args.steps, args.batch, compile_=not (args.no_compile or args.tiny))}
    tiny.write(out, args, RESULTS / "train.json")


if __name__ == "__main__":
    main()
