"""DistrConfig: defaults, presets, per-layer resolution, validation, serialisation."""
import dataclasses
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
    with pytest.raises(ValueError, match=r"layer_overrides key -5 is out of range .* \(valid: -4 \.\. 3\)"):
        DistrConfig(layer_overrides={-5: {"seed": 1}}).check_layers(4)  # the index as written, not -5 + 4
    with pytest.raises(ValueError, match="exact_layers entry -3 is out of range"):
        DistrConfig(exact_layers=[-3]).check_layers(2)


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
    (dict(seed=2**63), r"seed must be an int in \[0, 2\*\*63\)"),  # the operator's bound, checked up front
    (dict(layer_overrides={0: {"seed": 2**64}}), r"layer_overrides\[0\]: seed"),
    (dict(window_correction=float("inf")), "window_correction"),
    (dict(window_correction=1e300), "window_correction"),  # inf in fp32
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
    (dict(layer_overrides={"--1": {}}), "layer_overrides keys must be int layer indices, got '--1'"),
    (dict(layer_overrides={"\u00b2": {}}), "layer_overrides keys"),  # isdigit() but no int
    (dict(head_overrides={0: {"--1": {}}}), r"head_overrides\[0\] keys must be int query head indices"),
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


# ----------------------------------------------------------------------------- per head
HEADS = {1: {0: {"group_size": 1}, 3: {"group_size": 4, "fusion": "mean"}}, -1: {2: {"exact_window": 0}}}


def test_head_overrides_resolve_on_top_of_the_layer():
    c = DistrConfig(layer_overrides={1: {"group_size": 4, "block_m": 64}}, head_overrides=HEADS, exact_first=1)
    n = 4
    s = c.for_layer(1, n)
    assert (s.group_size, s.block_m) == (4, 64) and sorted(s.heads) == [0, 3]
    assert s.for_head(0).group_size == 1 and s.for_head(0).block_m == 64  # the layer's fields, G=1 on top
    assert (s.for_head(3).group_size, s.for_head(3).fusion, s.for_head(3).block_m) == (4, "mean", 64)
    assert s.for_head(2) == dataclasses.replace(s, heads={})  # heads not listed run the layer's settings
    assert c.for_head(3, 2, n).exact_window == 0 and c.for_head(3, 1, n).exact_window == 128  # -1 is layer 3
    assert not c.for_layer(2, n).heads and c.for_head(2, 0, n) == c.for_layer(2, n)
    assert c.for_layer(0, n).exact and not c.for_layer(0, n).heads  # a layer kept exact stays exact
    assert not c.is_layer_uniform() and hash(s) == hash(dataclasses.replace(s, heads={}))
    with pytest.raises(ValueError, match="layer index"):
        c.for_layer(None)
    c.check_layers(n, 4)
    with pytest.raises(ValueError, match=r"head_overrides\[1\]: query head 3 is out of range .* 3 attention heads"):
        c.check_layers(n, 3)
    with pytest.raises(ValueError, match="head_overrides key -1 counts from the end"):
        c.for_layer(3)


def test_head_overrides_round_trip(tmp_path):
    c = DistrConfig(group_size=4, layer_overrides={1: {"exact_window": 0}}, head_overrides=HEADS)
    assert DistrConfig.from_dict(c.to_dict()) == c
    as_json = json.loads(json.dumps(c.to_dict()))
    assert as_json["head_overrides"] == {"1": {"0": {"group_size": 1}, "3": {"group_size": 4, "fusion": "mean"}},
                                         "-1": {"2": {"exact_window": 0}}}
    assert DistrConfig.from_dict(as_json) == c  # JSON turns layer and head keys into strings
    c.save(tmp_path / "distr.json")
    assert DistrConfig.load(tmp_path / "distr.json") == c
    assert c.replace(group_size=2).head_overrides == c.head_overrides


@pytest.mark.parametrize("heads, error, match", [
    ([1], TypeError, r"head_overrides must be a dict \{layer index"),
    ({"x": {}}, TypeError, "head_overrides keys must be int layer indices, got 'x'"),
    ({0.5: {}}, TypeError, "head_overrides keys must be int layer indices"),
    ({0: [1]}, TypeError, r"head_overrides\[0\] must be a dict \{head index"),
    ({0: {"a": {}}}, TypeError, r"head_overrides\[0\] keys must be int query head indices, got 'a'"),
    ({0: {True: {}}}, TypeError, r"head_overrides\[0\] keys must be int query head indices"),
    ({0: {-1: {}}}, ValueError, r"head_overrides\[0\] keys must be query head indices >= 0"),
    ({0: {1: 4}}, TypeError, r"head_overrides\[0\]\[1\] must be a dict of fields"),
    ({0: {1: {"fusoin": "mean"}}}, ValueError, r"head_overrides\[0\]\[1\]: unknown field 'fusoin'; did you mean 'fus"),
    ({0: {1: {"group_size": 3}}}, ValueError, r"head_overrides\[0\]\[1\]: group_size"),
    ({"2": {"1": {"exact_below": 0}}}, ValueError, r"head_overrides\[2\]\[1\]: exact_below"),
])
def test_bad_head_overrides_raise_naming_the_entry(heads, error, match):
    with pytest.raises(error, match=match):
        DistrConfig(head_overrides=heads)


def test_two_keys_for_one_layer_are_refused():
    """1 and -1 name one layer of a 2-layer model: the last in dict order won, and saving sorts the keys, so a
    saved and reloaded config ran other settings. Distinct layers in a 3-layer model are fine."""
    both = DistrConfig(layer_overrides={1: {"group_size": 8}, -1: {"group_size": 4}})
    for check in (lambda: both.check_layers(2), lambda: both.for_layer(1, 2), lambda: both.for_layer(0, 2)):
        with pytest.raises(ValueError, match="layer_overrides keys 1 and -1 both name layer 1 of a 2-layer model"):
            check()
    both.check_layers(3)
    assert both.for_layer(1, 3).group_size == 8 and both.for_layer(2, 3).group_size == 4
    heads = DistrConfig(head_overrides={0: {1: {"group_size": 1}}, -2: {2: {"group_size": 1}}})
    with pytest.raises(ValueError, match="head_overrides keys 0 and -2 both name layer 0"):
        heads.check_layers(2)
    assert set(heads.for_layer(0, 3).heads) == {1} and set(heads.for_layer(1, 3).heads) == {2}
