"""Gradio's flagging machinery over the review store: a FlaggingCallback the app sets up and calls the way
Gradio's own flagging guide does for Blocks (callback.setup(components, dir); button -> callback.flag).

Gradio's CSVLogger appends to one CSV under a thread lock: a killed write can leave half a row, and two app
processes on one directory can interleave. ReviewStore (utils/reviews.py) commits each flag by one atomic
rename instead; this callback maps the flagged components onto it. Imported by the app only (gradio).
"""
import gradio as gr

from utils.reviews import ReviewError, ReviewStore

# the components the app hands to setup(), in this order
FIELDS = ("image", "details", "judgement", "descriptions", "corrected_caption", "note")


class ReviewCallback(gr.FlaggingCallback):
    def __init__(self, knowledge):
        self.knowledge = knowledge
        self.store = None

    def setup(self, components, flagging_dir):
        if len(components) != len(FIELDS):
            raise ValueError(f"ReviewCallback expects the components {', '.join(FIELDS)}")
        self.components, self.store = components, ReviewStore(flagging_dir)
        if len(self.store):  # a run killed between a row and its CSV line: the CSV catches up at start
            self.store.rebuild_csv()

    def flag(self, flag_data, flag_option=None, username=None):
        """Store one review; flag_data are the FIELDS' values (image as a path or bytes). Returns the number
        of reviews stored."""
        values = dict(zip(FIELDS, flag_data))
        if not values["judgement"]:
            raise ReviewError("say whether the result is right or wrong before saving the review")
        image, name = values["image"] if isinstance(values["image"], tuple) else (values["image"], "")
        self.store.add(image, flag_option or values["judgement"], descriptions=self.prompt_ids(values["descriptions"]),
                       caption=values["corrected_caption"], note=values["note"], model=values["details"] or {},
                       user=username or "", name=name)
        return len(self.store)

    def prompt_ids(self, chosen):
        """Knowledge-base ids for ticked descriptions given as ids or texts; an unknown one is refused."""
        by_text = {p.text: p.id for p in self.knowledge.prompts}
        ids = [by_text.get(item, item) for item in chosen or []]
        unknown = [item for item in ids if item not in self.knowledge.ids()]
        if unknown:
            raise ReviewError(f"not in knowledge base {self.knowledge.name!r}: {', '.join(map(repr, unknown))} "
                              f"(its ids: {', '.join(self.knowledge.ids())})")
        return ids
