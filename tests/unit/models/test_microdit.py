"""The MicroDiT network: presets, parameter counts, shapes, init, masking paths, width scaling."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from timm.layers import GluMlp

from microdit.masking import MaskConfig, keep_mask, sample_keep_ids
from microdit.models import PRESETS, MicroDiT, MicroDiTConfig, build_model, preset_config
from microdit.models.microdit import pretrained_encoders
from microdit.nn import ExpertChoiceMoE
from microdit.nn.embeddings import sincos_pos_embed_2d

from conftest import reference_shapes


def small(**overrides):
    """A tiny float64 model with random (non-zero) weights so outputs are informative."""
    cfg = dict(width=64, depth=4, head_dim=16, mixer_depth=2, mixer_width=48, in_channels=3, input_size=8,
               caption_dim=24, multiple_of=16, freq_dim=32, num_experts=4)
    cfg.update(overrides)
    model = build_model("nano", **cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(n=2, c=3, h=8, w=8, length=5, dy=24):
    return (torch.randn(n, c, h, w, dtype=torch.float64), torch.randn(n, dtype=torch.float64),
            torch.randn(n, length, dy, dtype=torch.float64))


@pytest.mark.parametrize("preset,expected", [("MicroDiT_Tiny_2", 200_692_752), ("MicroDiT_XL_2", 1_165_442_320)])
def test_paper_parameter_counts(preset, expected):
    with torch.device("meta"):
        model = build_model(preset)
    assert sum(p.numel() for p in model.parameters()) == expected
    header = (reference_shapes.__globals__["FIXTURE_DIR"] / f"{preset}.tsv").read_text().splitlines()[0]
    assert f"{expected} parameters" in header


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_forward_shape(preset):
    cfg = preset_config(preset)
    n, length = 2, 7
    if cfg.width >= 512:  # paper presets: shapes only, on the meta device
        device = torch.device("meta")
    else:
        device = torch.device("cpu")
    with device:
        model = build_model(preset)
        x = torch.randn(n, cfg.in_channels, *cfg.input_size)
        y = torch.randn(n, length, cfg.caption_dim)
        out = model(x, torch.zeros(n), y)
        assert out.shape == x.shape
        grid = model.grid(*cfg.input_size)
        keep = sample_keep_ids(n, grid, MaskConfig(0.75), device=device)
        assert model(x, torch.zeros(n), y, keep_ids=keep).shape == x.shape


@pytest.mark.parametrize("ratio", [0.0, 0.75])
def test_every_layer_norm_sees_a_row_major_input(ratio):
    """The token stream is made contiguous once after the patch embedding (timm's is a transposed
    view), so no layer norm copies its input in the forward or the backward pass."""
    model = build_model("nano")
    cfg = model.cfg
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous()))
    keep = sample_keep_ids(2, model.grid(*cfg.input_size), MaskConfig(ratio)) if ratio else None
    model(torch.randn(2, cfg.in_channels, *cfg.input_size), torch.zeros(2), torch.randn(2, 5, cfg.caption_dim),
          keep_ids=keep)
    assert len(seen) > 10 and all(seen)


@pytest.mark.parametrize("preset", ["nano", "micro"])
def test_output_is_exactly_zero_at_init(preset):
    model = build_model(preset)
    cfg = model.cfg
    x = torch.randn(3, cfg.in_channels, *cfg.input_size)
    out = model(x, torch.randn(3), torch.randn(3, 6, cfg.caption_dim))
    assert torch.count_nonzero(out) == 0
    keep = sample_keep_ids(3, model.grid(*cfg.input_size), MaskConfig(0.5))
    assert torch.count_nonzero(model(x, torch.randn(3), torch.randn(3, 6, cfg.caption_dim), keep_ids=keep)) == 0


def test_init_statistics():
    model = build_model("MicroDiT_Tiny_2", depth=4, mixer_depth=2)
    block = model.blocks[2]
    assert torch.count_nonzero(block.ada_ln[1].weight) == 0
    assert abs(block.attn.qkv.weight.std().item() - 0.02) < 0.003  # trunc-normal(0.02), torch's default bounds
    assert abs(block.attn.proj.weight.std().item() - 0.02 / math.sqrt(6)) < 0.001
    assert abs(model.mixer.blocks[0].attn.proj.weight.std().item() - 0.02 / math.sqrt(2 * 4)) < 0.001
    hidden = block.mlp.fc1.out_features // 2
    value_projection = block.mlp.fc1.weight[hidden:]  # SwiGLU W2
    assert abs(block.mlp.fc1.weight[:hidden].std().item() - 0.02) < 0.002  # SwiGLU gate W1
    assert abs(value_projection.std().item() - 0.02 / math.sqrt(6)) < 0.001
    assert abs(model.blocks[1].mlp.gate.weight.std().item() - 0.02) < 0.003
    assert abs(model.caption_block.attn.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(model.timestep_embed.mlp[0].weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(model.caption_block.attn.proj.weight) == 0
    assert torch.count_nonzero(model.final.linear.weight) == 0
    assert model.pooled_caption_proj.fc1.bias.abs().max() == 0
    assert model.blocks[0].norm1.weight.eq(1).all()
    assert abs(model.blocks[0].cross_attn.kv.weight.std().item() - 0.02) < 0.002
    projection = build_model("MicroDiT_Tiny_2", depth=2, mixer_depth=1, mixer_width=256).mixer.x_in[1].weight
    limit = math.sqrt(6 / (512 + 256))  # xavier-uniform on the remaining Linears
    assert 0.99 * limit < projection.abs().max() <= limit


VARIANTS = {
    "naive": dict(mixer_depth=0),
    "deferred": dict(),
    "deferred, narrow mixer attention": dict(mixer_qkv_ratio=0.5),
    "maskdit": dict(mixer_depth=0, decoder_depth=2, decoder_width=32),
    "maskdit, full-width decoder": dict(mixer_depth=0, decoder_depth=1, decoder_width=64),
    "deferred + maskdit decoder": dict(decoder_depth=1, decoder_width=32),
}


@pytest.mark.parametrize("moe", [True, False], ids=["moe", "dense"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keeping_every_token_in_order_equals_no_masking(variant, moe):
    """The property that makes sampling run the function that was trained: every variant's masked
    path, with all tokens kept in order, is its unmasked path (block masking only changes which
    sorted ids are kept, see tests/unit/test_masking.py)."""
    model = small(moe=moe, **VARIANTS[variant])
    assert any(isinstance(m, ExpertChoiceMoE) for m in model.modules()) == moe
    x, c, y = inputs()
    keep_all = torch.arange(16).expand(2, 16)
    assert sample_keep_ids(2, (4, 4), MaskConfig(0.0)) is None
    assert sample_keep_ids(2, (4, 4), MaskConfig(0.0, "block", 2)) is None
    unmasked = model(x, c, y)
    torch.testing.assert_close(model(x, c, y, keep_ids=keep_all), unmasked, rtol=1e-12, atol=1e-12)
    assert unmasked.abs().mean() > 1e-3  # the check is not between two zero outputs


@pytest.mark.parametrize("mixer_depth", [0, 2])
def test_masked_tokens_are_zero_and_kept_tokens_ignore_dropped_ones(mixer_depth):
    model = small(mixer_depth=mixer_depth)
    x, c, y = inputs()
    keep = sample_keep_ids(2, (4, 4), MaskConfig(0.5))
    out = model(x, c, y, keep_ids=keep)
    patches = out.unfold(2, 2, 2).unfold(3, 2, 2)  # (N, C, h, w, p, p)
    per_patch = patches.abs().sum(dim=(1, 4, 5)).flatten(1)  # (N, T)
    kept = keep_mask(keep, 2, 16)
    assert torch.all(per_patch[~kept] == 0) and torch.all(per_patch[kept] > 0)
    # perturb a masked patch: with no mixer (naive) kept outputs are unchanged; the mixer sees it.
    dropped = (~kept[0]).nonzero()[0].item()
    r, col = divmod(dropped, 4)
    x2 = x.clone()
    x2[0, :, 2 * r:2 * r + 2, 2 * col:2 * col + 2] += 1.0
    out2 = model(x2, c, y, keep_ids=keep)
    if mixer_depth == 0:
        assert torch.equal(out, out2)
    else:
        assert not torch.allclose(out[0], out2[0])
        torch.testing.assert_close(out[1], out2[1], rtol=0, atol=0)


def test_non_square_inputs_and_grid_larger_than_configured():
    model = small()
    for h, w in [(8, 12), (12, 8), (16, 16)]:
        x, c, y = inputs(h=h, w=w)
        assert model(x, c, y).shape == x.shape
        keep = sample_keep_ids(2, model.grid(h, w), MaskConfig(0.75))
        assert model(x, c, y, keep_ids=keep).shape == x.shape


def test_unpatchify_is_inverse_of_patch_order():
    """The token for patch (r, c) lands at pixels [p r : p r + p, p c : p c + p]."""
    model = small(mixer_depth=0, depth=1, moe=False)
    with torch.no_grad():
        model.final.linear.weight.zero_()
        model.final.ada_ln[1].weight.zero_()
        model.final.ada_ln[1].bias.zero_()
        model.final.linear.bias.copy_(torch.arange(12, dtype=torch.float64))
    x, c, y = inputs(h=4, w=6)
    keep = torch.tensor([[0, 4]]).expand(2, 2)  # patches (0, 0) and (1, 1) of a 2 x 3 grid
    out = model(x, c, y, keep_ids=keep)
    expected = torch.arange(12, dtype=torch.float64).view(2, 2, 3).permute(2, 0, 1)  # (C, p, q)
    assert torch.equal(out[0, :, 0:2, 0:2], expected)
    assert torch.equal(out[0, :, 2:4, 2:4], expected)
    assert out[0, :, 0:2, 2:4].abs().sum() == 0


def test_caption_matters_and_padding_mask_is_respected():
    model = small()
    x, c, y = inputs()
    y2 = y.clone()
    y2[:, -2:] = torch.randn(2, 2, 24, dtype=torch.float64)
    assert not torch.allclose(model(x, c, y), model(x, c, y2))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, -2:] = False
    torch.testing.assert_close(model(x, c, y, y_mask=mask), model(x, c, y2, y_mask=mask), rtol=0, atol=1e-12)
    torch.testing.assert_close(model(x, c, y, y_mask=mask), model(x, c, y[:, :3]), rtol=1e-10, atol=1e-10)


def test_layerwise_widths_match_reference_shapes():
    cfg = preset_config("MicroDiT_Tiny_2")
    ref = reference_shapes("MicroDiT_Tiny_2")
    for i, spec in enumerate(cfg.backbone_specs()):
        assert ref[f"blocks.{i}.attn.qkv.weight"] == (3 * spec.attn_width, 512)
        if spec.moe:
            assert ref[f"blocks.{i}.mlp.w1"] == (8, 512, spec.hidden)
        else:
            assert ref[f"blocks.{i}.mlp.w1.weight"] == (spec.hidden, 512)
    ratios = np.linspace(0.5, 1.0, 16)
    assert [s.attn_width for s in cfg.backbone_specs()][1] == 64 * math.ceil(int(512 * ratios[1]) / 64)


def test_moe_placement_rule():
    model = build_model("MicroDiT_Tiny_2", depth=6, mixer_depth=4)
    assert [isinstance(b.mlp, ExpertChoiceMoE) for b in model.blocks] == [False, True, False, True, False, False]
    assert [isinstance(b.mlp, ExpertChoiceMoE) for b in model.mixer.blocks] == [False, True, False, True]
    every = build_model("MicroDiT_Tiny_2", depth=3, mixer_depth=3, moe_every=1)
    assert [isinstance(b.mlp, ExpertChoiceMoE) for b in every.blocks] == [True, True, False]
    assert [isinstance(b.mlp, ExpertChoiceMoE) for b in every.mixer.blocks] == [False, True, True]
    dense = build_model("MicroDiT_Tiny_2", depth=6, mixer_depth=4, moe=False)
    assert all(isinstance(b.mlp, GluMlp) for b in list(dense.blocks) + list(dense.mixer.blocks))


def test_constant_width_uses_mean_ratios():
    cfg = preset_config("MicroDiT_Tiny_2", width_scaling="constant")
    specs = cfg.backbone_specs()
    assert len({s.attn_width for s in specs}) == 1
    assert specs[0].attn_width == cfg.attn_width(0.75)
    dense_hidden = {s.hidden for s in specs if not s.moe}
    assert dense_hidden == {cfg.ffn_hidden(512, 2.25, moe=False)}


def test_gelu_ffn_option():
    model = build_model("nano", ffn="gelu", moe=False)
    cfg = model.cfg
    x = torch.randn(2, cfg.in_channels, 16, 16)
    assert model(x, torch.zeros(2), torch.randn(2, 3, cfg.caption_dim)).shape == x.shape
    assert not hasattr(model.blocks[0].mlp, "w2")


def test_pos_embed_interpolation_formula():
    emb = sincos_pos_embed_2d(8, (4, 4), (2, 2), interp_scale=1.0)
    ref = sincos_pos_embed_2d(8, (2, 2), (2, 2), interp_scale=1.0)
    # a 4x4 grid interpolated into a 2x2 base: token (2r, 2c) sits where base token (r, c) does
    assert torch.allclose(emb.view(4, 4, 8)[::2, ::2].reshape(4, 8), ref)
    scaled = sincos_pos_embed_2d(8, (4, 4), (4, 4), interp_scale=2.0)
    assert torch.allclose(scaled, emb)
    # first half encodes the column: constant down a column
    grid = sincos_pos_embed_2d(8, (3, 5), (3, 5)).view(3, 5, 8)
    assert torch.equal(grid[0, :, :4], grid[2, :, :4]) and torch.equal(grid[:, 0, 4:], grid[:, 3, 4:])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(width=100), "not divisible by head_dim"),
        (dict(mixer_width=40), "mixer_width 40 is not divisible"),
        (dict(input_size=15), "not divisible by patch_size"),
        (dict(qkv_ratio=[1.0, 0.5]), "qkv_ratio must be"),
        (dict(ffn="relu"), "ffn must be one of"),
        (dict(depth=0), "depth must be >= 1"),
        (dict(width_scaling="wide"), "width_scaling"),
    ],
)
def test_invalid_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model("nano", **overrides)


def test_every_problem_reported_at_once():
    problems = MicroDiTConfig(width=100, ffn="relu", depth=0).problems()
    assert len(problems) >= 3


def test_unknown_preset_and_key():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        build_model("huge")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['widht'\]"):
        build_model("nano", widht=64)


def test_bad_input_shapes():
    model = small()
    x, c, y = inputs()
    with pytest.raises(ValueError, match="x must be"):
        model(x[:, :2], c, y)
    with pytest.raises(ValueError, match="x must be"):
        model(x[..., :7], c, y)
    with pytest.raises(ValueError, match="c_noise must be"):
        model(x, c[:1], y)
    with pytest.raises(ValueError, match="y must be"):
        model(x, c, y[..., :5])
    with pytest.raises(ValueError, match="keep_ids must be"):
        model(x, c, y, keep_ids=torch.zeros(2, 17, dtype=torch.long))


def test_activation_checkpointing_gives_the_same_gradients():
    model = small()
    x, c, y = inputs()
    keep = sample_keep_ids(2, (4, 4), MaskConfig(0.5))
    grads = []
    for recompute in (False, True):
        model.zero_grad()
        model.activation_checkpointing = recompute
        model(x, c, y, keep_ids=keep).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_set_resolution_changes_the_position_grid():
    model = small()
    model.set_resolution([16, 16], 2.0)
    x, c, y = inputs(h=16, w=16)
    assert model.pos_embed.shape == (64, 64) and model(x, c, y).shape == x.shape
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        model.set_resolution([15, 16], 1.0)


def test_maskdit_decoder_predicts_every_patch():
    model = small(decoder_depth=2, decoder_width=32, mixer_depth=0)
    assert model.decoder is not None and len(model.decoder.blocks) == 2
    assert model.decoder.blocks[0].attn.qkv.in_features == 32  # blocks at the decoder width
    x, c, y = inputs()
    keep = sample_keep_ids(2, (4, 4), MaskConfig(0.5))
    out = model(x, c, y, keep_ids=keep)
    per_patch = out.unfold(2, 2, 2).unfold(3, 2, 2).abs().sum(dim=(1, 4, 5)).flatten(1)  # (N, T)
    assert torch.all(per_patch > 0)  # masked patches are predicted, not a zero token
    assert model(x, c, y).shape == x.shape
    dense = build_model("MicroDiT_Tiny_2", decoder_depth=8)  # MaskDiT's decoder: 8 blocks of width 512
    base = build_model("MicroDiT_Tiny_2")
    extra = sum(p.numel() for p in dense.parameters()) - sum(p.numel() for p in base.parameters())
    assert extra == sum(p.numel() for p in dense.decoder.parameters())
    assert len(dense.decoder.blocks) == 8 and dense.decoder.mask_token.shape == (1, 1, 512)


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = small(decoder_depth=1, decoder_width=32).float()
    model.save_pretrained(tmp_path / "export")
    loaded = MicroDiT.from_pretrained(tmp_path / "export")
    assert loaded.cfg == model.cfg and not loaded.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert pretrained_encoders(tmp_path / "export") == {}
    encoders = {"text_encoder": "minilm:32", "autoencoder": "pixel:2"}
    model.save_pretrained(tmp_path / "named", encoders)
    assert pretrained_encoders(tmp_path / "named") == encoders
    assert MicroDiT.from_pretrained(tmp_path / "named").cfg == model.cfg
    (tmp_path / "export" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="is not a microdit export"):
        MicroDiT.from_pretrained(tmp_path / "export")


def test_checkpoints_with_the_dense_ffn_names_before_timm_still_load():
    cfg = preset_config("nano")
    for ffn in ("swiglu", "gelu"):
        model = MicroDiT(dataclasses.replace(cfg, ffn=ffn, moe=False))
        legacy = {}
        for key, value in model.state_dict().items():  # the names microdit's own FFN classes used
            if ".mlp.fc1.weight" in key:
                key = key.replace(".mlp.fc1.weight", ".mlp.w12.weight" if ffn == "swiglu" else ".mlp.w1.weight")
            legacy[key.replace(".mlp.fc2.weight", ".mlp.w3.weight")] = value.clone()
        assert legacy.keys() != model.state_dict().keys()
        again = MicroDiT(dataclasses.replace(cfg, ffn=ffn, moe=False))
        again.load_state_dict(legacy)  # strict
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(),
                                                       strict=True))


def test_the_maskdit_decoder_entry_is_timestep_conditioned_at_any_width():
    model = build_model("nano", decoder_depth=1, decoder_width=128, mixer_depth=0)  # decoder at the network's width
    entry = model.decoder.x_in
    assert entry.linear.in_features == entry.linear.out_features == 128  # not the identity at equal widths
    assert torch.count_nonzero(entry.ada_ln[1].weight) == 0  # modulation starts as the identity
    torch.nn.init.normal_(entry.ada_ln[1].weight)
    x = torch.randn(2, 16, 128)
    c1, c2 = torch.randn(2, 128), torch.randn(2, 128)
    assert not torch.allclose(entry(x, c1), entry(x, c2))  # the noise level reaches the decoder's input
