"""The operator app: a photo in; caption, best-matching defect descriptions and where they show, out.

    python app.py                          # the offline demo bundle (checkpoints/demo)
    python app.py --checkpoint DIR         # a trained bundle
    python app.py --clip ID_OR_DIR         # zero-shot: the caption is the knowledge base's summary
    python app.py --review-dir reviews/    # where operators' flags and corrections are kept

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
DEFAULT_REVIEW_DIR = ROOT / "checkpoints" / "reviews"
EXAMPLES = ROOT / "media" / "examples"
MAX_EXAMPLES = 48
PIXELS_PER_MB = 4_000_000  # 16 MB -> 64 MP, the image loader's own default limit
DEFAULT_MAX_IMAGE_MB = 16
BATCH_COLUMNS = ["file", "verdict", "caption", "reason", "caption check", "top defect", "probability", "error"]
REQUEST_DIR_MAX_AGE = 3600  # seconds; Gradio has copied a result file into its cache long before
CSS = """
#caption textarea {font-size: 1.3rem; font-weight: 600; line-height: 1.35;}
#caption-note, #caption-note p {font-size: 0.9rem; margin: 0;}
#model-info {font-size: 0.85rem; opacity: 0.75;}
.verdict {padding: 0.4rem 0.8rem; border-radius: 0.5rem; font-size: 0.95rem; line-height: 1.35;}
.verdict b {font-size: 1.25rem; letter-spacing: 0.05em; margin-right: 0.5rem;}
.verdict-pass {background: #d1fae5; color: #065f46;} .verdict-fail {background: #fee2e2; color: #991b1b;}
.verdict-review {background: #fef3c7; color: #92400e;}
#top-k dd.confidence {display: none;}
.wide-gallery .thumbnail-item {aspect-ratio: auto; display: flex; flex-direction: column;}
.wide-gallery .grid-wrap {height: auto !important; max-height: none !important;}
.wide-gallery .grid-container {padding-top: 2.4rem;}
.wide-gallery .caption-label {position: static; max-width: none; white-space: normal; overflow: visible;
                              border: none; border-radius: 0; opacity: 1; font-size: 0.95rem;}
@media (max-width: 640px) {.wide-gallery .grid-container {grid-template-columns: 1fr !important;}}
"""  # top matches: the label carries the exact percentage, Gradio's rounded one goes. Galleries: tiles as wide
# as the overlays, every row shown without a scrollbar, titles below the pictures (never over a legend), one
# column on a phone
log = logging.getLogger("clipcap-xai")


def build_app(inspector, *, examples=None, concurrency=1, max_image_mb=DEFAULT_MAX_IMAGE_MB, max_queue=64,
              review_dir=DEFAULT_REVIEW_DIR):
    """The Blocks UI over one loaded Inspector, whose models every request shares read-only; reviews: review_dir."""
    import gradio as gr

    examples = sorted(str(p) for p in EXAMPLES.glob("*.jpg")) if examples is None else list(examples)
    requests = Path(tempfile.mkdtemp(prefix="clipcap-app-"))  # per app; every batch writes in its own dir inside
    atexit.register(shutil.rmtree, requests, True)
    has_lm = inspector.captioner is not None
    with gr.Blocks(title="clipcap-xai", delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## clipcap-xai: {inspector.knowledge.domain} inspection\nUpload a photo of a product: get a "
                    "caption of its condition, the best-matching defect descriptions, and heat maps of where each "
                    f"one shows. **Settings**: the panel at the right.<br><span id='model-info'>{_model_line(inspector)}"
                    "</span>")  # one block: the results need the height
        with gr.Sidebar(label="Settings", open=False, position="right"):
            settings = _settings(inspector)
        with gr.Tabs():
            with gr.Tab("Inspect"):
                one = _inspect_tab(has_lm, examples, max_image_mb)
                one.review = _review_panel(inspector.knowledge)
            with gr.Tab("Batch"):
                many = _batch_tab()

        def explain(image, **values):
            if image is None:
                raise gr.Error("Add a photo first: upload one, paste it, or take one with the webcam.",
                               print_exception=False)
            return _explain(inspector, image, *_options(values, inspector))

        def batch(files, only_review=False, progress=gr.Progress(), **values):
            if not files:
                raise gr.Error("Add some photos first.", print_exception=False)
            options, generation = _options(values, inspector)
            rows = [_batch_row(inspector, item, options, generation)
                    for item in progress.tqdm(files, desc="Inspecting")]
            frame = _frame(row for row, _ in rows)
            gallery = [(picture, row[0]) for row, picture in rows if picture is not None]
            return _needing_review(frame, only_review), _write_csv(frame, requests), gallery, frame

        # preprocess=False: uploads arrive as paths for the Inspector's own loader (clearer errors than Gradio's);
        shared = dict(preprocess=False, concurrency_id="model")  # one limit over both: they share the models
        # scroll_to_output: on a phone the results sit below the photo; on a desktop the page moves a little
        one.run.click(explain, [one.image], inputs_kwargs=settings, api_name="explain", scroll_to_output=True,
                      outputs=[one.caption, one.top, one.combined, one.overlays, one.caption_overlay, one.verdict,
                               one.details, one.phrases, one.phrase_pick, one.phrase_maps, one.note], **shared)
        batch_settings = {name: box for name, box in settings.items() if name != "caption_map"}
        many.run.click(batch, [many.files, many.only_review], inputs_kwargs=batch_settings, api_name="batch",
                       **shared, outputs=[many.table, many.csv, many.gallery, many.frame])
        _wire_review(inspector, one, review_dir)
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
        "view": gr.Radio([("Whole photo (tiles)", "tiles"), ("Center square only", "center"),
                          ("Letterboxed", "letterbox")], value=inspect.view, label="View",
                         info="how a photo that is not square is looked at; tiles: nothing is ignored"),
    }
    with gr.Accordion("Caption generation", open=False, visible=has_lm):
        settings.update(_generation_settings(generate))
    return settings


def _generation_settings(generate):
    import gradio as gr

    return dict(
        constrained=gr.Checkbox(generate.constrained, label="Knowledge-base phrases only",
                                info="the caption can only be a sentence the knowledge base's summarizer could "
                                     "write: no repeated or invented defect phrases"),
        clip_kind=gr.Checkbox(generate.clip_kind, label="Kind from CLIP",
                              info="the caption names the kind the Kind line shows (CLIP's likeliest); off: the "
                                   "language model's own word"),
        temperature=gr.Slider(0, 2, value=generate.temperature, step=0.05, label="Temperature",
                              info="0 = greedy (or beam search); 0.3-1 samples varied captions; above ~1.2 they "
                                   "turn to gibberish"),
        top_k=gr.Slider(0, 100, value=generate.top_k, step=1, label="Top-k", info="sampling only; 0 = off"),
        top_p=gr.Slider(0.05, 1, value=generate.top_p, step=0.05, label="Top-p", info="sampling only"),
        seed=gr.Number(-1 if generate.seed is None else generate.seed, precision=0, label="Seed",
                       info="sampling only; -1 = a new one every run (the one used is shown under the caption)"),
        num_beams=gr.Slider(1, 8, value=generate.num_beams, step=1, label="Beams"),
        no_repeat_ngram_size=gr.Slider(0, 8, value=generate.no_repeat_ngram_size, step=1,
                                       label="No repeated runs of tokens",
                                       info="never repeat a run of this many tokens; 0 = off"),
        min_new_tokens=gr.Slider(0, 40, value=generate.min_new_tokens, step=1, label="Min new tokens",
                                 info="the caption may not end sooner, so the LM writes on past its usual end"),
        max_new_tokens=gr.Slider(1, 80, value=generate.max_new_tokens, step=1, label="Max new tokens"),
        prefix_text=gr.Textbox("", label="Caption start", placeholder="e.g. 'A pear' (leave empty: none)",
                               info="the caption's first words: the LM continues them"),
    )


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
    generation.prefix_text = (generation.prefix_text or "").strip() or None  # a trailing space is a token of its own
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
            verdict = _verdict_badge()  # under the button: where the eye is after a click, on the first screen
            if examples:
                gr.Examples(examples, inputs=[image], label="Examples", examples_per_page=12)
        with gr.Column(scale=3):
            caption = gr.Textbox(label="Caption" if has_lm else "Caption (zero-shot: knowledge-base summary)",
                                 lines=1, max_lines=3, interactive=False, elem_id="caption", buttons=["copy"])
            note = gr.Markdown(elem_id="caption-note")  # the product kind; how the caption was written, its seed
            with gr.Row(equal_height=False):
                # height: caption, map and top matches fit on a 1280 x 800 screen
                combined = gr.Image(label="Where each one shows", interactive=False, elem_id="combined",
                                    scale=3, height=400)
                top = gr.Label(label="Top matches", show_heading=False, elem_id="top-k", scale=2)
            with gr.Column(visible=has_lm, variant="panel"):
                gr.Markdown("**What drove the caption**: the gradient of the caption's likelihood (or of one "
                            "phrase's words), back through the language model into CLIP")
                phrases = gr.HighlightedText(label="The caption's phrases", elem_id="caption-phrases",
                                             combine_adjacent=True, show_legend=False)
                phrase_pick = gr.Radio([("whole caption", 0)], value=0, label="Show the map of",
                                       elem_id="phrase-pick")
                # no label badge: it would hide the overlay's own title strip
                caption_overlay = gr.Image(show_label=False, interactive=False, elem_id="caption-map")
                with gr.Accordion("Every caption map (the whole caption, then each phrase)", open=False):
                    phrase_maps = gr.Gallery(columns=2, height="auto", object_fit="contain", elem_id="phrase-maps",
                                             show_label=False)
            phrase_pick.input(_pick_phrase, [phrase_maps, phrase_pick], caption_overlay, api_visibility="private")
    overlays = gr.Gallery(label="Each description (photo | heat map)", columns=3, height="auto", object_fit="contain",
                          fit_columns=False, elem_id="overlays", elem_classes="wide-gallery")
    with gr.Accordion("Details (JSON: verdict, top-k, settings; what a review stores)", open=False):
        details = gr.JSON(label="Details", elem_id="details", show_label=False)
    return SimpleNamespace(image=image, run=run, caption=caption, note=note, verdict=verdict, combined=combined,
                           top=top, caption_overlay=caption_overlay, overlays=overlays, details=details,
                           phrases=phrases, phrase_pick=phrase_pick, phrase_maps=phrase_maps)


def _pick_phrase(maps, index):
    """The chosen caption map (0: the whole caption) out of the gallery of every caption map."""
    if not maps or index is None or index >= len(maps):
        return None
    item = maps[int(index)]
    return item[0] if isinstance(item, (tuple, list)) else item


def _batch_tab():
    import gradio as gr

    files = gr.File(file_count="multiple", label="Photos", elem_id="batch-files")
    run = gr.Button("Inspect all", variant="primary", elem_id="run-batch")
    only_review = gr.Checkbox(False, label="Show only the items that need review", elem_id="only-review")
    table = gr.Dataframe(headers=BATCH_COLUMNS, datatype=["str"] * 6 + ["number", "str"], interactive=False,
                         wrap=True, label="Results", elem_id="batch-table",
                         column_widths=["11%", "7%", "20%", "18%", "12%", "10%", "9%", "13%"])
    csv = gr.File(label="Results as CSV", interactive=False, elem_id="batch-csv")
    gallery = gr.Gallery(label="Combined overlays", columns=4, height="auto", object_fit="contain",
                         fit_columns=False, elem_id="batch-gallery", elem_classes="wide-gallery")
    frame = gr.State()  # the whole table; the checkbox filters what is shown
    only_review.change(_needing_review, [frame, only_review], table, api_visibility="private")
    return SimpleNamespace(files=files, run=run, table=table, csv=csv, gallery=gallery, only_review=only_review,
                           frame=frame)


def _explain(inspector, image, options, generation):
    """One photo -> (caption, {"description (62.3%)": probability}, combined overlay, [(overlay, title)],
    caption overlay, verdict badge, details for a review, the caption's words by phrase, the phrase picker, every
    caption map, note: the product kind, the view and how the caption was written)."""
    import gradio as gr

    from utils.plot import legend_entries, title_for

    source, name = _upload(image)
    try:
        found = inspector.inspect(source, options, generation)
    except ValueError as error:  # ImageLoadError among them: the file, not the server, is at fault
        raise gr.Error(_clean_message(error, source, name), title="Cannot inspect this file",
                       print_exception=False) from None
    # labelled as in the legends: gr.Label would round 0.5% to "0%"
    labels = [entry.text for entry in legend_entries([p.text for p, _ in found.top_k], [q for _, q in found.top_k])]
    top = {label: float(prob) for label, (_, prob) in zip(labels, found.top_k)}
    gallery = [(picture, title_for(prompt.text, prob)) for picture, (prompt, prob) in zip(found.overlays, found.top_k)]
    return (found.caption, top, found.combined, gallery, found.caption_overlay, _verdict_html(found.verdict),
            inspector.record(found, options), *_phrase_outputs(found), _caption_note(found))


def _phrase_outputs(found):
    """(the caption's words labelled by their phrase, the phrase picker, every caption map with its title)."""
    import gradio as gr

    words, labels = found.caption.split(), {}
    for phrase in found.phrases:
        for index in phrase.words:
            labels.setdefault(index, f"{phrase.role}: {phrase.prompt or phrase.text}")
    highlighted = [(word + " ", labels.get(index)) for index, word in enumerate(words)]
    choices = [("whole caption", 0)] + [(f"{p.role}: {p.text}", i + 1) for i, p in enumerate(found.phrases)]
    maps = [] if found.caption_overlay is None else [(found.caption_overlay, "whole caption")] + [
        (picture, f"{p.role}: {p.text}") for p, picture in zip(found.phrases, found.phrase_overlays)]
    return highlighted, gr.Radio(choices=choices, value=0), maps


def _verdict_badge():
    import gradio as gr

    return gr.HTML("", elem_id="verdict", label="Verdict")


def _verdict_html(verdict):
    """The verdict as the coloured badge under the caption: PASS / FAIL / REVIEW and why."""
    import html

    reasons = "<br>".join(html.escape(reason) for reason in verdict.reasons)
    return f'<div class="verdict verdict-{verdict.decision}"><b>{verdict.decision.upper()}</b> {reasons}</div>'


def _review_panel(knowledge):
    """The compact flag/correct panel under the results: right or wrong, what really applies, a better caption."""
    import gradio as gr

    with gr.Group(elem_id="review"):
        gr.Markdown("**Review this result**: mark it, tick what really applies, correct the caption; it is saved "
                    "with the photo for the next model")
        with gr.Row(equal_height=False):
            judgement = gr.Radio([("Right", "right"), ("Wrong", "wrong")], label="The result is", scale=1,
                                 elem_id="review-judgement")
            descriptions = gr.CheckboxGroup([(p.text, p.id) for p in knowledge.prompts], scale=3,
                                            label="Descriptions that really apply", elem_id="review-descriptions")
        with gr.Row(equal_height=False):
            caption = gr.Textbox(label="Corrected caption (optional)", placeholder="what the caption should say",
                                 scale=3, elem_id="review-caption")
            note = gr.Textbox(label="Note (optional)", scale=2, elem_id="review-note")
            save = gr.Button("Save review", scale=1, elem_id="review-save")
        status = gr.Markdown(elem_id="review-status")
    return SimpleNamespace(judgement=judgement, descriptions=descriptions, caption=caption, note=note, save=save,
                           status=status)


def _wire_review(inspector, one, review_dir):
    """Gradio's flagging pattern for Blocks: callback.setup(components, directory), a button calls flag()."""
    import gradio as gr

    from utils.flagging import ReviewCallback
    from utils.reviews import ReviewError

    review, callback = one.review, ReviewCallback(inspector.knowledge)
    fields = [one.image, one.details, review.judgement, review.descriptions, review.caption, review.note]
    callback.setup(fields, str(review_dir))

    def flag(image, details, judgement, descriptions, corrected_caption, note, request: gr.Request):
        if image is None or not details:
            raise gr.Error("Inspect a photo first, then review its result.", print_exception=False)
        try:
            count = callback.flag([_upload(image), details, judgement, descriptions, corrected_caption, note],
                                  username=getattr(request, "username", None))
        except ReviewError as error:
            raise gr.Error(_clean_message(error, *_upload(image)), title="Review not saved",
                           print_exception=False) from None
        return f"Saved: review {count} in {review_dir}"

    # preprocess=False: the upload arrives as the cached file itself, copied byte for byte into the store
    review.save.click(flag, fields, review.status, api_name="flag", preprocess=False, concurrency_id="review")
    one.run.click(lambda: (None, [], "", "", ""), None,  # a new inspection starts a fresh review
                  [review.judgement, review.descriptions, review.caption, review.note, review.status],
                  api_visibility="private", queue=False)


def _caption_note(found):
    """One line under the caption: the product kind CLIP sees, and how the caption was written (the seed a
    sampled caption used, so a good one can be had again)."""
    from utils.plot import percent_text

    parts = [f"Kind: **{found.kind[0].noun}** ({percent_text(found.kind[1])})"] if found.kind else []
    parts.append(_view_note(found))
    generation = found.generation
    if generation is None:
        parts.append("zero-shot: the knowledge base's summary of the top matches")
    elif generation.sampling:
        parts.append(f"sampled at temperature {generation.temperature:g} with **seed {generation.seed}** (enter it "
                     "under Seed to get this caption again)")
        if generation.temperature > 1.2:
            parts.append("above ~1.2 captions turn to gibberish")
    else:
        parts.append("beam search" if generation.num_beams > 1 else "greedy decoding")
    if generation is not None and generation.constrained:
        parts.append("knowledge-base phrases only")
    return " · ".join(parts)


def _view_note(found):
    """Which part of the photo CLIP looked at."""
    if found.view == "tiles":
        return "whole photo" if found.tiles == 1 else f"whole photo: {found.tiles} overlapping tiles"
    return "letterboxed whole photo" if found.view == "letterbox" else "center square only (the rest ignored)"


def _model_line(inspector):
    line = inspector.info()
    if inspector.captioner is not None and inspector.captioner.lm_precision != "fp32":
        line += f" | LM {inspector.captioner.lm_precision} draft, fp32 check: fp32's greedy captions"
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
        return [name, "", "", "", "", "", None, _clean_message(error, source, name)], None
    except Exception as error:  # one failing photo must not cost the rest of a long batch
        log.exception("inspecting %s failed", name)
        return [name, "", "", "", "", "", None, f"failed: {type(error).__name__}: {error}"], None
    verdict = found.verdict
    agrees = {True: "agrees", False: "disagrees", None: ""}[verdict.caption_agrees]
    return [name, verdict.decision, found.caption, "; ".join(verdict.reasons), agrees,
            verdict.top_defect, round(verdict.top_defect_prob, 4), ""], found.combined


def _needing_review(frame, only_review):
    """The batch table, or only its rows a human must look at (review, and files that failed)."""
    if frame is None or not only_review:
        return frame
    return frame[(frame["verdict"] == "review") | (frame["error"] != "")]


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
    raise SystemExit(f"error: no demo bundle at {DEMO_BUNDLE}. Rebuild it with `make demo` (about 75 minutes on "
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
    parser.add_argument("--review-dir", metavar="DIR", default=str(DEFAULT_REVIEW_DIR),
                        help="where operators' reviews (flags and corrections, with the photos) are saved "
                             f"(default {DEFAULT_REVIEW_DIR.relative_to(ROOT)}); train/corrections.py reads it")
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
                    max_image_mb=args.max_image_mb, review_dir=args.review_dir)
    launch(app, max_image_mb=args.max_image_mb, server_name=args.host, server_port=args.port, share=args.share,
           auth=args.auth)


if __name__ == "__main__":
    main()
