"""Tiny randomly initialised diffusers pipelines of every image-variation family, built in code.

Nothing is downloaded: every model is a few-layer, 32-channel version of the real
architecture, seeded so that two builds give the same weights. Other test modules may
import these builders. Each family builds in well under a second on one CPU thread and
generates 32x32 images.

``FAMILIES`` maps a short family name to a builder returning ``(pipeline, prior)``
(``prior`` is ``None`` except for the two-stage Kandinsky 2.2 and Flux Redux families);
``save_family(name, root)`` writes it with ``save_pretrained`` and returns the
arguments ``ImageVariation.from_pretrained`` needs to load it back.
"""

from __future__ import annotations

from pathlib import Path

import torch

D = 32  # hidden size shared by the tiny text/image encoders and the UNets' cross-attention


def _seed(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _image_processor(kind: str = "clip"):
    # The *Pil processors are what transformers falls back to without torchvision;
    # naming them directly avoids a warning per build.
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as Clip
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil as Siglip
    except ImportError:  # other transformers versions
        from transformers import CLIPImageProcessor as Clip
        from transformers import SiglipImageProcessor as Siglip

    if kind == "clip":
        return Clip(crop_size=32, size=32)
    return Siglip(size={"height": 32, "width": 32})


def _byte_level_chars() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tiny_clip_tokenizer():
    """Character-level CLIP tokenizer from an in-memory vocab (no files, no download)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _byte_level_chars():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip_text_encoder(with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=1000, bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=D,
                            projection_dim=D, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            max_position_embeddings=77)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def tiny_clip_image_encoder(patch_size: int = 4):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=D, projection_dim=D, intermediate_size=37,
                                                          num_attention_heads=4, num_hidden_layers=2, image_size=32,
                                                          patch_size=patch_size))


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[32, 64], latent_channels=4, layers_per_block=1,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def tiny_cond_unet(**overrides):
    from diffusers import UNet2DConditionModel

    config = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=D, attention_head_dim=8)
    config.update(overrides)
    return UNet2DConditionModel(**config)


def _ddim(**overrides):
    from diffusers import DDIMScheduler

    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1)
    config.update(overrides)
    return DDIMScheduler(**config)


def build_sd_image_variation():
    from diffusers import PNDMScheduler, StableDiffusionImageVariationPipeline

    _seed()
    pipe = StableDiffusionImageVariationPipeline(
        vae=tiny_vae(), image_encoder=tiny_clip_image_encoder(), unet=tiny_cond_unet(),
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None,
        feature_extractor=_image_processor(), requires_safety_checker=False)
    return pipe, None


def build_versatile():
    from diffusers import VersatileDiffusionImageVariationPipeline

    _seed()
    pipe = VersatileDiffusionImageVariationPipeline(
        image_feature_extractor=_image_processor(), image_encoder=tiny_clip_image_encoder(),
        image_unet=tiny_cond_unet(), vae=tiny_vae(), scheduler=_ddim())
    return pipe, None


def build_unclip_img2img():
    from diffusers import DDPMScheduler, StableUnCLIPImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    _seed()
    unet = tiny_cond_unet(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                          class_embed_type="projection", projection_class_embeddings_input_dim=2 * D,
                          use_linear_projection=True, upcast_attention=True)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=_image_processor(), image_encoder=tiny_clip_image_encoder(),
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=D),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tiny_clip_tokenizer(), text_encoder=tiny_clip_text_encoder(), unet=unet,
        scheduler=_ddim(prediction_type="v_prediction"), vae=tiny_vae())
    return pipe, None


def build_sd_img2img():
    from diffusers import PNDMScheduler, StableDiffusionImg2ImgPipeline

    _seed()
    pipe = StableDiffusionImg2ImgPipeline(
        vae=tiny_vae(), text_encoder=tiny_clip_text_encoder(), tokenizer=tiny_clip_tokenizer(),
        unet=tiny_cond_unet(), scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    return pipe, None


def build_sd_text2img():
    """A text-to-image SD pipeline (what SD 1.5-style repos hold); ImageVariation runs it as img2img."""
    from diffusers import StableDiffusionPipeline

    pipe, _ = build_sd_img2img()
    return StableDiffusionPipeline(**pipe.components, requires_safety_checker=False), None


def build_kandinsky22():
    from diffusers import (KandinskyV22Pipeline, KandinskyV22PriorEmb2EmbPipeline, PriorTransformer,
                           UNet2DConditionModel, UnCLIPScheduler, VQModel)

    _seed()
    prior_model = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=D, num_layers=1)
    # The default clip_std of zero would scale every prior output to zero.
    prior_model.clip_std = torch.nn.Parameter(torch.ones(prior_model.clip_std.shape))
    prior = KandinskyV22PriorEmb2EmbPipeline(
        prior=prior_model, image_encoder=tiny_clip_image_encoder(), text_encoder=tiny_clip_text_encoder(True),
        tokenizer=tiny_clip_tokenizer(),
        scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                  num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0),
        image_processor=_image_processor())
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=D, encoder_hid_dim_type="image_proj", cross_attention_dim=D, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type=None)
    movq = VQModel(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
                   in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
                   num_vq_embeddings=12, out_channels=3,
                   up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], vq_embed_dim=4)
    decoder = KandinskyV22Pipeline(unet=unet, scheduler=_ddim(beta_schedule="linear"), movq=movq)
    return decoder, prior


def build_flux_redux():
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxPriorReduxPipeline
    from diffusers import FluxTransformer2DModel
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipVisionConfig, SiglipVisionModel

    _seed()
    prior = FluxPriorReduxPipeline(
        image_encoder=SiglipVisionModel(SiglipVisionConfig(hidden_size=D, image_size=32, patch_size=8,
                                                           num_hidden_layers=2, num_attention_heads=4,
                                                           intermediate_size=37)),
        feature_extractor=_image_processor("siglip"),
        image_embedder=ReduxImageEncoder(redux_dim=D, txt_in_features=D))
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=D,
                                         pooled_projection_dim=D, axes_dims_rope=[4, 4, 8])
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    # Redux supplies the conditioning, so the base pipeline needs no text encoders (as with FLUX.1-Redux).
    pipe = FluxPipeline(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    return pipe, prior


def tiny_unet2d():
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def build_ddim():
    from diffusers import DDIMPipeline, DDIMScheduler

    _seed()
    return DDIMPipeline(unet=tiny_unet2d(), scheduler=DDIMScheduler(num_train_timesteps=1000)), None


def build_ddpm():
    from diffusers import DDPMPipeline, DDPMScheduler

    _seed()
    return DDPMPipeline(unet=tiny_unet2d(), scheduler=DDPMScheduler(num_train_timesteps=1000)), None


FAMILIES = {
    "sd-image-variation": build_sd_image_variation,
    "versatile": build_versatile,
    "unclip-img2img": build_unclip_img2img,
    "kandinsky22": build_kandinsky22,
    "sd-img2img": build_sd_img2img,
    "sd-text2img": build_sd_text2img,
    "flux-redux": build_flux_redux,
    "ddim": build_ddim,
    "ddpm": build_ddpm,
}


def save_family(name: str, root: str | Path) -> tuple[Path, dict]:
    """Build family ``name``, save it under ``root`` and return ``(path, extra)``.

    ``ImageVariation.from_pretrained(path, **extra)`` loads it back; ``extra`` holds
    ``prior=<folder>`` for the two-stage families.
    """
    import diffusers
    import transformers

    pipe, prior = FAMILIES[name]()
    root = Path(root)
    bars = diffusers.utils.logging.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled()
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    # FluxPipeline warns for each text encoder left out on purpose ("None ... cannot be saved").
    diffusers.utils.logging.set_verbosity_error()
    try:
        pipe.save_pretrained(root / "pipeline", safe_serialization=True)
        extra = {}
        if prior is not None:
            prior.save_pretrained(root / "prior", safe_serialization=True)
            extra["prior"] = root / "prior"
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
        if bars[0]:
            diffusers.utils.logging.enable_progress_bar()
        if bars[1]:
            transformers.utils.logging.enable_progress_bar()
    return root / "pipeline", extra


_SAVED: dict[str, tuple[Path, dict]] = {}


def saved_family(name: str) -> tuple[Path, dict]:
    """``save_family`` into one temporary folder per test session, each family built once."""
    import atexit
    import shutil
    import tempfile

    if name not in _SAVED:
        if not _SAVED:
            root = Path(tempfile.mkdtemp(prefix="hbg-tiny-pipelines-"))
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            _SAVED["__root__"] = (root, {})
        _SAVED[name] = save_family(name, _SAVED["__root__"][0] / name)
    return _SAVED[name]
