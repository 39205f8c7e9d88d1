import numpy as np
import pytest
from PIL import Image

from demo import world as synthetic
from demo.world import (DEFECT_KINDS, FRUITS, HARD, HEALTHY, WorldOptions, item_rng, load_masks, load_truth,
                        render_sample, write_world)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), 16, seed=3, width=64, height=64, progress=False)


def test_render_is_deterministic():
    a = render_sample(item_rng(7, 0))
    b = render_sample(item_rng(7, 0))
    c = render_sample(item_rng(7, 1))
    # bitwise: the generator promises one seed draws one image (the same code path, twice, on one machine)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))  # bitwise: same seed, same code path
    assert (a.fruit, a.defects) == (b.fruit, b.defects)
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.defects)  # bitwise: masks are drawn, not computed
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))  # bitwise: another seed, another image


@pytest.mark.parametrize("index", range(12))
def test_masks_match_defects(index):
    s = render_sample(item_rng(11, index), width=64, height=64, defect_probs=[0.2, 0.3, 0.3, 0.2])
    assert s.image.size == (64, 64) and s.image.mode == "RGB"
    assert s.fruit in FRUITS
    assert set(s.masks) == set(s.defects) and len(set(s.defects)) == len(s.defects)
    assert set(s.defects) <= set(DEFECT_KINDS)
    for m in s.masks.values():
        assert m.dtype == bool and m.shape == (64, 64) and m.any()
    if s.defects:
        assert s.primary == max(s.defects, key=lambda d: s.masks[d].sum())
    else:
        assert s.primary == HEALTHY


def test_defects_change_the_pixels_they_mark():
    rng_healthy, rng_sick = item_rng(5, 2), item_rng(5, 2)
    healthy = render_sample(rng_healthy, defect_probs=[1, 0, 0, 0])
    sick = render_sample(rng_sick, defect_probs=[0, 1, 0, 0])
    assert healthy.defects == [] and healthy.masks == {} and healthy.primary == HEALTHY
    (kind,) = sick.defects
    mask = sick.masks[kind]
    diff = np.abs(np.asarray(sick.image, float) - np.asarray(healthy.image, float)).sum(-1)
    # the defect is drawn where its mask says, not somewhere else
    assert diff[mask].mean() > 3 * diff[~mask].mean()


def test_defect_probs_control_count():
    counts = {len(render_sample(item_rng(2, i), 48, 48, defect_probs=[0, 0, 0, 1]).defects) for i in range(4)}
    assert counts == {3}


def test_non_square_size():
    s = render_sample(item_rng(1, 4), width=96, height=64, defect_probs=[0, 1])
    assert s.image.size == (96, 64)
    assert all(m.shape == (64, 96) and m.any() for m in s.masks.values())


def test_world_layout_and_labels(world):
    df = load_truth(world)
    assert list(df.columns) == ["id", "path", "fruit", "primary", "defects"]
    assert len(df) == 16 and df["id"].is_unique
    for row in df.itertuples():
        path = world / row.path
        assert path.is_file() and path.parent.name == row.primary
        assert Image.open(path).size == (64, 64)
        defects = row.defects.split(";") if row.defects else []
        masks = load_masks(world, row.id)
        assert sorted(masks) == sorted(defects)
        if defects:
            assert row.primary == max(defects, key=lambda d: masks[d].sum())
        else:
            assert row.primary == HEALTHY


def test_world_is_deterministic(world, tmp_path):
    again = write_world(tmp_path / "again", 16, seed=3, width=64, height=64, progress=False)
    assert (again / "labels.csv").read_bytes() == (world / "labels.csv").read_bytes()
    for row in load_truth(world).itertuples():  # bitwise: a seeded world is the same files on one machine
        first, second = np.asarray(Image.open(world / row.path)), np.asarray(Image.open(again / row.path))
        assert np.array_equal(first, second)  # bitwise: the same seed writes the same file


def test_second_call_is_noop(world):
    files = sorted(p for p in world.rglob("*") if p.is_file())
    stamps = [p.stat().st_mtime_ns for p in files]
    write_world(world, 16, seed=3, width=64, height=64, progress=False)
    assert sorted(p for p in world.rglob("*") if p.is_file()) == files
    assert [p.stat().st_mtime_ns for p in files] == stamps


def test_interrupted_world_resumes_and_other_params_rebuild(tmp_path, monkeypatch):
    reference = write_world(tmp_path / "ref", 6, seed=0, width=48, height=48, progress=False)
    real_render, calls = synthetic.render_sample, []

    def dies_on_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_sample", dies_on_fifth)
    out = tmp_path / "w"
    with pytest.raises(KeyboardInterrupt):
        write_world(out, 6, seed=0, width=48, height=48, progress=False)
    assert not (out / "world.json").exists() and len(list((out / "masks").iterdir())) == 4
    monkeypatch.setattr(synthetic, "render_sample", real_render)
    write_world(out, 6, seed=0, width=48, height=48, progress=False)
    assert (out / "labels.csv").read_bytes() == (reference / "labels.csv").read_bytes()
    assert (out / "world.json").exists()

    write_world(out, 4, seed=1, width=48, height=48, progress=False)
    assert len(load_truth(out)) == 4 and len(list((out / "masks").iterdir())) == 4
    assert sum(1 for _ in (out / "images").rglob("*.jpg")) == 4


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("not a world")
    with pytest.raises(FileExistsError):
        write_world(tmp_path, 2, progress=False)
    assert (tmp_path / "precious.txt").exists()


def test_faint_defects_keep_their_masks_and_change_less():
    full = render_sample(item_rng(4, 1), 64, 64, defect_probs=[0, 1])
    faint = render_sample(item_rng(4, 1), 64, 64, defect_probs=[0, 1], options=WorldOptions(faintest=0.3))
    healthy = render_sample(item_rng(4, 1), 64, 64, defect_probs=[1])
    (kind,) = full.defects
    assert faint.defects == [kind] and np.array_equal(faint.masks[kind], full.masks[kind])  # bitwise: drawn masks
    change = [np.abs(np.asarray(s.image, float) - np.asarray(healthy.image, float))[full.masks[kind]].mean()
              for s in (full, faint)]
    assert change[1] < 0.95 * change[0]


def test_smaller_defects_cover_less():
    def area(options):
        return sum(m.sum() for i in range(8)
                   for m in render_sample(item_rng(6, i), 64, 64, [0, 1], options).masks.values())
    assert area(WorldOptions(defect_scale=0.5)) < 0.6 * area(WorldOptions())


@pytest.mark.parametrize("index", range(8))
def test_hard_world_masks_are_visible_defects(index):
    s = render_sample(item_rng(9, index), 64, 64, defect_probs=[0.2, 0.4, 0.4], options=HARD)
    assert s.fruit in FRUITS and set(s.masks) == set(s.defects) <= set(DEFECT_KINDS)
    for m in s.masks.values():
        assert m.dtype == bool and m.shape == (64, 64) and m.sum() >= 4


def test_hard_world_differs_and_is_recorded(tmp_path):
    plain = [np.asarray(render_sample(item_rng(9, i), 48, 48).image) for i in range(4)]
    hard = [np.asarray(render_sample(item_rng(9, i), 48, 48, options=HARD).image) for i in range(4)]
    assert not any(np.array_equal(a, b) for a, b in zip(plain, hard))  # bitwise: other options, other images
    out = write_world(tmp_path / "hard", 3, seed=1, width=48, height=48, progress=False, options=HARD)
    assert (out / "world.json").read_text().count("defect_scale") == 1
