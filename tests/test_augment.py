"""Each device op equals torchvision's functional op on the same image with the same parameters."""
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from loaders import augment as A
from loaders.batch import RawBatch


@pytest.fixture
def imgs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 24, 20, generator=g)


def per_sample(fn, x, params):
    return torch.stack([fn(x[i], p) for i, p in enumerate(params)])


@pytest.mark.parametrize("op,tvop,lo,hi", [
    (A.brightness, TF.adjust_brightness, 0.5, 1.6),
    (A.contrast, TF.adjust_contrast, 0.5, 1.6),
    (A.saturation, TF.adjust_saturation, 0.0, 1.6),
    (A.hue, TF.adjust_hue, -0.5, 0.5),
])
def test_color_ops_match_torchvision(imgs, op, tvop, lo, hi):
    f = torch.linspace(lo, hi, imgs.shape[0])
    ours = op(imgs, f)
    ref = per_sample(lambda im, p: tvop(im, float(p)), imgs, f)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_hue_is_not_identity(imgs):
    assert (A.hue(imgs, torch.full((6,), 0.25)) - imgs).abs().mean() > 0.05


def test_grayscale_solarize_flip_match(imgs):
    torch.testing.assert_close(A.grayscale(imgs), TF.rgb_to_grayscale(imgs), atol=1e-6, rtol=0)
    torch.testing.assert_close(A.solarize(imgs, 0.5), TF.solarize(imgs, 0.5))


def test_blur_matches_torchvision_per_sample_sigma(imgs):
    sig = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
    ours = A.blur(imgs, sig, 5)
    ref = per_sample(lambda im, s: TF.gaussian_blur(im, [5, 5], [float(s), float(s)]), imgs, sig)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_jitter_per_sample_order_matches_sequential_torchvision(imgs):
    n = imgs.shape[0]
    factors = torch.stack([torch.linspace(0.6, 1.4, n), torch.linspace(1.3, 0.7, n),
                           torch.linspace(0.5, 1.5, n), torch.linspace(-0.1, 0.1, n)], 1)
    order = torch.stack([torch.randperm(4) for _ in range(n)])
    tv = (lambda im, f: TF.adjust_brightness(im, f), lambda im, f: TF.adjust_contrast(im, f),
          lambda im, f: TF.adjust_saturation(im, f), lambda im, f: TF.adjust_hue(im, f))
    ref = []
    for i in range(n):
        im = imgs[i]
        for o in order[i].tolist():
            im = tv[o](im, float(factors[i, o]))
        ref.append(im)
    torch.testing.assert_close(A.color_jitter(imgs, factors, order), torch.stack(ref), atol=5e-5, rtol=0)


def test_parameters_are_drawn_per_sample():
    """One image repeated 256 times: grayscale (p=0.2) and flip (p=0.5) hit a fraction of the copies."""
    x = (torch.rand(1, 3, 16, 16) * 255).to(torch.uint8).expand(256, -1, -1, -1).contiguous()
    out = A.augment_view(x, A.ViewAug(jitter=0, blur=0, gray=0.2, flip=0))
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 0.1 < gray.float().mean() < 0.3
    out = A.augment_view(x, A.ViewAug(jitter=0, blur=0, gray=0, flip=0.5))
    flipped = (out != out[:1]).flatten(1).any(1)
    assert 0.35 < flipped.float().mean() < 0.65


@pytest.mark.parametrize("recipe", ["simclr", "byol"])
def test_grey_images_are_augmented_on_one_channel_as_their_rgb_copy(recipe):
    """A grey source (Fashion-MNIST) takes the same draws and gives the same pixels on its one channel as its
    three-channel copy: saturation, hue and grayscale leave grey as it is, brightness and contrast keep their
    sample's order."""
    u8 = torch.randint(0, 256, (256, 1, 20, 20), dtype=torch.uint8)
    for view in A.RECIPES[recipe]:
        torch.manual_seed(3)
        grey = A.augment_view(u8, view)
        torch.manual_seed(3)
        rgb = A.augment_view(u8.expand(-1, 3, -1, -1).contiguous(), view)
        assert grey.shape == rgb.shape == (256, 3, 20, 20)
        torch.testing.assert_close(grey, rgb, atol=1e-4, rtol=0)
        assert (grey - u8.float() / 255).abs().mean() > 0.05   # and it did augment


def test_device_augment_gives_normalized_batch():
    aug = A.DeviceAugment(A.RECIPES["byol"], (0.5,) * 3, (0.25,) * 3)
    raw = RawBatch(torch.full((2, 4, 1, 8, 8), 128, dtype=torch.uint8), torch.arange(4), torch.zeros(4).long())
    b = aug(raw)
    assert b.views.shape == (2, 4, 3, 8, 8) and b.views.dtype == torch.float32
    plain = aug.plain(raw.views[0])
    torch.testing.assert_close(plain, torch.full_like(plain, (128 / 255 - 0.5) / 0.25))


def test_compiled_augmentation_matches_eager():
    """--compile-augment: the torch.compile'd device augmentation computes the same views as eager (with
    inductor drawing its random numbers through eager's generator)."""
    import torch._inductor.config as inductor_config
    from loaders.augment import RECIPES, DeviceAugment
    from loaders.batch import RawBatch
    inductor_config.fallback_random = True
    u8 = torch.randint(0, 256, (2, 32, 3, 16, 16), dtype=torch.uint8)
    raw = RawBatch(u8, torch.arange(32), torch.zeros(32))
    outs = []
    for compiled in (False, True):
        aug = DeviceAugment(RECIPES["byol"], (0.5,) * 3, (0.25,) * 3, compile=compiled)
        torch.manual_seed(0)
        aug(raw)  # compiles
        torch.manual_seed(1)
        outs.append(aug(raw).views)
    assert (outs[0] - outs[1]).abs().max() < 1e-4
    assert (outs[0][0] - aug.plain(u8[0])).abs().mean() > 0.1  # and it did augment
