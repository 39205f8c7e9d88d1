from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_tiny_clip
from train import importers
from train.importers import CaptionFileError, import_captions, read_coco, read_flickr
from utils.encoding import LabelError
from utils.data import DatasetMismatchError, load_dataset, read_failed

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def clip():
    return make_tiny_clip()


def photo(path, seed):
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize((64, 48), Image.BICUBIC).save(path)


def test_read_coco():
    captions = read_coco(FIXTURES / "coco_captions.json")
    assert len(captions) == 7
    assert captions[0] == ("370509", "000000397133.jpg", "A man is in a kitchen making pizzas.")
    assert captions[3].text == "A small kitchen has various appliances and a table."  # whitespace tidied


def test_read_flickr_formats():
    with pytest.warns(UserWarning, match="skipped 1 lines .* line 8"):
        results = read_flickr(FIXTURES / "flickr_results.csv")
    assert [c.id for c in results] == ["1000092795.jpg#0", "1000092795.jpg#1", "10002456.jpg#0", "10002456.jpg#1",
                                       "2199200615.jpg#4", "1007129816.jpg#0"]
    assert results[4] == ("2199200615.jpg#4", "2199200615.jpg", "A dog runs across the grass .")  # missing pipe
    tokens = read_flickr(FIXTURES / "flickr_token.txt")
    assert [c.id for c in tokens] == ["1000092795.jpg#0", "1000092795.jpg#1", "10002456.jpg#0", "2199200615.jpg#4"]
    assert [c.file for c in tokens] == ["1000092795.jpg", "1000092795.jpg", "10002456.jpg", "2199200615.jpg"]
    assert tokens[1].text == results[1].text


def test_read_kaggle_flickr8k_csv(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text('image,caption\na.jpg,A child in pink .\na.jpg,"A girl, running ."\nb.jpg,A dog .\n')
    assert [tuple(c) for c in read_flickr(path)] == [("a.jpg#0", "a.jpg", "A child in pink ."),
                                                     ("a.jpg#1", "a.jpg", "A girl, running ."),
                                                     ("b.jpg#0", "b.jpg", "A dog .")]


def test_bad_caption_files(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CaptionFileError, match="cannot read"):
        read_coco(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"images": [{"id": 1}], "annotations": []}')
    with pytest.raises(CaptionFileError, match="not a COCO captions file"):
        read_coco(tmp_path / "y.json")
    (tmp_path / "z.txt").write_text("nothing useful here\n")
    with pytest.raises(CaptionFileError, match="no captions"), pytest.warns(UserWarning, match="skipped 1 lines"):
        read_flickr(tmp_path / "z.txt")


def test_import_coco(tmp_path, clip):
    images = tmp_path / "val2017"
    images.mkdir()
    photo(images / "000000397133.jpg", 0)
    photo(images / "000000037777.jpg", 1)
    (images / "000000252219.jpg").write_text("not a jpeg")  # 000000087038.jpg is missing altogether
    out = import_captions("coco", FIXTURES / "coco_captions.json", images, tmp_path / "ds", clip, workers=0,
                          progress=False)
    data = load_dataset(out)
    assert list(data.table.columns) == ["id", "path", "class", "caption"]
    assert data.table["path"].tolist() == ["000000037777.jpg"] * 3 + ["000000397133.jpg"] * 2
    assert data.table["id"].tolist() == ["799869", "801282", "802101", "370509", "370584"]
    assert set(data.table["class"]) == {""}
    expected = clip.encode_images([images / "000000037777.jpg", images / "000000397133.jpg"])
    torch.testing.assert_close(data.embeddings, expected[[0, 0, 0, 1, 1]], atol=1e-5, rtol=0)
    failed = dict(read_failed(out))
    assert set(failed) == {"000000087038.jpg", "000000252219.jpg"} and "no such file" in failed["000000087038.jpg"]
    manifest = data.manifest
    assert manifest["kind"] == "coco" and manifest["top_k"] == 0 and manifest["knowledge_hash"] is None
    assert manifest["count"] == 5 and manifest["images"] == 2 and manifest["failed"] == 2
    assert manifest["captions"] == str((FIXTURES / "coco_captions.json").resolve())

    other = make_tiny_clip()
    other.name = "another-clip"
    with pytest.raises(DatasetMismatchError):
        import_captions("coco", FIXTURES / "coco_captions.json", images, out, other, workers=0, progress=False)


def test_import_flickr_command_line_and_no_redo(tmp_path, clip, capsys, monkeypatch):
    images = tmp_path / "flickr30k_images"
    images.mkdir()
    for seed, name in enumerate(["1000092795.jpg", "10002456.jpg", "2199200615.jpg"]):
        photo(images / name, seed)
    clip.save_pretrained(tmp_path / "clip")
    argv = ["flickr", "--captions", str(FIXTURES / "flickr_token.txt"), "--images", str(images),
            "--out", str(tmp_path / "ds"), "--clip", str(tmp_path / "clip"), "--device", "cpu", "--workers", "0",
            "--quiet"]
    importers.main(argv)
    assert "4 rows, 0 images failed" in capsys.readouterr().out
    data = load_dataset(tmp_path / "ds")
    assert data.manifest["kind"] == "flickr" and len(data) == 4
    assert torch.equal(data.embeddings[0], data.embeddings[1])  # bitwise: two captions of one image share its row

    monkeypatch.setattr(importers, "encode_shards", lambda *a, **k: pytest.fail("encoded a finished import again"))
    monkeypatch.setattr(importers, "encode_shards", lambda *a, **k: pytest.fail("encoded a finished import again"))
    importers.main(argv)


def test_import_with_wrong_image_folder(tmp_path, clip):
    with pytest.raises(LabelError, match="none of the 3 images"):
        import_captions("flickr", FIXTURES / "flickr_token.txt", tmp_path, tmp_path / "ds", clip, progress=False)
    assert not (tmp_path / "ds").exists()


def fake_elpv(folder, count=16):
    """A data folder laid out as the elpv-dataset package's: labels.csv and images/ (tiny grey squares)."""
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(count):
        name = f"images/cell{i:04d}.png"
        Image.fromarray(np.full((12, 12), 40 + i, dtype=np.uint8)).save(folder / name)
        lines.append(f"{name}  {[0.0, 1 / 3, 2 / 3, 1.0][i % 4]!r:<20} {['mono', 'poly'][i // 4 % 2]}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_import_elpv_links_class_folders_with_a_stratified_split(tmp_path, capsys):
    import yaml

    from utils.elpv import CLASS_MAP, LEVELS
    from utils.knowledge import load_knowledge

    source = fake_elpv(tmp_path / "data", 32)  # 8 strata (level x type) of 4: one of each held out
    importers.main(["elpv", "--source", str(source), "--out", str(tmp_path / "cells")])
    assert "train 24" in capsys.readouterr().out
    train, test = sorted((tmp_path / "cells" / "train").rglob("*.png")), sorted((tmp_path / "cells" / "test").rglob("*.png"))
    assert len(train) == 24 and len(test) == 8 and not {p.name for p in train} & {p.name for p in test}
    assert {p.parent.parent.name for p in test} == set(LEVELS.values())  # every level held out
    assert all(p.resolve().parent == (source / "images").resolve() for p in train + test)  # links, not copies
    assert yaml.safe_load((tmp_path / "cells" / "class_map.yaml").read_text()) == CLASS_MAP
    assert {p.name.split("_cell")[0] for p in (tmp_path / "cells" / "examples").iterdir()} <= {
        f"{level}_{kind}" for level in LEVELS.values() for kind in ("mono", "poly")}
    assert set(load_knowledge("solar_cell").ids()) >= {i for v in CLASS_MAP.values() if not isinstance(v, str) for i in v}
    stamp = (tmp_path / "cells" / "elpv.json").stat().st_mtime_ns
    importers.main(["elpv", "--source", str(source), "--out", str(tmp_path / "cells")])
    assert (tmp_path / "cells" / "elpv.json").stat().st_mtime_ns == stamp  # finished: left as it is


def test_import_elpv_names_a_bad_source(tmp_path, capsys):
    with pytest.raises(SystemExit):
        importers.main(["elpv", "--source", str(tmp_path), "--out", str(tmp_path / "cells")])
    assert "no labels.csv" in capsys.readouterr().err
    source = fake_elpv(tmp_path / "data", 4)
    (source / "labels.csv").write_text("images/cell0000.png 0.5 mono\n")
    with pytest.raises(SystemExit):
        importers.main(["elpv", "--source", str(source), "--out", str(tmp_path / "cells")])
    assert "labels.csv: line 1" in capsys.readouterr().err
