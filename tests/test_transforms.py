"""ImageClassificationTransform / ImageClassificationCollator: exact pixels, augmentation, errors."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_classifiers import random_image_dataset, tiny_convnext, tiny_resnet, tiny_vit

from hf_backdoor_guard import ImageClassificationCollator, ImageClassificationTransform
from hf_backdoor_guard.images import to_rgb
from hf_backdoor_guard.training.transforms import prepare_image_dataset, processors_match


def _batch(ds):
    return ds[:]


@pytest.mark.parametrize("builder", [tiny_vit, tiny_resnet, tiny_convnext])
def test_without_augmentation_equals_the_processor(builder):
    _, processor = builder()
    ds = random_image_dataset(6, modes=("RGB", "L", "RGBA", "P", "CMYK", "LA"))
    out = ImageClassificationTransform(processor, augment=False)(_batch(ds))
    expected = processor(images=[to_rgb(image) for image in ds["image"]], return_tensors="pt")["pixel_values"]
    assert torch.equal(out["pixel_values"], expected)
    assert out["labels"] == list(ds["label"])
    assert "teacher_pixel_values" not in out


def test_augment_image_is_a_flip_and_a_shift_with_black_border():
    rng = np.random.default_rng(0)
    array = rng.integers(1, 256, size=(16, 16, 3), dtype=np.uint8)  # no black pixel inside
    image = Image.fromarray(array)
    transform = ImageClassificationTransform(tiny_vit()[1], flip_probability=0.0, crop_padding=0.125, seed=3)
    seen_shifts = set()
    for _ in range(30):
        out = np.asarray(transform.augment_image(image))
        assert out.shape == array.shape
        padded = np.pad(array, ((2, 2), (2, 2), (0, 0)))
        matches = [(top, left) for top in range(5) for left in range(5)
                   if np.array_equal(padded[top:top + 16, left:left + 16], out)]
        assert len(matches) == 1
        seen_shifts.add(matches[0])
    assert len(seen_shifts) > 5  # the crop really moves

    flipper = ImageClassificationTransform(tiny_vit()[1], flip_probability=1.0, crop_padding=0.0)
    assert np.array_equal(np.asarray(flipper.augment_image(image)), array[:, ::-1])


def test_seeded_transform_is_reproducible_and_global_rng_follows_torch_seed():
    _, processor = tiny_vit()
    batch = _batch(random_image_dataset(8))
    first = ImageClassificationTransform(processor, seed=7)(batch)["pixel_values"]
    again = ImageClassificationTransform(processor, seed=7)(batch)["pixel_values"]
    other = ImageClassificationTransform(processor, seed=8)(batch)["pixel_values"]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)

    unseeded = ImageClassificationTransform(processor)  # draws from torch's generator, as under Trainer
    torch.manual_seed(11)
    a = unseeded(batch)["pixel_values"]
    torch.manual_seed(11)
    b = unseeded(batch)["pixel_values"]
    assert torch.equal(a, b)


def test_teacher_pixels_come_from_the_same_augmented_image():
    _, student_processor = tiny_resnet(image_size=32)
    _, teacher_processor = tiny_vit(image_size=48)
    ds = random_image_dataset(4)
    transform = ImageClassificationTransform(
        student_processor, teacher_image_processor=teacher_processor, flip_probability=1.0, crop_padding=0.0
    )
    out = transform(_batch(ds))
    flipped = [to_rgb(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT) for image in ds["image"]]
    assert out["pixel_values"].shape == (4, 3, 32, 32)
    assert out["teacher_pixel_values"].shape == (4, 3, 48, 48)
    assert torch.equal(out["pixel_values"], student_processor(images=flipped, return_tensors="pt")["pixel_values"])
    assert torch.equal(
        out["teacher_pixel_values"], teacher_processor(images=flipped, return_tensors="pt")["pixel_values"]
    )


def test_matching_processors_give_no_teacher_pixels():
    _, first = tiny_vit()
    _, second = tiny_vit(seed=5)  # same settings, separate object
    assert processors_match(first, second)
    assert not processors_match(first, tiny_vit(image_size=40)[1])
    out = ImageClassificationTransform(first, teacher_image_processor=second, augment=False)(
        _batch(random_image_dataset(2))
    )
    assert "teacher_pixel_values" not in out


def test_collator_stacks_rows_and_passes_the_logit_cache():
    _, processor = tiny_vit()
    ds = random_image_dataset(5)
    ds = ds.add_column("teacher_logits", [[float(i)] * 4 for i in range(5)])
    view = ds.with_transform(ImageClassificationTransform(processor, augment=False))
    batch = ImageClassificationCollator()([view[i] for i in range(5)])
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == list(ds["label"])
    assert batch["teacher_logits"].dtype == torch.float32
    assert batch["teacher_logits"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert set(batch) == {"pixel_values", "labels", "teacher_logits"}
    with_teacher = ds.with_transform(ImageClassificationTransform(
        processor, augment=False, teacher_image_processor=tiny_vit(image_size=48)[1]))
    assert set(with_teacher[0]) == {"pixel_values", "labels", "teacher_logits"}  # cached: no teacher pixels


def test_collator_rejects_raw_rows():
    with pytest.raises(ValueError, match="pixel_values"):
        ImageClassificationCollator()([{"image": None, "label": 0}])
    with pytest.raises(ValueError, match="empty"):
        ImageClassificationCollator()([])


@pytest.mark.parametrize(
    "kwargs, name",
    [({"flip_probability": 1.5}, "flip_probability"), ({"crop_padding": -0.1}, "crop_padding"),
     ({"crop_padding": 1.0}, "crop_padding"), ({"padding_mode": "wrap"}, "padding_mode"),
     ({"flip_probability": math.nan}, "flip_probability"), ({"flip_probability": True}, "flip_probability"),
     ({"flip_probability": "0.5"}, "flip_probability"), ({"crop_padding": math.inf}, "crop_padding"),
     ({"crop_padding": math.nan}, "crop_padding"), ({"crop_padding": "0.1"}, "crop_padding"),
     ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"image_column": ""}, "image_column"),
     ({"label_column": None}, "label_column")],
)
def test_bad_options_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ImageClassificationTransform(tiny_vit()[1], **kwargs)


def test_bad_processor_and_missing_column():
    with pytest.raises(ValueError, match="image_processor"):
        ImageClassificationTransform(None)
    transform = ImageClassificationTransform(tiny_vit()[1], image_column="img")
    with pytest.raises(ValueError, match="'img'"):
        transform(_batch(random_image_dataset(2)))


def test_prepare_leaves_the_user_dataset_alone():
    _, processor = tiny_vit()
    ds = random_image_dataset(4)
    view = prepare_image_dataset(ds, processor, augment=True)
    assert ds.format["type"] is None and view.format["type"] == "custom"
    assert set(view[0]) == {"pixel_values", "labels"}
    assert prepare_image_dataset(view, processor, augment=False) is view  # already prepared
    with pytest.raises(ValueError, match="image processor"):
        prepare_image_dataset(ds, None, augment=False)
    teacher_processor = tiny_vit(image_size=48)[1]
    assert "teacher_pixel_values" in prepare_image_dataset(
        ds, processor, augment=False, teacher_image_processor=teacher_processor)[0]
    cached = ds.add_column("teacher_logits", [[0.0] * 4] * 4)  # the teacher will not run: no teacher pixels
    assert set(prepare_image_dataset(cached, processor, augment=False,
                                     teacher_image_processor=teacher_processor)[0]) == {
        "pixel_values", "labels", "teacher_logits"}
    with pytest.raises(ValueError, match="'picture'"):
        prepare_image_dataset(ds, processor, augment=False, image_column="picture")
