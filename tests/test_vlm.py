import copy
import json

import pytest
import torch

from conftest import CAPTIONS, make_tiny_captioner
from models.mapper import MLPMapper, TransformerMapper
from models.vlm import ClipCaptioner


def overfit(captioner, steps=300, lr=3e-3):
    torch.manual_seed(1)
    embeddings = torch.nn.functional.normalize(torch.randn(len(CAPTIONS), captioner.clip.embed_dim), dim=-1)
    trainable = [p for p in captioner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    captioner.train()
    for _ in range(steps):
        loss = captioner(embeddings, CAPTIONS).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    captioner.eval()
    return embeddings, loss.item()


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
@pytest.mark.parametrize("lm_kind", ["opt", "gpt2", "llama"])
def test_overfits_four_captions_exactly(mapper, lm_kind):
    captioner = make_tiny_captioner(lm_kind, mapper=mapper, lm_mode="full")
    embeddings, loss = overfit(captioner)
    assert loss < 0.05
    assert captioner.generate(embeddings=embeddings, max_new_tokens=20, clip_kind=False) == CAPTIONS  # the LM's own


def test_frozen_lm_trains_only_the_mapper():
    captioner = make_tiny_captioner("opt", lm_mode="frozen")
    assert not any(p.requires_grad for p in captioner.lm.parameters())
    assert all(p.requires_grad for p in captioner.mapper.parameters())
    lm_before = {k: v.clone() for k, v in captioner.lm.state_dict().items()}
    _, loss = overfit(captioner, steps=5)
    # the code promises a frozen LM's weights are never written to
    assert all(torch.equal(lm_before[k], v) for k, v in captioner.lm.state_dict().items())  # bitwise: untouched


def test_partial_mode_freezes_first_layers():
    captioner = make_tiny_captioner("opt", lm_mode="partial", lm_frozen_layers=1)
    layers = captioner.lm.model.decoder.layers
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())


def test_loss_ignores_prefix_and_padding():
    captioner = make_tiny_captioner("opt", prefix_text="condition :")
    _, _, labels = captioner._teacher_forcing_inputs(torch.randn(2, 32), ["a pear with dark spots.", "a pear."])
    n_prompt = captioner.config.prefix_length + 2  # "condition :" is two tokens
    assert (labels[:, :n_prompt] == -100).all()
    short = len(captioner.tokenizer("a pear.", add_special_tokens=False).input_ids) + 1
    assert labels[1, n_prompt + short - 1] == captioner.tokenizer.eos_token_id
    assert (labels[1, n_prompt + short:] == -100).all()


def test_batched_generate_equals_one_by_one(overfit_opt):
    captioner, embeddings = overfit_opt
    with torch.no_grad():  # other batch shapes may take other kernels: the logits agree closely, not bitwise
        together = captioner(embeddings, CAPTIONS).logits
        alone = [captioner(e[None], [c]).logits[0] for e, c in zip(embeddings, CAPTIONS)]
    for row, logits in enumerate(alone):
        torch.testing.assert_close(together[row, :len(logits)], logits, rtol=1e-4, atol=1e-4)
    batched = captioner.generate(embeddings=embeddings, max_new_tokens=12)
    single = [captioner.generate(embeddings=e[None], max_new_tokens=12)[0] for e in embeddings]
    assert batched == single


def test_sampling_is_reproducible_with_a_seed():
    captioner = make_tiny_captioner("opt")
    embeddings = torch.randn(2, 32)
    first = captioner.generate(embeddings=embeddings, temperature=1.5, top_k=20, seed=7, max_new_tokens=8)
    again = captioner.generate(embeddings=embeddings, temperature=1.5, top_k=20, seed=7, max_new_tokens=8)
    assert first == again  # the same seed on the same machine: the code promises the same draw


def test_seeded_sampling_is_reproducible_under_concurrent_requests():
    """The app serves requests in threads; seeded samplers and greedy calls must not disturb each other."""
    from concurrent.futures import ThreadPoolExecutor

    captioner = make_tiny_captioner("opt")
    embeddings = torch.randn(2, 32)

    def sample(seed):
        return captioner.generate(embeddings=embeddings, temperature=1.5, top_k=20, seed=seed, max_new_tokens=12)

    def greedy(_):
        return captioner.generate(embeddings=embeddings, max_new_tokens=12)

    expected = [sample(seed) for seed in range(4)]
    with ThreadPoolExecutor(8) as pool:
        sampled = [pool.submit(sample, seed % 4) for seed in range(16)]
        list(pool.map(greedy, range(16)))
    assert [future.result() for future in sampled] == expected * 4


def save_models(captioner, tmp_path):
    """Bundles reference CLIP and LM by path: give the tiny ones a home on disk."""
    captioner.clip.save_pretrained(tmp_path / "clip")
    captioner.lm.save_pretrained(tmp_path / "lm")
    captioner.tokenizer.save_pretrained(tmp_path / "lm")
    captioner.config.clip, captioner.config.lm = str(tmp_path / "clip"), str(tmp_path / "lm")


@pytest.mark.parametrize("lm_mode", ["frozen", "full"])
def test_save_load_round_trip(tmp_path, lm_mode):
    captioner = make_tiny_captioner("opt", mapper="transformer", lm_mode=lm_mode)
    embeddings, _ = overfit(captioner, steps=60)
    save_models(captioner, tmp_path)
    captioner.save_pretrained(tmp_path / "bundle")
    assert (tmp_path / "bundle" / "lm").exists() == (lm_mode != "frozen")
    loaded = ClipCaptioner.from_pretrained(tmp_path / "bundle", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded(embeddings, CAPTIONS).logits, captioner(embeddings, CAPTIONS).logits)
    assert loaded.generate(embeddings=embeddings) == captioner.generate(embeddings=embeddings)


def test_self_contained_bundle_moves_with_its_clip(tmp_path):
    captioner = make_tiny_captioner("opt")
    save_models(captioner, tmp_path)
    captioner.save_pretrained(tmp_path / "bundle", include_clip=True)
    (tmp_path / "bundle").rename(tmp_path / "moved")
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["clip"] == "clip"
    loaded = ClipCaptioner.from_pretrained(tmp_path / "moved", device="cpu")
    pixels = torch.rand(1, 3, 32, 32)
    # identical weights (copied, not recomputed), but a reloaded model may run other kernels: 8.9e-8 apart was
    # seen on another machine, so the outputs are compared with a tolerance
    pairs = zip(loaded.clip.state_dict().values(), captioner.clip.state_dict().values())
    assert all(torch.equal(a, b) for a, b in pairs)  # bitwise: copied bytes
    torch.testing.assert_close(loaded.clip.encode_images(pixels), captioner.clip.encode_images(pixels))


def test_mismatched_bundle_names_the_problem(tmp_path):
    captioner = make_tiny_captioner("opt")
    save_models(captioner, tmp_path)
    captioner.save_pretrained(tmp_path / "bundle")
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    config["prefix_length"] = 7
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="prefix_length=7"):
        ClipCaptioner.from_pretrained(tmp_path / "bundle", device="cpu")
    config["prefix_length"], config["lm_dim"] = 4, 99
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lm_dim=99"):
        ClipCaptioner.from_pretrained(tmp_path / "bundle", device="cpu")
    config["lm_dim"], config["surprise"] = 32, 1
    (tmp_path / "bundle" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="surprise"):
        ClipCaptioner.from_pretrained(tmp_path / "bundle", device="cpu")


def test_saving_over_a_bundle_replaces_it_whole(tmp_path):
    captioner = make_tiny_captioner("opt")
    save_models(captioner, tmp_path)
    captioner.save_pretrained(tmp_path / "bundle")
    (tmp_path / "bundle" / "stale.txt").write_text("from an older run")
    captioner.save_pretrained(tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == ["config.json", "mapper.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


def test_mapper_shapes():
    x = torch.randn(3, 16)
    assert MLPMapper(16, 8, 5)(x).shape == (3, 5, 8)
    assert TransformerMapper(16, 8, 5, clip_length=3, num_layers=1, num_heads=2)(x).shape == (3, 5, 8)


def test_caption_log_likelihood_is_differentiable():
    captioner = make_tiny_captioner("opt")
    embeddings = torch.randn(2, 32, requires_grad=True)
    scores = captioner.caption_log_likelihood(embeddings, CAPTIONS[:2])
    assert scores.shape == (2,) and (scores < 0).all()
    scores.sum().backward()
    assert embeddings.grad.abs().sum() > 0
    n_tokens = len(captioner.tokenizer(CAPTIONS[0], add_special_tokens=False).input_ids) + 1
    mean_loss = captioner(embeddings[:1], CAPTIONS[:1]).loss
    assert torch.allclose(-mean_loss * n_tokens, scores[0], atol=1e-4)  # padding in the batch changes nothing


@pytest.fixture(scope="module")
def overfit_opt():
    captioner = make_tiny_captioner("opt", lm_mode="full")
    embeddings, _ = overfit(captioner)
    return captioner, embeddings


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_keeps_greedy_captions(overfit_opt, precision):
    captioner, embeddings = overfit_opt
    reduced = copy.deepcopy(captioner).set_precision(precision)
    assert reduced.generate(embeddings=embeddings, max_new_tokens=20, clip_kind=False) == CAPTIONS
