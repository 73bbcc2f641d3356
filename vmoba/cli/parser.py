"""Every option of every ``vmoba`` command, in one place and one convention: ``--out`` is what a command writes
(never replaced without ``--force``), ``--seed``, ``--threads`` and ``--device`` mean the same everywhere.

Each command names the module and function that run it (``run="train:run_train_events"``); `vmoba.cli.main`
imports that module only when the command runs, so ``vmoba --help`` and ``vmoba env`` start without loading
diffusers.
"""

from __future__ import annotations

import argparse

from .arguments import (add_demo_options, add_threads_option, finite, fraction, grid, natural_int, nonnegative_real,
                        positive_int, positive_real)

ATTENTION_MODES = ("vmoba", "dense", "crisscross")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmoba",
        description="VMoBA block-sparse attention for diffusers video models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_bench(sub)
    _add_generate(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_data(sub)
    _add_demo(sub)
    _add_env(sub)
    return parser


def _add_bench(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="time VMoBA against dense attention on one layer shape",
        description="Time VMoBA attention against dense PyTorch SDPA for every layer scheme (1d, 2d, 3d) on "
        "structured inputs, and report the attended density and the relative L2 error of the output.",
    )
    bench.add_argument("--grid", type=grid, default=(8, 30, 34), help="latent grid TxHxW (default 8x30x34)")
    bench.add_argument("--heads", type=positive_int, default=4, help="attention heads (default 4)")
    bench.add_argument("--head-dim", type=positive_int, default=64, help="head dimension (default 64)")
    bench.add_argument("--threshold", type=fraction, default=0.25, help="selection threshold (default 0.25)")
    bench.add_argument("--granularity", nargs="+", choices=["token", "tile"], default=["token", "tile"])
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    add_threads_option(bench, "OMP_NUM_THREADS, else PyTorch's choice")
    bench.add_argument("--seed", type=natural_int, default=0)
    bench.set_defaults(run="bench:run_bench")


def _add_generate(sub) -> None:
    gen = sub.add_parser(
        "generate",
        help="text to video with the embedded default model (or --model PATH), VMoBA attention",
        description="Generate a video from a prompt and write it as H.264 MP4. Uses the embedded default "
        "text-to-video model unless --model names a local pipeline folder (a diffusers pipeline, or the "
        "'final' folder of a 'vmoba train' run, which samples with the attention settings it was trained with). "
        "Sizes default to the model's own.",
    )
    gen.add_argument("prompt", help='what to show, e.g. "a red circle moves right"')
    gen.add_argument("--out", required=True, help="output .mp4 file (not replaced unless --force)")
    gen.add_argument("--attention", choices=ATTENTION_MODES,
                     help="attention in the transformer's video self-attention (default: what the model was trained "
                     "with; vmoba for the embedded model and plain diffusers folders)")
    gen.add_argument("--model", help="a local pipeline folder (Wan, CogVideoX, HunyuanVideo, LTX-Video, or a "
                     "'vmoba train' export)")
    gen.add_argument("--frames", type=positive_int,
                     help="number of frames, as the model's VAE allows (4k+1 for Wan, 8k+1 for LTX-Video; default: "
                     "the model's own, 17 for the embedded one)")
    gen.add_argument("--height", type=positive_int,
                     help="frame height, a multiple of the model's spatial factor and of 16 (default: the model's)")
    gen.add_argument("--width", type=positive_int,
                     help="frame width, a multiple of the model's spatial factor and of 16 (default: the model's)")
    gen.add_argument("--steps", type=positive_int, default=20, help="denoising steps (default 20)")
    gen.add_argument("--guidance-scale", type=finite, default=None,
                     help="classifier-free guidance (default: the model's own; 2 for the embedded model, 5 for others)")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--seed", type=natural_int, default=0)
    gen.add_argument("--threshold", type=fraction,
                     help="VMoBA selection threshold (default: the model's, from its training; else 0.25)")
    gen.add_argument("--granularity", choices=["token", "tile"],
                     help="VMoBA selection granularity (default: the model's, from its training)")
    gen.add_argument("--fps", type=positive_int, default=8)
    gen.add_argument("--device", help="torch device, e.g. cuda (default: where the pipeline loads, the CPU)")
    add_threads_option(gen, "the model's training setting; 1 for the embedded model")
    gen.add_argument("--force", action="store_true", help="replace --out if it exists")
    gen.add_argument("--compare", action="store_true",
                     help="also run dense attention at the same seed; print the time ratio, mean density and PSNR")
    gen.add_argument("--motion-reference", metavar="VIDEO",
                     help="a video whose motion the generated one follows, through the motion adapter trained "
                     "for the model (motion_adapter.safetensors in its folder; the embedded one ships one); leave "
                     "the direction out of the prompt")
    gen.set_defaults(run="generate:run_generate")


def _add_train(sub) -> None:
    train = sub.add_parser(
        "train",
        help="train a model: video (fine-tune a video DiT, YAML config), events, motion",
        description="Training programs. 'vmoba train --config FILE' is short for 'vmoba train video --config FILE'. "
        "For several processes or GPUs: accelerate launch -m vmoba.train PROGRAM ...",
    )
    programs = train.add_subparsers(dest="program", metavar="PROGRAM", required=True)

    video = programs.add_parser(
        "video",
        help="fine-tune a diffusers video DiT with VMoBA attention (docs/training.md)",
        description="Fine-tune a diffusers video DiT (Wan architecture) with VMoBA attention, in this process. "
        "For several processes or GPUs run: accelerate launch -m vmoba.train video --config FILE.",
    )
    video.add_argument("--config", required=True, help="training configuration (YAML)")
    video.add_argument("--export", metavar="FOLDER",
                       help="do not train: write the model of a checkpoint of the config's run (its EMA weights "
                       "when it keeps one) to FOLDER, a new folder, as the run's end writes final/")
    video.add_argument("--checkpoint", default="latest",
                       help="with --export: 'latest' (default) or a step-N checkpoint folder")
    video.set_defaults(run="train:run_train_video")

    # Defaults of the two programs below are those of the settings classes (EventTrainingSettings,
    # FlowTrainingSettings): an option not given is not passed, and tests/cli checks the help text against them.
    events = programs.add_parser(
        "events",
        help="train the event-to-video pipeline on simulated events (docs/events.md)",
        description="Train the event-to-video pipeline on events simulated from bundled photographs; each step "
        "draws fresh sequences. Saves a pipeline folder that EventToVideoPipeline.from_pretrained loads.",
    )
    events.add_argument("--out", required=True, help="folder for the trained pipeline")
    events.add_argument("--steps", type=positive_int, help="optimizer steps; training also stops at --minutes "
                        "(default 100000)")
    events.add_argument("--minutes", type=positive_real, help="wall-clock budget (default 25.0)")
    events.add_argument("--batch-size", type=positive_int, help="sequences per step (default 8)")
    events.add_argument("--frames", type=positive_int, help="frames per training sequence (default 6)")
    events.add_argument("--denoised-frames", type=positive_int,
                        help="frames per sequence that train the denoiser (default 2)")
    events.add_argument("--size", type=positive_int, help="frame side in pixels (default 64)")
    events.add_argument("--lr", type=positive_real, help="peak learning rate (default 0.001)")
    events.add_argument("--prev-noise", type=nonnegative_real,
                        help="noise on the previous frame given to the denoiser (default 0.02)")
    events.add_argument("--seed", type=natural_int, help="(default 0)")
    events.add_argument("--log-every", type=positive_int, help="steps between log lines (default 20)")
    events.add_argument("--workers", type=natural_int, help="DataLoader processes that simulate the batches "
                        "(default 0)")
    events.add_argument("--init", help="a saved pipeline folder to continue training from")
    events.add_argument("--force", action="store_true", help="replace the pipeline --out holds")
    add_threads_option(events, "OMP_NUM_THREADS, else 1")
    events.set_defaults(run="train:run_train_events")

    motion = programs.add_parser(
        "motion",
        help="train the motion-energy flow model on synthetic clips (docs/motion.md)",
        description="Train the flow model behind vmoba.motion.estimate_flow on synthetic clips with exact flow, "
        "then measure its held-out end-point error. Saves one .safetensors file.",
    )
    motion.add_argument("--out", required=True, help="where to write the weights (.safetensors)")
    motion.add_argument("--steps", type=positive_int, help="optimizer steps (default 2000)")
    motion.add_argument("--minutes", type=positive_real, help="stop (and save) after this wall time (default 29.0)")
    motion.add_argument("--batch-size", type=positive_int, help="clips per step (default 8)")
    motion.add_argument("--frames", type=positive_int, nargs="+",
                        help="clip lengths, one drawn per step (default 7 8 9 9 10)")
    motion.add_argument("--size", type=positive_int, help="training crops are SIZE x SIZE pixels (default 64)")
    motion.add_argument("--lr", type=positive_real, help="peak learning rate (default 0.0005)")
    motion.add_argument("--energy-lr-scale", type=positive_real,
                        help="learning-rate factor of the motion-energy filters (default 0.2)")
    motion.add_argument("--freeze-energy", action="store_true",
                        help="keep the motion-energy filters at their initialisation")
    motion.add_argument("--max-speed", type=positive_real, help="fastest motion in pixels per frame (default 8.0)")
    motion.add_argument("--seed", type=natural_int, help="(default 0)")
    motion.add_argument("--init", help="start from these weights (.safetensors)")
    motion.add_argument("--skip-heldout", action="store_true",
                        help="save without measuring the held-out end-point error (saves a minute)")
    motion.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_threads_option(motion, "OMP_NUM_THREADS, else 1")
    motion.set_defaults(run="train:run_train_motion")


def _add_eval(sub) -> None:
    evaluate = sub.add_parser("eval", help="evaluate a trained model", description="Evaluate trained models.")
    programs = evaluate.add_subparsers(dest="program", metavar="PROGRAM", required=True)
    events = programs.add_parser(
        "events",
        help="event-to-video reconstruction on held-out synthetic sequences (MSE, SSIM, LPIPS)",
        description="Evaluate event-to-video reconstruction on held-out sequences against two baselines (the "
        "low-frequency estimator alone, the first frame held) and write per-sequence and mean metrics as JSON.",
    )
    events.add_argument("--weights", help="a saved pipeline folder (default: the shipped weights)")
    events.add_argument("--sequences", type=positive_int, default=24, help="(default 24)")
    events.add_argument("--frames", type=positive_int, default=8, help="frames per sequence (default 8)")
    events.add_argument("--steps", type=positive_int, default=50, help="sampling steps (default 50)")
    events.add_argument("--first", type=natural_int, default=0,
                        help="index of the first sequence; the committed test set is 0..23, validation used 100000..")
    events.add_argument("--no-lpips", action="store_true")
    events.add_argument("--out", required=True, help="JSON file to write (not replaced unless --force)")
    events.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_threads_option(events, "OMP_NUM_THREADS, else 1")
    events.set_defaults(run="evaluate:run_eval_events")


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="make training data", description="Make training datasets.")
    datasets = data.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    shapes = datasets.add_parser(
        "shapes",
        help="synthetic clips of colored shapes moving left, right, up or down, with captions",
        description="Write a synthetic video-caption dataset: circles, squares and triangles in red, green, blue "
        "or yellow moving left, right, up or down over a dark or light background, as H.264 MP4 files under "
        "OUT/videos with OUT/captions.jsonl (\"a red circle moves right\").",
    )
    shapes.add_argument("--out", required=True, help="output folder (must be empty unless --force)")
    shapes.add_argument("--count", type=positive_int, default=1000, help="number of clips (default 1000)")
    shapes.add_argument("--frames", type=positive_int, default=17, help="frames per clip, 4k+1 (default 17)")
    shapes.add_argument("--size", type=positive_int, default=64,
                        help="frame side in pixels, a multiple of 16 (default 64)")
    shapes.add_argument("--seed", type=natural_int, default=0)
    shapes.add_argument("--fps", type=positive_int, default=8)
    shapes.add_argument("--radius", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="range of the shapes' half-extent as fractions of the frame side, at most 0.3 "
                        "(default 0.11 0.16: 14-20 pixels wide at 64)")
    shapes.add_argument("--force", action="store_true",
                        help="write into a non-empty folder: replaces only files an earlier 'vmoba data shapes' wrote "
                             "there and that are unchanged (recorded in .vmoba-shapes-manifest.jsonl); anything "
                             "else in the way stops the command")
    shapes.set_defaults(run="data:run_data_shapes")


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="the Gradio demo in a browser (127.0.0.1 by default)",
        description="Start the Gradio demo app (the same as python -m vmoba.ui). Needs the demo extra: "
        "pip install 'vmoba[demo]'.",
    )
    add_demo_options(demo)
    demo.set_defaults(run="demo:run_demo")


def _add_env(sub) -> None:
    env = sub.add_parser(
        "env",
        help="versions, devices and Triton status (paste it into bug reports)",
        description="Print the versions of vmoba and its dependencies, the devices PyTorch sees, and whether "
        "the Triton kernels can run on each.",
    )
    env.set_defaults(run="env:run_env")
