"""The ResNet basic-block family: exact counts for both downsampling modes and 3 or 4 stages,
projection shortcuts only where the shape changes, and the CLI on its space file."""

import json
import random

import pytest
import torch
from torchvision.models.resnet import BasicBlock

from nas.budget import band, project
from nas.cli import main
from nas.counting import count_params
from nas.families import build_model
from nas.spaces import Genome, load_space, parse_short


def numel(genome: Genome) -> int:
    return sum(p.numel() for p in build_model(genome).parameters())


def random_resnet(rng: random.Random, stages: int, downsample: str) -> Genome:
    widths = [rng.choice([4, 8, 12, 16, 24]) for _ in range(stages)]  # equal neighbours happen often
    return Genome.from_dict(
        {
            "family": "resnet",
            "genes": {"depth": [rng.randint(1, 3) for _ in range(stages)], "width": widths},
            "options": {"stages": stages, "downsample": downsample, "num_classes": rng.choice([10, 100])},
        }
    )


@pytest.mark.parametrize("stages", [3, 4])
@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_count_is_exact_and_forward_gives_logits(stages, downsample):
    rng = random.Random(f"{stages}{downsample}")
    for _ in range(40):
        g = random_resnet(rng, stages, downsample)
        assert count_params(g) == numel(g), str(g)
        assert parse_short(str(g)) == g
    g = random_resnet(rng, stages, downsample)
    out = build_model(g).eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, g.options["num_classes"]) and torch.isfinite(out).all()


def projections(genome: Genome) -> list[bool]:
    """Per basic block of the built model: whether its shortcut is a projection."""
    return [m.downsample is not None for m in build_model(genome).modules() if isinstance(m, BasicBlock)]


def test_projection_shortcut_only_where_the_shape_changes():
    same = parse_short("resnet:16x2|16x2|32x2;downsample=maxpool")  # pooled before stage 2: same shape
    assert projections(same) == [False, False, False, False, True, False]
    strided = parse_short("resnet:16x2|16x2|32x2")  # stride 2 changes the shape even at equal widths
    assert projections(strided) == [False, False, True, False, True, False]
    assert count_params(strided) - count_params(same) == 16 * 16 + 2 * 16  # the extra 1x1 conv + BN


def test_resnet20_preset():
    g = load_space("resnet").presets["resnet20"]
    assert str(g) == "resnet:16x3|32x3|64x3"
    assert count_params(g) == numel(g) == 278_324  # ResNet-20 with projection shortcuts, 100 classes


@pytest.mark.parametrize("options", [{"downsample": "maxpool"}, {"stages": 4}, {"stages": 4, "downsample": "maxpool"}])
def test_projection_lands_in_band_in_every_mode(options):
    sp = load_space("resnet")
    rng = random.Random(0)
    stages = options.get("stages", sp.stages)
    for budget in [2_000, 10_000, 50_000, 300_000, 2_000_000]:
        g = Genome.from_dict(
            {
                "space": "resnet",
                "family": "resnet",
                "options": {**sp.options, **options},
                "genes": {
                    "depth": [rng.randint(1, 4) for _ in range(stages)],
                    "width": [rng.randint(4, 200) for _ in range(stages)],
                },
            }
        )
        p = project(g, sp, budget)
        lo, hi = band(budget)
        assert lo <= count_params(p) <= hi, (budget, str(g), str(p))
        assert p.options == g.options


def test_a_shape_space_of_resnet_is_a_space_file(tmp_path):
    f = tmp_path / "resnet-shape.toml"
    f.write_text(
        'family = "resnet"\nwidths = "growth"\n[genes]\ndepth = {low = 1, high = 3}\n'
        "width = {low = 4, high = 512, log = true}\ngrowth = {low = 100, high = 300, step = 25}\n"
    )
    sp = load_space(str(f))
    p = project(sp.from_vector([2, 1, 1, 16, 150, 200]), sp, 100_000)
    assert p.genes["depth"] == [2, 1, 1] and sp.vector(p)[4:] == [150, 200]
    assert 90_000 <= count_params(p) <= 100_000


def test_cli_counts_projects_and_shows_the_resnet_space(capsys):
    assert main(["count", "resnet:16x3|32x3|64x3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 278_324
    assert main(["project", "resnet20", "--budget", "50k", "--space", "resnet", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert 45_000 <= d["params"] <= 50_000 and d["genome"]["genes"]["depth"] == [3, 3, 3]
    assert main(["space", "show", "resnet"]) == 0
    out = capsys.readouterr().out
    assert "family:  resnet" in out and "resnet20" in out and "278,324" in out


def test_a_strided_projection_is_the_strided_1x1_conv_it_replaces():
    """The projection shortcut reads every other pixel and applies its 1x1 conv unstrided: the
    same output and gradients as nn.Conv2d(c_in, c_out, 1, stride=2), odd sizes included."""
    from torch import nn

    from nas.modules import PointwiseConv

    torch.manual_seed(0)
    ours, theirs = PointwiseConv(4, 9, stride=2), nn.Conv2d(4, 9, 1, stride=2, bias=False)
    theirs.load_state_dict(ours.state_dict())  # same keys, same shapes
    for size in (7, 8):
        x = torch.randn(3, 4, size, size, requires_grad=True)
        a, b = ours(x), theirs(x)
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
        (ga,) = torch.autograd.grad(a.square().sum(), x)
        (gb,) = torch.autograd.grad(b.square().sum(), x)
        assert torch.allclose(ga, gb, atol=1e-5)


def test_a_narrow_resnet_trains_in_channels_last_float32():
    """4-channel stages (a ResNet baseline at a 3k budget) in channels_last, float32, on the CPU:
    oneDNN's backward of a strided 1x1 conv with so few input channels corrupted the heap on AVX2
    CPUs and killed the process (a sweep's baseline calibration, this suite's sweep test)."""
    model = build_model(parse_short("resnet:4x1|4x1|9x1")).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(10):
        x = torch.randn(256, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        loss = model(x).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)


def test_a_narrow_resnet_exports_to_onnx_with_its_sliced_shortcuts(tmp_path):
    """The sliced shortcut exports (a Slice before the 1x1 conv) and ONNX Runtime gives
    PyTorch's logits, odd batch sizes included."""
    from nas.export import compare, export_onnx

    torch.manual_seed(0)
    model = build_model(parse_short("resnet:4x1|4x1|9x1")).eval()
    path = tmp_path / "narrow.onnx"
    export_onnx(model, path)
    for n in (1, 7):
        check = compare(model, path, torch.randn(n, 3, 32, 32))
        assert check["max_abs_diff"] < 1e-4 and check["top1_agree"] == n
