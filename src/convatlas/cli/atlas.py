"""``convatlas draw`` (pictures of one convolution, or of receptive fields on a picture) and ``convatlas report``
(a one-page HTML report of any network).

    convatlas draw conv --input 5x5 --kernel 3 --stride 2 --padding 1 --out conv.gif
    convatlas draw transposed --input 3x3 --stride 2 --padding 1 --output-padding 1 --view scatter --out t.gif
    convatlas draw field convnext_tiny --out fields.png
    convatlas report convnext_tiny --out report.html
"""

from __future__ import annotations

import argparse
from pathlib import Path

DRAW_SUFFIXES = (".gif", ".svg", ".png")
MAX_SCREENSHOT_HEIGHT = 16384  # pixels: the tallest window a screenshot is taken in


def _ints(text: str, option: str) -> int | tuple[int, ...]:
    """``"3"`` -> 3, ``"3x2"`` -> ``(3, 2)``."""
    try:
        values = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{option} must look like 3 or 3x2 (one value per dimension), got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _size(text: str, option: str = "--input") -> tuple[int, ...]:
    value = _ints(text, option)
    size = (value,) if isinstance(value, int) else value
    if not 1 <= len(size) <= 2 or any(v < 1 for v in size):
        raise ValueError(f"{option} must be L or HxW with positive sizes (a 1-D or 2-D input), got {text!r}")
    return size


def _check_out(args: argparse.Namespace, suffixes: tuple[str, ...]) -> Path:
    from convatlas.files import check_output_file

    path = Path(args.out)
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"--out {path}: the extension must be one of {', '.join(suffixes)}, got {path.suffix!r}")
    return check_output_file(path, "--out", overwrite=args.overwrite)


def _draw(args: argparse.Namespace) -> int:
    from convatlas import atlas

    if args.kind == "field":
        return _draw_field(args)
    out = _check_out(args, DRAW_SUFFIXES)
    if args.frame is not None and out.suffix.lower() == ".gif":
        raise ValueError(f"--frame picks the frame of an .svg or .png; the .gif {out} holds every frame")
    if getattr(args, "values", True) is False and getattr(args, "seed", None) is not None:
        raise ValueError("--seed seeds the numbers that --values writes; without --values nothing is random")
    frame = 0 if args.frame is None else args.frame
    common = {"cell": args.cell} if args.cell is not None else {}
    seed = getattr(args, "seed", None) or 0
    if args.kind == "sentence":
        drawing = atlas.draw_sentence(args.sentence, _kernels(args.kernel), dim=args.dim, padding=args.padding,
                                      seed=seed, **common)  # fmt: skip
    else:
        size = _size(args.input)
        kernel = _ints(args.kernel, "--kernel") if args.kind != "pointwise" else 1
        geometry = {
            "stride": _ints(args.stride, "--stride") if args.stride is not None else None,
            "padding": _ints(args.padding, "--padding") if args.kind != "pointwise" else 0,
            "dilation": _ints(args.dilation, "--dilation") if args.kind != "pointwise" else 1,
        }
        if args.kind == "conv":
            drawing = atlas.draw_convolution(size, kernel, stride=geometry["stride"], padding=geometry["padding"],
                                             dilation=geometry["dilation"], values=args.values, seed=seed,
                                             **common)  # fmt: skip
        elif args.kind == "pool":
            drawing = atlas.draw_pooling(size, kernel, ceil_mode=args.ceil_mode, mode=args.mode, values=args.values,
                                         seed=seed, **geometry, **common)  # fmt: skip
        elif args.kind == "transposed":
            drawing = atlas.draw_transposed(
                size, kernel, stride=geometry["stride"], padding=geometry["padding"],
                output_padding=_ints(args.output_padding, "--output-padding"), dilation=geometry["dilation"],
                view=args.view, values=args.values, seed=seed, **common,
            )  # fmt: skip
        else:  # depthwise, pointwise, separable
            drawing = atlas.draw_channels(
                args.kind, size, in_channels=args.channels, out_channels=getattr(args, "out_channels", None),
                kernel=kernel, multiplier=getattr(args, "multiplier", 1), stride=geometry["stride"],
                padding=geometry["padding"], dilation=geometry["dilation"], **common,
            )  # fmt: skip
    drawing.save(out, frame=frame, overwrite=True)
    n = len(drawing.scene.frames)
    what = f"{n} frames" if out.suffix.lower() == ".gif" else f"frame {frame % n} of {n}"
    print(f"wrote {out} ({what}): {drawing.title}")
    return 0


def _kernels(text: str) -> tuple[int, ...]:
    """``--kernel`` of ``draw sentence``: filter heights separated by commas."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--kernel must be filter heights separated by commas, like 2,3; got {text!r}") from None


def _draw_field(args: argparse.Namespace) -> int:
    from convatlas.atlas.field import field_figure
    from convatlas.cli.analysis import _analyse

    out = _check_out(args, (".png",))
    model, size, user_model = _model(args.model, args.input)
    point = None
    if args.point is not None:
        point = _ints(args.point, "--point")
        if isinstance(point, int) or len(point) != 2:
            raise ValueError(f"--point must be YxX in input pixels, got {args.point!r}")
    figure = _analyse(args, model, size, user_model, lambda: field_figure(
        model, size, image=args.image, point=point, samples=args.samples, seed=args.seed))  # fmt: skip
    figure.save(out, overwrite=True)
    for stage in figure.stages:
        print(f"{stage.name} ({stage.path}): unit {stage.unit}, field {'x'.join(map(str, stage.size))}")
    print(f"wrote {out}: effective field of {figure.layer} at unit {figure.unit}")
    return 0


def _model(spec: str, input_text: str | None):
    """The model, its input size and whether it is the user's own (``module:function``): a registry name or
    ``module:function`` (as in ``convatlas summary``), or a training run folder / checkpoint JSON (rebuilt with
    :func:`convatlas.train.load_model`)."""
    from convatlas.cli.analysis import load_model, parse_input

    if Path(spec).exists():
        from convatlas.train import load_model as load_checkpoint

        model, record = load_checkpoint(spec)
        if record.task == "detection":
            raise ValueError(
                f"MODEL {spec}: a detection checkpoint (lists of images in, boxes out); report its backbone"
            )
        default = None
        if record.inputs is not None:
            side = record.inputs.image_size or record.inputs.data_size
            side = (side, side) if isinstance(side, int) else tuple(side)
            default = (int(record.inputs.in_channels), *side)
        if input_text is not None:
            return model, parse_input(input_text), False
        if default is None:
            raise ValueError(f"MODEL {spec}: the checkpoint does not record its input size; give --input")
        return model, default, False
    model, default = load_model(spec)
    size = parse_input(input_text) if input_text is not None else default or (3, 224, 224)
    return model, size, default is None


def _report(args: argparse.Namespace) -> int:
    from convatlas.analysis.erf import MAX_SAMPLES
    from convatlas.atlas.report import build_report
    from convatlas.cli.analysis import _analyse

    out = _check_out(args, (".html", ".htm"))
    if args.screenshot is not None:
        from convatlas.files import check_output_file

        if Path(args.screenshot).suffix.lower() != ".png":
            raise ValueError(f"--screenshot {args.screenshot}: the extension must be .png")
        check_output_file(args.screenshot, "--screenshot", overwrite=args.overwrite)
        if args.screenshot_height is not None and not 1 <= args.screenshot_height <= MAX_SCREENSHOT_HEIGHT:
            raise ValueError(f"--screenshot-height must be in 1..{MAX_SCREENSHOT_HEIGHT}, got {args.screenshot_height}")
        import importlib.util

        from convatlas.atlas.browser import find_chromium

        find_chromium()  # before the work: say now if the browser is missing
        if importlib.util.find_spec("selenium") is None:
            raise ValueError("--screenshot needs selenium to drive the browser: pip install selenium")
    elif args.screenshot_height is not None:
        raise ValueError("--screenshot-height applies to --screenshot; without --screenshot no picture is taken")
    if not 0 <= args.erf_samples <= MAX_SAMPLES:
        raise ValueError(f"--erf-samples must be in 0..{MAX_SAMPLES}, got {args.erf_samples}")
    model, size, user_model = _model(args.model, args.input)
    picture = args.erf_samples and len(size) == 3 and size[0] in (1, 3)  # as build_report decides
    given = "--image" if args.image is not None else "--seed" if args.seed is not None else None
    if given and not picture:
        why = "--erf-samples is 0" if not args.erf_samples else f"the input {'x'.join(map(str, size))} is not an image"
        raise ValueError(f"{given} applies to the receptive-field picture, and there is none: {why}")
    image = "astronaut" if args.image is None else args.image
    seed = 0 if args.seed is None else args.seed
    report = _analyse(args, model, size, user_model, lambda: build_report(
        model, size, title=args.title, erf_samples=args.erf_samples, image=image, seed=seed))  # fmt: skip
    report.save(out, overwrite=True)
    s = report.summary
    print(
        f"wrote {out} ({len(report.html) / 1e6:.2f} MB): {s.model}, input {'x'.join(map(str, s.input_size))}, "
        f"{s.total_params:,} parameters, {s.total_macs:,} MACs, {len(report.network.spine)} blocks in "
        f"{len(report.network.stages)} stages"
    )
    if args.screenshot is not None:
        from convatlas.atlas.browser import screenshot
        from convatlas.files import atomic_write_bytes

        atomic_write_bytes(args.screenshot, screenshot(out, height=args.screenshot_height))
        print(f"wrote {args.screenshot}: the page as headless Chromium renders it")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "draw",
        help="animate a convolution (GIF) or draw one frame (SVG/PNG), or receptive fields on a picture",
        description="Pictures of one convolution in the spirit of Dumoulin & Visin's guide, every window read off "
        "the convolution matrix; or the receptive fields of a model's stages on a picture.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    from convatlas.cli import ArgumentParser, add_threads_option, seed_type

    out = ArgumentParser(add_help=False)
    out.add_argument("--out", required=True, help="output file: .gif (every frame), .svg or .png (one frame)")
    out.add_argument("--frame", type=int, default=None, help="the frame of an .svg or .png (default 0; -1: the last)")
    out.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    out.add_argument("--cell", type=float, default=None, help="cell size in pixels, 4..100")
    grid = ArgumentParser(add_help=False)
    grid.add_argument("--input", required=True, help="input size: L (1-D) or HxW (2-D)")
    window = ArgumentParser(add_help=False)
    window.add_argument("--kernel", default="3", help="kernel size: k or KHxKW (default 3)")
    window.add_argument("--padding", default="0", help="padding on each side: p or PHxPW (default 0)")
    window.add_argument("--dilation", default="1", help="dilation: d or DHxDW (default 1)")
    values = ArgumentParser(add_help=False)
    values.add_argument("--values", action="store_true", help="write numbers in the cells (small random integers)")
    values.add_argument("--seed", type=seed_type, default=None, help="seed of the numbers --values writes (default 0)")

    k = kinds.add_parser("conv", parents=[grid, window, values, out],
                         help="convolution (1-D or 2-D, stride, padding, dilation)")  # fmt: skip
    k.add_argument("--stride", default="1", help="stride: s or SHxSW (default 1)")
    k = kinds.add_parser("pool", parents=[grid, window, values, out],
                         help="max or average pooling, ceil_mode's partial windows")  # fmt: skip
    k.add_argument("--stride", default=None, help="stride (default: the kernel size, as in PyTorch)")
    k.add_argument("--mode", choices=("max", "avg"), default="max")
    k.add_argument("--ceil-mode", action="store_true", help="round the output size up (partial windows)")
    k = kinds.add_parser("transposed", parents=[grid, window, values, out],
                         help="transposed convolution, drawn two ways")  # fmt: skip
    k.add_argument("--stride", default="1", help="stride: s or SHxSW (default 1)")
    k.add_argument("--output-padding", default="0", help="output padding a < max(s, d) (default 0)")
    k.add_argument(
        "--view",
        choices=("convolution", "scatter"),
        default="convolution",
        help="convolution: stride-1 over the zero-inserted input; scatter: each input through C^T",
    )
    for name, text in (
        ("depthwise", "depthwise convolution (one filter per channel)"),
        ("pointwise", "pointwise (1x1) convolution mixing channels"),
        ("separable", "depthwise then pointwise, with parameter counts"),
    ):
        # a pointwise convolution has no kernel, padding or dilation; only the steps that exist take their options
        k = kinds.add_parser(name, parents=[grid, out] if name == "pointwise" else [grid, window, out], help=text)
        k.add_argument("--stride", default="1", help="stride of the depthwise (or 1x1) step (default 1)")
        k.add_argument("--channels", type=int, default=3, help="input channels (default 3)")
        if name != "depthwise":
            k.add_argument("--out-channels", type=int, default=None, help="output channels of the 1x1 step")
        if name != "pointwise":
            k.add_argument("--multiplier", type=int, default=1, help="depthwise filters per channel (default 1)")
    k = kinds.add_parser("sentence", parents=[out], help="Kim's 1-D convolution over a sentence's word vectors")
    k.add_argument("--seed", type=seed_type, default=0, help="seed of the word vectors and filters (default 0)")
    k.add_argument("--sentence", default="wait for the video and do n't rent it", help="the words")
    k.add_argument("--kernel", default="2,3", help="filter heights in words, comma-separated (default 2,3)")
    k.add_argument("--dim", type=int, default=6, help="embedding dimensions drawn (default 6)")
    k.add_argument("--padding", type=int, default=0, help="zero words on each side (default 0)")
    k = kinds.add_parser("field", help="receptive field per stage on a picture, next to the effective field")
    k.add_argument("model", metavar="MODEL", help="registry name, module:function, or a run folder / checkpoint")
    k.add_argument("--input", help="input size without batch, e.g. 3x224x224 (default: the model's)")
    k.add_argument("--image", default="astronaut", help="a picture file or a scikit-image sample (default astronaut)")
    k.add_argument("--point", default=None, help="YxX: the input pixel whose fields are drawn (default: the centre)")
    k.add_argument("--samples", type=int, default=8, help="random inputs of the effective field, 1..1024 (default 8)")
    k.add_argument("--seed", type=seed_type, default=0, help="seed of those inputs (default 0)")
    add_threads_option(k)
    k.add_argument("--out", required=True, help="output .png")
    k.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=_draw)

    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML page: totals, stages and branches, charts, fields, per-layer table",
        description="Analyse a network and write a one-page HTML report that loads nothing from the network.",
    )
    p.add_argument("model", metavar="MODEL", help="registry name, module:function, or a run folder / checkpoint")
    p.add_argument("--input", help="input size without batch, e.g. 3x224x224 (default: the model's)")
    p.add_argument("--out", required=True, help="the .html file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--title", default=None, help="page title (default: the model's class name)")
    p.add_argument("--erf-samples", type=int, default=8, help="random inputs of the effective field (0: no picture)")
    p.add_argument("--image", default=None, help="the picture the fields are drawn on (default astronaut)")
    p.add_argument("--seed", type=seed_type, default=None, help="seed of the effective field's inputs (default 0)")
    p.add_argument("--screenshot", default=None, metavar="PNG", help="also save the page as rendered by headless "
                   "Chromium (needs chromium, chromium-driver and selenium)")  # fmt: skip
    p.add_argument("--screenshot-height", type=int, default=None, metavar="PX",
                   help="height of the screenshot window (default: the whole page)")  # fmt: skip
    add_threads_option(p)
    p.set_defaults(handler=_report)
