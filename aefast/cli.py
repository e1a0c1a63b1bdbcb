"""The ``aefast`` command."""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

import aefast
from aefast import _backends


def collect_info() -> dict:
    """Versions, devices, backends (True or why not) and build features, as plain data."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    compiled = _backends.compiled_module()
    build = dict(compiled.build_info()) if compiled else {"cuda": False, "compiler": None}
    cpu = dict(compiled.cpu_features()) if compiled else {}
    devices = ["cpu"] + [
        f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
    ]
    return {
        "versions": {
            "aefast": aefast.__version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton_version,
            "cuda_runtime": torch.version.cuda,
        },
        "devices": devices,
        "backends": aefast.available_backends(),
        "build": {key: (list(value) if isinstance(value, tuple) else value) for key, value in build.items()},
        "cpu": cpu,
    }


def _int_list(text: str) -> list[int]:
    """A comma-separated list of ints (argparse names the option when this raises)."""
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _print_info(info: dict) -> None:
    versions = info["versions"]
    print(f"aefast {versions['aefast']}")
    print(f"  python {versions['python']}, torch {versions['torch']}, triton {versions['triton'] or 'not installed'}")
    print(f"  compiler (aefast._C): {info['build'].get('compiler') or 'extension not built'}")
    print("devices:")
    for device in info["devices"]:
        print(f"  {device}")
    print("backends:")
    for name, status in info["backends"].items():
        print(f"  {name:<10} {'available' if status is True else 'unavailable: ' + status}")
    print("build features:")
    print(f"  CUDA kernels: {'yes' if info['build'].get('cuda') else 'no'}")
    cpu = info["cpu"]
    if cpu:
        flags = ", ".join(f"{name} {'yes' if cpu[name] else 'no'}" for name in ("avx2", "avx512f", "avx512vpopcntdq"))
        print(f"  CPU: {flags}; kernel ISA in use: {cpu['kernel_isa']}; OpenMP threads: {cpu['openmp_threads']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aefast", description="Fused autoencoder kernels for PyTorch")
    commands = parser.add_subparsers(dest="command", required=True)
    info_parser = commands.add_parser("info", help="versions, devices, backends and build features")
    info_parser.add_argument("--json", action="store_true", help="print the information as JSON")
    train_parser = commands.add_parser("train", help="train one of the seeds' autoencoders and draw its figures")
    train_parser.add_argument("--model", required=True, choices=["ae", "sparse", "denoising", "vae", "cvae", "conv"],
                              help="the seeds' model: plain, sparse (L1 code), denoising, VAE, conditional VAE, conv")
    train_parser.add_argument("--data", required=True, help="digits, synthetic, or a path to an .npz or IDX file")
    train_parser.add_argument("--epochs", type=int, required=True, help="passes over the data")
    train_parser.add_argument("--out", required=True, help="folder for the PNGs, summary.json and checkpoints")
    train_parser.add_argument("--batch-size", type=int, default=128, help="rows per step (default: %(default)s)")
    train_parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default: %(default)s)")
    train_parser.add_argument("--seed", type=int, default=0,
                              help="seeds the initial weights, the batch order and the noise (default: %(default)s)")
    train_parser.add_argument("--device", default="cpu",
                              help="where the model trains: cpu, cuda or cuda:N (default: %(default)s)")
    bench_parser = commands.add_parser("bench", help="run the benchmarks and print what aefast buys")
    bench_parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs")
    bench_parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                              help="where to time (default: cuda when there is one, else cpu)")
    bench_parser.add_argument("--only", default="vae,mlp,willshaw,models",
                              help="comma-separated components (default: %(default)s)")
    bench_parser.add_argument("--json", dest="json_path", default=None, help="write the table's rows here")
    bench_parser.add_argument("--markdown", dest="markdown_path", default=None, help="write a Markdown table here")
    willshaw_parser = commands.add_parser("willshaw", help="the Willshaw memory's storage experiments (CSV + PNG)")
    experiments = willshaw_parser.add_subparsers(dest="experiment", required=True)
    for name, help_text in (("capacity", "errors and density against the number of stored pairs"),
                            ("noise", "incomplete and noisy cues under every threshold"),
                            ("scaling", "bits per synapse at capacity and recalls per second against n")):
        experiment = experiments.add_parser(name, help=help_text)
        experiment.add_argument("--n", type=int, required=True,
                                help="units per side" + (" (the largest size)" if name == "scaling" else ""))
        experiment.add_argument("--ones", type=int, required=name != "scaling",
                                help="ones per pattern M" + (" (default: log2(n/4) per size)" if name == "scaling" else ""))
        experiment.add_argument("--seed", type=int, default=0,
                                help="seeds the patterns and cues; a run repeats exactly from it (default: %(default)s)")
        experiment.add_argument("--out", required=True, help="folder for the CSV and PNG; a rerun resumes from its CSV")
        experiment.add_argument("--queries", type=int, default=1000,
                                help="recalls measured per point (default: %(default)s)")
        experiment.add_argument("--device", default="cpu", help="where the memory lives: cpu, cuda or cuda:N (default: %(default)s)")
        if name == "capacity":
            experiment.add_argument("--pairs", type=_int_list,
                                    help="comma-separated pair counts (default: 12 up to 2 x capacity)")
        if name == "noise":
            experiment.add_argument("--pairs", type=int, help="stored pairs (default: capacity)")
            experiment.add_argument("--fixed-threshold", type=int, help="T of the fixed threshold (default: M // 2)")
        if name == "scaling":
            experiment.add_argument("--sizes", type=_int_list,
                                    help="comma-separated sizes (default: powers of 2 from 2^10 to n)")
    args = parser.parse_args(argv)
    if args.command == "willshaw":
        from aefast.willshaw import experiments as willshaw_experiments

        common = dict(seed=args.seed, out=args.out, queries=args.queries, device=args.device)
        try:
            if args.experiment == "capacity":
                rows = willshaw_experiments.capacity(args.n, args.ones, pairs=args.pairs, **common)
            elif args.experiment == "noise":
                rows = willshaw_experiments.noise(args.n, args.ones, pairs=args.pairs,
                                                  fixed_threshold=args.fixed_threshold, **common)
            else:
                rows = willshaw_experiments.scaling(args.n, args.ones, sizes=args.sizes, **common)
        except (ValueError, TypeError, MemoryError) as error:
            parser.error(str(error))
        print(f"{len(rows)} rows in {args.out}/{args.experiment}.csv, plots in {args.out}/{args.experiment}.png")
    if args.command == "bench":
        from aefast import bench_cli

        try:
            return bench_cli.main([c.strip() for c in args.only.split(",") if c.strip()], quick=args.quick,
                                  device=args.device, json_path=args.json_path, markdown_path=args.markdown_path)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            parser.error(str(error))
    if args.command == "train":
        from pathlib import Path

        from aefast.train_cli import run

        try:
            summary = run(args.model, args.data, args.epochs, Path(args.out), batch_size=args.batch_size, lr=args.lr,
                          seed=args.seed, device=args.device)
        except (ValueError, TypeError, FloatingPointError) as error:  # FloatingPointError: the loss diverged
            parser.error(str(error))
        print(json.dumps(summary, indent=2))
    if args.command == "info":
        info = collect_info()
        if args.json:
            json.dump(info, sys.stdout, indent=2)
            print()
        else:
            _print_info(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
