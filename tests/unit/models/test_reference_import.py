"""Import of reference-implementation state dicts: strict mapping, shapes, clear errors, CLI."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from microdit.models import MicroDiT, build_model, preset_config
from microdit.models.reference_import import ReferenceImportError, convert_reference_state_dict, our_key
from microdit.nn.embeddings import sincos_pos_embed_2d

from conftest import FIXTURE_DIR, reference_shapes

TOOL = FIXTURE_DIR.parents[1] / "tools" / "convert_reference_checkpoint.py"


def random_reference_dict(preset: str, dtype=torch.float32) -> dict[str, torch.Tensor]:
    cfg = preset_config(preset)
    sd = {}
    for key, shape in reference_shapes(preset).items():
        sd[key] = torch.randn(shape, dtype=dtype)
    sd["pos_embed"] = sincos_pos_embed_2d(cfg.width, cfg.base_grid, cfg.base_grid).unsqueeze(0)
    sd["mask_token"] = torch.zeros(1, 1, sd["mask_token"].shape[-1])
    return sd


@pytest.fixture(scope="module")
def tiny_reference():
    return random_reference_dict("MicroDiT_Tiny_2", dtype=torch.float16)


def test_tiny_converts_and_loads_strictly(tiny_reference):
    sd = convert_reference_state_dict(tiny_reference, preset_config("MicroDiT_Tiny_2"))
    with torch.device("meta"):
        model = build_model("MicroDiT_Tiny_2")
    model.load_state_dict(sd, strict=True, assign=True)
    swiglu_pairs = sum(k.endswith("mlp.w2.weight") for k in tiny_reference)
    assert swiglu_pairs > 0 and len(sd) == len(tiny_reference) - 2 - swiglu_pairs
    assert sd["mixer.blocks.1.mlp.w1"] is tiny_reference["patch_mixer.1.mlp.w1"]
    assert sd["blocks.3.cross_attn.kv.weight"] is tiny_reference["blocks.3.cross_attn.kv_linear.weight"]
    assert sd["final.ada_ln.1.bias"] is tiny_reference["final_layer.adaLN_modulation.1.bias"]
    assert sd["caption_block.mlp.fc2.weight"] is tiny_reference["y_emb_preprocess.mlp.w3.weight"]


def test_swiglu_halves_are_stacked_into_the_fused_projection(tiny_reference):
    sd = convert_reference_state_dict(tiny_reference, preset_config("MicroDiT_Tiny_2"))
    w1, w2 = tiny_reference["blocks.0.mlp.w1.weight"], tiny_reference["blocks.0.mlp.w2.weight"]
    w3 = tiny_reference["blocks.0.mlp.w3.weight"]
    assert torch.equal(sd["blocks.0.mlp.fc1.weight"], torch.cat([w1, w2]))
    model = build_model("MicroDiT_Tiny_2").double()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, w1.shape[1], dtype=torch.float64)
    by_hand = F.silu(x @ w1.double().T) * (x @ w2.double().T) @ w3.double().T  # the reference's SwiGLU
    torch.testing.assert_close(model.blocks[0].mlp(x), by_hand)
    half = {k: v for k, v in tiny_reference.items() if k != "blocks.0.mlp.w2.weight"}
    with pytest.raises(ReferenceImportError, match=r"lacks 1 parameter.*blocks.0.mlp.fc1.weight"):
        convert_reference_state_dict(half, preset_config("MicroDiT_Tiny_2"))
    bad = dict(tiny_reference, **{"blocks.0.mlp.w2.weight": torch.zeros(3, 3)})
    with pytest.raises(ReferenceImportError, match=r"'blocks.0.mlp.w2.weight' has shape \(3, 3\).*one half"):
        convert_reference_state_dict(bad, preset_config("MicroDiT_Tiny_2"))


def test_xl_mapping_on_shapes():
    with torch.device("meta"):
        ref = {k: torch.empty(s) for k, s in reference_shapes("MicroDiT_XL_2").items()
               if k not in ("pos_embed", "mask_token")}
        sd = convert_reference_state_dict(ref, preset_config("MicroDiT_XL_2"))
        model = build_model("MicroDiT_XL_2")
    model.load_state_dict(sd, strict=True, assign=True)
    assert sum(v.numel() for v in sd.values()) == 1_165_442_320
    assert our_key("patch_mixer_map_xin.1.weight") == "mixer.x_in.1.weight"
    assert our_key("patch_mixer.5.adaLN_modulation.1.weight") == "mixer.blocks.5.ada_ln.1.weight"


def test_wrong_shape_names_the_key(tiny_reference):
    bad = dict(tiny_reference)
    bad["blocks.4.attn.qkv.weight"] = torch.zeros(3, 3)
    with pytest.raises(ReferenceImportError, match=r"'blocks.4.attn.qkv.weight' has shape \(3, 3\)"):
        convert_reference_state_dict(bad, preset_config("MicroDiT_Tiny_2"))


def test_unknown_and_missing_keys(tiny_reference):
    extra = dict(tiny_reference, **{"ema.decay": torch.zeros(1)})
    with pytest.raises(ReferenceImportError, match="'ema.decay' has no counterpart"):
        convert_reference_state_dict(extra, preset_config("MicroDiT_Tiny_2"))
    missing = {k: v for k, v in tiny_reference.items() if k != "blocks.7.mlp.gate.weight"}
    with pytest.raises(ReferenceImportError, match=r"lacks 1 parameter.*blocks.7.mlp.gate.weight"):
        convert_reference_state_dict(missing, preset_config("MicroDiT_Tiny_2"))
    with pytest.raises(ReferenceImportError, match="'blocks.2.attn.qkv.weight' has shape"):  # wrong config
        convert_reference_state_dict(tiny_reference, preset_config("MicroDiT_Tiny_2", depth=8))


def test_fixed_buffers_are_checked(tiny_reference):
    bad = dict(tiny_reference, mask_token=torch.ones(1, 1, 16))
    with pytest.raises(ReferenceImportError, match="mask_token"):
        convert_reference_state_dict(bad, preset_config("MicroDiT_Tiny_2"))
    with pytest.raises(ReferenceImportError, match="pos_embed' differs"):
        convert_reference_state_dict(tiny_reference, preset_config("MicroDiT_Tiny_2", pos_interp_scale=2.0))


def test_command_line_tool(tmp_path, tiny_reference):
    spec = importlib.util.spec_from_file_location("convert_reference_checkpoint", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    src, dst = tmp_path / "ref.pt", tmp_path / "out" / "ours.pt"
    torch.save(tiny_reference, src)
    tool.main(["--preset", "MicroDiT_Tiny_2", str(src), str(dst)])
    sd = torch.load(dst, weights_only=True)
    model = build_model("MicroDiT_Tiny_2").half()
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.blocks[1].mlp.w2, tiny_reference["blocks.1.mlp.w2"])
    export = tmp_path / "export"
    tool.main(["--preset", "MicroDiT_Tiny_2", str(src), str(export)])  # a folder: the run-end export
    loaded = MicroDiT.from_pretrained(export)
    assert torch.equal(loaded.blocks[1].mlp.w2, tiny_reference["blocks.1.mlp.w2"].float())
    with pytest.raises(SystemExit, match="already holds an export"):
        tool.main(["--preset", "MicroDiT_Tiny_2", str(src), str(export)])
    written = dst.read_bytes()
    with pytest.raises(SystemExit, match=f"error: {dst} exists; choose another path"):
        tool.main(["--preset", "MicroDiT_Tiny_2", str(src), str(dst)])
    assert dst.read_bytes() == written  # nothing written before is replaced
    new = tmp_path / "new.pt"
    with pytest.raises(SystemExit, match="does not exist"):
        tool.main(["--preset", "MicroDiT_Tiny_2", str(tmp_path / "nope.pt"), str(new)])
    with pytest.raises(SystemExit, match=r"ref.pt: reference key .* has shape"):
        tool.main(["--preset", "MicroDiT_Tiny_2", "--override", "depth=8", str(src), str(new)])
