"""The operator app: a photo in; caption, best-matching defect descriptions and where they show, out.

    python app.py                          # the offline demo bundle (checkpoints/demo, built on first run)
    python app.py --checkpoint DIR         # a trained bundle
    python app.py --clip ID_OR_DIR         # zero-shot: the caption is the knowledge base's summary

The Inspector does the work; this file declares the UI, wires the events and parses the flags.
"""
import argparse
import atexit
import base64
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from models.inspector import Inspector  # noqa: E402

ROOT = Path(__file__).resolve().parent
DEMO_BUNDLE = ROOT / "checkpoints" / "demo"
EXAMPLES = ROOT / "media" / "examples"
PIXELS_PER_MB = 4_000_000  # 16 MB -> 64 MP, the image loader's own default limit
DEFAULT_MAX_IMAGE_MB = 16
BATCH_COLUMNS = ["file", "caption", "top defect", "probability", "error"]
REQUEST_DIR_MAX_AGE = 3600  # seconds; Gradio has copied a result file into its cache long before
METHODS = [("Grad-CAM", "gradcam"), ("Grad-CAM, contrastive", "gradcam_contrastive"),
           ("Attention relevancy", "relevancy")]
CSS = """
#caption textarea {font-size: 1.45rem; font-weight: 600; line-height: 1.35;}
#model-info {font-size: 0.85rem; opacity: 0.75;}
.wide-gallery .thumbnail-item {aspect-ratio: auto;}
.wide-gallery .grid-wrap {height: auto !important; max-height: none !important;}
.wide-gallery .grid-container {padding-top: 2.4rem;}
"""  # galleries: tiles as wide as the overlays (photo | heat map), and every row shown without a scrollbar
THEME = gr.themes.Soft(primary_hue="emerald", secondary_hue="amber")
log = logging.getLogger("clipcap-xai")


def build_app(inspector, *, examples=None, concurrency=1, max_image_mb=DEFAULT_MAX_IMAGE_MB, max_queue=64):
    """The Blocks UI over one loaded Inspector, whose models every request shares read-only."""
    has_lm = inspector.captioner is not None
    caption_maps = has_lm and getattr(inspector.captioner, "lm_precision", "fp32") != "int8"
    examples = sorted(str(p) for p in EXAMPLES.glob("*.jpg")) if examples is None else list(examples)
    requests = Path(tempfile.mkdtemp(prefix="clipcap-app-"))  # per app; every batch writes in its own dir inside
    atexit.register(shutil.rmtree, requests, True)

    with gr.Blocks(title="clipcap-xai", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# clipcap-xai: fruit inspection\nUpload a photo of a product: get a caption of its condition, "
                    "the best-matching defect descriptions, and heat maps of where each one shows.")
        gr.Markdown(_model_line(inspector, caption_maps), elem_id="model-info")
        settings = _settings(len(inspector.knowledge.prompts), has_lm, caption_maps)
        with gr.Tabs():
            with gr.Tab("Inspect"):
                one = _inspect_tab(has_lm, examples, max_image_mb)
            with gr.Tab("Batch"):
                many = _batch_tab()

        def explain(image, k, method, threshold, alpha, alpha_by_prob, with_caption_map, temperature, top_k, top_p,
                    min_new_tokens, max_new_tokens, num_beams, prefix_text, seed):
            if image is None:
                raise gr.Error("Add a photo first: upload one, paste it, or take one with the webcam.",
                               print_exception=False)
            generation = _generation(has_lm, temperature, top_k, top_p, min_new_tokens, max_new_tokens, num_beams,
                                     prefix_text, seed)
            options = dict(k=int(k), method=method, threshold=threshold, alpha=alpha, alpha_by_prob=bool(alpha_by_prob),
                           with_caption_map=bool(with_caption_map) and caption_maps, generation=generation)
            return _explain(inspector, image, options)

        def batch(files, k, method, threshold, alpha, alpha_by_prob, temperature, top_k, top_p, min_new_tokens,
                  max_new_tokens, num_beams, prefix_text, seed, progress=gr.Progress()):
            if not files:
                raise gr.Error("Add some photos first.", print_exception=False)
            generation = _generation(has_lm, temperature, top_k, top_p, min_new_tokens, max_new_tokens, num_beams,
                                     prefix_text, seed)
            options = dict(k=int(k), method=method, threshold=threshold, alpha=alpha, alpha_by_prob=bool(alpha_by_prob),
                           with_caption_map=False, generation=generation)
            rows = [_batch_row(inspector, item, options) for item in progress.tqdm(files, desc="Inspecting")]
            frame = pd.DataFrame([row for row, _ in rows], columns=BATCH_COLUMNS)
            gallery = [(picture, row[0]) for row, picture in rows if picture is not None]
            return frame, _write_csv(frame, requests), gallery

        # preprocess=False: uploads arrive as paths (already checked into Gradio's cache) for the Inspector's own
        # loader, whose size limits and clear messages beat Gradio's generic decode errors
        shared = dict(preprocess=False, concurrency_id="model")  # one limit over both: they share the models
        one.run.click(explain, [one.image, *settings.explanation, settings.caption_map, *settings.generation],
                      [one.caption, one.top, one.combined, one.overlays, one.caption_overlay],
                      api_name="explain", **shared)
        many.run.click(batch, [many.files, *settings.explanation, *settings.generation],
                       [many.table, many.csv, many.gallery], api_name="batch", **shared)
    return app.queue(default_concurrency_limit=concurrency, max_size=max_queue)


def launch(app, *, max_image_mb=DEFAULT_MAX_IMAGE_MB, **options):
    """Blocks.launch with the app's look and upload limit; options go to Gradio (server_name, auth, ...)."""
    return app.launch(theme=THEME, css=CSS, max_file_size=int(max_image_mb * 2**20), **options)


def _settings(n_prompts, has_lm, caption_maps):
    """The two settings accordions, above the tabs because both tabs use them."""
    with gr.Row():
        with gr.Accordion("Generation", open=False, visible=has_lm):
            generation = [
                gr.Slider(0, 2, value=0, step=0.05, label="Temperature",
                          info="0 = greedy (or beam search); above 0 samples"),
                gr.Slider(0, 100, value=0, step=1, label="Top-k", info="sampling only; 0 = off"),
                gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p", info="sampling only"),
                gr.Slider(0, 40, value=0, step=1, label="Min new tokens"),
                gr.Slider(1, 80, value=30, step=1, label="Max new tokens"),
                gr.Slider(1, 8, value=1, step=1, label="Beams"),
                gr.Textbox("", label="Prefix text", placeholder="the bundle's own (leave empty)",
                           info="text the LM reads after the image prefix"),
                gr.Number(0, precision=0, label="Seed", info="sampling only; -1 = a new one every run"),
            ]
        with gr.Accordion("Explanation", open=False):
            explanation = [
                gr.Slider(1, n_prompts, value=min(5, n_prompts), step=1, label="Descriptions to explain (k)"),
                gr.Radio(METHODS, value="gradcam", label="Method",
                         info="contrastive: why this description rather than the others; "
                              "relevancy follows attention through every block (about 3x slower)"),
                gr.Slider(0, 1, value=0.5, step=0.05, label="Threshold",
                          info="colour only where a map is above this share of its peak "
                               "(combined view: of the top description's peak)"),
                gr.Slider(0, 1, value=0.5, step=0.05, label="Opacity (alpha)"),
                gr.Checkbox(False, label="Scale opacity by probability"),
            ]
            caption_map = gr.Checkbox(caption_maps, label="Explain the caption (caption map)", visible=has_lm,
                                      interactive=caption_maps)
    return SimpleNamespace(generation=generation, explanation=explanation, caption_map=caption_map)


def _inspect_tab(has_lm, examples, max_image_mb):
    with gr.Row(equal_height=False):
        with gr.Column(scale=2):
            image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"],
                             label=f"Photo (up to {max_image_mb:g} MB)", height=340, elem_id="photo")
            run = gr.Button("Inspect", variant="primary", elem_id="run")
            if examples:
                gr.Examples(examples, inputs=[image], label="Examples (synthetic photos)", examples_per_page=12)
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
    files = gr.File(file_count="multiple", label="Photos", elem_id="batch-files")
    run = gr.Button("Inspect all", variant="primary", elem_id="run-batch")
    table = gr.Dataframe(headers=BATCH_COLUMNS, datatype=["str", "str", "str", "number", "str"], interactive=False,
                         wrap=True, label="Results", elem_id="batch-table",
                         column_widths=["16%", "38%", "16%", "10%", "20%"])
    csv = gr.File(label="Results as CSV", interactive=False, elem_id="batch-csv")
    gallery = gr.Gallery(label="Combined overlays", columns=4, height="auto", object_fit="contain",
                         fit_columns=False, elem_id="batch-gallery", elem_classes="wide-gallery")
    return SimpleNamespace(files=files, run=run, table=table, csv=csv, gallery=gallery)


def _explain(inspector, image, options):
    """One photo -> (caption, {description: probability}, combined overlay, [(overlay, title)], caption overlay)."""
    source, name = _upload(image)
    try:
        found = inspector.inspect(source, **options)
    except ValueError as error:  # ImageLoadError among them: the file, not the server, is at fault
        raise gr.Error(_clean_message(error, source, name), title="Cannot inspect this file",
                       print_exception=False) from None
    top = {prompt.text: float(prob) for prompt, prob in found.top_k}
    gallery = [(picture, _title(prompt.text, prob)) for picture, (prompt, prob) in zip(found.overlays, found.top_k)]
    return found.caption, top, found.combined, gallery, found.caption_overlay


def _model_line(inspector, caption_maps):
    line = inspector.info()
    if inspector.captioner is not None and not caption_maps:
        line += " | int8 LM: no caption maps (use --lm-precision fp32 or bf16)"
    return line


def _title(text, prob):
    return f"{text} - {100 * prob:.1f}%"


def _generation(has_lm, temperature, top_k, top_p, min_new_tokens, max_new_tokens, num_beams, prefix_text, seed):
    """The Generation accordion as ClipCaptioner.generate kwargs (None in zero-shot mode: nothing to generate)."""
    if not has_lm:
        return None
    max_new_tokens = max(1, int(max_new_tokens))
    seed = None if seed is None or int(seed) < 0 else int(seed)
    return dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                min_new_tokens=min(int(min_new_tokens), max_new_tokens), max_new_tokens=max_new_tokens,
                num_beams=max(1, int(num_beams)), prefix_text=prefix_text or None, seed=seed)


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


def _batch_row(inspector, item, options):
    """One table row (and the combined overlay) per file; a bad file becomes a row with its error."""
    source, name = _upload(item)
    try:
        found = inspector.inspect(source, **options)
    except ValueError as error:
        return [name, "", "", None, _clean_message(error, source, name)], None
    except Exception as error:  # one failing photo must not cost the rest of a long batch
        log.exception("inspecting %s failed", name)
        return [name, "", "", None, f"failed: {type(error).__name__}: {error}"], None
    defect = next(((p, prob) for p, prob in found.top_k if not p.healthy), None)
    top, prob = (defect[0].text, round(float(defect[1]), 4)) if defect else ("none in the top k", None)
    return [name, found.caption, top, prob, ""], found.combined


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
    """checkpoints/demo, built on first use by train/build_demo.py."""
    if (DEMO_BUNDLE / "config.json").is_file():
        return DEMO_BUNDLE
    try:
        from train.build_demo import build_demo
    except ImportError as error:
        raise SystemExit(
            f"error: no demo bundle at {DEMO_BUNDLE}, and the demo builder train/build_demo.py cannot be "
            f"imported ({error}).\nPass a trained bundle with --checkpoint DIR, or run zero-shot with --clip "
            "ID_OR_DIR."
        ) from None
    print(f"No demo bundle yet: building it in {DEMO_BUNDLE} (first run only; a few minutes on a laptop CPU).")
    built = build_demo()
    return Path(built) if isinstance(built, (str, os.PathLike)) else DEMO_BUNDLE


def parse_auth(value):
    user, sep, password = (value or "").partition(":")
    if not (user and sep and password):
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user, password


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Explainable fruit-inspection captioner (Gradio app). With no flags it serves the offline "
                    f"demo bundle ({DEMO_BUNDLE.relative_to(ROOT)}, built on first run).",
    )  # defaults are written out by hand: an automatic "(default: ...)" would print the CLIPCAP_AUTH password
    parser.add_argument("--checkpoint", metavar="DIR", help="a trained captioner bundle (default: the demo bundle)")
    parser.add_argument("--clip", metavar="ID_OR_DIR",
                        help="zero-shot mode: a CLIP (hub id or directory) and no captioner; the caption is the "
                             "knowledge base's summary of CLIP's top matches. Not combinable with --checkpoint")
    parser.add_argument("--lm", metavar="ID_OR_DIR",
                        help="swap the bundle's LM for another of the same width (frozen-LM bundles only), "
                             "e.g. smollm2 or facebook/opt-125m")
    parser.add_argument("--knowledge", metavar="NAME_OR_FILE",
                        help="knowledge base: 'fruit' or a .yaml/.json file (default: the bundle's, else fruit)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--lm-precision", choices=["fp32", "bf16", "int8"], default="fp32",
                        help="LM weights for inference (default fp32); int8 is fastest on CPU but gives no "
                             "caption maps")
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


def main(argv=None):
    args = parse_args(argv)
    checkpoint = None if args.clip else (args.checkpoint or demo_bundle())
    try:
        inspector = Inspector.load(checkpoint=checkpoint, clip=args.clip, lm=args.lm, knowledge=args.knowledge,
                                   device=args.device, lm_precision=args.lm_precision,
                                   max_pixels=int(args.max_image_mb * PIXELS_PER_MB))
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot load the models: {error}") from None
    print(inspector.info())
    app = build_app(inspector, concurrency=args.concurrency, max_image_mb=args.max_image_mb)
    launch(app, max_image_mb=args.max_image_mb, server_name=args.host, server_port=args.port, share=args.share,
           auth=args.auth)


if __name__ == "__main__":
    main()
