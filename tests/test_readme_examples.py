"""The README's Python examples run as written (on the CPU, with a tiny model where they name the user's own), and
the shapes their comments state are the ones they return. The last example loads hub checkpoints: not run here."""
import re
from pathlib import Path

import torch
import transformers

from distr_patch import DistrConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def block(*needles: str) -> str:
    """The one README Python block that contains every needle (so the test follows the README's order)."""
    found = [b for b in python_blocks() if all(n in b for n in needles)]
    assert len(found) == 1, f"expected one README block with {needles}, found {len(found)}"
    return found[0]


def test_the_readme_has_the_examples_this_file_runs():
    assert len(python_blocks()) == 5


def test_operator_example():
    code = block("distr_attention(q, k, v", "compute_groups(q")
    assert code.count('device="cuda"') == 2  # q and k; v is randn_like(k)
    ns: dict = {}
    exec(code.replace('device="cuda"', 'device="cpu"'), ns)
    assert ns["out"].shape == (1, 8, 1024, 64) and ns["out"].dtype == torch.bfloat16
    assert "# [1, 8, 1024, 64]" in code and "# [1, 8, 8, 64]" in code
    groups = ns["groups"]
    assert groups.shape == (1, 8, 8, 64)
    assert torch.equal(groups.sort(-1).values, torch.arange(64).expand_as(groups))  # each row a permutation


def _tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      initializer_range=0.2)  # peaked attention: grouping shows
    return transformers.LlamaForCausalLM(config).eval()


def test_patching_example():
    code = block("patch_model(model)", "unpatch_model(model)", "with patched(")
    model = _tiny_llama()
    batch = {"input_ids": torch.randint(0, 64, (2, 300))}  # longer than the 128-token exact window
    with torch.no_grad():
        ref = model(**batch).logits
        ns = {"model": model, "batch": batch}
        exec(code, ns)
        assert ns["out"].logits.shape == ref.shape
        diff = (ns["out"].logits - ref).abs().max().item()
        assert diff > 1e-3  # G=4 in the last layer: grouped scores beyond the window changed the output
        assert torch.equal(model(**batch).logits, ref)  # the block and unpatch_model left the model as it was
    assert model.config._attn_implementation != "distr"


def test_attention_implementation_example(tmp_path):
    code = block('attn_implementation="distr"', "set_attn_implementation")
    _tiny_llama().save_pretrained(tmp_path)  # 3 layers: with exact_last=2, layer 0 stays grouped
    ns = {"AutoModelForCausalLM": transformers.AutoModelForCausalLM, "DistrConfig": DistrConfig,
          "path": str(tmp_path)}
    exec(code, ns)
    model = ns["model"].eval()
    assert model.config._attn_implementation == "distr"
    assert DistrConfig.from_dict(model.config.distr_config) == DistrConfig(exact_last=2)
    ids = torch.randint(0, 64, (1, 160))  # longer than the 128-token exact window
    exact = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="sdpa").eval()
    with torch.no_grad():
        ref = exact(ids).logits
        assert (model(ids).logits - ref).abs().max().item() > 1e-3  # layer 0 through DistrAttention
        model.set_attn_implementation("sdpa")  # "sdpa" switches back
        assert torch.equal(model(ids).logits, ref)


def test_per_layer_and_head_example():
    code = block("layer_overrides=", "head_overrides=")
    ns = {"DistrConfig": DistrConfig, "num_layers": 6}
    exec(code, ns)
    cfg = ns["cfg"]
    assert cfg.for_head(3, 5, 6).fusion == "mean" and cfg.for_head(3, 5, 6).group_size == 4
    assert cfg.for_head(3, 0, 6).group_size == 1
