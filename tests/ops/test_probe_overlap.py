"""scripts/probe_overlap.py: the SDPA engine over batch chunks computes the unsplit engine's function (its no-GPU
message: test_gpu_probes.py)."""
import pytest
import torch
import torch.nn.functional as F

from distr_patch.ops.sdpa_engine import query_effective


@pytest.mark.parametrize("chunks,assemble", [(1, True), (2, True), (3, True), (3, False)])
def test_chunked_engine_serial_equals_the_unsplit_engine(load_script, chunks, assemble):
    module = load_script("probe_overlap")
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(5, 2, 40, 16, generator=g) for _ in range(3))

    def qeff(qs):
        return query_effective(qs, group_size=2, block_m=32, fusion="rank1", num_hash_bits=16, seed=0,
                               query_valid=None, groups=None)

    def attend(qs, ks, vs):
        return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)

    whole = attend(qeff(q), k, v)
    split = module.chunked_engine(q, k, v, chunks=chunks, overlap=False, qeff=qeff, attend=attend, assemble=assemble)
    if not assemble:
        assert [p.shape[0] for p in split] == [1, 2, 2]
        split = torch.cat(split)
    assert not torch.equal(whole, attend(q, k, v))  # the grouping changed the scores: the check can tell
    torch.testing.assert_close(split, whole, rtol=1e-6, atol=1e-6)
