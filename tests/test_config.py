"""Config tree: TOML/YAML loading, unknown-key suggestions, type checks, the reference dump."""

from __future__ import annotations

import dataclasses

import pytest

from bab import config as C


def test_defaults_are_frozen() -> None:
    cfg = C.Config()
    assert cfg.verify.method == "default" and cfg.falsify.enabled
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.verify.seed = 3  # type: ignore[misc]


def test_toml_and_yaml(tmp_path) -> None:
    (tmp_path / "a.toml").write_text("[verify]\nseed = 7\n[falsify]\npgd_steps = 5\n")
    (tmp_path / "a.yaml").write_text("verify:\n  seed: 7\nfalsify:\n  pgd_steps: 5\n")
    for name in ("a.toml", "a.yaml"):
        cfg = C.load(tmp_path / name)
        assert cfg.verify.seed == 7 and cfg.falsify.pgd_steps == 5


def test_unknown_key_did_you_mean(tmp_path) -> None:
    (tmp_path / "c.toml").write_text("[falsify]\npgd_step = 5\n")
    with pytest.raises(C.ConfigError, match=r"unknown option 'falsify.pgd_step'.*did you mean 'pgd_steps'"):
        C.load(tmp_path / "c.toml")
    with pytest.raises(C.ConfigError, match="did you mean 'verify'"):
        C.from_dict({"verfy": {}})


def test_type_and_choice_errors() -> None:
    with pytest.raises(C.ConfigError, match="verify.seed: expected int"):
        C.from_dict({"verify": {"seed": "abc"}})
    with pytest.raises(C.ConfigError, match="verify.device: 'tpu' is not one of cpu, cuda"):
        C.from_dict({"verify": {"device": "tpu"}})
    with pytest.raises(C.ConfigError, match="expected a table"):
        C.from_dict({"verify": 3})


def test_overrides_merge_in_order() -> None:
    cfg = C.load(None, [C.parse_override("falsify.pgd_steps=3"), {"falsify": {"enabled": "false"}}])
    assert cfg.falsify.pgd_steps == 3 and cfg.falsify.enabled is False
    with pytest.raises(C.ConfigError, match="section.key=value"):
        C.parse_override("novalue")


def test_reference_lists_every_option() -> None:
    ref = C.dump_reference()
    for section in dataclasses.fields(C.Config):
        assert f"[{section.name}]" in ref
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            assert f"\n{f.name} = " in ref
    assert 'method = "default"' in ref and "One of: cpu, cuda" in ref


def test_bad_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        C.load(tmp_path / "missing.toml")
    (tmp_path / "x.ini").write_text("a=1")
    with pytest.raises(C.ConfigError, match="must end in"):
        C.load(tmp_path / "x.ini")
    (tmp_path / "bad.toml").write_text("[verify\n")
    with pytest.raises(C.ConfigError):
        C.load(tmp_path / "bad.toml")
