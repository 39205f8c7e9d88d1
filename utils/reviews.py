"""The review store: operators' verdicts on results and their corrections, as plain files in one directory.

    REVIEW_DIR/
      images/ID.jpg     the inspected image, byte for byte as it was uploaded
      rows/ID.json      one flag: time, user, bundle, settings, model caption, top-k, verdict, the correction
      reviews.csv       every row for people and spreadsheets, rebuilt from rows/ after each flag

A flag is committed by the atomic rename of its rows/ID.json, after its image is in place: a killed write
leaves no half row (at most an image without a row, which nothing reads), and concurrent flags from
threads or processes never write the same file. reviews.csv is rewritten whole, atomically, under a file
lock, so it is always complete; rows/ is the record and reviews.csv can always be rebuilt from it.
train/corrections.py turns a review directory into a training dataset.
"""
import hashlib
import json
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

from utils.files import atomic_write, write_json
from utils.images import load_image

JUDGEMENTS = ("right", "wrong")
COLUMNS = ["id", "time", "user", "image", "original_name", "sha256", "judgement", "descriptions",
           "corrected_caption", "note", "caption", "verdict", "verdict_reasons", "caption_check", "top_k", "bundle",
           "knowledge", "settings"]
MODEL_COLUMNS = COLUMNS[COLUMNS.index("caption"):]  # what the app showed, from Inspector.record
IMAGE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


class ReviewError(ValueError):
    """A flag that cannot be stored: no image, an unknown judgement. Nothing is written."""


class ReviewStore:
    def __init__(self, root):
        self.root = Path(root)

    def add(self, image, judgement, *, descriptions=(), caption="", note="", model=None, user="", name=""):
        """Store one flag; `image` a path or bytes, `model` what the app showed (caption, top_k, verdict,
        verdict_reasons, bundle, knowledge, settings). Returns the row as stored."""
        if judgement not in JUDGEMENTS:
            raise ReviewError(f"judgement must be one of {', '.join(JUDGEMENTS)}, got {judgement!r}")
        data, name = _image_bytes(image, name)
        now = datetime.now(timezone.utc)
        row_id = f"{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"  # sorts in time order, to the microsecond
        picture = self.root / "images" / f"{row_id}{_suffix(data, name)}"
        atomic_write(picture, lambda p: p.write_bytes(data))
        model = model or {}
        row = {"id": row_id, "time": now.isoformat(timespec="seconds"), "user": user or "",
               "image": picture.relative_to(self.root).as_posix(), "original_name": name,
               "sha256": hashlib.sha256(data).hexdigest(), "judgement": judgement,
               "descriptions": list(descriptions), "corrected_caption": " ".join(str(caption or "").split()),
               "note": str(note or "").strip(), **{key: model.get(key, "") for key in MODEL_COLUMNS}}
        write_json(self.root / "rows" / f"{row_id}.json", row)  # the commit point
        self.rebuild_csv()
        return row

    def rows(self):
        """Every stored row, oldest first; a damaged row file is named in a warning and left out."""
        rows = []
        for path in sorted((self.root / "rows").glob("*.json")):
            try:
                rows.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError) as error:
                warnings.warn(f"{path}: damaged review row, left out ({error})", stacklevel=2)
        return rows

    def __len__(self):
        return len(list((self.root / "rows").glob("*.json")))

    def table(self):
        """The rows as a DataFrame in COLUMNS order; lists and dicts as JSON text."""
        import pandas as pd

        flat = [{key: _cell(row.get(key, "")) for key in COLUMNS} for row in self.rows()]
        return pd.DataFrame(flat, columns=COLUMNS)

    def rebuild_csv(self):
        from filelock import FileLock

        with FileLock(str(self.root / ".reviews.csv.lock"), timeout=60):
            table = self.table()
            atomic_write(self.root / "reviews.csv", lambda p: table.to_csv(p, index=False, lineterminator="\n"))


def _cell(value):
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value


def _image_bytes(image, name):
    """(bytes, file name) of an image that really is one: a flag without a readable image is refused."""
    if image is None:
        raise ReviewError("a review needs the inspected image")
    if isinstance(image, (str, Path)):
        name = name or Path(image).name
        try:
            data = Path(image).read_bytes()
        except OSError as error:
            raise ReviewError(f"{name}: cannot read the image ({error})") from None
    else:
        data = bytes(image)
    try:
        load_image(data)
    except ValueError as error:
        raise ReviewError(str(error).replace("<bytes>", name or "the image")) from None
    return data, name or "image"


def _suffix(data, name):
    from io import BytesIO

    from PIL import Image

    try:
        found = Image.open(BytesIO(data)).format
    except Exception:  # noqa: BLE001 -- formats PIL only reads through plugins (HEIC): keep the name's suffix
        found = None
    return IMAGE_FORMATS.get(found) or Path(name).suffix.lower() or ".img"


def training_caption(row, knowledge, kind=None):
    """(caption, "") the review teaches, or (None, why not): the operator's own caption, else one summarized
    from the descriptions they ticked (naming `kind`, as the auto-labels name CLIP's), else, for a result
    marked right, the model's caption."""
    from utils.summarizer import summarize

    if row.get("corrected_caption"):
        return row["corrected_caption"], ""
    ticked = [p for p in knowledge.prompts if p.id in set(row.get("descriptions") or [])]
    if ticked:
        return summarize([(p, 1.0) for p in ticked], knowledge, kind=kind), ""
    if row.get("judgement") == "right" and row.get("caption"):
        return row["caption"], ""
    return None, "marked wrong without a corrected caption or ticked descriptions"


def latest_per_image(rows):
    """The newest review of each image (by content): a later correction replaces an earlier one."""
    latest = {}
    for row in sorted(rows, key=lambda r: r.get("id", "")):
        latest[row.get("sha256") or row.get("id")] = row
    return sorted(latest.values(), key=lambda r: r.get("id", ""))
