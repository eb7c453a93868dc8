"""Run configs: composition, unknown keys rejected, one message per problem, experiments as deltas."""

import pytest
import yaml
from omegaconf import OmegaConf

from microdit.experiment import CONF_DIR
from microdit.run import run_config
from microdit.train.config import StageConfig, TrainConfig, problems, run_changes, summarize_changes
from microdit.train.plan import resolve

from train_helpers import compose_config


def test_defaults_compose_and_validate():
    cfg = compose_config([])
    assert problems(cfg) == []
    assert cfg.model.build_config().width == 128 and cfg.stages["pretrain"].mask.ratio == 0.75


def test_unknown_keys_are_rejected_with_hydras_reason():
    with pytest.raises(ValueError, match=r"override 'trainer.bogus'. \(Key 'bogus' not in 'TrainerConfig'\)$"):
        compose_config(["trainer.bogus=1"])
    with pytest.raises(ValueError, match=r"'model.overrides.widht'. \(Key 'widht' not in 'ModelOverrides'\)"):
        compose_config(["model.overrides.widht=64"])
    with pytest.raises(ValueError, match=r"Key 'rate' not in 'MaskConfig'"):
        compose_config(["stages.pretrain.mask.rate=0.5"])


@pytest.mark.parametrize("overrides,message", [
    (["stages.pretrain.mask.ratio=1.0"], "stages.pretrain: mask: ratio must be in [0, 1), got 1.0"),
    (["stages.pretrain.mask.ratio=1.5"], "stages.pretrain: mask: ratio must be in [0, 1), got 1.5"),
    (["model.overrides.width=100"], "width 100 is not divisible by head_dim 32"),
    (["trainer.batch_size=30", "trainer.grad_accum=4"], "batch_size 30 is not divisible by processes x grad_accum"),
    (["~stages.pretrain"], "stages is empty"),
    (["stages.pretrain=null"], "stages is empty"),
    (["stages.pretrain.steps=10"], "stages.pretrain: give exactly one of images, steps, flops, budget_fraction; got "
                                   "images, steps (set the others to null, e.g. images=null)"),
    (["stages.pretrain.images=null"], "stages.pretrain: give exactly one of images, steps, flops, budget_fraction; got "
                                      "none"),
    (["stages.pretrain.images=null", "stages.pretrain.budget_fraction=1.0"],
     "budget_fraction needs trainer.budget_flops"),
    (["stages.pretrain.mask.strategy=block", "stages.pretrain.mask.block_size=3"],
     "stages.pretrain: mask: block_size 3 does not divide the token grid (8, 8)"),
    (["stages.pretrain.lr=-1e-3"], "stages.pretrain: lr must be > 0"),
    (["stages.pretrain.ema.decay=1.0"], "stages.pretrain: ema: decay must be in [0, 1)"),
    (["data.folders=[]"], "data: folders is empty"),
    (["data.shuffle=random"], "data: shuffle must be one of"),
    (["model.preset=huge"], "unknown model preset 'huge'"),
    (["optim.lr=0"], "optim: lr must be > 0"),
    (["optim.betas=[0.9]"], "optim: betas must be two numbers"),
    (["sampler.solver=ddim"], "sampler: solver must be one of"),
    (["sampler.steps=0"], "sampler: steps must be >= 1"),
    (["sampler.cfg_scale=-1"], "sampler: cfg_scale must be a finite number >= 0"),
    (["optim.lr=nan"], "optim.lr must be a finite number, got nan"),
    (["stages.pretrain.P_mean=-inf"], "stages.pretrain.P_mean must be a finite number, got -inf"),
    (["optim.betas=[0.9,nan]"], "optim.betas.1 must be a finite number, got nan"),
    (["trainer.budget_flops=inf", "stages.pretrain.images=null", "stages.pretrain.budget_fraction=1.0"],
     "trainer.budget_flops must be a finite number, got inf"),
    (["diffusion.sigma_min=100"], "diffusion: sigma_min (100.0) must be < sigma_max"),
    (["trainer.precision=fp16"], "trainer: precision must be one of"),
    (["trainer.attention_backend=fast"], "trainer: attention_backend must be one of"),
    (["trainer.compile_mode=turbo"], "trainer: compile_mode must be one of"),
    (["trainer.sync_every_steps=0"], "trainer: sync_every_steps and max_nonfinite must be >= 1"),
    (["trainer.budget_flops=1e12", "stages.pretrain.images=null", "stages.pretrain.budget_fraction=0.5"],
     "budget_fraction values sum to 0.5, expected 1"),
    # each of these reached torch, numpy or wandb as a traceback (or, for the name, a folder outside run_dir)
    (["trainer.threads=-1"], "trainer: threads must be >= 0, got -1"),
    (["trainer.seed=-1"], "trainer: seed must be >= 0, got -1"),
    (["trainer.name="], "trainer: name '' must be a plain folder name"),
    (["trainer.name=../elsewhere"], "trainer: name '../elsewhere' must be a plain folder name"),
    (["trainer.run_dir="], "trainer: run_dir '' must name a folder (. for the working directory)"),
    (["trainer.keep_checkpoints=-2"], "trainer: keep_checkpoints must be >= 0, got -2"),
    (["trainer.log_every_images=-5"], "trainer: log_every_images must be >= 0"),
    (["trainer.budget_flops=-1e12"], "trainer: budget_flops must be > 0 when set"),
    (["trainer.budget_dollars=0"], "trainer: budget_dollars must be > 0 when set"),
    (["trainer.expected_mfu=1.5"], "trainer: expected_mfu must be in (0, 1], got 1.5"),
    (["trainer.sample_prompts=[]"], "trainer: sample_prompts is empty"),
    (["data.prepare_samples=0"], "data: need prepare_samples >= 1 and prepare_seed >= 0, got 0, 0"),
])
def test_validation_messages(overrides, message):
    cfg = compose_config(overrides)
    found = problems(cfg)
    assert any(message in p for p in found), found


def test_all_problems_reported_together():
    cfg = compose_config(["stages.pretrain.mask.ratio=2", "trainer.batch_size=7", "trainer.grad_accum=2",
                          "data.folders=[]"])
    assert len(problems(cfg)) >= 3
    assert any("processes x grad_accum = 2 x 2" in p for p in problems(cfg, world_size=2))


def test_run_changes_name_what_would_mix_two_runs(tmp_path):
    """A run's config.yaml read back equals the config it was written from; a relaunch may move the
    run, its data and its devices, but not change what the run computes."""
    cfg = compose_config(["protocol=cpu_ablation"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    saved = run_config(tmp_path / "config.yaml")
    assert run_changes(saved, cfg) == []
    moved = compose_config(["protocol=cpu_ablation", "trainer.run_dir=/scratch/runs", "trainer.threads=1",
                            "trainer.grad_accum=2", "sampler.steps=40",
                            "data.folders=[/mnt/shared/data/synthetic-ablation]"])
    assert run_changes(saved, moved) == []
    other = compose_config(["protocol=cpu_ablation", "trainer.budget_flops=1.6e13", "stages.pretrain.mask.ratio=0.5",
                            "data.folders=[data/synthetic-minilm]", "trainer.seed=1"])
    changes = run_changes(saved, other)
    assert [c.split(":")[0] for c in changes] == ["data.folders", "trainer.seed", "trainer.budget_flops",
                                                  "stages.pretrain.mask.ratio"]
    assert "trainer.budget_flops: 8000000000000.0 -> 16000000000000.0" in changes
    assert summarize_changes(changes, shown=2) == "; ".join(changes[:2]) + " (and 2 more)"
    assert summarize_changes(changes[:1]) == changes[0]


def test_a_budget_that_sizes_no_stage_is_no_change():
    """A run whose stages fix their own length trains alike under any budget or none (the budget
    sizes only stages with a budget_fraction), so it continues after its budget is dropped; where a
    stage is sized by the budget, on either side, the budget is a change."""
    fixed = ["protocol=cpu_ablation", "stages.pretrain.budget_fraction=null", "stages.pretrain.steps=100"]
    saved = compose_config(fixed)
    assert run_changes(saved, compose_config([*fixed, "trainer.budget_flops=null"])) == []
    assert run_changes(saved, compose_config([*fixed, "trainer.budget_flops=null", "trainer.budget_dollars=5",
                                              "trainer.expected_mfu=0.5"])) == []
    sized = compose_config(["protocol=cpu_ablation"])
    assert [c.split(":")[0] for c in run_changes(sized, saved)] == ["stages.pretrain.steps",
                                                                     "stages.pretrain.budget_fraction"]
    assert "trainer.budget_flops: 8000000000000.0 -> None" in run_changes(
        sized, compose_config([*fixed, "trainer.budget_flops=null"]))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert problems(cfg, world_size=8) == []


def test_paper_recipe_is_the_paper_table():
    cfg = compose_config(["experiment=paper_recipe"])
    stages = resolve(cfg)
    assert [s.name for s in stages] == ["masked", "unmasked", "masked-hires", "unmasked-hires"]
    assert [s.config.steps for s in stages] == [250000, 30000, 50000, 5000]
    assert [s.mask.ratio for s in stages] == [0.75, 0.0, 0.75, 0.0]
    assert [s.config.lr or cfg.optim.lr for s in stages] == [2.4e-4, 8e-5, 8e-5, 8e-5]
    assert [s.config.grad_clip for s in stages] == [0.25, 0.25, 0.5, 0.5]
    assert [(s.edm.P_mean, s.edm.P_std) for s in stages] == [(-0.6, 1.2), (-0.6, 1.2), (0.0, 0.6), (0.0, 0.6)]
    assert [s.config.ema.decay for s in stages] == [0.0, 0.0, 0.99975, 0.9975]
    assert cfg.model.build_config().width == 1024 and cfg.trainer.batch_size == 2048
    assert stages[2].model.input_size == [64, 64] and stages[2].model.pos_interp_scale == 2.0
    assert stages[0].model.input_size == [32, 32] and stages[2].data.resolution == 512
    assert len(stages[2].data.folders) == 5 and stages[0].data.mix == "samples" and stages[0].data.resolution == 256


@pytest.mark.parametrize("path", sorted((CONF_DIR / "experiment").glob("*_cpu.yaml"))
                         + sorted((CONF_DIR / "experiment").glob("cpu_masking_*.yaml")), ids=lambda p: p.stem)
def test_cpu_experiments_are_short_deltas(path):
    """A CPU twin or main-job run states only what differs from its paper experiment or protocol."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(lines) <= 8, path.read_text()


def test_a_cpu_twin_is_its_paper_experiment_on_the_cpu_protocol():
    paper, twin = compose_config(["experiment=fig5a_ladder_1_wd"]), compose_config(["experiment=fig5a_ladder_1_wd_cpu"])
    assert paper.optim.weight_decay == twin.optim.weight_decay == 0.1  # the experiment's delta survives
    assert paper.model.preset == "MicroDiT_Tiny_2" and twin.model.preset == "nano"  # the protocol is swapped
    assert twin.trainer.budget_flops == compose_config(["protocol=cpu_ablation"]).trainer.budget_flops
    assert paper.trainer.group == "fig5a" and twin.trainer.group == "fig5a-cpu"


def test_each_default_is_written_once():
    """The stage defaults live in StageConfig only: a protocol that does not set grad_clip gets the
    dataclass's value (the grad_clip drift between conf/train.yaml and the dataclass is gone)."""
    assert compose_config(["protocol=ablation"]).stages["pretrain"].grad_clip == StageConfig().grad_clip == 0.25
    sections = ("optim", "diffusion", "sampler")
    for path in (CONF_DIR / "protocol").glob("*.yaml"):
        text = yaml.safe_load(path.read_text()) or {}
        for section in sections:
            for key, value in (text.get(section) or {}).items():
                default = getattr(getattr(TrainConfig(), section), key)
                assert value != default, f"{path.name} restates the default {section}.{key}={default}"



def _sweep_params(experiment: str) -> dict[str, str]:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params or {})


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_sweep_point_composes_and_validates(experiment):
    """Each value of each sweep parameter composes into a valid config (a typo in a sweep key or
    value fails here, not on a cluster)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = _sweep_params(experiment)
    parser = OverridesParser.create()
    for key, values in params.items():
        override = parser.parse_override(f"{key}={values}")
        points = override.sweep_string_iterator() if override.is_sweep_override() else [values]
        for value in points:
            cfg = compose_config([f"experiment={experiment}", f"{key}={value}"])
            assert problems(cfg, world_size=8) == [], (key, value)


def test_paper_sweeps_have_a_seed_axis():
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        params = _sweep_params(path.stem)
        if params:
            assert "trainer.seed" in params, path.name
