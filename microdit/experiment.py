"""The experiment language: what ``microdit-train OVERRIDES`` runs, composed with Hydra.

- :func:`compose_config`: the :class:`~microdit.train.config.TrainConfig` that ``microdit-train
  OVERRIDES`` runs (``conf/train.yaml`` composed with Hydra; unknown keys and bad values are
  refused by the schema, one line with Hydra's reason: :func:`config_error`).
- :func:`sweep_points`: the override list of every run of ``microdit-train -m OVERRIDES`` (the
  command line's sweeps crossed with the experiment's own ``hydra.sweeper.params``), found with
  Hydra's public override parser, so every point is validated before any job starts.
- :func:`validate_run`: everything checked before a run starts, without its data;
  :func:`refused_key`: which key of a YAML file a schema refuses.
- :func:`sized_stages`: a run's stages sized without its data; :func:`equal_steps`: the overrides that
  give a run another run's optimizer steps;
  :func:`quoted`: a path or any text as one value of an override.

Jobs, lists of such runs trained and evaluated together, are :mod:`microdit.pipeline`.
"""

from __future__ import annotations

import itertools
from importlib import resources
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from microdit.train.config import LENGTHS, TrainConfig, to_train_config, validate
from microdit.train.plan import RUN_ANYWAY, Stage, check_plan, resolve

CONF_DIR = Path(str(resources.files("microdit.conf")))  # the top-level conf/ (installed: microdit/conf)

ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def config_error(err: Exception) -> str:
    """One line for a Hydra or OmegaConf error: its message and, where Hydra wraps the reason
    (``Key 'bogus' not in 'TrainerConfig'``, ``Value 'abc' could not be converted to Integer``),
    that reason. Hydra's advice to append a key (``+key=...``) is left out: the schema refuses
    unknown keys either way."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, name = err.missing_cfg_file.rsplit("/", 1)
        return (f"no config '{name}' in group {group} (built in: {' '.join(err.options or [])}); one of your own: "
                f"keep it as conf/{group}/{name}.yaml and add the override 'hydra.searchpath=[file://conf]'")
    head = [line for line in str(err).splitlines() if line.strip() and not line.startswith("To append")]
    cause = err.__cause__
    reason = str(cause).splitlines()[0] if cause is not None and str(cause) else ""
    text = " ".join(" ".join(head).split())
    return f"{text} ({reason})" if reason and reason not in text else text


def refused_key(schema: type, path: Path) -> str:
    """``"KEY: "`` (or ``"KEY.SUB: "``) for the first key of the YAML file ``path`` that the dataclass
    ``schema`` refuses on its own (a list where it takes a mapping, a mapping where it takes a
    number), so that OmegaConf's merge errors, which name no key, can be told where; "" if none."""
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    def refused(part: dict) -> bool:
        try:
            OmegaConf.merge(OmegaConf.structured(schema), part)
        except OmegaConfBaseException:
            return True
        return False

    data = OmegaConf.load(path)
    for key, value in data.items() if isinstance(data, DictConfig) else ():
        if refused({key: value}):
            nested = isinstance(value, DictConfig) and not refused({key: {}})  # the schema takes a mapping here
            subs = [sub for sub in value if refused({key: {sub: value[sub]}})] if nested else []
            return f"{key}.{subs[0]}: " if subs else f"{key}: "
    return ""


def compose_named(config_name: str, overrides: list[str], hydra_config: bool = False):
    """``conf/CONFIG_NAME.yaml`` composed with ``overrides``; a Hydra or OmegaConf error becomes
    a ValueError of one line (:func:`config_error`)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=hydra_config)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(config_error(err)) from None


def compose_config(overrides: list[str]) -> TrainConfig:
    """The TrainConfig that ``microdit-train OVERRIDES`` would run (for programs and notebooks)."""
    return to_train_config(compose_named("train", overrides))


def _expand(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of the sweeps among ``overrides`` (``a=1,2 b=x`` -> two lists), in
    Hydra's order (the last sweep varies fastest), through Hydra's public override parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ValueError(config_error(err)) from None
    choices = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([f"{key}={override.get_value_element_as_str()}"])
    return [list(point) for point in itertools.product(*choices)]


def validate_run(cfg: TrainConfig, run_anyway: str = RUN_ANYWAY) -> None:
    """Everything checked before a run starts, without its data: the config (:func:`validate`)
    and, with the caption length its text encoder gives, the sized plan (an EMA that never starts,
    a warm-up longer than its stage: refused unless ``trainer.plan_check=warn``; ``run_anyway``
    says how the caller's user sets that)."""
    validate(cfg)
    check_plan(sized_stages(cfg), cfg.trainer.plan_check, say=lambda line: None, run_anyway=run_anyway)


def sized_stages(cfg: TrainConfig) -> list[Stage]:
    """``cfg``'s stages resolved and sized without its data: at the caption length of its text
    encoder (the trainer sizes them at its dataset's, which a job checks to fit)."""
    from microdit.encoders import caption_length

    return resolve(cfg, caption_length(cfg.encoder.text_encoder))


def quoted(text: str | Path) -> str:
    """``text`` as one quoted value of a Hydra override (``trainer.run_dir=...``): a path with ``=``,
    ``,``, spaces, brackets, quotes or ``${`` stays one string, as it was."""
    return "'" + str(text).replace("'", "\\'").replace("${", "\\${") + "'"


def equal_steps(run: TrainConfig, leader: TrainConfig) -> list[str]:
    """The overrides that make each stage of ``run`` that ``leader`` also has take as many optimizer
    steps as the leader's stage of that name (:func:`sized_stages`): the paper's equal-steps
    protocol at whatever budget, batch size or masking the leader is given."""
    own = {stage.name for stage in resolve(run)}
    out = []
    for stage in sized_stages(leader):
        if stage.name in own:
            out += [f"stages.{stage.name}.{k}=null" for k in LENGTHS if k != "steps"]
            out.append(f"stages.{stage.name}.steps={stage.steps}")
    return out


def sweep_points(overrides: list[str]) -> list[list[str]]:
    """The override list of every run that ``microdit-train -m OVERRIDES`` launches: the command
    line's sweeps (``a=1,2``) crossed with the ``hydra.sweeper.params`` of the config each command
    line point composes (an experiment's own sweep), the command line winning on a shared key."""
    points = []
    for point in _expand(overrides):
        params = compose_named("train", point, hydra_config=True).hydra.sweeper.get("params") or {}
        given = {o.split("=", 1)[0] for o in point}
        swept = [f"{key}={value}" for key, value in params.items() if key not in given]
        points += _expand(swept + point) if swept else [point]
    return points
