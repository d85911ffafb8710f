"""DistrConfig: defaults, presets, per-layer resolution, validation, serialisation."""
import json

import pytest

from distr_patch import DistrConfig
from distr_patch.config import DEFAULT_EXACT_BELOW, LayerSettings


def test_defaults_are_the_recommendation_and_paper_is_a_preset():
    c = DistrConfig()
    assert (c.group_size, c.block_m, c.fusion, c.exact_window, c.window_correction) == (2, 128, "rank1", 128, 0.5)
    assert c.exact_below == DEFAULT_EXACT_BELOW > 1  # decode steps (1 query row) run exact
    p = DistrConfig.paper()
    assert (p.group_size, p.block_m, p.fusion, p.exact_window, p.window_correction) == (2, 128, "mean", 0, 0.0)
    assert DistrConfig.paper(group_size=4).group_size == 4
    assert DistrConfig.exact().group_size == 1


def test_for_layer_resolves_exact_layers_and_overrides():
    c = DistrConfig(exact_first=1, exact_last=1, exact_layers=[3, -3], layer_overrides={5: {"group_size": 4}})
    n = 8
    exact = [c.for_layer(i, n).exact for i in range(n)]
    assert exact == [True, False, False, True, False, True, False, True]
    assert c.for_layer(5, n).group_size == 4 and c.for_layer(4, n).group_size == 2
    s = c.for_layer(4, n)
    assert isinstance(s, LayerSettings)
    assert s.operator_kwargs() == dict(group_size=2, block_m=128, fusion="rank1", exact_window=128,
                                       window_correction=0.5, num_hash_bits=16, seed=0)


def test_for_layer_without_index_needs_a_uniform_config():
    assert DistrConfig().for_layer(None).group_size == 2
    with pytest.raises(ValueError, match="layer index"):
        DistrConfig(exact_layers=[0]).for_layer(None)
    with pytest.raises(ValueError, match="exact_last"):
        DistrConfig(exact_last=1).for_layer(0)
    with pytest.raises(ValueError, match="out of range"):
        DistrConfig(exact_layers=[9]).check_layers(4)
    with pytest.raises(ValueError, match="out of range"):
        DistrConfig(layer_overrides={-5: {"seed": 1}}).check_layers(4)


def test_round_trip_dict_and_json(tmp_path):
    c = DistrConfig(group_size=4, fusion="mean", exact_layers=[0, -1], layer_overrides={1: {"exact_window": 0}})
    assert DistrConfig.from_dict(c.to_dict()) == c
    assert DistrConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c  # JSON turns layer keys into strings
    path = tmp_path / "distr.json"
    c.save(path)
    assert DistrConfig.load(path) == c


@pytest.mark.parametrize("kwargs, match", [
    (dict(group_size=3), "group_size"),
    (dict(group_size=True), "group_size"),
    (dict(block_m=100), "block_m"),
    (dict(fusion="median"), "fusion"),
    (dict(exact_window=-1), "exact_window"),
    (dict(exact_window=1.5), "exact_window"),
    (dict(window_correction=-0.1), "window_correction"),
    (dict(window_correction=float("nan")), "window_correction"),
    (dict(num_hash_bits=0), "num_hash_bits"),
    (dict(seed=-1), "seed"),
    (dict(exact_below=0), "exact_below"),
    (dict(exact_first=-1), "exact_first"),
    (dict(exact_last=1.0), "exact_last"),
    (dict(layer_overrides={0: {"group_size": 5}}), r"layer_overrides\[0\]: group_size"),
    (dict(layer_overrides={0: {"fusoin": "mean"}}), "did you mean 'fusion'"),
])
def test_bad_values_raise_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistrConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(exact_layers="0,1"), "exact_layers"),
    (dict(exact_layers=[0.5]), "exact_layers"),
    (dict(layer_overrides=[0]), "layer_overrides"),
    (dict(layer_overrides={"x": {}}), "layer_overrides keys"),
    (dict(layer_overrides={0: 2}), r"layer_overrides\[0\]"),
])
def test_bad_types_raise_naming_the_field(kwargs, match):
    with pytest.raises(TypeError, match=match):
        DistrConfig(**kwargs)


def test_from_dict_rejects_unknown_keys_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'group_size'"):
        DistrConfig.from_dict({"group_sise": 2})
    with pytest.raises(TypeError, match="dict"):
        DistrConfig.from_dict([("group_size", 2)])
    with pytest.raises(ValueError, match="group_size"):  # replace() validates too
        DistrConfig().replace(group_size=6)
