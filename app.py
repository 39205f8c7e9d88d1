"""The operator app: a photo in; caption, best-matching defect descriptions and where they show, out.

    python app.py                          # the offline demo bundle (checkpoints/demo)
    python app.py --checkpoint DIR         # a trained bundle
    python app.py --clip ID_OR_DIR         # zero-shot: the caption is the knowledge base's summary

The Inspector does the work; this file declares the UI, wires the events and parses the flags. Settings
reach the handlers by name (the names of models.config.InspectOptions and GenerationOptions, which are
also the API's parameter names), and their defaults come from those dataclasses.
"""
import argparse
import atexit
import base64
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from models.config import GenerationOptions, InspectOptions, LoadOptions
from utils.options import add_arguments, from_namespace

ROOT = Path(__file__).resolve().parent
DEMO_BUNDLE = ROOT / "checkpoints" / "demo"
EXAMPLES = ROOT / "media" / "examples"
MAX_EXAMPLES = 48
PIXELS_PER_MB = 4_000_000  # 16 MB -> 64 MP, the image loader's own default limit
DEFAULT_MAX_IMAGE_MB = 16
BATCH_COLUMNS = ["file", "caption", "top defect", "probability", "error"]
REQUEST_DIR_MAX_AGE = 3600  # seconds; Gradio has copied a result file into its cache long before
CSS = """
#caption textarea {font-size: 1.45rem; font-weight: 600; line-height: 1.35;}
#model-info {font-size: 0.85rem; opacity: 0.75;}
.wide-gallery .thumbnail-item {aspect-ratio: auto;}
.wide-gallery .grid-wrap {height: auto !important; max-height: none !important;}
.wide-gallery .grid-container {padding-top: 2.4rem;}
"""  # galleries: tiles as wide as the overlays (photo | heat map), and every row shown without a scrollbar
log = logging.getLogger("clipcap-xai")


def build_app(inspector, *, examples=None, concurrency=1, max_image_mb=DEFAULT_MAX_IMAGE_MB, max_queue=64):
    """The Blocks UI over one loaded Inspector, whose models every request shares read-only."""
    import gradio as gr

    examples = sorted(str(p) for p in EXAMPLES.glob("*.jpg")) if examples is None else list(examples)
    requests = Path(tempfile.mkdtemp(prefix="clipcap-app-"))  # per app; every batch writes in its own dir inside
    atexit.register(shutil.rmtree, requests, True)
    has_lm = inspector.captioner is not None
    with gr.Blocks(title="clipcap-xai", delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# clipcap-xai: {inspector.knowledge.domain} inspection\nUpload a photo of a product: get a "
                    "caption of its condition, the best-matching defect descriptions, and heat maps of where each "
                    "one shows.")
        gr.Markdown(_model_line(inspector), elem_id="model-info")
        with gr.Sidebar(label="Settings", open=False, position="right"):
            settings = _settings(inspector)
        with gr.Tabs():
            with gr.Tab("Inspect"):
                one = _inspect_tab(has_lm, examples, max_image_mb)
            with gr.Tab("Batch"):
                many = _batch_tab()

        def explain(image, **values):
            if image is None:
                raise gr.Error("Add a photo first: upload one, paste it, or take one with the webcam.",
                               print_exception=False)
            return _explain(inspector, image, *_options(values, inspector))

        def batch(files, progress=gr.Progress(), **values):
            if not files:
                raise gr.Error("Add some photos first.", print_exception=False)
            options, generation = _options(values, inspector)
            rows = [_batch_row(inspector, item, options, generation)
                    for item in progress.tqdm(files, desc="Inspecting")]
            frame = _frame(row for row, _ in rows)
            gallery = [(picture, row[0]) for row, picture in rows if picture is not None]
            return frame, _write_csv(frame, requests), gallery

        # preprocess=False: uploads arrive as paths (already checked into Gradio's cache) for the Inspector's own
        # loader, whose size limits and clear messages beat Gradio's generic decode errors
        shared = dict(preprocess=False, concurrency_id="model")  # one limit over both: they share the models
        one.run.click(explain, [one.image], inputs_kwargs=settings, api_name="explain", **shared,
                      outputs=[one.caption, one.top, one.combined, one.overlays, one.caption_overlay])
        batch_settings = {name: box for name, box in settings.items() if name != "caption_map"}
        many.run.click(batch, [many.files], inputs_kwargs=batch_settings, api_name="batch", **shared,
                       outputs=[many.table, many.csv, many.gallery])
    return app.queue(default_concurrency_limit=concurrency, max_size=max_queue)


def launch(app, *, max_image_mb=DEFAULT_MAX_IMAGE_MB, **options):
    """Blocks.launch with the app's look and upload limit; options go to Gradio (server_name, auth, ...)."""
    import gradio as gr

    theme = gr.themes.Soft(primary_hue="emerald", secondary_hue="amber")
    return app.launch(theme=theme, css=CSS, max_file_size=int(max_image_mb * 2**20), **options)


def _settings(inspector):
    """Every setting by its option name (InspectOptions, GenerationOptions), defaults from those dataclasses."""
    import gradio as gr

    from models.explain import METHODS

    inspect, generate = InspectOptions(), GenerationOptions()
    n_prompts, has_lm = len(inspector.knowledge.prompts), inspector.captioner is not None
    settings = {
        "k": gr.Slider(1, n_prompts, value=min(inspect.k, n_prompts), step=1, label="Descriptions to explain (k)"),
        "method": gr.Radio([(m.label, m.name) for m in METHODS.values()], value=inspect.method, label="Method",
                           info="; ".join(f"{m.label}: {m.help}" for m in METHODS.values())),
        "threshold": gr.Slider(0, 1, value=inspect.threshold, step=0.05, label="Threshold",
                               info="colour only where a map is above this share of its peak"),
        "alpha": gr.Slider(0, 1, value=inspect.alpha, step=0.05, label="Opacity (alpha)"),
        "alpha_by_prob": gr.Checkbox(inspect.alpha_by_prob, label="Scale opacity by probability"),
        "caption_map": gr.Checkbox(inspector.caption_maps, label="Explain the caption (caption map)",
                                   visible=has_lm, interactive=inspector.caption_maps),
    }
    with gr.Accordion("Caption generation", open=False, visible=has_lm):
        settings.update(
            temperature=gr.Slider(0, 2, value=generate.temperature, step=0.05, label="Temperature",
                                  info="0 = greedy (or beam search); above 0 samples"),
            top_k=gr.Slider(0, 100, value=generate.top_k, step=1, label="Top-k", info="sampling only; 0 = off"),
            top_p=gr.Slider(0.05, 1, value=generate.top_p, step=0.05, label="Top-p", info="sampling only"),
            min_new_tokens=gr.Slider(0, 40, value=generate.min_new_tokens, step=1, label="Min new tokens"),
            max_new_tokens=gr.Slider(1, 80, value=generate.max_new_tokens, step=1, label="Max new tokens"),
            num_beams=gr.Slider(1, 8, value=generate.num_beams, step=1, label="Beams"),
            prefix_text=gr.Textbox("", label="Prefix text", placeholder="the bundle's own (leave empty)",
                                   info="text the LM reads after the image prefix"),
            seed=gr.Number(0, precision=0, label="Seed", info="sampling only; -1 = a new one every run"),
        )
    return settings


def _options(values, inspector):
    """The handler's settings by name -> (InspectOptions, GenerationOptions or None in zero-shot mode)."""
    options = _fill(InspectOptions, values)
    options.caption_map = bool(values.get("caption_map")) and inspector.caption_maps
    if inspector.captioner is None:
        return options, None
    generation = _fill(GenerationOptions, values)
    generation.max_new_tokens = max(1, generation.max_new_tokens)
    generation.min_new_tokens = min(generation.min_new_tokens, generation.max_new_tokens)
    generation.num_beams = max(1, generation.num_beams)
    generation.prefix_text = generation.prefix_text or None
    generation.seed = None if generation.seed is None or generation.seed < 0 else generation.seed
    return options, generation


def _fill(cls, values):
    """cls with the values it names, each cast to its default's type (sliders send floats)."""
    import dataclasses

    defaults = cls()
    given = {}
    for field in dataclasses.fields(cls):
        value = values.get(field.name)
        if value is not None:
            kind = type(getattr(defaults, field.name))
            given[field.name] = kind(value) if kind in (int, float, bool, str) else value
    return dataclasses.replace(defaults, **given)


def _inspect_tab(has_lm, examples, max_image_mb):
    import gradio as gr

    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                             label=f"Photo (up to {max_image_mb:g} MB)", height=340, elem_id="photo")
            run = gr.Button("Inspect", variant="primary", elem_id="run")
            if examples:
                gr.Examples(examples, inputs=[image], label="Examples", examples_per_page=12)
        with gr.Column(scale=3):
            caption = gr.Textbox(label="Caption" if has_lm else "Caption (zero-shot: knowledge-base summary)",
                                 lines=2, interactive=False, elem_id="caption", buttons=["copy"])
            with gr.Row(equal_height=False):
                combined = gr.Image(label="Where each description shows", interactive=False, elem_id="combined",
                                    scale=3)
                top = gr.Label(label="Top matches", show_heading=False, elem_id="top-k", scale=2)
            with gr.Column(visible=has_lm, variant="panel"):
                gr.Markdown("**What drove the caption**: the gradient of the caption's likelihood, back through the "
                            "language model into CLIP")
                # no label badge: it would hide the overlay's own title strip
                caption_overlay = gr.Image(show_label=False, interactive=False, elem_id="caption-map")
    overlays = gr.Gallery(label="Each description (photo | heat map)", columns=3, height="auto", object_fit="contain",
                          fit_columns=False, elem_id="overlays", elem_classes="wide-gallery")
    return SimpleNamespace(image=image, run=run, caption=caption, combined=combined, top=top,
                           caption_overlay=caption_overlay, overlays=overlays)


def _batch_tab():
    import gradio as gr

    files = gr.File(file_count="multiple", label="Photos", elem_id="batch-files")
    run = gr.Button("Inspect all", variant="primary", elem_id="run-batch")
    table = gr.Dataframe(headers=BATCH_COLUMNS, datatype=["str", "str", "str", "number", "str"], interactive=False,
                         wrap=True, label="Results", elem_id="batch-table",
                         column_widths=["16%", "38%", "16%", "10%", "20%"])
    csv = gr.File(label="Results as CSV", interactive=False, elem_id="batch-csv")
    gallery = gr.Gallery(label="Combined overlays", columns=4, height="auto", object_fit="contain",
                         fit_columns=False, elem_id="batch-gallery", elem_classes="wide-gallery")
    return SimpleNamespace(files=files, run=run, table=table, csv=csv, gallery=gallery)


def _explain(inspector, image, options, generation):
    """One photo -> (caption, {description: probability}, combined overlay, [(overlay, title)], caption overlay)."""
    import gradio as gr

    from utils.plot import title_for

    source, name = _upload(image)
    try:
        found = inspector.inspect(source, options, generation)
    except ValueError as error:  # ImageLoadError among them: the file, not the server, is at fault
        raise gr.Error(_clean_message(error, source, name), title="Cannot inspect this file",
                       print_exception=False) from None
    top = {prompt.text: float(prob) for prompt, prob in found.top_k}
    gallery = [(picture, title_for(prompt.text, prob)) for picture, (prompt, prob) in zip(found.overlays, found.top_k)]
    return found.caption, top, found.combined, gallery, found.caption_overlay


def _model_line(inspector):
    line = inspector.info()
    if inspector.captioner is not None and not inspector.caption_maps:
        line += " | int8 LM: no caption maps (use --lm-precision fp32 or bf16)"
    return line


def _upload(payload):
    """(what Inspector.inspect reads, the name the user knows) from an upload as the queue hands it over:
    a FileData dict, its file already in Gradio's cache, or a base64 data URL from an older client."""
    if isinstance(payload, dict):
        path, url = payload.get("path"), payload.get("url") or ""
        if not path and url.startswith("data:"):
            return base64.b64decode(url.partition(",")[2]), "pasted image"
        return path, payload.get("orig_name") or Path(path).name
    return str(payload), Path(str(payload)).name


def _clean_message(error, source, name):
    """The loader names the file by its cache path; the user knows it by its own name."""
    return str(error).replace(str(source), name) if isinstance(source, str) else str(error)


def _batch_row(inspector, item, options, generation):
    """One table row (and the combined overlay) per file; a bad file becomes a row with its error."""
    source, name = _upload(item)
    try:
        found = inspector.inspect(source, options, generation, caption_map=False)
    except ValueError as error:
        return [name, "", "", None, _clean_message(error, source, name)], None
    except Exception as error:  # one failing photo must not cost the rest of a long batch
        log.exception("inspecting %s failed", name)
        return [name, "", "", None, f"failed: {type(error).__name__}: {error}"], None
    defect = next(((p, prob) for p, prob in found.top_k if not p.healthy), None)
    top, prob = (defect[0].text, round(float(defect[1]), 4)) if defect else ("none in the top k", None)
    return [name, found.caption, top, prob, ""], found.combined


def _frame(rows):
    import pandas as pd

    return pd.DataFrame(list(rows), columns=BATCH_COLUMNS)


def _write_csv(frame, root):
    """A fresh directory per request, so concurrent batches never share a file; old ones are pruned."""
    for old in root.glob("batch-*"):
        try:
            expired = time.time() - old.stat().st_mtime > REQUEST_DIR_MAX_AGE
        except FileNotFoundError:  # another request pruned it first
            continue
        if expired:
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix="batch-", dir=root)) / "inspection.csv"
    frame.to_csv(path, index=False)
    return str(path)


def demo_bundle():
    """checkpoints/demo: shipped with the repository; `make demo` rebuilds it."""
    if (DEMO_BUNDLE / "config.json").is_file():
        return DEMO_BUNDLE
    raise SystemExit(f"error: no demo bundle at {DEMO_BUNDLE}. Rebuild it with `make demo` (about 10 minutes on "
                     "2 cores), pass a trained bundle with --checkpoint DIR, or run zero-shot with --clip ID_OR_DIR.")


def parse_auth(value):
    user, sep, password = (value or "").partition(":")
    if not (user and sep and password):
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user, password


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Explainable product-inspection captioner (Gradio app). With no flags it serves the offline "
                    f"demo bundle ({DEMO_BUNDLE.relative_to(ROOT)}), which works with no network.",
    )  # defaults are written out by hand: an automatic "(default: ...)" would print the CLIPCAP_AUTH password
    parser.add_argument("--checkpoint", metavar="DIR", help="a trained captioner bundle (default: the demo bundle)")
    parser.add_argument("--clip", metavar="ID_OR_DIR",
                        help="zero-shot mode: a CLIP (hub id or directory; offline: checkpoints/demo/clip) and no "
                             "captioner; the caption summarizes CLIP's top matches. Not combinable with --checkpoint")
    parser.add_argument("--lm", metavar="ID_OR_DIR",
                        help="swap the bundle's LM for another of the same width (frozen-LM bundles only), "
                             "e.g. smollm2 (offline) or facebook/opt-125m")
    parser.add_argument("--knowledge", metavar="NAME_OR_FILE",
                        help="knowledge base: 'fruit' or a .yaml/.json file (default: the bundle's, else fruit)")
    parser.add_argument("--examples", metavar="DIR",
                        help=f"folder of example photos shown under the upload, at most {MAX_EXAMPLES} (default: "
                             f"{EXAMPLES.relative_to(ROOT)}, the demo's)")
    add_arguments(parser, LoadOptions)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1, this machine only; 0.0.0.0 for the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    parser.add_argument("--auth", type=parse_auth, metavar="USER:PASSWORD", default=os.environ.get("CLIPCAP_AUTH"),
                        help="require this login (or set the environment variable CLIPCAP_AUTH=USER:PASSWORD)")
    parser.add_argument("--max-image-mb", type=float, default=DEFAULT_MAX_IMAGE_MB, metavar="MB",
                        help=f"largest upload accepted (default {DEFAULT_MAX_IMAGE_MB}); decoded images are also "
                             f"limited to {PIXELS_PER_MB // 1_000_000} megapixels per MB")
    parser.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="requests the models serve at once, the rest wait in the queue (default 1, right "
                             "for a CPU)")
    args = parser.parse_args(argv)  # a string default (CLIPCAP_AUTH) goes through parse_auth too
    if args.clip and args.checkpoint:
        parser.error("--clip selects zero-shot mode; a bundle brings its own CLIP (drop one of the two)")
    if args.clip and args.lm:
        parser.error("--lm needs a bundle: zero-shot mode (--clip) has no LM")
    if args.max_image_mb <= 0 or args.concurrency < 1:
        parser.error("--max-image-mb must be positive and --concurrency at least 1")
    return args


def _examples(folder):
    """The example photos of --examples (None: the demo's)."""
    if folder is None:
        return None
    from utils.images import find_images

    if not Path(folder).is_dir():
        raise SystemExit(f"error: --examples {folder}: no such folder")
    return [str(path) for path in find_images(folder)[:MAX_EXAMPLES]]


def _stop_on_sigterm():
    """`kill` / `docker stop` end the app like Ctrl-C: the exit handlers run and remove its temp folders."""
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))


def main(argv=None):
    args = parse_args(argv)  # before any heavy import: --help answers at once
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from models.inspector import Inspector

    checkpoint = None if args.clip else (args.checkpoint or demo_bundle())
    load = from_namespace(LoadOptions, args)
    try:
        inspector = Inspector.load(checkpoint=checkpoint, clip=args.clip, lm=args.lm, knowledge=args.knowledge,
                                   device=load.device, lm_precision=load.lm_precision,
                                   max_pixels=int(args.max_image_mb * PIXELS_PER_MB))
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot load the models: {error}") from None
    print(inspector.info())
    _stop_on_sigterm()
    app = build_app(inspector, examples=_examples(args.examples), concurrency=args.concurrency,
                    max_image_mb=args.max_image_mb)
    launch(app, max_image_mb=args.max_image_mb, server_name=args.host, server_port=args.port, share=args.share,
           auth=args.auth)


if __name__ == "__main__":
    main()
