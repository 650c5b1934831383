"""ImageVariation over tiny random pipelines of every diffusers family (built in code, offline)."""

import json
import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image as ImageFeature, Value
from datasets.fingerprint import Hasher
from PIL import Image

import hf_backdoor_guard as hbg
from hf_backdoor_guard.variations import lab_to_rgb, rgb_to_lab, transfer_color, variation_seed
from hf_backdoor_guard.variations import SUPPORTED_CLASSES
from hf_backdoor_guard.variations.adapters import FAMILIES as REGISTERED_FAMILIES, Adapter
from hf_backdoor_guard.variations.families import UnconditionalSDEditAdapter
from tiny_pipelines import FAMILIES, build_sd_image_variation, saved_family, tiny_unet2d

# 2-4 steps per family; SDEdit families need steps * strength >= 1.
FAST = {
    "sd-image-variation": dict(num_inference_steps=2),
    "versatile": dict(num_inference_steps=2),
    "unclip-img2img": dict(num_inference_steps=2),
    "kandinsky22": dict(num_inference_steps=2, strength=0.5, prior_kwargs={"num_inference_steps": 2}),
    "sd-img2img": dict(num_inference_steps=4, strength=0.5),
    "sd-text2img": dict(num_inference_steps=4, strength=0.5),
    "flux-redux": dict(num_inference_steps=2),
    "ddim": dict(num_inference_steps=4, strength=0.5, eta=1.0),
    "ddpm": dict(num_inference_steps=4, strength=0.5),
}
ADAPTER = {
    "sd-image-variation": "SDImageVariationAdapter", "versatile": "VersatileDiffusionAdapter",
    "unclip-img2img": "StableUnCLIPImg2ImgAdapter", "kandinsky22": "Kandinsky22Adapter",
    "sd-img2img": "Img2ImgAdapter", "sd-text2img": "Img2ImgAdapter", "flux-redux": "FluxReduxAdapter",
    "ddim": "UnconditionalSDEditAdapter", "ddpm": "UnconditionalSDEditAdapter",
}


def load(name, **options):
    path, extra = saved_family(name)
    return hbg.ImageVariation.from_pretrained(path, **extra, **{"size": 32, **FAST[name], **options})


def random_image(seed, size=(32, 32), mode="RGB"):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    # smooth blobs, so that color statistics mean something
    pixels = np.asarray(Image.fromarray(pixels).resize((4, 4)).resize(size, Image.BICUBIC))
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture(scope="module")
def mixed_ds():
    """RGB, grayscale and RGBA images of different sizes, with labels and an extra column."""
    images = [random_image(0), random_image(1, (24, 40), "L"), random_image(2, (40, 32), "RGBA")]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"]), "note": Value("string")})
    return Dataset.from_dict({"image": images, "label": [0, 1, 2], "note": ["x", "y", "z"]}, features=features)


def as_array(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_loads_offline_and_varies_a_dataset(name, mixed_ds):
    variation = load(name, num_variations=2)
    assert type(variation.adapter).__name__ == ADAPTER[name]
    out = mixed_ds.map(variation, batched=True, batch_size=2, with_indices=True)

    assert len(out) == 2 * len(mixed_ds)
    assert out.column_names == ["image", "label", "note", "source_index", "variation_index"]
    assert out.features["label"] == mixed_ds.features["label"]
    assert out["source_index"] == [0, 0, 1, 1, 2, 2]
    assert out["variation_index"] == [0, 1, 0, 1, 0, 1]
    assert out["label"] == [0, 0, 1, 1, 2, 2] and out["note"] == ["x", "x", "y", "y", "z", "z"]
    for row in out:
        source = mixed_ds[row["source_index"]]["image"]
        assert row["image"].mode == "RGB" and row["image"].size == source.size
    # two variations of a row differ from each other and from the source
    first, second = as_array(out[0]["image"]), as_array(out[1]["image"])
    assert np.abs(first - second).mean() > 1
    assert np.abs(first - as_array(mixed_ds[0]["image"])).mean() > 1


@pytest.mark.parametrize("name", list(FAMILIES))
def test_built_and_reloaded_pipelines_have_the_same_fingerprint(name):
    pipeline, prior = FAMILIES[name]()
    built = hbg.ImageVariation(pipeline, prior=prior, size=32, **FAST[name])
    assert built.fingerprint == load(name).fingerprint


def test_from_pretrained_recognises_ddpm_ddim_and_text2img_folders():
    for name in ("ddim", "ddpm"):
        path, _ = saved_family(name)
        assert json.loads((path / "model_index.json").read_text())["_class_name"] == f"{name.upper()}Pipeline"
        variation = load(name)
        assert type(variation.adapter.pipeline).__name__ == f"{name.upper()}Pipeline"
    assert load("ddim").adapter.uses_eta and not load("ddpm").adapter.uses_eta
    # a text-to-image Stable Diffusion folder runs as img2img (SDEdit)
    assert json.loads((saved_family("sd-text2img")[0] / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionPipeline"
    assert type(load("sd-text2img").adapter.pipeline).__name__ == "StableDiffusionImg2ImgPipeline"


def test_same_variations_whatever_batch_size_or_order():
    for name in ("ddim", "sd-image-variation"):
        variation = load(name, num_variations=2)
        images = [random_image(i) for i in range(3)]
        together = variation.generate(images, [10, 11, 12])
        one_by_one = [variation.generate([images[i]], [10 + i]) for i in (2, 1, 0)][::-1]  # reversed order
        one_by_one = [image for pair in one_by_one for image in pair]
        for a, b in zip(together, one_by_one):
            # batched float kernels may round one 8-bit level differently, never more
            assert np.abs(as_array(a) - as_array(b)).max() <= 1
        again = variation.generate(images, [10, 11, 12])
        assert all(np.array_equal(as_array(a), as_array(b)) for a, b in zip(together, again))
        other_seed = load(name, num_variations=2, seed=7).generate(images, [10, 11, 12])
        assert np.abs(as_array(together[0]) - as_array(other_seed[0])).mean() > 1
        other_row = variation.generate(images[:1], [99])
        assert np.abs(as_array(together[0]) - as_array(other_row[0])).mean() > 1


def test_variation_seed_is_a_stable_mix():
    seeds = {variation_seed(42, row, v) for row in range(50) for v in range(4)}
    assert len(seeds) == 200
    assert variation_seed(42, 3, 1) == variation_seed(42, 3, 1) != variation_seed(43, 3, 1)
    assert variation_seed(0, 0, 0) == 393751907897447445  # pinned: results must not change


def test_unconditional_sdedit_strength_and_stochastic_denoising():
    source = [random_image(5)]
    weak = load("ddim", strength=0.1, num_inference_steps=20, color_transfer=False).generate(source, [0])[0]
    strong = load("ddim", strength=1.0, num_inference_steps=4, color_transfer=False).generate(source, [0])[0]
    base = as_array(source[0])
    assert np.abs(as_array(weak) - base).mean() < np.abs(as_array(strong) - base).mean()
    deterministic = load("ddim", eta=0.0, color_transfer=False).generate(source, [0])[0]
    stochastic = load("ddim", eta=1.0, color_transfer=False).generate(source, [0])[0]
    assert np.abs(as_array(deterministic) - as_array(stochastic)).mean() > 0.5


def test_lab_conversion_matches_reference_values():
    lab = rgb_to_lab(np.array([[255, 255, 255], [255, 0, 0], [0, 0, 0], [0, 255, 0]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0], [100, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.02)
    np.testing.assert_allclose(lab[2], [0, 0, 0], atol=0.01)
    np.testing.assert_allclose(lab[3], [87.73, -86.18, 83.18], atol=0.02)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    back = np.round(lab_to_rgb(rgb_to_lab(pixels)) * 255)
    assert np.abs(back - pixels).max() <= 1


def test_color_transfer_moves_lab_statistics_to_the_source():
    source = np.asarray(random_image(1))
    target = (np.asarray(random_image(2)) * 0.5 + 60).astype(np.uint8)
    moved = transfer_color(source, target)
    s, m, t = (rgb_to_lab(x).reshape(-1, 3) for x in (source, moved, target))
    assert np.abs(m.mean(0) - s.mean(0)).max() < 1.5 < np.abs(t.mean(0) - s.mean(0)).max()
    assert np.abs(m.std(0) - s.std(0)).max() < 1.5
    flat = np.full((8, 8, 3), 128, np.uint8)
    assert transfer_color(flat, flat).std() == 0  # a flat image stays flat (no division by zero)


def test_color_transfer_option_in_the_pipeline():
    source = [random_image(3)]
    on = load("sd-image-variation").generate(source, [0])[0]
    off = load("sd-image-variation", color_transfer=False).generate(source, [0])[0]
    reference = rgb_to_lab(np.asarray(source[0])).reshape(-1, 3).mean(0)
    gap = lambda image: np.abs(rgb_to_lab(np.asarray(image)).reshape(-1, 3).mean(0) - reference).sum()  # noqa: E731
    assert gap(on) < 2 and gap(off) > gap(on)


def test_keep_source_and_sizes(mixed_ds):
    variation = load("ddim", keep_source=True, resize_to_source=False, size=16)
    out = mixed_ds.map(variation, batched=True, batch_size=3, with_indices=True,
                       features=variation.output_features(mixed_ds.features))
    assert out.column_names == ["image", "label", "note", "source_image", "source_index", "variation_index"]
    assert all(image.size == (16, 16) for image in out["image"])
    for row, original in zip(out, mixed_ds):
        assert np.array_equal(np.asarray(row["source_image"]), np.asarray(original["image"]))
    named = mixed_ds.map(load("ddim", keep_source="original"), batched=True, with_indices=True)
    assert "original" in named.column_names and "source_image" not in named.column_names
    assert "source_image" not in mixed_ds.map(load("ddim"), batched=True, with_indices=True).column_names


def test_text2img_pipeline_runs_as_img2img_without_touching_dtypes():
    pipe, _ = FAMILIES["sd-text2img"]()
    pipe.unet.to(torch.bfloat16)  # mixed on purpose: from_pipe would cast it back to float32
    variation = hbg.ImageVariation(pipe, size=32, num_inference_steps=4, strength=0.5)
    assert type(variation.adapter.pipeline).__name__ == "StableDiffusionImg2ImgPipeline"
    assert variation.adapter.pipeline.unet is pipe.unet
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    assert not variation.adapter.pipeline.config.requires_safety_checker


def test_kandinsky_plain_prior_pipeline_is_accepted(tmp_path):
    from diffusers import KandinskyV22PriorPipeline

    decoder, emb2emb = FAMILIES["kandinsky22"]()
    plain = KandinskyV22PriorPipeline(**emb2emb.components)
    plain.save_pretrained(tmp_path / "prior")
    in_memory = hbg.ImageVariation(decoder, prior=plain, size=32, **FAST["kandinsky22"])
    assert type(in_memory.adapter.prior).__name__ == "KandinskyV22PriorEmb2EmbPipeline"
    reloaded = hbg.ImageVariation.from_pretrained(saved_family("kandinsky22")[0], prior=tmp_path / "prior", size=32,
                                                  **FAST["kandinsky22"])
    image = [random_image(0)]
    assert np.array_equal(as_array(in_memory.generate(image, [0])[0]), as_array(reloaded.generate(image, [0])[0]))


def test_scheduler_choice_replaces_the_scheduler():
    variation = load("sd-image-variation", scheduler="DDIMScheduler")
    assert type(variation.adapter.pipeline.scheduler).__name__ == "DDIMScheduler"
    assert variation.fingerprint != load("sd-image-variation").fingerprint
    assert len(variation.generate([random_image(0)], [0])) == 1
    unconditional = load("ddpm", scheduler="DDIMScheduler", eta=1.0)
    assert type(unconditional.adapter.scheduler).__name__ == "DDIMScheduler"


def test_datasets_fingerprint_is_fast_stable_and_follows_settings(mixed_ds):
    a, b = load("sd-image-variation"), load("sd-image-variation")
    assert Hasher.hash(a) == Hasher.hash(b)
    assert Hasher.hash(a) != Hasher.hash(load("sd-image-variation", seed=1))
    assert Hasher.hash(a) != Hasher.hash(load("sd-image-variation", dtype=torch.bfloat16))
    first = mixed_ds.map(a, batched=True, with_indices=True)
    assert first._fingerprint == mixed_ds.map(b, batched=True, with_indices=True)._fingerprint


def test_pickles_cleanly_for_num_proc():
    import pickle

    variation = load("ddim")
    source = [random_image(4)]
    clone = pickle.loads(pickle.dumps(variation))
    assert clone.fingerprint == variation.fingerprint
    assert np.array_equal(as_array(clone.generate(source, [3])[0]), as_array(variation.generate(source, [3])[0]))


def test_bad_options_raise_before_generation(tmp_path, mixed_ds, monkeypatch):
    with pytest.raises(ValueError, match="Unsupported pipeline class Linear"):
        hbg.ImageVariation(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no model_index.json"):
        hbg.ImageVariation.from_pretrained(tmp_path)
    foreign = tmp_path / "foreign"
    shutil.copytree(saved_family("ddim")[0], foreign)
    (foreign / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    with pytest.raises(ValueError, match="Unsupported pipeline class DiTPipeline"):
        hbg.ImageVariation.from_pretrained(foreign)
    with pytest.raises(ValueError, match="Could not fetch model_index.json of 'nobody/no-such-model'"):
        hbg.ImageVariation.from_pretrained("nobody/no-such-model")  # offline in tests
    with pytest.raises(ValueError, match="prior stage: pass the KandinskyV22Pipeline"):
        hbg.ImageVariation(FAMILIES["kandinsky22"]()[1])
    with pytest.raises(ValueError, match="multiple of 8"):
        load("sd-image-variation", size=30)
    with pytest.raises(ValueError, match="multiple of 8"):
        load("flux-redux", size=(32, 36))
    with pytest.raises(ValueError, match="num_variations"):
        load("ddim", num_variations=0)
    loads = []
    monkeypatch.setattr(Adapter, "load", classmethod(lambda cls, *args, **kwargs: loads.append(args)))
    for bad in (dict(num_variations=0), dict(strength=2.0), dict(num_inference_steps=0), dict(seed="1"),
                dict(eta=float("nan")), dict(guidance_scale=float("inf")), dict(speed="warp"),
                dict(device="cuda:99"), dict(channels_last="yes"), dict(pipeline_kwargs=[1])):
        with pytest.raises(ValueError, match=next(iter(bad))):  # checked before any weight is read
            hbg.ImageVariation.from_pretrained(saved_family("ddim")[0], **bad)
    with pytest.raises(ValueError, match="takes no prior"):
        hbg.ImageVariation.from_pretrained(saved_family("ddim")[0], prior=saved_family("kandinsky22")[1]["prior"])
    with pytest.raises(ValueError, match="prior .* is a DDIMPipeline; KandinskyV22Pipeline needs one of"):
        hbg.ImageVariation.from_pretrained(saved_family("kandinsky22")[0], prior=saved_family("ddim")[0])
    assert loads == []
    monkeypatch.undo()
    for strength in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"strength must lie in \(0, 1\]"):
            load("sd-img2img", strength=strength)
    with pytest.raises(ValueError, match="strength is not used"):
        load("sd-image-variation", strength=0.5)
    with pytest.raises(ValueError, match="0 denoising steps"):
        load("sd-img2img", num_inference_steps=2, strength=0.3)
    with pytest.raises(ValueError, match=r"prior_kwargs\['num_inference_steps'\]=2 with strength=0.4 runs"):
        load("kandinsky22", strength=0.4)
    with pytest.raises(ValueError, match="guidance_scale is not used"):
        load("ddim", guidance_scale=3.0)
    with pytest.raises(ValueError, match="eta is not used"):
        load("ddpm", eta=1.0)
    with pytest.raises(ValueError, match="no text prompt"):
        load("sd-image-variation", prompt="a cat")
    with pytest.raises(ValueError, match="keep_source"):
        load("ddim", keep_source="image")
    path, extra = saved_family("kandinsky22")
    with pytest.raises(ValueError, match="needs its prior"):
        hbg.ImageVariation.from_pretrained(path, size=32)
    with pytest.raises(ValueError, match="prior stage"):
        hbg.ImageVariation.from_pretrained(extra["prior"], size=32)

    variation = load("ddim")
    calls = []
    variation.adapter.generate = lambda *args: calls.append(args)
    with pytest.raises(ValueError, match="Image column 'image' not found"):
        mixed_ds.rename_column("image", "picture").map(variation, batched=True, with_indices=True)
    with pytest.raises(ValueError, match="with_indices=True"):
        mixed_ds.map(variation, batched=True)
    with pytest.raises(ValueError, match="batched=True"):
        mixed_ds.map(variation, with_indices=True)
    with pytest.raises(ValueError, match="already has column"):
        mixed_ds.add_column("source_index", [0, 1, 2]).map(variation, batched=True, with_indices=True)
    assert calls == []


def test_embedded_default_runs():
    from hf_backdoor_guard import embedded

    variation = hbg.ImageVariation.embedded(num_variations=2)
    for key, value in embedded.EMBEDDED_VARIATION_DEFAULTS.items():
        if key in ("num_inference_steps", "strength", "color_transfer"):
            assert getattr(variation, key) == value
    if "stochastic" in embedded.EMBEDDED_VARIATION_DEFAULTS:  # mapped onto DDIM's eta
        assert variation.eta == (1.0 if embedded.EMBEDDED_VARIATION_DEFAULTS["stochastic"] else 0.0)
    assert hbg.ImageVariation.embedded(eta=0.5).eta == 0.5
    assert variation.adapter.pipeline.unet.dtype == torch.float32
    ds = Dataset.from_dict({"image": [random_image(0, (8, 8), "L")], "label": [1]})
    out = ds.map(variation, batched=True, with_indices=True)
    assert len(out) == 2 and out[0]["image"].size == (8, 8)
    assert hbg.ImageVariation.embedded(num_variations=3).num_variations == 3  # options override defaults


# --- the pipeline-family registry ------------------------------------------------------------
class ToyPixelPipeline:
    """Stands for a third-party pipeline class: not a diffusers class, so no built-in family knows it."""

    def __init__(self, unet, scheduler):
        self.unet, self.scheduler = unet, scheduler
        self.components = {"unet": unet, "scheduler": scheduler}

    def set_progress_bar_config(self, **kwargs):
        pass

    def to(self, device=None, dtype=None):
        self.unet.to(device=device, dtype=dtype)
        return self


class ToyPixelAdapter(UnconditionalSDEditAdapter):
    name = "toy-pixel"
    pipeline_classes = ("ToyPixelPipeline",)


def test_a_new_family_is_one_adapter_and_one_registration():
    from diffusers import DDIMScheduler

    toy = ToyPixelPipeline(tiny_unet2d(), DDIMScheduler(num_train_timesteps=1000))
    with pytest.raises(ValueError, match="Unsupported pipeline class ToyPixelPipeline; supported families: "
                                         "sd-image-variation .*unconditional-sdedit"):
        hbg.ImageVariation(toy)
    REGISTERED_FAMILIES.register(ToyPixelAdapter)
    try:
        assert SUPPORTED_CLASSES["ToyPixelPipeline"] is ToyPixelAdapter  # the exported view reads the registry
        variation = hbg.ImageVariation(toy, num_inference_steps=4, strength=0.5, size=32)
        assert type(variation.adapter) is ToyPixelAdapter and variation.settings()["family"] == "toy-pixel"
        (image,) = variation.generate([random_image(0)], [0])
        assert image.size == (32, 32)
        with pytest.raises(ValueError, match=r"Unsupported pipeline class Linear; .*toy-pixel \(ToyPixelPipeline\)"):
            hbg.ImageVariation(torch.nn.Linear(2, 2))
    finally:
        REGISTERED_FAMILIES.unregister("toy-pixel")
    assert "ToyPixelPipeline" not in SUPPORTED_CLASSES
    with pytest.raises(ValueError, match="Unsupported pipeline class ToyPixelPipeline"):
        hbg.ImageVariation(toy)


def test_registry_lists_every_built_in_family_and_refuses_a_double_claim():
    assert REGISTERED_FAMILIES.names() == ["sd-image-variation", "versatile-diffusion", "stable-unclip-img2img",
                                           "sd-img2img", "kandinsky-2.2", "flux-redux", "unconditional-sdedit"]
    assert {ADAPTER[name] for name in FAMILIES} == {adapter.__name__ for _, adapter in REGISTERED_FAMILIES.items()}
    assert SUPPORTED_CLASSES["StableDiffusionPipeline"].name == "sd-img2img"

    class Clash(UnconditionalSDEditAdapter):
        name = "clash"
        pipeline_classes = ("DDIMPipeline",)

    REGISTERED_FAMILIES.register(Clash)
    try:
        with pytest.raises(ValueError, match="DDIMPipeline is claimed by two families, unconditional-sdedit and clash"):
            load("ddim")
    finally:
        REGISTERED_FAMILIES.unregister("clash")


def test_prior_rule_on_pipeline_objects():
    decoder, prior = FAMILIES["kandinsky22"]()
    with pytest.raises(ValueError, match="KandinskyV22Pipeline needs its prior stage"):
        hbg.ImageVariation(decoder, size=32)
    ddim, _ = FAMILIES["ddim"]()
    with pytest.raises(ValueError, match="DDIMPipeline takes no prior, got prior=KandinskyV22PriorEmb2EmbPipeline"):
        hbg.ImageVariation(ddim, prior=prior)
    with pytest.raises(ValueError, match="prior DDIMPipeline is a DDIMPipeline; KandinskyV22Pipeline needs one of"):
        hbg.ImageVariation(decoder, prior=ddim, size=32)


# --- the one private library call, guarded --------------------------------------------------
def test_private_datasets_hook_of_register_for_hashing_still_exists():
    """variations.fingerprint._register_for_hashing uses datasets.utils._dill.pklregister (no public hook exists)."""
    try:
        from datasets.utils._dill import Pickler, pklregister  # noqa: F401
    except ImportError as error:
        pytest.fail(f"datasets removed utils._dill.pklregister, which hf_backdoor_guard.variations.core."
                    f"_register_for_hashing needs to hash an ImageVariation by its fingerprint: {error}")
    assert hbg.ImageVariation in Pickler.dispatch, "_register_for_hashing did not register ImageVariation"
    one, other = load("ddim"), load("ddim", seed=3)
    one._fingerprint = other._fingerprint = "same-token"  # different settings, same fingerprint string
    assert Hasher.hash(one) == Hasher.hash(other), "datasets no longer hashes through _register_for_hashing's hook"


# --- faults: non-finite numbers, unavailable devices (issue 16, defects 4 and 10) -------------
def test_non_finite_floats_are_refused_naming_the_option():
    nan, inf = float("nan"), float("inf")
    for name, family, options in [
        ("guidance_scale", "sd-image-variation", dict(guidance_scale=nan)),
        ("guidance_scale", "sd-image-variation", dict(guidance_scale=inf)),
        ("eta", "ddim", dict(eta=nan)),
        ("eta", "ddim", dict(eta=inf)),
        ("strength", "ddim", dict(strength=nan)),
        (r"pipeline_kwargs\['noise_level'\]", "unclip-img2img", dict(pipeline_kwargs={"noise_level": nan})),
        (r"prior_kwargs\['guidance_scale'\]", "kandinsky22",
         dict(prior_kwargs={"num_inference_steps": 2, "guidance_scale": inf})),
        (r"prior_kwargs\['strength'\]", "kandinsky22", dict(prior_kwargs={"num_inference_steps": 2, "strength": nan})),
    ]:
        with pytest.raises(ValueError, match=f"{name} must .*finite number"):
            load(family, **options)
        pipeline, prior = FAMILIES[family]()
        with pytest.raises(ValueError, match=f"{name} must .*finite number"):
            hbg.ImageVariation(pipeline, prior=prior, size=32, **{**FAST[family], **options})
    with pytest.raises(ValueError, match="guidance_scale must lie in"):
        load("sd-image-variation", guidance_scale=-1.0)


def test_an_unavailable_device_fails_before_the_weights_load(monkeypatch):
    missing = f"cuda:{torch.cuda.device_count() + 7}"
    unavailable = [missing] + ([] if torch.cuda.is_available() else ["cuda"])
    loads = []
    monkeypatch.setattr(Adapter, "load", classmethod(lambda cls, *args, **kwargs: loads.append(args)))
    for device in unavailable:
        with pytest.raises(ValueError, match=rf"device='{device}' is not available on this machine; "
                                             r"available: \['cpu'"):
            hbg.ImageVariation.from_pretrained(saved_family("ddim")[0], device=device)
        with pytest.raises(ValueError, match=f"device='{device}' is not available"):
            hbg.ImageVariation.embedded(device=device)
    with pytest.raises(ValueError, match="device='gpu please' is not a torch device"):
        hbg.ImageVariation.from_pretrained(saved_family("ddim")[0], device="gpu please")
    assert loads == []
    monkeypatch.undo()
    pipeline, _ = FAMILIES["ddim"]()
    with pytest.raises(ValueError, match=f"device='{missing}' is not available"):
        hbg.ImageVariation(pipeline, device=missing)
    variation = load("ddim", device="cpu")
    with pytest.raises(ValueError, match=f"device='{missing}' is not available"):
        variation.to(missing)
    assert variation.adapter.device().type == "cpu"


def test_from_pretrained_runs_no_code_from_the_folder(tmp_path):
    """A folder that names a custom component class is refused; its module is never imported."""
    folder = tmp_path / "custom"
    shutil.copytree(saved_family("ddim")[0], folder)
    marker = tmp_path / "code-ran"
    (folder / "unet" / "evil_unet.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from diffusers import UNet2DModel\nclass EvilUNet(UNet2DModel):\n    pass\n")
    index = json.loads((folder / "model_index.json").read_text())
    index["unet"] = ["evil_unet", "EvilUNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="trust_remote_code"):
        hbg.ImageVariation.from_pretrained(folder, num_inference_steps=4, strength=0.5)
    assert not marker.exists()
    # an explicit opt-in runs it
    variation = hbg.ImageVariation.from_pretrained(folder, trust_remote_code=True, num_inference_steps=4, strength=0.5)
    assert marker.exists() and type(variation.adapter.pipeline.unet).__name__ == "EvilUNet"


# --- the fast path ---------------------------------------------------------------------------
def channels_last(model):
    weights = [p for p in model.parameters() if p.dim() == 4]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)


def test_fast_preset_fills_the_unset_options():
    pipe, _ = build_sd_image_variation()
    variation = hbg.ImageVariation(pipe, speed="fast")
    assert type(variation.adapter.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert variation.num_inference_steps == 15 and variation.size == (32, 32)  # native size
    assert channels_last(pipe.unet) and channels_last(pipe.vae)
    assert variation.torch_compile and not variation._compiled  # on CPU nothing is compiled
    # attention already runs through torch's scaled_dot_product_attention (diffusers' default on torch 2)
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}
    settings = variation.settings()
    assert (settings["speed"], settings["channels_last"], settings["torch_compile"]) == ("fast", True, True)
    assert variation.fingerprint != hbg.ImageVariation(build_sd_image_variation()[0], num_inference_steps=15,
                                                       scheduler="DPMSolverMultistepScheduler").fingerprint
    # the preset's scheduler swap leaves the caller's pipeline its own scheduler
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    small = hbg.ImageVariation(build_sd_image_variation()[0], speed="fast-small")
    assert small.size == (16, 16) and small.num_inference_steps == 15
    assert len(small.generate([random_image(0)], [0])) == 1


def test_explicit_options_win_over_the_preset():
    pipe, _ = build_sd_image_variation()
    variation = hbg.ImageVariation(pipe, speed="fast-small", num_inference_steps=3, scheduler="DDIMScheduler",
                                   size=24, channels_last=False, torch_compile=False)
    assert type(variation.adapter.pipeline.scheduler).__name__ == "DDIMScheduler"
    assert (variation.num_inference_steps, variation.size) == (3, (24, 24))
    assert not channels_last(pipe.unet) and not variation.torch_compile
    reloaded = load("sd-image-variation", speed="fast", num_inference_steps=2)
    assert reloaded.num_inference_steps == 2 and reloaded.settings()["speed"] == "fast"
    with pytest.raises(ValueError, match=r"speed='fast-small' is not a preset of the unconditional-sdedit family; "
                                         r"choose one of \['fast'\]"):
        load("ddim", speed="fast-small")
    pipeline, prior = FAMILIES["flux-redux"]()
    flux = hbg.ImageVariation(pipeline, prior=prior, speed="fast")
    assert type(flux.adapter.pipeline.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"  # not DPM
    assert flux.num_inference_steps == 20


def test_fast_path_output_matches_the_same_options_set_by_hand():
    """channels_last changes how weights are stored, not what is computed (up to float rounding)."""
    image = [random_image(1)]
    fast = load("ddim", speed="fast", num_inference_steps=4, color_transfer=False).generate(image, [0])[0]
    plain = load("ddim", num_inference_steps=4, color_transfer=False).generate(image, [0])[0]
    assert np.abs(as_array(fast) - as_array(plain)).max() <= 1


def test_embedded_fast_preset():
    from hf_backdoor_guard.embedded import EMBEDDED_SPEED_PRESETS, EMBEDDED_VARIATION_DEFAULTS

    fast = hbg.ImageVariation.embedded(speed="fast")
    assert fast.num_inference_steps == EMBEDDED_SPEED_PRESETS["fast"]["num_inference_steps"] < \
        EMBEDDED_VARIATION_DEFAULTS["num_inference_steps"]
    assert fast.strength == EMBEDDED_VARIATION_DEFAULTS["strength"] and fast.eta == 1.0
    assert int(fast.num_inference_steps * fast.strength) >= 4  # still a real denoising run
    assert fast.settings()["speed"] == "fast" and fast.fingerprint != hbg.ImageVariation.embedded().fingerprint
    assert hbg.ImageVariation.embedded(speed="fast", num_inference_steps=14).num_inference_steps == 14
    with pytest.raises(ValueError, match=r"not a preset of the embedded model; choose one of \['fast'\]"):
        hbg.ImageVariation.embedded(speed="fast-small")


# --- scheduler swap (regression: DiffusionPipeline.from_pipe cast shared models to float32 in place,
# which silently made bf16 generation 4x slower per step on an H100) -------------------------------
def test_scheduler_swap_keeps_dtypes_and_leaves_the_callers_pipeline_alone():
    pipe, _ = build_sd_image_variation()
    pipe.unet.to(torch.bfloat16)  # mixed dtypes on purpose: UNet bf16, VAE and encoder float32
    variation = hbg.ImageVariation(pipe, num_inference_steps=2, scheduler="DPMSolverMultistepScheduler", size=32)
    assert type(pipe.scheduler).__name__ != "DPMSolverMultistepScheduler"
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32
    assert variation.adapter.pipeline.unet is pipe.unet
    assert type(variation.adapter.pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"


def test_generation_with_a_swapped_scheduler_stays_in_bf16():
    pipe, _ = build_sd_image_variation()
    pipe.to(dtype=torch.bfloat16)
    variation = hbg.ImageVariation(pipe, num_inference_steps=2, scheduler="DPMSolverMultistepScheduler", size=32)
    ds = Dataset.from_dict({"image": [Image.new("RGB", (32, 32), (90, 30, 10))] * 2},
                           features=Features({"image": ImageFeature()}))
    out = ds.map(variation, batched=True, with_indices=True)
    assert len(out) == 2 and out[0]["image"].size == (32, 32)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
