"""AdamW parameter groups by module type: MoE, no-decay and decay groups, learning-rate scales."""

import pytest
import torch

from microdit.models import build_model
from microdit.nn import ExpertChoiceMoE
from microdit.train.optim import OptimConfig, build_optimizer, param_groups


def test_moe_group_holds_exactly_expert_and_router_parameters():
    model = build_model("MicroDiT_Tiny_2", depth=6, mixer_depth=2)
    groups = {g["name"]: g for g in param_groups(model, 0.1, 0.5)}
    expected = {n for n, _ in model.named_parameters()
                if n.rsplit(".", 2)[-2:] in (["mlp", "w1"], ["mlp", "w2"], ["gate", "weight"])
                and isinstance(model.get_submodule(n.split(".mlp")[0] + ".mlp"), ExpertChoiceMoE)}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups["moe"]["params"]} == expected
    assert len(expected) == 3 * 3  # blocks 1, 3 and mixer block 1: w1, w2 and router each
    assert groups["moe"]["lr_scale"] == 0.5 and groups["moe"]["weight_decay"] == 0.1
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    norms = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    biases = {n for n in names.values() if n.endswith(".bias")}
    embedders = {n for n in names.values() if n.startswith(("patch_embed.", "timestep_embed."))}
    assert no_decay == (norms | biases | embedders) - expected
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in groups["decay"]["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(model.parameters()))
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    assert {g["name"]: g["lr"] for g in opt.param_groups}["moe"] == pytest.approx(5e-4)



def test_reference_weight_decay_mode_decays_every_parameter():
    model = build_model("nano", depth=3)  # block 1 is an MoE block
    ours = {g["name"]: len(g["params"]) for g in param_groups(model, 0.1, 0.5)}
    reference = {g["name"]: g for g in param_groups(model, 0.1, 0.5, weight_decay_mode="reference")}
    assert ours["no_decay"] > 0 and "no_decay" not in reference
    assert sum(len(g["params"]) for g in reference.values()) == len(list(model.parameters()))
    assert all(g["weight_decay"] == 0.1 for g in reference.values())
    assert OptimConfig(weight_decay_mode="none").problems()[0].startswith("weight_decay_mode must be one of")
    opt = build_optimizer(model, OptimConfig(weight_decay_mode="reference"))
    assert {g["name"] for g in opt.param_groups} == {"decay", "moe"}
