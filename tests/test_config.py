import dataclasses

import pytest

from training.config import (
    Config,
    ConfigError,
    grad_accum_steps,
    load_config,
    parse_overrides,
    replace,
    resolve_optim_defaults,
    to_toml,
    validate,
)

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
    tree = parse_overrides(["--optim.lr=0.02", "--model.depth", "6", "--optim.name=adamw",
                            "--model.no_attention_layers=[1, 2]", "--data.align_to_docs=true", "--log.dir='x y'"])
    assert tree == {"optim": {"lr": 0.02, "name": "adamw"}, "model": {"depth": 6, "no_attention_layers": [1, 2]},
                    "data": {"align_to_docs": True}, "log": {"dir": "x y"}}
    cfg = load_config(SPEEDRUN, ["--optim.lr=0.02", "--model.depth=6", "--model.no_attention_layers=[1]",
                                 "--model.window_pattern=LSSSLS"])
    assert cfg.optim.lr == 0.02 and cfg.model.depth == 6 and cfg.model.no_attention_layers == (1,)
    assert isinstance(cfg.optim.lr, float)
    # ints are accepted for floats, integral floats for ints
    assert load_config(None, ["--optim.lr=1"]).optim.lr == 1.0
    assert load_config(None, ["--model.width=256.0"]).model.width == 256


def test_defaults_without_file_and_frozen():
    cfg = load_config(None)
    assert cfg == resolve_optim_defaults(Config())
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3


def test_unknown_keys_name_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"):
        load_config(SPEEDRUN, ["--optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'.*did you mean 'model'"):
        load_config(None, ["--modle.width=3"])
    with pytest.raises(ConfigError, match=r"model.widht.*did you mean 'model.width'"):
        load_config(None, ["--model.widht=3"])


def test_unknown_key_in_toml_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[schedule]\nstepz = 3\n")
    with pytest.raises(ConfigError, match=r"schedule.stepz.*did you mean 'schedule.steps'"):
        load_config(p)


def test_type_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model.width: expected int"):
        load_config(None, ["--model.width=wide"])
    with pytest.raises(ConfigError, match=r"model.compile: expected bool"):
        load_config(None, ["--model.compile=1"])
    with pytest.raises(ConfigError, match=r"optim.adam_betas: expected a list"):
        load_config(None, ["--optim.adam_betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"expected a \[model\] table"):
        load_config(None, ["--model=3"])
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
        (["--model.width=100", "--model.heads=3"], 1, r"model.width \(100\) is not divisible by model.heads \(3\)"),
        (["--data.batch_tokens=1000"], 1, r"data.batch_tokens \(1000\) must be a positive multiple"),
        ([], 3, r"data.batch_tokens .* world size \(3\)"),
        (["--eval.tokens=1000"], 1, r"eval.tokens \(1000\)"),
        (["--optim.name=muonn"], 1, r"optim.name = 'muonn'.*did you mean 'muon'"),
        (["--optim.name=scion", "--optim.scalar.norm=spectral"], 1, r"optim.scalar.norm = 'spectral' needs matrices"),
        (["--optim.name=scion", "--optim.embed.norm=adamw"], 1, r"Scion trains every role with a norm's LMO"),
        (["--optim.name=scion", "--optim.hidden.weight_decay=0.1"], 1, r"constrained Scion \(SCG\) has no separate"),
        (["--optim.hidden.norm=sign"], 1, r"Muon trains hidden matrices in the spectral norm"),
        (["--optim.embed.norm=sign"], 1, r"must be 'adamw'"),
        (["--optim.name=adamw", "--optim.hidden.norm=spectral"], 1, r"trains every role with AdamW"),
        (["--optim.name=scion", "--optim.hidden.norm=spectrall"], 1, r"did you mean 'spectral'"),
        (["--optim.orthogonalize=qr"], 1, r"optim.orthogonalize"),
        (["--optim.light=true"], 1, r"Scion option"),
        (["--optim.name=scion", "--optim.head.scale=0"], 1, r"optim.head.scale must be positive"),
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
        (["--optim.momentum=1.0"], 1, r"optim.momentum"),
        (["--model.head_dim=63"], 1, r"head_dim .* even"),
    ],
)
def test_impossible_combinations_fail_before_compute(overrides, world, pattern):
    cfg = load_config(SPEEDRUN, overrides)
    with pytest.raises(ConfigError, match=pattern):
        validate(cfg, world)


def test_to_toml_round_trip(tmp_path):
    cfg = load_config(SPEEDRUN, ["--optim.lr=0.03", "--log.dir=some \"quoted\" dir"])
    p = tmp_path / "resolved.toml"
    p.write_text(to_toml(cfg))
    assert load_config(p) == cfg


def test_replace_changes_only_named_fields():
    cfg = load_config(SPEEDRUN)
    new = replace(cfg, optim={"lr": 0.1}, seed=5)
    assert new.optim.lr == 0.1 and new.seed == 5 and new.optim.momentum == cfg.optim.momentum
    assert cfg.optim.lr == 0.05


def test_optimizer_defaults_fill_unset_values_per_optimizer():
    muon = load_config(SPEEDRUN)
    assert muon.optim.hidden.norm == "spectral" and muon.optim.embed.norm == "adamw" and muon.optim.embed.lr == 0.6
    assert muon.optim.hidden.lr is None  # follows optim.lr
    scion = load_config(SPEEDRUN, ["--optim.name=scion", "--optim.lr=0.001", "--optim.momentum=0.9",
                                   "--optim.momentum_warmup_steps=0", "--optim.embed.lr=0.5"])
    validate(scion, 8)
    o = scion.optim
    assert (o.embed.norm, o.hidden.norm, o.head.norm) == ("sign", "spectral", "sign_fanin")
    assert (o.hidden.scale, o.head.scale) == (50.0, 3000.0) and o.constrained
    assert o.embed.lr == 0.5 and o.hidden.lr is None and o.lr == 0.001
    # the speedrun config's Muon settings carried over explicitly; unset Scion ones come from defaults
    plain = load_config(None, ["--optim.name=scion"])
    assert plain.optim.lr == 2**-12 and plain.optim.momentum == 0.9
    for name in ["adamw", "signum"]:
        validate(load_config(None, [f"--optim.name={name}"]), 1)


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
