import dataclasses

import pytest

from common.config_io import Override, parse_overrides, to_toml
from common.errors import ConfigError
from optimizers.muon import MuonConfig
from optimizers.registry import OPTIMIZERS
from optimizers.scion import ScionConfig
from training.config import Config, load_config, validate
from training.schedule import grad_accum_steps

SPEEDRUN = "configs/speedrun_124m.toml"
SMOKE = "configs/smoke.toml"


def test_shipped_configs_load_and_validate():
    for path, world in [(SPEEDRUN, 8), (SPEEDRUN, 1), (SMOKE, 1), (SMOKE, 2)]:
        cfg = load_config(path)
        validate(cfg, world)
    cfg = load_config(SPEEDRUN)
    assert cfg.name == "speedrun_124m"
    assert cfg.schedule.steps == 1770 and cfg.model.width == 768 and cfg.model.depth == 12
    assert grad_accum_steps(cfg, 8) == 1 and grad_accum_steps(cfg, 1) == 8


def test_overrides_parse_types_and_forms():
    args = ["--optim.lr=0.02", "--model.depth", "6", "--optim.name=adamw", "--model.no_attention_layers=[1, 2]",
            "--data.align_to_docs=true", "--log.dir='x y'"]
    tree = parse_overrides(args)
    assert tree == {"optim": {"lr": "0.02", "name": "adamw"}, "model": {"depth": "6", "no_attention_layers": "[1, 2]"},
                    "data": {"align_to_docs": "true"}, "log": {"dir": "'x y'"}}
    assert isinstance(tree["optim"]["lr"], Override)  # typed by the field it sets, when the config is built
    cfg = load_config(None, args)
    assert (cfg.optim.lr, cfg.optim.name, cfg.model.depth, cfg.model.no_attention_layers) == (0.02, "adamw", 6, (1, 2))
    assert cfg.data.align_to_docs is True and cfg.log.dir == "x y"
    cfg = load_config(SPEEDRUN, ["--optim.lr=0.02", "--model.depth=6", "--model.no_attention_layers=[1]",
                                 "--model.window_pattern=LSSSLS"])
    assert cfg.optim.lr == 0.02 and cfg.model.depth == 6 and cfg.model.no_attention_layers == (1,)
    assert isinstance(cfg.optim.lr, float)
    # ints are accepted for floats, integral floats for ints
    assert load_config(None, ["--optim.lr=1"]).optim.lr == 1.0
    assert load_config(None, ["--model.width=256.0"]).model.width == 256


def test_defaults_without_file_and_frozen():
    cfg = load_config(None)
    assert cfg == Config() and cfg.optim.settings == MuonConfig() and cfg.optim.lr == 0.05
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


@pytest.mark.parametrize("override, pattern", [
    ("--optim.lrr=0.1", r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"),
    ("--modle.width=3", r"unknown config key 'modle'.*did you mean 'model'"),
    ("--model.widht=3", r"model.widht.*did you mean 'model.width'"),
    ("--model.width=wide", r"model.width: expected int"),
    ("--model.compile=1", r"model.compile: expected bool"),
    ("--optim.muon.adam_betas=[0.9]", r"optim.muon.adam_betas: expected a list"),
    ("--model=3", r"expected a \[model\] table"),
])
def test_bad_overrides_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(SPEEDRUN, [override])


def test_unknown_key_in_toml_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[schedule]\nstepz = 3\n")
    with pytest.raises(ConfigError, match=r"schedule.stepz.*did you mean 'schedule.steps'"):
        load_config(p)


def test_bad_files_name_the_problem(tmp_path):
    p = tmp_path / "broken.toml"
    p.write_text("[model\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="no value"):
        parse_overrides(["--optim.lr"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["optim.lr=3"])


@pytest.mark.parametrize(
    "overrides, world, pattern",
    [
        (["--data.batch_tokens=1000"], 1, r"data.batch_tokens \(1000\) must be a positive multiple"),
        ([], 3, r"data.batch_tokens .* world size \(3\)"),
        (["--eval.tokens=1000"], 1, r"eval.tokens \(1000\)"),
        (["--optim.name=muonn"], 1, r"optim.name = 'muonn'.*did you mean 'muon'"),
        (["--optim.name=scion", "--optim.scion.scalar.norm=spectral"], 1,
         r"optim.scion.scalar.norm: 'spectral' needs matrices"),
        (["--optim.name=scion", "--optim.scion.embed.norm=adamw"], 1, r"Scion trains every role with a norm's LMO"),
        (["--optim.name=scion", "--optim.scion.hidden.weight_decay=0.1"], 1,
         r"constrained Scion \(SCG\) has no separate"),
        (["--optim.muon.hidden.norm=sign"], 1, r"hidden matrices in the spectral norm"),
        (["--optim.muon.embed.norm=sign"], 1, r"optim.muon.embed.norm: 'sign' is not how Muon trains this role"),
        (["--optim.name=adamw", "--optim.adamw.hidden.norm=spectral"], 1, r"trains every role with AdamW"),
        (["--optim.name=scion", "--optim.scion.hidden.norm=spectrall"], 1, r"did you mean 'spectral'"),
        (["--optim.muon.orthogonalize=qr"], 1, r"optim.muon.orthogonalize"),
        (["--optim.light=true"], 1, r"unknown config key 'optim.light'.*did you mean"),
        (["--optim.muon.light=true"], 1, r"unknown config key 'optim.muon.light'"),
        (["--optim.name=scion", "--optim.scion.head.scale=0"], 1, r"optim.scion.head.scale: must be a positive"),
        (["--optim.lr=inf"], 1, r"optim.lr must be a finite number"),
        (["--optim.muon.embed.lr=nan"], 1, r"optim.muon.embed.lr must be a finite number"),
        (["--optim.name=scion", "--optim.scion.momentum_warmup_steps=10"], 1, r"needs momentum_warmup_from"),
        (["--model.attention=flash"], 1, r"model.attention"),
        (["--device=gpu"], 1, r"device = 'gpu'"),
        (["--model.value_embeds=7"], 1, r"model.value_embeds \(7\) needs model.depth >= 14"),
        (["--model.window_pattern=LS"], 1, r"model.window_pattern must be 12 letters"),
        (["--model.no_attention_layers=[12]"], 1, r"block 12 does not exist"),
        (["--model.eot_token=60000"], 1, r"model.eot_token"),
        (["--schedule.steps=0"], 1, r"schedule.steps must be positive"),
        (["--schedule.cooldown_frac=1.5"], 1, r"schedule.cooldown_frac"),
        (["--model.seq_len=1000", "--model.attention=flex", "--data.batch_tokens=8000", "--eval.seq_len=1000",
          "--eval.tokens=8000"], 1, r"multiples of the 128-token block"),
        (["--log.every=0"], 1, r"log.every must be positive"),
        (["--optim.muon.momentum=1.0"], 1, r"optim.muon.momentum"),
        (["--model.head_dim=63"], 1, r"head_dim .* even"),
        (["--model.loss_chunk=8200"], 1, r"model.fp8_head: .* multiple of 16, got 8200"),
        (["--model.attention=sdpa", "--model.seq_len=1001", "--data.batch_tokens=8008", "--eval.seq_len=1001",
          "--eval.tokens=8008"], 1, r"model.fp8_head: .*micro-batch .* = 1001\) to be a multiple of 16"),
        (["--model.attn_scale=-0.12"], 1, r"model.attn_scale must be > 0"),
    ],
)
def test_impossible_combinations_fail_before_compute(overrides, world, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate(load_config(SPEEDRUN, overrides), world)


def test_to_toml_round_trip(tmp_path):
    cfg = load_config(SPEEDRUN, ["--optim.lr=0.03", "--log.dir=some \"quoted\" dir"])
    p = tmp_path / "resolved.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg


def test_optimizer_defaults_fill_unset_values_per_optimizer():
    muon = load_config(SPEEDRUN).optim
    assert muon.settings.hidden.norm == "spectral" and muon.settings.embed.norm == "adamw"
    assert muon.settings.embed.lr == 0.6 and muon.role_lr("embed") == 0.6
    assert muon.settings.hidden.lr is None and muon.role_lr("hidden") == muon.lr == 0.05  # follows optim.lr
    scion = load_config(SPEEDRUN, ["--optim.name=scion", "--optim.lr=0.001", "--optim.scion.embed.lr=0.5"])
    validate(scion, 8)
    o = scion.optim
    assert (o.settings.embed.norm, o.settings.hidden.norm, o.settings.head.norm) == ("sign", "spectral", "sign_fanin")
    assert (o.settings.hidden.scale, o.settings.head.scale) == (50.0, 3000.0) and o.settings.constrained
    assert o.role_lr("embed") == 0.5 and o.role_lr("hidden") == 0.001 == o.lr
    plain = load_config(None, ["--optim.name=scion"])
    assert plain.optim.lr == 2**-12 and plain.optim.settings == ScionConfig()
    for name in ["adamw", "signum"]:
        validate(load_config(None, [f"--optim.name={name}"]), 1)


def test_only_the_chosen_optimizers_table_counts_but_every_table_is_checked(tmp_path):
    """A base config for Muon and a variant for Scion: switching optim.name leaves [optim.muon] behind;
    a typo in a table of another optimizer still fails."""
    cfg = load_config("configs/smoke_scion.toml")
    assert cfg.optim.name == "scion" and cfg.optim.settings.hidden.scale == 10.0
    assert load_config("configs/smoke.toml").optim.settings.momentum_warmup_steps == 50
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.scion.momentm'.*did you mean 'optim.scion.momentum'"):
        load_config("configs/smoke.toml", ["--optim.scion.momentm=0.5"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.momentum'.*did you mean 'optim.muon.momentum'"):
        load_config("configs/smoke.toml", ["--optim.momentum=0.5"])
    with pytest.raises(ConfigError, match=r"optim.muon: expected a \[optim.muon\] table"):
        load_config(None, ["--optim.muon=3"])


def test_overrides_take_the_type_of_their_field():
    for run_id in ["nan", "1e3", "true", "inf", "007"]:
        assert load_config(None, [f"--log.run_id={run_id}"]).log.run_id == run_id
    assert load_config(None, ['--log.run_id="quoted"']).log.run_id == "quoted"
    assert load_config(None, ["--schedule.steps=1e3"]).schedule.steps == 1000
    assert load_config(None, ["--optim.muon.nesterov=false"]).optim.settings.nesterov is False


def test_class_defaults_are_the_config_defaults():
    """Each setting's default is written once, in its optimizer's settings dataclass: the class built with no
    settings has exactly those defaults (and lr = the module's LR, the default of optim.lr); the registry
    hands a built optimizer's groups the same values; an unknown setting is a TypeError, as for a function."""
    import torch

    from optimizers import muon, normuon, prodigy, scion, shampoo, signum

    classes = {"muon": muon.Muon, "normuon": normuon.NorMuon, "scion": scion.Scion, "shampoo": shampoo.Shampoo,
               "signum": signum.Signum, "prodigy": prodigy.Prodigy}
    for name, cls in classes.items():
        spec = OPTIMIZERS[name]
        p = torch.nn.Parameter(torch.zeros(4, 4))
        opt = cls([p])
        assert opt.defaults["lr"] == spec.lr == load_config(None, [f"--optim.name={name}"]).optim.lr, name
        for key, value in spec.settings().group_settings().items():
            assert opt.defaults[key] == value, (name, key)
            assert opt.param_groups[0][key] == value, (name, key)
        with pytest.raises(TypeError, match="unexpected argument"):
            cls([p], momentun=0.5)
    assert load_config(None).optim.lr == muon.LR


def test_base_config_is_read_first(tmp_path):
    (tmp_path / "base.toml").write_text('name = "base"\nseed = 3\n[model]\nwidth = 256\nheads = 2\n')
    (tmp_path / "child.toml").write_text('base = "base.toml"\n[model]\nwidth = 512\n')
    cfg = load_config(tmp_path / "child.toml")
    assert cfg.name == "child" and cfg.seed == 3 and cfg.model.width == 512 and cfg.model.heads == 2
    (tmp_path / "loop.toml").write_text('base = "loop.toml"\n')
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "loop.toml")
    (tmp_path / "orphan.toml").write_text('base = "missing.toml"\n')
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "orphan.toml")


def test_all_shipped_configs_validate():
    from pathlib import Path

    for path in sorted(Path("configs").glob("*.toml")):
        cfg = load_config(path)
        validate(cfg, 8 if "124m" in path.name else 1)
